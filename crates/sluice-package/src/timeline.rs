//! The timeline of one video rendition, apart from any muxing: frames in, closed parts
//! and segments out. Which decode times are accepted (and which are nudged), on which
//! grid line a frame falls, where a segment is cut and how it is numbered, when an
//! LL-HLS part must close, and which segments an outage left as gaps. Pure: the rules
//! are tested on their own; the packager muxes and stores what they decide.

use std::collections::VecDeque;

use sluice_core::time::NANOS_PER_SEC;
use sluice_core::{Frame, MediaTime};

use crate::PackageError;

/// FLV carries milliseconds: a step back of up to this much is rounding, not disorder.
const DTS_ROUNDING: MediaTime = 2_000_000;
/// One 90 kHz tick, rounded up to whole nanoseconds.
const ONE_TICK: MediaTime = 11_112;
/// Decode-time steps remembered for the part look-ahead.
const STEPS_KEPT: usize = 8;
/// A frame duration to assume before two frames have been seen (30 fps).
pub(crate) const DEFAULT_FRAME_DURATION: MediaTime = NANOS_PER_SEC / 30;

/// How far before a grid line a keyframe may fall and still open that line's segment.
pub(crate) fn grid_tolerance(d: MediaTime) -> MediaTime {
    (d / 20).min(50_000_000)
}

/// The grid line (segment index on the media-time grid of `d`) a frame at `pts` opens or
/// belongs to: a keyframe a hair before a line (an encoder's GOP of 59.94 frames,
/// millisecond timestamps) counts as on it.
pub(crate) fn grid_of(pts: MediaTime, d: MediaTime) -> i64 {
    pts.saturating_add(grid_tolerance(d)).div_euclid(d)
}

/// Whether a part whose first frame has decode time `first_dts` must close before a frame
/// at `next_dts`: once that frame could take it past `target` (the step look-ahead is the
/// largest recent decode step, so jittery millisecond timestamps never overshoot).
pub(crate) fn part_full(
    first_dts: MediaTime,
    next_dts: MediaTime,
    step: MediaTime,
    target: MediaTime,
) -> bool {
    next_dts.saturating_add(step).saturating_sub(first_dts) > target
}

/// A rendition's decode clock: the last decode time accepted and the recent steps.
#[derive(Debug)]
pub(crate) struct DecodeClock {
    last_dts: Option<MediaTime>,
    /// The last positive decode step: the duration of a segment's last frame when no
    /// next frame will come.
    frame_duration: MediaTime,
    steps: VecDeque<MediaTime>,
}

impl Default for DecodeClock {
    fn default() -> Self {
        DecodeClock {
            last_dts: None,
            frame_duration: DEFAULT_FRAME_DURATION,
            steps: VecDeque::with_capacity(STEPS_KEPT + 1),
        }
    }
}

impl DecodeClock {
    /// The (dts, pts) a frame at `dts`/`pts` is taken at: two frames can land on one
    /// millisecond (GStreamer's flvmux does it now and then), and such a frame is nudged
    /// one 90 kHz tick later rather than dropped (which would break the references of
    /// every frame after it); a real step back is refused.
    pub fn admit(
        &self,
        dts: MediaTime,
        pts: MediaTime,
    ) -> Result<(MediaTime, MediaTime), PackageError> {
        match self.last_dts {
            Some(previous) if dts <= previous => {
                if previous - dts > DTS_ROUNDING {
                    return Err(PackageError::NonMonotonic { dts, previous });
                }
                let dts = previous + ONE_TICK;
                Ok((dts, pts.max(dts)))
            }
            _ => Ok((dts, pts)),
        }
    }

    /// Records an accepted frame's decode time.
    pub fn record(&mut self, dts: MediaTime) {
        if let Some(prev) = self.last_dts {
            self.frame_duration = dts.saturating_sub(prev).clamp(1, NANOS_PER_SEC);
            self.steps.push_back(self.frame_duration);
            if self.steps.len() > STEPS_KEPT {
                self.steps.pop_front();
            }
        }
        self.last_dts = Some(dts);
    }

