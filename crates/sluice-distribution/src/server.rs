//! The hyper server and request handling.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_core::{Id, MediaTime};
use sluice_package::playlist::{server_control_line, with_server_control};
use sluice_package::{Awaited, EngineOutput, OutputKind, Readiness, Rendered};
use tokio_util::sync::CancellationToken;

use ipnet::IpNet;
use sluice_config::OverrideRule;

use crate::analytics::{Sighting, ViewerKey, Viewers};
use crate::deadline::WriteDeadline;
use crate::overrides;
use crate::path::{self, Route};
use crate::policy::{self, Policy, Refusal, TokenParam};
use crate::session::{SESSION_SECONDS, SessionKey};

/// Where a camera angle's live output is found: set while its publisher is live (each
/// session packaged anew), `None` otherwise.
pub type AngleSlot = arc_swap::ArcSwapOption<EngineOutput>;

/// One distribution as the HTTP layer sees it.
#[derive(Clone)]
pub struct DistributionEntry {
    /// Who may watch it.
    pub policy: Arc<Policy>,
    /// Viewers sent on to other distributions (first match wins; one hop).
    pub overrides: Vec<OverrideRule>,
    pub outputs: Vec<OutputKind>,
    /// Renditions above this are left out of the multivariant playlist.
    pub max_kbps: Option<u32>,
    pub enabled: bool,
    /// The engines that may serve it, most preferred (lowest priority number) first.
    pub engines: Vec<(Id, Arc<EngineOutput>)>,
    /// `target_latency_seconds`: raises the LL-HLS `PART-HOLD-BACK`/`HOLD-BACK` of its
    /// media playlists (never below the spec's minimums).
    pub target_latency: Option<MediaTime>,
    /// Its channel was stopped (control API): admitted requests answer 503.
    pub stopped: bool,
    /// The extra audio tracks (renditions, `audio-<source>`) it offers; `None`: all.
    pub audio_tracks: Option<Vec<String>>,
    /// Its channel's camera angles, by source id (`/live/<dist>/angle/<source>/cmaf/…`).
    pub angles: Vec<(Id, Arc<AngleSlot>)>,
    /// Its request counts (kept for the process's life, across catalogs:
    /// [`RequestCounts::counts_for`]).
    pub counts: &'static DistributionCounts,
}

impl DistributionEntry {
    /// Camera angle `id`: `None` when the channel has no such angle, `Some(None)` while
    /// its publisher is away.
    fn angle(&self, id: &Id) -> Option<Option<Arc<EngineOutput>>> {
        self.angles
            .iter()
            .find(|(a, _)| a == id)
            .map(|(_, slot)| slot.load_full())
    }

    /// Where a child request looks, in order: the engine the viewer started on while it
    /// is healthy (viewers are not bounced back when a preferred engine recovers), the
    /// healthy engines by priority (failover: the same segment number is the same media
    /// interval on every engine), then the rest.
    /// Each engine comes with whether it is healthy, judged once per request.
    fn engines_for(&self, hint: Option<&Id>) -> Vec<(&Arc<EngineOutput>, bool)> {
        if let [(_, only)] = self.engines.as_slice() {
            // Nothing to choose: no health checks on the hot path.
            return vec![(only, true)];
        }
        let hinted = hint.and_then(|h| self.engines.iter().position(|(id, _)| id == h));
        let healthy: Vec<bool> = self.engines.iter().map(|(_, e)| e.healthy()).collect();
        let mut indices: Vec<usize> = Vec::with_capacity(self.engines.len());
        let mut add = |i: usize| {
            if !indices.contains(&i) {
                indices.push(i);
            }
        };
        if let Some(h) = hinted.filter(|&h| healthy[h]) {
            add(h);
        }
        (0..self.engines.len())
            .filter(|&i| healthy[i])
            .for_each(&mut add);
        if let Some(h) = hinted {
            add(h);
        }
        (0..self.engines.len()).for_each(&mut add);
        indices
            .iter()
            .map(|&i| (&self.engines[i].1, healthy[i]))
            .collect()
    }

    /// The engine a new viewer starts on: the healthy one of lowest priority, else the
    /// first that has a playlist at all.
    fn engine_for_new_viewer(&self, output: OutputKind) -> Option<(&Id, Bytes)> {
        let pick = |healthy_only: bool| {
            self.engines
                .iter()
                .filter(|(_, e)| !healthy_only || e.healthy())
                .find_map(|(id, e)| {
                    e.multivariant_for(output, self.max_kbps, self.audio_tracks.as_deref())
                        .map(|b| (id, b))
                })
        };
        pick(true).or_else(|| pick(false))
    }
}

/// Everything the HTTP layer serves, replaced as a whole on a configuration change.
#[derive(Clone, Default)]
pub struct Catalog {
    pub distributions: HashMap<Id, DistributionEntry>,
    /// Peers whose `X-Forwarded-For` is believed (a cache or load balancer in front).
    pub trusted_proxies: Vec<IpNet>,
    /// Places viewers for analytics (the same database geo rules use).
    pub geodb: Option<Arc<crate::geo::GeoDb>>,
}

pub struct HttpState {
    pub catalog: ArcSwap<Catalog>,
    pub sessions: SessionKey,
    pub refusals: RefusalCounts,
    /// Who is watching what, for status.
    pub viewers: Viewers,
    /// Requests and egress by distribution (metrics).
    pub requests: RequestCounts,
    /// Whether requests and viewers are counted (`server.metrics`).
    pub measure: std::sync::atomic::AtomicBool,
    /// Blocking requests (LL-HLS playlist reloads, preload hints) held right now.
    pub parked: std::sync::atomic::AtomicU64,
    /// What answers `/api/...` (set once, by the server's wiring); `None`: 404.
    pub api: std::sync::OnceLock<Arc<dyn ControlApi>>,
}

impl HttpState {
    pub fn new(catalog: Catalog, sessions: SessionKey) -> Arc<Self> {
        Arc::new(HttpState {
            catalog: ArcSwap::from_pointee(catalog),
            sessions,
            refusals: RefusalCounts::default(),
            viewers: Viewers::default(),
            requests: RequestCounts::default(),
            measure: std::sync::atomic::AtomicBool::new(true),
            parked: std::sync::atomic::AtomicU64::new(0),
            api: std::sync::OnceLock::new(),
        })
    }
}

