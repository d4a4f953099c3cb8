//! Semantic checks: from `RawConfig` to the validated `Config`.
//!
//! Every check reports at the span of the value it is about and carries on, so one run
//! finds every problem. References to items that were cut out as malformed (see
//! `parse`) are not reported again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use ipnet::IpNet;
use sluice_core::Id;

use crate::countries::is_country;
use crate::model::{
    ApiConfig, Channel, ChannelOutput, ChannelOutputProtocol, Config, Distribution, Engine,
    GeoRule, Ingest, IngestProtocol, IpRule, Ladder, LadderRef, Output, OverrideRule,
    OverrideTarget, Record, Rendition, ServerConfig, Slate, Source, SourceKind, TRACKING_PARAM,
    TestPattern, TokenConfig, TokenKey, Tracking, VideoEncoder, is_tracking_id, tracked_url,
};
use crate::parse::{Parsed, Problem, SpanIndex, key_path};
use crate::raw::{
    RawChannel, RawChannelOutput, RawConfig, RawDistribution, RawEngine, RawIngest, RawLadder,
    RawOverride, RawRecord, RawServer, RawSlate, RawSource, RawToken, S,
};

/// The longest live window: the store keeps every rendition's window in memory.
const MAX_WINDOW_SECONDS: f64 = 3600.0;

/// x264's presets, fastest first (`placebo` left out on purpose).
const PRESETS: [&str; 9] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];
const PASSTHROUGH: &str = "passthrough";
const ALL_OUTPUTS: [Output; 2] = [Output::Cmaf, Output::Ts];

/// Checks `parsed`, appending problems; returns the model only when there were none
/// (neither here nor before).
pub(crate) fn validate(
    raw: &RawConfig,
    parsed: &Parsed,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut c = Checker {
        index: &parsed.index,
        removed: &parsed.removed,
        problems: Vec::new(),
        stream_keys: Vec::new(),
    };
    let server = c.server(raw.server.as_ref());
    let api = ApiConfig {
        admin_tokens: raw
            .api
            .iter()
            .flat_map(|a| &a.admin_tokens)
            .map(|t| c.admin_token(t))
            .collect(),
        public_status: raw
            .api
            .as_ref()
            .and_then(|a| a.public_status)
            .unwrap_or(true),
    };
    let mut ladders = BTreeMap::new();
    let mut by_name = HashMap::new();
    for (key, l) in &raw.ladders {
        let ladder = c.ladder(&key_path("ladders", key.get_ref()), l);
        by_name.insert(key.get_ref().as_str(), ladder.clone());
        if key.get_ref() == PASSTHROUGH {
            c.err(
                key.span(),
                "`passthrough` is the built-in ladder; give this one another id",
            );
        } else if let Some(id) = c.id(key, "ladder") {
            ladders.insert(id, ladder);
        }
    }
    let mut channels = BTreeMap::new();
    for (key, ch) in &raw.channels {
        let channel = c.channel(key, ch, &by_name);
        if let Some(id) = c.id(key, "channel") {
            channels.insert(id, channel);
        }
    }
    c.unique_stream_keys();
    let mut distributions = BTreeMap::new();
    for (key, d) in &raw.distributions {
        let dist = c.distribution(d, raw);
        if let (Some(id), Some(dist)) = (c.id(key, "distribution"), dist) {
            distributions.insert(id, dist);
        }
    }
    c.override_cycles(raw);
    let ok = c.problems.is_empty() && problems.is_empty();
    problems.append(&mut c.problems);
    ok.then_some(Config {
        server,
        api,
        ladders,
        channels,
        distributions,
    })
}