    /// A new input session: its decode times start afresh.
    pub fn reset(&mut self) {
        self.last_dts = None;
    }

    pub fn frame_duration(&self) -> MediaTime {
        self.frame_duration
    }

    /// The part look-ahead: the largest recent decode step.
    pub fn max_step(&self) -> MediaTime {
        self.steps
            .iter()
            .copied()
            .max()
            .unwrap_or(self.frame_duration)
    }
}

/// An open segment larger than this drops further frames (a keyframe never came).
pub(crate) const MAX_SEGMENT_BYTES: usize = 64 << 20;
/// The same bound in frames: tiny frames must not grow an open segment without end
/// (at 120 fps this is over two minutes of video).
pub(crate) const MAX_SEGMENT_FRAMES: usize = 16_384;
/// Most missing segments listed as `EXT-X-GAP` to keep an engine's numbering on media
/// time after it was down; a longer hole keeps counting by one.
const MAX_GAP_FILL: MediaTime = 64;

/// What a rendition's timeline decided, in the order it happened. The packager muxes and
/// stores these; the timeline itself never sees a byte of container format.
#[derive(Debug)]
pub(crate) enum Step {
    /// A part of the open segment `msn` closed: `frames`, the last ending at `next_dts`.
    /// `last`: the segment ends with this part.
    Part {
        msn: u64,
        frames: Vec<Frame>,
        next_dts: MediaTime,
        last: bool,
    },
    /// A segment closed (after its last part, when there are parts).
    Segment(ClosedSegment),
    /// A whole segment of media that never came (the engine was down), listed as a gap.
    Gap {
        msn: u64,
        start: MediaTime,
        end: MediaTime,
    },
    /// A segment opened with the frame just pushed.
    Opened {
        msn: u64,
        start: MediaTime,
        discontinuity: bool,
    },
}

/// A finished segment: its media interval and frames are known.
#[derive(Debug)]
pub(crate) struct ClosedSegment {
    pub msn: u64,
    pub start: MediaTime,
    pub end: MediaTime,
    pub discontinuity: bool,
    pub frames: Vec<Frame>,
    /// Decode time just after the last frame (the next frame's, or extrapolated).
    pub next_dts: MediaTime,
}

/// The segment being filled.
#[derive(Debug)]
struct Open {
    msn: u64,
    /// `grid_of` its first frame.
    grid: i64,
    start: MediaTime,
    discontinuity: bool,
    frames: Vec<Frame>,
    bytes: usize,
    /// Index in `frames` of the first frame not yet in a part.
    part_from: usize,
}

/// What the audio follower needs of rendition 0's open segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenSpan {
    pub msn: u64,
    pub start: MediaTime,
    pub discontinuity: bool,
    /// The segment surely reaches this far: it can end only at a keyframe past its grid
    /// line, less the tolerance.
    pub sure_end: MediaTime,
    /// The grid line it ends on when the keyframe that closes it is on or past the line.
    pub line: MediaTime,
}

/// One video rendition's timeline: frames in (decode order), parts and segments out.
/// Segments are cut at the first keyframe on or past each grid line of `d`, so every
/// rendition and every engine fed the same input cuts segment N at the same instant;
/// numbers follow media time, and keep counting by one across seams.
#[derive(Debug)]
pub(crate) struct RenditionTimeline {
    d: MediaTime,
    part_target: Option<MediaTime>,
    clock: DecodeClock,
    open: Option<Open>,
    next_msn: Option<u64>,
    pending_discontinuity: bool,
    last_end: Option<MediaTime>,
    /// The engine was down: the next cut lists what it missed as gaps.
    after_outage: bool,
}

