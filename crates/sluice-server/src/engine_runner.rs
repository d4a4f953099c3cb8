//! Runs one engine: bus events in, a GStreamer transcoder (or passthrough) in
//! the middle, the packager out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{AudioConfig, MediaEvent, TrackKind, VideoConfig};
use sluice_engine::{EncodedEvent, PushOutcome, TranscodeSettings, Transcoder};
use sluice_ingest::BusReceiver;
use sluice_package::Packager;
use tokio_util::sync::CancellationToken;

pub type SharedPackager = Arc<Mutex<Packager>>;

fn lock(p: &SharedPackager) -> std::sync::MutexGuard<'_, Packager> {
    // The packager's methods leave it consistent between calls; keep serving after a panic elsewhere.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub enum Mode {
    Transcode(TranscodeSettings),
    Passthrough,
}

/// Hands encoder output to the packager, counting it for the stall watchdog.
fn packager_sink(
    p: SharedPackager,
    outputs: Arc<AtomicU64>,
) -> Arc<dyn sluice_engine::EncodedSink> {
    Arc::new(move |ev: EncodedEvent| {
        outputs.fetch_add(1, Ordering::Relaxed);
        let mut p = lock(&p);
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
    })
}

/// Stops a pipeline off the async workers: going to Null joins its streaming threads,
/// which can wait for a frame in flight in an encoder.
async fn stop(t: Transcoder) {
    let _ = tokio::task::spawn_blocking(move || drop(t)).await;
}

