//! From text to `RawConfig`, collecting every structural error.
//!
//! serde stops at the first error, but operators want them all. So we parse once into
//! toml's spanned tree (`DeTable`), then deserialize from a copy of it; when that fails,
//! the error's span names one key or value, which we record and cut out of the tree
//! before trying again. Cutting the whole entry (not just blanking its text) keeps the
//! rest valid TOML, and the removed paths let later checks stay quiet about things
//! that only look wrong because a broken item is missing (no cascade errors).

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::raw::RawConfig;

/// Upper bound on deserialize-and-cut rounds; each round removes one item, so this
/// only bites on files that are mostly errors.
const MAX_ROUNDS: usize = 200;

/// An error before line and column are worked out.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub span: Range<usize>,
    pub message: String,
}

/// Maps byte spans of keys and values in the original file to their key paths.
#[derive(Debug, Default)]
pub(crate) struct SpanIndex {
    paths: HashMap<(usize, usize), String>,
}

impl SpanIndex {
    fn build(root: &DeTable<'_>) -> SpanIndex {
        let mut index = SpanIndex::default();
        index.add_table(root, "");
        index
    }

    fn add_table(&mut self, table: &DeTable<'_>, prefix: &str) {
        for (k, v) in table.iter() {
            let path = key_path(prefix, k.get_ref());
            self.insert(k.span(), &path);
            self.add_value(v, &path);
        }
    }

    fn add_value(&mut self, v: &Spanned<DeValue<'_>>, path: &str) {
        // Parents first, so that a child sharing its parent's span (the first table of
        // an array of tables) overwrites it: the deepest path wins.
        self.insert(v.span(), path);
        match v.get_ref() {
            DeValue::Table(t) => self.add_table(t, path),
            DeValue::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    self.add_value(e, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }

    fn insert(&mut self, span: Range<usize>, path: &str) {
        self.paths.insert((span.start, span.end), path.to_owned());
    }

    /// The path of the key or value at exactly `span`, if there is one.
    pub fn path(&self, span: &Range<usize>) -> Option<&str> {
        self.paths.get(&(span.start, span.end)).map(String::as_str)
    }
}

/// `prefix.key`, quoting the key when it is not a bare TOML key.
pub(crate) fn key_path(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// A successfully deserialized file, with what was cut out of it on the way.
pub(crate) struct Parsed {
    /// `None` when nothing sensible can be checked further (syntax errors, or an
    /// error that could not be cut out).
    pub raw: Option<RawConfig>,
    pub index: SpanIndex,
    /// Paths (in the original file) of items removed because they were malformed.
    pub removed: Vec<String>,
}

/// Parses `src`, pushing every syntax and structural error to `problems`.
pub(crate) fn parse(src: &str, problems: &mut Vec<Problem>) -> Parsed {
    let (mut root, syntax) = DeTable::parse_recoverable(src);
    let index = SpanIndex::build(root.get_ref());
    let mut removed = Vec::new();
    if !syntax.is_empty() {
        for e in syntax {
            problems.push(Problem {
                span: e.span().unwrap_or(0..0),
                message: e.message().trim().to_owned(),
            });
        }
        return Parsed {
            raw: None,
            index,
            removed,
        };
    }
    for _ in 0..MAX_ROUNDS {
        let err = match RawConfig::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(raw) => {
                return Parsed {
                    raw: Some(raw),
                    index,
                    removed,
                };
            }
            Err(err) => err,
        };
        let span = err.span().unwrap_or(0..0);
        if !is_cascade(err.message(), &span, &index, &removed) {
            problems.push(Problem {
                span: span.clone(),
                message: friendly(err.message()),
            });
        }
        let mut segs = Vec::new();
        let cut = match err.span() {
            Some(_) if find_table(root.get_ref(), &span, &mut segs) => {
                remove(root.get_mut(), &segs)
            }
            _ => None,
        };
        let Some(cut) = cut else {
            return Parsed {
                raw: None,
                index,
                removed,
            };
        };
        if let Some(p) = index.path(&cut) {
            removed.push(p.to_owned());
        }
    }
    // At the end of the file, so that it sorts after the errors it cut short.
    problems.push(Problem {
        span: src.len()..src.len(),
        message: "too many errors; stopped checking".into(),
    });
    Parsed {
        raw: None,
        index,
        removed,
    }
}

/// "missing field `x`" right after we cut a malformed `x` out of the same table: the
/// first error already said what is wrong.
fn is_cascade(message: &str, span: &Range<usize>, index: &SpanIndex, removed: &[String]) -> bool {
    let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    else {
        return false;
    };
    let table = index.path(span).unwrap_or_default();
    removed.contains(&key_path(table, field))
}

/// One step of a path into the tree.
enum Seg {
    Key(String),
    Index(usize),
}

/// Finds the deepest key or value whose key span or value span is exactly `span`.
fn find_table(table: &DeTable<'_>, span: &Range<usize>, out: &mut Vec<Seg>) -> bool {
    for (k, v) in table.iter() {
        out.push(Seg::Key(k.get_ref().to_string()));
        if find_value(v, span, out) || k.span() == *span || v.span() == *span {
            return true;
        }
        out.pop();
    }
    false
}

fn find_value(v: &Spanned<DeValue<'_>>, span: &Range<usize>, out: &mut Vec<Seg>) -> bool {
    match v.get_ref() {
        DeValue::Table(t) => find_table(t, span, out),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                out.push(Seg::Index(i));
                if find_value(e, span, out) || e.span() == *span {
                    return true;
                }
                out.pop();
            }
            false
        }
        _ => false,
    }
}

/// Removes the item at `segs` (a path `find_table` produced); returns its value span.
fn remove(table: &mut DeTable<'_>, segs: &[Seg]) -> Option<Range<usize>> {
    let (Seg::Key(key), rest) = segs.split_first()? else {
        return None;
    };
    if rest.is_empty() {
        return table.remove(key.as_str()).map(|v| v.span());
    }
    remove_in_value(table.get_mut(key.as_str())?, rest)
}

fn remove_in_value(v: &mut Spanned<DeValue<'_>>, segs: &[Seg]) -> Option<Range<usize>> {
    match (v.get_mut(), segs.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => remove(t, segs),
        (DeValue::Array(a), Seg::Index(i)) => {
            let i = *i;
            if segs.len() == 1 {
                let span = a.get(i)?.span();
                let old = std::mem::replace(a, DeArray::new());
                *a = old
                    .into_iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, e)| e)
                    .collect();
                Some(span)
            } else {
                remove_in_value(a.as_mut().get_mut(i)?, &segs[1..])
            }
        }
        _ => None,
    }
}

/// Rephrases serde's Rust-flavoured wording in TOML terms.
fn friendly(message: &str) -> String {
    let m = message.trim();
    m.replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .replace("expected f64", "expected a number")
        .replace("expected i64", "expected an integer")
        .replace("expected u32", "expected an integer from 0 to 4294967295")
}
