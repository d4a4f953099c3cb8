//! The validated configuration model.
//!
//! Everything here has passed validation: references resolve, ranges hold, defaults are
//! filled in. The field docs double as operator documentation (see `config/README.md`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sluice_core::Id;

/// A whole, validated Sluice configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[server]`: listeners, data directory, proxies, GeoIP database.
    pub server: ServerConfig,
    /// `[api]`: the control API.
    pub api: ApiConfig,
    /// `[ladders.<id>]`: reusable ABR ladders, by id. `passthrough` is built in and
    /// never appears here. Default: none.
    pub ladders: BTreeMap<Id, Ladder>,
    /// `[channels.<id>]`: live events, by id. Default: none.
    pub channels: BTreeMap<Id, Channel>,
    /// `[distributions.<id>]`: ways to watch a channel, by id; the id is the first
    /// path segment of the playback URL (`/live/<id>/...`). Default: none.
    pub distributions: BTreeMap<Id, Distribution>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `http_listen`: plain HTTP listener (playback, API, metrics). Default `0.0.0.0:8080`.
    pub http_listen: SocketAddr,
    /// `https_listen`: optional HTTPS + HTTP/2 listener; needs `tls_cert` and `tls_key`.
    /// Default: none.
    pub https_listen: Option<SocketAddr>,
    /// `tls_cert`: PEM certificate chain for `https_listen`. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: PEM private key for `https_listen`. Default: none.
    pub tls_key: Option<PathBuf>,
    /// `rtmp_listen`: RTMP push listener (TCP). Default `0.0.0.0:1935`.
    pub rtmp_listen: SocketAddr,
    /// `srt_listen`: SRT push listener (UDP). Default `0.0.0.0:9000`.
    pub srt_listen: SocketAddr,
    /// `data_dir`: recordings and persisted state live under here; relative paths are
    /// relative to the working directory. Default `data`.
    pub data_dir: PathBuf,
    /// `trusted_proxies`: `X-Forwarded-For` is believed only from peers in these
    /// networks, read right to left. A bare address means that one host. Default: none.
    pub trusted_proxies: Vec<IpNet>,
    /// `geoip_database`: a MaxMind-format country database (`.mmdb`). Without one,
    /// geo rules fail closed. Default: none.
    pub geoip_database: Option<PathBuf>,
    /// `metrics`: `GET /metrics`, and the per-request counts and viewer counts behind it
    /// and the status API. `false`: none of them (`/metrics` answers 404, status shows
    /// no viewers). Default true.
    pub metrics: bool,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// `admin_tokens`: bearer tokens accepted by `/api/v1`. Empty: the control API
    /// answers 403 to everything. Default: none.
    pub admin_tokens: Vec<String>,
    /// `public_status`: `GET /` and `GET /api/v1/status` without a token (ids, states,
    /// viewer counts; never keys or tokens). Default true.
    pub public_status: bool,
}

/// `[ladders.<id>]`: an ABR ladder, shared by engines that name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ladder {
    /// `segment_seconds`: target segment duration; every rendition cuts at the same
    /// instants. 0.5 to 30. Default 2.0.
    pub segment_seconds: f64,
    /// `part_seconds`: LL-HLS part target; 0 turns parts (and LL-HLS) off, otherwise
    /// 0.1 to `segment_seconds`. Default 0.5.
    pub part_seconds: f64,
    /// `window_seconds`: media kept in live playlists (the DVR window); at least
    /// 3 × `segment_seconds`. Default 60.
    pub window_seconds: f64,
    /// `audio_kbps`: AAC bitrate shared by all renditions, 16 to 512. Default 128.
    pub audio_kbps: u32,
    /// `audio_passthrough`: input audio that is already AAC-LC at the ladder's 48 kHz
    /// stereo is packaged as it arrives instead of decoded and encoded again (its bitrate
    /// is then the encoder's, not `audio_kbps`). Default true.
    pub audio_passthrough: bool,
    /// `encoder`: what encodes the renditions: `auto` (default) uses the machine's video
    /// hardware when it has a usable encoder (NVENC, then VA-API) and x264 otherwise;
    /// `x264`, `nvenc` or `vaapi` name one (a hardware encoder named but not usable on the
    /// machine stops the server from starting, or a reload from applying).
    pub encoder: VideoEncoder,
    /// `encoder_preset`: x264 preset, `ultrafast` to `veryslow`. Default `veryfast`.
    /// Hardware encoders use their low-latency settings instead.
    pub encoder_preset: String,
    /// `reuse_top_rung`: when the input's video already has the first rendition's width
    /// and height and its keyframes fall on the segment grid, that rendition is the
    /// input as it arrives (not decoded, scaled nor encoded again). Checked on every
    /// input frame: the first segment boundary without an input keyframe switches the
    /// rendition to encoded video, at that boundary, for the rest of the session. The
    /// rendition's advertised bitrate stays `video_kbps`: set it to the encoder's.
    /// Default false.
    pub reuse_top_rung: bool,
    /// `renditions`: the video rungs, highest first by convention. Required, non-empty
    /// (empty only for the built-in passthrough ladder).
    pub renditions: Vec<Rendition>,
}