/// A request to the control API, its body read in full (at most [`API_MAX_BODY`]).
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub peer: IpAddr,
    pub authorization: Option<String>,
    pub if_match: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// The future of one control API answer.
pub type ApiFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static>>;

/// Answers `/api/...` requests (the control API lives with the server's wiring, which
/// owns the configuration; this crate only carries its requests).
pub trait ControlApi: Send + Sync + 'static {
    /// Whether this request's body is worth reading (asked with the body still empty);
    /// `false`: it is answered without one.
    fn wants_body(&self, req: &ApiRequest) -> bool;
    fn call(self: Arc<Self>, req: ApiRequest) -> ApiFuture;
}

/// The largest control API request body (a whole configuration section fits many
/// times over).
pub const API_MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Concurrent connections (enforced by the listener's owner).
    pub max_connections: usize,
    /// Concurrent connections from one client address, except trusted proxies
    /// (enforced by the listener's owner). Generous: many viewers can share an address
    /// behind a NAT.
    pub max_per_address: usize,
    pub header_read_timeout: Duration,
    /// A response that makes no write progress for this long closes the connection.
    pub write_stall_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 10_000,
            max_per_address: 256,
            header_read_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        }
    }
}

const PLAYLIST: &str = "application/vnd.apple.mpegurl";
/// Media playlists change every segment; a cache may hold one for a second.
const PLAYLIST_CACHE: &str = "public, max-age=1";
const MULTIVARIANT_CACHE: &str = "public, max-age=5";
/// A multivariant playlist made for one viewer (it names the viewer's session).
const PRIVATE_MULTIVARIANT_CACHE: &str = "private, no-store";
/// Segment URLs are never reused for other bytes.
const SEGMENT_CACHE: &str = "public, max-age=31536000, immutable";

/// A response with the headers every answer carries. Static header values: no parsing
/// or copying on the request path.
fn response(
    status: StatusCode,
    content_type: &'static str,
    cache: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

fn error(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut r = response(
        status,
        "text/plain; charset=utf-8",
        "no-store",
        Bytes::from_static(message.as_bytes()),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    }
    r
}

/// `204 No Content`, no body and no content type.
fn no_content() -> Response<Full<Bytes>> {
    let mut r = response(
        StatusCode::NO_CONTENT,
        "text/plain",
        "no-store",
        Bytes::new(),
    );
    r.headers_mut().remove(header::CONTENT_TYPE);
    r
}

/// A CORS preflight (Fetch standard, "CORS protocol"): any origin may read, and send
/// `Authorization` (viewer tokens) and `Range`. Cached by browsers for a day.
fn preflight() -> Response<Full<Bytes>> {
    let mut r = no_content();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, range"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    r
}

/// What a request says about itself, taken from the socket and the headers.
#[derive(Debug, Clone)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The socket peer.
    pub peer: IpAddr,
    pub forwarded_for: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    /// A plain GET from `peer` with no headers (tests and tools).
    pub fn get(path: &'a str, peer: IpAddr) -> Self {
        RequestFacts {
            method: &Method::GET,
            path,
            query: None,
            peer,
            forwarded_for: None,
            origin: None,
            referer: None,
            authorization: None,
            user_agent: None,
        }
    }
}

/// Counts for catalogs that are never served (checks, tests): one for all of them.
pub fn unused_counts() -> &'static DistributionCounts {
    static UNUSED: std::sync::OnceLock<DistributionCounts> = std::sync::OnceLock::new();
    UNUSED.get_or_init(DistributionCounts::default)
}

/// What a request asked for, as counted: the kinds of [`RequestCounts`].
pub const REQUEST_KINDS: [&str; 4] = ["multivariant", "playlist", "segment", "part"];
/// Status classes of [`RequestCounts`].
pub const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Requests and bytes sent, by distribution, kind and status class. Only distributions
/// of the configuration are counted (a request for anything else is not), so the set of
/// labels never grows with what clients send.
#[derive(Default)]
pub struct RequestCounts(std::sync::RwLock<HashMap<Id, &'static DistributionCounts>>);

/// One distribution's request counts. Each HTTP worker thread adds to its own
/// cache-line-sized shard (no two cores write the same line); a scrape sums them.
#[derive(Default)]
pub struct DistributionCounts {
    shards: [CountShard; COUNT_SHARDS],
}

const COUNT_SHARDS: usize = 8;

#[derive(Default)]
#[repr(align(128))]
struct CountShard {
    /// [kind][status class]
    requests: [[std::sync::atomic::AtomicU64; 4]; 4],
    /// Response body bytes (HEAD counts none).
    egress_bytes: std::sync::atomic::AtomicU64,
}

impl DistributionCounts {
    fn add(&self, kind: usize, class: usize, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        thread_local! {
            static SHARD: usize = {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                NEXT.fetch_add(1, Relaxed) % COUNT_SHARDS
            };
        }
        let shard = &self.shards[SHARD.with(|s| *s)];
        shard.requests[kind][class].fetch_add(1, Relaxed);
        shard.egress_bytes.fetch_add(bytes, Relaxed);
    }

    /// Requests of kind `kind` ([`REQUEST_KINDS`]) answered with status class `class`
    /// ([`STATUS_CLASSES`]).
    pub fn requests(&self, kind: usize, class: usize) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards
            .iter()
            .map(|s| s.requests[kind][class].load(Relaxed))
            .sum()
    }

    pub fn egress_bytes(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards
            .iter()
            .map(|s| s.egress_bytes.load(Relaxed))
            .sum()
    }
}

impl RequestCounts {
    /// The counts of `dist`, made on first use and kept for the life of the process (a
    /// catalog entry holds a plain reference, so counting a request touches no shared
    /// reference count; about 1 KiB per distribution id ever configured).
    pub fn counts_for(&self, dist: &Id) -> &'static DistributionCounts {
        if let Some(c) = self.0.read().unwrap_or_else(|e| e.into_inner()).get(dist) {
            return c;
        }
        let mut m = self.0.write().unwrap_or_else(|e| e.into_inner());
        m.entry(dist.clone())
            .or_insert_with(|| Box::leak(Box::default()))
    }

    /// Every distribution counted so far.
    pub fn all(&self) -> Vec<(Id, &'static DistributionCounts)> {
        let m = self.0.read().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(d, c)| (d.clone(), *c)).collect()
    }
}

