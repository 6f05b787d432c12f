//! Whether a relay can be reached at the addresses its descriptor would sign (specs/04 §4.1):
//! libp2p's AutoNAT v2, client and server, and the state kept from its answers.
//!
//! Every relay runs the AutoNAT v2 server, so that other relays can test themselves against
//! it, and the client, which asks one server at a time to dial one candidate address back.
//! The candidates are only the addresses the relay would publish (its `announce` addresses, or
//! its listen addresses), never what identify reports peers saw: a relay's descriptor carries
//! what its operator configured, and testing the ephemeral ports a NAT shows others would cost
//! dial-backs that decide nothing. Clients run neither side (they publish nothing, and asking
//! servers to dial them would only tell relays where they are).

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::autonat::v2::{client, server};
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NewExternalAddrCandidate,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::time::Instant;

use crate::config::DirConfig;
use crate::node::dialable;

/// The AutoNAT v2 dial-request protocol (libp2p-autonat keeps its constant private): a peer
/// that lists it in identify can test our addresses.
pub const AUTONAT_DIAL_REQUEST_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/libp2p/autonat/2/dial-request");
/// How long the candidates may go untested because no AutoNAT server is connected before the
/// relay assumes it is reachable (the first relay of a network has nobody to test it).
pub const UNTESTABLE_AFTER: Duration = Duration::from_secs(30);
/// How long after the first AutoNAT server was connected a candidate may stay without an
/// answer before it counts as not reachable. A server's dial-back into a black hole (a NAT
/// that drops SYNs) outlasts the AutoNAT client's own 10 s request timeout, which libp2p then
/// treats as "try again" forever: without this bound such a relay would never learn it.
pub const REACHABILITY_TEST_DEADLINE: Duration = Duration::from_secs(30);
/// How often the AutoNAT client asks about candidates still untested (libp2p's default is
/// 5 s; a candidate is asked about once, and again only after a failed request, so this bounds
/// how long a new relay waits for its first answer, not how much it asks).
pub const AUTONAT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Dial-backs an AutoNAT server remembers between starting one and the swarm asking about it
/// (the swarm asks at once; the bound only keeps a lost one from staying forever).
const MAX_TRACKED_DIAL_BACKS: usize = 64;

/// What a node knows of its own reachability (specs/04 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// Not tested yet (or not asked to be: clients stay here).
    Unknown,
    /// An AutoNAT server dialed these candidates back (the others are not, or not yet).
    Reachable(Vec<Multiaddr>),
    /// No AutoNAT server was connected for [`UNTESTABLE_AFTER`]: assumed reachable at every
    /// candidate until a test says otherwise.
    Untested(Vec<Multiaddr>),
    /// Every candidate failed its dial-back, or had no answer by
    /// [`REACHABILITY_TEST_DEADLINE`]: these are the addresses tested.
    Unreachable(Vec<Multiaddr>),
}

