//! Admission limits against hostile peers: circuits in total, and per source circuits, CREATE
//! rate (token bucket) and handshakes in progress (specs/00 §4.4).
//!
//! A circuit's *source* is where its previous hop connects from. A relay listed in this relay's
//! directory store is a source by its PeerId: it carries many clients' circuits, and it proved
//! its address. Any other peer is a source by its address (an IPv4 address or an IPv6 /64):
//! a client can make PeerIds for free, but not addresses, so fresh identities on one host share
//! one budget. The total limits (circuits, handshakes) are what bound the relay as a whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use shallot_directory::HostKey;
use shallot_p2p::PeerId;

use crate::config::{CreateRate, RelayConfig};

/// Circuit streams whose preamble and first cell are still being read, or whose CREATE waits
/// for its turn in the handshake queue, in total. More are closed at once, unread. The queue
/// itself holds at most `MAX_QUEUED_CREATES` and makes room for a newcomer, so sixty-four
/// sources that send their CREATEs at once fill this only with streams that stay silent.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Circuit streams one source may have in that state.
pub const MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 16;
/// Sources the limiter remembers; idle entries beyond it are forgotten (they come back with a
/// full bucket, which costs at most one burst).
pub const MAX_SOURCE_ENTRIES: usize = 4096;

/// Where a circuit comes from, as the limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// A relay listed in the directory store, by its PeerId.
    Relay(PeerId),
    /// Any other peer, by the address it is connected from.
    Host(HostKey),
}

/// Why a circuit was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_circuits` reached.
    Total,
    /// The source holds its most circuits (`max_circuits_per_peer` for a relay,
    /// `max_circuits_per_address` for an address).
    PerSource,
    /// The source's CREATE bucket is empty.
    Rate,
    /// Too many handshakes in progress (in total or for this source).
    Handshakes,
}

#[derive(Debug)]
struct SourceState {
    circuits: usize,
    pending: usize,
    tokens: f64,
    refilled: Instant,
}

/// The limits of one kind of source.
#[derive(Debug, Clone, Copy)]
struct SourceLimits {
    max_circuits: usize,
    rate: f64,
    burst: f64,
}

impl SourceLimits {
    fn new(max_circuits: usize, rate: CreateRate) -> Self {
        Self {
            max_circuits,
            rate: f64::from(rate.per_second),
            burst: f64::from(rate.burst),
        }
    }
}

/// The limits of each kind of source.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    relay: SourceLimits,
    host: SourceLimits,
}

impl Bounds {
    fn of(self, source: &Source) -> SourceLimits {
        match source {
            Source::Relay(_) => self.relay,
            Source::Host(_) => self.host,
        }
    }
}

#[derive(Debug)]
struct Inner {
    max_circuits: usize,
    bounds: Bounds,
    circuits: usize,
    pending: usize,
    sources: HashMap<Source, SourceState>,
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
    source: Source,
}

/// A handshake's place in the limits; released on drop.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    limiter: Limiter,
    source: Source,
}

impl Limiter {
    pub(crate) fn new(config: &RelayConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                max_circuits: config.max_circuits,
                bounds: Bounds {
                    relay: SourceLimits::new(
                        config.max_circuits_per_peer,
                        config.create_rate_per_peer,
                    ),
                    host: SourceLimits::new(
                        config.max_circuits_per_address,
                        config.create_rate_per_address,
                    ),
                },
                circuits: 0,
                pending: 0,
                sources: HashMap::new(),
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
        source: Source,
        now: Instant,
    ) -> Result<HandshakeSlot, Refusal> {
        let mut g = self.lock();
        if g.pending >= MAX_PENDING_HANDSHAKES {
            return Err(Refusal::Handshakes);
        }
        let state = g.entry(source, now);
        if state.pending >= MAX_PENDING_HANDSHAKES_PER_SOURCE {
            return Err(Refusal::Handshakes);
        }
        state.pending += 1;
        g.pending += 1;
        Ok(HandshakeSlot {
            limiter: self.clone(),
            source,
        })
    }

    /// Admits a circuit from `source` (after its CREATE arrived, before the handshake's work):
    /// checks the total, the source's count and takes a token from the source's bucket.
    pub(crate) fn admit(&self, source: Source, now: Instant) -> Result<CircuitSlot, Refusal> {
        let mut g = self.lock();
        if g.circuits >= g.max_circuits {
            return Err(Refusal::Total);
        }
        let limits = g.bounds.of(&source);
        let state = g.entry(source, now);
        if state.circuits >= limits.max_circuits {
            return Err(Refusal::PerSource);
        }
        state.refill(limits, now);
        if state.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        state.tokens -= 1.0;
        state.circuits += 1;
        g.circuits += 1;
        Ok(CircuitSlot {
            limiter: self.clone(),
            source,
        })
    }
}

impl Inner {
    fn entry(&mut self, source: Source, now: Instant) -> &mut SourceState {
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCE_ENTRIES {
            self.prune(now);
        }
        let burst = self.bounds.of(&source).burst;
        self.sources.entry(source).or_insert(SourceState {
            circuits: 0,
            pending: 0,
            tokens: burst,
            refilled: now,
        })
    }