impl Ladder {
    /// The built-in `passthrough` ladder: default timing, no renditions (the input's
    /// video and audio are repackaged as they are).
    pub fn passthrough() -> Ladder {
        Ladder {
            segment_seconds: 2.0,
            part_seconds: 0.5,
            window_seconds: 60.0,
            audio_kbps: 128,
            audio_passthrough: true,
            encoder: VideoEncoder::Auto,
            encoder_preset: "veryfast".to_owned(),
            reuse_top_rung: false,
            renditions: Vec::new(),
        }
    }
}

/// A ladder's `encoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoEncoder {
    #[default]
    Auto,
    X264,
    Nvenc,
    Vaapi,
}

impl VideoEncoder {
    pub const ALL: [VideoEncoder; 4] = [
        VideoEncoder::Auto,
        VideoEncoder::X264,
        VideoEncoder::Nvenc,
        VideoEncoder::Vaapi,
    ];

    /// The name used in the configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            VideoEncoder::Auto => "auto",
            VideoEncoder::X264 => "x264",
            VideoEncoder::Nvenc => "nvenc",
            VideoEncoder::Vaapi => "vaapi",
        }
    }
}

/// One rung of a ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    /// `name`: an id, unique within the ladder; `audio` is reserved. Required.
    pub name: Id,
    /// `width`: output width in pixels, even, 16 to 7680. Required.
    pub width: u32,
    /// `height`: output height in pixels, even, 16 to 4320. Required.
    pub height: u32,
    /// `video_kbps`: H.264 target bitrate, 50 to 100000. Required.
    pub video_kbps: u32,
}

/// `[channels.<id>]`: one live event.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// `name`: human-readable title. Default: the channel's id.
    pub name: String,
    /// `[channels.<id>.ingests.<id>]`: how media enters; at least one.
    pub ingests: BTreeMap<Id, Ingest>,
    /// `[channels.<id>.engines.<id>]`: transcoders of the live input; at least one.
    pub engines: BTreeMap<Id, Engine>,
    /// `[channels.<id>.slate]`: what the engines play while no ingest is live.
    pub slate: Slate,
    /// `[channels.<id>.outputs.<id>]`: how the channel leaves this node (relays to other
    /// nodes, restreams, pulls by others). Default: none.
    pub outputs: BTreeMap<Id, ChannelOutput>,
    /// `[channels.<id>.sources.<id>]`: extra audio tracks from publishers of their own,
    /// placed on the channel's timeline. Default: none.
    pub sources: BTreeMap<Id, Source>,
}