/// Refusals counted by distribution and reason (exported by `/metrics`).
#[derive(Debug, Default)]
pub struct RefusalCounts(Mutex<HashMap<(Id, Refusal), u64>>);

impl RefusalCounts {
    /// Every (distribution, reason) refused at least once, with its count.
    pub fn all(&self) -> Vec<(Id, Refusal, u64)> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|((d, r), n)| (d.clone(), *r, *n)).collect()
    }

    fn count(&self, dist: &Id, why: Refusal) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((dist.clone(), why)).or_default() += 1;
    }

    /// How many requests to `dist` were refused for `why`.
    pub fn get(&self, dist: &Id, why: Refusal) -> u64 {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(dist.clone(), why)).copied().unwrap_or(0)
    }
}

fn refuse(state: &HttpState, dist: &Id, why: Refusal) -> Response<Full<Bytes>> {
    state.refusals.count(dist, why);
    // The reason is counted and logged, never the token itself.
    tracing::debug!(distribution = %dist, reason = why.as_str(), "viewer refused");
    match why.status() {
        403 => error(StatusCode::FORBIDDEN, "forbidden\n"),
        _ => {
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// `uri` lines and `URI="..."` attributes of a multivariant playlist, prefixed (to send
/// a viewer's child requests through its session path).
fn prefix_uris(body: &[u8], prefix: &str) -> Bytes {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len() + 16 * prefix.len());
    for line in text.lines() {
        if line.is_empty() {
        } else if !line.starts_with('#') {
            out.push_str(prefix);
            out.push_str(line);
        } else {
            out.push_str(&line.replace("URI=\"", &format!("URI=\"{prefix}")));
        }
        out.push('\n');
    }
    Bytes::from(out)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An answer now, or a request parked until the playlist or part it asks for exists
/// (LL-HLS blocking playlist reload and preload hints).
pub enum Answer {
    Now(Response<Full<Bytes>>),
    Park(Parked),
}

impl From<Response<Full<Bytes>>> for Answer {
    fn from(r: Response<Full<Bytes>>) -> Self {
        Answer::Now(r)
    }
}

/// What a parked request waits for, and how it is answered once it may be.
pub struct Parked {
    engine: Arc<EngineOutput>,
    output: OutputKind,
    rendition: String,
    want: Awaited,
    kind: ParkedKind,
    /// Decided with the rules, applied when the answer is made.
    cors: Cors,
    /// Give up (503) after this long: about three target durations.
    wait: Duration,
}

enum ParkedKind {
    Playlist { skip: bool, edits: PlaylistEdits },
    Part { msn: u64, index: u32 },
}

impl Parked {
    /// Waits on `engine`'s playlist of `rendition` for `want`, at most three target
    /// durations (RFC 8216bis §6.2.5.2 has the client give up after that), then 503.
    fn new(
        engine: &Arc<EngineOutput>,
        output: OutputKind,
        rendition: &str,
        want: Awaited,
        kind: ParkedKind,
    ) -> Self {
        Parked {
            engine: Arc::clone(engine),
            output,
            rendition: rendition.to_owned(),
            want,
            kind,
            cors: Cors::Any,
            wait: Duration::from_secs(3 * engine.target_duration()),
        }
    }

    /// The answer if what it waits for is there (or never will be), else `None`.
    fn try_answer(&self) -> Option<Response<Full<Bytes>>> {
        let r = match self
            .engine
            .readiness(self.output, &self.rendition, self.want)?
        {
            Readiness::Waiting => return None,
            Readiness::TooFar => match &self.kind {
                ParkedKind::Playlist { .. } => {
                    error(StatusCode::BAD_REQUEST, "_HLS_msn too far ahead\n")
                }
                ParkedKind::Part { .. } => error(StatusCode::NOT_FOUND, "no such part\n"),
            },
            Readiness::Ready => match &self.kind {
                ParkedKind::Playlist { skip, edits } => media_playlist_response(
                    &self.engine,
                    self.engine.rendered(self.output, &self.rendition)?,
                    *skip,
                    edits,
                ),
                ParkedKind::Part { msn, index } => {
                    part_response(&self.engine, &self.rendition, *msn, *index)
                }
            },
        };
        Some(self.cors.apply(r))
    }

    /// Waits (a future on the playlist's change signal, no thread, no polling) until the
    /// request can be answered, or `wait` runs out (503).
    pub async fn answer(self) -> Response<Full<Bytes>> {
        let mut changes = self.engine.subscribe_playlist(self.output, &self.rendition);
        let deadline = tokio::time::sleep(self.wait);
        tokio::pin!(deadline);
        loop {
            // Subscribed first, then checked: a change in between is not missed.
            if let Some(r) = self.try_answer() {
                return r;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = &mut deadline => break,
            }
        }
        self.cors.apply(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not available in time\n",
        ))
    }
}

/// The LL-HLS delivery directives of a media playlist request (RFC 8216bis §6.2.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    pub msn: Option<u64>,
    pub part: Option<u32>,
    pub skip: bool,
}

impl Directives {
    /// From the query; `Err` for a malformed, repeated or inconsistent directive (400).
    pub fn parse(query: Option<&str>) -> Result<Self, &'static str> {
        let mut d = Directives::default();
        let mut seen_skip = false;
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "_HLS_msn" if d.msn.is_none() => {
                    d.msn = Some(path::number(v).ok_or("bad _HLS_msn\n")?)
                }
                "_HLS_part" if d.part.is_none() => {
                    d.part = Some(path::number(v).ok_or("bad _HLS_part\n")?)
                }
                "_HLS_skip" if !seen_skip => {
                    seen_skip = true;
                    d.skip = match v {
                        "YES" | "v2" => true,
                        _ => return Err("bad _HLS_skip\n"),
                    }
                }
                "_HLS_msn" | "_HLS_part" | "_HLS_skip" => return Err("repeated directive\n"),
                _ => {}
            }
        }
        if d.part.is_some() && d.msn.is_none() {
            return Err("_HLS_part without _HLS_msn\n");
        }
        Ok(d)
    }
}

