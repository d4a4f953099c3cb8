//! Wiring of one engine: the channel bus in, `sluice_engine::EngineRunner` (the
//! state machine) in the middle, the packager out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{MediaEvent, MediaTime, TrackKind};
use sluice_distribution::AngleSlot;
use sluice_engine::{
    EncodedEvent, EngineMode, EngineRunner, EngineStats, GstFactory, Packaging, RunnerSettings,
};
use sluice_ingest::{BusReceiver, ChannelBus, Publisher};
use sluice_package::{AudioSpec, Packager, PackagerSettings, RenditionSpec, TrackSpec};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub type SharedPackager = Arc<Mutex<Packager>>;

pub(crate) fn lock(p: &SharedPackager) -> std::sync::MutexGuard<'_, Packager> {
    // The packager's methods leave it consistent between calls; keep serving after a panic elsewhere.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// One rendition of an engine as a feed of its own (a bus with one publisher that keeps
/// the channel timeline), for outputs that carry that rendition instead of the source.
pub struct Tap {
    /// The rendition's index in the ladder.
    pub rendition: usize,
    pub publisher: Mutex<Publisher>,
}

/// Where an engine's encoded media goes: its packager, and its taps.
#[derive(Clone)]
pub struct EngineSink {
    pub packager: SharedPackager,
    pub taps: Arc<Vec<Tap>>,
}

/// The packager (and taps) as the engine sees it. Called from GStreamer streaming
/// threads, inside the engine's span (its log lines carry the channel and engine ids).
struct ToPackager(EngineSink, tracing::Span);

impl ToPackager {
    fn tap(&self, ev: &EncodedEvent) {
        for t in self.0.taps.iter() {
            let mut p = t.publisher.lock().unwrap_or_else(|e| e.into_inner());
            match ev {
                EncodedEvent::VideoConfig {
                    rendition, config, ..
                } if *rendition == t.rendition => p.video_config(config.clone()),
                EncodedEvent::AudioConfig(c) => p.audio_config(c.clone()),
                EncodedEvent::Video { rendition, frame } if *rendition == t.rendition => {
                    p.push(frame.clone())
                }
                EncodedEvent::Audio(frame) => p.push(frame.clone()),
                _ => {}
            }
        }
    }
}

impl sluice_engine::EncodedSink for ToPackager {
    fn on_event(&self, ev: EncodedEvent) {
        let _span = self.1.enter();
        if !self.0.taps.is_empty() {
            self.tap(&ev);
        }
        let mut p = lock(&self.0.packager);
        match ev {
            EncodedEvent::VideoConfig {
                rendition,
                config,
                fps,
            } => {
                p.set_video_config(rendition, config);
                if let Some(fps) = fps {
                    p.set_frame_rate(rendition, fps);
                }
            }
            EncodedEvent::AudioConfig(c) => p.set_audio_config(c),
            EncodedEvent::Video { rendition, frame } => p.push_video(rendition, frame),
            EncodedEvent::Audio(frame) => p.push_audio(frame),
        }
    }
}

impl Packaging for ToPackager {
    fn discontinuity(&self) {
        let _span = self.1.enter();
        lock(&self.0.packager).discontinuity();
    }
    fn outage(&self) {
        let _span = self.1.enter();
        lock(&self.0.packager).outage();
    }
    fn finish(&self) {
        let _span = self.1.enter();
        lock(&self.0.packager).finish();
    }
    fn reopen(&self) {
        let _span = self.1.enter();
        lock(&self.0.packager).reopen();
    }
}

/// Feeds extra audio track `index` of an engine's packager from its source's bus until
/// `cancel`: the source's AAC frames go in as they are (on the channel's timeline
/// already); what the source does not send, the packager fills with silence.
pub async fn feed_track(
    index: usize,
    rx: BusReceiver,
    packager: SharedPackager,
    cancel: CancellationToken,
) {
    each_event(rx, cancel, |ev| match ev {
        MediaEvent::TrackStart { audio, .. } => lock(&packager).set_track_config(index, audio),
        MediaEvent::Frame(f) if f.track == TrackKind::Audio => lock(&packager).push_track(index, f),
        _ => {}
    })
    .await
}

/// Calls `f` with every event of `rx` until `cancel` or the bus closes.
async fn each_event(mut rx: BusReceiver, cancel: CancellationToken, mut f: impl FnMut(MediaEvent)) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = rx.recv() => match ev {
                Some(ev) => f(ev),
                None => return,
            },
        }
    }
}

