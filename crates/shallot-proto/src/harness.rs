//! A deterministic in-memory network for testing circuits end to end.
//!
//! [`Harness`] holds a [`ClientCircuit`], `N` relays (1..=5 in the tests; the last one is an
//! exit unless configured otherwise) with generated onion keys and peer ids, and an in-memory
//! "internet" at the exit ([`Target`]: echo, data source, sink, refuse). It moves cells between
//! them over links with a virtual clock, an optional per-link latency and a bounded number of
//! cells in flight per link direction (a stand-in for yamux's stream window), and plays a
//! simple client application (an outbox and an inbox per stream, readers that can be paused).
//!
//! Nothing here reads the clock after construction or uses randomness in its schedule, so a
//! run is reproducible (keys are random, but no decision depends on them).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use shallot_cell::{DestroyReason, EndReason, Host, ResolvedAnswer, StreamId, link_command};
use shallot_crypto::{OnionKeyRing, OnionSecretKey};

use crate::client::{ClientCircuit, ClientConfig, ClientEvent, HopSpec};
use crate::err::ProtoError;
use crate::relay::{RelayAction, RelayCircuit, RelayConfig};

/// A link direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → exit.
    Forward,
    /// Exit → client.
    Backward,
}

/// What a destination on the fake internet does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Sends back every byte it receives.
    Echo,
    /// Sends `n` bytes of [`pattern_byte`] and then EOF; ignores what it receives.
    Source(usize),
    /// Swallows everything (kept in [`Internet::received`]).
    Sink,
    /// Refuses the connection (END CONNECTREFUSED).
    Refuse,
}

/// The deterministic byte `i` of the stream `stream` of a [`Target::Source`].
pub fn pattern_byte(stream: u16, i: usize) -> u8 {
    (i.wrapping_mul(31).wrapping_add(usize::from(stream) * 7) % 251) as u8
}

#[derive(Debug)]
struct Conn {
    target: Target,
    /// Echo: bytes waiting to be sent back.
    pending: VecDeque<u8>,
    /// Source: bytes produced so far.
    produced: usize,
    eof_sent: bool,
}

/// The fake internet behind the exit.
#[derive(Debug, Default)]
pub struct Internet {
    targets: BTreeMap<String, Target>,
    conns: BTreeMap<u16, Conn>,
    /// Bytes received by sinks and echoes, per stream.
    pub received: BTreeMap<u16, Vec<u8>>,
    /// Streams the exit closed (`RelayAction::CloseStream`), in order.
    pub closed: Vec<StreamId>,
    /// Connect attempts, in order (host name or address, port).
    pub connects: Vec<(String, u16)>,
}

impl Internet {
    /// Adds a destination reachable under the host name `name`.
    pub fn add(&mut self, name: &str, target: Target) {
        self.targets.insert(name.to_owned(), target);
    }

    /// Connections open at the exit now.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }
}

/// One relay of the harness.
#[derive(Debug)]
pub struct RelayNode {
    /// Its identity bytes.
    pub peer_id: Vec<u8>,
    /// Its onion keys.
    pub keys: OnionKeyRing,
    /// Whether it is an exit.
    pub exit: bool,
    /// Whether an EXTEND to it succeeds in opening a stream.
    pub reachable: bool,
    /// Its circuit, once the CREATE arrived.
    pub circuit: Option<RelayCircuit>,
    /// Errors its `handle_*` calls returned, in order.
    pub errors: Vec<ProtoError>,
}

#[derive(Debug, Default)]
struct Link {
    preamble: Option<[u8; 4]>,
    fwd: VecDeque<(Instant, Vec<u8>)>,
    bwd: VecDeque<(Instant, Vec<u8>)>,
    destroys: [usize; 2],
    relay_cells: [usize; 2],
}

#[derive(Debug)]
struct Corruption {
    link: usize,
    dir: Dir,
    skip: usize,
    byte: usize,
}

