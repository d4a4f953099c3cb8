//! One engine's life, as a state machine driven by media events and the pipeline's bus.
//!
//! ```text
//!            keyframe, start ok                 End (publisher left)
//!   Idle ───────────────────────▶ Running ─────────────────────────▶ Draining
//!    ▲  ▲                          │  │ error, or fed but silent       │ EOS, or deadline
//!    │  │ Start (new session)      │  ▼                                │
//!    │  └──────────────────────────┤ BackingOff ◀── start failed       │
//!    │                             │  │ back-off over, next keyframe    │
//!    └─────────────────────────────┴──┴─────────────────────────────────┘
//! ```
//!
//! Every transition that loses continuity (a new session, a failed or stalled
//! pipeline, a drained one) tells the packaging side, which marks the next segment
//! with `EXT-X-DISCONTINUITY`; numbering goes on. Pipelines are started and stopped
//! through a [`PipelineFactory`], so that the timing here is tested with paused time and
//! a scripted pipeline, and runs with GStreamer ([`GstFactory`]) in the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::{AudioConfig, Frame, MediaEvent, MediaSource, Throttle, TrackKind, VideoConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    EncodedEvent, EncodedSink, EngineError, EngineStats, PushOutcome, TopRung, TranscodeSettings,
    Transcoder,
};

/// What an engine does with its input.
#[derive(Debug, Clone)]
pub enum EngineMode {
    /// Decode once, encode the ladder.
    Transcode(TranscodeSettings),
    /// Hand the input to packaging untouched (rendition 0, and the audio).
    Passthrough,
}

/// The packaging side of an engine: encoded output, plus the two things only the
/// engine knows about its stream.
pub trait Packaging: EncodedSink {
    /// Continuity is lost: the next segment of every rendition starts after a seam.
    fn discontinuity(&self);
    /// The engine was down and lost media (a failed or stalled pipeline): a
    /// discontinuity, with the missed segments listed as gaps so that numbering stays on
    /// media time, like the channel's other engines.
    fn outage(&self) {
        self.discontinuity();
    }
    /// The engine stops for good: close open segments, end the playlists.
    fn finish(&self);
    /// A new session after [`Packaging::finish`]: the playlists go on (after a seam).
    fn reopen(&self) {}
}

/// A running pipeline, as the state machine sees it.
pub trait Pipeline: Send + Sync {
    fn push(&self, frame: &Frame) -> PushOutcome;
    fn end_of_stream(&self);
    /// The first error or end-of-stream posted since the last call.
    fn poll(&self) -> Option<Result<(), EngineError>>;
    /// What the top rendition is, when its reuse was asked for.
    fn top_rung(&self) -> Option<TopRung> {
        None
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts and stops pipelines. Both may block (GStreamer state changes join threads),
/// so the real factory moves them off the async workers.
pub trait PipelineFactory: Send + Sync + 'static {
    fn start(
        &self,
        settings: TranscodeSettings,
        video: VideoConfig,
        audio: Option<AudioConfig>,
        sink: Arc<dyn EncodedSink>,
    ) -> BoxFuture<'static, Result<Box<dyn Pipeline>, EngineError>>;

    fn stop(&self, pipeline: Box<dyn Pipeline>) -> BoxFuture<'static, ()>;
}

impl Pipeline for Transcoder {
    fn push(&self, frame: &Frame) -> PushOutcome {
        Transcoder::push(self, frame)
    }
    fn end_of_stream(&self) {
        Transcoder::end_of_stream(self)
    }
    fn poll(&self) -> Option<Result<(), EngineError>> {
        Transcoder::poll(self)
    }
    fn top_rung(&self) -> Option<TopRung> {
        Transcoder::top_rung(self)
    }
}

/// GStreamer pipelines ([`Transcoder`]), built and torn down on blocking threads.
pub struct GstFactory;

impl PipelineFactory for GstFactory {
    fn start(
        &self,
        settings: TranscodeSettings,
        video: VideoConfig,
        audio: Option<AudioConfig>,
        sink: Arc<dyn EncodedSink>,
    ) -> BoxFuture<'static, Result<Box<dyn Pipeline>, EngineError>> {
        // The pipeline is built in the caller's span (the engine's ids), which its
        // streaming threads then log in.
        let span = tracing::Span::current();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let _span = span.enter();
                Transcoder::start(&settings, &video, audio.as_ref(), sink)
                    .map(|t| Box::new(t) as Box<dyn Pipeline>)
            })
            .await
            .unwrap_or_else(|e| Err(EngineError::Pipeline(e.to_string())))
        })
    }

    fn stop(&self, pipeline: Box<dyn Pipeline>) -> BoxFuture<'static, ()> {
        // Going to Null joins the streaming threads, which can wait for a frame in an encoder.
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || drop(pipeline)).await;
        })
    }
}

