//! The segment timeline: cuts video renditions on the media-time grid, makes
//! audio follow rendition 0's cuts, and writes segments into the store.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use sluice_core::time::{NANOS_PER_SEC, rescale};
use sluice_core::{AudioConfig, Frame, Id, MediaTime, Throttle, VideoConfig};

use crate::fmp4::{self, Sample, TrackConfig, VIDEO_TIMESCALE};
use crate::playlist::{self, StoredPart, StoredSegment};
use crate::store::{AUDIO_RENDITION, EngineOutput, VariantInfo};
use crate::timeline::{ClosedSegment, RenditionTimeline, Step};
use crate::ts::{TsFrame, TsWriter};
use crate::{OutputKind, PackageError};

/// An audio frame this far ahead of the video is a jumped timestamp: dropped alone,
/// so that it does not make every later frame look out of order.
const MAX_AUDIO_AHEAD: MediaTime = 10 * NANOS_PER_SEC;
/// Audio kept waiting for slow video, in bytes.
const MAX_AUDIO_QUEUE_BYTES: usize = 16 << 20;
/// Audio kept waiting for slow video, in segment durations of media time.
const AUDIO_QUEUE_SEGMENTS: i64 = 6;
/// An extra track whose source is away (nothing for a second) gets LL-HLS parts of
/// silence up to this far behind the video.
const SOURCE_AWAY: MediaTime = NANOS_PER_SEC;
/// How much longer than the main audio an extra track's segment waits for its source
/// (which may be placed up to `offset_ms` = -3 s behind the main input).
const EXTRA_PATIENCE: MediaTime = 3 * NANOS_PER_SEC;
/// Closed segments kept waiting for audio, per rendition, before writing anyway.
const MAX_PENDING_SEGMENTS: usize = 8;

/// How an engine's output is cut and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagerSettings {
    /// Target segment duration `d`; segments are cut on multiples of it.
    pub segment_duration: MediaTime,
    /// Media time listed in each media playlist (at least three segments).
    pub window: MediaTime,
    /// Produce fMP4/CMAF segments.
    pub cmaf: bool,
    /// Produce MPEG-TS segments.
    pub ts: bool,
    /// Init segments are numbered from `init_version_base + 1`. A server passes something
    /// that differs per process start (e.g. the Unix time), so that `init-<v>.mp4`, served
    /// as immutable, never names other bytes after a restart.
    pub init_version_base: u64,
    /// LL-HLS part target of the CMAF output; 0: no parts.
    pub part_duration: MediaTime,
    /// The engine forces a keyframe on the first frame at or past every grid line (a
    /// transcoding engine does), so an open segment surely lasts to its line; otherwise
    /// (the input's own keyframes) it may end up to the grid tolerance before it. LL-HLS
    /// audio parts are published as far as the open segment surely reaches.
    pub keyframes_forced: bool,
}

/// A video rendition as configured (for passthrough: the input's values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionSpec {
    pub name: Id,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
}

/// The audio track as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSpec {
    pub kbps: u32,
}

/// An extra audio track (a channel's audio source) as configured: CMAF only, cut where
/// rendition 0 is cut, listed with `EXT-X-MEDIA` beside the main audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    /// Its rendition in URLs (`audio-<source id>`).
    pub rendition: String,
    /// `NAME`: what players show.
    pub name: String,
    /// `LANGUAGE`.
    pub language: Option<String>,
    /// `DEFAULT=YES` (and the main audio `NO`).
    pub default: bool,
}

/// Which audio track: the main one (muxed into TS too), or an extra one by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Main,
    Extra(usize),
}

/// What the packager keeps of a rendition's open segment besides its frames (those are
/// the timeline's).
#[derive(Debug)]
struct SegmentMeta {
    msn: u64,
    discontinuity: bool,
    cfg: Arc<VideoConfig>,
    init_version: u64,
    /// Wall-clock time of its start, Unix milliseconds.
    program_date_time: Option<i64>,
    /// The parts published so far (the first starts with `styp`): the segment is their
    /// concatenation.
    parts: Vec<Bytes>,
}

/// A closed segment (or a gap: no frames) waiting for audio before its TS segment is
/// written.
#[derive(Debug)]
struct PendingTs {
    seg: ClosedSegment,
    cfg: Arc<VideoConfig>,
    program_date_time: Option<i64>,
}

/// Rendition 0's segment interval, which the CMAF audio segment of the same
/// msn covers.
#[derive(Debug, Clone, Copy)]
struct Cut {
    msn: u64,
    start: MediaTime,
    end: MediaTime,
    discontinuity: bool,
}

#[derive(Debug)]
struct VideoState {
    name: String,
    cfg: Option<Arc<VideoConfig>>,
    init_version: u64,
    fps_known: bool,
    /// Cuts, numbering, parts and gaps (`timeline.rs`).
    timeline: RenditionTimeline,
    open: Option<SegmentMeta>,
    fragment_seq: u32,
    ts: TsWriter,
    pending_ts: VecDeque<PendingTs>,
}

#[derive(Debug)]
struct AudioState {
    /// Its rendition in URLs ([`AUDIO_RENDITION`] for the main audio).
    name: String,
    /// Extra tracks: one frame of silence in their configuration, which fills what their
    /// source did not send (it left, or has not come back yet).
    silence: Option<Bytes>,
    /// When its last frame arrived (wall clock).
    arrived_at: Option<std::time::Instant>,
    cfg: Option<Arc<AudioConfig>>,
    init_version: u64,
    fragment_seq: u32,
    /// Frames in presentation order, not yet written into every output that needs them.
    queue: VecDeque<Frame>,
    queue_bytes: usize,
    dropped: u64,
    last_pts: Option<MediaTime>,
    /// How far audio has arrived: last pts plus one frame duration.
    end: Option<MediaTime>,
    /// Rendition 0's cuts waiting for audio (CMAF).
    pending_cuts: VecDeque<Cut>,
    /// The CMAF audio playlist has its first segment.
    started: bool,
    carry_discontinuity: bool,
    /// LL-HLS: the audio segment whose parts are being published.
    open: Option<AudioOpen>,
    /// Extra tracks in TS: their audio-only segments' writer.
    ts: TsWriter,
    /// An extra track removed ([`Packager::remove_track`]): takes nothing any more.
    retired: bool,
}

impl AudioState {
    /// Takes `cfg` when it differs from the current one: a new init segment version,
    /// stored in `output` when CMAF is made. Whether it changed.
    fn configure(&mut self, cfg: AudioConfig, output: &EngineOutput, cmaf: bool) -> bool {
        if self.cfg.as_deref() == Some(&cfg) {
            return false;
        }
        self.init_version = self.init_version.saturating_add(1);
        if cmaf {
            output.add_init(
                &self.name,
                self.init_version,
                fmp4::init_segment(TrackConfig::Audio(&cfg)),
            );
        }
        self.cfg = Some(Arc::new(cfg));
        true
    }

    fn new(name: &str, init_version: u64) -> Self {
        AudioState {
            name: name.to_owned(),
            silence: None,
            arrived_at: None,
            cfg: None,
            init_version,
            fragment_seq: 0,
            queue: VecDeque::new(),
            queue_bytes: 0,
            dropped: 0,
            last_pts: None,
            end: None,
            pending_cuts: VecDeque::new(),
            started: false,
            carry_discontinuity: false,
            open: None,
            ts: TsWriter::new(),
            retired: false,
        }
    }
}