    /// Forgets idle sources: first those whose bucket is full again, then any idle one.
    fn prune(&mut self, now: Instant) {
        let bounds = self.bounds;
        self.sources.retain(|source, s| {
            let limits = bounds.of(source);
            s.refill(limits, now);
            !s.idle() || s.tokens < limits.burst
        });
        if self.sources.len() >= MAX_SOURCE_ENTRIES {
            self.sources.retain(|_, s| !s.idle());
        }
    }

    fn release(&mut self, source: &Source, circuit: bool) {
        if circuit {
            self.circuits = self.circuits.saturating_sub(1);
        } else {
            self.pending = self.pending.saturating_sub(1);
        }
        if let Some(s) = self.sources.get_mut(source) {
            if circuit {
                s.circuits = s.circuits.saturating_sub(1);
            } else {
                s.pending = s.pending.saturating_sub(1);
            }
        }
    }
}

impl SourceState {
    fn idle(&self) -> bool {
        self.circuits == 0 && self.pending == 0
    }

    fn refill(&mut self, limits: SourceLimits, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * limits.rate).min(limits.burst);
        self.refilled = now;
    }
}

impl Drop for CircuitSlot {
    fn drop(&mut self) {
        self.limiter.lock().release(&self.source, true);
    }
}

impl HandshakeSlot {
    /// The source the handshake is counted against.
    pub(crate) fn source(&self) -> Source {
        self.source
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.limiter.lock().release(&self.source, false);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::CreateRate;

    fn relay() -> Source {
        Source::Relay(
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id(),
        )
    }

    fn host(last: u8) -> Source {
        Source::Host(HostKey::of(std::net::Ipv4Addr::new(192, 0, 2, last).into()))
    }

    /// Relays and hosts get the same limits: `per_source` circuits, `per_second`/`burst`.
    fn limiter(total: usize, per_source: usize, per_second: u32, burst: u32) -> Limiter {
        let rate = CreateRate { per_second, burst };
        Limiter::new(&RelayConfig {
            max_circuits: total,
            max_circuits_per_peer: per_source,
            create_rate_per_peer: rate,
            max_circuits_per_address: per_source,
            create_rate_per_address: rate,
            ..RelayConfig::default()
        })
    }

    #[test]
    fn per_source_and_total_limits_hold_and_release() {
        let l = limiter(3, 2, 1000, 1000);
        let now = Instant::now();
        let (a, b) = (host(1), relay());
        let a1 = l.admit(a, now).unwrap();
        let _a2 = l.admit(a, now).unwrap();
        assert_eq!(l.admit(a, now).unwrap_err(), Refusal::PerSource);
        let _b1 = l.admit(b, now).unwrap();
        assert_eq!(l.admit(b, now).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(l.circuits(), 2);
        let _b2 = l.admit(b, now).unwrap();
    }

    #[test]
    fn relays_and_addresses_have_their_own_limits() {
        let l = Limiter::new(&RelayConfig {
            max_circuits: 100,
            max_circuits_per_peer: 5,
            max_circuits_per_address: 2,
            ..RelayConfig::default()
        });
        let now = Instant::now();
        let a = host(1);
        let held: Vec<_> = (0..2).map(|_| l.admit(a, now).unwrap()).collect();
        assert_eq!(l.admit(a, now).unwrap_err(), Refusal::PerSource);
        let r = relay();
        let relayed: Vec<_> = (0..5).map(|_| l.admit(r, now).unwrap()).collect();
        assert_eq!(l.admit(r, now).unwrap_err(), Refusal::PerSource);
        assert_eq!(held.len() + relayed.len(), l.circuits());
    }

    #[test]
    fn create_rate_is_a_token_bucket() {
        let l = limiter(100, 100, 2, 3);
        let t0 = Instant::now();
        let a = host(1);
        let mut slots: Vec<_> = (0..3).map(|_| l.admit(a, t0).unwrap()).collect();
        assert_eq!(l.admit(a, t0).unwrap_err(), Refusal::Rate);
        // Another source has its own bucket.
        slots.push(l.admit(host(2), t0).unwrap());
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
    fn handshakes_are_bounded_per_source_and_in_total() {
        let l = limiter(10, 10, 10, 10);
        let now = Instant::now();
        let a = host(1);
        let mut held: Vec<_> = (0..MAX_PENDING_HANDSHAKES_PER_SOURCE)
            .map(|_| l.begin_handshake(a, now).unwrap())
            .collect();
        assert_eq!(l.begin_handshake(a, now).unwrap_err(), Refusal::Handshakes);
        held.pop();
        held.push(l.begin_handshake(a, now).unwrap());
        while held.len() < MAX_PENDING_HANDSHAKES {
            held.push(l.begin_handshake(relay(), now).unwrap());
        }
        assert_eq!(
            l.begin_handshake(relay(), now).unwrap_err(),
            Refusal::Handshakes
        );
    }

    #[test]
    fn the_source_table_is_bounded() {
        let l = limiter(10, 10, 1, 1);
        let now = Instant::now();
        for _ in 0..MAX_SOURCE_ENTRIES + 10 {
            drop(l.begin_handshake(relay(), now).unwrap());
        }
        assert!(l.lock().sources.len() <= MAX_SOURCE_ENTRIES);
    }
}