/// Harness settings.
#[derive(Clone, Debug)]
pub struct HarnessConfig {
    /// Number of relays (1..=5 in the tests).
    pub relays: usize,
    /// Whether the last relay is an exit.
    pub exit: bool,
    /// One-way latency of every link.
    pub latency: Duration,
    /// Cells in flight per link direction at most (yamux's window).
    pub link_capacity: usize,
    /// The client's settings (default: no keep-alive, so that an idle harness has no timer).
    pub client: ClientConfig,
    /// The relays' idle timeout (default: none, for the same reason).
    pub relay_idle_timeout: Option<Duration>,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            relays: 3,
            exit: true,
            latency: Duration::from_millis(5),
            link_capacity: 32,
            client: ClientConfig {
                keepalive_interval: None,
                ..ClientConfig::default()
            },
            relay_idle_timeout: None,
        }
    }
}

/// The simple client application the harness plays.
#[derive(Debug, Default)]
pub struct ClientApp {
    /// Bytes waiting to be written, per stream.
    pub outbox: BTreeMap<u16, VecDeque<u8>>,
    /// Bytes read, per stream.
    pub inbox: BTreeMap<u16, Vec<u8>>,
    /// Streams whose reader is paused.
    pub paused: BTreeSet<u16>,
    /// Streams read to their end.
    pub eof: BTreeSet<u16>,
    /// Ended streams and why.
    pub ended: BTreeMap<u16, EndReason>,
    /// Connected streams.
    pub connected: BTreeSet<u16>,
    readable: BTreeSet<u16>,
    /// Largest read per call (to model slow readers); 0 = 4096.
    pub read_chunk: usize,
}

/// The in-memory network. See the module docs.
#[derive(Debug)]
pub struct Harness {
    /// The virtual clock.
    pub now: Instant,
    /// The client's circuit.
    pub client: ClientCircuit,
    /// The relays in path order.
    pub relays: Vec<RelayNode>,
    /// The exit's internet.
    pub internet: Internet,
    /// Every client event, in order.
    pub events: Vec<ClientEvent>,
    /// Errors the client's `handle_*` calls returned.
    pub client_errors: Vec<ProtoError>,
    /// The client application.
    pub app: ClientApp,
    links: Vec<Link>,
    config: HarnessConfig,
    corrupt: Option<Corruption>,
}

impl Harness {
    /// A network with `config.relays` relays; the client's CREATE to relay 0 is queued.
    pub fn new(config: HarnessConfig) -> Result<Self, ProtoError> {
        let now = Instant::now();
        let relays: Vec<RelayNode> = (0..config.relays)
            .map(|i| RelayNode {
                peer_id: format!("relay-{i}").into_bytes(),
                keys: OnionKeyRing::new(OnionSecretKey::generate()),
                exit: config.exit && i + 1 == config.relays,
                reachable: true,
                circuit: None,
                errors: Vec::new(),
            })
            .collect();
        let first = relays
            .first()
            .map(Self::spec_of)
            .ok_or(ProtoError::WrongState("a harness needs a relay"))?;
        let client = ClientCircuit::new(&first, config.client.clone(), now)?;
        let mut links: Vec<Link> = (0..config.relays).map(|_| Link::default()).collect();
        links[0].preamble = Some(ClientCircuit::preamble());
        let mut internet = Internet::default();
        internet.add("echo.test", Target::Echo);
        internet.add("sink.test", Target::Sink);
        internet.add("refuse.test", Target::Refuse);
        Ok(Self {
            now,
            client,
            relays,
            internet,
            events: Vec::new(),
            client_errors: Vec::new(),
            app: ClientApp::default(),
            links,
            config,
            corrupt: None,
        })
    }

    /// A network of `relays` relays with default settings.
    pub fn with_relays(relays: usize) -> Result<Self, ProtoError> {
        Self::new(HarnessConfig {
            relays,
            ..HarnessConfig::default()
        })
    }

    fn spec_of(r: &RelayNode) -> HopSpec {
        HopSpec {
            peer_id: r.peer_id.clone(),
            addrs: vec![b"/memory/1".to_vec()],
            onion_key: r.keys.current_public(),
        }
    }

    /// The [`HopSpec`] of relay `i`.
    pub fn hop_spec(&self, i: usize) -> Option<HopSpec> {
        self.relays.get(i).map(Self::spec_of)
    }