/// Timing of the state machine.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// How often the pipeline's bus and the watchdog are looked at.
    pub tick: Duration,
    /// After a failed start or a failed pipeline, the first wait; doubles to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// A pipeline fed input that has produced nothing for this long is stalled.
    pub stall_after: Duration,
    /// Input older than this does not count as "being fed".
    pub fed_within: Duration,
    /// How long a pipeline sent end-of-stream may take to drain.
    pub drain: Duration,
}

impl RunnerSettings {
    /// Defaults for a ladder cutting `segment` long segments: stalled after three
    /// segments of silence (at least 10 s), 1 s back-off doubling to 30 s.
    pub fn for_segment(segment: Duration) -> Self {
        RunnerSettings {
            tick: Duration::from_millis(250),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            stall_after: (segment * 3).max(Duration::from_secs(10)),
            fed_within: Duration::from_secs(2),
            drain: Duration::from_secs(3),
        }
    }
}

/// The states of the diagram above.
enum State {
    /// No pipeline: no session yet, or waiting for the session's next keyframe.
    Idle,
    Running {
        pipeline: Box<dyn Pipeline>,
        /// Encoded outputs counted when the watchdog last saw progress, and when.
        progress: (u64, Instant),
    },
    /// End-of-stream sent; what the pipeline holds is still being encoded.
    Draining {
        pipeline: Box<dyn Pipeline>,
        deadline: Instant,
    },
    /// Waiting before trying again; the next keyframe after `until` starts a pipeline.
    BackingOff { until: Instant },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Running { .. } => "running",
            State::Draining { .. } => "draining",
            State::BackingOff { .. } => "backing off",
        }
    }
}

struct Session {
    id: u64,
    video: VideoConfig,
    audio: Option<AudioConfig>,
}

/// Counts what the pipeline hands to packaging, for the watchdog.
struct Counting {
    inner: Arc<dyn Packaging>,
    outputs: Arc<AtomicU64>,
    stats: Arc<EngineStats>,
}

impl EncodedSink for Counting {
    fn on_event(&self, ev: EncodedEvent) {
        self.outputs.fetch_add(1, Ordering::Relaxed);
        if let EncodedEvent::Video {
            rendition: 0,
            frame,
        } = &ev
        {
            self.stats.output(frame.pts);
        }
        self.inner.on_event(ev);
    }
}

/// How often the engine's speed is sampled.
const SPEED_PERIOD: Duration = Duration::from_secs(2);

/// One engine: owns its state and its pipeline.
pub struct EngineRunner<F: PipelineFactory> {
    name: String,
    mode: EngineMode,
    timing: RunnerSettings,
    factory: F,
    packaging: Arc<dyn Packaging>,
    state: State,
    session: Option<Session>,
    outputs: Arc<AtomicU64>,
    last_input: Option<Instant>,
    backoff: Duration,
    dropped: u64,
    drop_log: Throttle,
    /// A planned outage (tests): when, and for how long.
    planned_outage: Option<(Instant, Duration)>,
    /// The channel closed and the playlists ended; the next session reopens them.
    closed: bool,
    stats: Arc<EngineStats>,
    /// The last speed sample: when, and the output's media time then.
    speed_sample: (Instant, Option<sluice_core::MediaTime>),
}

