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

/// The first instant after `after` on a process-wide grid of `period`s (counted from
/// the first call). Periodic work of many connections (socket reads, protocol timers)
/// scheduled on the grid wakes the runtime once per period for all of them, instead
/// of once per connection at scattered instants.
pub fn next_on_grid(after: Instant, period: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| after);
    let period_ns = period.as_nanos().max(1);
    let since = after.saturating_duration_since(epoch).as_nanos();
    let next = (since / period_ns + 1) * period_ns;
    epoch + Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_points_are_shared_and_ahead() {
        let period = Duration::from_millis(10);
        let now = Instant::now();
        let a = next_on_grid(now, period);
        assert!(a > now && a <= now + period);
        // Anything before the same grid point lands on it; the point itself moves on.
        assert_eq!(next_on_grid(a - Duration::from_nanos(1), period), a);
        assert_eq!(next_on_grid(a, period), a + period);
        // A multiple of the period shares its points.
        let b = next_on_grid(a, 2 * period);
        assert!(b == a + period || b == a + 2 * period);
        assert_eq!(next_on_grid(b - period, period), b);
    }

    #[test]
    fn rescale_rounds() {
        assert_eq!(rescale(NANOS_PER_SEC, 90_000), 90_000);
        assert_eq!(rescale(21_333_333, 48_000), 1024);
        assert_eq!(rescale(-NANOS_PER_SEC, 1000), -1000);
    }
}
