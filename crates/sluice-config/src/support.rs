//! What the server acts on today, of everything the schema accepts.
//!
//! The schema (`validate`) is the whole product; the server grows into it. A key that
//! grants or restricts access, or changes what viewers and encoders get, is refused
//! here with its position and "not supported yet" until the server enforces it, so a
//! rule is never accepted and then ignored (fail closed). When a feature lands, its
//! line here goes and its tests move to the feature.
//!
//! Enforced so far, so no longer refused: viewer tokens (`token`), geo rules (`geo`), IP
//! rules (`ip`), `allowed_origins` (sluice-distribution's `policy`), `overrides`
//! (its `overrides`), SRT push ingests with their `passphrase` (sluice-ingest's
//! `srt`), pull ingests (`pull`), backup ingests by `priority` (its `bus`), audio sources
//! (its `bus`, sluice-package's `packager`) and video sources, camera angles (its `bus`,
//! sluice-server's `engine_runner`).
//!
//! Keys that only say where to listen or store (`data_dir`, ...) stay accepted;
//! [`not_served_yet`] lists them for a log line at start.

use crate::model::Config;
use crate::parse::Problem;
use crate::raw::RawConfig;

/// Appends a problem for every key in `raw` that the server would not enforce: none
/// today. Camera angles (video sources), the last, are served by sluice-server's angle
/// engines. A key added to the schema before the server acts on it gets a line here
/// (its span, and "not supported yet: <what>; remove it until it is").
pub(crate) fn refuse_unsupported(raw: &RawConfig, problems: &mut Vec<Problem>) {
    let _ = (raw, problems);
}

/// Accepted settings the server does not act on yet, one sentence each, for a log line
/// at start.
pub fn not_served_yet(c: &Config) -> Vec<String> {
    let _ = c;
    Vec::new()
}
