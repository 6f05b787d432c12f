//! Admission limits against hostile peers: circuits in total, circuits per peer, CREATE rate per
//! peer (token bucket), and handshakes in progress (specs/00 §4.2 item 4).
//!
//! A "peer" is the previous hop's libp2p PeerId, the only name a circuit stream carries. A
//! client can make new PeerIds for free, so the per-peer limits slow down one identity, and the
//! total limits (circuits, handshakes) are what bound the relay's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use shallot_p2p::PeerId;

use crate::config::RelayConfig;

/// Circuit streams whose preamble and first cell are still being read, in total. More are
/// closed at once, unread.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Circuit streams one peer may have in that state.
pub const MAX_PENDING_HANDSHAKES_PER_PEER: usize = 16;
/// Peers the limiter remembers; idle entries beyond it are forgotten (they come back with a
/// full bucket, which costs at most one burst).
pub const MAX_PEER_ENTRIES: usize = 4096;

/// Why a circuit was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_circuits` reached.
    Total,
    /// `max_circuits_per_peer` reached for this peer.
    PerPeer,
    /// The peer's CREATE bucket is empty.
    Rate,
    /// Too many handshakes in progress (in total or for this peer).
    Handshakes,
}

#[derive(Debug)]
struct PeerState {
    circuits: usize,
    pending: usize,
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
struct Inner {
    max_circuits: usize,
    max_per_peer: usize,
    rate: f64,
    burst: f64,
    circuits: usize,
    pending: usize,
    peers: HashMap<PeerId, PeerState>,
}

/// Shared admission state; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    inner: Arc<Mutex<Inner>>,
}

/// A circuit's place in the limits; released on drop.
#[derive(Debug)]
pub(crate) struct CircuitSlot {
    limiter: Limiter,
    peer: PeerId,
}

/// A handshake's place in the limits; released on drop.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    limiter: Limiter,
    peer: PeerId,
}

impl Limiter {
    pub(crate) fn new(config: &RelayConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                max_circuits: config.max_circuits,
                max_per_peer: config.max_circuits_per_peer,
                rate: f64::from(config.create_rate_per_peer.per_second),
                burst: f64::from(config.create_rate_per_peer.burst),
                circuits: 0,
                pending: 0,
                peers: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent under a panic elsewhere (plain counters): keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Circuits admitted and not yet released.
    pub(crate) fn circuits(&self) -> usize {
        self.lock().circuits
    }

    /// A slot for reading a new stream's preamble and first cell.
    pub(crate) fn begin_handshake(
        &self,
        peer: PeerId,
        now: Instant,
    ) -> Result<HandshakeSlot, Refusal> {
        let mut g = self.lock();
        if g.pending >= MAX_PENDING_HANDSHAKES {
            return Err(Refusal::Handshakes);
        }
        let burst = g.burst;
        let state = g.entry(peer, burst, now);
        if state.pending >= MAX_PENDING_HANDSHAKES_PER_PEER {
            return Err(Refusal::Handshakes);
        }
        state.pending += 1;
        g.pending += 1;
        Ok(HandshakeSlot {
            limiter: self.clone(),
            peer,
        })
    }

    /// Admits a circuit from `peer` (after its CREATE arrived, before the handshake's work):
    /// checks the total, the per-peer count and takes a token from the peer's bucket.
    pub(crate) fn admit(&self, peer: PeerId, now: Instant) -> Result<CircuitSlot, Refusal> {
        let mut g = self.lock();
        if g.circuits >= g.max_circuits {
            return Err(Refusal::Total);
        }
        let (max_per_peer, rate, burst) = (g.max_per_peer, g.rate, g.burst);
        let state = g.entry(peer, burst, now);
        if state.circuits >= max_per_peer {
            return Err(Refusal::PerPeer);
        }
        state.refill(rate, burst, now);
        if state.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        state.tokens -= 1.0;
        state.circuits += 1;
        g.circuits += 1;
        Ok(CircuitSlot {
            limiter: self.clone(),
            peer,
        })
    }
}

impl Inner {
    fn entry(&mut self, peer: PeerId, burst: f64, now: Instant) -> &mut PeerState {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEER_ENTRIES {
            self.prune(now);
        }
        self.peers.entry(peer).or_insert(PeerState {
            circuits: 0,
            pending: 0,
            tokens: burst,
            refilled: now,
        })
    }

