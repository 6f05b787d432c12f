//! `Sensitive<T>`: destinations and peer addresses reach logs only when the operator turns
//! safe logging off (STYLE.md).

use std::fmt;

/// A value that is logged as `[scrubbed]` unless safe logging is off.
pub(crate) struct Sensitive<T> {
    value: T,
    safe: bool,
}

impl<T> Sensitive<T> {
    /// Wraps `value`; `safe` is the relay's `safe_logging` setting.
    pub(crate) fn new(value: T, safe: bool) -> Self {
        Self { value, safe }
    }
}

impl<T: fmt::Debug> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.safe {
            f.write_str("[scrubbed]")
        } else {
            fmt::Debug::fmt(&self.value, f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbed_unless_turned_off() {
        assert_eq!(
            Sensitive::new("example.com", true).to_string(),
            "[scrubbed]"
        );
        assert_eq!(
            Sensitive::new("example.com", false).to_string(),
            "\"example.com\""
        );
    }
}