/// A media playlist of `engine` as served: its delta update when asked and available,
/// with the distribution's own hold-backs.
/// What a distribution changes in the media playlists it serves.
struct PlaylistEdits {
    /// `target_latency_seconds`: its own hold-backs.
    target_latency: Option<MediaTime>,
    /// `audio_tracks`: the extra tracks it offers; LL-HLS rendition reports of the others
    /// are left out (they would name renditions it answers 404 for).
    offered: Option<Vec<String>>,
}

impl PlaylistEdits {
    fn of(dist: &DistributionEntry) -> Self {
        PlaylistEdits {
            target_latency: dist.target_latency,
            offered: dist.audio_tracks.clone(),
        }
    }
}

fn media_playlist_response(
    engine: &EngineOutput,
    rendered: Rendered,
    skip: bool,
    edits: &PlaylistEdits,
) -> Response<Full<Bytes>> {
    let mut body = match (skip, rendered.skip) {
        (true, Some(delta)) => delta,
        _ => rendered.full,
    };
    if let (Some(latency), Some(part)) = (edits.target_latency, engine.part_target()) {
        let line = server_control_line(engine.target_duration(), part, Some(latency));
        body = with_server_control(&body, &line);
    }
    if let Some(offered) = &edits.offered {
        body = without_reports_of_others(engine, &body, offered);
    }
    response(StatusCode::OK, PLAYLIST, PLAYLIST_CACHE, body)
}

/// `body` without the rendition reports of extra audio tracks not in `offered`.
fn without_reports_of_others(engine: &EngineOutput, body: &Bytes, offered: &[String]) -> Bytes {
    const REPORT: &str = "#EXT-X-RENDITION-REPORT:URI=\"../";
    let Ok(text) = std::str::from_utf8(body) else {
        return body.clone();
    };
    let hidden = |line: &str| {
        line.strip_prefix(REPORT)
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(name, _)| {
                !offered.iter().any(|o| o == name) && engine.has_extra_track(name)
            })
    };
    if !text.lines().any(hidden) {
        return body.clone();
    }
    let kept: String = text.split_inclusive('\n').filter(|l| !hidden(l)).collect();
    Bytes::from(kept)
}

fn part_response(
    engine: &EngineOutput,
    rendition: &str,
    msn: u64,
    index: u32,
) -> Response<Full<Bytes>> {
    match engine.part(rendition, msn, index) {
        Some(body) => response(StatusCode::OK, "video/iso.segment", SEGMENT_CACHE, body),
        None => error(StatusCode::NOT_FOUND, "no such part\n"),
    }
}

/// Answers one request at once: a request that would wait (blocking reload, a hinted
/// part) is answered with what there is now, or 503. Unit tests use this.
pub fn handle(state: &HttpState, req: &RequestFacts<'_>, now: u64) -> Response<Full<Bytes>> {
    match plan(state, req, now) {
        Answer::Now(r) => r,
        Answer::Park(p) => p
            .try_answer()
            .unwrap_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "not available yet\n")),
    }
}

/// Decides one request. Pure apart from reading the state: unit-testable without sockets.
pub fn plan(state: &HttpState, req: &RequestFacts<'_>, now: u64) -> Answer {
    plan_counted(state, req, now, &mut None)
}

/// [`plan`], telling `count` which distribution's counts (and which kind of request)
/// the answer is to be counted in, once its status is known.
fn plan_counted(
    state: &HttpState,
    req: &RequestFacts<'_>,
    now: u64,
    count: &mut Option<(&'static DistributionCounts, usize)>,
) -> Answer {
    let Some(path::Request {
        route,
        session,
        engine,
        angle,
    }) = path::parse_request(req.path)
    else {
        return error(StatusCode::NOT_FOUND, "not found\n").into();
    };
    if req.method == Method::OPTIONS {
        return preflight().into();
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        return r.into();
    }
    let dist_id = match &route {
        Route::Health => {
            return response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "no-store",
                Bytes::from_static(b"ok\n"),
            )
            .into();
        }
        Route::Multivariant { dist, .. }
        | Route::MediaPlaylist { dist, .. }
        | Route::Init { dist, .. }
        | Route::Segment { dist, .. }
        | Route::Part { dist, .. }
        | Route::SessionCheck { dist } => dist,
    };
    let catalog = state.catalog.load();
    let Some(dist) = catalog.distributions.get(dist_id).filter(|d| d.enabled) else {
        return error(StatusCode::NOT_FOUND, "unknown distribution\n").into();
    };
    if state.measure.load(std::sync::atomic::Ordering::Relaxed) {
        let kind = match &route {
            Route::Multivariant { .. } => Some(0),
            Route::MediaPlaylist { .. } => Some(1),
            Route::Init { .. } | Route::Segment { .. } => Some(2),
            Route::Part { .. } => Some(3),
            Route::Health | Route::SessionCheck { .. } => None,
        };
        *count = kind.map(|k| (dist.counts, k));
    }
    // The viewer's rules are judged before anything about the stream is revealed.
    let origin = policy::request_origin(req.origin, req.referer);
    // Rules, overrides and viewer analytics behind a cache look at the viewer's address:
    // an open distribution served directly does not parse X-Forwarded-For.
    let peer = req.peer.to_canonical();
    let via_proxy = !catalog.trusted_proxies.is_empty()
        && catalog.trusted_proxies.iter().any(|n| n.contains(&peer));
    let client = if dist.policy.is_open() && dist.overrides.is_empty() && !via_proxy {
        peer
    } else {
        policy::client_address(req.peer, req.forwarded_for, &catalog.trusted_proxies)
    };
    if let Route::Multivariant { output, .. } = &route {
        return multivariant(
            state,
            &catalog,
            req,
            (dist_id, dist),
            (*output, angle.as_ref()),
            client,
            via_proxy,
            origin,
            now,
        )
        .into();
    }
    // The viewer number of a verified session.
    let mut viewer = None;
    if !dist.policy.is_open() {
        let verdict = match session {
            None => Err(Refusal::SessionMissing),
            Some(s) => dist
                .policy
                .check_address_and_origin(client, origin)
                .and_then(|()| {
                    state
                        .sessions
                        .verify(dist_id, s, now)
                        .map_err(|_| Refusal::SessionInvalid)
                }),
        };
        match verdict {
            Ok(v) => viewer = Some(v),
            Err(why) => return refuse(state, dist_id, why).into(),
        }
    }
    if dist.stopped {
        return with_cors(
            error(StatusCode::SERVICE_UNAVAILABLE, "channel stopped\n"),
            &dist.policy,
            origin,
        )
        .into();
    }
    let sighting = matches!(
        route,
        Route::MediaPlaylist { .. } | Route::SessionCheck { .. }
    );
    if sighting && state.measure.load(std::sync::atomic::Ordering::Relaxed) {
        // An open distribution's session (given behind a cache) is not checked for
        // access, only to count its viewer (expired or not: its player keeps it); a bad
        // one counts as the client.
        let viewer = viewer.or_else(|| session.and_then(|s| state.sessions.viewer_of(dist_id, s)));
        see_viewer(
            state, &catalog, dist, dist_id, viewer, client, req, None, false,
        );
    }
    if let Route::SessionCheck { .. } = route {
        // Admitted (or an open distribution): a cache in front may serve this viewer.
        return no_content().into();
    }
    // A camera angle is served by its own output alone.
    let angle_output = match angle.as_ref().map(|a| dist.angle(a)) {
        None => None,
        Some(Some(Some(out))) => Some(out),
        Some(found) => {
            let why = if found.is_some() {
                "camera angle not live\n"
            } else {
                "no such camera angle\n"
            };
            return with_cors(error(StatusCode::NOT_FOUND, why), &dist.policy, origin).into();
        }
    };
    let engines = match &angle_output {
        Some(out) => vec![(out, true)],
        None => dist.engines_for(engine.as_ref()),
    };
    match serve_route(dist, &engines, &route, req.query) {
        Answer::Now(r) => with_cors(r, &dist.policy, origin).into(),
        Answer::Park(mut p) => {
            p.cors = Cors::new(&dist.policy, origin);
            Answer::Park(p)
        }
    }
}