/// `[channels.<id>.sources.<id>]`: an extra source of a channel. The main ingests stay
/// the timing reference: a source is placed on the channel's timeline by when its media
/// arrives (plus `offset_ms`).
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// `kind`: `audio` (an extra audio track in every engine's CMAF and TS outputs) or `video`
    /// (a camera angle: its own ladder, served by every distribution of the channel at
    /// `/live/<distribution>/angle/<source>/cmaf/index.m3u8`). Required.
    pub kind: SourceKind,
    /// How it arrives, with an ingest's keys and rules: `protocol` (`rtmp`, `srt`,
    /// `rtmp-pull`, `srt-pull`), `stream_key` or `url`, `passphrase`, `allow_cidrs`,
    /// `max_kbps`, `enabled` (a disabled source refuses its publisher and its track is
    /// silent). `priority` and the test-pattern keys do not apply.
    pub ingest: Ingest,
    /// `name`: what players show (`NAME` of its `EXT-X-MEDIA`). Default: the source's id.
    pub name: String,
    /// `language`: an RFC 5646 tag (`fr`, `pt-BR`), the `LANGUAGE` of its `EXT-X-MEDIA`.
    /// Default: none.
    pub language: Option<String>,
    /// `offset_ms`: added to where the source lands on the channel's timeline, for a
    /// fixed delay (negative: earlier, for a commentator who hears the stream late),
    /// -3000 to 3000. Default 0.
    pub offset_ms: i64,
    /// `default`: the track players pick first (`DEFAULT=YES`) instead of the main
    /// ingest's audio. At most one source per channel. Default false.
    pub default: bool,
    /// `ladder` (video sources): the renditions of the angle, usually a smaller ladder
    /// than the main one's. Default: the ladder of the channel's first transcoding
    /// engine. Its `segment_seconds` must be the channel's engines', so that segment N
    /// of the angle is segment N of the main stream. `None` for audio sources.
    pub ladder: Option<Ladder>,
}

/// `kind` of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Audio,
    Video,
}

/// `[channels.<id>.outputs.<id>]`: the channel leaving this node, pulled by others or
/// pushed by Sluice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOutput {
    /// `protocol`: `srt-listener` (pulled over SRT with `streamid=read:<read_key>`),
    /// `rtmp-play`, `rtmp-push` or `srt-caller`. Required.
    pub protocol: ChannelOutputProtocol,
    /// `enabled`: a disabled output refuses readers and pushes nothing. Default true.
    pub enabled: bool,
    /// `read_key`: pull outputs only, and required there: the key readers give, with the
    /// same form as a stream key and unique among all stream and read keys (so never a
    /// publish key).
    pub read_key: Option<String>,
    /// `passphrase`: SRT AES passphrase, 10 to 79 characters; SRT outputs only. Default:
    /// none (unencrypted).
    pub passphrase: Option<String>,
    /// `allow_cidrs`: pull outputs only; readers must connect from one of these networks.
    /// Empty: anyone holding the read key. Default: empty.
    pub allow_cidrs: Vec<IpNet>,
    /// `url`: push outputs only, and required there.
    pub url: Option<String>,
    /// `tracking_id` (and `tracking_param`, default `tracking_id`): push outputs only; an
    /// id the target can log or bill against, appended to `url` the way targets expect
    /// (see [`tracked_url`]). Default: none.
    pub tracking: Option<Tracking>,
    /// `engine` and `rendition` (both or neither): the output carries one rendition of one
    /// of the channel's engines (as encoded, with the audio) instead of the source. The
    /// rendition is a name of the engine's ladder (`source` for passthrough). Default: the
    /// source.
    pub rendition: Option<(Id, String)>,
}

impl ChannelOutput {
    /// Where a push output connects: `url` with the tracking id appended. `None` for pull
    /// outputs.
    pub fn target_url(&self) -> Option<String> {
        let url = self.url.as_ref()?;
        Some(match &self.tracking {
            // Validation refused the URLs this fails on.
            Some(t) => tracked_url(url, &t.param, &t.id).unwrap_or_else(|_| url.clone()),
            None => url.clone(),
        })
    }
}

/// A push output's tracking id and the name of the parameter that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracking {
    pub param: String,
    pub id: String,
}

/// The longest tracking id.
pub const MAX_TRACKING_ID: usize = 128;

/// A well-formed tracking id: 1 to [`MAX_TRACKING_ID`] letters, digits, `.`, `_`, `~` or
/// `-` (URL-safe: nothing to escape in an RTMP query or an SRT stream id). What `check`
/// allows a push output to send, and what a receiving node keeps.
pub fn is_tracking_id(s: &str) -> bool {
    (1..=MAX_TRACKING_ID).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
}

