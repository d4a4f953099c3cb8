//! Decode once, scale and encode every rendition, audio encoded once.
//!
//! ```text
//! appsrc(video-in) ! h264parse ! avdec_h264 ! videoconvert(I420) ─[keyframe probe]─ tee
//!   tee. ! queue ! sluicescale ! video/x-raw,WxH ! x264enc ! video/x-h264,avc ! appsink(video-N)   (per rendition)
//! appsrc(audio-in) ! aacparse ! avdec_aac ! audioconvert ! audioresample ! avenc_aac ! appsink(audio-out)
//! ```
//!
//! Audio that already is what that chain outputs (AAC-LC, 48 kHz, stereo) skips it when
//! `audio_passthrough` is on: its frames go to the sink as they are, each held until
//! the video of its instant leaves an encoder (`HeldAudio`).
//!
//! The probe before the tee sends one downstream force-key-unit event per
//! segment boundary (the first frame whose pts crosses a multiple of the
//! segment duration), so every rendition's keyframe falls on the same frame;
//! x264's own scene-cut keyframes are off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use sluice_core::{AudioConfig, Frame, MediaTime, TrackKind, VideoConfig};

use crate::EngineError;

pub(crate) const ELEMENTS: &[&str] = &[
    "appsrc",
    "appsink",
    "h264parse",
    "avdec_h264",
    "videoconvert",
    crate::scale::FACTORY,
    "tee",
    "queue",
    "x264enc",
    "aacparse",
    "avdec_aac",
    "audioconvert",
    "audioresample",
    "avenc_aac",
    "capsfilter",
];

#[derive(Debug, Clone, PartialEq)]
pub struct RenditionSettings {
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranscodeSettings {
    /// Keyframes are forced whenever pts crosses a multiple of this.
    pub segment_duration: MediaTime,
    pub renditions: Vec<RenditionSettings>,
    pub audio_kbps: u32,
    /// Input audio that is already what the ladder outputs (AAC-LC, 48 kHz, stereo) is
    /// handed to the sink as it is (held until the video of the same instant is encoded)
    /// instead of decoded and encoded again.
    pub audio_passthrough: bool,
    /// x264 speed preset (ultrafast … veryslow).
    pub preset: String,
    /// Compressed input queued in each appsrc before frames are dropped.
    pub max_queued_bytes: u64,
    /// The same bound in media time: an engine more than this behind its input drops
    /// to the next keyframe instead of serving ever older media (about two segments).
    pub max_queued_time: MediaTime,
}

/// What an engine (or the test pattern) hands downstream.
#[derive(Debug, Clone)]
pub enum EncodedEvent {
    VideoConfig {
        rendition: usize,
        config: VideoConfig,
        fps: Option<f64>,
    },
    AudioConfig(AudioConfig),
    Video {
        rendition: usize,
        frame: Frame,
    },
    Audio(Frame),
}

/// Receives encoded output. Called from GStreamer streaming threads: keep it quick.
pub trait EncodedSink: Send + Sync + 'static {
    fn on_event(&self, ev: EncodedEvent);
}

impl<F: Fn(EncodedEvent) + Send + Sync + 'static> EncodedSink for F {
    fn on_event(&self, ev: EncodedEvent) {
        self(ev)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Dropped because the engine is behind (queue full) or waiting for a keyframe after a drop.
    Dropped,
}

pub struct Transcoder {
    pipeline: gst::Pipeline,
    video_src: gst_app::AppSrc,
    audio_src: Option<gst_app::AppSrc>,
    /// Audio passed through: input frames wait here for the video of the same instant.
    audio_direct: Option<Arc<HeldAudio>>,
    max_queued_bytes: u64,
    max_queued_time: Option<gst::ClockTime>,
    skipping_video: AtomicBool,
}

pub(crate) fn make(factory: &str, name: &str) -> Result<gst::Element, EngineError> {
    gst::ElementFactory::make(factory)
        .name(name)
        .build()
        .map_err(|e| EngineError::Build(format!("{factory}: {e}")))
}

pub(crate) fn capsfilter(name: &str, caps: gst::Caps) -> Result<gst::Element, EngineError> {
    let f = make("capsfilter", name)?;
    f.set_property("caps", caps);
    Ok(f)
}

/// Adds `chain` to the pipeline and links it in order.
pub(crate) fn add_chain(
    pipeline: &gst::Pipeline,
    chain: &[&gst::Element],
) -> Result<(), EngineError> {
    pipeline.add_many(chain.iter().copied())?;
    gst::Element::link_many(chain.iter().copied())?;
    Ok(())
}

