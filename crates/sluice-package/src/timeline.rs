//! The timeline rules of one video rendition, apart from any muxing: which decode times
//! are accepted (and which are nudged), on which grid line a frame falls, and when an
//! LL-HLS part must close. Pure functions and a small clock, so the rules are tested on
//! their own; the packager applies them and writes what they decide.

use std::collections::VecDeque;

use sluice_core::MediaTime;
use sluice_core::time::NANOS_PER_SEC;

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
}