impl RenditionTimeline {
    /// `d` > 0: the segment duration; `part_target`: LL-HLS parts of at most this.
    pub fn new(d: MediaTime, part_target: Option<MediaTime>) -> Self {
        RenditionTimeline {
            d: d.max(1),
            part_target: part_target.filter(|t| *t > 0),
            clock: DecodeClock::default(),
            open: None,
            next_msn: None,
            pending_discontinuity: false,
            last_end: None,
            after_outage: false,
        }
    }

    /// Takes a frame; what closes or opens because of it is appended to `out`. Returns
    /// the frame's presentation time as admitted (equal decode times are nudged).
    pub fn push(&mut self, frame: Frame, out: &mut Vec<Step>) -> Result<MediaTime, PackageError> {
        let mut frame = frame;
        (frame.dts, frame.pts) = self.clock.admit(frame.dts, frame.pts)?;
        let grid = grid_of(frame.pts, self.d);
        let cut = match &self.open {
            None if !frame.keyframe => return Err(PackageError::WaitingForKeyframe),
            None => true,
            Some(open) => frame.keyframe && grid > open.grid,
        };
        if !cut
            && let Some(open) = &self.open
            && (open.bytes + frame.data.len() > MAX_SEGMENT_BYTES
                || open.frames.len() >= MAX_SEGMENT_FRAMES)
        {
            return Err(PackageError::SegmentTooLarge(MAX_SEGMENT_BYTES));
        }
        self.clock.record(frame.dts);
        if cut {
            self.close_with(Some((frame.pts, frame.dts)), out);
            self.fill_gap(frame.pts, out);
            // The first segment is numbered from media time; after that numbers go up by
            // one, also across a seam: a playlist's numbering is implicit (MEDIA-SEQUENCE
            // plus position), so it cannot skip. Whole segments of media that never came
            // (an engine down for a while) were listed as gaps just above, so the numbers
            // stay those of every other engine on the same input.
            let msn = self.next_msn.unwrap_or_else(|| grid.max(0) as u64);
            self.next_msn = Some(msn.saturating_add(1));
            let discontinuity = std::mem::take(&mut self.pending_discontinuity);
            out.push(Step::Opened {
                msn,
                start: frame.pts,
                discontinuity,
            });
            self.open = Some(Open {
                msn,
                grid,
                start: frame.pts,
                discontinuity,
                frames: Vec::with_capacity(64),
                bytes: 0,
                part_from: 0,
            });
        } else {
            self.close_part(frame.dts, false, out);
        }
        let pts = frame.pts;
        let open = self.open.as_mut().ok_or(PackageError::WaitingForKeyframe)?;
        open.bytes += frame.data.len();
        open.frames.push(frame);
        Ok(pts)
    }

    /// Closes the open segment with nothing after it (a seam or the end): its end is
    /// extrapolated by one frame duration.
    pub fn close(&mut self, out: &mut Vec<Step>) {
        self.close_with(None, out);
    }

    /// The input session changed: the next segment carries a discontinuity (once there
    /// has been one) and decode times start afresh. Call after [`close`](Self::close).
    /// The next segment opened carries `EXT-X-DISCONTINUITY`, even if it is the first
    /// (an engine run that continues another's playlists).
    pub fn mark_discontinuity(&mut self) {
        self.pending_discontinuity = true;
    }

    pub fn seam(&mut self) {
        self.pending_discontinuity = self.next_msn.is_some() || self.pending_discontinuity;
        self.clock.reset();
    }

    /// The engine was down: besides the seam, the next cut lists what it missed as gaps.
    pub fn outage(&mut self) {
        self.after_outage = true;
    }

    /// The number of the newest segment opened (open or closed), if any.
    pub fn newest_msn(&self) -> Option<u64> {
        self.open
            .as_ref()
            .map(|o| o.msn)
            .or(self.next_msn.map(|n| n.saturating_sub(1)))
    }

    /// Drops an open segment numbered past `msn` (this rendition had opened segment
    /// `msn + 1` when the input ended, another had not): every rendition then resumes
    /// on one number. Returns whether one was dropped.
    pub fn drop_open_past(&mut self, msn: u64) -> bool {
        if self.open.as_ref().is_some_and(|o| o.msn > msn) {
            self.open = None;
            self.next_msn = Some(msn.saturating_add(1));
            return true;
        }
        false
    }