/// The CMAF audio segment being published as parts: it follows rendition 0's open
/// segment, and takes audio only up to where that segment can no longer end.
#[derive(Debug)]
struct AudioOpen {
    msn: u64,
    discontinuity: bool,
    init_version: u64,
    program_date_time: Option<i64>,
    /// Frames with an earlier pts are in published parts.
    published_to: MediaTime,
    /// Where the published parts end (the last one's pts plus its duration): silence
    /// filled in starts there.
    published_end: MediaTime,
    parts: Vec<Bytes>,
}

/// Writer side of one engine's packaged output.
///
/// Owned by one engine and called from its threads (behind a `Mutex`). It
/// never fails its caller: odd input (empty frames, frames before their
/// config, decode times going backwards) is logged and dropped.
#[derive(Debug)]
pub struct Packager {
    d: MediaTime,
    cmaf: bool,
    ts: bool,
    output: Arc<EngineOutput>,
    video: Vec<VideoState>,
    audio: Option<AudioState>,
    /// Extra audio tracks: CMAF audio renditions, and audio-only TS renditions.
    extra: Vec<AudioState>,
    /// Highest pts seen on any video rendition.
    video_head: Option<MediaTime>,
    finished: bool,
    /// Dropped frames are reported once per 10 s, with a count.
    drop_log: Throttle,
    /// LL-HLS part target (CMAF only).
    part: Option<MediaTime>,
    /// [`PackagerSettings::keyframes_forced`].
    keyframes_forced: bool,
    /// (pts, Unix ms) of the first frame of the input session: program date-times.
    clock: Option<(MediaTime, i64)>,
    /// The timeline's steps, reused between frames.
    steps: Vec<Step>,
    /// [`PackagerSettings::init_version_base`], for tracks added later.
    init_version_base: u64,
}

impl Packager {
    pub fn new(
        settings: PackagerSettings,
        renditions: Vec<RenditionSpec>,
        audio: Option<AudioSpec>,
    ) -> (Packager, Arc<EngineOutput>) {
        let d = if settings.segment_duration > 0 {
            settings.segment_duration
        } else {
            tracing::warn!(
                d = settings.segment_duration,
                "segment duration must be positive; using 2 s"
            );
            2 * NANOS_PER_SEC
        };
        let mut outputs = vec![];
        if settings.cmaf {
            outputs.push(OutputKind::Cmaf);
        }
        if settings.ts {
            outputs.push(OutputKind::Ts);
        }
        if renditions
            .iter()
            .any(|r| r.name.as_str() == AUDIO_RENDITION)
        {
            tracing::warn!(
                "a video rendition named \"audio\" clashes with the CMAF audio rendition"
            );
        }
        let variants = renditions
            .iter()
            .map(|r| VariantInfo {
                name: r.name.to_string(),
                width: r.width,
                height: r.height,
                configured_kbps: r.video_kbps,
                codec: None,
                frame_rate: None,
            })
            .collect();
        let part = (settings.cmaf && settings.part_duration > 0).then_some(settings.part_duration);
        let output = Arc::new(EngineOutput::new(
            d,
            settings.window,
            outputs,
            variants,
            audio.as_ref().map(|a| a.kbps),
            part,
        ));
        let video = renditions
            .iter()
            .map(|r| VideoState {
                name: r.name.to_string(),
                cfg: None,
                init_version: settings.init_version_base,
                fps_known: false,
                timeline: RenditionTimeline::new(d, part),
                open: None,
                fragment_seq: 0,
                ts: TsWriter::new(),
                pending_ts: VecDeque::new(),
            })
            .collect();
        let audio = audio.map(|_| AudioState::new(AUDIO_RENDITION, settings.init_version_base));
        let packager = Packager {
            d,
            cmaf: settings.cmaf,
            ts: settings.ts,
            output: output.clone(),
            video,
            audio,
            extra: Vec::new(),
            video_head: None,
            finished: false,
            drop_log: Throttle::default(),
            part,
            keyframes_forced: settings.keyframes_forced,
            clock: None,
            steps: Vec::new(),
            init_version_base: settings.init_version_base,
        };
        (packager, output)
    }

    /// Adds an extra audio track (a CMAF audio rendition, and an audio-only TS one), at
    /// any time. Its frames come with [`Packager::set_track_config`] and
    /// [`Packager::push_track`]; what its source does not send is filled with silence once
    /// its configuration is known. Returns its index.
    pub fn add_track(&mut self, spec: TrackSpec) -> usize {
        if self.video.iter().any(|v| v.name == spec.rendition) || spec.rendition == AUDIO_RENDITION
        {
            tracing::warn!(rendition = %spec.rendition, "an extra audio track's rendition clashes with another rendition");
        }
        // A track added again under a removed one's name takes its place (tracks removed
        // and added again do not pile up) and goes on from its init versions: an init
        // segment's name never means other bytes.
        if let Some(i) = self
            .extra
            .iter()
            .position(|a| a.retired && a.name == spec.rendition)
        {
            let base = self.extra[i].init_version;
            self.extra[i] = AudioState::new(&spec.rendition, base);
            self.output.add_extra_track(spec);
            return i;
        }
        self.extra
            .push(AudioState::new(&spec.rendition, self.init_version_base));
        self.output.add_extra_track(spec);
        self.extra.len() - 1
    }

    /// Extra track `i` is no longer offered (its source was removed): nothing more is
    /// written for it, and its playlists and segments leave the output. Its index stays
    /// taken (and does nothing) until a track of the same rendition is added again.
    pub fn remove_track(&mut self, i: usize) {
        let Some(a) = self.extra.get_mut(i).filter(|a| !a.retired) else {
            return;
        };
        a.retired = true;
        a.queue.clear();
        a.queue_bytes = 0;
        a.pending_cuts.clear();
        a.open = None;
        self.output.remove_extra_track(&a.name);
    }

    /// Extra track `i`'s name, language or default changed (its rendition stays).
    pub fn set_track_spec(&mut self, i: usize, spec: TrackSpec) {
        if self
            .extra
            .get(i)
            .is_some_and(|a| !a.retired && a.name == spec.rendition)
        {
            self.output.update_extra_track(spec);
        }
    }

    /// Sets extra track `i`'s AAC configuration; a changed one gets a new init segment
    /// and a discontinuity.
    pub fn set_track_config(&mut self, i: usize, cfg: AudioConfig) {
        let Some(a) = self.extra.get_mut(i).filter(|a| !a.retired) else {
            return;
        };
        let (had, codec, channels) = (a.cfg.is_some(), cfg.codec_string(), cfg.channels);
        let silence = cfg.silent_frame();
        if !a.configure(cfg, &self.output, self.cmaf) {
            return;
        }
        a.carry_discontinuity |= had;
        if silence.is_none() {
            tracing::warn!(rendition = %a.name, %codec, channels, "no silence for this audio: gaps stay gaps");
        }
        a.silence = silence;
        self.output.set_extra_codec(&a.name, codec);
    }

