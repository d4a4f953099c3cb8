//! Decode once, scale and encode every rendition, audio encoded once.
//!
//! ```text
//! appsrc(video-in) ! h264parse ! avdec_h264 ! videoconvert(I420) ─[keyframe probe]─ tee
//!   tee. ! queue ! sluicescale ! video/x-raw,WxH ! x264enc ! video/x-h264,avc ! appsink(video-N)   (per rendition)
//! appsrc(audio-in) ! aacparse ! avdec_aac ! audioconvert ! audioresample ! avenc_aac ! appsink(audio-out)
//! ```
//!
//! Audio that already is what that chain outputs (AAC-LC, 48 kHz, stereo) skips it when
//! `audio_passthrough` is on; with `reuse_top_rung`, input video of the top rung's size
//! whose keyframes fall on the segment grid is that rung ([`Reuse`]). Both go to the sink
//! as they are, each frame held until the video of its instant leaves an encoder
//! ([`HeldOutput`]). Hardware encoders ([`crate::encoder`]) get `videoconvert` before and
//! `h264parse` after them.
//!
//! The probe before the tee sends one downstream force-key-unit event per
//! segment boundary (the first frame whose pts crosses a multiple of the
//! segment duration), so every rendition's keyframe falls on the same frame;
//! x264's own scene-cut keyframes are off.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use sluice_core::{AudioConfig, Frame, MediaTime, TrackKind, VideoConfig};

use crate::EngineError;
use crate::encoder::{self, Encoder};

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
    /// The first rendition is the input itself while the input has its size and
    /// keyframes on the segment grid ([`TopRung`]).
    pub reuse_top_rung: bool,
    /// The encoder every rendition is built with ([`crate::encoder::resolve`]).
    pub encoder: Encoder,
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
    /// Frames that skip the pipeline (audio passed through, the reused top rung) wait
    /// here for the encoded video of the same instant.
    held: Arc<HeldOutput>,
    audio_direct: bool,
    reuse: Option<Reuse>,
    max_queued_bytes: u64,
    max_queued_time: Option<gst::ClockTime>,
    skipping_video: AtomicBool,
    reuse_asked: bool,
    /// The reused top rung's encoder branch, not built while the input is that rung
    /// (`None` without reuse, and once built).
    top_branch: Mutex<Option<Branch>>,
}

/// One rendition's branch after the tee: `queue ! sluicescale ! WxH ! encoder ! AVCC !
/// appsink` (hardware encoders: `videoconvert` before, `h264parse` after).
struct Branch {
    index: usize,
    rendition: RenditionSettings,
    encoder: Encoder,
    preset: String,
    key_int_max: u32,
    sink: Arc<dyn EncodedSink>,
}