/// H.264 as the packager takes it: AVCC, one access unit per buffer.
pub(crate) fn h264_avc_caps() -> gst::caps::Builder<gst::caps::NoFeature> {
    gst::Caps::builder("video/x-h264")
        .field("stream-format", "avc")
        .field("alignment", "au")
}

/// Raw audio in, AAC-LC 48 kHz stereo out: `audioconvert ! audioresample ! caps ! avenc_aac`.
pub(crate) fn aac_encoder(prefix: &str, kbps: u32) -> Result<[gst::Element; 4], EngineError> {
    let enc = make("avenc_aac", &format!("{prefix}-encode"))?;
    enc.set_property("bitrate", kbps as i32 * 1000);
    Ok([
        make("audioconvert", &format!("{prefix}-convert"))?,
        make("audioresample", &format!("{prefix}-resample"))?,
        capsfilter(
            &format!("{prefix}-format"),
            gst::Caps::builder("audio/x-raw")
                .field("rate", 48000i32)
                .field("channels", 2i32)
                .build(),
        )?,
        enc,
    ])
}

/// An appsink whose samples become [`EncodedEvent`]s for `sink`.
pub(crate) fn encoded_output(
    name: &str,
    track: TrackKind,
    rendition: usize,
    sink: Arc<dyn EncodedSink>,
) -> gst_app::AppSink {
    let appsink = gst_app::AppSink::builder().name(name).sync(false).build();
    attach_sink(&appsink, track, rendition, sink);
    appsink
}

/// A live, non-blocking appsrc in time format holding at most `max_bytes`.
fn live_appsrc(name: &str, caps: &gst::Caps, max_bytes: u64) -> gst_app::AppSrc {
    gst_app::AppSrc::builder()
        .name(name)
        .caps(caps)
        .format(gst::Format::Time)
        .is_live(true)
        .max_bytes(max_bytes)
        .block(false)
        .build()
}

/// Audio passed through, held until the video of the same instant leaves an encoder.
///
/// Transcoded audio and video leave the pipeline about together; audio that skips the
/// pipeline would otherwise run ahead of the video by the decode and encode delay, and
/// the audio playlist ahead of the video ones (LL-HLS rendition reports a part or more
/// apart). Frames are released in order, just before the first video frame of any
/// rendition at or past their pts is handed on (so the packager has the audio of an
/// instant when that frame closes a part), or when more than [`HeldAudio::MAX`] wait
/// (video stalled: audio goes on).
pub(crate) struct HeldAudio {
    sink: Arc<dyn EncodedSink>,
    state: Mutex<Held>,
}

struct Held {
    frames: std::collections::VecDeque<Frame>,
    /// The latest video pts out of any rendition.
    reached: Option<i64>,
}

impl HeldAudio {
    /// About ten seconds of AAC at 48 kHz.
    const MAX: usize = 480;

    fn new(sink: Arc<dyn EncodedSink>) -> HeldAudio {
        HeldAudio {
            sink,
            state: Mutex::new(Held {
                frames: std::collections::VecDeque::new(),
                reached: None,
            }),
        }
    }

    // Frames are sent with the lock held, so that releases from different threads
    // (the caller's push, each rendition's streaming thread) keep their order.

    fn push(&self, frame: Frame) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.frames.push_back(frame);
        let over = st.frames.len().saturating_sub(Self::MAX);
        let mut ready: Vec<Frame> = st.frames.drain(..over).collect();
        ready.extend(st.take_reached());
        self.send(ready);
    }

    fn release_all(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ready = st.frames.drain(..).collect();
        self.send(ready);
    }

    fn send(&self, frames: Vec<Frame>) {
        for f in frames {
            self.sink.on_event(EncodedEvent::Audio(f));
        }
    }
}

impl Held {
    /// The frames the video has reached.
    fn take_reached(&mut self) -> Vec<Frame> {
        let Some(until) = self.reached else {
            return Vec::new();
        };
        let n = self.frames.iter().take_while(|f| f.pts <= until).count();
        self.frames.drain(..n).collect()
    }
}

impl EncodedSink for HeldAudio {
    fn on_event(&self, ev: EncodedEvent) {
        if let EncodedEvent::Video { frame, .. } = &ev {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.reached = Some(st.reached.map_or(frame.pts, |p| p.max(frame.pts)));
            let ready = st.take_reached();
            self.send(ready);
        }
        self.sink.on_event(ev);
    }
}

/// Is `audio` what the ladder outputs (`aac_encoder`): AAC-LC, 48 kHz, stereo?
pub(crate) fn passes_through(audio: &AudioConfig) -> bool {
    audio.object_type == 2 && audio.sample_rate == 48000 && audio.channels == 2
}

