//! Per-stream credit windows and the per-circuit limits (specs/03 §11, "Flow control").
//!
//! The protocol constants (`STREAM_WINDOW_INITIAL`, `STREAM_WINDOW_MAX`, `OPTIMISTIC_DATA_MAX`,
//! `MAX_STREAMS_PER_CIRCUIT`) are part of the wire protocol: both ends MUST agree on them. The
//! queue bounds are local choices that only shape backpressure.

use std::time::{Duration, Instant};

use crate::err::ProtoError;

/// Credit (bytes) each side of a stream starts with in each direction, without any
/// WINDOW_UPDATE. specs/03 §11.2.
pub const STREAM_WINDOW_INITIAL: u32 = 128 * 1024;

/// The most credit a sender may hold on one stream; a WINDOW_UPDATE that would exceed it is a
/// protocol error. specs/03 §11.2.
pub const STREAM_WINDOW_MAX: u32 = 16 * 1024 * 1024;

/// A receiver sends WINDOW_UPDATE once the application has consumed at least this many bytes
/// since its last update. specs/03 §11.3.
pub const WINDOW_UPDATE_THRESHOLD: u32 = STREAM_WINDOW_INITIAL / 4;

/// Bytes of DATA a client may send on a stream before CONNECTED; the exit buffers at most this
/// many. specs/03 §11.5.
pub const OPTIMISTIC_DATA_MAX: usize = 16 * 1024;

/// Streams (including RESOLVE streams) open at once on one circuit. specs/03 §11.6.
pub const MAX_STREAMS_PER_CIRCUIT: usize = 64;

/// Stream ids an exit remembers as half-closed (it sent END or RESOLVED) to refuse their
/// reuse and drop late messages. specs/03 §7.2.
pub const HALF_CLOSED_IDS: usize = MAX_STREAMS_PER_CIRCUIT;

/// Bytes a receiver buffers for one stream without window growth: its initial window.
/// specs/03 §11.6.
pub const MAX_STREAM_BUFFER: usize = STREAM_WINDOW_INITIAL as usize;

/// Credit a receiver may add, in total over the open streams of one circuit, by growing their
/// windows beyond `STREAM_WINDOW_INITIAL` (specs/03 §11.3, local). 4 MiB covers 180 MB/s at a
/// 20 ms circuit round trip.
pub const CIRCUIT_WINDOW_GROWTH_MAX: u64 = 4 * 1024 * 1024;

/// Bytes a receiver buffers for all the streams of one circuit at most: the initial windows
/// plus the growth budget. specs/03 §11.6.
pub const MAX_CIRCUIT_STREAM_BUFFER: usize =
    MAX_STREAMS_PER_CIRCUIT * MAX_STREAM_BUFFER + CIRCUIT_WINDOW_GROWTH_MAX as usize;

/// Cells a relay queues toward each neighbour (forward queue and backward queue) before it
/// stops reading (`wants_*` turns false). specs/03 §11.4.
pub const RELAY_QUEUE_CELLS: usize = 64;

/// Cells the client queues toward hop 1 before `write_stream` accepts nothing more.
/// specs/03 §11.4.
pub const CLIENT_QUEUE_CELLS: usize = 64;

/// Extra room above the data bound for control messages (CONNECTED, END, RESOLVED, EXTENDED,
/// TRUNCATED, WINDOW_UPDATE, BEGIN...): each open stream can owe at most two, plus a few
/// circuit-level ones. Past this hard bound a queue push is an error. specs/03 §11.4.
pub const CONTROL_RESERVE_CELLS: usize = 2 * MAX_STREAMS_PER_CIRCUIT + 8;

/// Exit actions (`RelayAction`) a relay holds before it stops reading from the previous hop.
/// specs/03 §11.4.
pub const MAX_PENDING_ACTIONS: usize = 256;

/// Sender side of one stream's credit window (specs/03 §11.2).
#[derive(Debug)]
pub(crate) struct SendWindow {
    credit: u64,
}

impl SendWindow {
    pub(crate) fn new() -> Self {
        Self {
            credit: u64::from(STREAM_WINDOW_INITIAL),
        }
    }