impl Branch {
    /// Adds the branch to `pipeline`, linked in order; its elements, queue first, sink last.
    fn add_to(&self, pipeline: &gst::Pipeline) -> Result<Vec<gst::Element>, EngineError> {
        let (i, r) = (self.index, &self.rendition);
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
        let enc = encoder::build(
            self.encoder,
            &format!("video-{i}-encode"),
            &self.preset,
            r.video_kbps,
            self.key_int_max,
        )?;
        let out_caps = capsfilter(&format!("video-{i}-format"), h264_avc_caps().build())?;
        let out = encoded_output(
            &format!("video-{i}-out"),
            TrackKind::Video,
            i,
            self.sink.clone(),
        );
        let chain = if self.encoder.is_hardware() {
            // Into the surface format the encoder takes; its byte-stream out into AVCC.
            let to_surface = make("videoconvert", &format!("video-{i}-surface"))?;
            let parse = make("h264parse", &format!("video-{i}-parse"))?;
            vec![
                queue,
                scale,
                size,
                to_surface,
                enc,
                parse,
                out_caps,
                out.upcast(),
            ]
        } else {
            vec![queue, scale, size, enc, out_caps, out.upcast()]
        };
        add_chain(pipeline, &chain.iter().collect::<Vec<_>>())?;
        Ok(chain)
    }
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

/// Output that skips the pipeline (audio passed through, the reused top rung), held until
/// the encoded video of the same instant leaves an encoder.
///
/// Encoded audio and video leave the pipeline about together; output that skips the
/// pipeline would otherwise run ahead of the encoded video by the decode and encode
/// delay, and its playlist ahead of the others (LL-HLS rendition reports a part or more
/// apart). Held frames are released in order, just before the first encoded video frame
/// of any rendition at or past their decode time is handed on (so the packager has them
/// when that frame closes a part), or when more than [`HeldOutput::MAX`] wait (video
/// stalled: the rest goes on). With nothing encoded to wait for (the only rendition is
/// the reused one) nothing is held.
pub(crate) struct HeldOutput {
    sink: Arc<dyn EncodedSink>,
    hold: bool,
    state: Mutex<Held>,
}

struct Held {
    events: std::collections::VecDeque<EncodedEvent>,
    /// The latest video pts out of any encoder.
    reached: Option<i64>,
}

/// The decode time a held event is released at.
fn held_dts(ev: &EncodedEvent) -> i64 {
    match ev {
        EncodedEvent::Audio(f) | EncodedEvent::Video { frame: f, .. } => f.dts,
        _ => i64::MIN,
    }
}

impl HeldOutput {
    /// About ten seconds of 60 fps video and 48 kHz AAC.
    const MAX: usize = 1024;

    fn new(sink: Arc<dyn EncodedSink>, hold: bool) -> HeldOutput {
        HeldOutput {
            sink,
            hold,
            state: Mutex::new(Held {
                events: std::collections::VecDeque::new(),
                reached: None,
            }),
        }
    }

    // Events are sent with the lock held, so that releases from different threads
    // (the caller's push, each rendition's streaming thread) keep their order.

    fn push(&self, ev: EncodedEvent) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !self.hold {
            self.sink.on_event(ev);
            return;
        }
        st.events.push_back(ev);
        let over = st.events.len().saturating_sub(Self::MAX);
        let mut ready: Vec<EncodedEvent> = st.events.drain(..over).collect();
        ready.extend(st.take_reached());
        self.send(ready);
    }

    fn release_all(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ready = st.events.drain(..).collect();
        self.send(ready);
    }

    fn send(&self, events: Vec<EncodedEvent>) {
        for ev in events {
            self.sink.on_event(ev);
        }
    }
}

impl Held {
    /// The events the encoded video has reached.
    fn take_reached(&mut self) -> Vec<EncodedEvent> {
        let Some(until) = self.reached else {
            return Vec::new();
        };
        let n = self
            .events
            .iter()
            .take_while(|ev| held_dts(ev) <= until)
            .count();
        self.events.drain(..n).collect()
    }
}

impl EncodedSink for HeldOutput {
    fn on_event(&self, ev: EncodedEvent) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ready = match &ev {
            EncodedEvent::Video { frame, .. } => {
                st.reached = Some(st.reached.map_or(frame.pts, |p| p.max(frame.pts)));
                st.take_reached()
            }
            // An encoder's first configuration for a rendition that was reused until now:
            // every reused frame goes first (they all come before the encoder's).
            EncodedEvent::VideoConfig { rendition, .. } => {
                let last = st.events.iter().rposition(
                    |e| matches!(e, EncodedEvent::Video { rendition: r, .. } if r == rendition),
                );
                last.map_or_else(Vec::new, |i| st.events.drain(..=i).collect())
            }
            _ => Vec::new(),
        };
        self.send(ready);
        self.sink.on_event(ev);
    }
}

/// What the top rendition is, when `reuse_top_rung` is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopRung {
    /// The input as it arrives.
    Reused,
    /// Encoded: the input does not have the rendition's size.
    Encoded,
    /// Was the input until a segment boundary without an input keyframe; encoded since.
    FellBack,
}

impl TopRung {
    pub fn as_str(self) -> &'static str {
        match self {
            TopRung::Reused => "reused",
            TopRung::Encoded => "encoded",
            TopRung::FellBack => "fell_back",
        }
    }
}