/// The parameter name a tracking id goes under when none is configured; Sluice as a
/// target reads this one.
pub const TRACKING_PARAM: &str = "tracking_id";

/// `url` with `param=id` appended the way each protocol's targets read extra
/// parameters:
/// - `rtmp://`: a query on the stream name (`.../app/name?param=id`, or `&param=id` after
///   a query already there), as nginx-rtmp (`on_publish` gets it), SRS, Wowza and Sluice
///   read it, while the stream keeps its name;
/// - `srt://`: a key of the access-control stream id (`#!::r=<key>,m=publish,param=id`);
///   a `publish:<key>` stream id is rewritten to that form. Other stream ids have no place
///   for it, and are refused, as is a stream id grown past SRT's 512 bytes.
pub fn tracked_url(url: &str, param: &str, id: &str) -> Result<String, &'static str> {
    if url.starts_with("rtmp://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        return Ok(format!("{url}{sep}{param}={id}"));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Err(
            "a tracking id needs a streamid in the srt url (?streamid=#!::r=<key>,m=publish)",
        );
    };
    let mut found = false;
    let mut pairs = Vec::new();
    for pair in query.split('&') {
        let Some(value) = pair.strip_prefix("streamid=") else {
            pairs.push(pair.to_owned());
            continue;
        };
        found = true;
        let grown = if let Some(key) = value.strip_prefix("publish:") {
            format!("%23!::r={key},m=publish,{param}={id}")
        } else if value.starts_with("#!::")
            || value
                .get(..3)
                .is_some_and(|p| p.eq_ignore_ascii_case("%23"))
        {
            format!("{value},{param}={id}")
        } else {
            return Err(
                "a tracking id needs the srt url's streamid as #!::r=<key>,m=publish or publish:<key>",
            );
        };
        // `%23` is one byte once decoded.
        let decoded_len = grown.len() - 2 * grown.matches('%').count();
        if decoded_len > 512 {
            return Err("the stream id with the tracking id is longer than SRT's 512 bytes");
        }
        pairs.push(format!("streamid={grown}"));
    }
    if !found {
        return Err(
            "a tracking id needs a streamid in the srt url (?streamid=#!::r=<key>,m=publish)",
        );
    }
    Ok(format!("{base}?{}", pairs.join("&")))
}

/// `protocol` of a channel output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelOutputProtocol {
    /// Readers call `srt_listen` with `streamid=read:<read_key>`.
    SrtListener,
    /// Readers play `rtmp://HOST/live/<read_key>`.
    RtmpPlay,
    /// Sluice publishes to an RTMP URL.
    RtmpPush,
    /// Sluice calls an SRT listener and sends.
    SrtCaller,
}

impl ChannelOutputProtocol {
    /// The name used in the configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelOutputProtocol::SrtListener => "srt-listener",
            ChannelOutputProtocol::RtmpPlay => "rtmp-play",
            ChannelOutputProtocol::RtmpPush => "rtmp-push",
            ChannelOutputProtocol::SrtCaller => "srt-caller",
        }
    }

    /// True where others connect to Sluice to read (`srt-listener`, `rtmp-play`).
    pub fn is_pull(&self) -> bool {
        matches!(
            self,
            ChannelOutputProtocol::SrtListener | ChannelOutputProtocol::RtmpPlay
        )
    }

    pub fn is_srt(&self) -> bool {
        matches!(
            self,
            ChannelOutputProtocol::SrtListener | ChannelOutputProtocol::SrtCaller
        )
    }
}

/// `[channels.<id>.slate]`: once the channel has been live, whenever no ingest is, the
/// engines play a still picture with silence, so players stay on the same playlists and
/// resume when a source returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slate {
    /// `enabled`. Default: true when some engine of the channel transcodes, false when
    /// they all pass through (a slate would be encoded for them alone).
    pub enabled: bool,
    /// `image`: a PNG or JPEG shown full frame. Default: a dark picture with a line of
    /// text.
    pub image: Option<PathBuf>,
    /// `timeout_minutes`: after this long on the slate the channel's playlists end
    /// (`EXT-X-ENDLIST`); 1 to 10080. Default 30.
    pub timeout_minutes: u32,
}

