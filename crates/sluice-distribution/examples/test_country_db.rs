//! Writes a small MaxMind-format country database for benchmarks and manual tests:
//! 81.2.69.0/24 is GB, 85.214.0.0/16 and 2001:db8:de::/48 are DE.
//!
//!     cargo run -p sluice-distribution --example test_country_db -- country.mmdb

use mmdb_writer::{Value, Writer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: test_country_db OUT.mmdb")?;
    let mut w = Writer::new("Sluice-Test-Country");
    for (net, code) in [
        ("81.2.69.0/24", "GB"),
        ("85.214.0.0/16", "DE"),
        ("2001:db8:de::/48", "DE"),
    ] {
        w.insert_value(
            net.parse::<ipnet::IpNet>()?,
            Value::map([("country", Value::map([("iso_code", Value::from(code))]))]),
        )?;
    }
    std::fs::write(&path, w.to_bytes()?)?;
    Ok(())
}
