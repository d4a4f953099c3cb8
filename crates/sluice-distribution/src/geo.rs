//! Country lookups for geo rules, from a MaxMind-format database (`.mmdb`: GeoLite2
//! Country, DB-IP IP-to-Country Lite, or any database with `country.iso_code`).

use std::net::IpAddr;
use std::path::Path;

use maxminddb::{PathElement, Reader};

/// A country database, read into memory once at start.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
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
            .map(|reader| GeoDb { reader })
            .map_err(|e| GeoDbError {
                path: String::new(),
                reason: e.to_string(),
            })
    }

    /// The ISO 3166-1 alpha-2 code of `ip`'s country (where the database locates the
    /// address, else where it is registered), uppercase ASCII read in place from the
    /// database; `None` when unknown.
    pub fn country_code(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let found = self.reader.lookup(ip.to_canonical()).ok()?;
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
        assert_eq!(c("81.2.69.142"), Some(*b"GB"));
        assert_eq!(c("::ffff:81.2.69.142"), Some(*b"GB"));
        assert_eq!(c("2001:db8:de::1"), Some(*b"DE"));
        assert_eq!(c("198.51.100.9"), Some(*b"FR"));
        assert_eq!(c("203.0.113.1"), None);
        assert!(GeoDb::from_bytes(b"not a database".to_vec()).is_err());
    }
}