/// Feeds the main audio of a camera angle's packager from the channel's bus until
/// `cancel`: the main input's AAC frames as they arrive (on the channel's timeline, as
/// the angle's video is), so that an angle plays with the channel's sound and switching
/// angles keeps it.
pub async fn feed_main_audio(rx: BusReceiver, packager: SharedPackager, cancel: CancellationToken) {
    each_event(rx, cancel, |ev| match ev {
        MediaEvent::Start { audio: Some(a), .. } => lock(&packager).set_audio_config(a),
        MediaEvent::Frame(f) if f.track == TrackKind::Audio => lock(&packager).push_audio(f),
        _ => {}
    })
    .await
}

/// A camera angle as its engine runs it: transcoded with its ladder, packaged on the
/// channel's grid with the channel's audio and extra audio tracks.
pub struct AngleEngine {
    /// `<channel>/angle/<source>`, for logs.
    pub name: String,
    pub mode: EngineMode,
    /// Everything but `init_version_base`, taken per session from `init_base`.
    pub settings: PackagerSettings,
    pub renditions: Vec<RenditionSpec>,
    /// The channel's extra audio tracks: each with its source's bus.
    pub tracks: Vec<(TrackSpec, Arc<ChannelBus>)>,
    /// The channel's bus: the angle's timing reference and its audio.
    pub main: Arc<ChannelBus>,
    /// Where distributions find the live session's output (`None` between sessions).
    pub slot: Arc<AngleSlot>,
    pub stats: Arc<EngineStats>,
    /// A fresh range of init versions for each session's packager.
    pub init_base: Arc<dyn Fn() -> u64 + Send + Sync>,
}

/// One session of a camera angle's bus: the `Start` that opened it, then its events until
/// it ends (its `End`, the bus closing), or the next session starts (that `Start` is kept
/// in `next` for the next run).
struct AngleSession<'a> {
    first: Option<MediaEvent>,
    session: u64,
    rx: &'a mut BusReceiver,
    next: &'a mut Option<MediaEvent>,
    /// Frames before this media time are dropped, and the first passed on is a video
    /// keyframe at or past it (see [`run_angle`]).
    from: Option<MediaTime>,
}

impl sluice_core::MediaSource for AngleSession<'_> {
    async fn recv(&mut self) -> Option<MediaEvent> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            let ev = self.rx.recv().await?;
            match &ev {
                MediaEvent::End { session } if *session == self.session => return None,
                MediaEvent::End { .. } | MediaEvent::TrackStart { .. } => continue,
                MediaEvent::Close => return None,
                MediaEvent::Start { session, .. } if *session != self.session => {
                    *self.next = Some(ev);
                    return None;
                }
                // Before `from`: dropped up to a video keyframe at or past it.
                MediaEvent::Frame(f)
                    if self.from.is_some_and(|from| {
                        f.track != TrackKind::Video || !f.keyframe || f.pts < from
                    }) => {}
                MediaEvent::Frame(_) => {
                    self.from = None;
                    return Some(ev);
                }
                _ => return Some(ev),
            }
        }
    }
}

