//! What an engine run reports about itself, read at any time by status and metrics:
//! atomics written on the engine's own paths (its task and GStreamer's streaming
//! threads), never a lock.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sluice_core::MediaTime;

use crate::TopRung;

/// Nothing seen yet.
const NONE: i64 = i64::MIN;

/// One engine run's counters and gauges.
#[derive(Debug)]
pub struct EngineStats {
    /// Pipelines that failed or stalled and were started again, and engine tasks that
    /// died and were restarted by their supervisor.
    pub restarts: AtomicU64,
    /// Input frames dropped because the pipeline was behind (to the next keyframe).
    pub dropped_frames: AtomicU64,
    /// Newest media time given to the pipeline, and newest media time out of it
    /// (rendition 0's video): their difference is how far the engine runs behind its
    /// input.
    input_pts: AtomicI64,
    output_pts: AtomicI64,
    /// Output media time per wall time over the last sampling period, in thousandths
    /// (1000: real time).
    speed_milli: AtomicU64,
    /// [`TopRung`] as a number: 0 when reuse is not asked for.
    top_rung: AtomicU8,
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            restarts: AtomicU64::new(0),
            dropped_frames: AtomicU64::new(0),
            input_pts: AtomicI64::new(NONE),
            output_pts: AtomicI64::new(NONE),
            speed_milli: AtomicU64::new(0),
            top_rung: AtomicU8::new(0),
        }
    }
}

impl EngineStats {
    pub(crate) fn input(&self, pts: MediaTime) {
        self.input_pts.fetch_max(pts, Relaxed);
    }

    /// A pipeline started at `pts`: its output is due from there.
    pub(crate) fn started_at(&self, pts: MediaTime) {
        self.output_pts.fetch_max(pts, Relaxed);
    }

    pub(crate) fn output(&self, pts: MediaTime) {
        self.output_pts.fetch_max(pts, Relaxed);
    }

    /// Newest output media time, if any.
    pub fn output_pts(&self) -> Option<MediaTime> {
        Some(self.output_pts.load(Relaxed)).filter(|p| *p != NONE)
    }

    /// How far the output's media time is behind the input's; zero before both exist.
    pub fn input_lag(&self) -> Duration {
        let (i, o) = (self.input_pts.load(Relaxed), self.output_pts.load(Relaxed));
        if i == NONE || o == NONE {
            return Duration::ZERO;
        }
        Duration::from_nanos(i.saturating_sub(o).max(0) as u64)
    }

    /// Output media seconds per wall second over the last sampling period.
    pub fn speed(&self) -> f64 {
        self.speed_milli.load(Relaxed) as f64 / 1000.0
    }

    pub(crate) fn set_top_rung(&self, state: Option<TopRung>) {
        let n = match state {
            None => 0,
            Some(TopRung::Reused) => 1,
            Some(TopRung::Encoded) => 2,
            Some(TopRung::FellBack) => 3,
        };
        self.top_rung.store(n, Relaxed);
    }

    /// What the top rendition is in the latest pipeline, when its reuse is asked for.
    pub fn top_rung(&self) -> Option<TopRung> {
        match self.top_rung.load(Relaxed) {
            1 => Some(TopRung::Reused),
            2 => Some(TopRung::Encoded),
            3 => Some(TopRung::FellBack),
            _ => None,
        }
    }

    pub(crate) fn set_speed(&self, media: MediaTime, wall: Duration) {
        let milli = if wall.is_zero() || media <= 0 {
            0
        } else {
            (media as f64 / wall.as_nanos() as f64 * 1000.0).round() as u64
        };
        self.speed_milli.store(milli, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_and_speed_from_media_times() {
        let s = EngineStats::default();
        assert_eq!(s.input_lag(), Duration::ZERO);
        assert_eq!(s.output_pts(), None);
        s.input(5_000_000_000);
        assert_eq!(s.input_lag(), Duration::ZERO, "nothing out yet");
        s.output(4_200_000_000);
        s.output(4_000_000_000); // older: the newest stays
        assert_eq!(s.input_lag(), Duration::from_millis(800));
        s.output(6_000_000_000);
        assert_eq!(s.input_lag(), Duration::ZERO, "never negative");
        s.set_speed(1_000_000_000, Duration::from_secs(2));
        assert_eq!(s.speed(), 0.5);
        s.set_speed(-1, Duration::from_secs(2));
        assert_eq!(s.speed(), 0.0);
    }
}
