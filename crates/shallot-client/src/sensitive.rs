//! `Sensitive<T>`: destinations and client addresses that must not reach logs.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether sensitive values are scrubbed from logs (on unless turned off).
static SAFE_LOGGING: AtomicBool = AtomicBool::new(true);

/// Turns safe logging on (the default) or off for the whole process. The client calls it
/// from its config's `safe_logging` at start.
pub fn set_safe_logging(on: bool) {
    SAFE_LOGGING.store(on, Ordering::Relaxed);
}

/// A value (a destination, a client address, credentials) that `Display` and `Debug` print
/// as `[scrubbed]` while safe logging is on, as Arti's `safelog::Sensitive` does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sensitive<T>(pub T);

impl<T> Sensitive<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The wrapped value (for use, never for logging).
    pub fn as_inner(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: fmt::Display> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if SAFE_LOGGING.load(Ordering::Relaxed) {
            f.write_str("[scrubbed]")
        } else {
            self.0.fmt(f)
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if SAFE_LOGGING.load(Ordering::Relaxed) {
            f.write_str("[scrubbed]")
        } else {
            self.0.fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbed_by_default() {
        // Other tests never turn it off, so the default holds here.
        let s = Sensitive::new("example.com:443");
        assert_eq!(format!("{s}"), "[scrubbed]");
        assert_eq!(format!("{s:?}"), "[scrubbed]");
        assert_eq!(*s.as_inner(), "example.com:443");
    }
}