impl<F: PipelineFactory> EngineRunner<F> {
    pub fn new(
        name: String,
        mode: EngineMode,
        timing: RunnerSettings,
        factory: F,
        packaging: Arc<dyn Packaging>,
    ) -> Self {
        let backoff = timing.backoff;
        EngineRunner {
            name,
            mode,
            timing,
            factory,
            packaging,
            state: State::Idle,
            session: None,
            outputs: Arc::new(AtomicU64::new(0)),
            last_input: None,
            backoff,
            dropped: 0,
            drop_log: Throttle::default(),
            planned_outage: None,
            closed: false,
            stats: Arc::default(),
            speed_sample: (Instant::now(), None),
        }
    }

    /// Reports into `stats` (shared with status and metrics; kept across runs).
    pub fn with_stats(mut self, stats: Arc<EngineStats>) -> Self {
        self.stats = stats;
        self
    }

    /// What this engine reports about itself.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Takes the engine down `after` from now for `length`, as a failed pipeline would
    /// (stopped, a discontinuity, nothing produced, the missed segments listed as gaps):
    /// for tests of failover between a distribution's engines.
    pub fn with_outage(mut self, after: Duration, length: Duration) -> Self {
        self.planned_outage = Some((Instant::now() + after, length));
        self
    }

    /// The current state's name (for status and tests).
    pub fn state(&self) -> &'static str {
        self.state.name()
    }

    /// Runs until `cancel` or the end of `input`; then drains (bounded), stops the
    /// pipeline and finishes packaging.
    pub async fn run(mut self, mut input: impl MediaSource, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.timing.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Made once, not once per event: every frame passes through this loop.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                _ = &mut cancelled => break,
                _ = tick.tick() => self.on_tick().await,
                ev = input.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break,
                },
            }
        }
        self.shutdown().await;
        tracing::info!(engine = %self.name, "engine stopped");
    }

    /// Ends the pipeline (letting it drain, bounded) and finishes packaging.
    pub async fn shutdown(&mut self) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Running { pipeline, .. } => {
                pipeline.end_of_stream();
                self.drain(pipeline).await;
            }
            State::Draining { pipeline, .. } => self.drain(pipeline).await,
            State::Idle | State::BackingOff { .. } => {}
        }
        self.packaging.finish();
    }

    /// Waits (bounded) for a pipeline sent end-of-stream, then stops it.
    async fn drain(&self, pipeline: Box<dyn Pipeline>) {
        let deadline = Instant::now() + self.timing.drain;
        while Instant::now() < deadline && pipeline.poll().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.factory.stop(pipeline).await;
    }

    /// Stops whatever runs now; the state becomes `next`.
    async fn stop_pipeline(&mut self, next: State) {
        match std::mem::replace(&mut self.state, next) {
            State::Running { pipeline, .. } | State::Draining { pipeline, .. } => {
                self.factory.stop(pipeline).await
            }
            State::Idle | State::BackingOff { .. } => {}
        }
    }

    /// A pipeline failed or stalled: discontinuity, back off, start again later.
    async fn fail(&mut self, why: &str) {
        let until = Instant::now() + self.backoff;
        tracing::error!(engine = %self.name, why, backoff_ms = self.backoff.as_millis() as u64, "pipeline failed; restarting after the back-off at the next keyframe");
        self.backoff = (self.backoff * 2).min(self.timing.max_backoff);
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        self.stop_pipeline(State::BackingOff { until }).await;
        self.packaging.outage();
    }

    pub async fn on_tick(&mut self) {
        let now = Instant::now();
        let since = now.duration_since(self.speed_sample.0);
        let out = self.stats.output_pts();
        if self.speed_sample.1.is_none() && out.is_some() {
            // The first output: measure from here.
            self.speed_sample = (now, out);
        } else if since >= SPEED_PERIOD {
            let media = match (self.speed_sample.1, out) {
                (Some(before), Some(after)) => after.saturating_sub(before),
                _ => 0,
            };
            self.stats.set_speed(media, since);
            self.speed_sample = (now, out);
        }
        if let Some((at, length)) = self.planned_outage
            && now >= at
        {
            self.planned_outage = None;
            tracing::warn!(engine = %self.name, seconds = length.as_secs_f64(), "planned outage: engine down");
            self.stop_pipeline(State::BackingOff {
                until: now + length,
            })
            .await;
            self.packaging.outage();
            return;
        }
        let produced = self.outputs.load(Ordering::Relaxed);
        let fed = self
            .last_input
            .is_some_and(|t| now.duration_since(t) < self.timing.fed_within);
        let mut failure = None;
        let mut drained = false;
        match &mut self.state {
            State::Running { pipeline, progress } => match pipeline.poll() {
                Some(Err(e)) => failure = Some(e.to_string()),
                Some(Ok(())) => failure = Some("unexpected end of stream".into()),
                None => {
                    if produced != progress.0 || !fed {
                        *progress = (produced, now);
                    } else if now.duration_since(progress.1) > self.timing.stall_after {
                        failure = Some(format!(
                            "fed but produced nothing for {} s",
                            self.timing.stall_after.as_secs()
                        ));
                    } else if produced > 0 && self.backoff != self.timing.backoff {
                        // Working again: the next failure starts from the short back-off.
                        self.backoff = self.timing.backoff;
                    }
                }
            },
            State::Draining { pipeline, deadline } => {
                drained = pipeline.poll().is_some() || now >= *deadline;
            }
            State::Idle | State::BackingOff { .. } => {}
        }
        if let Some(why) = failure {
            self.fail(&why).await;
        } else if drained {
            // The departed publisher's last, partial segment goes out now, not when (or
            // if) the next session starts.
            self.stop_pipeline(State::Idle).await;
            self.packaging.discontinuity();
        }
    }

    pub async fn on_event(&mut self, ev: MediaEvent) {
        match ev {
            // Engines read the channel's bus, which carries no source sessions.
            MediaEvent::TrackStart { .. } => {}
            MediaEvent::Start {
                session,
                video,
                audio,
                carried,
            } => {
                if self.session.as_ref().is_some_and(|s| s.id == session) {
                    return; // replayed after a lag
                }
                match std::mem::replace(&mut self.state, State::Idle) {
                    // Finish the old session's media first (bounded), then the seam.
                    State::Draining { pipeline, .. } => self.drain(pipeline).await,
                    State::Running { pipeline, .. } => self.factory.stop(pipeline).await,
                    State::Idle => {}
                    // Keep waiting out a back-off across sessions.
                    s @ State::BackingOff { .. } => self.state = s,
                }
                if std::mem::take(&mut self.closed) {
                    self.packaging.reopen();
                    if carried {
                        // The source's media time went on while the channel was closed.
                        self.packaging.outage();
                    }
                } else if self.session.is_some() && carried {
                    // The source's media time goes on across the seam: numbers follow it.
                    self.packaging.outage();
                } else if self.session.is_some() {
                    self.packaging.discontinuity();
                }
                tracing::info!(engine = %self.name, session, width = video.width, height = video.height, audio = audio.is_some(), "input session");
                if let EngineMode::Passthrough = self.mode {
                    self.packaging.on_event(EncodedEvent::VideoConfig {
                        rendition: 0,
                        config: video.clone(),
                        fps: None,
                    });
                    if let Some(a) = &audio {
                        self.packaging
                            .on_event(EncodedEvent::AudioConfig(a.clone()));
                    }
                }
                self.session = Some(Session {
                    id: session,
                    video,
                    audio,
                });
            }
            MediaEvent::Frame(frame) => self.on_frame(frame).await,
            MediaEvent::Close => {
                // The input ended for good (for now): finish the last session's media,
                // then end the playlists.
                match std::mem::replace(&mut self.state, State::Idle) {
                    State::Running { pipeline, .. } => {
                        pipeline.end_of_stream();
                        self.drain(pipeline).await
                    }
                    State::Draining { pipeline, .. } => self.drain(pipeline).await,
                    s => self.state = s,
                }
                if !self.closed {
                    self.packaging.finish();
                    self.closed = true;
                    tracing::info!(engine = %self.name, "channel closed; playlists ended");
                }
                self.session = None;
            }
            MediaEvent::End { session } => {
                if self.session.as_ref().is_none_or(|s| s.id != session) {
                    return;
                }
                match std::mem::replace(&mut self.state, State::Idle) {
                    State::Running { pipeline, .. } => {
                        pipeline.end_of_stream();
                        self.state = State::Draining {
                            pipeline,
                            deadline: Instant::now() + self.timing.drain,
                        };
                    }
                    s @ State::Draining { .. } => self.state = s,
                    s => {
                        self.state = s;
                        self.packaging.discontinuity();
                    }
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) {
        let Some(session) = &self.session else { return };
        if let State::BackingOff { until } = self.state
            && Instant::now() < until
        {
            return; // down: nothing goes through, not even passthrough
        }
        let settings = match &self.mode {
            EngineMode::Passthrough => {
                if frame.track == TrackKind::Video {
                    self.stats.input(frame.pts);
                    self.stats.output(frame.pts);
                }
                self.packaging.on_event(match frame.track {
                    TrackKind::Video => EncodedEvent::Video {
                        rendition: 0,
                        frame,
                    },
                    TrackKind::Audio => EncodedEvent::Audio(frame),
                });
                return;
            }
            EngineMode::Transcode(settings) => settings,
        };
        let now = Instant::now();
        self.last_input = Some(now);
        let startable = frame.track == TrackKind::Video && frame.keyframe;
        let start = match &self.state {
            State::Running { .. } | State::Draining { .. } => None,
            State::Idle | State::BackingOff { .. } if !startable => return,
            State::Idle | State::BackingOff { .. } => Some((
                settings.clone(),
                session.video.clone(),
                session.audio.clone(),
            )),
        };
        if let Some((settings, video, audio)) = start {
            let sink: Arc<dyn EncodedSink> = Arc::new(Counting {
                inner: self.packaging.clone(),
                outputs: self.outputs.clone(),
                stats: self.stats.clone(),
            });
            match self.factory.start(settings, video, audio, sink).await {
                Ok(pipeline) => {
                    // Nothing before this frame is to come out: the lag counts from here,
                    // and the speed from the first output (not across the outage).
                    self.stats.started_at(frame.pts);
                    self.speed_sample = (Instant::now(), None);
                    let produced = self.outputs.load(Ordering::Relaxed);
                    self.state = State::Running {
                        pipeline,
                        progress: (produced, Instant::now()),
                    };
                }
                Err(e) => {
                    self.fail(&format!("cannot start: {e}")).await;
                    return;
                }
            }
        }
        let State::Running { pipeline, .. } = &self.state else {
            return;
        };
        // Input, even when dropped: how far behind the engine is.
        if frame.track == TrackKind::Video {
            self.stats.input(frame.pts);
        }
        let outcome = pipeline.push(&frame);
        self.stats.set_top_rung(pipeline.top_rung());
        if outcome == PushOutcome::Dropped {
            self.dropped += 1;
            self.stats.dropped_frames.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.drop_log.hit_now() {
                tracing::warn!(engine = %self.name, dropped = self.dropped, suppressed, "engine behind its input; frames dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    use bytes::Bytes;
    use sluice_core::codec::testdata::AVCC_720P;

    use super::*;

    /// A scripted pipeline: echoes frames as output (or stays silent), reports what the
    /// test puts on its bus.
    struct FakePipeline {
        sink: Arc<dyn EncodedSink>,
        echo: bool,
        bus: Arc<Mutex<Option<Result<(), EngineError>>>>,
    }

    impl Pipeline for FakePipeline {
        fn push(&self, frame: &Frame) -> PushOutcome {
            if self.echo {
                self.sink.on_event(EncodedEvent::Video {
                    rendition: 0,
                    frame: frame.clone(),
                });
            }
            PushOutcome::Queued
        }
        fn end_of_stream(&self) {
            *self.bus.lock().unwrap() = Some(Ok(()));
        }
        fn poll(&self) -> Option<Result<(), EngineError>> {
            self.bus.lock().unwrap().take()
        }
    }

    #[derive(Clone, Default)]
    struct Script {
        starts: Arc<AtomicU32>,
        stops: Arc<AtomicU32>,
        /// Starts that fail before one succeeds.
        failing_starts: Arc<AtomicU32>,
        silent: Arc<std::sync::atomic::AtomicBool>,
        /// The bus of the pipeline started last.
        bus: Arc<Mutex<Option<Result<(), EngineError>>>>,
    }

    impl PipelineFactory for Script {
        fn start(
            &self,
            _: TranscodeSettings,
            _: VideoConfig,
            _: Option<AudioConfig>,
            sink: Arc<dyn EncodedSink>,
        ) -> BoxFuture<'static, Result<Box<dyn Pipeline>, EngineError>> {
            self.starts.fetch_add(1, Ordering::SeqCst);
            let result = if self
                .failing_starts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                Err(EngineError::Build("scripted".into()))
            } else {
                *self.bus.lock().unwrap() = None;
                Ok(Box::new(FakePipeline {
                    sink,
                    echo: !self.silent.load(Ordering::SeqCst),
                    bus: self.bus.clone(),
                }) as Box<dyn Pipeline>)
            };
            Box::pin(async move { result })
        }
        fn stop(&self, _: Box<dyn Pipeline>) -> BoxFuture<'static, ()> {
            self.stops.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }
    }

    #[derive(Default)]
    struct Recorder {
        discontinuities: AtomicU32,
        finished: AtomicU32,
        outputs: AtomicU32,
    }
    impl EncodedSink for Recorder {
        fn on_event(&self, _: EncodedEvent) {
            self.outputs.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl Packaging for Recorder {
        fn discontinuity(&self) {
            self.discontinuities.fetch_add(1, Ordering::SeqCst);
        }
        fn finish(&self) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    const SEG: Duration = Duration::from_secs(2);

    fn runner(script: &Script) -> (EngineRunner<Script>, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let settings = TranscodeSettings {
            segment_duration: 2_000_000_000,
            renditions: vec![],
            audio_kbps: 128,
            audio_passthrough: true,
            preset: "ultrafast".into(),
            reuse_top_rung: false,
            encoder: crate::Encoder::X264,
            max_queued_bytes: 1 << 20,
            max_queued_time: 4_000_000_000,
        };
        let r = EngineRunner::new(
            "t".into(),
            EngineMode::Transcode(settings),
            RunnerSettings::for_segment(SEG),
            script.clone(),
            rec.clone(),
        );
        (r, rec)
    }

    fn start(session: u64) -> MediaEvent {
        MediaEvent::Start {
            session,
            video: VideoConfig::from_avcc(Bytes::from_static(AVCC_720P)).unwrap(),
            audio: None,
            carried: false,
        }
    }

    fn video(ms: i64, keyframe: bool) -> MediaEvent {
        MediaEvent::Frame(Frame {
            track: TrackKind::Video,
            pts: ms * 1_000_000,
            dts: ms * 1_000_000,
            keyframe,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
        })
    }

    /// Feeds `secs` seconds of 30 fps video (keyframe every second) from `from_ms`,
    /// ticking the runner as time passes.
    async fn feed(r: &mut EngineRunner<Script>, from_ms: i64, secs: i64) {
        for i in 0..secs * 30 {
            let ms = from_ms + i * 1000 / 30;
            r.on_event(video(ms, i % 30 == 0)).await;
            if i % 8 == 0 {
                r.on_tick().await;
            }
            tokio::time::advance(Duration::from_millis(33)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_from_a_keyframe_and_drains_when_the_publisher_leaves() {
        let script = Script::default();
        let (mut r, rec) = runner(&script);
        r.on_event(start(1)).await;
        r.on_event(video(0, false)).await;
        assert_eq!(r.state(), "idle", "no pipeline before a keyframe");
        r.on_event(video(33, true)).await;
        assert_eq!(r.state(), "running");
        feed(&mut r, 66, 3).await;
        assert!(rec.outputs.load(Ordering::SeqCst) > 50);
        // The echoing pipeline keeps up: no lag, real-time speed.
        assert_eq!(r.stats().input_lag(), Duration::ZERO);
        let speed = r.stats().speed();
        assert!((0.9..=1.1).contains(&speed), "{speed}");
        r.on_event(MediaEvent::End { session: 1 }).await;
        assert_eq!(r.state(), "draining");
        r.on_tick().await; // the pipeline posted end-of-stream
        assert_eq!(r.state(), "idle");
        assert_eq!(
            rec.discontinuities.load(Ordering::SeqCst),
            1,
            "last segment out"
        );
        assert_eq!(script.stops.load(Ordering::SeqCst), 1);
        r.shutdown().await;
        assert_eq!(rec.finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pipeline_backs_off_then_restarts_at_a_keyframe() {
        let script = Script::default();
        let (mut r, rec) = runner(&script);
        r.on_event(start(1)).await;
        feed(&mut r, 0, 1).await;
        *script.bus.lock().unwrap() = Some(Err(EngineError::Pipeline("boom".into())));
        r.on_tick().await;
        assert_eq!(r.state(), "backing off");
        assert_eq!(rec.discontinuities.load(Ordering::SeqCst), 1);
        // Two more starts fail: the back-off doubles (1 s, 2 s, 4 s), each start waiting
        // for the next keyframe (one a second) after its back-off.
        script.failing_starts.store(2, Ordering::SeqCst);
        let t0 = Instant::now();
        while r.state() != "running" {
            feed(&mut r, 1000, 1).await;
            assert!(t0.elapsed() < Duration::from_secs(20), "never restarted");
        }
        assert_eq!(script.starts.load(Ordering::SeqCst), 4);
        assert_eq!(r.stats().restarts.load(Ordering::Relaxed), 3);
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(7) && waited <= Duration::from_secs(12),
            "{waited:?}"
        );
        assert_eq!(rec.discontinuities.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fed_but_silent_pipeline_is_replaced_a_starved_one_is_not() {
        let script = Script::default();
        script.silent.store(true, Ordering::SeqCst);
        let (mut r, rec) = runner(&script);
        r.on_event(start(1)).await;
        // No input for a minute: silence is expected, nothing happens.
        r.on_event(video(0, true)).await;
        for _ in 0..240 {
            tokio::time::advance(Duration::from_millis(250)).await;
            r.on_tick().await;
        }
        assert_eq!(r.state(), "running");
        // Fed for longer than the stall limit (10 s) with nothing out: replaced.
        feed(&mut r, 1000, 11).await;
        assert_eq!(r.state(), "backing off");
        // Fed 11 s with nothing out: it ran that far behind, at speed zero.
        assert!(r.stats().input_lag() >= Duration::from_secs(10));
        assert_eq!(r.stats().speed(), 0.0);
        assert_eq!(rec.discontinuities.load(Ordering::SeqCst), 1);
        script.silent.store(false, Ordering::SeqCst);
        feed(&mut r, 12_000, 3).await;
        assert_eq!(r.state(), "running");
        assert!(rec.outputs.load(Ordering::SeqCst) > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_session_is_a_seam_and_a_replayed_start_is_not() {
        let script = Script::default();
        let (mut r, rec) = runner(&script);
        r.on_event(start(1)).await;
        feed(&mut r, 0, 1).await;
        r.on_event(start(1)).await; // replayed to a lagging subscriber
        assert_eq!(r.state(), "running");
        r.on_event(start(2)).await;
        assert_eq!(r.state(), "idle");
        assert_eq!(rec.discontinuities.load(Ordering::SeqCst), 1);
        assert_eq!(script.stops.load(Ordering::SeqCst), 1);
        feed(&mut r, 2000, 1).await;
        assert_eq!(script.starts.load(Ordering::SeqCst), 2);
    }

    struct Channel(tokio::sync::mpsc::Receiver<MediaEvent>);
    impl MediaSource for Channel {
        async fn recv(&mut self) -> Option<MediaEvent> {
            self.0.recv().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_on_cancel_draining_and_finishing() {
        let script = Script::default();
        let (r, rec) = runner(&script);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(r.run(Channel(rx), cancel.clone()));
        tx.send(start(1)).await.unwrap();
        tx.send(video(0, true)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(script.starts.load(Ordering::SeqCst), 1);
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(script.stops.load(Ordering::SeqCst), 1);
        assert_eq!(rec.finished.load(Ordering::SeqCst), 1);
    }
}