    /// Adds one raw AAC frame of extra track `i`, on the channel's timeline.
    pub fn push_track(&mut self, i: usize, frame: Frame) {
        if self.extra.get(i).is_none_or(|a| a.retired) {
            return;
        }
        if let Err(e) = self.try_push_to(Which::Extra(i), frame)
            && let Some(suppressed) = self.drop_log.hit_now()
        {
            tracing::warn!(suppressed, track = i, "extra audio frame dropped: {e}");
        }
    }

    fn track(&self, w: Which) -> Option<&AudioState> {
        match w {
            Which::Main => self.audio.as_ref(),
            Which::Extra(i) => self.extra.get(i),
        }
    }

    fn track_mut(&mut self, w: Which) -> Option<&mut AudioState> {
        match w {
            Which::Main => self.audio.as_mut(),
            Which::Extra(i) => self.extra.get_mut(i),
        }
    }

    /// Every audio track: the main one (if any), then the extra ones. Holds no borrow of
    /// the packager, so the loop over it may change it (no allocation: it runs per frame).
    fn audio_tracks(&self) -> impl Iterator<Item = Which> + use<> {
        let main = self.audio.is_some().then_some(Which::Main);
        main.into_iter()
            .chain((0..self.extra.len()).map(Which::Extra))
    }

    /// Rendition 0 was cut: every CMAF audio track gets that cut, and so does every
    /// extra track in TS (an audio-only rendition there; the main audio is muxed with the
    /// video).
    fn cut_audio(&mut self, cut: Cut) {
        if let Some(a) = self.audio.as_mut().filter(|_| self.cmaf) {
            a.pending_cuts.push_back(cut);
        }
        if self.cmaf || self.ts {
            for a in self.extra.iter_mut().filter(|a| !a.retired) {
                a.pending_cuts.push_back(cut);
            }
        }
    }

    /// Sets a rendition's codec configuration. Call before its first frame; a
    /// changed configuration applies from the next segment on and gets a new
    /// init segment version (so `EXT-X-MAP` changes).
    pub fn set_video_config(&mut self, rendition: usize, cfg: VideoConfig) {
        let Some(v) = self.video.get_mut(rendition) else {
            tracing::warn!(rendition, "set_video_config: no such rendition");
            return;
        };
        if v.cfg.as_deref() == Some(&cfg) {
            return;
        }
        v.init_version = v.init_version.saturating_add(1);
        if self.cmaf {
            self.output.add_init(
                &v.name,
                v.init_version,
                fmp4::init_segment(TrackConfig::Video(&cfg)),
            );
        }
        let (codec, width, height) = (cfg.codec_string(), cfg.width, cfg.height);
        self.output.update_variant(rendition, |info| {
            info.codec = Some(codec);
            if width > 0 && height > 0 {
                info.width = width;
                info.height = height;
            }
        });
        v.cfg = Some(Arc::new(cfg));
    }

    /// Sets the AAC configuration (ignored when the packager has no audio).
    pub fn set_audio_config(&mut self, cfg: AudioConfig) {
        let Some(a) = self.audio.as_mut() else {
            tracing::debug!("set_audio_config: packager has no audio");
            return;
        };
        let codec = cfg.codec_string();
        if a.configure(cfg, &self.output, self.cmaf) {
            self.output.set_audio_codec(codec);
        }
    }

    /// States a rendition's frame rate (for `FRAME-RATE`); otherwise it is
    /// estimated from the first segment's frame timing.
    pub fn set_frame_rate(&mut self, rendition: usize, fps: f64) {
        let Some(v) = self.video.get_mut(rendition) else {
            return;
        };
        if !(fps.is_finite() && fps > 0.0 && fps < 1000.0) {
            tracing::warn!(rendition, fps, "ignoring implausible frame rate");
            return;
        }
        v.fps_known = true;
        self.output
            .update_variant(rendition, |info| info.frame_rate = Some(fps));
    }

    /// Adds a video access unit (AVCC, decode order) of one rendition.
    pub fn push_video(&mut self, rendition: usize, frame: Frame) {
        if let Err(e) = self.try_push_video(rendition, frame) {
            match e {
                PackageError::WaitingForKeyframe => {
                    tracing::trace!(rendition, "video frame dropped: {e}")
                }
                _ => {
                    if let Some(suppressed) = self.drop_log.hit_now() {
                        tracing::warn!(rendition, suppressed, "video frame dropped: {e}");
                    }
                }
            }
        }
    }

    fn try_push_video(&mut self, r: usize, frame: Frame) -> Result<(), PackageError> {
        if self.finished {
            return Err(PackageError::Finished);
        }
        let v = self
            .video
            .get_mut(r)
            .ok_or(PackageError::NoSuchRendition(r))?;
        if frame.data.is_empty() {
            return Err(PackageError::EmptyFrame);
        }
        if v.cfg.is_none() {
            return Err(PackageError::NoConfig);
        }
        let mut steps = std::mem::take(&mut self.steps);
        let pushed = v.timeline.push(frame, &mut steps);
        if let Ok(pts) = pushed {
            self.video_head = Some(self.video_head.map_or(pts, |h| h.max(pts)));
            self.clock.get_or_insert_with(|| (pts, unix_ms()));
        }
        self.apply(r, &mut steps);
        self.steps = steps;
        pushed?;
        self.release(false);
        Ok(())
    }

    /// Muxes and stores what rendition `r`'s timeline decided.
    fn apply(&mut self, r: usize, steps: &mut Vec<Step>) {
        let mut gaps = 0;
        for step in steps.drain(..) {
            match step {
                Step::Part {
                    msn,
                    frames,
                    next_dts,
                    last,
                } => self.write_video_part(r, msn, &frames, next_dts, last),
                Step::Segment(seg) => self.write_video_segment(r, seg),
                Step::Gap { msn, start, end } => {
                    gaps += 1;
                    self.write_gap(r, msn, start, end);
                }
                Step::Opened {
                    msn,
                    start,
                    discontinuity,
                } => {
                    let program_date_time = self.program_date_time(start);
                    let v = &mut self.video[r];
                    let Some(cfg) = v.cfg.clone() else { continue };
                    v.open = Some(SegmentMeta {
                        msn,
                        discontinuity,
                        cfg,
                        init_version: v.init_version,
                        program_date_time,
                        parts: Vec::new(),
                    });
                }
            }
        }
        if gaps > 0 {
            tracing::info!(rendition = %self.video[r].name, count = gaps, "media missing: segments listed as gaps");
        }
    }

    /// A segment of media that never came, listed as `EXT-X-GAP` (RFC 8216bis §4.4.4.7).
    fn write_gap(&mut self, r: usize, msn: u64, start: MediaTime, end: MediaTime) {
        let program_date_time = self.program_date_time(start);
        let Some(cfg) = self.video[r].cfg.clone() else {
            return;
        };
        if self.cmaf {
            let stored = StoredSegment {
                msn,
                duration: end.saturating_sub(start),
                discontinuity: false,
                init_version: Some(self.video[r].init_version),
                data: None,
                program_date_time,
                parts: Vec::new(),
            };
            self.output
                .add_segment(OutputKind::Cmaf, &self.video[r].name, stored);
        }
        if r == 0 {
            // CMAF audio, and extra tracks in TS too: every playlist lists segment `msn`.
            self.cut_audio(Cut {
                msn,
                start,
                end,
                discontinuity: false,
            });
        }
        if self.ts {
            self.video[r].pending_ts.push_back(PendingTs {
                seg: ClosedSegment {
                    msn,
                    start,
                    end,
                    discontinuity: false,
                    frames: Vec::new(),
                    next_dts: end,
                },
                cfg,
                program_date_time,
            });
        }
    }