impl Reachability {
    /// The addresses a relay may publish: the confirmed ones, or every candidate while
    /// untestable; none while unknown or unreachable.
    pub fn publishable(&self) -> Option<&[Multiaddr]> {
        match self {
            Self::Reachable(addrs) | Self::Untested(addrs) => Some(addrs),
            Self::Unknown | Self::Unreachable(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Confirmed,
    /// A server dialed and failed, or no answer came by the deadline. Not final: libp2p
    /// retests a timed-out candidate, and a later confirmation wins.
    Failed,
}

/// The reachability of a node's candidates, from AutoNAT answers and time.
#[derive(Debug)]
pub(crate) struct ReachabilityTracker {
    /// The candidates, in the order they would be published, at most `MAX_ADDRS` (the
    /// caller's descriptor bound).
    candidates: Vec<(Multiaddr, Outcome)>,
    /// When testing began; `None` until the node is asked to test.
    started: Option<Instant>,
    /// When an AutoNAT server was first connected.
    first_server: Option<Instant>,
    /// Whether the untestable grace ran out with no server (sticky: later tests refine it).
    assumed: bool,
    state: Reachability,
}

impl ReachabilityTracker {
    pub(crate) fn new() -> Self {
        Self {
            candidates: Vec::new(),
            started: None,
            first_server: None,
            assumed: false,
            state: Reachability::Unknown,
        }
    }

    /// Starts testing `candidates` (replacing earlier ones).
    pub(crate) fn start(&mut self, candidates: Vec<Multiaddr>, now: Instant) {
        let mut unique: Vec<Multiaddr> = Vec::with_capacity(candidates.len());
        for c in candidates {
            if !unique.contains(&c) {
                unique.push(c);
            }
        }
        self.candidates = unique.into_iter().map(|a| (a, Outcome::Pending)).collect();
        self.started = Some(now);
        self.assumed = false;
    }

    pub(crate) fn is_testing(&self) -> bool {
        self.started.is_some()
    }

    pub(crate) fn candidates(&self) -> impl Iterator<Item = &Multiaddr> {
        self.candidates.iter().map(|(a, _)| a)
    }

    /// An AutoNAT server is connected (over a connection we dialed, the only kind the client
    /// asks over).
    pub(crate) fn server_connected(&mut self, now: Instant) {
        self.first_server.get_or_insert(now);
    }

    /// A server answered about `addr`. Returns whether `addr` is a candidate.
    pub(crate) fn answered(&mut self, addr: &Multiaddr, reached: bool) -> bool {
        let Some((_, outcome)) = self.candidates.iter_mut().find(|(a, _)| a == addr) else {
            return false;
        };
        // A confirmation is proof (the dial-back carried our nonce); a failure after one is
        // one server's word against another's proof.
        if *outcome != Outcome::Confirmed {
            *outcome = if reached {
                Outcome::Confirmed
            } else {
                Outcome::Failed
            };
        }
        true
    }

    /// Applies the time bounds and returns the state if it changed.
    pub(crate) fn update(&mut self, now: Instant) -> Option<Reachability> {
        let started = self.started?;
        if let Some(first) = self.first_server
            && now.duration_since(first.max(started)) >= REACHABILITY_TEST_DEADLINE
        {
            for (_, outcome) in &mut self.candidates {
                if *outcome == Outcome::Pending {
                    *outcome = Outcome::Failed;
                }
            }
        }
        if self.first_server.is_none() && now.duration_since(started) >= UNTESTABLE_AFTER {
            self.assumed = true;
        }
        let with = |wanted: Outcome| -> Vec<Multiaddr> {
            self.candidates
                .iter()
                .filter(|(_, o)| *o == wanted)
                .map(|(a, _)| a.clone())
                .collect()
        };
        let confirmed = with(Outcome::Confirmed);
        let state = if !confirmed.is_empty() {
            Reachability::Reachable(confirmed)
        } else if !self.candidates.is_empty()
            && self.candidates.iter().all(|(_, o)| *o == Outcome::Failed)
        {
            Reachability::Unreachable(with(Outcome::Failed))
        } else if self.assumed {
            Reachability::Untested(self.candidates().cloned().collect())
        } else {
            Reachability::Unknown
        };
        (state != self.state).then(|| {
            self.state = state.clone();
            state
        })
    }
}

/// The `NetworkBehaviour` methods the AutoNAT wrappers below hand to their `inner` behaviour
/// unchanged; each wrapper writes only the ones it changes.
macro_rules! forward_to_inner {
    (connections) => {
        fn handle_pending_inbound_connection(
            &mut self,
            connection_id: ConnectionId,
            local_addr: &Multiaddr,
            remote_addr: &Multiaddr,
        ) -> Result<(), ConnectionDenied> {
            self.inner
                .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
        }

        fn handle_established_inbound_connection(
            &mut self,
            connection_id: ConnectionId,
            peer: PeerId,
            local_addr: &Multiaddr,
            remote_addr: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.inner.handle_established_inbound_connection(
                connection_id,
                peer,
                local_addr,
                remote_addr,
            )
        }

        fn handle_established_outbound_connection(
            &mut self,
            connection_id: ConnectionId,
            peer: PeerId,
            addr: &Multiaddr,
            role_override: Endpoint,
            port_use: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            self.inner.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
        }

        fn on_connection_handler_event(
            &mut self,
            peer_id: PeerId,
            connection_id: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            self.inner
                .on_connection_handler_event(peer_id, connection_id, event);
        }
    };
    (pending_outbound) => {
        fn handle_pending_outbound_connection(
            &mut self,
            connection_id: ConnectionId,
            maybe_peer: Option<PeerId>,
            addresses: &[Multiaddr],
            effective_role: Endpoint,
        ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
            self.inner.handle_pending_outbound_connection(
                connection_id,
                maybe_peer,
                addresses,
                effective_role,
            )
        }
    };
    (poll) => {
        fn poll(
            &mut self,
            cx: &mut Context<'_>,
        ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
            self.inner.poll(cx)
        }
    };
}

/// libp2p's AutoNAT v2 client, told only the candidates the node gives it: the candidates
/// identify reports (what peers saw) are dropped, see the module's documentation.
pub(crate) struct AutonatClient {
    inner: client::Behaviour,
}

impl AutonatClient {
    pub(crate) fn new() -> Self {
        Self {
            inner: client::Behaviour::new(
                rand_autonat::make_rng::<rand_autonat::rngs::StdRng>(),
                client::Config::default().with_probe_interval(AUTONAT_PROBE_INTERVAL),
            ),
        }
    }

    /// Queues `addr` for a test (libp2p tests each candidate once, at its next probe tick).
    pub(crate) fn test(&mut self, addr: &Multiaddr) {
        self.inner
            .on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                NewExternalAddrCandidate { addr },
            ));
    }
}

impl NetworkBehaviour for AutonatClient {
    type ConnectionHandler = THandler<client::Behaviour>;
    type ToSwarm = client::Event;