struct Checker<'a> {
    index: &'a SpanIndex,
    removed: &'a [String],
    problems: Vec<Problem>,
    /// (key, span of the value, path of the ingest) of every push stream key seen.
    stream_keys: Vec<(String, Range<usize>, String)>,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            span,
            message: message.into(),
        });
    }

    /// True when something at, above or below `path` was cut out as malformed: checks
    /// about it would only repeat that error in other words.
    fn touched(&self, path: &str) -> bool {
        self.removed
            .iter()
            .any(|r| r == path || is_under(r, path) || is_under(path, r))
    }

    fn path_of(&self, span: &Range<usize>) -> String {
        self.index.path(span).unwrap_or_default().to_owned()
    }

    fn id(&mut self, s: &S<String>, what: &str) -> Option<Id> {
        match Id::new(s.get_ref()) {
            Ok(id) => Some(id),
            Err(_) => {
                self.err(
                    s.span(),
                    format!(
                        "invalid {what} id {}: ids match [a-z0-9][a-z0-9_-]{{0,63}}",
                        quote(s.get_ref())
                    ),
                );
                None
            }
        }
    }

    /// An integer in `range`, optionally even.
    fn int(&mut self, v: &S<i64>, key: &str, range: Range<i64>, even: bool) -> u32 {
        let n = *v.get_ref();
        let last = range.end - 1;
        if !range.contains(&n) || (even && n % 2 != 0) {
            let even = if even { "an even number" } else { "a number" };
            self.err(
                v.span(),
                format!(
                    "{key} must be {even} from {} to {last}, not {n}",
                    range.start
                ),
            );
        }
        n.clamp(0, u32::MAX as i64) as u32
    }

    fn server(&mut self, raw: Option<&S<RawServer>>) -> ServerConfig {
        let empty = RawServer::default();
        let s = raw.map(|s| s.get_ref()).unwrap_or(&empty);
        let http = self.addr(s.http_listen.as_ref(), "0.0.0.0:8080");
        let https = s.https_listen.as_ref().and_then(|v| self.addr(Some(v), ""));
        let rtmp = self.addr(s.rtmp_listen.as_ref(), "0.0.0.0:1935");
        let srt = self.addr(s.srt_listen.as_ref(), "0.0.0.0:9000");

        // TCP listeners must not collide; report at the later one in the file.
        let span = |v: &Option<S<String>>| v.as_ref().map(|v| v.span());
        let mut tcp: Vec<(&str, SocketAddr, Option<Range<usize>>)> = [
            ("http_listen", http, span(&s.http_listen)),
            ("https_listen", https, span(&s.https_listen)),
            ("rtmp_listen", rtmp, span(&s.rtmp_listen)),
        ]
        .into_iter()
        .filter_map(|(name, addr, span)| Some((name, addr?, span)))
        .collect();
        tcp.sort_by_key(|(_, _, span)| span.as_ref().map_or(0, |s| s.start));
        for j in 1..tcp.len() {
            let (name, addr, ref at) = tcp[j];
            if let (Some(at), Some((other, other_addr, _))) =
                (at, tcp[..j].iter().find(|(_, a, _)| clash(*a, addr)))
            {
                self.err(
                    at.clone(),
                    format!(
                        "{name} {addr} clashes with {other} {other_addr}: both are TCP listeners"
                    ),
                );
            }
        }

        let tls_cert = s.tls_cert.as_ref().map(|v| self.path(v, "tls_cert"));
        let tls_key = s.tls_key.as_ref().map(|v| self.path(v, "tls_key"));
        if let Some(h) = &s.https_listen {
            if tls_cert.is_none() || tls_key.is_none() {
                self.err(h.span(), "https_listen needs both tls_cert and tls_key");
            }
        } else {
            for (name, v) in [("tls_cert", &s.tls_cert), ("tls_key", &s.tls_key)] {
                if let Some(v) = v {
                    self.err(v.span(), format!("{name} is set but https_listen is not"));
                }
            }
        }
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .filter_map(|v| self.net(v))
            .collect();
        ServerConfig {
            http_listen: http.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080))),
            https_listen: https,
            tls_cert,
            tls_key,
            rtmp_listen: rtmp.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 1935))),
            srt_listen: srt.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 9000))),
            data_dir: s
                .data_dir
                .as_ref()
                .map_or_else(|| "data".into(), |v| self.path(v, "data_dir")),
            trusted_proxies,
            geoip_database: s
                .geoip_database
                .as_ref()
                .map(|v| self.path(v, "geoip_database")),
            metrics: s.metrics.unwrap_or(true),
        }
    }

    /// The address in `v`, or `default` when absent; `None` after reporting a bad one.
    fn addr(&mut self, v: Option<&S<String>>, default: &str) -> Option<SocketAddr> {
        let Some(v) = v else {
            return default.parse().ok();
        };
        match v.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    v.span(),
                    format!(
                        "invalid listen address {}: expected IP:PORT, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"",
                        quote(v.get_ref())
                    ),
                );
                None
            }
        }
    }

    fn path(&mut self, v: &S<String>, key: &str) -> PathBuf {
        if v.get_ref().trim().is_empty() {
            self.err(v.span(), format!("{key} must not be empty"));
        }
        PathBuf::from(v.get_ref())
    }

    /// A network `a.b.c.d/len` or `x::y/len`; a bare address means that one host.
    fn net(&mut self, v: &S<String>) -> Option<IpNet> {
        let s = v.get_ref().trim();
        let parsed = s
            .parse::<IpNet>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from));
        if parsed.is_none() {
            self.err(
                v.span(),
                format!(
                    "invalid network {}: expected ADDRESS/PREFIX such as \"203.0.113.0/24\" \
                     (prefix at most 32 for IPv4, 128 for IPv6) or a single address",
                    quote(v.get_ref())
                ),
            );
        }
        parsed
    }

    fn admin_token(&mut self, t: &S<String>) -> String {
        let s = t.get_ref();
        // Never echo the token itself.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            self.err(
                t.span(),
                "admin tokens must be non-empty printable ASCII without spaces",
            );
        }
        s.clone()
    }

    fn ladder(&mut self, path: &str, l: &S<RawLadder>) -> Ladder {
        let r = l.get_ref();
        let mut ladder = Ladder::passthrough();
        let mut segment_ok = true;
        if let Some(v) = &r.segment_seconds {
            ladder.segment_seconds = *v.get_ref();
            if !(0.5..=30.0).contains(&ladder.segment_seconds) {
                segment_ok = false;
                self.err(
                    v.span(),
                    format!(
                        "segment_seconds must be from 0.5 to 30, not {}",
                        v.get_ref()
                    ),
                );
            }
        }
        let seg = ladder.segment_seconds;
        if let Some(v) = &r.part_seconds {
            ladder.part_seconds = *v.get_ref();
            let p = ladder.part_seconds;
            if segment_ok && !(p == 0.0 || (0.1..=seg).contains(&p)) {
                self.err(
                    v.span(),
                    format!("part_seconds must be 0 (no parts) or from 0.1 to segment_seconds ({seg}), not {p}"),
                );
            }
        }
        if let Some(v) = &r.window_seconds {
            ladder.window_seconds = *v.get_ref();
        }
        let w = ladder.window_seconds;
        if segment_ok && !(w.is_finite() && w >= 3.0 * seg) {
            let span = r.window_seconds.as_ref().map_or_else(
                || r.segment_seconds.as_ref().map_or(l.span(), |v| v.span()),
                |v| v.span(),
            );
            self.err(
                span,
                format!(
                    "window_seconds ({w}) must be at least 3 × segment_seconds ({})",
                    3.0 * seg
                ),
            );
        } else if w > MAX_WINDOW_SECONDS {
            // Every rendition's window is held in memory.
            let span = r.window_seconds.as_ref().map_or(l.span(), |v| v.span());
            self.err(span, format!("window_seconds ({w}) must be at most {MAX_WINDOW_SECONDS} (segments are kept in memory)"));
        }
        if let Some(v) = &r.audio_kbps {
            ladder.audio_kbps = self.int(v, "audio_kbps", 16..513, false);
        }
        if let Some(v) = &r.audio_passthrough {
            ladder.audio_passthrough = *v.get_ref();
        }
        if let Some(v) = &r.encoder {
            match VideoEncoder::ALL.iter().find(|e| e.as_str() == v.get_ref()) {
                Some(e) => ladder.encoder = *e,
                None => self.err(
                    v.span(),
                    format!(
                        "unknown encoder {}: expected one of {}",
                        quote(v.get_ref()),
                        VideoEncoder::ALL.map(|e| e.as_str()).join(", ")
                    ),
                ),
            }
        }
        if let Some(v) = &r.reuse_top_rung {
            ladder.reuse_top_rung = *v.get_ref();
        }
        if let Some(v) = &r.encoder_preset {
            if !PRESETS.contains(&v.get_ref().as_str()) {
                self.err(
                    v.span(),
                    format!(
                        "unknown encoder_preset {}: expected one of {}",
                        quote(v.get_ref()),
                        PRESETS.join(", ")
                    ),
                );
            }
            ladder.encoder_preset = v.get_ref().clone();
        }
        match &r.renditions {
            None => self.err(
                l.span(),
                "this ladder has no `renditions`; add some, or use ladder = \"passthrough\" in the engine",
            ),
            Some(list) if list.get_ref().is_empty() => {
                if !self.touched(&format!("{path}.renditions")) {
                    self.err(list.span(), "renditions must not be empty");
                }
            }
            Some(list) => {
                let mut seen = HashSet::new();
                for r in list.get_ref() {
                    let r = r.get_ref();
                    let name = self.id(&r.name, "rendition");
                    if r.name.get_ref() == "audio" {
                        self.err(r.name.span(), "rendition name `audio` is reserved for the audio track");
                    } else if !seen.insert(r.name.get_ref().as_str()) {
                        self.err(r.name.span(), format!("duplicate rendition name {}", quote(r.name.get_ref())));
                    }
                    let width = self.int(&r.width, "width", 16..7681, true);
                    let height = self.int(&r.height, "height", 16..4321, true);
                    let video_kbps = self.int(&r.video_kbps, "video_kbps", 50..100_001, false);
                    if let Some(name) = name {
                        ladder.renditions.push(Rendition { name, width, height, video_kbps });
                    }
                }
            }
        }
        ladder
    }

    fn channel(
        &mut self,
        key: &S<String>,
        ch: &S<RawChannel>,
        ladders: &HashMap<&str, Ladder>,
    ) -> Channel {
        let path = key_path("channels", key.get_ref());
        let r = ch.get_ref();
        let mut ingests = BTreeMap::new();
        for (ikey, ing) in &r.ingests {
            let ipath = key_path(&key_path(&path, "ingests"), ikey.get_ref());
            let ingest = self.ingest(&ipath, ing);
            if let Some(id) = self.id(ikey, "ingest") {
                ingests.insert(id, ingest);
            }
        }
        let mut engines = BTreeMap::new();
        for (ekey, e) in &r.engines {
            let engine = self.engine(e.get_ref(), ladders);
            if let (Some(id), Some(engine)) = (self.id(ekey, "engine"), engine) {
                engines.insert(id, engine);
            }
        }
        let name = key.get_ref();
        if r.ingests.is_empty() && !self.touched(&format!("{path}.ingests")) {
            self.err(
                ch.span(),
                format!(
                    "channel {} has no ingests; add a [channels.{name}.ingests.<id>] table",
                    quote(name)
                ),
            );
        }
        if r.engines.is_empty() && !self.touched(&format!("{path}.engines")) {
            self.err(
                ch.span(),
                format!(
                    "channel {} has no engines; add a [channels.{name}.engines.<id>] table",
                    quote(name)
                ),
            );
        }
        let mut outputs = BTreeMap::new();
        for (okey, o) in &r.outputs {
            let opath = key_path(&key_path(&path, "outputs"), okey.get_ref());
            let mut output = self.channel_output(&opath, o);
            output.rendition = self.output_rendition(o.get_ref(), &engines);
            if let Some(id) = self.id(okey, "output") {
                outputs.insert(id, output);
            }
        }
        let transcodes = engines
            .values()
            .any(|e| !matches!(e.ladder_ref, LadderRef::Passthrough));
        let slate = self.slate(r.slate.as_ref(), transcodes);
        let mut sources = BTreeMap::new();
        let mut default: Option<String> = None;
        for (skey, src) in &r.sources {
            let spath = key_path(&key_path(&path, "sources"), skey.get_ref());
            let mut source = self.source(&spath, skey.get_ref(), src, ladders);
            if source.kind == SourceKind::Video {
                self.angle_ladder(src, &mut source, &engines);
            }
            if source.default {
                if let Some(other) = &default {
                    self.err(
                        src.span(),
                        format!("only one source may be the default; {other} already is"),
                    );
                }
                default = Some(spath.clone());
            }
            if let Some(id) = self.id(skey, "source") {
                if ingests.contains_key(&id) {
                    self.err(
                        skey.span(),
                        format!(
                            "source {} has the id of an ingest of the channel; ids of ingests and sources must differ",
                            quote(skey.get_ref())
                        ),
                    );
                }
                sources.insert(id, source);
            }
        }
        Channel {
            name: r.name.clone().unwrap_or_else(|| name.clone()),
            ingests,
            engines,
            slate,
            outputs,
            sources,
        }
    }

    fn source(
        &mut self,
        path: &str,
        id: &str,
        src: &S<RawSource>,
        ladders: &HashMap<&str, Ladder>,
    ) -> Source {
        let r = src.get_ref();
        let kind = match r.kind.get_ref().as_str() {
            "audio" => SourceKind::Audio,
            "video" => SourceKind::Video,
            _ => {
                self.err(r.kind.span(), "kind must be \"audio\" or \"video\"");
                SourceKind::Audio
            }
        };
        if *r.protocol.get_ref() == IngestProtocol::TestPattern {
            self.err(
                r.protocol.span(),
                "sources arrive by rtmp, srt, rtmp-pull or srt-pull, not test-pattern",
            );
        }
        let raw = RawIngest {
            protocol: r.protocol.clone(),
            stream_key: r.stream_key.clone(),
            url: r.url.clone(),
            passphrase: r.passphrase.clone(),
            priority: None,
            allow_cidrs: r.allow_cidrs.clone(),
            max_kbps: r.max_kbps.clone(),
            enabled: r.enabled,
            width: None,
            height: None,
            fps: None,
        };
        let ingest = self.ingest(path, &S::new(src.span(), raw));
        let language = r.language.as_ref().map(|l| {
            let tag = l.get_ref();
            let ok = (1..=35).contains(&tag.len())
                && tag.split('-').all(|part| {
                    (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
                })
                && tag.as_bytes()[0].is_ascii_alphabetic();
            if !ok {
                self.err(
                    l.span(),
                    "language must be a language tag such as \"fr\", \"en-US\" or \"pt-BR\"",
                );
            }
            tag.clone()
        });
        let name = match &r.name {
            Some(n) => {
                let v = n.get_ref();
                if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_control() || c == '"') {
                    self.err(
                        n.span(),
                        "name must be 1 to 64 bytes, without control characters or double quotes",
                    );
                }
                v.clone()
            }
            None => id.to_owned(),
        };
        let offset_ms = match &r.offset_ms {
            Some(v) if !(-3_000..=3_000).contains(v.get_ref()) => {
                self.err(v.span(), "offset_ms must be between -3000 and 3000");
                0
            }
            Some(v) => *v.get_ref(),
            None => 0,
        };
        let mut ladder = None;
        if let Some(l) = &r.ladder {
            if kind == SourceKind::Audio {
                self.err(l.span(), "ladder applies to video sources only");
            } else if let Some(found) = ladders.get(l.get_ref().as_str()) {
                ladder = Some(found.clone());
            } else if !self.touched(&key_path("ladders", l.get_ref())) {
                self.err(l.span(), format!("no ladder {}", quote(l.get_ref())));
            }
        }
        if r.default == Some(true) && kind == SourceKind::Video {
            self.err(src.span(), "default applies to audio sources only");
        }
        Source {
            kind,
            ingest,
            name,
            language,
            offset_ms,
            default: r.default.unwrap_or(false),
            ladder,
        }
    }

    /// A camera angle's ladder: its own (`ladder`), else the ladder of the channel's first
    /// transcoding engine. Its segments must cut on the channel's grid: the same
    /// `segment_seconds` as every transcoding engine of the channel.
    fn angle_ladder(
        &mut self,
        src: &S<RawSource>,
        source: &mut Source,
        engines: &BTreeMap<Id, Engine>,
    ) {
        let transcoding = || {
            engines
                .values()
                .filter(|e| !matches!(e.ladder_ref, LadderRef::Passthrough))
        };
        if source.ladder.is_none() {
            source.ladder = transcoding().next().map(|e| e.ladder.clone());
        }
        let at = src
            .get_ref()
            .ladder
            .as_ref()
            .map_or(src.span(), |l| l.span());
        let Some(ladder) = &source.ladder else {
            if src.get_ref().ladder.is_none() && !engines.is_empty() {
                self.err(
                    at,
                    "a video source needs a ladder: name one, or give the channel an engine with a ladder",
                );
            }
            return;
        };
        if let Some(e) = transcoding().find(|e| e.ladder.segment_seconds != ladder.segment_seconds)
        {
            self.err(
                at,
                format!(
                    "a camera angle cuts on the channel's segment grid: its ladder's segment_seconds ({}) must be the engines' ({})",
                    ladder.segment_seconds, e.ladder.segment_seconds
                ),
            );
        }
    }

    fn channel_output(&mut self, path: &str, o: &S<RawChannelOutput>) -> ChannelOutput {
        let r = o.get_ref();
        let p = *r.protocol.get_ref();
        let proto = p.as_str();
        if let Some(k) = &r.read_key {
            if p.is_pull() {
                self.key_form(k, "read_key", path);
            } else {
                self.err(k.span(), format!("{proto} outputs take no read_key"));
            }
        } else if p.is_pull() {
            self.err(o.span(), format!("{proto} outputs need a read_key"));
        }
        if let Some(u) = &r.url {
            let scheme = match p {
                ChannelOutputProtocol::RtmpPush => "rtmp://",
                ChannelOutputProtocol::SrtCaller => "srt://",
                _ => "",
            };
            if scheme.is_empty() {
                self.err(u.span(), format!("{proto} outputs take no url"));
            } else if !valid_url(u.get_ref(), scheme) {
                self.err(
                    u.span(),
                    format!("{proto} outputs need a url of the form {scheme}HOST[:PORT]…"),
                );
            }
        } else if !p.is_pull() {
            self.err(o.span(), format!("{proto} outputs need a url"));
        }
        if let Some(pp) = &r.passphrase {
            if !p.is_srt() {
                self.err(
                    pp.span(),
                    format!("{proto} outputs take no passphrase (SRT only)"),
                );
            } else if !(10..=79).contains(&pp.get_ref().chars().count()) {
                self.err(pp.span(), "passphrase must be 10 to 79 characters long");
            }
        }
        let allow_cidrs = match &r.allow_cidrs {
            None => Vec::new(),
            Some(list) => {
                if !p.is_pull() && !list.get_ref().is_empty() {
                    self.err(
                        list.span(),
                        format!("allow_cidrs applies to pull outputs only, not {proto}"),
                    );
                }
                list.get_ref().iter().filter_map(|v| self.net(v)).collect()
            }
        };
        let tracking = self.tracking(r, p);
        ChannelOutput {
            protocol: p,
            enabled: r.enabled.unwrap_or(true),
            read_key: r.read_key.as_ref().map(|v| v.get_ref().clone()),
            passphrase: r.passphrase.as_ref().map(|v| v.get_ref().clone()),
            allow_cidrs,
            url: r.url.as_ref().map(|v| v.get_ref().clone()),
            tracking,
            rendition: None,
        }
    }

    /// A push output's `tracking_id` and `tracking_param`: URL-safe, and with a place in
    /// the output's url.
    fn tracking(&mut self, r: &RawChannelOutput, p: ChannelOutputProtocol) -> Option<Tracking> {
        let proto = p.as_str();
        let param = match &r.tracking_param {
            None => TRACKING_PARAM.to_owned(),
            Some(v) => {
                let s = v.get_ref();
                let ok = (1..=32).contains(&s.len())
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
                if !ok {
                    self.err(
                        v.span(),
                        "tracking_param must be 1 to 32 letters, digits, _ or -",
                    );
                } else if p.is_srt() && matches!(s.as_str(), "r" | "m" | "t") {
                    self.err(
                        v.span(),
                        "tracking_param cannot be r, m or t: the SRT stream id uses them",
                    );
                } else if r.tracking_id.is_none() {
                    self.err(v.span(), "tracking_param without a tracking_id");
                }
                s.clone()
            }
        };
        let v = r.tracking_id.as_ref()?;
        if p.is_pull() {
            self.err(
                v.span(),
                format!("{proto} outputs take no tracking_id (push outputs only)"),
            );
            return None;
        }
        let id = v.get_ref();
        if !is_tracking_id(id) {
            self.err(
                v.span(),
                "tracking_id must be 1 to 128 letters, digits, . _ ~ or -",
            );
            return None;
        }
        let url = r.url.as_ref()?;
        if let Err(e) = tracked_url(url.get_ref(), &param, id) {
            self.err(v.span(), e);
            return None;
        }
        Some(Tracking {
            param,
            id: id.clone(),
        })
    }

    /// An output's `engine` and `rendition`: both or neither, an engine of the channel and
    /// a rendition of its ladder.
    fn output_rendition(
        &mut self,
        r: &RawChannelOutput,
        engines: &BTreeMap<Id, Engine>,
    ) -> Option<(Id, String)> {
        match (&r.engine, &r.rendition) {
            (None, None) => None,
            (Some(e), None) => {
                self.err(e.span(), "an output with an engine needs a rendition too");
                None
            }
            (None, Some(v)) => {
                self.err(v.span(), "an output with a rendition needs an engine too");
                None
            }
            (Some(e), Some(v)) => {
                let Some((id, engine)) = engines.iter().find(|(id, _)| id.as_str() == e.get_ref())
                else {
                    self.err(
                        e.span(),
                        format!("no engine {} in this channel", quote(e.get_ref())),
                    );
                    return None;
                };
                let names: Vec<&str> = match engine.ladder_ref {
                    LadderRef::Passthrough => vec!["source"],
                    LadderRef::Named(_) => engine
                        .ladder
                        .renditions
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect(),
                };
                if !names.contains(&v.get_ref().as_str()) {
                    self.err(
                        v.span(),
                        format!(
                            "no rendition {} in engine {} (it has {})",
                            quote(v.get_ref()),
                            quote(e.get_ref()),
                            names.join(", ")
                        ),
                    );
                    return None;
                }
                Some((id.clone(), v.get_ref().clone()))
            }
        }
    }

    /// Checks a stream or read key's form, and remembers it for the uniqueness check
    /// (stream and read keys share one namespace: a read key is never a publish key).
    fn key_form(&mut self, k: &S<String>, what: &str, path: &str) {
        let s = k.get_ref();
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"/?#&=".contains(&b));
        if ok {
            self.stream_keys
                .push((s.clone(), k.span(), path.to_owned()));
        } else {
            // Keys are credentials: describe, don't echo.
            self.err(
                k.span(),
                format!(
                    "{what} must be 1 to 128 printable ASCII characters, \
                     without whitespace or any of / ? # & ="
                ),
            );
        }
    }

    fn slate(&mut self, raw: Option<&S<RawSlate>>, transcodes: bool) -> Slate {
        let r = raw.map(|s| s.get_ref());
        let image = r.and_then(|r| r.image.as_ref()).map(|v| {
            let path = self.path(v, "image");
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
                self.err(v.span(), "image must be a .png, .jpg or .jpeg file");
            } else if !path.is_file() {
                self.err(
                    v.span(),
                    format!("image {} is not a readable file", quote(v.get_ref())),
                );
            }
            path
        });
        let timeout_minutes = r
            .and_then(|r| r.timeout_minutes.as_ref())
            .map_or(30, |v| self.int(v, "timeout_minutes", 1..10081, false));
        Slate {
            enabled: r.and_then(|r| r.enabled).unwrap_or(transcodes),
            image,
            timeout_minutes,
        }
    }

    fn ingest(&mut self, path: &str, ing: &S<RawIngest>) -> Ingest {
        let r = ing.get_ref();
        let p = *r.protocol.get_ref();
        let proto = p.as_str();
        if let Some(k) = &r.stream_key {
            if p.is_push() {
                self.key_form(k, "stream_key", path);
            } else {
                self.err(k.span(), format!("{proto} ingests take no stream_key"));
            }
        } else if p.is_push() {
            self.err(ing.span(), format!("{proto} ingests need a stream_key"));
        }
        if let Some(u) = &r.url {
            let scheme = match p {
                IngestProtocol::RtmpPull => "rtmp://",
                IngestProtocol::SrtPull => "srt://",
                _ => "",
            };
            if scheme.is_empty() {
                self.err(u.span(), format!("{proto} ingests take no url"));
            } else if !valid_url(u.get_ref(), scheme) {
                self.err(
                    u.span(),
                    format!("{proto} ingests need a url of the form {scheme}HOST[:PORT]…"),
                );
            }
        } else if p.is_pull() {
            self.err(ing.span(), format!("{proto} ingests need a url"));
        }
        if let Some(pp) = &r.passphrase {
            if !matches!(p, IngestProtocol::Srt | IngestProtocol::SrtPull) {
                self.err(
                    pp.span(),
                    format!("{proto} ingests take no passphrase (SRT only)"),
                );
            } else if !(10..=79).contains(&pp.get_ref().chars().count()) {
                self.err(pp.span(), "passphrase must be 10 to 79 characters long");
            }
        }
        let allow_cidrs = match &r.allow_cidrs {
            None => Vec::new(),
            Some(list) => {
                if !p.is_push() && !list.get_ref().is_empty() {
                    self.err(
                        list.span(),
                        format!("allow_cidrs applies to push ingests only, not {proto}"),
                    );
                }
                list.get_ref().iter().filter_map(|v| self.net(v)).collect()
            }
        };
        let mut test_pattern = TestPattern::default();
        let pattern_keys = [("width", &r.width), ("height", &r.height), ("fps", &r.fps)];
        for (key, v) in pattern_keys {
            let Some(v) = v else { continue };
            if p != IngestProtocol::TestPattern {
                self.err(
                    v.span(),
                    format!("{key} applies to test-pattern ingests only"),
                );
                continue;
            }
            match key {
                "width" => test_pattern.width = self.int(v, key, 16..7681, true),
                "height" => test_pattern.height = self.int(v, key, 16..4321, true),
                _ => test_pattern.fps = self.int(v, key, 1..121, false),
            }
        }
        Ingest {
            protocol: p,
            stream_key: r.stream_key.as_ref().map(|v| v.get_ref().clone()),
            url: r.url.as_ref().map(|v| v.get_ref().clone()),
            passphrase: r.passphrase.as_ref().map(|v| v.get_ref().clone()),
            priority: r.priority.unwrap_or(1),
            allow_cidrs,
            max_kbps: r.max_kbps.as_ref().map_or(0, |k| *k.get_ref()),
            enabled: r.enabled.unwrap_or(true),
            test_pattern,
        }
    }

    fn unique_stream_keys(&mut self) {
        let mut keys = std::mem::take(&mut self.stream_keys);
        keys.sort_by_key(|(_, span, _)| span.start);
        let mut first: HashMap<&str, &str> = HashMap::new();
        for (key, span, path) in &keys {
            if let Some(other) = first.get(key.as_str()) {
                self.err(
                    span.clone(),
                    format!("key is already used by {other}; stream and read keys must be unique"),
                );
            } else {
                first.insert(key, path);
            }
        }
    }

    fn engine(&mut self, e: &RawEngine, ladders: &HashMap<&str, Ladder>) -> Option<Engine> {
        let outputs = self.outputs(e.outputs.as_ref());
        let name = e.ladder.get_ref();
        let (ladder_ref, ladder) = if name == PASSTHROUGH {
            (LadderRef::Passthrough, Ladder::passthrough())
        } else if let Some(l) = ladders.get(name.as_str()) {
            (LadderRef::Named(Id::new(name).ok()?), l.clone())
        } else {
            if !self.touched(&key_path("ladders", name)) {
                self.err(
                    e.ladder.span(),
                    format!(
                        "no ladder {}: name a [ladders.*] table or \"passthrough\"",
                        quote(name)
                    ),
                );
            }
            return None;
        };
        let record = e.record.as_ref().map(|r| self.record(r, &outputs));
        Some(Engine {
            ladder_ref,
            ladder,
            outputs,
            priority: e.priority.unwrap_or(1),
            record,
        })
    }

    fn record(&mut self, raw: &S<RawRecord>, outputs: &[Output]) -> Record {
        let r = raw.get_ref();
        let format = match &r.format {
            Some(f) => {
                if !outputs.contains(f.get_ref()) {
                    self.err(
                        f.span(),
                        format!(
                            "format {:?} is not one of this engine's outputs",
                            f.get_ref().as_str()
                        ),
                    );
                }
                *f.get_ref()
            }
            None => outputs.first().copied().unwrap_or(Output::Cmaf),
        };
        let rotate_minutes = r
            .rotate_minutes
            .as_ref()
            .map_or(60, |v| self.int(v, "rotate_minutes", 1..1441, false));
        Record {
            enabled: r.enabled.unwrap_or(true),
            format,
            rotate_minutes,
        }
    }

    /// An explicit `outputs` list: non-empty, no duplicates. Absent: cmaf and ts.
    fn outputs(&mut self, list: Option<&S<Vec<S<Output>>>>) -> Vec<Output> {
        let Some(list) = list else {
            return ALL_OUTPUTS.to_vec();
        };
        let path = self.path_of(&list.span());
        if list.get_ref().is_empty() && !self.touched(&path) {
            self.err(
                list.span(),
                "outputs must not be empty (choose from \"cmaf\", \"ts\")",
            );
        }
        let mut out = Vec::new();
        for o in list.get_ref() {
            if out.contains(o.get_ref()) {
                self.err(
                    o.span(),
                    format!("duplicate output {:?}", o.get_ref().as_str()),
                );
            } else {
                out.push(*o.get_ref());
            }
        }
        out
    }

    fn distribution(&mut self, d: &S<RawDistribution>, raw: &RawConfig) -> Option<Distribution> {
        let r = d.get_ref();
        let chan_name = r.channel.get_ref().as_str();
        let chan_path = key_path("channels", chan_name);
        let chan = raw.channels.get(chan_name).map(|c| c.get_ref());
        if chan.is_none() && !self.touched(&chan_path) {
            self.err(r.channel.span(), format!("no channel {}", quote(chan_name)));
        }
        let engines_path = format!("{chan_path}.engines");

        // Engines: explicit (each one of the channel's), or all of them by priority.
        let mut engines: Vec<String> = Vec::new();
        match (&r.engines, chan) {
            (Some(list), _) => {
                if list.get_ref().is_empty() {
                    self.err(
                        list.span(),
                        "engines must not be empty; leave the key out to use all the channel's engines",
                    );
                }
                for e in list.get_ref() {
                    let name = e.get_ref();
                    if engines.contains(name) {
                        self.err(e.span(), format!("duplicate engine {}", quote(name)));
                        continue;
                    }
                    if let Some(ch) = chan
                        && !ch.engines.contains_key(name.as_str())
                        && !self.touched(&key_path(&engines_path, name))
                    {
                        self.err(
                            e.span(),
                            format!("channel {} has no engine {}", quote(chan_name), quote(name)),
                        );
                    }
                    engines.push(name.clone());
                }
            }
            (None, Some(ch)) => {
                let mut all: Vec<_> = ch
                    .engines
                    .iter()
                    .map(|(k, e)| (e.get_ref().priority.unwrap_or(1), k.get_ref()))
                    .collect();
                all.sort();
                engines = all.into_iter().map(|(_, k)| k.clone()).collect();
            }
            (None, None) => {}
        }

        // Outputs: each must come from at least one of the engines.
        let produced: HashSet<Output> = chan
            .iter()
            .flat_map(|ch| engines.iter().filter_map(|e| ch.engines.get(e.as_str())))
            .flat_map(|e| match &e.get_ref().outputs {
                Some(list) => list.get_ref().iter().map(|o| *o.get_ref()).collect(),
                None => ALL_OUTPUTS.to_vec(),
            })
            .collect();
        let outputs = match &r.outputs {
            Some(list) => {
                let outputs = self.outputs(Some(list));
                // With an unknown engine in the list, its outputs are unknown too.
                let engines_known = chan
                    .is_some_and(|ch| engines.iter().all(|e| ch.engines.contains_key(e.as_str())));
                if engines_known && !self.touched(&engines_path) {
                    for o in list.get_ref() {
                        if !produced.contains(o.get_ref()) {
                            self.err(
                                o.span(),
                                format!(
                                    "output {:?} is not produced by any of this distribution's engines ({})",
                                    o.get_ref().as_str(),
                                    engines.join(", ")
                                ),
                            );
                        }
                    }
                }
                outputs
            }
            None => ALL_OUTPUTS
                .into_iter()
                .filter(|o| produced.contains(o))
                .collect(),
        };

        let geo = r.geo.as_ref().map(|g| {
            let g = g.get_ref();
            if g.countries.get_ref().is_empty() && !self.touched(&self.path_of(&g.countries.span()))
            {
                self.err(
                    g.countries.span(),
                    "countries must not be empty; leave `geo` out to allow every country",
                );
            }
            for c in g.countries.get_ref() {
                self.country(c);
            }
            GeoRule {
                mode: g.mode,
                countries: g
                    .countries
                    .get_ref()
                    .iter()
                    .map(|c| c.get_ref().clone())
                    .collect(),
            }
        });
        let ip = r.ip.as_ref().map(|i| {
            let i = i.get_ref();
            if i.cidrs.get_ref().is_empty() && !self.touched(&self.path_of(&i.cidrs.span())) {
                self.err(
                    i.cidrs.span(),
                    "cidrs must not be empty; leave `ip` out to allow every address",
                );
            }
            IpRule {
                mode: i.mode,
                cidrs: i
                    .cidrs
                    .get_ref()
                    .iter()
                    .filter_map(|v| self.net(v))
                    .collect(),
            }
        });
        for o in &r.allowed_origins {
            if let Err(why) = check_origin(o.get_ref()) {
                self.err(
                    o.span(),
                    format!("invalid origin {}: {why}", quote(o.get_ref())),
                );
            }
        }
        let mut target_latency_seconds = 0.0;
        if let Some(v) = &r.target_latency_seconds {
            target_latency_seconds = *v.get_ref();
            if !(target_latency_seconds.is_finite() && target_latency_seconds >= 0.0) {
                self.err(v.span(), "target_latency_seconds must be 0 or more");
            }
        }
        let token = r
            .token
            .as_ref()
            .map_or_else(TokenConfig::default, |t| self.token(t));
        let overrides = r
            .overrides
            .iter()
            .filter_map(|o| self.override_rule(o, chan_name, raw))
            .collect();

        let channel = Id::new(chan_name).ok()?;
        let engines = engines
            .iter()
            .map(|e| Id::new(e).ok())
            .collect::<Option<Vec<_>>>()?;
        let audio_tracks = r.audio_tracks.as_ref().map(|list| {
            let mut ids = Vec::new();
            for t in list.get_ref() {
                let audio_source = chan
                    .and_then(|c| c.sources.iter().find(|(k, _)| k.get_ref() == t.get_ref()))
                    .map(|(_, v)| v.get_ref().kind.get_ref() == "audio");
                match audio_source {
                    Some(true) => {}
                    Some(false) => self.err(
                        t.span(),
                        format!("source {} is not an audio source", quote(t.get_ref())),
                    ),
                    None if chan.is_some() => self.err(
                        t.span(),
                        format!(
                            "channel {} has no source {}",
                            quote(chan_name),
                            quote(t.get_ref())
                        ),
                    ),
                    None => {}
                }
                if let Some(id) = self.id(t, "source") {
                    ids.push(id);
                }
            }
            ids
        });
        Some(Distribution {
            channel,
            engines,
            outputs,
            audio_tracks,
            enabled: r.enabled.unwrap_or(true),
            max_kbps: r.max_kbps.unwrap_or(0),
            geo,
            ip,
            allowed_origins: r
                .allowed_origins
                .iter()
                .map(|o| o.get_ref().clone())
                .collect(),
            target_latency_seconds,
            token,
            overrides,
        })
    }

    fn country(&mut self, c: &S<String>) {
        let s = c.get_ref();
        if is_country(s) {
            return;
        }
        let upper = s.to_ascii_uppercase();
        let message = if is_country(&upper) {
            format!(
                "country codes are uppercase: write {} instead of {}",
                quote(&upper),
                quote(s)
            )
        } else if s.len() != 2 {
            format!(
                "{} is not an ISO 3166-1 alpha-2 country code (two letters, e.g. \"DE\")",
                quote(s)
            )
        } else {
            format!(
                "{} is not an assigned ISO 3166-1 alpha-2 country code",
                quote(s)
            )
        };
        self.err(c.span(), message);
    }

    fn token(&mut self, t: &S<RawToken>) -> TokenConfig {
        let r = t.get_ref();
        let required = r.required.unwrap_or(false);
        let token_path = self.path_of(&t.span());
        if required && r.keys.is_empty() && !self.touched(&format!("{token_path}.keys")) {
            self.err(t.span(), "token.required is true but no keys are given");
        }
        let mut keys: Vec<TokenKey> = Vec::new();
        for k in &r.keys {
            let kr = k.get_ref();
            let id = kr.id.get_ref();
            let alg = kr.algorithm.as_str();
            if id.is_empty() {
                self.err(kr.id.span(), "key id must not be empty");
            } else if keys.iter().any(|o| &o.id == id) {
                self.err(kr.id.span(), format!("duplicate key id {}", quote(id)));
            }
            let (needed, unwanted) = if kr.algorithm.is_hmac() {
                (
                    ("secret", &kr.secret),
                    ("public_key_pem", &kr.public_key_pem),
                )
            } else {
                (
                    ("public_key_pem", &kr.public_key_pem),
                    ("secret", &kr.secret),
                )
            };
            if let Some(v) = unwanted.1 {
                self.err(
                    v.span(),
                    format!("{alg} keys take `{}`, not `{}`", needed.0, unwanted.0),
                );
            }
            match needed.1 {
                None => self.err(k.span(), format!("{alg} key {} needs `{}`", quote(id), needed.0)),
                // Secrets are never echoed.
                Some(v) if kr.algorithm.is_hmac() && v.get_ref().chars().count() < 16 => {
                    self.err(v.span(), "secret must be at least 16 characters long")
                }
                Some(v) if !kr.algorithm.is_hmac() && !looks_like_pem(v.get_ref()) => self.err(
                    v.span(),
                    "public_key_pem must be a PEM block (-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----)",
                ),
                Some(_) => {}
            }
            keys.push(TokenKey {
                id: id.clone(),
                algorithm: kr.algorithm,
                secret: kr.secret.as_ref().map(|v| v.get_ref().clone()),
                public_key_pem: kr.public_key_pem.as_ref().map(|v| v.get_ref().clone()),
            });
        }
        TokenConfig {
            required,
            keys,
            issuer: r.issuer.as_ref().map(|i| i.get_ref().clone()),
        }
    }

    /// Overrides move a viewer one hop, so a chain back to where it started (`a` sends
    /// to `b`, `b` to `a`) never does what it reads as: refused at every target that
    /// closes such a cycle. A distribution naming itself (keeping a share of its viewers)
    /// is not a cycle.
    fn override_cycles(&mut self, raw: &RawConfig) {
        let edges: HashMap<&str, Vec<&S<String>>> = raw
            .distributions
            .iter()
            .map(|(k, d)| {
                let name = k.get_ref().as_str();
                let targets = d
                    .get_ref()
                    .overrides
                    .iter()
                    .flat_map(|o| &o.get_ref().targets)
                    .map(|t| &t.get_ref().distribution)
                    .filter(|t| t.get_ref() != name)
                    .collect();
                (name, targets)
            })
            .collect();
        let reaches = |from: &str, to: &str| -> Option<Vec<String>> {
            // Breadth-first, remembering the way back to print the cycle.
            let mut prev: HashMap<&str, &str> = HashMap::new();
            let mut queue = std::collections::VecDeque::from([from]);
            let mut seen = std::collections::HashSet::from([from]);
            while let Some(n) = queue.pop_front() {
                if n == to {
                    let mut path = vec![n.to_string()];
                    let mut at = n;
                    while let Some(p) = prev.get(at) {
                        path.push(p.to_string());
                        at = p;
                    }
                    path.reverse();
                    return Some(path);
                }
                for t in edges.get(n).into_iter().flatten() {
                    let t = t.get_ref().as_str();
                    if seen.insert(t) {
                        prev.insert(t, n);
                        queue.push_back(t);
                    }
                }
            }
            None
        };
        let mut found = Vec::new();
        for (from, targets) in &edges {
            for t in targets {
                if let Some(back) = reaches(t.get_ref(), from) {
                    let cycle: Vec<String> =
                        std::iter::once(from.to_string()).chain(back).collect();
                    found.push((
                        t.span(),
                        format!(
                            "overrides form a cycle ({}): a viewer is moved one hop only, so remove one of these targets",
                            cycle.iter().map(|n| quote(n)).collect::<Vec<_>>().join(" -> ")
                        ),
                    ));
                }
            }
        }
        found.sort_by_key(|(span, _)| span.start);
        for (span, message) in found {
            self.err(span, message);
        }
    }

    fn override_rule(
        &mut self,
        o: &S<RawOverride>,
        chan_name: &str,
        raw: &RawConfig,
    ) -> Option<OverrideRule> {
        let r = o.get_ref();
        let path = self.path_of(&o.span());
        let mut targets = Vec::new();
        let mut all_weights_ok = true;
        for t in &r.targets {
            let t = t.get_ref();
            let name = t.distribution.get_ref().as_str();
            let w = *t.weight.get_ref();
            if !(0..=100).contains(&w) {
                all_weights_ok = false;
                self.err(
                    t.weight.span(),
                    format!("weight must be from 0 to 100, not {w}"),
                );
            }
            match raw.distributions.get(name) {
                None if !self.touched(&key_path("distributions", name)) => {
                    self.err(
                        t.distribution.span(),
                        format!("no distribution {}", quote(name)),
                    );
                }
                Some(other) => {
                    let other_chan = other.get_ref().channel.get_ref().as_str();
                    if other_chan != chan_name && raw.channels.contains_key(other_chan) {
                        self.err(
                            t.distribution.span(),
                            format!(
                                "distribution {} serves channel {}, not {}: override targets must serve the same channel",
                                quote(name),
                                quote(other_chan),
                                quote(chan_name)
                            ),
                        );
                    }
                }
                None => {}
            }
            if targets
                .iter()
                .any(|x: &OverrideTarget| x.distribution.as_str() == name)
            {
                self.err(
                    t.distribution.span(),
                    format!("duplicate target {}", quote(name)),
                );
            }
            if let Ok(distribution) = Id::new(name) {
                targets.push(OverrideTarget {
                    distribution,
                    weight: w.clamp(0, 100) as u8,
                });
            }
        }
        if r.targets.is_empty() {
            if !self.touched(&format!("{path}.targets")) {
                self.err(o.span(), "this override has no targets");
            }
        } else if all_weights_ok && r.targets.iter().all(|t| *t.get_ref().weight.get_ref() == 0) {
            self.err(
                o.span(),
                "every target of this override has weight 0; at least one must be above 0",
            );
        }
        Some(OverrideRule {
            device_type: r.device_type,
            sdk_type: r.sdk_type,
            os_name: r.os_name,
            profile_id: r.profile_id.as_ref().map(|v| v.get_ref().clone()),
            targets,
        })
    }
}