/// The segment grid keyframes are forced on: multiples of the segment duration, shifted
/// by `offset` when the top rung reuses an input whose keyframes come a little after the
/// lines (an encoder with B-frames presents its first keyframe a few frames after the
/// decode time its session starts at).
pub(crate) struct Grid {
    segment: MediaTime,
    offset: AtomicI64,
}

impl Grid {
    fn new(segment: MediaTime) -> Grid {
        Grid {
            segment: segment.max(1),
            offset: AtomicI64::new(0),
        }
    }

    /// The segment a frame at `pts` belongs to.
    fn index(&self, pts: MediaTime) -> i64 {
        pts.saturating_sub(self.offset.load(Ordering::Relaxed))
            .div_euclid(self.segment)
    }

    /// The largest offset taken: a keyframe later than this after a line is off the grid.
    fn max_offset(&self) -> MediaTime {
        (self.segment / 4).min(250_000_000)
    }
}

/// The top rung made of the input's own frames, while its keyframes stay on the grid.
///
/// The input's first keyframe sets the grid's offset (at most [`Grid::max_offset`]
/// after a line). Input frames arrive in decode order; the first one of each new segment
/// (its pts past the newest segment seen) must be a keyframe. The first that is not
/// breaks the reuse at that boundary: reused frames are those decoded before it, and the
/// rung's encoder (not built until then) takes over from the first frame of the new
/// segment in presentation order, which the probe before the tee makes a
/// keyframe in every rendition. With B-frames a few frames of the old segment may decode
/// after the breaking frame: they need it, so they are in neither (the last reused
/// picture shows a little longer, once).
struct Reuse {
    grid: Arc<Grid>,
    /// The newest segment index among input frames; `i64::MIN` before the first.
    index: AtomicI64,
    /// The segment the encoder makes the rung from; `i64::MAX` while reused.
    from_segment: AtomicI64,
    /// From this pts on the encoder makes the rung; `i64::MAX` while reused.
    encode_from: Arc<AtomicI64>,
}

impl Reuse {
    fn new(grid: Arc<Grid>) -> Reuse {
        Reuse {
            grid,
            index: AtomicI64::new(i64::MIN),
            from_segment: AtomicI64::new(i64::MAX),
            encode_from: Arc::new(AtomicI64::new(i64::MAX)),
        }
    }

    fn state(&self) -> TopRung {
        if self.encode_from.load(Ordering::Relaxed) == i64::MAX {
            TopRung::Reused
        } else {
            TopRung::FellBack
        }
    }

    /// The input frame as the reused rung carries it, or `None` once the encoder makes it.
    fn take(&self, frame: &Frame) -> Option<Frame> {
        let first = self.index.load(Ordering::Relaxed) == i64::MIN;
        let mut on_grid = true;
        if first {
            let offset = frame.pts.rem_euclid(self.grid.segment);
            on_grid = frame.keyframe && offset <= self.grid.max_offset();
            if on_grid {
                self.grid.offset.store(offset, Ordering::Relaxed);
            }
        }
        let index = self.grid.index(frame.pts);
        let opens = index > self.index.fetch_max(index, Ordering::Relaxed);
        if self.state() == TopRung::FellBack {
            // A frame of the new segment decoded after the breaking one: the encoder starts
            // at the earliest of them.
            if index >= self.from_segment.load(Ordering::Relaxed) {
                self.encode_from.fetch_min(frame.pts, Ordering::Relaxed);
            }
            return None;
        }
        if !on_grid || (opens && !frame.keyframe) {
            self.from_segment.store(index, Ordering::Relaxed);
            self.encode_from.store(frame.pts, Ordering::Relaxed);
            tracing::warn!(
                pts = frame.pts,
                segment = index,
                "input keyframes are not on the segment grid: the top rendition is encoded from here on"
            );
            return None;
        }
        // Keyframes that do not open a segment lose the flag, so that the packager cuts
        // this rung where the encoders cut the others.
        let mut out = frame.clone();
        out.keyframe = frame.keyframe && opens;
        Some(out)
    }
}

