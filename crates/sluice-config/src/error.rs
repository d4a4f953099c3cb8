//! Configuration errors, each with the line and column of the offending text.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ConfigError {
    /// 1-based line of the offending key or value; 0 when the file could not be read.
    pub line: usize,
    /// 1-based column (in characters); 0 when the file could not be read.
    pub column: usize,
    /// Key path of the offending item, e.g. `distributions.reseller-eu.geo.countries[2]`;
    /// empty when it is the whole file.
    pub path: String,
    /// What is wrong, for an operator.
    pub message: String,
}

/// Every problem found in one configuration file, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file name used in messages.
    pub origin: String,
    /// Never empty.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One line per error: `{origin}:{line}:{column}: {message}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}:{}: {}", self.origin, e.line, e.column, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// 1-based line and column (in characters) of byte `offset` in `src`. Offsets past the
/// end or inside a character are clamped, so this never panics.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let (mut line, mut col) = (1, 1);
    for (i, c) in src.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let s = "ab\nçd\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 3), (2, 1));
        assert_eq!(line_col(s, 5), (2, 2)); // after the two-byte ç
        assert_eq!(line_col(s, 4), (2, 2)); // inside ç: clamped forward, no panic
        assert_eq!(line_col(s, 999), (3, 1));
    }

    #[test]
    fn display_is_one_line_per_error() {
        let e = ConfigErrors {
            origin: "x.toml".into(),
            errors: vec![
                ConfigError {
                    line: 1,
                    column: 2,
                    path: "a".into(),
                    message: "bad".into(),
                },
                ConfigError {
                    line: 3,
                    column: 4,
                    path: "b".into(),
                    message: "worse".into(),
                },
            ],
        };
        assert_eq!(e.to_string(), "x.toml:1:2: bad\nx.toml:3:4: worse");
    }
}
