//! Changes to a configuration file that keep what the operator wrote: comments, key
//! order and formatting of every key a change does not touch (`toml_edit`), and an
//! atomic write-back.
//!
//! The control API reads resources as JSON in the TOML's key names and changes them
//! with JSON merge patches (RFC 7396) applied here to the document itself, so a patch
//! of `max_kbps` rewrites that one value and nothing around it. Validation is the
//! caller's: [`ConfigDocument::text`] goes through [`crate::Config::from_toml_str`] like
//! any file.
//!
//! ```
//! use sluice_config::edit::ConfigDocument;
//! let mut doc = ConfigDocument::parse("[distributions.d]\n# who may watch\nmax_kbps = 0 # none\n").unwrap();
//! let patch = serde_json::json!({ "max_kbps": 3000 });
//! doc.merge_patch(&["distributions", "d"], &patch).unwrap();
//! assert_eq!(doc.text(), "[distributions.d]\n# who may watch\nmax_kbps = 3000 # none\n");
//! ```

use std::io::Write;
use std::path::Path;

use serde_json::Value as Json;
use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// Why an edit could not be made (before any validation of the result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Nothing at this key path.
    #[error("{0}: no such item")]
    NotFound(String),
    /// `insert` of something that is already there.
    #[error("{0}: already exists")]
    Exists(String),
    /// A JSON value TOML cannot hold, or a body of the wrong shape; the key path and why.
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// A configuration file as text, editable in place.
#[derive(Debug, Clone)]
pub struct ConfigDocument {
    doc: DocumentMut,
}

impl ConfigDocument {
    /// The document of `src`; `Err` with the parser's message when it is not TOML
    /// (validation of the schema is [`crate::Config::from_toml_str`]'s).
    pub fn parse(src: &str) -> Result<Self, String> {
        src.parse::<DocumentMut>()
            .map(|doc| ConfigDocument { doc })
            .map_err(|e| e.to_string())
    }

    /// The file's text with every change made.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// The item at `path` (table keys), as JSON in the TOML's key names; `None` when
    /// there is none.
    pub fn get(&self, path: &[&str]) -> Option<Json> {
        lookup(self.doc.as_item(), path).map(item_to_json)
    }