/// `child` is strictly inside `parent` (a key path prefix followed by `.` or `[`).
fn is_under(child: &str, parent: &str) -> bool {
    child
        .strip_prefix(parent)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Two TCP listen addresses that cannot both be bound. Port 0 (any free port) never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let covers = |x: IpAddr, y: IpAddr| {
        // A wildcard covers its own family; `[::]` is dual-stack on most systems.
        x.is_unspecified() && (x.is_ipv4() == y.is_ipv4() || x == IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    };
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

/// `scheme://host[:port]…` with a non-empty host and nothing odd in it.
fn valid_url(url: &str, scheme: &str) -> bool {
    let Some(rest) = url.strip_prefix(scheme) else {
        return false;
    };
    let host_end = rest.find([':', '/', '?']).unwrap_or(rest.len());
    host_end > 0 && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn looks_like_pem(s: &str) -> bool {
    let s = s.trim();
    s.starts_with("-----BEGIN ") && s.contains("-----END ")
}

/// An origin as browsers send it: `scheme://host[:port]`, lowercase, no path.
fn check_origin(s: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err("expected scheme://host[:port], e.g. \"https://example.com\"");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err("the scheme must be lowercase letters, e.g. https");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment (drop any trailing `/`)");
    }
    if rest.contains('@') {
        return Err("an origin has no user name");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed `[` in an IPv6 host")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address in brackets")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected `:PORT` after `]`")?),
        };
        ("v6", port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("origins are compared exactly and browsers send them in lowercase");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("the host may hold only letters, digits, `-` and `.`");
    }
    if let Some(p) = port {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0);
        if !ok {
            return Err("the port must be a number from 1 to 65535");
        }
    }
    Ok(())
}