    /// Adds one raw AAC frame.
    pub fn push_audio(&mut self, frame: Frame) {
        if let Err(e) = self.try_push_to(Which::Main, frame)
            && let Some(suppressed) = self.drop_log.hit_now()
        {
            tracing::warn!(suppressed, "audio frame dropped: {e}");
        }
    }

    fn try_push_to(&mut self, w: Which, frame: Frame) -> Result<(), PackageError> {
        if self.finished {
            return Err(PackageError::Finished);
        }
        let video_head = self.video_head;
        let a = self.track_mut(w).ok_or(PackageError::NoAudio)?;
        if frame.data.is_empty() {
            return Err(PackageError::EmptyFrame);
        }
        let cfg = a.cfg.as_ref().ok_or(PackageError::NoConfig)?;
        if let Some(head) = video_head
            && frame.pts > head.saturating_add(MAX_AUDIO_AHEAD)
        {
            return Err(PackageError::AudioAhead);
        }
        if let Some(previous) = a.last_pts
            && frame.pts <= previous
        {
            return Err(PackageError::NonMonotonic {
                dts: frame.pts,
                previous,
            });
        }
        a.last_pts = Some(frame.pts);
        a.end = Some(frame.pts.saturating_add(aac_frame_duration(cfg)));
        a.arrived_at = Some(std::time::Instant::now());
        a.queue_bytes += frame.cost();
        a.queue.push_back(frame);
        self.cap_audio_queue(w);
        self.release(false);
        Ok(())
    }

    /// The input session changed: open segments are closed, and the next
    /// segment of every rendition and of audio carries `EXT-X-DISCONTINUITY`
    /// (RFC 8216bis §4.4.4.3). Numbering continues.
    pub fn discontinuity(&mut self) {
        if self.finished {
            return;
        }
        // Renditions can be cut off at different points: one encoder had emitted the
        // keyframe that opens segment N+1, another not yet. A rendition ahead by an open
        // segment drops it (a frame or so of one rendition), so that every rendition
        // resumes on one number and segment N keeps meaning the same media everywhere.
        if let Some(behind) = self
            .video
            .iter()
            .filter_map(|v| v.timeline.newest_msn())
            .min()
        {
            for v in &mut self.video {
                if v.timeline.drop_open_past(behind) {
                    tracing::debug!(rendition = %v.name, "dropping a segment opened ahead of the other renditions");
                    v.open = None;
                }
            }
        }
        for r in 0..self.video.len() {
            self.close_rendition(r);
            self.video[r].timeline.seam();
        }
        let shared = self
            .video
            .iter()
            .filter_map(|v| v.timeline.next_msn())
            .max();
        for v in &mut self.video {
            v.timeline.resume_at(shared);
        }
        self.release(true);
        for a in self.audio.iter_mut().chain(self.extra.iter_mut()) {
            a.queue.clear();
            a.queue_bytes = 0;
            a.last_pts = None;
            a.end = None;
            a.open = None;
        }
        self.video_head = None;
        // The next input session has its own clock.
        self.clock = None;
    }

    /// The engine was down (its pipeline failed or stalled, and media was lost): a
    /// discontinuity, and the segments it missed are listed as gaps at the next cut, so
    /// its numbers stay those of the other engines on the same input.
    pub fn outage(&mut self) {
        self.discontinuity();
        for v in &mut self.video {
            v.timeline.outage();
        }
    }

    /// This run's playlists continue `previous`'s (another run of the same engine, whose
    /// viewers move over): the first segment of each carries `EXT-X-DISCONTINUITY`, and
    /// the discontinuity sequence goes on from `previous`'s, so a player reloading the
    /// same playlist URL sees a discontinuity, not a stream that starts over. Call before
    /// the first frame.
    pub fn continue_from(&mut self, previous: &EngineOutput) {
        for v in &mut self.video {
            v.timeline.mark_discontinuity();
        }
        for a in self.audio.iter_mut().chain(self.extra.iter_mut()) {
            a.carry_discontinuity = true;
        }
        self.output
            .set_discontinuity_base(previous.last_discontinuity_number());
    }