/// x264 settings shared by the ladder and the benchmark's ffmpeg command line:
/// no B-frames, no lookahead (low latency), no scene-cut keyframes.
pub(crate) fn x264(
    name: &str,
    preset: &str,
    kbps: u32,
    key_int_max: u32,
) -> Result<gst::Element, EngineError> {
    let enc = make("x264enc", name)?;
    enc.set_property_from_str("speed-preset", preset);
    enc.set_property_from_str("tune", "zerolatency");
    enc.set_property("bitrate", kbps);
    enc.set_property("key-int-max", key_int_max);
    enc.set_property("bframes", 0u32);
    enc.set_property("option-string", "scenecut=0");
    Ok(enc)
}

pub(crate) fn clock_time(t: MediaTime) -> Option<gst::ClockTime> {
    u64::try_from(t).ok().map(gst::ClockTime::from_nseconds)
}

fn to_media_time(t: Option<gst::ClockTime>) -> Option<MediaTime> {
    t.and_then(|t| i64::try_from(t.nseconds()).ok())
}

/// Installs an appsink callback that turns samples into [`Frame`]s and reports
/// codec configuration from caps whenever it changes.
fn attach_sink(
    appsink: &gst_app::AppSink,
    track: TrackKind,
    rendition: usize,
    sink: Arc<dyn EncodedSink>,
) {
    let last_codec_data: Mutex<Option<gst::Buffer>> = Mutex::new(None);
    // Lines logged on GStreamer's streaming threads carry the engine's span (its ids).
    let span = tracing::Span::current();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |appsink| {
                let _span = span.enter();
                let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(s) = sample.caps().and_then(|c| c.structure(0))
                    && let Ok(cd) = s.get::<gst::Buffer>("codec_data")
                {
                    let mut last = last_codec_data.lock().unwrap_or_else(|e| e.into_inner());
                    let changed = last.as_ref().map(|l| l.map_readable().ok().map(|m| m.to_vec())) != Some(cd.map_readable().ok().map(|m| m.to_vec()));
                    if changed {
                        let bytes = cd.map_readable().map(|m| Bytes::copy_from_slice(&m)).map_err(|_| gst::FlowError::Error)?;
                        let ev = match track {
                            TrackKind::Video => match VideoConfig::from_avcc(bytes) {
                                Ok(config) => {
                                    let fps = s
                                        .get::<gst::Fraction>("framerate")
                                        .ok()
                                        .filter(|f| f.numer() > 0 && f.denom() > 0)
                                        .map(|f| f.numer() as f64 / f.denom() as f64);
                                    Some(EncodedEvent::VideoConfig { rendition, config, fps })
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "encoder produced an unreadable avcC");
                                    None
                                }
                            },
                            TrackKind::Audio => match AudioConfig::from_asc(bytes) {
                                Ok(c) => Some(EncodedEvent::AudioConfig(c)),
                                Err(e) => {
                                    tracing::error!(error = %e, "encoder produced an unreadable AudioSpecificConfig");
                                    None
                                }
                            },
                        };
                        if let Some(ev) = ev {
                            sink.on_event(ev);
                        }
                        *last = Some(cd);
                    }
                }
                let Some(buffer) = sample.buffer() else { return Ok(gst::FlowSuccess::Ok) };
                // Encoders shift their output segment (x264enc by 1000 hours, so that dts is never
                // negative); running time undoes that and is the input's media time again.
                let Some(raw_pts) = to_media_time(buffer.pts()) else { return Ok(gst::FlowSuccess::Ok) };
                let Some(pts) = sample
                    .segment()
                    .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                    .and_then(|s| s.to_running_time_full(buffer.pts()))
                    .map(|rt| match rt {
                        gst::Signed::Positive(t) => t.nseconds() as i64,
                        gst::Signed::Negative(t) => -(t.nseconds() as i64),
                    })
                else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let dts = to_media_time(buffer.dts()).map_or(pts, |d| d - raw_pts + pts);
                let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                let data = buffer.map_readable().map(|m| Bytes::copy_from_slice(&m)).map_err(|_| gst::FlowError::Error)?;
                let frame = Frame { track, pts, dts, keyframe, data };
                sink.on_event(match track {
                    TrackKind::Video => EncodedEvent::Video { rendition, frame },
                    TrackKind::Audio => EncodedEvent::Audio(frame),
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

impl Transcoder {
    /// Builds and starts the pipeline for one input session.
    pub fn start(
        settings: &TranscodeSettings,
        video: &VideoConfig,
        audio: Option<&AudioConfig>,
        sink: Arc<dyn EncodedSink>,
    ) -> Result<Transcoder, EngineError> {
        crate::init()?;
        if settings.renditions.is_empty() {
            return Err(EngineError::Build(
                "a ladder needs at least one rendition".into(),
            ));
        }
        let pipeline = gst::Pipeline::with_name("engine");

        let direct = audio
            .filter(|a| settings.audio_passthrough && passes_through(a))
            .map(|a| {
                tracing::info!(
                    sample_rate = a.sample_rate,
                    channels = a.channels,
                    "audio passed through (already AAC-LC at the ladder's rate and channels)"
                );
                sink.on_event(EncodedEvent::AudioConfig(a.clone()));
                Arc::new(HeldAudio::new(sink.clone()))
            });
        // With audio passed through, video leaves through HeldAudio, which lets the audio
        // held for each instant go just before the first video frame of that instant.
        let video_sink: Arc<dyn EncodedSink> = match &direct {
            Some(held) => held.clone(),
            None => sink.clone(),
        };

        let video_caps = h264_avc_caps()
            .field("codec_data", gst::Buffer::from_slice(video.avcc.clone()))
            .build();
        let video_src = live_appsrc("video-in", &video_caps, settings.max_queued_bytes);
        let parse = make("h264parse", "video-parse")?;
        let decode = make("avdec_h264", "video-decode")?;
        let convert = make("videoconvert", "video-convert")?;
        let tee = make("tee", "ladder")?;
        add_chain(
            &pipeline,
            &[video_src.upcast_ref(), &parse, &decode, &convert, &tee],
        )?;

        install_keyframe_probe(&convert, settings.segment_duration)?;

        // Generous: forced keyframes come every segment; this only guards against a missed one.
        let key_int_max = ((settings.segment_duration as f64 / 1e9) * 120.0)
            .ceil()
            .max(60.0) as u32;
        for (i, r) in settings.renditions.iter().enumerate() {
            let queue = make("queue", &format!("video-{i}-queue"))?;
            let scale = make(crate::scale::FACTORY, &format!("video-{i}-scale"))?;
            let size = capsfilter(
                &format!("video-{i}-size"),
                gst::Caps::builder("video/x-raw")
                    .field("width", r.width as i32)
                    .field("height", r.height as i32)
                    .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                    .build(),
            )?;
            let enc = x264(
                &format!("video-{i}-encode"),
                &settings.preset,
                r.video_kbps,
                key_int_max,
            )?;
            let out_caps = capsfilter(&format!("video-{i}-format"), h264_avc_caps().build())?;
            let out = encoded_output(
                &format!("video-{i}-out"),
                TrackKind::Video,
                i,
                video_sink.clone(),
            );
            add_chain(
                &pipeline,
                &[&queue, &scale, &size, &enc, &out_caps, out.upcast_ref()],
            )?;
            tee.link(&queue)?;
        }

        let audio_src = match audio {
            None => None,
            Some(_) if direct.is_some() => None,
            Some(a) => {
                let caps = gst::Caps::builder("audio/mpeg")
                    .field("mpegversion", 4i32)
                    .field("stream-format", "raw")
                    .field("codec_data", gst::Buffer::from_slice(a.asc.clone()))
                    .build();
                let src = live_appsrc("audio-in", &caps, settings.max_queued_bytes / 8);
                let [convert, resample, format, encode] =
                    aac_encoder("audio", settings.audio_kbps)?;
                let out = encoded_output("audio-out", TrackKind::Audio, 0, sink.clone());
                add_chain(
                    &pipeline,
                    &[
                        src.upcast_ref(),
                        &make("aacparse", "audio-parse")?,
                        &make("avdec_aac", "audio-decode")?,
                        &convert,
                        &resample,
                        &format,
                        &encode,
                        out.upcast_ref(),
                    ],
                )?;
                Some(src)
            }
        };

        pipeline.set_state(gst::State::Playing)?;
        Ok(Transcoder {
            pipeline,
            video_src,
            audio_src,
            audio_direct: direct,
            max_queued_bytes: settings.max_queued_bytes,
            max_queued_time: clock_time(settings.max_queued_time).filter(|t| !t.is_zero()),
            skipping_video: AtomicBool::new(false),
        })
    }

    /// Queues one input frame. Never blocks: when the engine is behind, video
    /// is dropped up to the next keyframe (and counted by the caller).
    pub fn push(&self, frame: &Frame) -> PushOutcome {
        let (src, limit) = match frame.track {
            TrackKind::Video => (&self.video_src, self.max_queued_bytes),
            TrackKind::Audio => match (&self.audio_src, &self.audio_direct) {
                (Some(a), _) => (a, self.max_queued_bytes / 8),
                (None, Some(held)) => {
                    held.push(frame.clone());
                    return PushOutcome::Queued;
                }
                (None, None) => return PushOutcome::Dropped,
            },
        };
        let (Some(pts), Some(dts)) = (clock_time(frame.pts), clock_time(frame.dts)) else {
            return PushOutcome::Dropped;
        };
        if frame.track == TrackKind::Video {
            if self.skipping_video.load(Ordering::Relaxed) {
                if !frame.keyframe {
                    return PushOutcome::Dropped;
                }
                self.skipping_video.store(false, Ordering::Relaxed);
            }
            if self.full(src, limit) {
                self.skipping_video.store(true, Ordering::Relaxed);
                return PushOutcome::Dropped;
            }
        } else if self.full(src, limit) {
            return PushOutcome::Dropped;
        }
        let mut buffer = gst::Buffer::from_slice(frame.data.clone());
        {
            let b = buffer.get_mut().expect("a new buffer is writable");
            b.set_pts(pts);
            b.set_dts(dts);
            if !frame.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        match src.push_buffer(buffer) {
            Ok(_) => PushOutcome::Queued,
            Err(_) => PushOutcome::Dropped,
        }
    }

    /// Is `src` holding `limit` bytes, or more media time than allowed?
    fn full(&self, src: &gst_app::AppSrc, limit: u64) -> bool {
        src.current_level_bytes() >= limit
            || self
                .max_queued_time
                .is_some_and(|max| src.current_level_time() >= max)
    }

    /// Signals the end of the input; the encoders drain into the sinks.
    pub fn end_of_stream(&self) {
        let _ = self.video_src.end_of_stream();
        if let Some(a) = &self.audio_src {
            let _ = a.end_of_stream();
        }
    }

    /// The first error or end-of-stream the pipeline posted since the last call.
    pub fn poll(&self) -> Option<Result<(), EngineError>> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    let src = e
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    return Some(Err(EngineError::Pipeline(format!("{src}: {}", e.error()))));
                }
                gst::MessageView::Eos(_) => {
                    if let Some(held) = &self.audio_direct {
                        held.release_all();
                    }
                    return Some(Ok(()));
                }
                _ => {}
            }
        }
        None
    }
}