    /// Bytes we may still send.
    pub(crate) fn credit(&self) -> usize {
        usize::try_from(self.credit).unwrap_or(usize::MAX)
    }

    /// Spend `n` bytes of credit; the caller never sends more than `credit()`.
    pub(crate) fn spend(&mut self, n: usize) {
        self.credit = self.credit.saturating_sub(n as u64);
    }

    /// Apply a WINDOW_UPDATE. specs/03 §11.2: credit above the max window is a protocol error.
    pub(crate) fn grant(&mut self, stream: u16, increment: u32) -> Result<(), ProtoError> {
        let credit = self.credit + u64::from(increment);
        if increment == 0 || credit > u64::from(STREAM_WINDOW_MAX) {
            return Err(ProtoError::WindowOverflow(stream));
        }
        self.credit = credit;
        Ok(())
    }
}

/// Receiver side of one stream's credit window (specs/03 §11.3).
///
/// Invariant: `allowed + buffered + unacked == window`, where `buffered` is what the
/// application has not consumed yet; so at most one window is ever buffered. `window` starts
/// at `STREAM_WINDOW_INITIAL` and only grows through [`take_update_tuned`](Self::take_update_tuned),
/// never beyond `STREAM_WINDOW_MAX`.
#[derive(Debug)]
pub(crate) struct RecvWindow {
    /// Bytes the peer may still send.
    allowed: u64,
    /// Bytes consumed by the application and not yet granted back.
    unacked: u64,
    /// The current window.
    window: u64,
    /// When the current measurement epoch started (the first update of the epoch).
    epoch_start: Option<Instant>,
    /// Bytes granted back since `epoch_start`.
    epoch_consumed: u64,
}

impl RecvWindow {
    pub(crate) fn new() -> Self {
        Self {
            allowed: u64::from(STREAM_WINDOW_INITIAL),
            unacked: 0,
            window: u64::from(STREAM_WINDOW_INITIAL),
            epoch_start: None,
            epoch_consumed: 0,
        }
    }

    /// Credit added beyond `STREAM_WINDOW_INITIAL` by growth.
    pub(crate) fn growth(&self) -> u64 {
        self.window - u64::from(STREAM_WINDOW_INITIAL)
    }

    /// Like [`take_update`](Self::take_update), and grows the window (specs/03 §11.3,
    /// auto-tuning to the bandwidth-delay product): when the application consumed a whole
    /// window within two round trips (`rtt`), the window limited the stream, so the update
    /// also grants up to one more window, at most `budget` and never beyond
    /// `STREAM_WINDOW_MAX`. Returns the increment and the growth taken from `budget`.
    pub(crate) fn take_update_tuned(
        &mut self,
        now: Instant,
        rtt: Option<Duration>,
        budget: u64,
    ) -> Option<(u32, u64)> {
        if !self.update_due() {
            return None;
        }
        let start = *self.epoch_start.get_or_insert(now);
        self.epoch_consumed += self.unacked;
        let mut growth = 0;
        if self.epoch_consumed >= self.window {
            let fast = rtt.is_some_and(|rtt| {
                !rtt.is_zero() && now.saturating_duration_since(start) < rtt * 2
            });
            if fast {
                growth = self
                    .window
                    .min(budget)
                    .min(u64::from(STREAM_WINDOW_MAX) - self.window);
            }
            self.epoch_start = Some(now);
            self.epoch_consumed = 0;
        }
        let inc = u32::try_from(self.unacked + growth).ok()?;
        self.window += growth;
        self.allowed += self.unacked + growth;
        self.unacked = 0;
        Some((inc, growth))
    }

    /// Account for `n` received bytes; more than the credit given is a protocol error.
    pub(crate) fn receive(&mut self, stream: u16, n: usize) -> Result<(), ProtoError> {
        let n = n as u64;
        if n > self.allowed {
            return Err(ProtoError::CreditViolation(stream));
        }
        self.allowed -= n;
        Ok(())
    }

    /// The application consumed `n` bytes.
    pub(crate) fn consumed(&mut self, n: usize) {
        self.unacked += n as u64;
    }

    /// Whether a WINDOW_UPDATE is due (specs/03 §11.3).
    pub(crate) fn update_due(&self) -> bool {
        self.unacked >= u64::from(WINDOW_UPDATE_THRESHOLD)
    }

