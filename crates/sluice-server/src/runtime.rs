//! What runs for a configuration, and the reconciler that changes it in place.
//!
//! [`Runtime::start`] starts every channel (its bus, engines, slate, pull and generated
//! ingests) and publishes the stream keys and the HTTP catalog. [`Runtime::apply`]
//! takes the next validated configuration and changes only what differs:
//!
//! - distributions (rules, tokens, overrides, max bitrate, outputs, added, removed): a
//!   new catalog replaces the old one atomically; no engine is touched;
//! - an engine whose settings or ladder change is started anew beside the old one, and
//!   the catalog moves to it once it has a segment of every rendition (bounded); the old
//!   one then stops. Viewers see a new `EXT-X-MAP` and carry on;
//! - ingests: stream keys are replaced at once; a publisher whose ingest was removed or
//!   changed is disconnected; pull and generated ingests restart;
//! - channels added start, channels removed stop (their publishers are disconnected).
//!
//! `[server]` (listeners, proxies, databases) cannot change in place: such a change is
//! refused as a whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_config::{
    Channel, ChannelOutput, ChannelOutputProtocol, Config, Engine, IngestProtocol, Ladder,
    LadderRef, Output, Source, SourceKind, VideoEncoder,
};
use sluice_core::time::secs_f64_to_nanos;
use sluice_core::{Id, MediaTime};
use sluice_distribution::{AngleSlot, Audience, GeoDb, HttpState};
use sluice_engine::{
    Encoder, EncoderChoice, EngineMode, EngineStats, RenditionSettings, TestPattern,
    TestPatternSettings, TranscodeSettings,
};
use sluice_ingest::pull::PullSpec;
use sluice_ingest::{
    ChannelBus, DEFAULT_BUS_CAPACITY, FeedSpec, KeyEntry, KeyRouter, OutputState, OutputStats,
    PublishRouter, Publisher, ReadEntry, Refusal,
};
use sluice_package::{
    AudioSpec, EngineOutput, OutputKind, Packager, PackagerSettings, RenditionSpec, TrackSpec,
    source_rendition,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::app::{build_catalog, publisher_sink, session_grid, slate_timeout_override};
use crate::engine_runner;
use crate::recorder::{RecorderState, RecorderStats};
use crate::supervise::supervise;
use tracing::Instrument;

/// Compressed input an engine may queue before it drops to the next keyframe (a
/// backstop: the bound that matters is two segments of media time).
const ENGINE_INPUT_BYTES: u64 = 32 << 20;

/// Stream keys, replaced as a whole when ingests change; every authorisation reads the
/// current table. Counts its refusals by protocol and reason (metrics).
#[derive(Default)]
pub struct LiveRouter {
    keys: ArcSwap<KeyRouter>,
    /// [RTMP, SRT] x [`Refusal::ALL`].
    refused: [[AtomicU64; 5]; 2],
}

impl LiveRouter {
    fn counted<T>(&self, srt: bool, r: Result<T, Refusal>) -> Result<T, Refusal> {
        if let Err(why) = &r {
            let i = Refusal::ALL.iter().position(|x| x == why).unwrap_or(0);
            self.refused[usize::from(srt)][i].fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Publishers refused so far: (protocol, reason, count).
    pub fn refusals(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut all = Vec::new();
        for (p, protocol) in ["rtmp", "srt"].into_iter().enumerate() {
            for (i, why) in Refusal::ALL.iter().enumerate() {
                all.push((
                    protocol,
                    why.as_str(),
                    self.refused[p][i].load(Ordering::Relaxed),
                ));
            }
        }
        all
    }
}

impl PublishRouter for LiveRouter {
    fn authorize_rtmp(
        &self,
        stream_key: &str,
        peer: std::net::SocketAddr,
        tracking_id: Option<&str>,
    ) -> Result<Publisher, Refusal> {
        self.counted(
            false,
            self.keys
                .load()
                .authorize_rtmp(stream_key, peer, tracking_id),
        )
    }

    fn srt_passphrase(&self, stream_key: &str) -> Result<Option<String>, Refusal> {
        self.counted(true, self.keys.load().srt_passphrase(stream_key))
    }

    fn authorize_srt(
        &self,
        stream_key: &str,
        peer: std::net::SocketAddr,
        tracking_id: Option<&str>,
    ) -> Result<Publisher, Refusal> {
        self.counted(
            true,
            self.keys
                .load()
                .authorize_srt(stream_key, peer, tracking_id),
        )
    }

    fn authorize_rtmp_play(
        &self,
        read_key: &str,
        peer: std::net::SocketAddr,
    ) -> Result<sluice_ingest::Reader, Refusal> {
        self.counted(false, self.keys.load().authorize_rtmp_play(read_key, peer))
    }

    fn srt_read_passphrase(&self, read_key: &str) -> Result<Option<String>, Refusal> {
        self.counted(true, self.keys.load().srt_read_passphrase(read_key))
    }

    fn authorize_srt_read(
        &self,
        read_key: &str,
        peer: std::net::SocketAddr,
    ) -> Result<sluice_ingest::Reader, Refusal> {
        self.counted(true, self.keys.load().authorize_srt_read(read_key, peer))
    }
}

/// The renditions of engine `engine` that `channel`'s outputs carry.
fn tapped(channel: &Channel, engine: &Id) -> BTreeSet<String> {
    channel
        .outputs
        .values()
        .filter_map(|o| o.rendition.as_ref())
        .filter(|(e, _)| e == engine)
        .map(|(_, r)| r.clone())
        .collect()
}

/// What an output carries: the channel's source, or an engine rendition's tap.
fn output_bus(
    engines: &BTreeMap<Id, EngineRun>,
    source: &Arc<ChannelBus>,
    output: &ChannelOutput,
) -> Arc<ChannelBus> {
    output
        .rendition
        .as_ref()
        .and_then(|(e, r)| engines.get(e)?.taps.get(r).cloned())
        .unwrap_or_else(|| source.clone())
}

/// What every channel's tasks share.
pub struct Shared {
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    /// Media time of the first session (the wall clock at start).
    pub timeline_start: MediaTime,
    /// Init segment versions of this run start here.
    pub init_version_base: u64,
    pub geodb: Option<Arc<GeoDb>>,
    pub state: Arc<HttpState>,
    pub router: Arc<LiveRouter>,
    pub srt: SrtSetup,
    pub status: Arc<ArcSwap<StatusView>>,
}

/// The SRT listener, started when the first SRT ingest appears (at start or later):
/// nothing else needs its UDP port.
pub struct SrtSetup {
    pub addr: std::net::SocketAddr,
    pub admit: sluice_ingest::srt::Admit,
    pub limits: Arc<sluice_ingest::SrtLimits>,
    pub router: Arc<LiveRouter>,
}

/// One run of an engine; dropping it stops it (whatever path drops it).
struct EngineRun {
    config: Engine,
    /// What encodes its renditions; `None` for a passthrough engine.
    encoder: Option<Encoder>,
    output: Arc<EngineOutput>,
    stats: Arc<EngineStats>,
    /// Buses of the renditions outputs carry, by rendition name.
    taps: BTreeMap<String, Arc<ChannelBus>>,
    /// What it packages into, for extra audio tracks added and removed while it runs.
    packager: engine_runner::SharedPackager,
    /// Its extra audio tracks by source: the track's index in the packager, and the
    /// token that stops its feed.
    tracks: BTreeMap<Id, (usize, CancellationToken)>,
    span: tracing::Span,
    recorder: Option<RecorderRun>,
    /// Cancelled when the run is dropped (the recorder's token is a child).
    cancel: CancellationToken,
    _stop: DropGuard,
}

/// An engine's recorder; dropping it ends the recording in progress.
struct RecorderRun {
    stats: Arc<RecorderStats>,
    _stop: DropGuard,
}

/// A channel output as it runs: its counters, and the token that closes its readers
/// (or stops its push task).
struct OutputRun {
    config: ChannelOutput,
    /// What it carries: the channel's bus, or an engine rendition's.
    bus: Arc<ChannelBus>,
    stats: Arc<OutputStats>,
    cancel: CancellationToken,
    /// Stopped through the control API (not persisted: a restart starts it).
    stopped: bool,
}

impl OutputRun {
    /// Whether it serves readers or pushes: enabled, and not stopped.
    fn active(&self) -> bool {
        self.config.enabled && !self.stopped
    }
}

impl Drop for OutputRun {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A camera angle's engine (see [`engine_runner::run_angle`]); dropping it stops it.
struct AngleRun {
    slot: Arc<AngleSlot>,
    stats: Arc<EngineStats>,
    _stop: DropGuard,
}

/// A running channel; dropping it stops everything of it.
struct ChannelRun {
    config: Channel,
    bus: Arc<ChannelBus>,
    /// Buses of its sources: audio tracks ([`ChannelBus::new_source`]) and camera angles
    /// ([`ChannelBus::new_angle`]).
    sources: BTreeMap<Id, Arc<ChannelBus>>,
    /// Its camera angles' engines.
    angles: BTreeMap<Id, AngleRun>,
    /// Everything of the channel (a child of the process's token).
    cancel: CancellationToken,
    engines: BTreeMap<Id, EngineRun>,
    /// Pull ingests (a child of `cancel`).
    pulls: CancellationToken,
    /// Pulls of its sources, each with its own token (a child of `cancel`).
    source_pulls: BTreeMap<Id, CancellationToken>,
    patterns: Vec<TestPattern>,
    slate: Option<CancellationToken>,
    /// Input bitrate over the last sampling period (see [`sample_input`]).
    input_kbps: Arc<AtomicU32>,
    outputs: BTreeMap<Id, OutputRun>,
}

impl ChannelRun {
    /// Stops it: its publishers are disconnected and no new one attaches, its engines
    /// end their playlists, generated sources stop.
    fn stop(self) {
        for b in std::iter::once(&self.bus).chain(self.sources.values()) {
            b.shut();
            b.close();
        }
        drop(self);
    }
}

impl Drop for ChannelRun {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What a change leaves to do once the new stream keys and catalog are published (so
/// that nothing can attach to what is being stopped in between).
#[derive(Default)]
struct Pending {
    changes: Vec<String>,
    /// (channel, engine, the run being replaced) while the new run warms up.
    warming: Vec<(Id, Id, EngineRun)>,
    /// Feeds to end: (bus, ingest).
    to_end: Vec<(Arc<ChannelBus>, String)>,
    retired: Vec<ChannelRun>,
}

/// What status answers are made from, published with every change and read without
/// the control lock (so a public status request never waits for a change).
#[derive(Default)]
pub struct StatusView {
    channels: BTreeMap<Id, ChannelView>,
    /// (distribution, its channel, enabled).
    distributions: Vec<(Id, Id, bool)>,
}

struct ChannelView {
    engines: Vec<Id>,
    running: Option<RunningView>,
}

struct RunningView {
    bus: Arc<ChannelBus>,
    sources: Vec<SourceView>,
    input_kbps: Arc<AtomicU32>,
    engines: Vec<EngineView>,
    outputs: Vec<OutputView>,
}

/// One extra source of a channel, as status and metrics see it.
struct SourceView {
    id: Id,
    name: String,
    language: Option<String>,
    bus: Arc<ChannelBus>,
    /// A camera angle's engine: where its live output is, and its counters.
    angle: Option<(Arc<AngleSlot>, Arc<EngineStats>)>,
}

/// One channel output, as status and metrics see it.
pub struct OutputView {
    pub id: Id,
    pub protocol: &'static str,
    /// Enabled, and not stopped through the API.
    pub enabled: bool,
    /// Others connect to read it (else Sluice pushes).
    pub pull: bool,
    pub stats: Arc<OutputStats>,
}

impl OutputView {
    /// `stopped` (disabled or stopped); a pull output `idle` (nobody reads) or
    /// `running`; a push output `connecting`, `running` or `error` (retrying).
    pub fn state(&self) -> &'static str {
        if !self.enabled {
            return "stopped";
        }
        if self.pull {
            return if self.stats.readers.load(Ordering::Relaxed) == 0 {
                "idle"
            } else {
                "running"
            };
        }
        match self.stats.state() {
            OutputState::Idle | OutputState::Connecting => "connecting",
            OutputState::Running => "running",
            OutputState::Error(_) => "error",
            OutputState::Stopped => "stopped",
        }
    }

    /// Why a push output's last connection failed, while it waits to retry.
    pub fn error(&self) -> Option<String> {
        match self.stats.state() {
            OutputState::Error(why) if self.enabled && !self.pull => Some(why),
            _ => None,
        }
    }
}

/// One running engine, as status and metrics see it.
pub struct EngineView {
    pub id: Id,
    /// Its ladder's name (`passthrough` for none).
    pub ladder: String,
    /// `x264`, `nvenc`, `va` or `vaapi`; `None` for a passthrough engine.
    pub encoder: Option<&'static str>,
    pub output: Arc<EngineOutput>,
    pub stats: Arc<EngineStats>,
    pub recorder: Option<Arc<RecorderStats>>,
}

impl StatusView {
    /// Every running channel's bus and input kbit/s.
    pub fn buses(&self) -> impl Iterator<Item = (&Id, &Arc<ChannelBus>, u32)> {
        self.channels.iter().filter_map(|(id, c)| {
            let r = c.running.as_ref()?;
            Some((id, &r.bus, r.input_kbps.load(Ordering::Relaxed)))
        })
    }

    /// Every running channel's audio sources: (channel, source, its bus).
    pub fn sources(&self) -> impl Iterator<Item = (&Id, &Id, &Arc<ChannelBus>)> {
        self.channels.iter().flat_map(|(id, c)| {
            c.running
                .iter()
                .flat_map(move |r| r.sources.iter().map(move |s| (id, &s.id, &s.bus)))
        })
    }

    /// Every running channel's outputs, with their channel.
    pub fn outputs(&self) -> impl Iterator<Item = (&Id, &OutputView)> {
        self.channels.iter().flat_map(|(id, c)| {
            c.running
                .iter()
                .flat_map(move |r| r.outputs.iter().map(move |o| (id, o)))
        })
    }

    /// Every running engine, with its channel.
    pub fn engines(&self) -> impl Iterator<Item = (&Id, &EngineView)> {
        self.channels.iter().flat_map(|(id, c)| {
            c.running
                .iter()
                .flat_map(move |r| r.engines.iter().map(move |e| (id, e)))
        })
    }

    pub fn distribution_ids(&self) -> impl Iterator<Item = &Id> {
        self.distributions.iter().map(|(d, _, _)| d)
    }

    /// A channel's live state (`GET /api/v1/channels/<id>/status`); `viewers` by
    /// distribution.
    pub fn channel(&self, id: &Id, viewers: &HashMap<Id, Audience>) -> Option<serde_json::Value> {
        use serde_json::json;
        let view = self.channels.get(id)?;
        let nobody = Audience::default();
        let distributions: serde_json::Map<String, serde_json::Value> = self
            .distributions
            .iter()
            .filter(|(_, c, _)| c == id)
            .map(|(d, _, enabled)| {
                let a = viewers.get(d).unwrap_or(&nobody);
                (
                    d.to_string(),
                    json!({
                        "enabled": enabled,
                        "viewers": a.viewers,
                        "countries": a.countries,
                        "devices": a.devices,
                        "sent_to": a.sent_to,
                    }),
                )
            })
            .collect();
        let Some(run) = &view.running else {
            let engines: serde_json::Map<String, serde_json::Value> = view
                .engines
                .iter()
                .map(|e| (e.to_string(), json!({"state": "stopped"})))
                .collect();
            return Some(json!({
                "id": id.as_str(),
                "state": "stopped",
                "active_ingest": null,
                "ingest_live": false,
                "tracking_id": null,
                "input_kbps": 0,
                "engines": engines,
                "distributions": distributions,
            }));
        };
        let (active, live) = match run.bus.owner() {
            Some((ingest, live)) => (Some(ingest), live),
            None => (None, false),
        };
        let engines: serde_json::Map<String, serde_json::Value> = run
            .engines
            .iter()
            .map(|e| {
                let output = &e.output;
                let state = if output.healthy() {
                    "live"
                } else if output.is_live() {
                    "waiting"
                } else {
                    "ended"
                };
                let newest: serde_json::Map<String, serde_json::Value> = output
                    .rendition_names()
                    .into_iter()
                    .map(|n| {
                        let msn = output.latest_msn(&n);
                        (n, json!(msn))
                    })
                    .collect();
                let lag = e.stats.input_lag().as_millis() as u64;
                let recording = e.recorder.as_ref().map(|r| {
                    let (state, id, error) = match r.state() {
                        RecorderState::Waiting => ("waiting", None, None),
                        RecorderState::Recording(id) => ("recording", Some(id), None),
                        RecorderState::Error(why) => ("error", None, Some(why)),
                        RecorderState::Stopped => ("stopped", None, None),
                    };
                    json!({
                        "state": state,
                        "id": id,
                        "error": error,
                        "segments": r.segments.load(Ordering::Relaxed),
                        "bytes": r.bytes.load(Ordering::Relaxed),
                        "errors": r.errors.load(Ordering::Relaxed),
                    })
                });
                (
                    e.id.to_string(),
                    json!({
                        "state": state,
                        "ladder": e.ladder,
                        "encoder": e.encoder,
                        "top_rung": e.stats.top_rung().map(|t| t.as_str()),
                        "newest_segment": newest,
                        "speed": e.stats.speed(),
                        "input_lag_ms": lag,
                        "restarts": e.stats.restarts.load(Ordering::Relaxed),
                        "dropped_frames": e.stats.dropped_frames.load(Ordering::Relaxed),
                        "recording": recording,
                    }),
                )
            })
            .collect();
        let outputs: serde_json::Map<String, serde_json::Value> = run
            .outputs
            .iter()
            .map(|o| {
                (
                    o.id.to_string(),
                    json!({
                        "protocol": o.protocol,
                        "state": o.state(),
                        "error": o.error(),
                        "readers": o.stats.readers.load(Ordering::Relaxed),
                        "connects": o.stats.connects.load(Ordering::Relaxed),
                        "refused": o.stats.refused.load(Ordering::Relaxed),
                        "bytes": o.stats.bytes.load(Ordering::Relaxed),
                    }),
                )
            })
            .collect();
        let sources: serde_json::Map<String, serde_json::Value> = run
            .sources
            .iter()
            .map(|s| {
                let b = &s.bus;
                let mut v = json!({
                    "kind": if s.angle.is_some() { "video" } else { "audio" },
                    "name": s.name,
                    "language": s.language,
                    "live": b.is_publishing(),
                    "sessions": b.stats.sessions.load(Ordering::Relaxed),
                    "frames": b.stats.frames_in.load(Ordering::Relaxed),
                    "bytes": b.stats.bytes_in.load(Ordering::Relaxed),
                });
                match &s.angle {
                    None => v["rendition"] = json!(source_rendition(s.id.as_str())),
                    Some((slot, stats)) => {
                        v["angle"] = json!({
                            "playing": slot.load().is_some(),
                            "playlist": format!("angle/{}/cmaf/index.m3u8", s.id),
                            "speed": stats.speed(),
                            "restarts": stats.restarts.load(Ordering::Relaxed),
                            "dropped_frames": stats.dropped_frames.load(Ordering::Relaxed),
                        })
                    }
                }
                (s.id.to_string(), v)
            })
            .collect();
        Some(json!({
            "id": id.as_str(),
            "state": "running",
            "active_ingest": active,
            "ingest_live": live,
            "tracking_id": run.bus.owner_tracking_id(),
            "input_kbps": run.input_kbps.load(Ordering::Relaxed),
            "engines": engines,
            "outputs": outputs,
            "sources": sources,
            "distributions": distributions,
        }))
    }

    /// Every channel's state in one document (`GET /api/v1/status`).
    pub fn all(&self, viewers: &HashMap<Id, Audience>) -> serde_json::Value {
        let channels: serde_json::Map<String, serde_json::Value> = self
            .channels
            .keys()
            .filter_map(|id| Some((id.to_string(), self.channel(id, viewers)?)))
            .collect();
        serde_json::json!({ "channels": channels })
    }
}

/// What is running, and the configuration it runs.
pub struct Runtime {
    shared: Shared,
    running: Config,
    channels: BTreeMap<Id, ChannelRun>,
    /// Channels stopped through the control API (not persisted: a restart starts them).
    stopped: BTreeSet<Id>,
    /// Engines (and camera angle sessions) started so far; each start gets its own
    /// range of init versions.
    engine_starts: Arc<AtomicU64>,
    /// While a changed engine warms up, the catalog still serves its predecessor.
    serving_instead: HashMap<(Id, Id), Arc<EngineOutput>>,
    srt_listening: bool,
}

impl Runtime {
    pub async fn start(cfg: Config, shared: Shared) -> anyhow::Result<Runtime> {
        let mut rt = Runtime {
            srt_listening: false,
            shared,
            running: cfg.clone(),
            channels: BTreeMap::new(),
            stopped: BTreeSet::new(),
            engine_starts: Arc::new(AtomicU64::new(0)),
            serving_instead: HashMap::new(),
        };
        for (id, channel) in &cfg.channels {
            let run = rt.start_channel(id, channel);
            rt.channels.insert(id.clone(), run);
        }
        rt.ensure_srt(&cfg).await?;
        build_catalog(
            &cfg,
            (&HashMap::new(), &HashMap::new()),
            &rt.shared.geodb,
            &BTreeSet::new(),
            None,
        )?;
        rt.publish();
        Ok(rt)
    }

    /// Starts the SRT listener if `cfg` has an SRT ingest and it is not listening yet.
    /// The first bind is checked here, so a taken port is an error with its reason.
    async fn ensure_srt(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let wanted = cfg.channels.values().any(|c| {
            c.ingests
                .values()
                .chain(c.sources.values().map(|s| &s.ingest))
                .any(|i| i.protocol == IngestProtocol::Srt)
                || c.outputs
                    .values()
                    .any(|o| o.protocol == ChannelOutputProtocol::SrtListener)
        });
        if !wanted || self.srt_listening {
            return Ok(());
        }
        let srt = &self.shared.srt;
        let addr = srt.addr;
        let first = Mutex::new(Some(crate::srt_listen::bind(addr).await?));
        tracing::info!(srt = %addr, "SRT listening");
        self.srt_listening = true;
        let (router, admit, limits) = (srt.router.clone(), srt.admit.clone(), srt.limits.clone());
        let cancel = self.shared.cancel.clone();
        self.shared
            .tracker
            .spawn(supervise("SRT listener".to_string(), cancel.clone(), move || {
                let router: Arc<dyn PublishRouter> = router.clone();
                let (admit, limits, cancel) = (admit.clone(), limits.clone(), cancel.clone());
                let bound = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    let socket = match bound {
                        Some(s) => s,
                        None => match crate::srt_listen::bind(addr).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::error!(error = %format!("{e:#}"), "SRT listener cannot start again");
                                return;
                            }
                        },
                    };
                    crate::srt_listen::serve(socket, router, admit, limits, cancel).await
                }
            }));
        Ok(())
    }

    /// Stops every channel (at shutdown): generated sources stop feeding.
    pub fn stop_all(&mut self) {
        for (_, run) in std::mem::take(&mut self.channels) {
            run.stop();
        }
    }

    /// The status view and the HTTP state (for viewer counts): read without the lock.
    pub fn observers(&self) -> (Arc<ArcSwap<StatusView>>, Arc<HttpState>, Arc<LiveRouter>) {
        (
            self.shared.status.clone(),
            self.shared.state.clone(),
            self.shared.router.clone(),
        )
    }

    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Applies `next` (already validated), changing only what differs; a list of what
    /// changed, for the log and the API's answer. `Err`: refused, nothing changed (every
    /// check that can fail comes before the first change).
    pub async fn apply(&mut self, next: Config) -> anyhow::Result<Vec<String>> {
        if self.running.server != next.server {
            anyhow::bail!(
                "[server] cannot change while the server runs (listeners, proxies, databases); restart to apply it"
            );
        }
        build_catalog(
            &next,
            (&HashMap::new(), &HashMap::new()),
            &self.shared.geodb,
            &BTreeSet::new(),
            None,
        )?;
        self.ensure_srt(&next).await?;
        check_encoders(&next)?;
        let mut p = Pending::default();
        let old_ids: Vec<Id> = self.running.channels.keys().cloned().collect();
        for id in old_ids {
            if !next.channels.contains_key(&id) {
                if let Some(run) = self.channels.remove(&id) {
                    p.retired.push(run);
                }
                self.stopped.remove(&id);
                p.changes.push(format!("channel {id} removed"));
            }
        }
        for (id, channel) in &next.channels {
            match self.running.channels.get(id) {
                None => {
                    let run = self.start_channel(id, channel);
                    self.channels.insert(id.clone(), run);
                    p.changes.push(format!("channel {id} added"));
                }
                Some(old) if old != channel => {
                    if self.stopped.contains(id) {
                        p.changes.push(format!("channel {id} changed (stopped)"));
                    } else {
                        self.update_channel(id, channel, &mut p);
                    }
                }
                Some(_) => {}
            }
        }
        for (id, d) in &next.distributions {
            match self.running.distributions.get(id) {
                None => p.changes.push(format!("distribution {id} added")),
                Some(old) if old != d => p.changes.push(format!("distribution {id} changed")),
                Some(_) => {}
            }
        }
        for id in self.running.distributions.keys() {
            if !next.distributions.contains_key(id) {
                p.changes.push(format!("distribution {id} removed"));
            }
        }
        if self.running.api != next.api {
            p.changes.push("api changed".into());
        }
        if self.running.ladders != next.ladders {
            p.changes.push("ladders changed".into());
        }
        self.running = next;
        for (channel, engine, old) in &p.warming {
            self.serving_instead
                .insert((channel.clone(), engine.clone()), old.output.clone());
        }
        // The new keys and catalog first, then what they no longer name is stopped.
        self.publish();
        for (bus, ingest) in &p.to_end {
            bus.end_feeds(Some(ingest));
        }
        for run in p.retired.drain(..) {
            run.stop();
        }
        if !p.warming.is_empty() {
            self.warm_up(&p.warming).await;
            self.serving_instead.clear();
            self.publish();
            for (channel, engine, _) in p.warming.drain(..) {
                tracing::info!(%channel, %engine, "previous engine run stopped");
            }
        }
        Ok(p.changes)
    }

    /// Waits until each new run of a changed engine has a segment of every rendition
    /// (or its predecessor had nothing to show, or a bound passes).
    async fn warm_up(&self, warming: &[(Id, Id, EngineRun)]) {
        for (channel, engine, old) in warming {
            let Some(new) = self
                .channels
                .get(channel)
                .and_then(|c| c.engines.get(engine))
            else {
                continue;
            };
            if !old.output.healthy() {
                continue;
            }
            let kind = match new.config.outputs.first() {
                Some(Output::Ts) => OutputKind::Ts,
                _ => OutputKind::Cmaf,
            };
            let bound = Duration::from_secs_f64(new.config.ladder.segment_seconds * 3.0)
                + Duration::from_secs(10);
            let deadline = tokio::time::Instant::now() + bound;
            while new.output.multivariant(kind, None).is_none()
                && tokio::time::Instant::now() < deadline
                && !self.shared.cancel.is_cancelled()
            {
                tokio::select! {
                    _ = self.shared.cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            if new.output.multivariant(kind, None).is_none() {
                tracing::warn!(%channel, %engine, bound_s = bound.as_secs(), "new engine run has no segments yet; switching to it anyway");
            }
        }
    }

    /// Stops a channel (control API): engines and ingests stop, publishers are
    /// disconnected and refused, its distributions answer 503. `false`: no such channel.
    pub fn stop_channel(&mut self, id: &Id) -> bool {
        if !self.running.channels.contains_key(id) {
            return false;
        }
        if self.stopped.insert(id.clone()) {
            let run = self.channels.remove(id);
            self.publish();
            if let Some(run) = run {
                run.stop();
            }
            tracing::info!(channel = %id, "channel stopped");
        }
        true
    }

    /// Starts a stopped channel again. `false`: no such channel.
    pub fn start_channel_again(&mut self, id: &Id) -> bool {
        let Some(channel) = self.running.channels.get(id).cloned() else {
            return false;
        };
        if self.stopped.remove(id) {
            let run = self.start_channel(id, &channel);
            self.channels.insert(id.clone(), run);
            self.publish();
            tracing::info!(channel = %id, "channel started");
        }
        true
    }

    /// Publishes the stream keys, the HTTP catalog and the status view of what runs
    /// now. (The catalog of a configuration is checked before it is applied: an error
    /// here is logged, and the previous catalog stays.)
    fn publish(&self) {
        let mut outputs = HashMap::new();
        for (cid, run) in &self.channels {
            for (eid, e) in &run.engines {
                let key = (cid.clone(), eid.clone());
                let out = self.serving_instead.get(&key).unwrap_or(&e.output);
                outputs.insert(key, out.clone());
            }
        }
        let angles = self
            .channels
            .iter()
            .map(|(cid, run)| {
                let slots = run.angles.iter().map(|(a, r)| (a.clone(), r.slot.clone()));
                (cid.clone(), slots.collect())
            })
            .collect();
        let catalog = build_catalog(
            &self.running,
            (&outputs, &angles),
            &self.shared.geodb,
            &self.stopped,
            Some(&self.shared.state.requests),
        );
        let mut router = KeyRouter::default();
        for (cid, run) in &self.channels {
            let Some(channel) = self.running.channels.get(cid) else {
                continue;
            };
            let ingests = channel
                .ingests
                .iter()
                .map(|(id, ingest)| (id, ingest, &run.bus));
            // A channel's audio sources publish with keys of their own, into their buses.
            let sources = run
                .sources
                .iter()
                .filter_map(|(sid, bus)| channel.sources.get(sid).map(|s| (sid, &s.ingest, bus)));
            for (ingest_id, ingest, bus) in ingests.chain(sources) {
                if !matches!(ingest.protocol, IngestProtocol::Rtmp | IngestProtocol::Srt) {
                    continue;
                }
                if let Some(key) = &ingest.stream_key {
                    router.keys.insert(
                        key.clone(),
                        KeyEntry {
                            ingest: ingest_id.clone(),
                            protocol: ingest.protocol,
                            enabled: ingest.enabled,
                            allow_cidrs: ingest.allow_cidrs.clone(),
                            passphrase: ingest.passphrase.clone(),
                            priority: ingest.priority,
                            max_kbps: ingest.max_kbps,
                            bus: bus.clone(),
                        },
                    );
                }
            }
        }
        for (cid, run) in &self.channels {
            for (oid, o) in &run.outputs {
                let Some(key) = &o.config.read_key else {
                    continue;
                };
                router.reads.insert(
                    key.clone(),
                    ReadEntry {
                        channel: cid.clone(),
                        output: oid.clone(),
                        protocol: o.config.protocol,
                        enabled: o.active(),
                        allow_cidrs: o.config.allow_cidrs.clone(),
                        passphrase: o.config.passphrase.clone(),
                        bus: o.bus.clone(),
                        stats: o.stats.clone(),
                        cancel: o.cancel.clone(),
                    },
                );
            }
        }
        self.shared.router.keys.store(Arc::new(router));
        match catalog {
            Ok(c) => self.shared.state.catalog.store(Arc::new(c)),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot build the HTTP catalog; the previous one stays")
            }
        }
        self.shared.status.store(Arc::new(self.status_view()));
    }

    fn status_view(&self) -> StatusView {
        let channels = self
            .running
            .channels
            .iter()
            .map(|(id, c)| {
                let running = self.channels.get(id).map(|run| RunningView {
                    bus: run.bus.clone(),
                    sources: run
                        .sources
                        .iter()
                        .filter_map(|(sid, b)| {
                            let s = c.sources.get(sid)?;
                            Some(SourceView {
                                id: sid.clone(),
                                name: s.name.clone(),
                                language: s.language.clone(),
                                bus: b.clone(),
                                angle: run
                                    .angles
                                    .get(sid)
                                    .map(|a| (a.slot.clone(), a.stats.clone())),
                            })
                        })
                        .collect(),
                    input_kbps: run.input_kbps.clone(),
                    engines: run
                        .engines
                        .iter()
                        .map(|(e, r)| EngineView {
                            id: e.clone(),
                            ladder: match &r.config.ladder_ref {
                                LadderRef::Passthrough => "passthrough".to_string(),
                                LadderRef::Named(l) => l.to_string(),
                            },
                            encoder: r.encoder.map(Encoder::name),
                            output: r.output.clone(),
                            stats: r.stats.clone(),
                            recorder: r.recorder.as_ref().map(|x| x.stats.clone()),
                        })
                        .collect(),
                    outputs: run
                        .outputs
                        .iter()
                        .map(|(o, r)| OutputView {
                            id: o.clone(),
                            protocol: r.config.protocol.as_str(),
                            enabled: r.active(),
                            pull: r.config.protocol.is_pull(),
                            stats: r.stats.clone(),
                        })
                        .collect(),
                });
                let engines = c.engines.keys().cloned().collect();
                (id.clone(), ChannelView { engines, running })
            })
            .collect();
        let distributions = self
            .running
            .distributions
            .iter()
            .map(|(id, d)| (id.clone(), d.channel.clone(), d.enabled))
            .collect();
        StatusView {
            channels,
            distributions,
        }
    }

    /// Starts a channel. Nothing here fails the start: a part that cannot start (a test
    /// pattern's pipeline, say) is logged and left out, and the rest runs.
    fn start_channel(&mut self, id: &Id, channel: &Channel) -> ChannelRun {
        let grid = session_grid(channel.engines.values().map(|e| e.ladder.segment_seconds));
        let bus = ChannelBus::new(
            id.clone(),
            grid,
            DEFAULT_BUS_CAPACITY,
            self.shared.timeline_start,
        );
        let cancel = self.shared.cancel.child_token();
        let sources: BTreeMap<Id, Arc<ChannelBus>> = channel
            .sources
            .iter()
            .map(|(sid, s)| (sid.clone(), source_bus(&bus, s)))
            .collect();
        let mut engines = BTreeMap::new();
        for engine_id in channel.engines.keys() {
            let run = self.start_engine(id, engine_id, channel, (&bus, &sources), &cancel, None);
            engines.insert(engine_id.clone(), run);
        }
        let angles = channel
            .sources
            .iter()
            .filter_map(|(sid, s)| {
                let ladder = s.ladder.as_ref().filter(|_| s.kind == SourceKind::Video)?;
                let run = self.start_angle(id, sid, ladder, channel, (&bus, &sources), &cancel);
                Some((sid.clone(), run))
            })
            .collect();
        let input_kbps = Arc::new(AtomicU32::new(0));
        self.shared.tracker.spawn(sample_input(
            bus.clone(),
            input_kbps.clone(),
            cancel.clone(),
        ));
        let pulls = cancel.child_token();
        let outputs = channel
            .outputs
            .iter()
            .map(|(oid, o)| {
                let source = output_bus(&engines, &bus, o);
                (
                    oid.clone(),
                    self.start_output(id, oid, o, (&source, &cancel), false, None),
                )
            })
            .collect();
        let mut run = ChannelRun {
            config: channel.clone(),
            bus,
            sources,
            angles,
            cancel,
            engines,
            pulls,
            source_pulls: BTreeMap::new(),
            patterns: Vec::new(),
            slate: None,
            input_kbps,
            outputs,
        };
        run.slate = self.start_slate(id, channel, &run.bus, &run.cancel);
        run.patterns = self.start_ingests(id, channel, &run.bus, &run.pulls);
        self.start_missing_source_pulls(id, channel, &mut run);
        run
    }

    fn update_channel(&mut self, id: &Id, next: &Channel, p: &mut Pending) {
        let Some(mut run) = self.channels.remove(id) else {
            return;
        };
        let old = run.config.clone();
        let grid = |c: &Channel| session_grid(c.engines.values().map(|e| e.ladder.segment_seconds));
        // Sessions start on another grid.
        let why = (grid(&old) != grid(next)).then_some("its segment grid changed");
        if let Some(why) = why {
            for ingest_id in old.ingests.keys() {
                p.to_end.push((run.bus.clone(), ingest_id.to_string()));
            }
            for (sid, b) in &run.sources {
                p.to_end.push((b.clone(), sid.to_string()));
            }
            p.retired.push(run);
            let run = self.start_channel(id, next);
            self.channels.insert(id.clone(), run);
            p.changes.push(format!("channel {id} restarted ({why})"));
            return;
        }
        for engine_id in old.engines.keys() {
            if !next.engines.contains_key(engine_id) && run.engines.remove(engine_id).is_some() {
                p.changes.push(format!("engine {id}/{engine_id} removed"));
            }
        }
        let renewed = self.update_sources(id, (&old, next), &mut run, p);
        // Priority only orders engines in the catalog: a change of it alone restarts
        // nothing.
        // Nor does recording: only the recorder starts or stops.
        let settings = |e: &Engine| Engine {
            priority: 0,
            record: None,
            ..e.clone()
        };
        // An engine feeds the renditions outputs carry: a change of those restarts it.
        let mut restarted = BTreeSet::new();
        for (engine_id, engine) in &next.engines {
            let same_taps = tapped(&old, engine_id) == tapped(next, engine_id);
            match old.engines.get(engine_id) {
                Some(o) if o == engine && same_taps => {}
                Some(o) if settings(o) == settings(engine) && same_taps => {
                    if o.record != engine.record {
                        let started = run.engines.get(engine_id).map(|r| {
                            let (output, cancel) = (r.output.clone(), r.cancel.clone());
                            self.start_recorder(id, engine_id, engine, &output, &cancel)
                        });
                        if let (Some(r), Some(recorder)) = (run.engines.get_mut(engine_id), started)
                        {
                            // The previous recorder (dropped here) closes its recording.
                            r.recorder = recorder;
                        }
                        p.changes
                            .push(format!("recording of {id}/{engine_id} changed"));
                    }
                    if o.priority != engine.priority {
                        p.changes
                            .push(format!("engine {id}/{engine_id} priority changed"));
                    }
                    if let Some(r) = run.engines.get_mut(engine_id) {
                        r.config = engine.clone();
                    }
                }
                Some(_) => {
                    let previous = run.engines.get(engine_id).map(|r| r.output.clone());
                    let new = self.start_engine(
                        id,
                        engine_id,
                        next,
                        (&run.bus, &run.sources),
                        &run.cancel,
                        previous.as_deref(),
                    );
                    if let Some(previous) = run.engines.insert(engine_id.clone(), new) {
                        p.warming.push((id.clone(), engine_id.clone(), previous));
                    }
                    restarted.insert(engine_id.clone());
                    p.changes.push(format!("engine {id}/{engine_id} restarted"));
                }
                None => {
                    let new = self.start_engine(
                        id,
                        engine_id,
                        next,
                        (&run.bus, &run.sources),
                        &run.cancel,
                        None,
                    );
                    run.engines.insert(engine_id.clone(), new);
                    restarted.insert(engine_id.clone());
                    p.changes.push(format!("engine {id}/{engine_id} added"));
                }
            }
        }
        // Push ingests removed or changed lose their publishers (the new key table is
        // published by the caller).
        for (ingest_id, ingest) in &old.ingests {
            let pushed = matches!(ingest.protocol, IngestProtocol::Rtmp | IngestProtocol::Srt);
            if pushed && next.ingests.get(ingest_id) != Some(ingest) {
                p.to_end.push((run.bus.clone(), ingest_id.to_string()));
                p.changes
                    .push(format!("ingest {id}/{ingest_id} changed or removed"));
            }
        }
        // Sources whose bus stayed but whose ingest changed lose their publisher (the new
        // key table is published by the caller); a pull restarts on a new bus or ingest.
        for (sid, source_bus) in &run.sources {
            let ingest = |c: &Channel| c.sources.get(sid).map(|s| s.ingest.clone());
            let changed = ingest(&old) != ingest(next);
            if changed && !renewed.contains(sid) {
                p.to_end.push((source_bus.clone(), sid.to_string()));
                p.changes.push(format!("source {id}/{sid} changed"));
            }
            if (changed || renewed.contains(sid))
                && let Some(t) = run.source_pulls.remove(sid)
            {
                t.cancel();
            }
        }
        run.source_pulls.retain(|sid, t| {
            let keep = next.sources.contains_key(sid);
            if !keep {
                t.cancel();
            }
            keep
        });
        for sid in self.start_missing_source_pulls(id, next, &mut run) {
            p.changes.push(format!("source {id}/{sid} pulls again"));
        }
        let generated = |c: &Channel| -> Vec<_> {
            c.ingests
                .iter()
                .filter(|(_, i)| !matches!(i.protocol, IngestProtocol::Rtmp | IngestProtocol::Srt))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if generated(&old) != generated(next) {
            run.pulls.cancel();
            run.patterns.clear();
            run.pulls = run.cancel.child_token();
            run.patterns = self.start_ingests(id, next, &run.bus, &run.pulls);
            p.changes
                .push(format!("pull and generated ingests of {id} restarted"));
        }
        if old.slate != next.slate || slate_size(&old) != slate_size(next) {
            if let Some(s) = run.slate.take() {
                s.cancel();
            }
            run.slate = self.start_slate(id, next, &run.bus, &run.cancel);
            p.changes.push(format!("slate of {id} restarted"));
        }
        // Outputs changed or removed close their readers; the new key table (published
        // by the caller) takes new ones.
        // So do outputs of a rendition of an engine that restarted.
        run.outputs.retain(|oid, o| {
            let keep = next.outputs.get(oid) == Some(&o.config)
                && o.config
                    .rendition
                    .as_ref()
                    .is_none_or(|(e, _)| !restarted.contains(e));
            if !keep {
                p.changes
                    .push(format!("output {id}/{oid} changed or removed"));
            }
            keep
        });
        for (oid, o) in &next.outputs {
            if !run.outputs.contains_key(oid) {
                let source = output_bus(&run.engines, &run.bus, o);
                let started = self.start_output(id, oid, o, (&source, &run.cancel), false, None);
                run.outputs.insert(oid.clone(), started);
                if !old.outputs.contains_key(oid) {
                    p.changes.push(format!("output {id}/{oid} added"));
                }
            }
        }
        run.config = next.clone();
        self.channels.insert(id.clone(), run);
    }

    /// Applies a change of a channel's sources while it runs; the main input and the
    /// engines go on. A source added gets a bus, and its track in every engine (or its
    /// angle engine); one removed, or whose kind or offset changed (its bus holds both),
    /// loses its bus, its track and its publisher (which reconnects into the new bus).
    /// A track's new name, language or default is taken in place. Camera angles restart
    /// when their ladder changes, or the channel's audio tracks do (each packages them).
    /// Returns the sources with a new bus (added, or replaced): their pulls start anew.
    fn update_sources(
        &self,
        id: &Id,
        (old, next): (&Channel, &Channel),
        run: &mut ChannelRun,
        p: &mut Pending,
    ) -> BTreeSet<Id> {
        let same_bus = |sid: &Id| match (old.sources.get(sid), next.sources.get(sid)) {
            (Some(o), Some(n)) => o.kind == n.kind && o.offset_ms == n.offset_ms,
            _ => false,
        };
        let stale: Vec<Id> = run
            .sources
            .keys()
            .filter(|sid| !same_bus(sid))
            .cloned()
            .collect();
        for sid in &stale {
            if let Some(b) = run.sources.remove(sid) {
                // Its publisher ends once the new stream keys are published.
                p.to_end.push((b, sid.to_string()));
            }
            run.angles.remove(sid);
            for e in run.engines.values_mut() {
                if let Some((index, feed)) = e.tracks.remove(sid) {
                    feed.cancel();
                    engine_runner::lock(&e.packager).remove_track(index);
                }
            }
            let what = if next.sources.contains_key(sid) {
                "replaced (its kind or offset changed)"
            } else {
                "removed"
            };
            p.changes.push(format!("source {id}/{sid} {what}"));
        }
        let mut renewed: BTreeSet<Id> = stale.iter().cloned().collect();
        for (sid, s) in &next.sources {
            if run.sources.contains_key(sid) {
                continue;
            }
            let b = source_bus(&run.bus, s);
            run.sources.insert(sid.clone(), b.clone());
            renewed.insert(sid.clone());
            if let Some(spec) = track_spec(sid, s) {
                for e in run.engines.values_mut() {
                    let index = engine_runner::lock(&e.packager).add_track(spec.clone());
                    let feed = self.feed_track(index, &b, &e.packager, &e.cancel, &e.span);
                    e.tracks.insert(sid.clone(), (index, feed));
                }
            }
            if !old.sources.contains_key(sid) {
                p.changes.push(format!("source {id}/{sid} added"));
            }
        }
        for (sid, s) in &next.sources {
            let Some(spec) = track_spec(sid, s) else {
                continue;
            };
            let before = old.sources.get(sid).and_then(|o| track_spec(sid, o));
            if stale.contains(sid) || before.is_none_or(|b| b == spec) {
                continue;
            }
            for e in run.engines.values() {
                if let Some((index, _)) = e.tracks.get(sid) {
                    engine_runner::lock(&e.packager).set_track_spec(*index, spec.clone());
                }
            }
            p.changes.push(format!("source {id}/{sid} renamed"));
        }
        let audio = |c: &Channel| -> Vec<TrackSpec> {
            c.sources
                .iter()
                .filter_map(|(sid, s)| track_spec(sid, s))
                .collect()
        };
        // An audio source with a new bus (its offset changed) is a track fed anew too.
        let new_audio_bus = stale.iter().any(|sid| {
            old.sources
                .get(sid)
                .is_some_and(|s| s.kind == SourceKind::Audio)
        });
        let tracks_changed = audio(old) != audio(next) || new_audio_bus;
        for (sid, s) in &next.sources {
            let Some(ladder) = s.ladder.as_ref().filter(|_| s.kind == SourceKind::Video) else {
                continue;
            };
            let same_ladder = old.sources.get(sid).and_then(|o| o.ladder.as_ref()) == Some(ladder);
            if run.angles.contains_key(sid) && same_ladder && !tracks_changed {
                continue;
            }
            let angle =
                self.start_angle(id, sid, ladder, next, (&run.bus, &run.sources), &run.cancel);
            if run.angles.insert(sid.clone(), angle).is_some() {
                p.changes.push(format!("camera angle {id}/{sid} restarted"));
            }
        }
        renewed
    }

    /// Feeds extra track `index` of `packager` from `bus` until the returned token (a
    /// child of `parent`) is cancelled.
    fn feed_track(
        &self,
        index: usize,
        bus: &Arc<ChannelBus>,
        packager: &engine_runner::SharedPackager,
        parent: &CancellationToken,
        span: &tracing::Span,
    ) -> CancellationToken {
        let cancel = parent.child_token();
        self.shared.tracker.spawn(
            engine_runner::feed_track(index, bus.subscribe(), packager.clone(), cancel.clone())
                .instrument(span.clone()),
        );
        cancel
    }

    /// A fresh range of init versions for each call (an engine run, a camera angle's
    /// session): a viewer never fetches another run's init segment by its name.
    fn init_bases(&self) -> Arc<dyn Fn() -> u64 + Send + Sync> {
        let (base, starts) = (self.shared.init_version_base, self.engine_starts.clone());
        Arc::new(move || {
            let n = starts.fetch_add(1, Ordering::Relaxed);
            base.saturating_add(n.saturating_mul(1 << 10))
        })
    }

    /// Starts camera angle `source_id` of a channel: its ladder, fed by the angle's bus,
    /// packaged on the channel's grid with the channel's audio and audio tracks (CMAF).
    fn start_angle(
        &self,
        channel_id: &Id,
        source_id: &Id,
        ladder: &Ladder,
        channel: &Channel,
        (bus, sources): (&Arc<ChannelBus>, &BTreeMap<Id, Arc<ChannelBus>>),
        parent: &CancellationToken,
    ) -> AngleRun {
        let settings = packager_settings(ladder, (true, false), true);
        let encoder = encoder_for(ladder, source_id);
        let (mode, renditions) = transcode(ladder, encoder, settings.segment_duration);
        let tracks = sources
            .iter()
            .filter_map(|(sid, b)| Some((track_spec(sid, channel.sources.get(sid)?)?, b.clone())))
            .collect();
        let slot = Arc::new(AngleSlot::empty());
        let stats = Arc::new(EngineStats::default());
        let angle = Arc::new(engine_runner::AngleEngine {
            name: format!("{channel_id}/angle/{source_id}"),
            mode,
            settings,
            renditions,
            tracks,
            main: bus.clone(),
            slot: slot.clone(),
            stats: stats.clone(),
            init_base: self.init_bases(),
        });
        let cancel = parent.child_token();
        let span = tracing::info_span!("engine", channel = %channel_id, engine = %format!("angle/{source_id}"));
        let angle_bus = sources.get(source_id).cloned();
        self.shared.tracker.spawn(supervise(
            format!("camera angle {channel_id}/{source_id}"),
            cancel.clone(),
            {
                let cancel = cancel.clone();
                move || {
                    let rx = angle_bus.as_ref().map(|b| b.subscribe());
                    let (angle, cancel) = (angle.clone(), cancel.clone());
                    async move {
                        if let Some(rx) = rx {
                            engine_runner::run_angle(angle, rx, cancel).await;
                        }
                    }
                    .instrument(span.clone())
                }
            },
        ));
        AngleRun {
            slot,
            stats,
            _stop: cancel.drop_guard(),
        }
    }

    fn start_engine(
        &mut self,
        channel_id: &Id,
        engine_id: &Id,
        channel: &Channel,
        (bus, sources): (&Arc<ChannelBus>, &BTreeMap<Id, Arc<ChannelBus>>),
        parent: &CancellationToken,
        continues: Option<&EngineOutput>,
    ) -> EngineRun {
        let engine = &channel.engines[engine_id];
        let ladder = &engine.ladder;
        let outputs = (
            engine.outputs.contains(&Output::Cmaf),
            engine.outputs.contains(&Output::Ts),
        );
        let transcodes = matches!(engine.ladder_ref, LadderRef::Named(_));
        let settings = PackagerSettings {
            // Each engine run its own range of init versions: a viewer that fails over
            // to another engine, or stays on an engine whose ladder changed, fetches
            // that run's init segment, never a cached one of the same name with other
            // parameter sets.
            init_version_base: self.init_bases()(),
            ..packager_settings(ladder, outputs, transcodes)
        };
        let encoder = transcodes.then(|| encoder_for(ladder, engine_id));
        let (mode, renditions, audio) = match &engine.ladder_ref {
            LadderRef::Passthrough => (
                EngineMode::Passthrough,
                vec![RenditionSpec {
                    name: Id::new("source").expect("valid id"),
                    width: 0,
                    height: 0,
                    video_kbps: 0,
                }],
                Some(AudioSpec { kbps: 0 }),
            ),
            LadderRef::Named(_) => {
                let encoder = encoder.unwrap_or(Encoder::X264);
                let (mode, renditions) = transcode(ladder, encoder, settings.segment_duration);
                let audio = AudioSpec {
                    kbps: ladder.audio_kbps,
                };
                (mode, renditions, Some(audio))
            }
        };
        let (mut packager, output) = Packager::new(settings, renditions, audio);
        // Every audio source is an extra audio track of every engine (CMAF, and TS as an
        // audio-only rendition beside the muxed main audio).
        let mut tracks = Vec::new();
        for (sid, source_bus) in sources {
            let Some(spec) = channel.sources.get(sid).and_then(|s| track_spec(sid, s)) else {
                continue;
            };
            let index = packager.add_track(spec);
            tracks.push((sid.clone(), index, source_bus.clone()));
        }
        if let Some(previous) = continues {
            packager.continue_from(previous);
        }
        let packager = Arc::new(Mutex::new(packager));
        // Renditions that outputs carry get a bus of their own, fed as they are encoded.
        let mut taps = Vec::new();
        let mut tap_buses = BTreeMap::new();
        for o in channel.outputs.values() {
            let Some((e, r)) = &o.rendition else { continue };
            if e != engine_id || tap_buses.contains_key(r) {
                continue;
            }
            let index = match engine.ladder_ref {
                LadderRef::Passthrough => Some(0),
                LadderRef::Named(_) => ladder.renditions.iter().position(|x| x.name.as_str() == r),
            };
            let Some(index) = index else { continue };
            let tap = ChannelBus::new(channel_id.clone(), bus.grid(), DEFAULT_BUS_CAPACITY, 0);
            let Ok(mut publisher) = tap.begin_feed(
                format!("engine:{engine_id}/{r}"),
                FeedSpec {
                    ingest: format!("{engine_id}/{r}"),
                    priority: 1,
                    tracking_id: None,
                },
                sluice_ingest::bus::STALE_AFTER,
            ) else {
                continue;
            };
            publisher.carry_timeline();
            taps.push(engine_runner::Tap {
                rendition: index,
                publisher: Mutex::new(publisher),
            });
            tap_buses.insert(r.clone(), tap);
        }
        let sink = engine_runner::EngineSink {
            packager,
            taps: Arc::new(taps),
        };
        let name = format!("{channel_id}/{engine_id}");
        let stats = Arc::new(EngineStats::default());
        let cancel = parent.child_token();
        // Every line the engine logs carries its ids (its packaging, on GStreamer's
        // threads, enters the same span).
        let span = tracing::info_span!("engine", channel = %channel_id, engine = %engine_id);
        let tracks = tracks
            .into_iter()
            .map(|(sid, index, source_bus)| {
                let feed = self.feed_track(index, &source_bus, &sink.packager, &cancel, &span);
                (sid, (index, feed))
            })
            .collect();
        self.shared
            .tracker
            .spawn(supervise(format!("engine {name}"), cancel.clone(), {
                let (bus, cancel, stats) = (bus.clone(), cancel.clone(), stats.clone());
                let (sink, span) = (sink.clone(), span.clone());
                let mut runs = 0u64;
                move || {
                    runs += 1;
                    if runs > 1 {
                        stats.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    engine_runner::run(
                        name.clone(),
                        mode.clone(),
                        bus.subscribe(),
                        sink.clone(),
                        stats.clone(),
                        cancel.clone(),
                        runs > 1,
                    )
                    .instrument(span.clone())
                }
            }));
        let recorder = self.start_recorder(channel_id, engine_id, engine, &output, &cancel);
        EngineRun {
            encoder,
            config: engine.clone(),
            output,
            stats,
            taps: tap_buses,
            packager: sink.packager.clone(),
            tracks,
            span: span.clone(),
            recorder,
            cancel: cancel.clone(),
            _stop: cancel.drop_guard(),
        }
    }

    /// Starts an output: a pull output waits for readers; an enabled push output starts
    /// pushing (unless `stopped`).
    fn start_output(
        &self,
        channel_id: &Id,
        output_id: &Id,
        config: &ChannelOutput,
        (bus, parent): (&Arc<ChannelBus>, &CancellationToken),
        stopped: bool,
        previous: Option<&OutputStats>,
    ) -> OutputRun {
        let run = OutputRun {
            config: config.clone(),
            bus: bus.clone(),
            stats: Arc::new(previous.map_or_else(OutputStats::default, OutputStats::continuing)),
            cancel: parent.child_token(),
            stopped,
        };
        if run.active()
            && !config.protocol.is_pull()
            && let Some(url) = config.target_url()
        {
            let spec = sluice_ingest::push::PushSpec {
                output: output_id.clone(),
                url,
                passphrase: config.passphrase.clone(),
            };
            let span = tracing::info_span!("output", channel = %channel_id, output = %output_id);
            self.shared.tracker.spawn(
                sluice_ingest::push::run_push(
                    bus.clone(),
                    spec,
                    run.stats.clone(),
                    run.cancel.clone(),
                )
                .instrument(span),
            );
        }
        run
    }

    /// Starts or stops a channel output (control API; not persisted). `false`: no such
    /// output, or its channel is not running.
    pub fn set_output_running(&mut self, channel: &Id, output: &Id, start: bool) -> bool {
        let Some(run) = self.channels.get(channel) else {
            return false;
        };
        let Some(current) = run.outputs.get(output) else {
            return false;
        };
        if current.stopped != start {
            return true;
        }
        let (config, cancel) = (current.config.clone(), run.cancel.clone());
        let bus = output_bus(&run.engines, &run.bus, &config);
        let stats = current.stats.clone();
        let next = self.start_output(
            channel,
            output,
            &config,
            (&bus, &cancel),
            !start,
            Some(&stats),
        );
        if let Some(run) = self.channels.get_mut(channel) {
            // The previous run (dropped here) closes its readers or stops pushing.
            run.outputs.insert(output.clone(), next);
        }
        self.publish();
        tracing::info!(%channel, %output, "output {}", if start { "started" } else { "stopped" });
        true
    }

    /// Starts the engine's recorder, when it records.
    fn start_recorder(
        &self,
        channel_id: &Id,
        engine_id: &Id,
        engine: &Engine,
        output: &Arc<EngineOutput>,
        parent: &CancellationToken,
    ) -> Option<RecorderRun> {
        let record = engine.record.filter(|r| r.enabled)?;
        let dir = crate::recorder::engine_dir(&self.running.server.data_dir, channel_id, engine_id);
        let stats = Arc::new(RecorderStats::default());
        let cancel = parent.child_token();
        let span = tracing::info_span!("recorder", channel = %channel_id, engine = %engine_id);
        self.shared.tracker.spawn(
            crate::recorder::run(output.clone(), dir, record, stats.clone(), cancel.clone())
                .instrument(span),
        );
        Some(RecorderRun {
            stats,
            _stop: cancel.drop_guard(),
        })
    }

    fn start_slate(
        &self,
        id: &Id,
        channel: &Channel,
        bus: &Arc<ChannelBus>,
        parent: &CancellationToken,
    ) -> Option<CancellationToken> {
        if !channel.slate.enabled {
            return None;
        }
        let (width, height) = slate_size(channel);
        let picture = TestPatternSettings {
            width,
            height,
            fps: 30,
            video_kbps: 800,
            look: sluice_engine::Look::Slate {
                image: channel.slate.image.clone(),
            },
        };
        let timeout = Duration::from_secs(u64::from(channel.slate.timeout_minutes) * 60);
        let slate_timeout = slate_timeout_override().unwrap_or(timeout);
        let cancel = parent.child_token();
        self.shared
            .tracker
            .spawn(supervise(format!("slate {id}"), cancel.clone(), {
                let (bus, cancel) = (bus.clone(), cancel.clone());
                let span = tracing::info_span!("slate", channel = %id);
                move || {
                    crate::slate::watch(bus.clone(), picture.clone(), slate_timeout, cancel.clone())
                        .instrument(span.clone())
                }
            }));
        Some(cancel)
    }

    /// Starts the channel's pull and generated (test pattern) ingests; one that cannot
    /// start is logged with the reason and left out.
    fn start_ingests(
        &self,
        channel_id: &Id,
        channel: &Channel,
        bus: &Arc<ChannelBus>,
        cancel: &CancellationToken,
    ) -> Vec<TestPattern> {
        let mut patterns = Vec::new();
        for (ingest_id, ingest) in &channel.ingests {
            if !ingest.enabled {
                continue;
            }
            match ingest.protocol {
                IngestProtocol::TestPattern => {
                    let started = bus
                        .begin_feed(
                            format!("test-pattern:{ingest_id}"),
                            FeedSpec {
                                ingest: ingest_id.to_string(),
                                priority: ingest.priority,
                                tracking_id: None,
                            },
                            sluice_ingest::bus::STALE_AFTER,
                        )
                        .map_err(anyhow::Error::from)
                        .and_then(|publisher| {
                            let tp = &ingest.test_pattern;
                            TestPattern::start(
                                &TestPatternSettings {
                                    width: tp.width,
                                    height: tp.height,
                                    fps: tp.fps,
                                    ..Default::default()
                                },
                                publisher_sink(publisher),
                            )
                            .map_err(anyhow::Error::from)
                        });
                    match started {
                        Ok(pattern) => {
                            tracing::info!(channel = %channel_id, ingest = %ingest_id, "test pattern started");
                            patterns.push(pattern);
                        }
                        Err(e) => {
                            tracing::error!(channel = %channel_id, ingest = %ingest_id, error = %format!("{e:#}"), "cannot start the test pattern");
                        }
                    }
                }
                IngestProtocol::RtmpPull | IngestProtocol::SrtPull => {
                    // Validation requires a url for pull ingests.
                    let Some(url) = ingest.url.clone() else {
                        continue;
                    };
                    let spec = PullSpec {
                        ingest: ingest_id.clone(),
                        url,
                        passphrase: ingest.passphrase.clone(),
                        priority: ingest.priority,
                        max_kbps: ingest.max_kbps,
                    };
                    self.shared.tracker.spawn(supervise(
                        format!("pull {channel_id}/{ingest_id}"),
                        cancel.clone(),
                        {
                            let (bus, cancel) = (bus.clone(), cancel.clone());
                            move || {
                                sluice_ingest::pull::run_pull(
                                    bus.clone(),
                                    spec.clone(),
                                    cancel.clone(),
                                )
                            }
                        },
                    ));
                }
                IngestProtocol::Rtmp | IngestProtocol::Srt => {}
            }
        }
        patterns
    }
}

impl Runtime {
    /// Starts the pull of every source of `run` that is one and has none running; returns
    /// the sources started.
    fn start_missing_source_pulls(
        &self,
        channel_id: &Id,
        channel: &Channel,
        run: &mut ChannelRun,
    ) -> Vec<Id> {
        let mut started = Vec::new();
        for (sid, b) in &run.sources {
            if !run.source_pulls.contains_key(sid)
                && let Some(t) = self.start_source_pull(channel_id, sid, channel, b, &run.cancel)
            {
                run.source_pulls.insert(sid.clone(), t);
                started.push(sid.clone());
            }
        }
        started
    }

    /// The pull of source `sid` (`rtmp-pull`, `srt-pull`) into its bus, if it is one and
    /// enabled; stopped by the returned token (a child of `parent`).
    fn start_source_pull(
        &self,
        channel_id: &Id,
        sid: &Id,
        channel: &Channel,
        source_bus: &Arc<ChannelBus>,
        parent: &CancellationToken,
    ) -> Option<CancellationToken> {
        let ingest = &channel.sources.get(sid)?.ingest;
        let url = ingest
            .url
            .clone()
            .filter(|_| ingest.protocol.is_pull() && ingest.enabled)?;
        let spec = PullSpec {
            ingest: sid.clone(),
            url,
            passphrase: ingest.passphrase.clone(),
            priority: 1,
            max_kbps: ingest.max_kbps,
        };
        let cancel = parent.child_token();
        self.shared.tracker.spawn(supervise(
            format!("pull {channel_id}/{sid}"),
            cancel.clone(),
            {
                let (bus, cancel) = (source_bus.clone(), cancel.clone());
                move || sluice_ingest::pull::run_pull(bus.clone(), spec.clone(), cancel.clone())
            },
        ));
        Some(cancel)
    }
}

/// How an engine on `ladder` packages: `(cmaf, ts)` outputs; `keyframes_forced` for a
/// transcoding engine. Init versions start at 0: the caller gives each run its own range.
fn packager_settings(
    ladder: &Ladder,
    (cmaf, ts): (bool, bool),
    keyframes_forced: bool,
) -> PackagerSettings {
    PackagerSettings {
        segment_duration: secs_f64_to_nanos(ladder.segment_seconds),
        window: secs_f64_to_nanos(ladder.window_seconds),
        cmaf,
        ts,
        init_version_base: 0,
        part_duration: secs_f64_to_nanos(ladder.part_seconds),
        keyframes_forced,
    }
}

/// The encoder of `ladder`. Checked when the configuration was taken (`check_encoders`):
/// an error here means the hardware went away since; x264 then, said in the log with the
/// engine (or angle) `who`.
fn encoder_for(ladder: &Ladder, who: &Id) -> Encoder {
    sluice_engine::resolve_encoder(encoder_choice(ladder.encoder)).unwrap_or_else(|e| {
        tracing::error!(engine = %who, error = %e, "falling back to x264");
        Encoder::X264
    })
}

/// The bus of source `s` of the channel whose bus is `main`: an audio track's or a camera
/// angle's (see [`ChannelBus::new_source`], [`ChannelBus::new_angle`]).
fn source_bus(main: &Arc<ChannelBus>, s: &Source) -> Arc<ChannelBus> {
    match s.kind {
        SourceKind::Audio => ChannelBus::new_source(main, s.offset_ms, DEFAULT_BUS_CAPACITY),
        SourceKind::Video => ChannelBus::new_angle(main, s.offset_ms, DEFAULT_BUS_CAPACITY),
    }
}

/// The extra audio track of audio source `id` (`None` for a video source).
fn track_spec(id: &Id, s: &Source) -> Option<TrackSpec> {
    (s.kind == SourceKind::Audio).then(|| TrackSpec {
        rendition: source_rendition(id.as_str()),
        name: s.name.clone(),
        language: s.language.clone(),
        default: s.default,
    })
}

/// A transcoding engine's mode for `ladder`, and the renditions it packages.
fn transcode(
    ladder: &Ladder,
    encoder: Encoder,
    segment_duration: MediaTime,
) -> (EngineMode, Vec<RenditionSpec>) {
    let mode = EngineMode::Transcode(TranscodeSettings {
        segment_duration,
        renditions: ladder
            .renditions
            .iter()
            .map(|r| RenditionSettings {
                width: r.width,
                height: r.height,
                video_kbps: r.video_kbps,
            })
            .collect(),
        audio_kbps: ladder.audio_kbps,
        audio_passthrough: ladder.audio_passthrough,
        preset: ladder.encoder_preset.clone(),
        reuse_top_rung: ladder.reuse_top_rung,
        encoder,
        max_queued_bytes: ENGINE_INPUT_BYTES,
        max_queued_time: segment_duration.saturating_mul(2),
    });
    let renditions = ladder
        .renditions
        .iter()
        .map(|r| RenditionSpec {
            name: r.name.clone(),
            width: r.width,
            height: r.height,
            video_kbps: r.video_kbps,
        })
        .collect();
    (mode, renditions)
}

/// The slate is made at the size of the largest rendition any engine makes.
fn slate_size(channel: &Channel) -> (u32, u32) {
    channel
        .engines
        .values()
        .flat_map(|e| e.ladder.renditions.iter())
        .map(|r| (r.width, r.height))
        .max_by_key(|(w, h)| w * h)
        .unwrap_or((1280, 720))
}

/// Keeps `kbps` at the channel's input bitrate, measured every two seconds.
async fn sample_input(bus: Arc<ChannelBus>, kbps: Arc<AtomicU32>, cancel: CancellationToken) {
    const PERIOD: Duration = Duration::from_secs(2);
    let bytes = |b: &ChannelBus| b.stats.bytes_in.load(Ordering::Relaxed);
    let mut last = bytes(&bus);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = bytes(&bus);
        let rate = now.saturating_sub(last) * 8 / 1000 / PERIOD.as_secs();
        last = now;
        kbps.store(u32::try_from(rate).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

fn encoder_choice(e: VideoEncoder) -> EncoderChoice {
    match e {
        VideoEncoder::Auto => EncoderChoice::Auto,
        VideoEncoder::X264 => EncoderChoice::X264,
        VideoEncoder::Nvenc => EncoderChoice::Nvenc,
        VideoEncoder::Vaapi => EncoderChoice::Vaapi,
    }
}

/// Resolves every ladder's `encoder` on this machine: a hardware encoder named but not
/// usable refuses the configuration; the choice of each ladder an engine uses is logged.
pub fn check_encoders(cfg: &Config) -> anyhow::Result<()> {
    let mut used = BTreeMap::new();
    for channel in cfg.channels.values() {
        for engine in channel.engines.values() {
            if let LadderRef::Named(name) = &engine.ladder_ref {
                used.insert(name.clone(), engine.ladder.encoder);
            }
        }
    }
    for (ladder, choice) in used {
        let encoder = sluice_engine::resolve_encoder(encoder_choice(choice))
            .map_err(|e| anyhow::anyhow!("ladders.{ladder}: {e}"))?;
        tracing::info!(
            %ladder,
            asked = choice.as_str(),
            encoder = encoder.name(),
            element = encoder.factory(),
            "ladder encoder"
        );
    }
    Ok(())
}