    forward_to_inner!(connections);

    forward_to_inner!(pending_outbound);

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if matches!(event, FromSwarm::NewExternalAddrCandidate(_)) {
            return;
        }
        self.inner.on_swarm_event(event);
    }

    forward_to_inner!(poll);
}

/// Why an AutoNAT server refused to dial an address back.
#[derive(Debug, thiserror::Error)]
#[error("an AutoNAT dial-back to an address this node does not dial")]
pub(crate) struct DialBackRefused;

/// libp2p's AutoNAT v2 server, which dials back only addresses this node would dial anyway:
/// libp2p's dials whatever a peer asks once it paid in bytes, and a relay must not be made to
/// knock on its own private network (private, loopback and link-local addresses only on a
/// test network, `DirConfig::allow_private_addrs`). A refused dial-back is answered as a
/// failed dial: from here, that address is indeed not reachable.
pub(crate) struct AutonatServer {
    inner: server::Behaviour,
    dir_config: DirConfig,
    /// The connections of dial-backs the server started, until the swarm asks about them.
    dial_backs: VecDeque<ConnectionId>,
}

impl AutonatServer {
    pub(crate) fn new(dir_config: DirConfig) -> Self {
        Self {
            inner: server::Behaviour::default(),
            dir_config,
            dial_backs: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for AutonatServer {
    type ConnectionHandler = THandler<server::Behaviour>;
    type ToSwarm = server::Event;

    forward_to_inner!(connections);

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(pos) = self.dial_backs.iter().position(|c| *c == connection_id) {
            self.dial_backs.remove(pos);
            if addresses.iter().any(|a| !dialable(a, &self.dir_config)) {
                return Err(ConnectionDenied::new(DialBackRefused));
            }
        }
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        self.inner.on_swarm_event(event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        let polled = self.inner.poll(cx);
        if let Poll::Ready(ToSwarm::Dial { opts }) = &polled {
            if self.dial_backs.len() >= MAX_TRACKED_DIAL_BACKS {
                self.dial_backs.pop_front();
            }
            self.dial_backs.push_back(opts.connection_id());
        }
        polled
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_confirmed_candidate_makes_the_node_reachable_there_only() {
        let t0 = Instant::now();
        let (a, b) = (addr("/ip4/1.2.3.4/tcp/1"), addr("/ip4/10.0.0.1/tcp/1"));
        let mut tracker = ReachabilityTracker::new();
        assert_eq!(tracker.update(t0), None, "not testing yet");
        tracker.start(vec![a.clone(), b.clone()], t0);
        tracker.server_connected(t0);
        assert_eq!(tracker.update(t0), None, "still unknown");
        assert!(tracker.answered(&b, false));
        assert_eq!(tracker.update(t0), None, "one of two failed: still unknown");
        assert!(tracker.answered(&a, true));
        assert_eq!(
            tracker.update(t0),
            Some(Reachability::Reachable(vec![a.clone()]))
        );
        assert!(
            !tracker.answered(&addr("/ip4/5.6.7.8/tcp/1"), true),
            "not a candidate"
        );
        // A failure after a confirmation does not undo the proof.
        tracker.answered(&a, false);
        assert_eq!(tracker.update(t0 + Duration::from_secs(3600)), None);
    }

    #[test]
    fn every_candidate_failed_or_unanswered_is_unreachable_and_a_late_proof_wins() {
        let t0 = Instant::now();
        let (a, b) = (
            addr("/ip4/1.2.3.4/tcp/1"),
            addr("/ip4/1.2.3.4/udp/1/quic-v1"),
        );
        let mut tracker = ReachabilityTracker::new();
        tracker.start(vec![a.clone(), b.clone(), a.clone()], t0);
        assert_eq!(tracker.candidates().count(), 2, "duplicates dropped");
        tracker.server_connected(t0 + Duration::from_secs(2));
        tracker.answered(&a, false);
        let before =
            t0 + Duration::from_secs(2) + REACHABILITY_TEST_DEADLINE - Duration::from_millis(1);
        assert_eq!(tracker.update(before), None, "b may still be answered");
        assert_eq!(
            tracker.update(before + Duration::from_millis(1)),
            Some(Reachability::Unreachable(vec![a.clone(), b.clone()]))
        );
        tracker.answered(&b, true);
        assert_eq!(
            tracker.update(before + Duration::from_secs(10)),
            Some(Reachability::Reachable(vec![b]))
        );
    }

    #[test]
    fn with_no_server_to_ask_the_candidates_are_assumed_until_a_test_says_otherwise() {
        let t0 = Instant::now();
        let a = addr("/ip4/127.0.0.1/tcp/1");
        let mut tracker = ReachabilityTracker::new();
        tracker.start(vec![a.clone()], t0);
        assert_eq!(tracker.update(t0 + UNTESTABLE_AFTER / 2), None);
        assert_eq!(
            tracker.update(t0 + UNTESTABLE_AFTER),
            Some(Reachability::Untested(vec![a.clone()]))
        );
        // A server shows up later: the assumption holds until its answer.
        let later = t0 + UNTESTABLE_AFTER + Duration::from_secs(5);
        tracker.server_connected(later);
        assert_eq!(tracker.update(later), None);
        tracker.answered(&a, false);
        assert_eq!(
            tracker.update(later),
            Some(Reachability::Unreachable(vec![a]))
        );
    }

    #[test]
    fn only_confirmed_or_assumed_addresses_are_publishable() {
        let a = vec![addr("/ip4/1.2.3.4/tcp/1")];
        assert_eq!(Reachability::Unknown.publishable(), None);
        assert_eq!(Reachability::Unreachable(a.clone()).publishable(), None);
        assert_eq!(
            Reachability::Reachable(a.clone()).publishable(),
            Some(&a[..])
        );
        assert_eq!(
            Reachability::Untested(a.clone()).publishable(),
            Some(&a[..])
        );
    }
}