    /// The keys of the table at `path`, in file order (empty when there is none).
    pub fn keys(&self, path: &[&str]) -> Vec<String> {
        match lookup(self.doc.as_item(), path) {
            Some(Item::Table(t)) => t.iter().map(|(k, _)| k.to_string()).collect(),
            Some(Item::Value(Value::InlineTable(t))) => {
                t.iter().map(|(k, _)| k.to_string()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Adds a table at `path` (its parents are made as needed) with `value`'s keys.
    /// `value` must be a JSON object; an item already there is [`EditError::Exists`].
    pub fn insert(&mut self, path: &[&str], value: &Json) -> Result<(), EditError> {
        let (last, parents) = split(path)?;
        if !value.is_object() {
            return Err(EditError::Invalid(
                dotted(path),
                "the body must be a JSON object".into(),
            ));
        }
        let here = dotted(path);
        // Under an inline table (`ingests = { a = { ... } }`), the new one goes inline too.
        if let Some(parent) = inline_at(self.doc.as_table_mut(), parents) {
            if parent.contains_key(last) {
                return Err(EditError::Exists(here));
            }
            let mut table = InlineTable::new();
            merge_into_inline(&mut table, value, &here)?;
            parent.insert(last, Value::InlineTable(table));
            return Ok(());
        }
        let parent = table_at(self.doc.as_table_mut(), parents, true)
            .ok_or_else(|| EditError::Invalid(dotted(parents), "not a table".into()))?;
        if parent.contains_key(last) {
            return Err(EditError::Exists(here));
        }
        let mut table = Table::new();
        merge_into_table(&mut table, value, &here)?;
        parent.insert(last, Item::Table(table));
        Ok(())
    }

    /// Applies a JSON merge patch (RFC 7396) to the table at `path`: `null` removes a
    /// key, an object merges into the table or inline table there, anything else
    /// replaces the value. Keys the patch does not name keep their text exactly.
    pub fn merge_patch(&mut self, path: &[&str], patch: &Json) -> Result<(), EditError> {
        if !patch.is_object() {
            return Err(EditError::Invalid(
                dotted(path),
                "a merge patch of a resource must be a JSON object".into(),
            ));
        }
        let here = dotted(path);
        let (last, parents) = split(path)?;
        // The resource may be a table or an inline table (`copy = { ladder = "x" }`).
        match table_at(self.doc.as_table_mut(), parents, false).and_then(|t| t.get_mut(last)) {
            Some(Item::Table(t)) => merge_into_table(t, patch, &here),
            Some(Item::Value(Value::InlineTable(t))) => merge_into_inline(t, patch, &here),
            // Or inside an inline table itself.
            _ => match inline_at(self.doc.as_table_mut(), parents).and_then(|t| t.get_mut(last)) {
                Some(Value::InlineTable(t)) => merge_into_inline(t, patch, &here),
                _ => Err(EditError::NotFound(here)),
            },
        }
    }

    /// Removes the item at `path`; [`EditError::NotFound`] when there is none.
    pub fn remove(&mut self, path: &[&str]) -> Result<(), EditError> {
        let (last, parents) = split(path)?;
        if let Some(parent) = table_at(self.doc.as_table_mut(), parents, false)
            && parent.remove(last).is_some()
        {
            return Ok(());
        }
        // Inside an inline table.
        if let Some(parent) = inline_at(self.doc.as_table_mut(), parents)
            && parent.remove(last).is_some()
        {
            return Ok(());
        }
        Err(EditError::NotFound(dotted(path)))
    }
}

/// A path's last key and the path to its parent; an empty path is refused.
fn split<'a, 'p>(path: &'a [&'p str]) -> Result<(&'p str, &'a [&'p str]), EditError> {
    match path.split_last() {
        Some((last, parents)) => Ok((*last, parents)),
        None => Err(EditError::Invalid(String::new(), "empty path".into())),
    }
}

/// The inline table at `path` below `root` (its parent a standard table), if that is
/// what is there: resources written inline (`engines = { copy = { ... } }`).
fn inline_at<'a>(root: &'a mut Table, path: &[&str]) -> Option<&'a mut InlineTable> {
    let (key, parents) = path.split_last()?;
    table_at(root, parents, false)?
        .get_mut(key)?
        .as_inline_table_mut()
}

fn dotted(path: &[&str]) -> String {
    path.join(".")
}

fn lookup<'a>(item: &'a Item, path: &[&str]) -> Option<&'a Item> {
    path.iter().try_fold(item, |item, key| match item {
        Item::Table(t) => t.get(key),
        Item::Value(Value::InlineTable(_)) => item.get(key),
        _ => None,
    })
}

/// The table at `path` below `root`, a standard table (implicit parents made when
/// `create`; an inline table on the way is not descended into, so that the result can
/// hold sub-tables).
fn table_at<'a>(root: &'a mut Table, path: &[&str], create: bool) -> Option<&'a mut Table> {
    let mut table = root;
    for key in path {
        if create && !table.contains_key(key) {
            let mut t = Table::new();
            t.set_implicit(true);
            table.insert(key, Item::Table(t));
        }
        table = table.get_mut(key)?.as_table_mut()?;
    }
    Some(table)
}

/// A patch's keys with their values and key paths; `Err` when it is not an object.
fn fields<'a>(
    patch: &'a Json,
    at: &'a str,
) -> Result<impl Iterator<Item = (&'a String, &'a Json, String)>, EditError> {
    let Json::Object(fields) = patch else {
        return Err(EditError::Invalid(at.into(), "expected an object".into()));
    };
    Ok(fields.iter().map(move |(k, v)| (k, v, format!("{at}.{k}"))))
}