    pub fn next_msn(&self) -> Option<u64> {
        self.next_msn
    }

    /// Renumbers the next segment (renditions resume together after a seam); only once
    /// this rendition has numbered segments.
    pub fn resume_at(&mut self, msn: Option<u64>) {
        if self.next_msn.is_some() {
            self.next_msn = msn;
        }
    }

    pub fn open_span(&self) -> Option<OpenSpan> {
        let d = self.d;
        self.open.as_ref().map(|o| OpenSpan {
            msn: o.msn,
            start: o.start,
            discontinuity: o.discontinuity,
            sure_end: (o.grid + 1)
                .saturating_mul(d)
                .saturating_sub(grid_tolerance(d)),
            line: (o.grid + 1).saturating_mul(d),
        })
    }

    /// Where the last closed segment ended.
    pub fn last_end(&self) -> Option<MediaTime> {
        self.last_end
    }

    #[cfg(test)]
    pub fn open_frames(&self) -> &[Frame] {
        self.open.as_ref().map_or(&[], |o| &o.frames)
    }

    /// LL-HLS: the frames of the open segment not yet in a part become one, ending at
    /// `next_dts`, when the next frame could take it past the target (or `last`).
    fn close_part(&mut self, next_dts: MediaTime, last: bool, out: &mut Vec<Step>) {
        let Some(target) = self.part_target else {
            return;
        };
        let step = self.clock.max_step();
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let Some(first) = open.frames.get(open.part_from) else {
            return;
        };
        if !last && !part_full(first.dts, next_dts, step, target) {
            return;
        }
        out.push(Step::Part {
            msn: open.msn,
            frames: open.frames[open.part_from..].to_vec(),
            next_dts,
            last,
        });
        open.part_from = open.frames.len();
    }

    /// Closes the open segment. `next` is the (pts, dts) of the frame that opens the
    /// next one; without it the end is extrapolated.
    fn close_with(&mut self, next: Option<(MediaTime, MediaTime)>, out: &mut Vec<Step>) {
        let Some(open) = self.open.as_ref() else {
            return;
        };
        let Some(last_dts) = open.frames.last().map(|f| f.dts) else {
            return;
        };
        let (end, next_dts) = next.unwrap_or_else(|| {
            let max_pts = open
                .frames
                .iter()
                .map(|f| f.pts)
                .max()
                .unwrap_or(open.start);
            let step = self.clock.frame_duration();
            (max_pts.saturating_add(step), last_dts.saturating_add(step))
        });
        // The segment's last part ends where the segment does.
        self.close_part(next_dts, true, out);
        let Some(open) = self.open.take() else {
            return;
        };
        let end = end.max(open.start.saturating_add(1));
        self.last_end = Some(end);
        out.push(Step::Segment(ClosedSegment {
            msn: open.msn,
            start: open.start,
            end,
            discontinuity: open.discontinuity,
            frames: open.frames,
            next_dts,
        }));
    }

