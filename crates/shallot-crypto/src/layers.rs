//! Onion layers: the client's nested seal/open and one relay's layer. specs/02 §4.

use core::fmt;
use core::ops::Range;

use shallot_cell::LAYER_OVERHEAD;

use crate::aead::{DefaultAead, LayerAead, TAG_LEN, nonce};
use crate::err::CryptoError;
use crate::handshake::HopKeys;

/// Forward marker "for you": INNER is this hop's relay-message area. specs/02 §4.2.
pub const MARKER_FOR_YOU: u8 = 0x01;
/// Forward marker "forward": INNER is the next link's RELAY body. specs/02 §4.2.
pub const MARKER_FORWARD: u8 = 0x02;
/// Backward marker "from me": INNER is the sealing hop's relay-message area. specs/02 §4.2.
pub const MARKER_FROM_ME: u8 = 0x01;
/// Backward marker "relayed": INNER is the next hop's backward body. specs/02 §4.2.
pub const MARKER_RELAYED: u8 = 0x02;

const _: () = assert!(LAYER_OVERHEAD == 1 + TAG_LEN, "one layer = marker + tag");

/// One direction's nonce counter: starts at 0, +1 per cell; the value 2^64 - 1 is never used
/// (as in Noise), so reaching it is exhaustion. specs/02 §4.1.
#[derive(Debug, Default, Clone, Copy)]
struct Counter(u64);

impl Counter {
    fn check(self) -> Result<(), CryptoError> {
        if self.0 == u64::MAX {
            Err(CryptoError::NonceExhausted)
        } else {
            Ok(())
        }
    }

    /// Returns the nonce for this cell and advances.
    fn next(&mut self) -> Result<[u8; 12], CryptoError> {
        self.check()?;
        let n = nonce(self.0);
        self.0 += 1;
        Ok(n)
    }
}

/// One direction of one hop: the cipher and its counter.
struct Direction<A> {
    aead: A,
    counter: Counter,
}

impl<A: LayerAead> Direction<A> {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: A::from_key(key),
            counter: Counter::default(),
        }
    }

    /// Writes `marker` at `span[0]`, seals `span[..len-16]`, writes the tag at the end.
    fn seal(&mut self, marker: u8, span: &mut [u8]) -> Result<(), CryptoError> {
        let Some(first) = span.first_mut() else {
            return Err(CryptoError::Internal);
        };
        *first = marker;
        let nonce = self.counter.next()?;
        if self.aead.seal(nonce, span) {
            Ok(())
        } else {
            Err(CryptoError::Internal)
        }
    }

    /// Opens `span` in place; returns the marker (span[0]) if it authenticated.
    fn open(&mut self, span: &mut [u8], hop: Option<usize>) -> Result<u8, CryptoError> {
        let nonce = self.counter.next()?;
        if span.len() >= LAYER_OVERHEAD && self.aead.open(nonce, span) {
            Ok(span[0])
        } else {
            Err(CryptoError::AuthenticationFailed { hop })
        }
    }
}

/// One hop's two directions.
struct Hop<A> {
    forward: Direction<A>,
    backward: Direction<A>,
}

impl<A: LayerAead> Hop<A> {
    fn new(keys: HopKeys) -> Self {
        // `keys` drops (and is zeroized) at the end of this function.
        Self {
            forward: Direction::new(&keys.forward),
            backward: Direction::new(&keys.backward),
        }
    }
}

/// The sealed span of hop `j` in a body of `n` bytes: `[j, n - 16 j)`. specs/02 §4.3.
fn span(n: usize, j: usize) -> Range<usize> {
    j..n - TAG_LEN * j
}

/// Smallest body that holds `layers` layers (and an empty innermost area).
fn needed(layers: usize) -> usize {
    LAYER_OVERHEAD * layers
}

/// The client's onion layers for a whole circuit, one per hop, in path order. specs/02 §4.3,
/// §4.6.
///
/// Any error is final: the circuit must be destroyed, and every later call fails with
/// [`CryptoError::LayersClosed`].
pub struct ClientLayers<A: LayerAead = DefaultAead> {
    hops: Vec<Hop<A>>,
    closed: bool,
}

impl ClientLayers {
    /// A circuit with no hops yet, using [`DefaultAead`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_aead()
    }

    /// The relay-message area for hop `target_hop` in a client body of `n` bytes:
    /// `[k + 1, n - 16 (k + 1))`, of length `n - 17 (k + 1)`. Empty if `n` is too short.
    /// specs/02 §4.3.
    #[must_use]
    pub fn message_range(n: usize, target_hop: usize) -> Range<usize> {
        let start = target_hop.saturating_add(1);
        let end = n.saturating_sub(TAG_LEN.saturating_mul(start));
        if end < start {
            start..start
        } else {
            start..end
        }
    }
}

