//! Sluice's configuration: the TOML schema, its validation into a checked model, and
//! errors that point at the offending line and column.
//!
//! ```
//! let config = sluice_config::Config::from_toml_str(sluice_config::DEFAULT_CONFIG_TOML, "default.toml")
//!     .expect("the embedded default is valid");
//! assert!(config.distributions.contains_key("demo"));
//! ```
//!
//! Every key, its default and meaning are documented on the model's fields and in
//! `config/README.md`. Parsing never panics, whatever the input; every problem in a
//! file is reported, not just the first.

mod countries;
pub mod edit;
mod error;
mod model;
mod parse;
mod raw;
mod support;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use model::{
    ApiConfig, Channel, ChannelOutput, ChannelOutputProtocol, Config, DeviceType, Distribution,
    Engine, GeoRule, Ingest, IngestProtocol, IpRule, Ladder, LadderRef, MAX_TRACKING_ID, OsName,
    Output, OverrideRule, OverrideTarget, Record, Rendition, RuleMode, SdkType, ServerConfig,
    Slate, Source, SourceKind, TRACKING_PARAM, TestPattern, TokenAlgorithm, TokenConfig, TokenKey,
    Tracking, VideoEncoder, is_tracking_id, tracked_url,
};
pub use support::not_served_yet;

/// The configuration `sluice serve` runs with when no `--config` is given.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/default.toml");

impl Config {
    /// Parses and validates a whole configuration for the server as it is: besides
    /// every schema error, each key the server does not enforce yet is refused with
    /// "not supported yet" (never accepted and ignored). `origin` is the file name used
    /// in messages. On failure every problem found is returned, in file order.
    pub fn from_toml_str(src: &str, origin: &str) -> Result<Config, ConfigErrors> {
        Self::parse(src, origin, true)
    }

    /// Validates against the whole schema, including keys the server does not act on
    /// yet. For tools and tests of the schema; `sluice check` and `serve` use
    /// [`Config::from_toml_str`].
    pub fn from_toml_str_full_schema(src: &str, origin: &str) -> Result<Config, ConfigErrors> {
        Self::parse(src, origin, false)
    }

    fn parse(src: &str, origin: &str, supported_only: bool) -> Result<Config, ConfigErrors> {
        let mut problems = Vec::new();
        let parsed = parse::parse(src, &mut problems);
        if supported_only && let Some(raw) = &parsed.raw {
            support::refuse_unsupported(raw, &mut problems);
        }
        let config = parsed
            .raw
            .as_ref()
            .and_then(|raw| validate::validate(raw, &parsed, &mut problems));
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(errors(src, origin, problems, &parsed.index)),
        }
    }

    /// Reads and validates the file at `path`. A read failure is one error at 0:0.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(src) => Config::from_toml_str(&src, &origin),
            Err(e) => Err(ConfigErrors {
                origin,
                errors: vec![ConfigError {
                    line: 0,
                    column: 0,
                    path: String::new(),
                    message: format!("cannot read the configuration file: {e}"),
                }],
            }),
        }
    }

    /// The embedded default configuration (`DEFAULT_CONFIG_TOML`), validated.
    ///
    /// # Panics
    /// Only if the embedded file is invalid, which a unit test rules out.
    pub fn default_embedded() -> Config {
        match Config::from_toml_str(DEFAULT_CONFIG_TOML, "config/default.toml") {
            Ok(config) => config,
            Err(e) => panic!("the embedded default configuration is invalid:\n{e}"),
        }
    }
}

/// Turns spans into lines, columns and paths; sorts into file order.
fn errors(
    src: &str,
    origin: &str,
    mut problems: Vec<parse::Problem>,
    index: &parse::SpanIndex,
) -> ConfigErrors {
    if problems.is_empty() {
        // Not reachable (validation only withholds the model with a reason), but an
        // error without a message is better than a panic.
        problems.push(parse::Problem {
            span: 0..0,
            message: "invalid configuration".into(),
        });
    }
    problems.sort_by_key(|p| p.span.start);
    problems.dedup_by(|a, b| a.span == b.span && a.message == b.message);
    let errors = problems
        .into_iter()
        .map(|p| {
            let (line, column) = error::line_col(src, p.span.start);
            let path = index.path(&p.span).unwrap_or_default().to_owned();
            ConfigError {
                line,
                column,
                path,
                message: p.message,
            }
        })
        .collect();
    ConfigErrors {
        origin: origin.to_owned(),
        errors,
    }
}

#[cfg(test)]
mod tests;