    /// After an outage, lists `EXT-X-GAP` segments for the whole segment durations missing
    /// between the end of the last segment and `start` (RFC 8216bis §4.4.4.7), when the
    /// hole is at most [`MAX_GAP_FILL`] segments. (A new input session is not an outage:
    /// every engine sees the same seam and numbers across it the same way.)
    fn fill_gap(&mut self, start: MediaTime, out: &mut Vec<Step>) {
        let d = self.d;
        if !std::mem::take(&mut self.after_outage) {
            return;
        }
        let (Some(next), Some(end)) = (self.next_msn, self.last_end) else {
            return;
        };
        if self.open.is_some() || start <= end {
            return;
        }
        let missing = (start - end).saturating_add(grid_tolerance(d)) / d;
        if missing <= 0 || missing > MAX_GAP_FILL {
            return;
        }
        for i in 0..missing {
            let gap_start = end.saturating_add(i * d);
            out.push(Step::Gap {
                msn: next + i as u64,
                start: gap_start,
                end: gap_start.saturating_add(d),
            });
        }
        self.next_msn = Some(next + missing as u64);
        self.last_end = Some(end.saturating_add(missing * d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: MediaTime = 1_000_000;

    #[test]
    fn equal_decode_times_are_nudged_and_steps_back_refused() {
        let mut c = DecodeClock::default();
        assert_eq!(c.admit(100 * MS, 100 * MS), Ok((100 * MS, 100 * MS)));
        c.record(100 * MS);
        assert_eq!(
            c.admit(100 * MS, 100 * MS),
            Ok((100 * MS + ONE_TICK, 100 * MS + ONE_TICK))
        );
        assert_eq!(
            c.admit(99 * MS, 120 * MS),
            Ok((100 * MS + ONE_TICK, 120 * MS))
        );
        assert!(matches!(
            c.admit(90 * MS, 90 * MS),
            Err(PackageError::NonMonotonic { .. })
        ));
        c.reset();
        assert_eq!(c.admit(5 * MS, 5 * MS), Ok((5 * MS, 5 * MS)));
    }

    /// 30 fps with millisecond timestamps (33/34 ms steps): parts of 0.5 s close before
    /// the frame that could pass the target, so none is longer than 0.5 s.
    #[test]
    fn parts_never_pass_the_target_on_jittery_clocks() {
        let target = 500 * MS;
        let mut c = DecodeClock::default();
        let mut first = 0;
        let mut longest = 0;
        for k in 0..300i64 {
            let dts = (k * 1000 + 15) / 30 * MS; // rounded to the millisecond
            if k > 0 && part_full(first, dts, c.max_step(), target) {
                longest = longest.max(dts - first);
                first = dts;
            }
            c.record(dts);
        }
        assert!(longest <= target && longest >= 450 * MS, "{longest}");
        // Exact 30 fps in nanoseconds: fifteen frames, exactly 0.5 s.
        let f = NANOS_PER_SEC / 30;
        assert!(!part_full(0, 14 * f, f, target));
        assert!(part_full(0, 15 * f, f, target));
    }

    #[test]
    fn keyframes_a_hair_early_open_their_grid_line() {
        let d = 2 * NANOS_PER_SEC;
        assert_eq!(grid_of(2 * NANOS_PER_SEC - 40 * MS, d), 1);
        assert_eq!(grid_of(2 * NANOS_PER_SEC - 200 * MS, d), 0);
        assert_eq!(grid_of(-1, d), 0);
        assert_eq!(grid_of(-200 * MS, d), -1);
    }

    fn video(ms: i64, keyframe: bool) -> Frame {
        Frame {
            track: sluice_core::TrackKind::Video,
            pts: ms * MS,
            dts: ms * MS,
            keyframe,
            data: bytes::Bytes::from_static(&[0, 0, 0, 1, 0x65]),
        }
    }

    /// Pushes 30 fps video with millisecond timestamps from `from_ms` for `frames`
    /// frames, a keyframe every `gop` frames; returns the steps.
    fn feed(t: &mut RenditionTimeline, from_ms: i64, frames: i64, gop: i64) -> Vec<Step> {
        let mut out = Vec::new();
        for k in 0..frames {
            let ms = from_ms + (k * 1000 + 15) / 30;
            t.push(video(ms, k % gop == 0), &mut out).unwrap();
        }
        out
    }

    /// Frames in, parts and segments out: segments cut at the first keyframe on or past
    /// each grid line and numbered by it; every part at most the target, the first of a
    /// segment independent; a segment's frames are exactly those of its parts, in order.
    #[test]
    fn segments_are_cut_on_the_grid_and_are_their_parts() {
        let d = 2 * NANOS_PER_SEC;
        let target = 500 * MS;
        let mut t = RenditionTimeline::new(d, Some(target));
        // From 10 s: keyframes every second, so segments are cut every other keyframe.
        let mut out = feed(&mut t, 10_000, 30 * 9, 30);
        t.close(&mut out);
        let mut opened = vec![];
        let mut segments = vec![];
        let mut parts_of: Vec<Vec<i64>> = vec![];
        let mut current: Vec<i64> = vec![];
        for step in &out {
            match step {
                Step::Opened { msn, start, .. } => opened.push((*msn, *start)),
                Step::Part {
                    frames,
                    next_dts,
                    last,
                    ..
                } => {
                    assert!(next_dts - frames[0].dts <= target);
                    if current.is_empty() {
                        assert!(frames[0].keyframe, "a segment's first part is independent");
                    }
                    current.extend(frames.iter().map(|f| f.dts));
                    if *last {
                        parts_of.push(std::mem::take(&mut current));
                    }
                }
                Step::Segment(seg) => {
                    segments.push((seg.msn, seg.start, seg.end));
                    let dts: Vec<i64> = seg.frames.iter().map(|f| f.dts).collect();
                    assert_eq!(
                        parts_of.last(),
                        Some(&dts),
                        "segment {} = its parts",
                        seg.msn
                    );
                }
                Step::Gap { .. } => panic!("no gaps without an outage"),
            }
        }
        assert_eq!(
            opened.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![5, 6, 7, 8, 9]
        );
        assert_eq!(segments.len(), 5);
        for w in segments.windows(2) {
            assert_eq!(w[0].2, w[1].1, "segments follow each other");
            assert_eq!(w[1].1 % d, 0, "cut on a grid line");
        }
    }

    /// Without a part target there are no parts, only segments.
    #[test]
    fn no_parts_without_a_target() {
        let mut t = RenditionTimeline::new(NANOS_PER_SEC, None);
        let out = feed(&mut t, 0, 90, 30);
        assert!(!out.iter().any(|s| matches!(s, Step::Part { .. })));
        assert_eq!(
            out.iter().filter(|s| matches!(s, Step::Segment(_))).count(),
            2
        );
    }

    /// A seam flags the next segment and keeps counting by one; an outage lists the
    /// whole segments it missed as gaps, so numbers stay on media time.
    #[test]
    fn seams_count_on_and_outages_leave_gaps() {
        let d = NANOS_PER_SEC;
        let mut t = RenditionTimeline::new(d, None);
        let mut out = feed(&mut t, 20_000, 60, 30); // segments 20, 21 (open)
        t.close(&mut out);
        t.seam();
        out.clear();
        let out2 = feed(&mut t, 100_000, 30, 30); // a new session far later
        assert!(matches!(
            out2[0],
            Step::Opened {
                msn: 22,
                discontinuity: true,
                ..
            }
        ));
        let mut out = out2;
        t.close(&mut out);
        t.seam();
        t.outage();
        out.clear();
        // Down from 101 s to 104 s: 101, 102, 103 are gaps, 104 is media.
        let out = feed(&mut t, 104_000, 30, 30);
        let gaps: Vec<u64> = out
            .iter()
            .filter_map(|s| match s {
                Step::Gap { msn, .. } => Some(*msn),
                _ => None,
            })
            .collect();
        assert_eq!(gaps, vec![23, 24, 25]);
        assert!(matches!(out.last(), Some(Step::Opened { msn: 26, .. })));
    }

    /// A rendition that opened a segment the others have not yet drops it at a seam.
    #[test]
    fn an_open_segment_ahead_of_the_others_is_dropped() {
        let mut t = RenditionTimeline::new(NANOS_PER_SEC, None);
        let _ = feed(&mut t, 0, 31, 30); // segment 1 opened by its keyframe
        assert_eq!(t.newest_msn(), Some(1));
        assert!(t.drop_open_past(0));
        assert_eq!(t.next_msn(), Some(1));
        assert!(t.open_frames().is_empty());
    }
}