    /// Take the increment to send in a WINDOW_UPDATE, if one is due.
    pub(crate) fn take_update(&mut self) -> Option<u32> {
        if !self.update_due() {
            return None;
        }
        let inc = u32::try_from(self.unacked).ok()?;
        self.allowed += self.unacked;
        self.unacked = 0;
        Some(inc)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn recv_window_rejects_more_than_credit() {
        let mut w = RecvWindow::new();
        w.receive(1, STREAM_WINDOW_INITIAL as usize).unwrap();
        assert!(matches!(
            w.receive(1, 1),
            Err(ProtoError::CreditViolation(1))
        ));
    }

    #[test]
    fn update_only_after_consumption_past_threshold() {
        let mut w = RecvWindow::new();
        w.receive(1, 100_000).unwrap();
        assert_eq!(w.take_update(), None);
        w.consumed(WINDOW_UPDATE_THRESHOLD as usize - 1);
        assert_eq!(w.take_update(), None);
        w.consumed(1);
        assert_eq!(w.take_update(), Some(WINDOW_UPDATE_THRESHOLD));
        assert_eq!(w.take_update(), None);
    }

    #[test]
    fn window_grows_only_when_consumed_within_two_rtts_and_within_budget() {
        let t0 = Instant::now();
        let rtt = Some(Duration::from_millis(10));
        let w0 = STREAM_WINDOW_INITIAL as usize;
        let mut w = RecvWindow::new();
        // A whole window consumed within one RTT: the update grants one more window.
        w.receive(1, w0).unwrap();
        w.consumed(w0);
        let (inc, growth) = w.take_update_tuned(t0, rtt, u64::MAX).unwrap();
        assert_eq!(growth, w0 as u64);
        assert_eq!(inc as usize, 2 * w0);
        // The peer may now send two windows, not more.
        w.receive(1, 2 * w0).unwrap();
        assert!(w.receive(1, 1).is_err());
        // Slow consumption (a window over more than two RTTs): no growth.
        w.consumed(2 * w0);
        let later = t0 + Duration::from_millis(100);
        assert_eq!(
            w.take_update_tuned(later, rtt, u64::MAX),
            Some((2 * w0 as u32, 0))
        );
        // No budget, or no RTT known: no growth.
        let mut w = RecvWindow::new();
        w.receive(1, w0).unwrap();
        w.consumed(w0);
        assert_eq!(w.take_update_tuned(t0, rtt, 0), Some((w0 as u32, 0)));
        let mut w = RecvWindow::new();
        w.receive(1, w0).unwrap();
        w.consumed(w0);
        assert_eq!(
            w.take_update_tuned(t0, None, u64::MAX),
            Some((w0 as u32, 0))
        );
    }

    #[test]
    fn window_never_grows_beyond_max() {
        let t0 = Instant::now();
        let rtt = Some(Duration::from_secs(1));
        let mut w = RecvWindow::new();
        let mut s = SendWindow::new();
        for _ in 0..64 {
            let n = w.window as usize;
            w.receive(1, n).unwrap();
            s.spend(n);
            w.consumed(n);
            let (inc, _) = w.take_update_tuned(t0, rtt, u64::MAX).unwrap();
            s.grant(1, inc).unwrap();
            assert!(w.window <= u64::from(STREAM_WINDOW_MAX));
        }
        assert_eq!(w.window, u64::from(STREAM_WINDOW_MAX));
        assert_eq!(
            w.growth(),
            u64::from(STREAM_WINDOW_MAX - STREAM_WINDOW_INITIAL)
        );
    }

    #[test]
    fn send_window_caps_at_max() {
        let mut s = SendWindow::new();
        s.spend(10);
        assert_eq!(s.credit(), STREAM_WINDOW_INITIAL as usize - 10);
        s.grant(1, 10).unwrap();
        let room = STREAM_WINDOW_MAX - STREAM_WINDOW_INITIAL;
        s.grant(1, room).unwrap();
        assert!(matches!(s.grant(1, 1), Err(ProtoError::WindowOverflow(1))));
        assert!(matches!(s.grant(1, 0), Err(ProtoError::WindowOverflow(1))));
    }
}
