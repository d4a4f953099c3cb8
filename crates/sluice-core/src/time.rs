//! Media time and wall-clock time.

use std::time::{Duration, Instant};

/// Media time in nanoseconds on a channel's timeline.
///
/// Nanoseconds match GStreamer's clock time, so buffers cross the engine
/// boundary without rescaling; packagers convert to 90 kHz or the audio sample
/// rate when they write.
pub type MediaTime = i64;

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

pub fn secs_f64_to_nanos(s: f64) -> MediaTime {
    (s * NANOS_PER_SEC as f64).round() as MediaTime
}

pub fn nanos_to_secs_f64(n: MediaTime) -> f64 {
    n as f64 / NANOS_PER_SEC as f64
}

/// Rescales `t` nanoseconds to `timescale` ticks per second, rounding to nearest.
pub fn rescale(t: MediaTime, timescale: u32) -> i64 {
    let v = t as i128 * timescale as i128;
    let d = NANOS_PER_SEC as i128;
    (if v >= 0 {
        (v + d / 2) / d
    } else {
        (v - d / 2) / d
    }) as i64
}

/// A source of "now", injected so that timing logic can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

pub fn duration_to_nanos(d: Duration) -> MediaTime {
    d.as_nanos().min(i64::MAX as u128) as MediaTime
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_rounds() {
        assert_eq!(rescale(NANOS_PER_SEC, 90_000), 90_000);
        assert_eq!(rescale(21_333_333, 48_000), 1024);
        assert_eq!(rescale(-NANOS_PER_SEC, 1000), -1000);
    }
}