/// Is `audio` what the ladder outputs (`aac_encoder`): AAC-LC, 48 kHz, stereo?
pub(crate) fn passes_through(audio: &AudioConfig) -> bool {
    audio.object_type == 2 && audio.sample_rate == 48000 && audio.channels == 2
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

        let audio_direct = audio.is_some_and(|a| settings.audio_passthrough && passes_through(a));
        if let Some(a) = audio.filter(|_| audio_direct) {
            tracing::info!(
                sample_rate = a.sample_rate,
                channels = a.channels,
                "audio passed through (already AAC-LC at the ladder's rate and channels)"
            );
            sink.on_event(EncodedEvent::AudioConfig(a.clone()));
        }
        let grid = Arc::new(Grid::new(settings.segment_duration));
        let top = &settings.renditions[0];
        let reuse = if !settings.reuse_top_rung {
            None
        } else if (video.width, video.height) == (top.width, top.height) {
            tracing::info!(
                width = video.width,
                height = video.height,
                "top rendition reuses the input while its keyframes stay on the segment grid"
            );
            sink.on_event(EncodedEvent::VideoConfig {
                rendition: 0,
                config: video.clone(),
                fps: None,
            });
            Some(Reuse::new(grid.clone()))
        } else {
            tracing::info!(
                input = format!("{}x{}", video.width, video.height),
                rung = format!("{}x{}", top.width, top.height),
                "top rendition encoded: the input does not have its size"
            );
            None
        };
        // Encoded video leaves through `held`, which lets what it holds for each instant
        // go just before the first encoded video frame of that instant.
        let encoded_video = settings.renditions.len() > usize::from(reuse.is_some());
        let held = Arc::new(HeldOutput::new(sink.clone(), encoded_video));
        let video_sink: Arc<dyn EncodedSink> = held.clone();

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

        install_keyframe_probe(&convert, grid)?;

        // Generous: forced keyframes come every segment; this only guards against a missed one.
        let key_int_max = ((settings.segment_duration as f64 / 1e9) * 120.0)
            .ceil()
            .max(60.0) as u32;
        let branch = |i: usize| Branch {
            index: i,
            rendition: settings.renditions[i].clone(),
            encoder: settings.encoder,
            preset: settings.preset.clone(),
            key_int_max,
            sink: video_sink.clone(),
        };
        for i in 0..settings.renditions.len() {
            if i == 0 && reuse.is_some() {
                // Built if and when the input's keyframes leave the grid.
                continue;
            }
            let chain = branch(i).add_to(&pipeline)?;
            tee.link(&chain[0])?;
        }
        let top_branch = Mutex::new(reuse.as_ref().map(|_| branch(0)));

        let audio_src = match audio {
            None => None,
            Some(_) if audio_direct => None,
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
            held,
            audio_direct,
            reuse,
            max_queued_bytes: settings.max_queued_bytes,
            max_queued_time: clock_time(settings.max_queued_time).filter(|t| !t.is_zero()),
            skipping_video: AtomicBool::new(false),
            reuse_asked: settings.reuse_top_rung,
            top_branch,
        })
    }

    /// Queues one input frame. Never blocks: when the engine is behind, video
    /// is dropped up to the next keyframe (and counted by the caller).
    pub fn push(&self, frame: &Frame) -> PushOutcome {
        let (src, limit) = match frame.track {
            TrackKind::Video => (&self.video_src, self.max_queued_bytes),
            TrackKind::Audio => match &self.audio_src {
                Some(a) => (a, self.max_queued_bytes / 8),
                None if self.audio_direct => {
                    self.held.push(EncodedEvent::Audio(frame.clone()));
                    return PushOutcome::Queued;
                }
                None => return PushOutcome::Dropped,
            },
        };
        let (Some(pts), Some(dts)) = (clock_time(frame.pts), clock_time(frame.dts)) else {
            return PushOutcome::Dropped;
        };
        if frame.track == TrackKind::Video {
            if let Some(reuse) = &self.reuse {
                let was_reused = reuse.state() == TopRung::Reused;
                match reuse.take(frame) {
                    Some(frame) => self.held.push(EncodedEvent::Video {
                        rendition: 0,
                        frame,
                    }),
                    // This frame broke the reuse.
                    None if was_reused => self.attach_top_branch(reuse),
                    None => {}
                }
            }
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

    /// The reused rung's encoder branch, once the reuse broke: built, started and linked
    /// to the tee before the frame that broke it goes into the pipeline (the decoder's
    /// frames before that boundary are dropped at its queue by the gate).
    fn attach_top_branch(&self, reuse: &Reuse) {
        let Some(branch) = self
            .top_branch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let attach = || -> Result<(), EngineError> {
            let chain = branch.add_to(&self.pipeline)?;
            install_reuse_gate(&chain[0], reuse.encode_from.clone())?;
            // Started downstream first, so that nothing flows into an element not playing;
            // its sink must not hold the running pipeline back waiting for a preroll.
            chain[chain.len() - 1].set_property("async", false);
            for e in chain.iter().rev() {
                e.sync_state_with_parent()?;
            }
            let tee = self
                .pipeline
                .by_name("ladder")
                .ok_or_else(|| EngineError::Build("no ladder tee".into()))?;
            tee.link(&chain[0])?;
            Ok(())
        };
        if let Err(e) = attach() {
            tracing::error!(error = %e, "could not start the top rendition's encoder: it stops here");
        }
    }

    /// What the top rendition is, when its reuse was asked for.
    pub fn top_rung(&self) -> Option<TopRung> {
        match &self.reuse {
            Some(r) => Some(r.state()),
            None if self.reuse_asked => Some(TopRung::Encoded),
            None => None,
        }
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
                    self.held.release_all();
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
        // The pipeline's elements are freed when its fields drop, just after this.
        crate::c_heap::after_pipeline_freed();
    }
}

/// The reused top rung's encoder branch, attached when the reuse broke, takes pictures
/// and keyframe requests from `encode_from` on: the decoder's earlier frames are dropped.
fn install_reuse_gate(
    queue: &gst::Element,
    encode_from: Arc<AtomicI64>,
) -> Result<(), EngineError> {
    let pad = queue
        .static_pad("sink")
        .ok_or_else(|| EngineError::Build("queue has no sink pad".into()))?;
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
        move |_, info| {
            let pts = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => b.pts(),
                Some(gst::PadProbeData::Event(ev)) if gst_video::ForceKeyUnitEvent::is(ev) => {
                    gst_video::DownstreamForceKeyUnitEvent::parse(ev)
                        .ok()
                        .and_then(|k| k.timestamp)
                }
                _ => return gst::PadProbeReturn::Ok,
            };
            let from = encode_from.load(Ordering::Relaxed);
            match pts.and_then(|p| i64::try_from(p.nseconds()).ok()) {
                Some(p) if p >= from => gst::PadProbeReturn::Ok,
                // Handled: taken here, the branch goes on as if delivered (dropping would
                // have GStreamer and gstreamer-rs both release it).
                _ => gst::PadProbeReturn::Handled,
            }
        },
    );
    Ok(())
}