    /// Flushes open segments; playlists get `EXT-X-ENDLIST`.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        for r in 0..self.video.len() {
            self.close_rendition(r);
        }
        self.release(true);
        self.finished = true;
        self.output.finish();
    }

    /// Undoes [`Packager::finish`] for a new input after the channel closed: the
    /// playlists lose `EXT-X-ENDLIST` and go on after a discontinuity, numbering continued.
    pub fn reopen(&mut self) {
        if !self.finished {
            return;
        }
        self.finished = false;
        self.output.reopen();
        self.discontinuity();
    }

    /// Closes rendition `r`'s open segment with nothing after it (a seam or the end).
    fn close_rendition(&mut self, r: usize) {
        let mut steps = std::mem::take(&mut self.steps);
        self.video[r].timeline.close(&mut steps);
        self.apply(r, &mut steps);
        self.steps = steps;
    }

    /// Stores a closed segment of rendition `r` (CMAF: the concatenation of its parts,
    /// if it had any) and queues it for audio (the CMAF audio cut, the TS mux).
    fn write_video_segment(&mut self, r: usize, seg: ClosedSegment) {
        let v = &mut self.video[r];
        let Some(cfg) = v.cfg.clone() else { return };
        let meta = v.open.take().unwrap_or_else(|| SegmentMeta {
            msn: seg.msn,
            discontinuity: seg.discontinuity,
            cfg,
            init_version: v.init_version,
            program_date_time: None,
            parts: Vec::new(),
        });
        if !v.fps_known
            && let (Some(first), Some(last)) = (seg.frames.first(), seg.frames.last())
        {
            let span = last.dts.saturating_sub(first.dts);
            if span > 0 {
                let fps = (seg.frames.len() - 1) as f64 * NANOS_PER_SEC as f64 / span as f64;
                v.fps_known = true;
                self.output
                    .update_variant(r, |info| info.frame_rate = Some(fps));
            }
        }
        let v = &mut self.video[r];
        if self.cmaf {
            let data = if meta.parts.is_empty() {
                let (base, samples) = to_samples(&seg.frames, seg.next_dts, VIDEO_TIMESCALE);
                v.fragment_seq = v.fragment_seq.wrapping_add(1);
                media_segment(v.fragment_seq, base, &samples)
            } else {
                concat_parts(&meta.parts)
            };
            let stored = StoredSegment {
                msn: seg.msn,
                duration: seg.end.saturating_sub(seg.start),
                discontinuity: seg.discontinuity,
                init_version: Some(meta.init_version),
                data: Some(data),
                program_date_time: meta.program_date_time,
                parts: Vec::new(),
            };
            self.output.add_segment(OutputKind::Cmaf, &v.name, stored);
        }
        if r == 0 {
            self.cut_audio(Cut {
                msn: seg.msn,
                start: seg.start,
                end: seg.end,
                discontinuity: seg.discontinuity,
            });
        }
        if self.ts {
            self.video[r].pending_ts.push_back(PendingTs {
                seg,
                cfg: meta.cfg,
                program_date_time: meta.program_date_time,
            });
        }
    }

    /// Is audio track `w` complete up to `end` (or given up on)?
    fn audio_ready(&self, w: Which, start: MediaTime, end: MediaTime) -> bool {
        let Some(a) = self.track(w) else { return true };
        let arrived = a.end.unwrap_or(start);
        if arrived >= end {
            return true;
        }
        // Audio far behind (or absent): write video without waiting.
        let patience = match w {
            Which::Main => self.d.saturating_mul(2),
            Which::Extra(_) => self.d.saturating_mul(2).saturating_add(EXTRA_PATIENCE),
        };
        self.video_head
            .is_some_and(|h| h.saturating_sub(arrived) > patience)
    }

    /// Writes what no longer waits for audio; `force` writes everything pending.
    fn release(&mut self, force: bool) {
        for r in 0..self.video.len() {
            while let Some(pending) = self.video[r].pending_ts.front() {
                let ready = force
                    || self.video[r].pending_ts.len() > MAX_PENDING_SEGMENTS
                    || self.audio_ready(Which::Main, pending.seg.start, pending.seg.end);
                if !ready {
                    break;
                }
                let seg = self.video[r].pending_ts.pop_front().expect("front exists");
                self.write_ts(r, seg);
            }
        }
        let (cmaf, ts) = (self.cmaf, self.ts);
        for w in self.audio_tracks() {
            let extra_ts = match w {
                Which::Extra(i) if ts => Some(i),
                _ => None,
            };
            if !cmaf && extra_ts.is_none() {
                continue;
            }
            while let Some(cut) = self.track(w).and_then(|a| a.pending_cuts.front().copied()) {
                let many = self
                    .track(w)
                    .is_some_and(|a| a.pending_cuts.len() > MAX_PENDING_SEGMENTS);
                if !(force || many || self.audio_ready(w, cut.start, cut.end)) {
                    break;
                }
                if let Some(a) = self.track_mut(w) {
                    a.pending_cuts.pop_front();
                }
                if let Some(i) = extra_ts {
                    self.write_ts_track(i, cut);
                }
                if cmaf {
                    self.write_cmaf_audio(w, cut);
                }
            }
            if cmaf {
                self.publish_audio_parts(w, None);
            }
        }
        for w in self.audio_tracks() {
            self.prune_audio(w);
        }
    }

    fn write_ts(&mut self, r: usize, pending: PendingTs) {
        let PendingTs {
            seg,
            cfg,
            program_date_time,
        } = pending;
        if seg.frames.is_empty() {
            // A gap: listed, no media.
            let stored = StoredSegment {
                msn: seg.msn,
                duration: seg.end.saturating_sub(seg.start),
                discontinuity: seg.discontinuity,
                init_version: None,
                data: None,
                program_date_time,
                parts: Vec::new(),
            };
            self.output
                .add_segment(OutputKind::Ts, &self.video[r].name, stored);
            return;
        }
        let audio_cfg = self.audio.as_ref().and_then(|a| a.cfg.clone());
        let audio: Vec<TsFrame> = match &self.audio {
            Some(a) if audio_cfg.is_some() => audio_in(&a.queue, seg.start, seg.end)
                .map(|f| TsFrame {
                    pts: f.pts,
                    dts: f.dts,
                    keyframe: true,
                    data: f.data.clone(),
                })
                .collect(),
            _ => vec![],
        };
        let video: Vec<TsFrame> = seg
            .frames
            .iter()
            .map(|f| TsFrame {
                pts: f.pts,
                dts: f.dts,
                keyframe: f.keyframe,
                data: f.data.clone(),
            })
            .collect();
        let v = &mut self.video[r];
        let data =
            v.ts.write_segment(&cfg, &video, audio_cfg.as_deref(), &audio);
        let stored = StoredSegment {
            msn: seg.msn,
            duration: seg.end.saturating_sub(seg.start),
            discontinuity: seg.discontinuity,
            init_version: None,
            data: Some(data),
            program_date_time,
            parts: Vec::new(),
        };
        self.output.add_segment(OutputKind::Ts, &v.name, stored);
    }

    /// Writes the TS segment of extra track `i` for `cut`: audio alone (with silence
    /// where its source sent nothing), on the video's segment numbers.
    fn write_ts_track(&mut self, i: usize, cut: Cut) {
        let program_date_time = self.program_date_time(cut.start);
        let Some(a) = self.extra.get_mut(i) else {
            return;
        };
        // Not configured yet: the track is listed once it has a segment.
        let Some(cfg) = a.cfg.clone() else {
            return;
        };
        let real: Vec<&Frame> = audio_in(&a.queue, cut.start, cut.end).collect();
        let frames = match &a.silence {
            Some(silence) => {
                with_silence(&real, cut.start, cut.end, aac_frame_duration(&cfg), silence)
            }
            None => real.into_iter().cloned().collect(),
        };
        let ts_frames: Vec<TsFrame> = frames
            .into_iter()
            .map(|f| TsFrame {
                pts: f.pts,
                dts: f.dts,
                keyframe: true,
                data: f.data,
            })
            .collect();
        let data = a.ts.write_audio_segment(&cfg, &ts_frames);
        if data.is_empty() {
            return; // not ADTS-describable: offered in CMAF only
        }
        let stored = StoredSegment {
            msn: cut.msn,
            duration: cut.end.saturating_sub(cut.start),
            discontinuity: cut.discontinuity,
            init_version: None,
            data: Some(data),
            program_date_time,
            parts: Vec::new(),
        };
        let name = a.name.clone();
        self.output.add_segment(OutputKind::Ts, &name, stored);
    }

    fn write_cmaf_audio(&mut self, w: Which, cut: Cut) {
        if self.part.is_some() {
            // LL-HLS: what is left of the segment goes out as its last parts; the
            // segment is the concatenation of its parts.
            self.publish_audio_parts(w, Some(cut));
        }
        let pdt = self.program_date_time(cut.start);
        let output = self.output.clone();
        let Some(a) = self.track_mut(w) else { return };
        let Some(cfg) = a.cfg.clone() else {
            a.carry_discontinuity |= cut.discontinuity;
            return;
        };
        let published = a.open.take().filter(|o| o.msn == cut.msn);
        let discontinuity = published
            .as_ref()
            .map_or(cut.discontinuity || a.carry_discontinuity, |o| {
                o.discontinuity
            });
        let mut frames: Vec<&Frame> = audio_in(&a.queue, cut.start, cut.end).collect();
        let filled;
        if let Some(silence) = &a.silence {
            filled = with_silence(
                &frames,
                cut.start,
                cut.end,
                aac_frame_duration(&cfg),
                silence,
            );
            frames = filled.iter().collect();
        }
        let data = if let Some(o) = published.as_ref().filter(|o| !o.parts.is_empty()) {
            Some(concat_parts(&o.parts))
        } else if let (Some(first), Some(last)) = (frames.first(), frames.last()) {
            let timescale = cfg.sample_rate.max(1);
            // The frame after the last one, if it has arrived, fixes the last duration.
            let next_dts = a
                .queue
                .iter()
                .find(|f| f.pts > last.pts)
                .map_or(last.dts.saturating_add(aac_frame_duration(&cfg)), |f| f.dts);
            let owned: Vec<Frame> = frames.iter().map(|f| (*f).clone()).collect();
            let (base, samples) = to_samples(&owned, next_dts, timescale);
            debug_assert_eq!(first.dts, owned[0].dts);
            a.fragment_seq = a.fragment_seq.wrapping_add(1);
            Some(media_segment(a.fragment_seq, base, &samples))
        } else if a.started {
            None // a gap in a running audio track
        } else {
            a.carry_discontinuity |= cut.discontinuity;
            return; // audio has not begun: the audio playlist starts later
        };
        a.started = true;
        a.carry_discontinuity = false;
        let stored = StoredSegment {
            msn: cut.msn,
            duration: cut.end.saturating_sub(cut.start),
            discontinuity,
            init_version: Some(a.init_version),
            data,
            program_date_time: pdt,
            parts: Vec::new(),
        };
        output.add_segment(OutputKind::Cmaf, &a.name, stored);
    }

    /// Wall-clock time of media time `pts` in the current input session, Unix ms.
    fn program_date_time(&self, pts: MediaTime) -> Option<i64> {
        self.clock
            .map(|(p0, w0)| w0.saturating_add(pts.saturating_sub(p0) / 1_000_000))
    }

    /// LL-HLS: publishes a part of rendition `r`'s open segment `msn`, its frames ending
    /// at `next_dts` (`last`: the segment ends with it, so no hint names a part past it).
    fn write_video_part(
        &mut self,
        r: usize,
        msn: u64,
        frames: &[Frame],
        next_dts: MediaTime,
        last: bool,
    ) {
        let v = &mut self.video[r];
        let (Some(first), Some(open)) = (frames.first(), v.open.as_mut()) else {
            return;
        };
        debug_assert_eq!(open.msn, msn, "a part of the open segment");
        let (base, samples) = to_samples(frames, next_dts, VIDEO_TIMESCALE);
        v.fragment_seq = v.fragment_seq.wrapping_add(1);
        let data = part_bytes(open.parts.is_empty(), v.fragment_seq, base, &samples);
        open.parts.push(data.clone());
        let described = playlist::OpenSegment {
            msn,
            discontinuity: open.discontinuity,
            init_version: Some(open.init_version),
            program_date_time: open.program_date_time,
            parts: Vec::new(),
        };
        let part = StoredPart {
            duration: next_dts.saturating_sub(first.dts),
            independent: first.keyframe,
            data,
        };
        self.output
            .add_part(OutputKind::Cmaf, &v.name, &described, part, !last);
    }

    /// LL-HLS: publishes audio parts of the audio segment that follows rendition 0's
    /// open segment, as far as that segment surely reaches (it may end at the first
    /// keyframe past its grid line, less the tolerance). With `last`, the segment's cut
    /// is known: everything up to its end goes out.
    fn publish_audio_parts(&mut self, w: Which, last: Option<Cut>) {
        let (Some(target), true) = (self.part, self.cmaf) else {
            return;
        };
        if self.track(w).is_none_or(|a| a.retired) {
            return;
        }
        let (msn, start, discontinuity, limit) = match last {
            Some(c) => (c.msn, c.start, c.discontinuity, c.end),
            None => {
                // Earlier segments are written first.
                if self.track(w).is_none_or(|a| !a.pending_cuts.is_empty()) {
                    return;
                }
                let Some(o) = self.video.first().and_then(|v| v.timeline.open_span()) else {
                    return;
                };
                let reach = if self.keyframes_forced {
                    o.line
                } else {
                    o.sure_end
                };
                (o.msn, o.start, o.discontinuity, reach)
            }
        };
        let pdt = self.program_date_time(start);
        let output = self.output.clone();
        let video_head = self.video_head;
        let Some(a) = self.track_mut(w) else { return };
        let Some(cfg) = a.cfg.clone() else { return };
        let frame_duration = aac_frame_duration(&cfg);
        let per_part = usize::try_from(target / frame_duration.max(1))
            .unwrap_or(1)
            .max(1);
        if a.open.as_ref().is_none_or(|o| o.msn != msn) {
            a.open = Some(AudioOpen {
                msn,
                discontinuity: discontinuity || a.carry_discontinuity,
                init_version: a.init_version,
                program_date_time: pdt,
                published_to: start,
                published_end: start,
                parts: Vec::new(),
            });
        }
        loop {
            let Some(o) = a.open.as_ref() else { return };
            let real = audio_in(&a.queue, o.published_to, limit);
            let frames: Vec<Frame> = match &a.silence {
                // An extra track: silence where its source sent nothing, up to the cut
                // once it is known; before that, while its source is away (nothing
                // for a second), up to a second behind the video.
                Some(silence) => {
                    let away = a
                        .arrived_at
                        .is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(1));
                    let fill_to = match last {
                        Some(_) => limit,
                        None if away => video_head
                            .map_or(i64::MIN, |h| h.saturating_sub(SOURCE_AWAY))
                            .min(limit),
                        None => i64::MIN,
                    };
                    let real: Vec<&Frame> = real.take(per_part + 1).collect();
                    let mut filled =
                        with_silence(&real, o.published_end, fill_to, frame_duration, silence);
                    filled.truncate(per_part + 1);
                    filled
                }
                None => real.take(per_part + 1).cloned().collect(),
            };
            let n = frames.len().min(per_part);
            if n == 0 || (n < per_part && last.is_none()) {
                return;
            }
            let next_dts = frames
                .get(n)
                .map_or(frames[n - 1].dts.saturating_add(frame_duration), |f| f.dts);
            let chunk = &frames[..n];
            let (base, samples) = to_samples(chunk, next_dts, cfg.sample_rate.max(1));
            a.fragment_seq = a.fragment_seq.wrapping_add(1);
            let Some(o) = a.open.as_mut() else { return };
            let data = part_bytes(o.parts.is_empty(), a.fragment_seq, base, &samples);
            o.published_to = chunk[n - 1].pts.saturating_add(1);
            o.published_end = chunk[n - 1].pts.saturating_add(frame_duration);
            o.parts.push(data.clone());
            a.started = true;
            a.carry_discontinuity = false;
            let described = playlist::OpenSegment {
                msn: o.msn,
                discontinuity: o.discontinuity,
                init_version: Some(o.init_version),
                program_date_time: o.program_date_time,
                parts: Vec::new(),
            };
            let part = StoredPart {
                duration: next_dts.saturating_sub(chunk[0].dts),
                independent: true,
                data,
            };
            output.add_part(OutputKind::Cmaf, &a.name, &described, part, last.is_none());
        }
    }

    /// The earliest time of audio track `w` still needed by some output.
    fn audio_needed_from(&self, w: Which) -> Option<MediaTime> {
        let need = |v: &VideoState, pending: Option<MediaTime>| {
            pending
                .or(v.timeline.open_span().map(|o| o.start))
                .or(v.timeline.last_end())
        };
        let mut from: Option<MediaTime> = None;
        let mut consider = |t: Option<MediaTime>| {
            if let Some(t) = t {
                from = Some(from.map_or(t, |f| f.min(t)));
            }
        };
        if self.ts && w == Which::Main {
            for v in &self.video {
                consider(need(v, v.pending_ts.front().map(|p| p.seg.start)));
            }
        }
        // Cuts wait in CMAF, and for an extra track's TS segments too.
        let cut = self.cmaf || (self.ts && w != Which::Main);
        if cut && let (Some(a), Some(v0)) = (self.track(w), self.video.first()) {
            consider(need(v0, a.pending_cuts.front().map(|c| c.start)));
        }
        from
    }

    fn prune_audio(&mut self, w: Which) {
        let Some(from) = self.audio_needed_from(w) else {
            return;
        };
        let Some(a) = self.track_mut(w) else { return };
        while a.queue.front().is_some_and(|f| f.pts < from) {
            let f = a.queue.pop_front().expect("front exists");
            a.queue_bytes -= f.cost();
        }
    }

    fn cap_audio_queue(&mut self, w: Which) {
        let needed_from = self.audio_needed_from(w);
        let span_cap = self.d.saturating_mul(AUDIO_QUEUE_SEGMENTS);
        let Some(a) = self.track_mut(w) else { return };
        while let (Some(front), Some(back)) = (a.queue.front(), a.queue.back()) {
            if back.pts.saturating_sub(front.pts) <= span_cap
                && a.queue_bytes <= MAX_AUDIO_QUEUE_BYTES
            {
                break;
            }
            let still_needed = needed_from.is_some_and(|t| front.pts >= t);
            let f = a.queue.pop_front().expect("front exists");
            a.queue_bytes -= f.cost();
            if still_needed {
                a.dropped += 1;
                if a.dropped % 100 == 1 {
                    tracing::warn!(
                        dropped = a.dropped,
                        "audio queue full (video far behind): oldest audio dropped"
                    );
                }
            }
        }
    }
}