    /// Builds the circuit through the first `hops` relays. Returns `false` if a step failed
    /// (see [`Harness::events`]).
    pub fn build(&mut self, hops: usize) -> bool {
        if !self.run_until(10_000, |h| h.client.hops() >= 1 || h.client.is_closed()) {
            return false;
        }
        for k in 1..hops {
            let Some(spec) = self.hop_spec(k) else {
                return false;
            };
            if self.client.extend(&spec, self.now).is_err() {
                return false;
            }
            let failed_before = self.count_failures();
            if !self.run_until(10_000, |h| {
                h.client.hops() > k || h.client.is_closed() || h.count_failures() > failed_before
            }) {
                return false;
            }
            if self.client.hops() <= k {
                return false;
            }
        }
        self.client.hops() == hops
    }

    fn count_failures(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, ClientEvent::ExtendFailed { .. }))
            .count()
    }

    /// Opens a stream to `name:port` and registers it with the application.
    pub fn open(&mut self, name: &str, port: u16) -> Result<StreamId, ProtoError> {
        let id = self.client.open_stream(Host::Name(name.to_owned()), port)?;
        self.app.outbox.entry(id.0).or_default();
        self.app.inbox.entry(id.0).or_default();
        Ok(id)
    }

    /// Queues `data` for the application to write on `stream`.
    pub fn send(&mut self, stream: StreamId, data: &[u8]) {
        self.app.outbox.entry(stream.0).or_default().extend(data);
    }

    /// What the application has read from `stream`.
    pub fn received(&self, stream: StreamId) -> &[u8] {
        self.app.inbox.get(&stream.0).map_or(&[], Vec::as_slice)
    }

    /// Pauses or resumes the application's reader of `stream`.
    pub fn set_paused(&mut self, stream: StreamId, paused: bool) {
        if paused {
            self.app.paused.insert(stream.0);
        } else {
            self.app.paused.remove(&stream.0);
            self.app.readable.insert(stream.0);
        }
    }

    /// Flips one bit in the `skip`-th next RELAY cell (0 = the next) sent on `link` in `dir`,
    /// at body byte `byte` (modulo the body length).
    pub fn corrupt(&mut self, link: usize, dir: Dir, skip: usize, byte: usize) {
        let seen = self
            .links
            .get(link)
            .map_or(0, |l| l.relay_cells[dir as usize]);
        self.corrupt = Some(Corruption {
            link,
            dir,
            skip: seen + skip,
            byte,
        });
    }

    /// DESTROY cells seen on `link` in `dir`.
    pub fn destroys_seen(&self, link: usize, dir: Dir) -> usize {
        self.links.get(link).map_or(0, |l| l.destroys[dir as usize])
    }

    /// Cells in flight on `link` in `dir`.
    pub fn in_flight(&self, link: usize, dir: Dir) -> usize {
        self.links.get(link).map_or(0, |l| match dir {
            Dir::Forward => l.fwd.len(),
            Dir::Backward => l.bwd.len(),
        })
    }

    /// Runs steps until `done` holds (true) or `max_steps` steps or idleness (false).
    pub fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&Self) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            if !self.step() && !self.advance_clock() {
                return done(self);
            }
        }
        done(self)
    }

    /// Runs until nothing moves any more and no timer is pending (at most `max_steps`).
    pub fn run_idle(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if !self.step() && !self.advance_clock() {
                return;
            }
        }
    }

    /// Moves the clock to the next delivery or timer; false if there is none.
    fn advance_clock(&mut self) -> bool {
        let mut next: Option<Instant> = self.client.poll_timeout();
        for t in self
            .relays
            .iter()
            .filter_map(|r| r.circuit.as_ref()?.poll_timeout())
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        for l in &self.links {
            for t in l
                .fwd
                .front()
                .into_iter()
                .chain(l.bwd.front())
                .map(|(t, _)| *t)
            {
                if t > self.now {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        match next {
            Some(t) if t > self.now => {
                self.now = t;
                true
            }
            _ => false,
        }
    }

    /// Sets the clock forward by `d` (e.g. to trigger a timeout).
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// One round: the application, transmissions, actions, deliveries, the internet, timers.
    /// Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let mut progress = false;
        if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
            self.client.handle_timeout(self.now);
            progress = true;
        }
        let now = self.now;
        for relay in &mut self.relays {
            if let Some(circ) = relay.circuit.as_mut()
                && circ.poll_timeout().is_some_and(|t| t <= now)
            {
                circ.handle_timeout(now);
                progress = true;
            }
        }
        progress |= self.app_write();
        progress |= self.transmit();
        progress |= self.actions();
        progress |= self.deliver();
        progress |= self.pump_internet();
        progress |= self.client_events();
        progress |= self.app_read();
        progress
    }

    fn app_write(&mut self) -> bool {
        let mut progress = false;
        let ids: Vec<u16> = self.app.outbox.keys().copied().collect();
        for id in ids {
            let Some(buf) = self.app.outbox.get_mut(&id) else {
                continue;
            };
            while !buf.is_empty() {
                let (a, _) = buf.as_slices();
                match self.client.write_stream(StreamId(id), a) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.drain(..n);
                        progress = true;
                    }
                    Err(_) => {
                        buf.clear();
                        break;
                    }
                }
            }
        }
        progress
    }

    fn app_read(&mut self) -> bool {
        let mut progress = false;
        let chunk = if self.app.read_chunk == 0 {
            4096
        } else {
            self.app.read_chunk
        };
        let mut buf = vec![0u8; chunk];
        let ids: Vec<u16> = self.app.readable.iter().copied().collect();
        for id in ids {
            if self.app.paused.contains(&id) {
                continue;
            }
            loop {
                match self.client.read_stream(StreamId(id), &mut buf) {
                    Ok(0) => {
                        self.app.eof.insert(id);
                        self.app.readable.remove(&id);
                        progress = true;
                        break;
                    }
                    Ok(n) => {
                        self.app
                            .inbox
                            .entry(id)
                            .or_default()
                            .extend_from_slice(&buf[..n]);
                        progress = true;
                        if self.app.read_chunk != 0 {
                            break;
                        }
                    }
                    Err(_) => {
                        self.app.readable.remove(&id);
                        break;
                    }
                }
            }
        }
        progress
    }

    fn client_events(&mut self) -> bool {
        let mut progress = false;
        while let Some(ev) = self.client.poll_event() {
            progress = true;
            match &ev {
                ClientEvent::StreamReadable(s) => {
                    self.app.readable.insert(s.0);
                }
                ClientEvent::StreamEnded { stream, reason } => {
                    self.app.ended.insert(stream.0, *reason);
                    self.app.readable.insert(stream.0);
                }
                ClientEvent::StreamConnected { stream, .. } => {
                    self.app.connected.insert(stream.0);
                }
                _ => {}
            }
            self.events.push(ev);
        }
        progress
    }

    fn push_link(&mut self, link: usize, dir: Dir, mut cell: Vec<u8>) {
        let at = self.now + self.config.latency;
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        let d = dir as usize;
        if cell.first() == Some(&link_command::DESTROY) {
            l.destroys[d] += 1;
        }
        if cell.first() == Some(&link_command::RELAY) {
            if let Some(c) = &self.corrupt
                && c.link == link
                && c.dir == dir
                && c.skip == l.relay_cells[d]
            {
                let body = cell.len() - 1;
                let i = 1 + c.byte % body;
                cell[i] ^= 1 << (c.byte % 8);
                self.corrupt = None;
            }
            l.relay_cells[d] += 1;
        }
        match dir {
            Dir::Forward => l.fwd.push_back((at, cell)),
            Dir::Backward => l.bwd.push_back((at, cell)),
        }
    }

    fn room(&self, link: usize, dir: Dir) -> bool {
        self.links.get(link).is_some_and(|l| {
            l.preamble.is_some()
                && match dir {
                    Dir::Forward => l.fwd.len(),
                    Dir::Backward => l.bwd.len(),
                } < self.config.link_capacity
        })
    }

    fn transmit(&mut self) -> bool {
        let mut progress = false;
        while self.room(0, Dir::Forward) {
            let Some(cell) = self.client.poll_transmit() else {
                break;
            };
            self.push_link(0, Dir::Forward, cell);
            progress = true;
        }
        for j in 0..self.relays.len() {
            loop {
                if !self.room(j, Dir::Backward) {
                    break;
                }
                let Some(cell) = self.relays[j]
                    .circuit
                    .as_mut()
                    .and_then(RelayCircuit::poll_transmit_prev)
                else {
                    break;
                };
                self.push_link(j, Dir::Backward, cell);
                progress = true;
            }
            loop {
                if !self.room(j + 1, Dir::Forward) {
                    break;
                }
                let Some(cell) = self.relays[j]
                    .circuit
                    .as_mut()
                    .and_then(RelayCircuit::poll_transmit_next)
                else {
                    break;
                };
                self.push_link(j + 1, Dir::Forward, cell);
                progress = true;
            }
        }
        progress
    }

    fn actions(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        for j in 0..self.relays.len() {
            while let Some(action) = self.relays[j]
                .circuit
                .as_mut()
                .and_then(RelayCircuit::poll_action)
            {
                progress = true;
                let r = self.do_action(j, action, now);
                if let Err(e) = r {
                    self.relays[j].errors.push(e);
                }
            }
        }
        progress
    }

    fn do_action(&mut self, j: usize, action: RelayAction, now: Instant) -> Result<(), ProtoError> {
        let next_ok = self.relays.get(j + 1).is_some_and(|n| n.reachable);
        let (relays, internet, links) = (&mut self.relays, &mut self.internet, &mut self.links);
        let Some(circ) = relays[j].circuit.as_mut() else {
            return Ok(());
        };
        match action {
            RelayAction::OpenNextHop {
                peer_id, preamble, ..
            } => {
                let right_peer = relays.get(j + 1).is_some_and(|n| n.peer_id == peer_id);
                let Some(circ) = relays[j].circuit.as_mut() else {
                    return Ok(());
                };
                if right_peer && next_ok {
                    links[j + 1].preamble = Some(preamble);
                    circ.handle_next_hop_opened(now)
                } else {
                    circ.handle_next_hop_failed(DestroyReason::ConnectFailed, now)
                }
            }
            RelayAction::Connect { stream, host, port } => {
                let name = match &host {
                    Host::Name(n) => n.clone(),
                    Host::V4(a) => a.to_string(),
                    Host::V6(a) => a.to_string(),
                };
                internet.connects.push((name.clone(), port));
                match internet.targets.get(&name) {
                    Some(Target::Refuse) | None => {
                        circ.handle_exit_connect_failed(stream, EndReason::ConnectRefused, now)
                    }
                    Some(t) => {
                        internet.conns.insert(
                            stream.0,
                            Conn {
                                target: t.clone(),
                                pending: VecDeque::new(),
                                produced: 0,
                                eof_sent: false,
                            },
                        );
                        circ.handle_exit_connected(
                            stream,
                            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                            60,
                            now,
                        )
                    }
                }
            }
            RelayAction::Resolve { stream, host } => {
                let answers = match &host {
                    Host::Name(n) if internet.targets.contains_key(n) => {
                        vec![ResolvedAnswer::V4(Ipv4Addr::new(192, 0, 2, 1), 60)]
                    }
                    _ => vec![ResolvedAnswer::PermanentError(0)],
                };
                circ.handle_exit_resolved(stream, answers, now)
            }
            RelayAction::ExitData { stream, data } => {
                internet
                    .received
                    .entry(stream.0)
                    .or_default()
                    .extend_from_slice(&data);
                match internet.conns.get_mut(&stream.0) {
                    Some(c) if c.target == Target::Echo => {
                        c.pending.extend(&data);
                        Ok(())
                    }
                    _ => circ.handle_exit_written(stream, data.len(), now),
                }
            }
            RelayAction::CloseStream { stream } => {
                internet.conns.remove(&stream.0);
                internet.closed.push(stream);
                Ok(())
            }
            RelayAction::ExitWritable { .. } => Ok(()),
        }
    }

    fn pump_internet(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        let Some(exit) = self.relays.iter_mut().rev().find(|r| r.exit) else {
            return false;
        };
        let Some(circ) = exit.circuit.as_mut() else {
            return false;
        };
        if circ.is_closed() {
            return false;
        }
        let ids: Vec<u16> = self.internet.conns.keys().copied().collect();
        let mut chunk = Vec::with_capacity(8192);
        for id in ids {
            let Some(c) = self.internet.conns.get_mut(&id) else {
                continue;
            };
            let stream = StreamId(id);
            match c.target {
                Target::Echo => {
                    while !c.pending.is_empty() {
                        let (a, _) = c.pending.as_slices();
                        match circ.handle_exit_data(stream, a, now) {
                            Ok(0) => break,
                            Ok(n) => {
                                c.pending.drain(..n);
                                progress = true;
                                if let Err(e) = circ.handle_exit_written(stream, n, now) {
                                    exit.errors.push(e);
                                }
                            }
                            Err(e) => {
                                exit.errors.push(e);
                                break;
                            }
                        }
                    }
                }
                Target::Source(total) => {
                    while c.produced < total {
                        let end = total.min(c.produced + 8192);
                        chunk.clear();
                        chunk.extend((c.produced..end).map(|i| pattern_byte(id, i)));
                        match circ.handle_exit_data(stream, &chunk, now) {
                            Ok(0) => break,
                            Ok(n) => {
                                c.produced += n;
                                progress = true;
                            }
                            Err(e) => {
                                exit.errors.push(e);
                                break;
                            }
                        }
                    }
                    if c.produced == total && !c.eof_sent {
                        c.eof_sent = true;
                        progress = true;
                        if let Err(e) = circ.handle_exit_eof(stream, now) {
                            exit.errors.push(e);
                        }
                    }
                }
                Target::Sink | Target::Refuse => {}
            }
        }
        progress
    }

    fn deliver(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        for j in 0..self.links.len() {
            // Forward: into relay j.
            loop {
                let ready = self.links[j].fwd.front().is_some_and(|(t, _)| *t <= now);
                if !ready {
                    break;
                }
                let node = &mut self.relays[j];
                match node.circuit.as_mut() {
                    None => {
                        let Some((_, cell)) = self.links[j].fwd.pop_front() else {
                            break;
                        };
                        let preamble = self.links[j].preamble.unwrap_or_default();
                        let config = RelayConfig {
                            exit: node.exit,
                            idle_timeout: self.config.relay_idle_timeout,
                            ..RelayConfig::default()
                        };
                        match RelayCircuit::accept(
                            &preamble,
                            &cell,
                            &node.peer_id,
                            &node.keys,
                            config,
                            now,
                        ) {
                            Ok(c) => node.circuit = Some(c),
                            Err(e) => node.errors.push(e),
                        }
                    }
                    Some(c) => {
                        if !c.wants_prev_cell() && !c.is_closed() {
                            break;
                        }
                        let Some((_, cell)) = self.links[j].fwd.pop_front() else {
                            break;
                        };
                        if let Err(e) = c.handle_prev_cell(cell, now) {
                            node.errors.push(e);
                        }
                    }
                }
                progress = true;
            }
            // Backward: into relay j-1 or the client.
            loop {
                let ready = self.links[j].bwd.front().is_some_and(|(t, _)| *t <= now);
                if !ready {
                    break;
                }
                if j == 0 {
                    let Some((_, cell)) = self.links[j].bwd.pop_front() else {
                        break;
                    };
                    if let Err(e) = self.client.handle_cell(cell, now) {
                        self.client_errors.push(e);
                    }
                } else {
                    let node = &mut self.relays[j - 1];
                    let Some(c) = node.circuit.as_mut() else {
                        break;
                    };
                    if !c.wants_next_cell() && !c.is_closed() {
                        break;
                    }
                    let Some((_, cell)) = self.links[j].bwd.pop_front() else {
                        break;
                    };
                    if let Err(e) = c.handle_next_cell(cell, now) {
                        node.errors.push(e);
                    }
                }
                progress = true;
            }
        }
        progress
    }

    /// Whether every relay that holds a circuit has closed it.
    pub fn all_relays_closed(&self) -> bool {
        self.relays
            .iter()
            .all(|r| r.circuit.as_ref().is_none_or(RelayCircuit::is_closed))
    }
}