/// `[channels.<id>.ingests.<id>]`: one way media enters a channel. The live ingest with
/// the lowest `priority` feeds the engines; the others are backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingest {
    /// `protocol`: `rtmp`, `srt` (push), `rtmp-pull`, `srt-pull` (pull) or
    /// `test-pattern`. Required.
    pub protocol: IngestProtocol,
    /// `stream_key`: push ingests only, and required there: 1 to 128 printable ASCII
    /// characters without whitespace or any of `/ ? # & =`, unique across the whole
    /// configuration. `rtmp://HOST:1935/live/<key>`, `srt://HOST:9000?streamid=publish:<key>`.
    pub stream_key: Option<String>,
    /// `url`: pull ingests only, and required there: `rtmp://…` for `rtmp-pull`,
    /// `srt://…` for `srt-pull`.
    pub url: Option<String>,
    /// `passphrase`: SRT AES passphrase, 10 to 79 characters; `srt` and `srt-pull`
    /// only. Default: none (unencrypted).
    pub passphrase: Option<String>,
    /// `priority`: lower numbers are preferred. Default 1.
    pub priority: u32,
    /// `allow_cidrs`: push ingests only; publishers must connect from one of these
    /// networks. Empty: anyone holding the key. Default: empty.
    pub allow_cidrs: Vec<IpNet>,
    /// `max_kbps`: input bitrate cap; 0: no cap. Default 0.
    pub max_kbps: u32,
    /// `enabled`: a disabled ingest refuses publishers and is not pulled. Default true.
    pub enabled: bool,
    /// `width`, `height`, `fps`: picture of a `test-pattern` ingest (the keys are
    /// allowed only there). Default 1280×720 at 30.
    pub test_pattern: TestPattern,
}

/// `protocol` of an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngestProtocol {
    /// RTMP push to `rtmp_listen`.
    Rtmp,
    /// SRT push (caller) to `srt_listen`.
    Srt,
    /// Sluice pulls from an RTMP server.
    RtmpPull,
    /// Sluice calls an SRT listener.
    SrtPull,
    /// A built-in moving picture with a clock, and a tone.
    TestPattern,
}

impl IngestProtocol {
    /// The name used in the configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            IngestProtocol::Rtmp => "rtmp",
            IngestProtocol::Srt => "srt",
            IngestProtocol::RtmpPull => "rtmp-pull",
            IngestProtocol::SrtPull => "srt-pull",
            IngestProtocol::TestPattern => "test-pattern",
        }
    }

    /// True for protocols where the encoder connects to Sluice (`rtmp`, `srt`).
    pub fn is_push(&self) -> bool {
        matches!(self, IngestProtocol::Rtmp | IngestProtocol::Srt)
    }

    /// True for protocols where Sluice connects out (`rtmp-pull`, `srt-pull`).
    pub fn is_pull(&self) -> bool {
        matches!(self, IngestProtocol::RtmpPull | IngestProtocol::SrtPull)
    }
}

/// Picture of a `test-pattern` ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPattern {
    /// `width`: even, 16 to 7680. Default 1280.
    pub width: u32,
    /// `height`: even, 16 to 4320. Default 720.
    pub height: u32,
    /// `fps`: frames per second, 1 to 120. Default 30.
    pub fps: u32,
}

impl Default for TestPattern {
    fn default() -> Self {
        TestPattern {
            width: 1280,
            height: 720,
            fps: 30,
        }
    }
}

/// `[channels.<id>.engines.<id>]`: transcodes (or passes through) the channel's live
/// input and packages it. The healthy engine with the lowest `priority` serves new viewers.
#[derive(Debug, Clone, PartialEq)]
pub struct Engine {
    /// `ladder`: a `[ladders.*]` id, or `passthrough`. Required.
    pub ladder_ref: LadderRef,
    /// The ladder `ladder_ref` names, resolved; `Ladder::passthrough()` for passthrough.
    pub ladder: Ladder,
    /// `outputs`: packagings produced, non-empty, no duplicates. Default `["cmaf", "ts"]`.
    pub outputs: Vec<Output>,
    /// `priority`: lower numbers are preferred. Default 1.
    pub priority: u32,
    /// `record`: write what the engine produces to disk. Default: not recorded.
    pub record: Option<Record>,
}