fn merge_into_table(table: &mut Table, patch: &Json, at: &str) -> Result<(), EditError> {
    for (key, value, here) in fields(patch, at)? {
        match value {
            Json::Null => {
                table.remove(key);
            }
            Json::Object(_) => match table.get_mut(key) {
                Some(Item::Table(sub)) => merge_into_table(sub, value, &here)?,
                Some(Item::Value(Value::InlineTable(sub))) => merge_into_inline(sub, value, &here)?,
                _ => {
                    table.insert(key, new_table_item(value, &here)?);
                }
            },
            Json::Array(items)
                if !items.is_empty()
                    && items.iter().all(Json::is_object)
                    && matches!(table.get(key), Some(Item::ArrayOfTables(_))) =>
            {
                // Arrays of tables (`[[distributions.x.overrides]]`) stay arrays of tables;
                // anything else is written inline.
                let mut array = ArrayOfTables::new();
                for (i, item) in items.iter().enumerate() {
                    let mut t = Table::new();
                    merge_into_table(&mut t, item, &format!("{here}[{i}]"))?;
                    array.push(t);
                }
                table.insert(key, Item::ArrayOfTables(array));
            }
            _ => {
                let new = json_to_value(value, &here)?;
                match table.get_mut(key) {
                    // Keeps the comment and spacing around the old value.
                    Some(Item::Value(old)) => replace_value(old, new),
                    _ => {
                        table.insert(key, Item::Value(new));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A new table from JSON: a map of resources by id (every value an object, as
/// `ingests`, `engines`) becomes a header table per id (`[channels.c.ingests.main]`); a
/// small table (`geo`, `token`) goes inline, as operators write them.
fn new_table_item(value: &Json, at: &str) -> Result<Item, EditError> {
    match value {
        Json::Object(fields) if !fields.is_empty() && fields.values().all(Json::is_object) => {
            let mut parent = Table::new();
            parent.set_implicit(true);
            for (id, child) in fields {
                let mut t = Table::new();
                merge_into_table(&mut t, child, &format!("{at}.{id}"))?;
                parent.insert(id, Item::Table(t));
            }
            Ok(Item::Table(parent))
        }
        _ => {
            let mut sub = InlineTable::new();
            merge_into_inline(&mut sub, value, at)?;
            Ok(Item::Value(Value::InlineTable(sub)))
        }
    }
}

fn merge_into_inline(table: &mut InlineTable, patch: &Json, at: &str) -> Result<(), EditError> {
    for (key, value, here) in fields(patch, at)? {
        match value {
            Json::Null => {
                table.remove(key);
            }
            Json::Object(_) => match table.get_mut(key) {
                Some(Value::InlineTable(sub)) => merge_into_inline(sub, value, &here)?,
                _ => {
                    let mut sub = InlineTable::new();
                    merge_into_inline(&mut sub, value, &here)?;
                    table.insert(key, Value::InlineTable(sub));
                }
            },
            _ => {
                let new = json_to_value(value, &here)?;
                match table.get_mut(key) {
                    Some(old) => replace_value(old, new),
                    None => {
                        table.insert(key, new);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Puts `new` where `old` was, with `old`'s comment and spacing; an array written one
/// item per line stays so.
fn replace_value(old: &mut Value, mut new: Value) {
    let multiline = matches!(old, Value::Array(a) if a.to_string().contains('\n'));
    if let (true, Value::Array(array)) = (multiline, &mut new) {
        for item in array.iter_mut() {
            item.decor_mut().set_prefix("\n  ");
        }
        array.set_trailing_comma(true);
        array.set_trailing("\n");
    }
    let decor = old.decor().clone();
    *old = new;
    *old.decor_mut() = decor;
}

/// A JSON value as a TOML value: objects become inline tables; `null` (which TOML
/// cannot hold) is refused with its key path.
fn json_to_value(json: &Json, at: &str) -> Result<Value, EditError> {
    Ok(match json {
        Json::Null => {
            return Err(EditError::Invalid(
                at.into(),
                "null is only allowed to remove a key of a table".into(),
            ));
        }
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) if n.as_u64().is_none() => Value::from(f),
            _ => {
                return Err(EditError::Invalid(
                    at.into(),
                    format!("{n} does not fit a TOML integer"),
                ));
            }
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => {
            let mut array = toml_edit::Array::new();
            for (i, item) in items.iter().enumerate() {
                array.push(json_to_value(item, &format!("{at}[{i}]"))?);
            }
            Value::Array(array)
        }
        Json::Object(_) => {
            let mut t = InlineTable::new();
            merge_into_inline(&mut t, json, at)?;
            Value::InlineTable(t)
        }
    })
}

fn item_to_json(item: &Item) -> Json {
    match item {
        Item::None => Json::Null,
        Item::Value(v) => value_to_json(v),
        Item::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), item_to_json(v)))
                .collect(),
        ),
        Item::ArrayOfTables(a) => Json::Array(
            a.iter()
                .map(|t| item_to_json(&Item::Table(t.clone())))
                .collect(),
        ),
    }
}

fn value_to_json(value: &Value) -> Json {
    match value {
        Value::String(s) => Json::String(s.value().clone()),
        Value::Integer(i) => Json::from(*i.value()),
        // NaN and infinities have no JSON form: their TOML spelling, as a string.
        Value::Float(f) => serde_json::Number::from_f64(*f.value())
            .map_or_else(|| Json::String(f.value().to_string()), Json::Number),
        Value::Boolean(b) => Json::Bool(*b.value()),
        Value::Datetime(d) => Json::String(d.value().to_string()),
        Value::Array(a) => Json::Array(a.iter().map(value_to_json).collect()),
        Value::InlineTable(t) => Json::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), value_to_json(v)))
                .collect(),
        ),
    }
}

/// Replaces the file at `path` with `contents` atomically: written to a temporary file
/// beside it, flushed to disk, then renamed over it (and the directory synced), so a
/// crash at any point leaves either the old file or the new one, never a mix. The
/// file's permissions are kept.
pub fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    write_atomically_with(path, contents, || Ok(()))
}

/// [`write_atomically`] with `before_rename` run between the flushed temporary file and
/// the rename; its error abandons the write (the temporary file is removed). Tests
/// simulate a crash there.
pub fn write_atomically_with(
    path: &Path,
    contents: &str,
    before_rename: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    // A symlinked file is replaced at its target (the link stays a link).
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let temp = dir.join(format!(".{name}.sluice-{}.tmp", std::process::id()));
    let permissions = std::fs::metadata(&path).ok().map(|m| m.permissions());
    let mut created = false;
    let result = (|| {
        // A new file (never one already there, nor through a symlink put in its
        // place), never readable by more than the file it replaces.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            options.mode(permissions.as_ref().map_or(0o600, |p| p.mode() & 0o777));
        }
        let mut file = options.open(&temp)?;
        created = true;
        if let Some(p) = &permissions {
            file.set_permissions(p.clone())?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        drop(file);
        before_rename()?;
        std::fs::rename(&temp, &path)?;
        // The rename itself is durable once the directory is.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() && created {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"# The operator's notes.
[channels.a]   # channel a
name = "A"

[channels.a.ingests.main]
protocol = "rtmp"
stream_key = "ka"

[channels.a.engines.src]
ladder = "passthrough"

# Resellers below.
[distributions.d]
channel = "a"          # the channel
engines = ["src"]
max_kbps = 0           # 0: no cap
geo = { mode = "allow", countries = ["DE"] }   # EU only

[[distributions.d.overrides]]
device_type = "mobile"   # phones
targets = [{ distribution = "e", weight = 100 }]

[distributions.e]
channel = "a"
engines = ["src"]
"#;

    #[test]
    fn patch_changes_only_what_it_names() {
        let mut doc = ConfigDocument::parse(FILE).unwrap();
        doc.merge_patch(
            &["distributions", "d"],
            &json!({"max_kbps": 3000, "geo": {"countries": ["DE", "FR"]}}),
        )
        .unwrap();
        let text = doc.text();
        let expected = FILE
            .replace(
                "max_kbps = 0           # 0: no cap",
                "max_kbps = 3000           # 0: no cap",
            )
            .replace("countries = [\"DE\"] }", "countries = [\"DE\", \"FR\"] }");
        assert_eq!(text, expected);
        assert_eq!(
            doc.get(&["distributions", "d", "geo"]),
            Some(json!({"mode": "allow", "countries": ["DE", "FR"]}))
        );
    }

    #[test]
    fn null_removes_and_arrays_of_tables_stay_tables() {
        let mut doc = ConfigDocument::parse(FILE).unwrap();
        doc.merge_patch(&["distributions", "d"], &json!({"geo": null}))
            .unwrap();
        assert!(!doc.text().contains("EU only"));
        assert!(doc.text().contains("# The operator's notes."));
        doc.merge_patch(
            &["distributions", "d"],
            &json!({"overrides": [{"os_name": "ios", "targets": [{"distribution": "e", "weight": 1}]}]}),
        )
        .unwrap();
        assert!(
            doc.text()
                .contains("[[distributions.d.overrides]]\nos_name = \"ios\"")
        );
        assert!(!doc.text().contains("phones"));
        doc.merge_patch(&["distributions", "d"], &json!({"overrides": []}))
            .unwrap();
        assert_eq!(
            doc.get(&["distributions", "d", "overrides"]),
            Some(json!([]))
        );
        // Still a file the schema reads.
        crate::Config::from_toml_str(&doc.text(), "t.toml").unwrap();
    }

    #[test]
    fn arrays_written_one_item_per_line_stay_so() {
        let src =
            "[ladders.l]\nrenditions = [\n  { name = \"a\", video_kbps = 1 },\n]  # the ladder\n";
        let mut doc = ConfigDocument::parse(src).unwrap();
        doc.merge_patch(
            &["ladders", "l"],
            &json!({"renditions": [{"name": "a", "video_kbps": 2}, {"name": "b", "video_kbps": 3}]}),
        )
        .unwrap();
        assert_eq!(
            doc.text(),
            "[ladders.l]\nrenditions = [\n  { name = \"a\", video_kbps = 2 },\n  { name = \"b\", video_kbps = 3 },\n]  # the ladder\n"
        );
    }

    #[test]
    fn resources_written_inline_are_edited_inline() {
        let src = "[channels.c]\nengines = { copy = { ladder = \"passthrough\" } }  # kept\n";
        let mut doc = ConfigDocument::parse(src).unwrap();
        let engine = ["channels", "c", "engines", "copy"];
        doc.merge_patch(&engine, &json!({"priority": 2})).unwrap();
        assert_eq!(
            doc.get(&engine),
            Some(json!({"ladder": "passthrough", "priority": 2}))
        );
        doc.insert(
            &["channels", "c", "engines", "more"],
            &json!({"ladder": "l"}),
        )
        .unwrap();
        assert_eq!(
            doc.insert(&["channels", "c", "engines", "more"], &json!({})),
            Err(EditError::Exists("channels.c.engines.more".into()))
        );
        doc.remove(&engine).unwrap();
        assert_eq!(
            doc.keys(&["channels", "c", "engines"]),
            vec!["more".to_string()]
        );
        assert!(doc.text().contains("# kept"), "{}", doc.text());
        assert!(matches!(
            doc.merge_patch(&["channels", "c", "engines", "none"], &json!({})),
            Err(EditError::NotFound(_))
        ));
    }

    #[test]
    fn insert_and_remove() {
        let mut doc = ConfigDocument::parse(FILE).unwrap();
        doc.insert(
            &["distributions", "f"],
            &json!({"channel": "a", "engines": ["src"], "token": {"required": false}}),
        )
        .unwrap();
        assert_eq!(
            doc.insert(&["distributions", "f"], &json!({})),
            Err(EditError::Exists("distributions.f".into()))
        );
        assert_eq!(
            doc.keys(&["distributions"]),
            vec!["d".to_string(), "e".into(), "f".into()]
        );
        crate::Config::from_toml_str(&doc.text(), "t.toml").unwrap();
        doc.remove(&["distributions", "e"]).unwrap();
        assert_eq!(
            doc.remove(&["distributions", "e"]),
            Err(EditError::NotFound("distributions.e".into()))
        );
        assert!(doc.text().contains("# Resellers below."));
        assert!(doc.get(&["distributions", "e"]).is_none());
        // A new channel under an existing parent, with sub-tables.
        doc.insert(
            &["channels", "b"],
            &json!({"ingests": {"main": {"protocol": "rtmp", "stream_key": "kb"}}}),
        )
        .unwrap();
        assert_eq!(
            doc.get(&["channels", "b", "ingests", "main", "protocol"]),
            Some(json!("rtmp"))
        );
        assert!(
            doc.text()
                .contains("[channels.b.ingests.main]\nprotocol = \"rtmp\""),
            "{}",
            doc.text()
        );
    }

    #[test]
    fn values_toml_cannot_hold_are_refused_with_their_path() {
        let mut doc = ConfigDocument::parse(FILE).unwrap();
        let e = doc
            .merge_patch(&["distributions", "d"], &json!({"engines": ["src", null]}))
            .unwrap_err();
        assert_eq!(
            e,
            EditError::Invalid(
                "distributions.d.engines[1]".into(),
                "null is only allowed to remove a key of a table".into()
            )
        );
        assert!(matches!(
            doc.merge_patch(&["distributions", "nope"], &json!({})),
            Err(EditError::NotFound(_))
        ));
        assert!(matches!(
            doc.merge_patch(&["distributions", "d"], &json!([1])),
            Err(EditError::Invalid(..))
        ));
        assert!(matches!(
            doc.merge_patch(&["distributions", "d"], &json!({"max_kbps": u64::MAX})),
            Err(EditError::Invalid(..))
        ));
    }

    #[test]
    fn atomic_write_replaces_or_leaves_the_old_file() {
        let dir = std::env::temp_dir().join(format!("sluice-edit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, "old\n").unwrap();
        // A crash between the flushed temporary file and the rename.
        let crash = write_atomically_with(&path, "new\n", || {
            Err(std::io::Error::other("simulated crash"))
        });
        assert!(crash.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        // Through a symlink: the target is replaced, the link stays.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let link = dir.join("link.toml");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            write_atomically(&link, "newer\n").unwrap();
            assert!(
                std::fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "newer\n");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "the file's permissions are kept");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