/// Duration of one AAC frame (1024 samples).
fn aac_frame_duration(cfg: &AudioConfig) -> MediaTime {
    1024 * NANOS_PER_SEC / cfg.sample_rate.max(1) as i64
}

/// Audio frames with pts in `[start, end)`. The queue is in strictly increasing pts
/// (`try_push_audio` refuses anything else; a discontinuity empties it), so this is a
/// binary search, not a scan: it runs for every part of every frame pushed.
fn audio_in(
    queue: &VecDeque<Frame>,
    start: MediaTime,
    end: MediaTime,
) -> impl Iterator<Item = &Frame> {
    let from = queue.partition_point(|f| f.pts < start);
    queue.range(from..).take_while(move |f| f.pts < end)
}

/// `frames` (from `start` on, increasing) with every hole of a frame duration or more
/// before each of them, and after the last up to `end`, filled with `silence`: an extra
/// track whose source was away for part of a segment.
fn with_silence(
    frames: &[&Frame],
    start: MediaTime,
    end: MediaTime,
    duration: MediaTime,
    silence: &Bytes,
) -> Vec<Frame> {
    let duration = duration.max(1);
    let silent = |t: MediaTime| Frame {
        track: sluice_core::TrackKind::Audio,
        pts: t,
        dts: t,
        keyframe: true,
        data: silence.clone(),
    };
    let mut out = Vec::with_capacity(frames.len());
    let mut t = start;
    for f in frames {
        while f.pts.saturating_sub(t) >= duration {
            out.push(silent(t));
            t = t.saturating_add(duration);
        }
        out.push((*f).clone());
        t = f.pts.saturating_add(duration);
    }
    while end.saturating_sub(t) >= duration {
        out.push(silent(t));
        t = t.saturating_add(duration);
    }
    out
}