impl Default for ClientLayers {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: LayerAead> fmt::Debug for ClientLayers<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLayers")
            .field("hops", &self.hops.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<A: LayerAead> ClientLayers<A> {
    /// A circuit with no hops yet, using the AEAD implementation `A`.
    #[must_use]
    pub fn with_aead() -> Self {
        Self {
            hops: Vec::new(),
            closed: false,
        }
    }

    /// Adds the next hop's keys (after its handshake finished). A circuit longer than
    /// `MAX_HOPS` is the caller's bug: cell sizes run out first (specs/01 §3).
    pub fn push_hop(&mut self, keys: HopKeys) {
        self.hops.push(Hop::new(keys));
    }

    /// How many hops the circuit has.
    #[must_use]
    pub fn hops(&self) -> usize {
        self.hops.len()
    }

    fn usable(&self) -> Result<(), CryptoError> {
        if self.closed {
            Err(CryptoError::LayersClosed)
        } else {
            Ok(())
        }
    }

    /// Seals a RELAY body for hop `target_hop` (0-based) in place. `body.len()` is `n` (the
    /// link-0 body, `LINK_CELL_LEN - 1` on the wire); the message for hop k must already be in
    /// [`ClientLayers::message_range`]`(n, k)`. Writes every marker and tag. specs/02 §4.3.
    pub fn seal_forward(&mut self, target_hop: usize, body: &mut [u8]) -> Result<(), CryptoError> {
        self.usable()?;
        let hops = self.hops.len();
        if target_hop >= hops {
            return Err(CryptoError::NoSuchHop {
                target: target_hop,
                hops,
            });
        }
        let n = body.len();
        if n < needed(target_hop + 1) {
            return Err(CryptoError::BodyTooShort {
                len: n,
                needed: needed(target_hop + 1),
            });
        }
        // Check every counter first so that an exhausted one leaves nothing half-sealed.
        if let Err(e) = self.hops[..=target_hop]
            .iter()
            .try_for_each(|h| h.forward.counter.check())
        {
            self.closed = true;
            return Err(e);
        }
        for j in (0..=target_hop).rev() {
            let marker = if j == target_hop {
                MARKER_FOR_YOU
            } else {
                MARKER_FORWARD
            };
            if let Err(e) = self.hops[j].forward.seal(marker, &mut body[span(n, j)]) {
                self.closed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Opens a backward RELAY body (from link 0) in place, peeling layers until one says
    /// "from me". Returns that hop's index and the range of its relay-message area in `body`.
    /// specs/02 §4.6.
    pub fn open_backward(&mut self, body: &mut [u8]) -> Result<(usize, Range<usize>), CryptoError> {
        self.usable()?;
        let result = self.open_backward_inner(body);
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    fn open_backward_inner(
        &mut self,
        body: &mut [u8],
    ) -> Result<(usize, Range<usize>), CryptoError> {
        let n = body.len();
        let hops = self.hops.len();
        for (j, hop) in self.hops.iter_mut().enumerate() {
            if n < needed(j + 1) {
                return Err(CryptoError::AuthenticationFailed { hop: Some(j) });
            }
            match hop.backward.open(&mut body[span(n, j)], Some(j))? {
                MARKER_FROM_ME => return Ok((j, ClientLayers::message_range(n, j))),
                MARKER_RELAYED if j + 1 < hops => {}
                other => return Err(CryptoError::BadMarker(other)),
            }
        }
        Err(CryptoError::NoSuchHop { target: 0, hops })
    }

    /// Sets hop `hop`'s counters (for exhaustion tests).
    #[cfg(test)]
    pub(crate) fn set_counters(&mut self, hop: usize, forward: u64, backward: u64) {
        self.hops[hop].forward.counter = Counter(forward);
        self.hops[hop].backward.counter = Counter(backward);
    }
}

/// What a forward cell asks of the relay that opened its layer. specs/02 §4.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMarker {
    /// Marker 0x01: `body[1..n-16]` is this relay's relay-message area.
    ForMe,
    /// Marker 0x02: `body[1..n-16]` is the RELAY body to send on the next link.
    Forward,
}

/// One hop's layer, as the relay holds it. specs/02 §4.4, §4.5.
///
/// Any error is final: the circuit must be destroyed, and every later call fails with
/// [`CryptoError::LayersClosed`].
pub struct RelayLayer<A: LayerAead = DefaultAead> {
    hop: Hop<A>,
    closed: bool,
}

impl RelayLayer {
    /// The layer for these keys, using [`DefaultAead`].
    #[must_use]
    pub fn new(keys: HopKeys) -> Self {
        Self::with_aead(keys)
    }

    /// The INNER range of a relay body of `n` bytes: `[1, n - 16)` (empty if `n < 17`).
    #[must_use]
    pub fn inner_range(n: usize) -> Range<usize> {
        ClientLayers::message_range(n, 0)
    }
}

impl<A: LayerAead> fmt::Debug for RelayLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayLayer")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<A: LayerAead> RelayLayer<A> {
    /// The layer for these keys, using the AEAD implementation `A`.
    #[must_use]
    pub fn with_aead(keys: HopKeys) -> Self {
        Self {
            hop: Hop::new(keys),
            closed: false,
        }
    }

    fn usable(&self) -> Result<(), CryptoError> {
        if self.closed {
            Err(CryptoError::LayersClosed)
        } else {
            Ok(())
        }
    }

    /// Opens this hop's layer of a forward RELAY body in place (the body as received on the
    /// incoming link, `n` bytes); on success `body[1..n-16]` is INNER. Parses remote input:
    /// fails with an error, never panics. specs/02 §4.4.
    pub fn open_forward(&mut self, body: &mut [u8]) -> Result<ForwardMarker, CryptoError> {
        self.usable()?;
        let result = match self.hop.forward.open(body, None) {
            Ok(MARKER_FOR_YOU) => Ok(ForwardMarker::ForMe),
            Ok(MARKER_FORWARD) => Ok(ForwardMarker::Forward),
            Ok(other) => Err(CryptoError::BadMarker(other)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    /// Seals this hop's backward layer in place: `body[1..n-16]` already holds INNER (this
    /// relay's relay-message area if `originated_here`, else the next hop's backward body);
    /// writes the marker (0x01 if `originated_here`, else 0x02) and the tag. specs/02 §4.5.
    pub fn seal_backward(
        &mut self,
        originated_here: bool,
        body: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.usable()?;
        if body.len() < LAYER_OVERHEAD {
            return Err(CryptoError::BodyTooShort {
                len: body.len(),
                needed: LAYER_OVERHEAD,
            });
        }
        let marker = if originated_here {
            MARKER_FROM_ME
        } else {
            MARKER_RELAYED
        };
        let result = self.hop.backward.seal(marker, body);
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    /// Sets the counters (for exhaustion tests).
    #[cfg(test)]
    pub(crate) fn set_counters(&mut self, forward: u64, backward: u64) {
        self.hop.forward.counter = Counter(forward);
        self.hop.backward.counter = Counter(backward);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shallot_error::{ErrorKind, HasKind};

    fn pair(seed: u8) -> (HopKeys, HopKeys) {
        let (f, b) = ([seed; 32], [seed ^ 0xff; 32]);
        (
            HopKeys::from_raw_for_testing(f, b),
            HopKeys::from_raw_for_testing(f, b),
        )
    }

    #[test]
    fn forward_counter_exhaustion_is_an_error_and_closes() {
        let (a, b) = pair(1);
        let mut client = ClientLayers::new();
        client.push_hop(a);
        let mut relay = RelayLayer::new(b);
        client.set_counters(0, u64::MAX - 1, 0);
        relay.set_counters(u64::MAX - 1, 0);
        let mut body = vec![0u8; 64];
        client.seal_forward(0, &mut body).unwrap();
        assert_eq!(relay.open_forward(&mut body).unwrap(), ForwardMarker::ForMe);
        let err = client.seal_forward(0, &mut body).unwrap_err();
        assert!(matches!(err, CryptoError::NonceExhausted));
        assert_eq!(err.kind(), ErrorKind::Exhausted);
        assert!(matches!(
            client.seal_forward(0, &mut body),
            Err(CryptoError::LayersClosed)
        ));
        assert!(matches!(
            relay.open_forward(&mut body),
            Err(CryptoError::NonceExhausted)
        ));
        assert!(matches!(
            relay.open_forward(&mut body),
            Err(CryptoError::LayersClosed)
        ));
    }

    #[test]
    fn exhausted_inner_hop_leaves_body_untouched() {
        let (a0, _) = pair(1);
        let (a1, _) = pair(2);
        let mut client = ClientLayers::new();
        client.push_hop(a0);
        client.push_hop(a1);
        client.set_counters(0, u64::MAX, 0);
        let mut body = vec![0x5au8; 80];
        assert!(matches!(
            client.seal_forward(1, &mut body),
            Err(CryptoError::NonceExhausted)
        ));
        assert!(body.iter().all(|&b| b == 0x5a), "nothing half-sealed");
    }

    #[test]
    fn backward_counter_exhaustion_is_an_error() {
        let (a, b) = pair(3);
        let mut client = ClientLayers::new();
        client.push_hop(a);
        let mut relay = RelayLayer::new(b);
        relay.set_counters(0, u64::MAX);
        let mut body = vec![0u8; 40];
        assert!(matches!(
            relay.seal_backward(true, &mut body),
            Err(CryptoError::NonceExhausted)
        ));
        client.set_counters(0, 0, u64::MAX);
        assert!(matches!(
            client.open_backward(&mut body),
            Err(CryptoError::NonceExhausted)
        ));
    }

    #[test]
    fn message_range_matches_the_contract_layout() {
        let n = shallot_cell::LINK_CELL_LEN - 1;
        for k in 0..shallot_cell::MAX_HOPS {
            let r = ClientLayers::message_range(n, k);
            assert_eq!(r, k + 1..n - 16 * (k + 1));
            let l = shallot_cell::link_cell_len(k).unwrap();
            assert_eq!(r.len(), shallot_cell::relay_payload_len(l));
        }
        assert!(ClientLayers::message_range(10, 3).is_empty());
        assert!(ClientLayers::message_range(0, usize::MAX).is_empty());
        assert_eq!(RelayLayer::inner_range(17), 1..1);
    }
}