/// Records a sighting of a viewer of `dist` (analytics).
#[allow(clippy::too_many_arguments)]
fn see_viewer(
    state: &HttpState,
    catalog: &Catalog,
    dist: &DistributionEntry,
    dist_id: &Id,
    viewer: Option<u64>,
    client: IpAddr,
    req: &RequestFacts<'_>,
    via: Option<&Id>,
    admission: bool,
) {
    let user_agent = req.user_agent;
    let key = match viewer {
        Some(v) => ViewerKey::Session(v),
        None => ViewerKey::Client {
            address: client,
            user_agent,
        },
    };
    let target_secs = || dist.engines.first().map_or(2, |(_, e)| e.target_duration());
    state.viewers.seen(
        Sighting {
            dist: dist_id,
            key,
            address: client,
            user_agent,
            query: req.query,
            admission,
            via,
            target_secs: &target_secs,
        },
        catalog.geodb.as_deref(),
    );
}

/// The CORS headers of an answer. Restricted origins: CORS names the (allowed, or absent)
/// origin, and caches are told the answer depends on it; otherwise any origin (`*`, set
/// by [`response`]).
enum Cors {
    Any,
    Restricted(Option<HeaderValue>),
}

impl Cors {
    fn new(policy: &Policy, origin: Option<&str>) -> Self {
        if policy.restricts_origins() {
            Cors::Restricted(origin.and_then(|o| HeaderValue::from_str(o).ok()))
        } else {
            Cors::Any
        }
    }

    fn apply(&self, mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
        if let Cors::Restricted(origin) = self {
            let h = resp.headers_mut();
            match origin {
                Some(o) => h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone()),
                None => h.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            };
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        resp
    }
}

fn with_cors(
    resp: Response<Full<Bytes>>,
    policy: &Policy,
    origin: Option<&str>,
) -> Response<Full<Bytes>> {
    Cors::new(policy, origin).apply(resp)
}

