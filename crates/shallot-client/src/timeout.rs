//! The circuit build timeout, learned from recent build times.
//!
//! Tor fits a Pareto distribution to its build times and cuts at the 80th percentile. Shallot
//! keeps it simpler: once [`MIN_SAMPLES`] builds were measured, the timeout is twice the 90th
//! percentile of the last [`BUILD_TIME_SAMPLES`] builds, clamped to the configured bounds.
//! Before that, the configured initial timeout applies. A slow network thus gets a long
//! timeout; a fast one stops waiting early for a hop that will not answer.

use std::collections::VecDeque;
use std::time::Duration;

/// Build times remembered.
pub const BUILD_TIME_SAMPLES: usize = 100;
/// Builds measured before the timeout is learned.
pub(crate) const MIN_SAMPLES: usize = 10;

/// Recent build times and the timeout they give.
#[derive(Debug, Clone)]
pub(crate) struct BuildTimes {
    samples: VecDeque<Duration>,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl BuildTimes {
    pub(crate) fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        Self {
            samples: VecDeque::with_capacity(BUILD_TIME_SAMPLES),
            initial,
            min,
            max: max.max(min),
        }
    }

    /// Remembers one successful build's time; the oldest is forgotten past the bound.
    pub(crate) fn record(&mut self, took: Duration) {
        if self.samples.len() == BUILD_TIME_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(took);
    }

    /// The timeout for the next build.
    pub(crate) fn timeout(&self) -> Duration {
        if self.samples.len() < MIN_SAMPLES {
            return self.initial;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        let idx = (sorted.len() * 9).div_ceil(10).saturating_sub(1);
        let p90 = sorted[idx.min(sorted.len() - 1)];
        (p90 * 2).clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times() -> BuildTimes {
        BuildTimes::new(
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::from_secs(120),
        )
    }

    #[test]
    fn initial_until_enough_samples() {
        let mut t = times();
        for _ in 0..MIN_SAMPLES - 1 {
            t.record(Duration::from_secs(1));
        }
        assert_eq!(t.timeout(), Duration::from_secs(60));
        t.record(Duration::from_secs(1));
        // 2 × 1 s, clamped up to the 5 s floor.
        assert_eq!(t.timeout(), Duration::from_secs(5));
    }

    #[test]
    fn learns_twice_the_90th_percentile() {
        let mut t = times();
        for i in 1..=100u64 {
            t.record(Duration::from_secs(i));
        }
        // p90 of 1..=100 s is 90 s; twice that is clamped to 120 s.
        assert_eq!(t.timeout(), Duration::from_secs(120));
        for _ in 0..100 {
            t.record(Duration::from_secs(10));
        }
        assert_eq!(t.timeout(), Duration::from_secs(20));
    }

    #[test]
    fn samples_are_bounded() {
        let mut t = times();
        for _ in 0..(BUILD_TIME_SAMPLES * 3) {
            t.record(Duration::from_millis(10));
        }
        assert_eq!(t.samples.len(), BUILD_TIME_SAMPLES);
    }
}
