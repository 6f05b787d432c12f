//! Where "now" comes from, in Unix seconds: descriptors carry wall-clock times (specs/04 §3), so
//! their validation, the view's expiry and the guards' ages all read one clock, which tests
//! and simulations replace.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A wall clock in Unix seconds. Cloning shares it.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl WallClock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    /// A clock that reads `now` (a test's or a simulation's time).
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The time now, in Unix seconds.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WallClock").field(&self.now()).finish()
    }
}

/// Clocks are equal when they are the same clock.
impl PartialEq for WallClock {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for WallClock {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn the_system_clock_is_past_2025_and_a_test_clock_reads_what_it_is_told() {
        assert!(WallClock::system().now() > 1_735_689_600);
        let t = Arc::new(AtomicU64::new(1_000));
        let clock = WallClock::from_fn({
            let t = Arc::clone(&t);
            move || t.load(Ordering::Relaxed)
        });
        assert_eq!(clock.now(), 1_000);
        t.store(2_000, Ordering::Relaxed);
        assert_eq!(clock.clone().now(), 2_000);
        assert_eq!(clock, clock.clone());
        assert_ne!(clock, WallClock::system());
    }
}
