//! Wiring of one engine: the channel bus in, `sluice_engine::EngineRunner` (the
//! state machine) in the middle, the packager out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{MediaEvent, TrackKind};
use sluice_engine::{
    EncodedEvent, EngineMode, EngineRunner, EngineStats, GstFactory, Packaging, RunnerSettings,
};
use sluice_ingest::{BusReceiver, Publisher};
use sluice_package::Packager;
use tokio_util::sync::CancellationToken;

pub type SharedPackager = Arc<Mutex<Packager>>;

fn lock(p: &SharedPackager) -> std::sync::MutexGuard<'_, Packager> {
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
    mut rx: BusReceiver,
    packager: SharedPackager,
    cancel: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        match ev {
            MediaEvent::TrackStart { audio, .. } => lock(&packager).set_track_config(index, audio),
            MediaEvent::Frame(f) if f.track == TrackKind::Audio => {
                lock(&packager).push_track(index, f)
            }
            _ => {}
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