/// Runs a camera angle until `cancel`. Each session of its publisher gets an engine run
/// and a packager of its own, published in `slot` while it lasts: its first segment is
/// numbered from media time, as the main stream's are, so segment N of the angle is
/// segment N of the main stream after every return; when the publisher leaves, the
/// angle's playlists end and it is gone from the distributions until it returns.
pub async fn run_angle(angle: Arc<AngleEngine>, mut rx: BusReceiver, cancel: CancellationToken) {
    // Whatever ends this run (a panic too) takes the angle off the distributions.
    struct Unpublish(Arc<AngleSlot>);
    impl Drop for Unpublish {
        fn drop(&mut self) {
            self.0.store(None);
        }
    }
    let _unpublish = Unpublish(angle.slot.clone());
    let mut next: Option<MediaEvent> = None;
    // The last segment number an earlier session published: a session placed behind it
    // (its publisher came back within a segment, or the main input reconnected and its
    // timeline did not move on) starts after it, so that a segment URL, served as
    // immutable, never names other media.
    let mut published: Option<u64> = None;
    let d = angle.settings.segment_duration.max(1);
    loop {
        let first = match next.take() {
            Some(ev) => ev,
            None => loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = rx.recv() => match ev {
                        Some(ev) => ev,
                        None => return,
                    },
                };
                if matches!(ev, MediaEvent::Start { .. }) {
                    break ev;
                }
            },
        };
        let MediaEvent::Start { session, .. } = &first else {
            continue;
        };
        let session = *session;
        let settings = PackagerSettings {
            init_version_base: (angle.init_base)(),
            ..angle.settings.clone()
        };
        let (mut packager, output) = Packager::new(
            settings,
            angle.renditions.clone(),
            Some(AudioSpec { kbps: 0 }),
        );
        let mut tracks = Vec::with_capacity(angle.tracks.len());
        for (spec, bus) in &angle.tracks {
            tracks.push((packager.add_track(spec.clone()), bus.subscribe()));
        }
        let packager = Arc::new(Mutex::new(packager));
        let feeds = cancel.child_token();
        // The feeds stop with the session, also when this task unwinds.
        let feeds_guard = feeds.clone().drop_guard();
        tokio::spawn(
            feed_main_audio(angle.main.subscribe(), packager.clone(), feeds.clone())
                .in_current_span(),
        );
        for (index, bus) in tracks {
            tokio::spawn(feed_track(index, bus, packager.clone(), feeds.clone()).in_current_span());
        }
        angle.slot.store(Some(output.clone()));
        let sink = EngineSink {
            packager,
            taps: Arc::new(Vec::new()),
        };
        let packaging = Arc::new(ToPackager(sink, tracing::Span::current()));
        let timing = RunnerSettings::for_segment(Duration::from_nanos(
            angle.settings.segment_duration.max(0) as u64,
        ));
        let runner = EngineRunner::new(
            angle.name.clone(),
            angle.mode.clone(),
            timing,
            GstFactory,
            packaging,
        )
        .with_stats(angle.stats.clone());
        let input = AngleSession {
            first: Some(first),
            session,
            rx: &mut rx,
            next: &mut next,
            from: published.map(|n| {
                i64::try_from(n.saturating_add(1))
                    .unwrap_or(i64::MAX)
                    .saturating_mul(d)
            }),
        };
        runner.run(input, cancel.clone()).await;
        drop(feeds_guard);
        if let Some(n) = angle
            .renditions
            .first()
            .and_then(|r| output.latest_msn(r.name.as_str()))
        {
            published = Some(published.map_or(n, |p| p.max(n)));
        }
        angle.slot.store(None);
        tracing::info!(angle = %angle.name, session, "camera angle session ended; gone from the playlists");
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// Test builds only: `SLUICE_TEST_ENGINE_PANIC_AFTER_SECS=N` makes the first run of
/// every engine panic after N seconds, so end-to-end tests can check that a dead engine
/// task is noticed and restarted by its supervisor.
fn injected_panic_after() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var("SLUICE_TEST_ENGINE_PANIC_AFTER_SECS")
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// Test builds only: `SLUICE_TEST_ENGINE_OUTAGE=<channel>/<engine>:<after_s>:<for_s>`
/// takes that engine down for a while, to test failover between engines.
fn planned_outage(name: &str) -> Option<(Duration, Duration)> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let spec = std::env::var("SLUICE_TEST_ENGINE_OUTAGE").ok()?;
    let (engine, times) = spec.split_once(':')?;
    let (after, length) = times.split_once(':')?;
    (engine == name).then_some((
        Duration::from_secs(after.parse().ok()?),
        Duration::from_secs(length.parse().ok()?),
    ))
}

/// Runs one engine until `cancel`. `resumed`: an earlier run of this engine died; what
/// it packaged stays, and the next segment is marked as a discontinuity.
pub async fn run(
    name: String,
    mode: EngineMode,
    rx: BusReceiver,
    sink: EngineSink,
    stats: Arc<EngineStats>,
    cancel: CancellationToken,
    resumed: bool,
) {
    let packaging = Arc::new(ToPackager(sink, tracing::Span::current()));
    if resumed {
        packaging.outage();
    }
    let timing = match &mode {
        EngineMode::Transcode(s) => {
            RunnerSettings::for_segment(Duration::from_nanos(s.segment_duration.max(0) as u64))
        }
        EngineMode::Passthrough => RunnerSettings::for_segment(Duration::from_secs(2)),
    };
    let outage = planned_outage(&name).filter(|_| !resumed);
    let mut runner = EngineRunner::new(name, mode, timing, GstFactory, packaging).with_stats(stats);
    if let Some((after, length)) = outage {
        runner = runner.with_outage(after, length);
    }
    match injected_panic_after().filter(|_| !resumed) {
        None => runner.run(rx, cancel).await,
        Some(after) => {
            tokio::select! {
                _ = runner.run(rx, cancel) => {}
                _ = tokio::time::sleep(after) => panic!("injected engine failure (SLUICE_TEST_ENGINE_PANIC_AFTER_SECS)"),
            }
        }
    }
}