    /// Forgets idle peers: first those whose bucket is full again, then any idle one.
    fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.peers.retain(|_, s| {
            s.refill(rate, burst, now);
            !s.idle() || s.tokens < burst
        });
        if self.peers.len() >= MAX_PEER_ENTRIES {
            self.peers.retain(|_, s| !s.idle());
        }
    }

    fn release(&mut self, peer: &PeerId, circuit: bool) {
        if circuit {
            self.circuits = self.circuits.saturating_sub(1);
        } else {
            self.pending = self.pending.saturating_sub(1);
        }
        if let Some(s) = self.peers.get_mut(peer) {
            if circuit {
                s.circuits = s.circuits.saturating_sub(1);
            } else {
                s.pending = s.pending.saturating_sub(1);
            }
        }
    }
}

impl PeerState {
    fn idle(&self) -> bool {
        self.circuits == 0 && self.pending == 0
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.refilled = now;
    }
}

impl Drop for CircuitSlot {
    fn drop(&mut self) {
        self.limiter.lock().release(&self.peer, true);
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.limiter.lock().release(&self.peer, false);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::CreateRate;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn limiter(total: usize, per_peer: usize, per_second: u32, burst: u32) -> Limiter {
        Limiter::new(&RelayConfig {
            max_circuits: total,
            max_circuits_per_peer: per_peer,
            create_rate_per_peer: CreateRate { per_second, burst },
            ..RelayConfig::default()
        })
    }

    #[test]
    fn per_peer_and_total_limits_hold_and_release() {
        let l = limiter(3, 2, 1000, 1000);
        let now = Instant::now();
        let (a, b) = (peer(), peer());
        let a1 = l.admit(a, now).unwrap();
        let _a2 = l.admit(a, now).unwrap();
        assert_eq!(l.admit(a, now).unwrap_err(), Refusal::PerPeer);
        let _b1 = l.admit(b, now).unwrap();
        assert_eq!(l.admit(b, now).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(l.circuits(), 2);
        let _b2 = l.admit(b, now).unwrap();
    }

    #[test]
    fn create_rate_is_a_token_bucket() {
        let l = limiter(100, 100, 2, 3);
        let t0 = Instant::now();
        let a = peer();
        let mut slots: Vec<_> = (0..3).map(|_| l.admit(a, t0).unwrap()).collect();
        assert_eq!(l.admit(a, t0).unwrap_err(), Refusal::Rate);
        // Another peer has its own bucket.
        slots.push(l.admit(peer(), t0).unwrap());
        // Half a second later: one token (2 per second).
        let t1 = t0 + Duration::from_millis(500);
        slots.push(l.admit(a, t1).unwrap());
        assert_eq!(l.admit(a, t1).unwrap_err(), Refusal::Rate);
        // Much later the bucket is full again, but never above the burst.
        let t2 = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            slots.push(l.admit(a, t2).unwrap());
        }
        assert_eq!(l.admit(a, t2).unwrap_err(), Refusal::Rate);
    }

    #[test]
    fn handshakes_are_bounded_per_peer_and_in_total() {
        let l = limiter(10, 10, 10, 10);
        let now = Instant::now();
        let a = peer();
        let mut held: Vec<_> = (0..MAX_PENDING_HANDSHAKES_PER_PEER)
            .map(|_| l.begin_handshake(a, now).unwrap())
            .collect();
        assert_eq!(l.begin_handshake(a, now).unwrap_err(), Refusal::Handshakes);
        held.pop();
        held.push(l.begin_handshake(a, now).unwrap());
        while held.len() < MAX_PENDING_HANDSHAKES {
            held.push(l.begin_handshake(peer(), now).unwrap());
        }
        assert_eq!(
            l.begin_handshake(peer(), now).unwrap_err(),
            Refusal::Handshakes
        );
    }

    #[test]
    fn the_peer_table_is_bounded() {
        let l = limiter(10, 10, 1, 1);
        let now = Instant::now();
        for _ in 0..MAX_PEER_ENTRIES + 10 {
            drop(l.begin_handshake(peer(), now).unwrap());
        }
        assert!(l.lock().peers.len() <= MAX_PEER_ENTRIES);
    }
}
