//! Rate-limited reporting: a fault that repeats (a bad frame 47 times a second, a flood
//! of refused connections) is logged once per interval with how many were suppressed.

use std::time::{Duration, Instant};

/// Lets one report through per `interval`; counts the rest.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Call on every occurrence. `Some(n)`: report now, `n` occurrences were
    /// suppressed since the last report. `None`: stay quiet.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// [`Throttle::hit`] at the current instant.
    pub fn hit_now(&mut self) -> Option<u64> {
        self.hit(Instant::now())
    }
}

impl Default for Throttle {
    /// One report every 10 seconds.
    fn default() -> Self {
        Throttle::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_interval_with_the_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(0));
        for i in 1..=47 {
            assert_eq!(t.hit(t0 + Duration::from_millis(i * 20)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(47));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
    }
}