impl Drop for Transcoder {
    fn drop(&mut self) {
        // Null is synchronous: once it returns no streaming thread calls the sinks again.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Forces a keyframe on the first frame of every segment: sends a downstream
/// force-key-unit event just before the buffer whose pts enters a new segment.
fn install_keyframe_probe(element: &gst::Element, segment: MediaTime) -> Result<(), EngineError> {
    let pad = element
        .static_pad("src")
        .ok_or_else(|| EngineError::Build("videoconvert has no src pad".into()))?;
    let segment = segment.max(1);
    let last: Mutex<Option<i64>> = Mutex::new(None);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let index = (pts.nseconds() as i64).div_euclid(segment);
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != Some(index) {
            *last = Some(index);
            // "As soon as possible", i.e. the very next frame, which is this buffer: the event is
            // serialized just before it. An explicit running time does not work on GStreamer
            // 1.22, whose video encoders compare it with frame times shifted by their minimum
            // pts (x264enc: 1000 hours), so the request would be ignored.
            let ev = gst_video::DownstreamForceKeyUnitEvent::builder()
                .timestamp(pts)
                .stream_time(pts)
                .running_time(Option::<gst::ClockTime>::None)
                .all_headers(true)
                .count(index.max(0) as u32)
                .build();
            if !pad.push_event(ev) {
                tracing::debug!("force-key-unit event not handled");
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(object_type: u8, sample_rate: u32, channels: u8) -> AudioConfig {
        AudioConfig {
            asc: Bytes::new(),
            object_type,
            sample_rate,
            channels,
        }
    }

    #[test]
    fn only_aac_lc_at_48_khz_stereo_passes_through() {
        assert!(passes_through(&audio(2, 48_000, 2)));
        assert!(!passes_through(&audio(2, 44_100, 2)), "other rate");
        assert!(!passes_through(&audio(2, 48_000, 1)), "mono");
        assert!(!passes_through(&audio(2, 48_000, 6)), "5.1");
        assert!(!passes_through(&audio(5, 48_000, 2)), "HE-AAC (SBR)");
        assert!(!passes_through(&audio(29, 48_000, 2)), "HE-AAC v2 (PS)");
    }
}
