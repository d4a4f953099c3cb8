//! The file as written: serde structs that mirror the TOML one to one.
//!
//! Every table denies unknown keys. Values that later checks must point at are
//! `Spanned`, so that a semantic error carries the byte range of the value itself.
//! Numbers whose range we check ourselves are read as `i64`/`f64`, so that an
//! out-of-range value gets our message rather than a bare integer-overflow one.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{
    ChannelOutputProtocol, DeviceType, IngestProtocol, OsName, Output, RuleMode, SdkType,
    TokenAlgorithm,
};

pub(crate) type S<T> = Spanned<T>;
pub(crate) type IdMap<T> = BTreeMap<S<String>, S<T>>;

#[derive(Debug, Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a table of [server], [api], [ladders.*], [channels.*] and [distributions.*]"
)]
pub(crate) struct RawConfig {
    pub server: Option<S<RawServer>>,
    pub api: Option<RawApi>,
    pub ladders: IdMap<RawLadder>,
    pub channels: IdMap<RawChannel>,
    pub distributions: IdMap<RawDistribution>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(crate) struct RawServer {
    pub http_listen: Option<S<String>>,
    pub https_listen: Option<S<String>>,
    pub tls_cert: Option<S<String>>,
    pub tls_key: Option<S<String>>,
    pub rtmp_listen: Option<S<String>>,
    pub srt_listen: Option<S<String>>,
    pub data_dir: Option<S<String>>,
    pub trusted_proxies: Vec<S<String>>,
    pub geoip_database: Option<S<String>>,
    pub metrics: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a table")]
pub(crate) struct RawApi {
    pub admin_tokens: Vec<S<String>>,
    pub public_status: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawLadder {
    pub segment_seconds: Option<S<f64>>,
    pub part_seconds: Option<S<f64>>,
    pub window_seconds: Option<S<f64>>,
    pub audio_kbps: Option<S<i64>>,
    pub audio_passthrough: Option<S<bool>>,
    pub encoder: Option<S<String>>,
    pub encoder_preset: Option<S<String>>,
    pub reuse_top_rung: Option<S<bool>>,
    pub renditions: Option<S<Vec<S<RawRendition>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { name, width, height, video_kbps }"
)]
pub(crate) struct RawRendition {
    pub name: S<String>,
    pub width: S<i64>,
    pub height: S<i64>,
    pub video_kbps: S<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawChannel {
    pub name: Option<String>,
    #[serde(default)]
    pub ingests: IdMap<RawIngest>,
    #[serde(default)]
    pub engines: IdMap<RawEngine>,
    /// Extra audio tracks and camera angles from publishers of their own.
    #[serde(default)]
    pub sources: IdMap<RawSource>,
    /// Relays, restreams and pull outputs.
    #[serde(default)]
    pub outputs: IdMap<RawChannelOutput>,
    pub slate: Option<S<RawSlate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawChannelOutput {
    pub protocol: S<ChannelOutputProtocol>,
    pub enabled: Option<bool>,
    pub read_key: Option<S<String>>,
    pub passphrase: Option<S<String>>,
    pub allow_cidrs: Option<S<Vec<S<String>>>>,
    pub url: Option<S<String>>,
    pub tracking_id: Option<S<String>>,
    pub tracking_param: Option<S<String>>,
    pub engine: Option<S<String>>,
    pub rendition: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSlate {
    pub enabled: Option<bool>,
    pub image: Option<S<String>>,
    pub timeout_minutes: Option<S<i64>>,
}

/// `[channels.<id>.sources.<id>]`: what it is, and how it arrives (an ingest's keys).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSource {
    pub kind: S<String>,
    pub name: Option<S<String>>,
    pub language: Option<S<String>>,
    pub offset_ms: Option<S<i64>>,
    pub default: Option<bool>,
    pub ladder: Option<S<String>>,
    pub protocol: S<IngestProtocol>,
    pub stream_key: Option<S<String>>,
    pub url: Option<S<String>>,
    pub passphrase: Option<S<String>>,
    pub allow_cidrs: Option<S<Vec<S<String>>>>,
    pub max_kbps: Option<S<u32>>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawIngest {
    pub protocol: S<IngestProtocol>,
    pub stream_key: Option<S<String>>,
    pub url: Option<S<String>>,
    pub passphrase: Option<S<String>>,
    pub priority: Option<u32>,
    pub allow_cidrs: Option<S<Vec<S<String>>>>,
    pub max_kbps: Option<S<u32>>,
    pub enabled: Option<bool>,
    pub width: Option<S<i64>>,
    pub height: Option<S<i64>>,
    pub fps: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawEngine {
    pub ladder: S<String>,
    pub outputs: Option<S<Vec<S<Output>>>>,
    pub priority: Option<u32>,
    pub record: Option<S<RawRecord>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { enabled, format, rotate_minutes }"
)]
pub(crate) struct RawRecord {
    pub enabled: Option<bool>,
    pub format: Option<S<Output>>,
    pub rotate_minutes: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDistribution {
    pub channel: S<String>,
    pub engines: Option<S<Vec<S<String>>>>,
    pub outputs: Option<S<Vec<S<Output>>>>,
    pub enabled: Option<bool>,
    pub max_kbps: Option<u32>,
    pub geo: Option<S<RawGeo>>,
    pub ip: Option<S<RawIp>>,
    #[serde(default)]
    pub allowed_origins: Vec<S<String>>,
    pub target_latency_seconds: Option<S<f64>>,
    pub token: Option<S<RawToken>>,
    #[serde(default)]
    pub overrides: Vec<S<RawOverride>>,
    pub audio_tracks: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table { mode, countries }")]
pub(crate) struct RawGeo {
    pub mode: RuleMode,
    pub countries: S<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table { mode, cidrs }")]
pub(crate) struct RawIp {
    pub mode: RuleMode,
    pub cidrs: S<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawToken {
    pub required: Option<bool>,
    #[serde(default)]
    pub keys: Vec<S<RawTokenKey>>,
    pub issuer: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table { id, algorithm, secret or public_key_pem }"
)]
pub(crate) struct RawTokenKey {
    pub id: S<String>,
    pub algorithm: TokenAlgorithm,
    pub secret: Option<S<String>>,
    pub public_key_pem: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawOverride {
    pub device_type: Option<DeviceType>,
    pub sdk_type: Option<SdkType>,
    pub os_name: Option<OsName>,
    pub profile_id: Option<S<String>>,
    #[serde(default)]
    pub targets: Vec<S<RawTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table { distribution, weight }")]
pub(crate) struct RawTarget {
    pub distribution: S<String>,
    pub weight: S<i64>,
}
