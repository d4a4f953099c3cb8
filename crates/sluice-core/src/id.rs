//! Ids of channels, ingests, engines, ladders, renditions and distributions.

use std::fmt;
use std::sync::Arc;

/// A validated id: `[a-z0-9][a-z0-9_-]{0,63}`.
///
/// Ids appear in URLs and file names, so the alphabet is deliberately small:
/// an id can never contain `/`, `.` or percent-escapes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {0:?}: ids match [a-z0-9][a-z0-9_-]{{0,63}}")]
pub struct IdError(pub String);

impl Id {
    pub const MAX_LEN: usize = 64;

    pub fn new(s: &str) -> Result<Self, IdError> {
        if Self::is_valid(s) {
            Ok(Id(Arc::from(s)))
        } else {
            Err(IdError(s.chars().take(80).collect()))
        }
    }

    pub fn is_valid(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= Self::MAX_LEN
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::str::FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Id::new(s)
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["a", "demo", "720p", "reseller-eu", "a_b", &"x".repeat(64)] {
            assert!(Id::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a.b",
            "a/b",
            "..",
            "é",
            &"x".repeat(65),
        ] {
            assert!(Id::new(bad).is_err(), "{bad}");
        }
    }
}