/// The multivariant request: the entry distribution's token, its override rules, then
/// the served distribution's own rules and playlist. Child URIs point at the served
/// distribution, through a session when it has rules.
#[allow(clippy::too_many_arguments)]
fn multivariant(
    state: &HttpState,
    catalog: &Catalog,
    req: &RequestFacts<'_>,
    (entry_id, entry): (&Id, &DistributionEntry),
    (output, angle): (OutputKind, Option<&Id>),
    client: IpAddr,
    via_proxy: bool,
    origin: Option<&str>,
    now: u64,
) -> Response<Full<Bytes>> {
    let token = TokenParam::from_request(req.query, req.authorization);
    let (served_id, served) = if entry.overrides.is_empty() {
        if let Err(why) = entry.policy.admit(entry_id, client, origin, token) {
            return refuse(state, entry_id, why);
        }
        (entry_id, entry)
    } else {
        // The entry's token (its `sub` makes the pick sticky), then the served
        // distribution's own address and origin rules.
        let claims = match entry.policy.check_token(entry_id, client, token) {
            Ok(c) => c,
            Err(why) => return refuse(state, entry_id, why),
        };
        let traits = overrides::viewer_traits(req.user_agent, req.query);
        let client_key = client.to_string();
        let viewer = claims
            .as_ref()
            .and_then(|c| c.sub.as_deref())
            .or_else(|| overrides::viewer_param(req.query))
            .unwrap_or(&client_key);
        let (served_id, served) = overrides::resolve(entry_id, &entry.overrides, &traits, viewer)
            .and_then(|id| catalog.distributions.get_key_value(id))
            .filter(|(_, d)| d.enabled)
            .unwrap_or((entry_id, entry));
        if let Err(why) = served.policy.check_address_and_origin(client, origin) {
            return refuse(state, served_id, why);
        }
        (served_id, served)
    };
    if !served.outputs.contains(&output) {
        return error(
            StatusCode::NOT_FOUND,
            "output not enabled for this distribution\n",
        );
    }
    if served.stopped {
        return error(StatusCode::SERVICE_UNAVAILABLE, "channel stopped\n");
    }
    let found = match angle {
        None => served
            .engine_for_new_viewer(output)
            .map(|(e, b)| (Some(e), b)),
        Some(a) => match served.angle(a) {
            None => return error(StatusCode::NOT_FOUND, "no such camera angle\n"),
            Some(None) => return error(StatusCode::SERVICE_UNAVAILABLE, "camera angle not live\n"),
            Some(Some(out)) => out
                .multivariant_for(output, served.max_kbps, served.audio_tracks.as_deref())
                .map(|b| (None, b)),
        },
    };
    let Some((engine, body)) = found else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "stream not live yet\n");
    };
    let measure = state.measure.load(std::sync::atomic::Ordering::Relaxed);
    // Protected distributions need a session; behind a cache (the peer a trusted proxy),
    // open ones get one too while analytics are on: the cache forwards its checks, which
    // is how its viewers are seen.
    let behind_cache = measure && via_proxy;
    let viewer = (!served.policy.is_open() || behind_cache).then(crate::session::new_viewer);
    let session = viewer.map(|v| {
        state
            .sessions
            .mint_for(served_id, now.saturating_add(SESSION_SECONDS), v)
    });
    let moved = served_id != entry_id;
    if measure {
        let via = moved.then_some(entry_id);
        see_viewer(
            state, catalog, served, served_id, viewer, client, req, via, true,
        );
    }
    // Child URIs, relative to /live/<entry>/<output>/index.m3u8: through the served
    // distribution, the viewer's session, and the engine it starts on (when there is a
    // choice, so that it stays there).
    let mut via = String::new();
    if let Some(s) = &session {
        via.push_str(s);
        via.push('/');
    }
    if let Some(engine) = engine.filter(|_| served.engines.len() > 1) {
        via.push_str(&format!("e-{engine}/"));
    }
    // A camera angle's multivariant sits two levels deeper (`angle/<source>/`), and its
    // children keep the angle after the session.
    let (up, at) = match angle {
        None => ("../", String::new()),
        Some(a) => ("../../../", format!("angle/{a}/")),
    };
    let prefix = match (moved, via.is_empty()) {
        (false, true) => None,
        (false, false) => Some(format!("{up}{via}{at}{}/", output.as_str())),
        (true, _) => Some(format!("{up}../{served_id}/{via}{at}{}/", output.as_str())),
    };
    // A playlist that depends on the viewer (a session, an override) is theirs alone.
    let private = !entry.overrides.is_empty() || session.is_some();
    let resp = response(
        StatusCode::OK,
        PLAYLIST,
        if private {
            PRIVATE_MULTIVARIANT_CACHE
        } else {
            MULTIVARIANT_CACHE
        },
        match prefix {
            Some(p) => prefix_uris(&body, &p),
            None => body,
        },
    );
    with_cors(resp, &served.policy, origin)
}