/// A user-supplied string for a message: quoted, and cut short if long.
fn quote(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() > MAX {
        format!("{:?}…", s.chars().take(MAX).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        for ok in [
            "https://eu.example.com",
            "http://localhost:8080",
            "https://[::1]:8443",
            "capacitor://localhost",
        ] {
            assert_eq!(check_origin(ok), Ok(()), "{ok}");
        }
        for bad in [
            "eu.example.com",
            "https://eu.example.com/",
            "https://eu.example.com/path",
            "https://EU.example.com",
            "https://",
            "https://a:0",
            "https://a:99999",
            "https://a:",
            "https://user@a",
            "HTTPS://a",
            "https://[::1",
            "https://a b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listener_clashes() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(clash(a("[::]:80"), a("127.0.0.1:80")));
        assert!(!clash(a("0.0.0.0:80"), a("[::1]:80")));
        assert!(!clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!clash(a("0.0.0.0:80"), a("0.0.0.0:81")));
    }

    #[test]
    fn pull_urls() {
        assert!(valid_url(
            "srt://venue.example.net:9000?streamid=#!::r=final,m=request",
            "srt://"
        ));
        assert!(valid_url("rtmp://origin/live/key", "rtmp://"));
        assert!(!valid_url("rtmp://", "rtmp://"));
        assert!(!valid_url("srt://:9000", "srt://"));
        assert!(!valid_url("http://x", "rtmp://"));
        assert!(!valid_url("rtmp://a b", "rtmp://"));
    }
}