/// Converts frames to fMP4 samples: every timestamp is rescaled from its
/// absolute value, so durations never accumulate rounding drift. Negative
/// decode times clamp to 0.
fn to_samples(frames: &[Frame], next_dts: MediaTime, timescale: u32) -> (u64, Vec<Sample>) {
    let tick = |t: MediaTime| rescale(t.max(0), timescale);
    let base = frames.first().map_or(0, |f| tick(f.dts)) as u64;
    let samples = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let next = frames.get(i + 1).map_or(next_dts, |n| n.dts);
            let dts = tick(f.dts);
            Sample {
                duration: tick(next).saturating_sub(dts).clamp(0, u32::MAX as i64) as u32,
                composition_offset: tick(f.pts)
                    .saturating_sub(dts)
                    .clamp(i32::MIN as i64, i32::MAX as i64)
                    as i32,
                keyframe: f.keyframe,
                data: f.data.clone(),
            }
        })
        .collect();
    (base, samples)
}

/// A part: one fragment, after `styp` when it opens its segment.
fn part_bytes(first: bool, sequence: u32, base: u64, samples: &[Sample]) -> Bytes {
    if first {
        media_segment(sequence, base, samples)
    } else {
        fmp4::write_fragment(sequence, base, samples)
    }
}

fn concat_parts(parts: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A CMAF media segment: `styp` and one fragment.
fn media_segment(sequence: u32, base: u64, samples: &[Sample]) -> Bytes {
    let styp = fmp4::styp();
    let fragment = fmp4::write_fragment(sequence, base, samples);
    let mut out = Vec::with_capacity(styp.len() + fragment.len());
    out.extend_from_slice(&styp);
    out.extend_from_slice(&fragment);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::TrackKind;
    use sluice_core::codec::testdata::AVCC_720P;

    fn frame(track: TrackKind, ms: i64, keyframe: bool) -> Frame {
        Frame {
            track,
            pts: ms * 1_000_000,
            dts: ms * 1_000_000,
            keyframe,
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
        }
    }

    fn packager() -> (Packager, Arc<EngineOutput>) {
        packager_with(0, false)
    }

    /// 1 s segments, CMAF, one 720p rendition and audio, configured.
    fn packager_with(
        part_duration: MediaTime,
        keyframes_forced: bool,
    ) -> (Packager, Arc<EngineOutput>) {
        let (mut p, out) = Packager::new(
            PackagerSettings {
                segment_duration: NANOS_PER_SEC,
                window: 10 * NANOS_PER_SEC,
                cmaf: true,
                ts: false,
                init_version_base: 0,
                part_duration,
                keyframes_forced,
            },
            vec![RenditionSpec {
                name: Id::new("v").unwrap(),
                width: 1280,
                height: 720,
                video_kbps: 1000,
            }],
            Some(AudioSpec { kbps: 128 }),
        );
        p.set_video_config(
            0,
            VideoConfig::from_avcc(Bytes::from_static(AVCC_720P)).unwrap(),
        );
        p.set_audio_config(AudioConfig::aac_lc(48_000, 2));
        (p, out)
    }

    /// A new run of an engine (its ladder changed) continues the old run's playlists:
    /// its first segment is a discontinuity, numbered after the old run's newest one.
    #[test]
    fn a_continuing_run_starts_with_a_discontinuity_numbered_on() {
        let (mut old, old_out) = packager();
        for i in 0..60 {
            old.push_video(0, frame(TrackKind::Video, i * 33, i % 30 == 0));
        }
        old.discontinuity(); // one discontinuity already in the old playlists
        for i in 0..60 {
            old.push_video(0, frame(TrackKind::Video, i * 33 + 3_000, i % 30 == 0));
        }
        assert_eq!(old_out.last_discontinuity_number(), 1);
        let (mut new, out) = packager();
        new.continue_from(&old_out);
        for i in 0..60 {
            new.push_video(0, frame(TrackKind::Video, i * 33 + 6_000, i % 30 == 0));
            new.push_audio(frame(TrackKind::Audio, i * 33 + 6_000, true));
        }
        new.finish();
        let text =
            String::from_utf8(out.media_playlist(OutputKind::Cmaf, "v").unwrap().to_vec()).unwrap();
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{text}");
        let first = text.find("#EXTINF").unwrap();
        assert!(text[..first].contains("#EXT-X-DISCONTINUITY\n"), "{text}");
        assert_eq!(out.last_discontinuity_number(), 2);
        let audio = String::from_utf8(
            out.media_playlist(OutputKind::Cmaf, AUDIO_RENDITION)
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(audio.contains("#EXT-X-DISCONTINUITY\n"), "{audio}");
    }

    /// LL-HLS audio parts go out as far as the open video segment surely reaches: its grid
    /// line when the engine forces keyframes there, the line less the tolerance otherwise.
    /// Audio that arrives with its video (passed through) then publishes its second part
    /// of a 1 s segment (1.49 to 1.98 s) before the cut, not together with the last one.
    #[test]
    fn audio_parts_reach_the_line_when_keyframes_are_forced_on_it() {
        let parts = |forced: bool| {
            let (mut p, out) = packager_with(NANOS_PER_SEC / 2, forced);
            let aac = 1024 * NANOS_PER_SEC / 48_000;
            let mut next_audio = 0;
            // Two segments of video, each frame after the audio up to its instant.
            for i in 0..60 {
                let pts = i * NANOS_PER_SEC / 30;
                while next_audio * aac <= pts {
                    let mut a = frame(TrackKind::Audio, 0, true);
                    (a.pts, a.dts) = (next_audio * aac, next_audio * aac);
                    p.push_audio(a);
                    next_audio += 1;
                }
                let mut v = frame(TrackKind::Video, 0, i % 30 == 0);
                (v.pts, v.dts) = (pts, pts);
                p.push_video(0, v);
            }
            let text = out
                .media_playlist(OutputKind::Cmaf, AUDIO_RENDITION)
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .unwrap_or_default();
            // The parts of the open segment (from 1 s), listed after the closed one.
            let open = text.rfind("#EXTINF").map_or("", |i| &text[i..]);
            open.matches("#EXT-X-PART:").count()
        };
        assert_eq!(parts(true), 2, "the part ending at 1.98 s, before the line");
        assert_eq!(
            parts(false),
            1,
            "1.98 s is past the line less the tolerance"
        );
    }

    /// One audio frame an hour ahead is dropped alone; audio after it is kept.
    #[test]
    fn a_jumped_audio_frame_does_not_block_later_audio() {
        let (mut p, out) = packager();
        for i in 0..=90 {
            p.push_video(0, frame(TrackKind::Video, i * 33, i % 30 == 0));
            if i == 40 {
                p.push_audio(frame(TrackKind::Audio, 3_600_000, true));
            }
            p.push_audio(frame(TrackKind::Audio, i * 33 + 5, true));
        }
        p.finish();
        // Audio of the second and third seconds made it into their segments.
        for msn in 1..=2 {
            let seg = out.segment(OutputKind::Cmaf, AUDIO_RENDITION, msn);
            assert!(seg.is_some_and(|s| s.len() > 200), "audio segment {msn}");
        }
    }

    /// A frame on the same millisecond as the one before is kept one tick later; one
    /// that goes back further is dropped.
    #[test]
    fn equal_decode_times_are_nudged_not_dropped() {
        let (mut p, out) = packager();
        p.push_video(0, frame(TrackKind::Video, 0, true));
        p.push_video(0, frame(TrackKind::Video, 33, false));
        p.push_video(0, frame(TrackKind::Video, 33, false));
        p.push_video(0, frame(TrackKind::Video, 20, false));
        p.push_video(0, frame(TrackKind::Video, 66, false));
        assert_eq!(p.video[0].timeline.open_frames().len(), 4);
        assert_eq!(p.video[0].timeline.open_frames()[2].dts, 33_011_112);
        drop(out);
    }

    /// An engine down for three segments (its pipeline restarted: a discontinuity) lists
    /// them as gaps and resumes on the number media time gives, like every other engine.
    #[test]
    fn missing_segments_are_gaps_and_numbers_follow_media_time() {
        let (mut p, out) = packager();
        for i in 0..60 {
            p.push_video(0, frame(TrackKind::Video, i * 33 + 33_000, i % 30 == 0));
        }
        p.outage(); // the pipeline died at 35 s
        for i in 0..60 {
            p.push_video(0, frame(TrackKind::Video, i * 33 + 39_000, i % 30 == 0));
        }
        p.finish();
        let text =
            String::from_utf8(out.media_playlist(OutputKind::Cmaf, "v").unwrap().to_vec()).unwrap();
        for msn in 33..=40 {
            assert!(text.contains(&format!("{msn}.m4s")), "{msn}:\n{text}");
        }
        assert_eq!(
            text.matches("#EXT-X-GAP").count(),
            4,
            "35..38 are gaps:\n{text}"
        );
        assert!(out.segment(OutputKind::Cmaf, "v", 36).is_none());
        assert!(out.segment(OutputKind::Cmaf, "v", 39).is_some());
        // Counted: the segments with media (33, 34, 39, 40), not the gaps.
        let produced = out.produced();
        let (_, _, v) = produced
            .iter()
            .find(|(o, r, _)| *o == OutputKind::Cmaf && r == "v")
            .unwrap();
        assert_eq!(v.segments, 4, "{produced:?}");
        let bytes: u64 = (33..=40)
            .filter_map(|m| out.segment(OutputKind::Cmaf, "v", m))
            .map(|b| b.len() as u64)
            .sum();
        assert_eq!(v.segment_bytes, bytes);
    }

    /// An open segment stops growing at the frame limit when no keyframe comes.
    #[test]
    fn open_segments_are_bounded_in_frames() {
        let (mut p, _out) = packager();
        p.push_video(0, frame(TrackKind::Video, 0, true));
        for i in 1..(crate::timeline::MAX_SEGMENT_FRAMES as i64 + 100) {
            p.push_video(0, frame(TrackKind::Video, i / 1000, false).with_dts_ns(i));
        }
        assert_eq!(
            p.video[0].timeline.open_frames().len(),
            crate::timeline::MAX_SEGMENT_FRAMES
        );
    }

    trait WithDts {
        fn with_dts_ns(self, ns: i64) -> Self;
    }
    impl WithDts for Frame {
        fn with_dts_ns(mut self, ns: i64) -> Self {
            self.dts = ns;
            self.pts = ns;
            self
        }
    }
}
