//! Country lookups for geo rules, from a MaxMind-format database (`.mmdb`: GeoLite2
//! Country, DB-IP IP-to-Country Lite, or any database with `country.iso_code`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use maxminddb::{PathElement, Reader};

/// IPv4 answers remembered, in a direct-mapped table (32 KiB).
const CACHE_SLOTS: usize = 4096;

/// A country database, read into memory once at start.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    /// Each slot one IPv4 answer packed in a word, read and written without a lock:
    /// a viewer asks for a playlist or a segment every second or two, and the tree walk
    /// and record decoding cost more than the rest of the rules together. The database
    /// never changes, so a remembered answer is never stale.
    v4_cache: Box<[AtomicU64]>,
}

/// A slot: bit 63 set when filled, bit 62 when a country is known, bits 32..48 the
/// country code, bits 0..32 the address.
const FILLED: u64 = 1 << 63;
const KNOWN: u64 = 1 << 62;

fn pack(ip: u32, country: Option<[u8; 2]>) -> u64 {
    let c = country.map_or(0, |[a, b]| KNOWN | u64::from(a) << 40 | u64::from(b) << 32);
    FILLED | c | u64::from(ip)
}

fn unpack(slot: u64, ip: u32) -> Option<Option<[u8; 2]>> {
    (slot & FILLED != 0 && slot as u32 == ip)
        .then(|| (slot & KNOWN != 0).then_some([(slot >> 40) as u8, (slot >> 32) as u8]))
}

/// A database that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the country database {path}: {reason}")]
pub struct GeoDbError {
    pub path: String,
    pub reason: String,
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<Self, GeoDbError> {
        let err = |reason: String| GeoDbError {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Self::from_bytes(bytes).map_err(|e| err(e.reason))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GeoDbError> {
        Reader::from_source(bytes)
            .map(|reader| GeoDb {
                reader,
                v4_cache: (0..CACHE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            })
            .map_err(|e| GeoDbError {
                path: String::new(),
                reason: e.to_string(),
            })
    }

    /// The ISO 3166-1 alpha-2 code of `ip`'s country (where the database locates the
    /// address, else where it is registered), uppercase ASCII read in place from the
    /// database; `None` when unknown.
    pub fn country_code(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let ip = ip.to_canonical();
        let IpAddr::V4(v4) = ip else {
            return self.look_up(ip);
        };
        let key = u32::from(v4);
        // Fibonacci hashing spreads neighbouring addresses over the table.
        let slot = &self.v4_cache
            [(u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize % CACHE_SLOTS];
        if let Some(known) = unpack(slot.load(Ordering::Relaxed), key) {
            return known;
        }
        let country = self.look_up(ip);
        slot.store(pack(key, country), Ordering::Relaxed);
        country
    }

    fn look_up(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let found = self.reader.lookup(ip).ok()?;
        [
            [PathElement::Key("country"), PathElement::Key("iso_code")],
            [
                PathElement::Key("registered_country"),
                PathElement::Key("iso_code"),
            ],
        ]
        .iter()
        .find_map(|path| found.decode_path::<&str>(path).ok().flatten())
        .and_then(|c| match c.as_bytes() {
            [a, b] => Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()]),
            _ => None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small database: 81.2.69.0/24 in GB, 2001:db8:de::/48 in DE, 198.51.100.0/24
    /// registered (only) in FR.
    pub(crate) fn test_db() -> GeoDb {
        use mmdb_writer::{Value, Writer};
        let mut w = Writer::new("Sluice-Test-Country");
        let country = |code: &str| Value::map([("iso_code", Value::from(code))]);
        w.insert_value(
            "81.2.69.0/24".parse::<ipnet::IpNet>().unwrap(),
            Value::map([("country", country("GB"))]),
        )
        .unwrap();
        w.insert_value(
            "2001:db8:de::/48".parse::<ipnet::IpNet>().unwrap(),
            Value::map([("country", country("DE"))]),
        )
        .unwrap();
        w.insert_value(
            "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(),
            Value::map([("registered_country", country("FR"))]),
        )
        .unwrap();
        GeoDb::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn countries_of_v4_v6_and_mapped_addresses() {
        let db = test_db();
        let c = |ip: &str| db.country_code(ip.parse().unwrap());
        // Twice each: the second answer comes from the cache.
        for _ in 0..2 {
            assert_eq!(c("81.2.69.142"), Some(*b"GB"));
            assert_eq!(c("203.0.113.1"), None);
            assert_eq!(c("198.51.100.9"), Some(*b"FR"));
        }
        // Every slot filled by others, then asked again: answers stay per address.
        for i in 0..20_000u32 {
            let other = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            assert_eq!(db.country_code(other.into()), None);
        }
        assert_eq!(c("81.2.69.142"), Some(*b"GB"));
        assert_eq!(c("81.2.69.1"), Some(*b"GB"));
        assert_eq!(c("::ffff:81.2.69.142"), Some(*b"GB"));
        assert_eq!(c("2001:db8:de::1"), Some(*b"DE"));
        assert_eq!(c("198.51.100.9"), Some(*b"FR"));
        assert_eq!(c("203.0.113.1"), None);
        assert!(GeoDb::from_bytes(b"not a database".to_vec()).is_err());
    }
}
