//! Helpers shared by the client's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::io;
use std::sync::{Arc, Mutex};

/// Everything logged, for the test to read.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuf {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// Installs a global subscriber that logs at `filter` into a buffer the test reads (once per
/// test binary).
pub fn capture_logs(filter: &str) -> LogBuf {
    let logs = LogBuf::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    logs
}