/// Forces a keyframe on the first frame of every segment: sends a downstream
/// force-key-unit event just before the buffer whose pts enters a new segment.
fn install_keyframe_probe(element: &gst::Element, grid: Arc<Grid>) -> Result<(), EngineError> {
    let pad = element
        .static_pad("src")
        .ok_or_else(|| EngineError::Build("videoconvert has no src pad".into()))?;
    let last: Mutex<Option<i64>> = Mutex::new(None);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let index = grid.index(pts.nseconds() as i64);
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

    fn video(pts: i64, dts: i64, keyframe: bool) -> Frame {
        Frame {
            track: TrackKind::Video,
            pts,
            dts,
            keyframe,
            data: Bytes::from_static(b"x"),
        }
    }

    /// Feeds `(pts, keyframe)` in decode order; what the reused rung got (pts, keyframe).
    fn reuse(segment: i64, frames: &[(i64, bool)]) -> (Reuse, Vec<(i64, bool)>) {
        let r = Reuse::new(Arc::new(Grid::new(segment)));
        let out = frames
            .iter()
            .enumerate()
            .filter_map(|(dts, &(pts, key))| r.take(&video(pts, dts as i64 - 2, key)))
            .map(|f| (f.pts, f.keyframe))
            .collect();
        (r, out)
    }

    #[test]
    fn reused_while_every_segment_opens_on_an_input_keyframe() {
        // B-frames: decode order I0 P3 B1 B2 | I4 P7 B5 B6 | I8; a keyframe at 6 inside a segment.
        let input = [
            (0, true),
            (3, false),
            (1, false),
            (2, false),
            (4, true),
            (7, false),
            (5, false),
            (6, true),
            (8, true),
        ];
        let (r, out) = reuse(4, &input);
        assert_eq!(r.state(), TopRung::Reused);
        let expected: Vec<(i64, bool)> = input.iter().map(|&(p, k)| (p, k && p % 4 == 0)).collect();
        assert_eq!(
            out, expected,
            "every frame; a keyframe only where a segment opens"
        );
    }

    #[test]
    fn keyframes_a_reorder_delay_after_the_lines_are_on_the_grid() {
        // B-frames: the first keyframe is presented 2 after the line its session starts on;
        // segments then run from 2 to 42, 42 to 82. A first keyframe later than a quarter
        // segment after a line is off the grid.
        let (r, out) = reuse(
            40,
            &[
                (2, true),
                (5, false),
                (3, false),
                (4, false),
                (42, true),
                (45, false),
                (43, false),
            ],
        );
        assert_eq!(r.state(), TopRung::Reused);
        assert_eq!(r.grid.offset.load(Ordering::Relaxed), 2);
        assert_eq!(out.iter().filter(|f| f.1).count(), 2);
        let (r, out) = reuse(40, &[(2, true), (5, false), (41, false), (43, false)]);
        assert_eq!(
            (r.state(), out.len()),
            (TopRung::FellBack, 3),
            "41 is in the first segment; 43 opens the one from 42"
        );
        let (r, out) = reuse(40, &[(11, true), (12, false)]);
        assert_eq!((r.state(), out.len()), (TopRung::FellBack, 0));
    }

    #[test]
    fn a_segment_opening_without_a_keyframe_hands_the_rung_to_the_encoder() {
        // Decode order I0 P3 B1 B2 | P6 B4 B5: segment 1 (pts 4..) opens with P6 in decode
        // order; B4 and B5 need it. The encoder takes over at pts 4, the first of segment 1.
        let (r, out) = reuse(
            4,
            &[
                (0, true),
                (3, false),
                (1, false),
                (2, false),
                (6, false),
                (4, false),
                (5, false),
                (9, true),
            ],
        );
        assert_eq!(r.state(), TopRung::FellBack);
        assert_eq!(out, [(0, true), (3, false), (1, false), (2, false)]);
        assert_eq!(r.encode_from.load(Ordering::Relaxed), 4);

        // A boundary crossed in decode order by a frame of the old segment's B-frames: those
        // (pts 3 here) are in neither; the encoder starts at the new segment's first (5).
        let (r, out) = reuse(
            4,
            &[
                (0, true),
                (2, false),
                (1, false),
                (5, false),
                (3, false),
                (6, false),
            ],
        );
        assert_eq!(out, [(0, true), (2, false), (1, false)]);
        assert_eq!(r.encode_from.load(Ordering::Relaxed), 5);

        // Input that does not start on a keyframe is never reused.
        let (r, out) = reuse(4, &[(1, false), (2, false)]);
        assert_eq!((r.state(), out.len()), (TopRung::FellBack, 0));
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