/// The response for an admitted child request (media playlist, init, segment, part).
fn serve_route(
    dist: &DistributionEntry,
    engines: &[(&Arc<EngineOutput>, bool)],
    route: &Route,
    query: Option<&str>,
) -> Answer {
    let output = match route {
        Route::Init { .. } | Route::Part { .. } => OutputKind::Cmaf,
        Route::Multivariant { output, .. }
        | Route::MediaPlaylist { output, .. }
        | Route::Segment { output, .. } => *output,
        Route::Health | Route::SessionCheck { .. } => {
            return error(StatusCode::NOT_FOUND, "not found\n").into();
        }
    };
    if !dist.outputs.contains(&output) {
        return error(
            StatusCode::NOT_FOUND,
            "output not enabled for this distribution\n",
        )
        .into();
    }
    if let (Some(offered), Some(rendition)) = (&dist.audio_tracks, route.rendition())
        && !offered.iter().any(|t| t == rendition)
        && engines.iter().any(|(e, _)| e.has_extra_track(rendition))
    {
        return error(
            StatusCode::NOT_FOUND,
            "audio track not offered by this distribution\n",
        )
        .into();
    }
    match route {
        // Answered by `multivariant`, which applies overrides and sessions.
        Route::Multivariant { .. } => error(StatusCode::NOT_FOUND, "not found\n").into(),
        Route::MediaPlaylist {
            output, rendition, ..
        } => {
            let directives = match Directives::parse(query) {
                Ok(d) => d,
                Err(why) => return error(StatusCode::BAD_REQUEST, why).into(),
            };
            // Of the healthy engines, the first (in the viewer's order) that is furthest
            // ahead: a switch between engines never takes the newest segment back.
            let (rendition, output) = (rendition.as_str(), *output);
            let from_engine = if engines.len() > 1 {
                let newest: Vec<Option<u64>> = engines
                    .iter()
                    .map(|(e, healthy)| healthy.then(|| e.latest_msn(rendition)).flatten())
                    .collect();
                let furthest = newest.iter().max().copied().flatten();
                engines
                    .iter()
                    .zip(&newest)
                    .filter(|(_, n)| furthest.is_none() || **n == furthest)
                    .map(|(e, _)| e)
                    .chain(engines.iter())
                    .find_map(|(e, _)| Some((*e, e.rendered(output, rendition)?)))
            } else {
                engines
                    .iter()
                    .find_map(|(e, _)| Some((*e, e.rendered(output, rendition)?)))
            };
            let Some((engine, rendered)) = from_engine else {
                return if engines
                    .iter()
                    .any(|(e, _)| e.rendition_names().iter().any(|n| n == rendition))
                {
                    error(StatusCode::SERVICE_UNAVAILABLE, "stream not live yet\n")
                } else {
                    error(StatusCode::NOT_FOUND, "unknown rendition\n")
                }
                .into();
            };
            match directives.msn {
                // Blocking reload: only where the playlist can block (it has parts).
                Some(msn) if engine.part_target().is_some() && output == OutputKind::Cmaf => {
                    Answer::Park(Parked::new(
                        engine,
                        output,
                        rendition,
                        Awaited {
                            msn,
                            part: directives.part,
                        },
                        ParkedKind::Playlist {
                            skip: directives.skip,
                            edits: PlaylistEdits::of(dist),
                        },
                    ))
                }
                _ => media_playlist_response(
                    engine,
                    rendered,
                    directives.skip,
                    &PlaylistEdits::of(dist),
                )
                .into(),
            }
        }
        Route::Part {
            rendition,
            msn,
            part,
            ..
        } => {
            let rendition = rendition.as_str();
            if let Some(body) = engines
                .iter()
                .find_map(|(e, _)| e.part(rendition, *msn, *part))
            {
                return response(StatusCode::OK, "video/iso.segment", SEGMENT_CACHE, body).into();
            }
            // Not there yet: a preload hint names the next part before it exists, and
            // its request is answered as soon as the part is complete.
            let Some((engine, _)) = engines.iter().find(|(e, _)| {
                e.part_target().is_some() && e.rendered(OutputKind::Cmaf, rendition).is_some()
            }) else {
                return error(StatusCode::NOT_FOUND, "no such part\n").into();
            };
            Answer::Park(Parked::new(
                engine,
                OutputKind::Cmaf,
                rendition,
                Awaited {
                    msn: *msn,
                    part: Some(*part),
                },
                ParkedKind::Part {
                    msn: *msn,
                    index: *part,
                },
            ))
        }
        Route::Init {
            rendition, version, ..
        } => match engines
            .iter()
            .find_map(|(e, _)| e.init_segment(rendition.as_str(), *version))
        {
            Some(body) => response(StatusCode::OK, "video/mp4", SEGMENT_CACHE, body),
            None => error(StatusCode::NOT_FOUND, "no such init segment\n"),
        }
        .into(),
        Route::Segment {
            output,
            rendition,
            msn,
            ..
        } => match engines
            .iter()
            .find_map(|(e, _)| e.segment(*output, rendition.as_str(), *msn))
        {
            Some(body) => {
                let ct = match output {
                    OutputKind::Cmaf => "video/iso.segment",
                    OutputKind::Ts => "video/mp2t",
                };
                response(StatusCode::OK, ct, SEGMENT_CACHE, body)
            }
            None => error(StatusCode::NOT_FOUND, "no such segment\n"),
        }
        .into(),
        Route::Health | Route::SessionCheck { .. } => {
            error(StatusCode::NOT_FOUND, "not found\n").into()
        }
    }
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn status_class(status: StatusCode) -> usize {
    match status.as_u16() {
        200..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        _ => 3,
    }
}

/// Reads a control API request's body (bounded in size and time) and hands it on.
async fn api_service(
    api: Arc<dyn ControlApi>,
    peer: SocketAddr,
    req: Request<Incoming>,
    read_timeout: Duration,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let head = |name| header_str(&req, name).map(str::to_owned);
    let (authorization, if_match, content_type) = (
        head(header::AUTHORIZATION),
        head(header::IF_MATCH),
        head(header::CONTENT_TYPE),
    );
    let (parts, body) = req.into_parts();
    let mut request = ApiRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        peer: peer.ip(),
        authorization,
        if_match,
        content_type,
        body: Bytes::new(),
    };
    if api.wants_body(&request) {
        let limited = http_body_util::Limited::new(body, API_MAX_BODY);
        request.body = match tokio::time::timeout(read_timeout, limited.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB\n");
            }
            Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "unreadable request body\n"),
            Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "request body too slow\n"),
        };
    }
    let mut resp = api.clone().call(request).await;
    // The API is for scripts and operators, not for pages on other origins.
    resp.headers_mut()
        .remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    if parts.method == Method::HEAD {
        *resp.body_mut() = Full::new(Bytes::new());
    }
    tracing::debug!(method = %parts.method, path = parts.uri.path(), status = resp.status().as_u16(), "api");
    resp
}

async fn service(
    state: Arc<HttpState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    read_timeout: Duration,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path();
    // The control API, metrics and the status page live with the server's wiring.
    if path == "/api"
        || path.starts_with("/api/")
        || path == "/metrics"
        || path == "/"
        || path.starts_with("/status/")
    {
        return Ok(match state.api.get() {
            Some(api) => api_service(api.clone(), peer, req, read_timeout).await,
            None => error(StatusCode::NOT_FOUND, "not found\n"),
        });
    }
    let facts = RequestFacts {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        peer: peer.ip(),
        forwarded_for: header_str(&req, header::HeaderName::from_static("x-forwarded-for")),
        origin: header_str(&req, header::ORIGIN),
        referer: header_str(&req, header::REFERER),
        authorization: header_str(&req, header::AUTHORIZATION),
        user_agent: header_str(&req, header::USER_AGENT),
    };
    let mut count = None;
    let mut resp = match plan_counted(&state, &facts, unix_now(), &mut count) {
        Answer::Now(r) => r,
        Answer::Park(p) => {
            // Counted while held, whichever way it ends (the client may hang up).
            struct Held<'a>(&'a std::sync::atomic::AtomicU64);
            impl Drop for Held<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            state
                .parked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _held = Held(&state.parked);
            p.answer().await
        }
    };
    let head = req.method() == Method::HEAD;
    let body_len = hyper::body::Body::size_hint(resp.body())
        .exact()
        .unwrap_or(0);
    if let Some((counts, kind)) = count {
        counts.add(
            kind,
            status_class(resp.status()),
            if head { 0 } else { body_len },
        );
    }
    if head {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        *resp.body_mut() = Full::new(Bytes::new());
    }
    // The path only: a query may hold a token.
    tracing::debug!(method = %req.method(), path = req.uri().path(), status = resp.status().as_u16(), "http");
    Ok(resp)
}

/// Serves one accepted connection, plain or TLS, until the client leaves or `cancel`
/// fires; then finishes the requests in flight, bounded. HTTP/1.1 (keep-alive) and
/// HTTP/2 (h2c with prior knowledge on a plain socket, h2 after ALPN on TLS) are told
/// apart by the first bytes; Safari plays LL-HLS only over HTTP/2, where many blocking
/// requests share one connection as streams.
pub async fn serve_http_connection<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<HttpState>,
    limits: &HttpLimits,
    cancel: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = WriteDeadline::new(stream, limits.write_stall_timeout)
        .with_first_read_deadline(limits.header_read_timeout);
    let stalled = io.stalled.clone();
    let read_timeout = limits.header_read_timeout;
    let svc =
        hyper::service::service_fn(move |req| service(state.clone(), peer, req, read_timeout));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        // A peer that stops answering pings is gone: its streams are dropped.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(limits.write_stall_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(limits.drain, conn).await.unwrap_or(Ok(()))
        }
    };
    if stalled.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(%peer, timeout_s = limits.write_stall_timeout.as_secs(), "HTTP viewer stopped reading; connection closed");
    } else if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection error");
    }
}