/// Waits (bounded) for a pipeline that was sent end-of-stream to finish encoding and
/// packaging what it holds.
async fn drain(t: &Transcoder) {
    for _ in 0..60 {
        if t.poll().is_some() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

struct Session {
    id: u64,
    video: VideoConfig,
    audio: Option<AudioConfig>,
}

/// A running pipeline fed input for this long without producing anything is stalled.
fn stall_limit(mode: &Mode) -> Duration {
    match mode {
        Mode::Transcode(s) => {
            Duration::from_nanos(s.segment_duration.max(0) as u64 * 3).max(Duration::from_secs(10))
        }
        Mode::Passthrough => Duration::MAX,
    }
}

/// Test builds only: `SLUICE_TEST_ENGINE_PANIC_AFTER_SECS=N` makes the first run of
/// every engine panic after N seconds of input, so end-to-end tests can check that a
/// dead engine is noticed and restarted.
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

/// `resumed`: an earlier run of this engine died; what it packaged stays, and the next
/// segment is marked as a discontinuity.
pub async fn run(
    name: String,
    mode: Mode,
    mut rx: BusReceiver,
    packager: SharedPackager,
    cancel: CancellationToken,
    resumed: bool,
) {
    if resumed {
        lock(&packager).discontinuity();
    }
    let panic_at = injected_panic_after()
        .filter(|_| !resumed)
        .map(|d| tokio::time::Instant::now() + d);
    let stall_after = stall_limit(&mode);
    // Encoded outputs so far, and when that count last moved while input was flowing.
    let outputs = Arc::new(AtomicU64::new(0));
    let mut progress = (0u64, tokio::time::Instant::now());
    let mut last_input = tokio::time::Instant::now();
    let mut session: Option<Session> = None;
    let mut transcoder: Option<Transcoder> = None;
    let mut failed = false;
    // End-of-stream was sent to the pipeline; it is still encoding what it holds.
    let mut draining = false;
    // After a pipeline failed to start, when to try again.
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut dropped: u64 = 0;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = poll.tick() => {
                if panic_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    panic!("injected engine failure (SLUICE_TEST_ENGINE_PANIC_AFTER_SECS)");
                }
                // Watchdog: input goes in, nothing comes out.
                let now = tokio::time::Instant::now();
                let produced = outputs.load(Ordering::Relaxed);
                let fed = now.duration_since(last_input) < Duration::from_secs(2);
                if produced != progress.0 || transcoder.is_none() || draining || !fed {
                    progress = (produced, now);
                } else if now.duration_since(progress.1) > stall_after {
                    tracing::error!(engine = %name, stalled_s = stall_after.as_secs(), "pipeline produced nothing while fed; restarting it at the next keyframe");
                    if let Some(t) = transcoder.take() {
                        stop(t).await;
                    }
                    failed = true;
                    progress = (produced, now);
                    continue;
                }
                match transcoder.as_ref().and_then(|t| t.poll()) {
                    Some(Err(e)) => {
                        tracing::error!(engine = %name, error = %e, "pipeline failed; restarting at the next keyframe");
                        if let Some(t) = transcoder.take() {
                            stop(t).await;
                        }
                        failed = true;
                    }
                    Some(Ok(())) => {
                        // Drained after the publisher left: publish the last, partial segment
                        // now rather than when (or if) the next session starts.
                        if let Some(t) = transcoder.take() {
                            stop(t).await;
                        }
                        draining = false;
                        lock(&packager).discontinuity();
                    }
                    None => {}
                }
                continue;
            }
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        match ev {
            MediaEvent::Start {
                session: id,
                video,
                audio,
            } => {
                if session.as_ref().is_some_and(|s| s.id == id) {
                    continue; // replayed after a lag
                }
                // The old pipeline finishes what it holds, then stops (Null is synchronous:
                // its threads are done before the seam).
                if let Some(t) = transcoder.take() {
                    if draining {
                        drain(&t).await;
                    }
                    stop(t).await;
                }
                draining = false;
                if session.is_some() {
                    lock(&packager).discontinuity();
                }
                tracing::info!(engine = %name, session = id, width = video.width, height = video.height, audio = audio.is_some(), "input session");
                if let Mode::Passthrough = mode {
                    let mut p = lock(&packager);
                    p.set_video_config(0, video.clone());
                    if let Some(a) = &audio {
                        p.set_audio_config(a.clone());
                    }
                }
                session = Some(Session { id, video, audio });
                failed = false;
            }
            MediaEvent::Frame(frame) => {
                let Some(s) = &session else { continue };
                match &mode {
                    Mode::Passthrough => {
                        let mut p = lock(&packager);
                        match frame.track {
                            TrackKind::Video => p.push_video(0, frame),
                            TrackKind::Audio => p.push_audio(frame),
                        }
                    }
                    Mode::Transcode(settings) => {
                        if transcoder.is_none() {
                            if !(frame.track == TrackKind::Video && frame.keyframe) {
                                continue;
                            }
                            if retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
                                continue;
                            }
                            if failed {
                                lock(&packager).discontinuity();
                            }
                            // Building and starting a pipeline blocks: keep it off the async workers.
                            let (settings, video, audio, sink) = (
                                settings.clone(),
                                s.video.clone(),
                                s.audio.clone(),
                                packager_sink(packager.clone(), outputs.clone()),
                            );
                            let started = tokio::task::spawn_blocking(move || {
                                Transcoder::start(&settings, &video, audio.as_ref(), sink)
                            })
                            .await
                            .unwrap_or_else(|e| {
                                Err(sluice_engine::EngineError::Pipeline(e.to_string()))
                            });
                            match started {
                                Ok(t) => {
                                    transcoder = Some(t);
                                    retry_at = None;
                                }
                                Err(e) => {
                                    tracing::error!(engine = %name, error = %e, "cannot start pipeline; retrying in 5 s");
                                    failed = true;
                                    retry_at = Some(
                                        tokio::time::Instant::now()
                                            + std::time::Duration::from_secs(5),
                                    );
                                    continue;
                                }
                            }
                        }
                        last_input = tokio::time::Instant::now();
                        if let Some(t) = &transcoder
                            && t.push(&frame) == PushOutcome::Dropped
                        {
                            dropped += 1;
                            if dropped.is_power_of_two() {
                                tracing::warn!(engine = %name, dropped, "engine behind its input; frames dropped");
                            }
                        }
                    }
                }
            }
            MediaEvent::End { session: id } => {
                if session.as_ref().is_some_and(|s| s.id == id) {
                    match &transcoder {
                        Some(t) => {
                            t.end_of_stream();
                            draining = true;
                        }
                        None => lock(&packager).discontinuity(),
                    }
                }
            }
        }
    }
    if let Some(t) = transcoder.take() {
        t.end_of_stream();
        drain(&t).await;
        stop(t).await;
    }
    lock(&packager).finish();
    tracing::info!(engine = %name, "engine stopped");
}