/// `[channels.<id>.engines.<id>.record]`: the engine's segments written under
/// `server.data_dir`, with a VOD playlist per recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// `enabled`. Default true.
    pub enabled: bool,
    /// `format`: `cmaf` or `ts`, one the engine produces. Default: the engine's first
    /// output.
    pub format: Output,
    /// `rotate_minutes`: a recording ends and the next begins after this much media,
    /// 1 to 1440. Default 60.
    pub rotate_minutes: u32,
}
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LadderRef {
    /// `"passthrough"`: no transcoding.
    Passthrough,
    /// A `[ladders.<id>]` table.
    Named(Id),
}

/// A packaging of an engine's segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// fMP4/CMAF HLS; LL-HLS when the ladder has parts. `/live/<d>/cmaf/index.m3u8`.
    Cmaf,
    /// MPEG-TS HLS. `/live/<d>/ts/index.m3u8`.
    Ts,
}

impl Output {
    /// The name used in the configuration and in playback URLs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Output::Cmaf => "cmaf",
            Output::Ts => "ts",
        }
    }
}

/// `[distributions.<id>]`: an independently configured way to watch one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// `channel`: the channel served. Required.
    pub channel: Id,
    /// `engines`: which of the channel's engines may serve it, non-empty, no duplicates.
    /// Default: all the channel's engines, by priority then id.
    pub engines: Vec<Id>,
    /// `outputs`: packagings offered, each produced by at least one of `engines`.
    /// Default: `cmaf` and `ts`, those of them that the engines produce.
    pub outputs: Vec<Output>,
    /// `enabled`: a disabled distribution answers 404. Default true.
    pub enabled: bool,
    /// `max_kbps`: renditions above this total bitrate are left out; 0: no cap. Default 0.
    pub max_kbps: u32,
    /// `geo`: country rule, e.g. `{ mode = "allow", countries = ["DE", "FR"] }`.
    /// Default: none (every country).
    pub geo: Option<GeoRule>,
    /// `ip`: address rule, e.g. `{ mode = "deny", cidrs = ["203.0.113.0/24"] }`.
    /// Default: none (every address).
    pub ip: Option<IpRule>,
    /// `allowed_origins`: exact `Origin` values (`scheme://host[:port]`) allowed to
    /// play; empty: any. Default: empty.
    pub allowed_origins: Vec<String>,
    /// `target_latency_seconds`: sets the playlists' `PART-HOLD-BACK`/`HOLD-BACK`
    /// (never below RFC 8216bis minimums); 0: the engine's default. Default 0.
    pub target_latency_seconds: f64,
    /// `[distributions.<id>.token]`: viewer JWT settings.
    pub token: TokenConfig,
    /// `[[distributions.<id>.overrides]]`: first matching rule wins. Default: none.
    pub overrides: Vec<OverrideRule>,
    /// `audio_tracks`: the ids of the channel's audio sources this distribution offers
    /// (the main ingest's audio is always offered). Default: all of them.
    pub audio_tracks: Option<Vec<Id>>,
}

/// Whether a rule's list is an allow list or a deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// Only listed countries/addresses may play.
    Allow,
    /// Listed countries/addresses may not play.
    Deny,
}

impl RuleMode {
    /// The name used in the configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleMode::Allow => "allow",
            RuleMode::Deny => "deny",
        }
    }
}

/// `geo = { mode, countries }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoRule {
    /// `mode`: `allow` or `deny`. Required.
    pub mode: RuleMode,
    /// `countries`: ISO 3166-1 alpha-2 codes, uppercase (`XK` for Kosovo is accepted,
    /// as GeoIP databases use it). Required, non-empty.
    pub countries: Vec<String>,
}

/// `ip = { mode, cidrs }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    /// `mode`: `allow` or `deny`. Required.
    pub mode: RuleMode,
    /// `cidrs`: networks such as `203.0.113.0/24`; a bare address means one host.
    /// Required, non-empty.
    pub cidrs: Vec<IpNet>,
}