/// Concurrent HTTP/2 streams per connection: a player's blocking playlist requests, part
/// and segment downloads for every rendition it follows, with room to spare.
const HTTP2_MAX_STREAMS: u32 = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::{IpRule, RuleMode, TokenAlgorithm, TokenConfig, TokenKey};

    const NOW: u64 = 1_800_000_000;

    fn entry(enabled: bool, policy: Policy) -> DistributionEntry {
        DistributionEntry {
            policy: Arc::new(policy),
            overrides: vec![],
            outputs: vec![OutputKind::Cmaf],
            max_kbps: None,
            enabled,
            engines: vec![],
            target_latency: None,
            stopped: false,
            audio_tracks: None,
            angles: Vec::new(),
            counts: unused_counts(),
        }
    }

    fn state() -> Arc<HttpState> {
        let mut c = Catalog::default();
        c.distributions
            .insert(Id::new("d").unwrap(), entry(true, Policy::open()));
        c.distributions
            .insert(Id::new("off").unwrap(), entry(false, Policy::open()));
        let token = TokenConfig {
            required: true,
            keys: vec![TokenKey {
                id: "k".into(),
                algorithm: TokenAlgorithm::HS256,
                secret: Some("0123456789abcdef0123".into()),
                public_key_pem: None,
            }],
            issuer: None,
        };
        let ip = IpRule {
            mode: RuleMode::Allow,
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        };
        c.distributions.insert(
            Id::new("paid").unwrap(),
            entry(true, Policy::new(None, Some(ip), vec![], &token).unwrap()),
        );
        HttpState::new(c, SessionKey::from_secret(b"test"))
    }

    fn local() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[test]
    fn statuses_without_engines() {
        let st = state();
        let get = |p: &str| handle(&st, &RequestFacts::get(p, local()), NOW).status();
        let with = |method: &'static Method, p: &str| {
            handle(
                &st,
                &RequestFacts {
                    method,
                    ..RequestFacts::get(p, local())
                },
                NOW,
            )
        };
        assert_eq!(get("/healthz"), StatusCode::OK);
        assert_eq!(
            get("/live/d/cmaf/index.m3u8"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get("/live/d/ts/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/nope/cmaf/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/off/cmaf/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/d/cmaf/720p/index.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(get("/live/d/cmaf/720p/5.m4s"), StatusCode::NOT_FOUND);
        assert_eq!(get("/etc/passwd"), StatusCode::NOT_FOUND);
        assert_eq!(
            with(&Method::POST, "/healthz").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        // CORS preflight for a playlist (a token in Authorization needs one).
        let r = with(&Method::OPTIONS, "/live/d/cmaf/index.m3u8");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        assert_eq!(
            with(&Method::OPTIONS, "/etc/passwd").status(),
            StatusCode::NOT_FOUND
        );
        let r = handle(
            &st,
            &RequestFacts::get("/live/d/cmaf/index.m3u8", local()),
            NOW,
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    /// Rules are judged before anything about the stream is revealed (401 or 403 even
    /// though nothing is live), and child requests need a valid session.
    #[test]
    fn rules_come_before_the_stream() {
        let st = state();
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let paid = Id::new("paid").unwrap();
        let get = |p: &str, peer: IpAddr| handle(&st, &RequestFacts::get(p, peer), NOW).status();
        assert_eq!(
            get("/live/paid/cmaf/index.m3u8", inside),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get("/live/paid/cmaf/index.m3u8", local()),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get("/live/paid/cmaf/720p/index.m3u8", inside),
            StatusCode::UNAUTHORIZED
        );
        let s = st.sessions.mint(&paid, NOW + 60);
        let child = format!("/live/paid/{s}/cmaf/720p/index.m3u8");
        // A valid session passes the rules; the rendition is then simply unknown.
        assert_eq!(get(&child, inside), StatusCode::NOT_FOUND);
        // LL-HLS parts and blocking reloads go through the session like everything else.
        assert_eq!(
            get("/live/paid/cmaf/720p/3.1.m4s", inside),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&format!("/live/paid/{s}/cmaf/720p/3.1.m4s"), inside),
            StatusCode::NOT_FOUND
        );
        // What a cache in front asks before serving a viewer from its cache.
        let check = format!("/live/paid/{s}/check");
        assert_eq!(get(&check, inside), StatusCode::NO_CONTENT);
        assert_eq!(get(&check, local()), StatusCode::FORBIDDEN);
        assert_eq!(
            get(
                &format!("/live/paid/{}/check", st.sessions.mint(&paid, NOW - 1)),
                inside
            ),
            StatusCode::UNAUTHORIZED
        );
        // The address rule still holds with a session.
        assert_eq!(get(&child, local()), StatusCode::FORBIDDEN);
        // A session of another distribution, or an expired one.
        let other = st.sessions.mint(&Id::new("d").unwrap(), NOW + 60);
        assert_eq!(
            get(&format!("/live/paid/{other}/cmaf/720p/index.m3u8"), inside),
            StatusCode::UNAUTHORIZED
        );
        let old = st.sessions.mint(&paid, NOW - 1);
        assert_eq!(
            get(&format!("/live/paid/{old}/cmaf/720p/index.m3u8"), inside),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(st.refusals.get(&paid, Refusal::TokenMissing), 1);
        assert_eq!(st.refusals.get(&paid, Refusal::SessionMissing), 2);
        assert_eq!(st.refusals.get(&paid, Refusal::Ip), 3);
        assert_eq!(st.refusals.get(&paid, Refusal::SessionInvalid), 3);
    }

    #[test]
    fn multivariant_uris_go_through_the_session() {
        let body = b"#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",URI=\"audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n";
        let out = prefix_uris(body, "../s-1-ab/cmaf/");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",URI=\"../s-1-ab/cmaf/audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1\n../s-1-ab/cmaf/720p/index.m3u8\n"
        );
    }
}