/// `[distributions.<id>.token]`: viewer tokens (JWTs, `?token=` or `Authorization: Bearer`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenConfig {
    /// `required`: viewers need a valid token with `aud` = the distribution id.
    /// Default false.
    pub required: bool,
    /// `keys`: verification keys, ids unique; non-empty when `required`. The first
    /// one signs tokens made by `sluice token`. Default: none.
    pub keys: Vec<TokenKey>,
    /// `issuer`: when set, a token's `iss` claim must equal it. Default: not checked.
    pub issuer: Option<String>,
}

/// One entry of `token.keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKey {
    /// `id`: non-empty, unique within the distribution; matched against the JWT `kid`.
    /// Required.
    pub id: String,
    /// `algorithm`: `HS256`, `HS384`, `HS512`, `RS256`, `ES256` or `EdDSA`. Required.
    pub algorithm: TokenAlgorithm,
    /// `secret`: HMAC secret, at least 16 characters; HS* only, required there.
    pub secret: Option<String>,
    /// `public_key_pem`: PEM public key; RS256, ES256 and EdDSA only, required there.
    pub public_key_pem: Option<String>,
}

/// JWT signature algorithms (RFC 7518, RFC 8037).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenAlgorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl TokenAlgorithm {
    /// The JOSE `alg` name, as used in the configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenAlgorithm::HS256 => "HS256",
            TokenAlgorithm::HS384 => "HS384",
            TokenAlgorithm::HS512 => "HS512",
            TokenAlgorithm::RS256 => "RS256",
            TokenAlgorithm::ES256 => "ES256",
            TokenAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// True for the HMAC algorithms, which take a `secret`.
    pub fn is_hmac(&self) -> bool {
        matches!(
            self,
            TokenAlgorithm::HS256 | TokenAlgorithm::HS384 | TokenAlgorithm::HS512
        )
    }
}

/// `[[distributions.<id>.overrides]]`: viewers matching every given criterion are
/// served one of `targets` instead. An absent criterion matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideRule {
    /// `device_type`: `tv`, `mobile`, `desktop` or `other`. Default: any.
    pub device_type: Option<DeviceType>,
    /// `sdk_type`: `native` or `web`. Default: any.
    pub sdk_type: Option<SdkType>,
    /// `os_name`: `apple`, `android`, `windows`, `roku` or `other`. Default: any.
    pub os_name: Option<OsName>,
    /// `profile_id`: exact match on the viewer's profile id. Default: any.
    pub profile_id: Option<String>,
    /// `targets`: distributions of the same channel, picked by relative weight,
    /// sticky per viewer. Required, non-empty, at least one weight above 0.
    pub targets: Vec<OverrideTarget>,
}

/// Viewer device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    Tv,
    Mobile,
    Desktop,
    Other,
}

impl DeviceType {
    /// The name used in the configuration and in query parameters.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceType::Tv => "tv",
            DeviceType::Mobile => "mobile",
            DeviceType::Desktop => "desktop",
            DeviceType::Other => "other",
        }
    }
}

/// Viewer player kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdkType {
    Native,
    Web,
}

impl SdkType {
    /// The name used in the configuration and in query parameters.
    pub fn as_str(&self) -> &'static str {
        match self {
            SdkType::Native => "native",
            SdkType::Web => "web",
        }
    }
}

/// Viewer operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsName {
    Apple,
    Android,
    Windows,
    Roku,
    Other,
}

impl OsName {
    /// The name used in the configuration and in query parameters.
    pub fn as_str(&self) -> &'static str {
        match self {
            OsName::Apple => "apple",
            OsName::Android => "android",
            OsName::Windows => "windows",
            OsName::Roku => "roku",
            OsName::Other => "other",
        }
    }
}

/// One entry of an override's `targets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideTarget {
    /// `distribution`: a distribution of the same channel (may be the rule's own).
    /// Required.
    pub distribution: Id,
    /// `weight`: relative share, 0 to 100. Required.
    pub weight: u8,
}
