//! Hand-driven peers for tests that need to send what a correct peer never would.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::Instant;

use shallot_cell::{
    Begin, Host, LINK_CELL_LEN, LinkCell, RelayFrame, RelayMsg, StreamId, link_command,
};
use shallot_crypto::{
    ClientHandshake, ClientLayers, ForwardMarker, OnionKeyRing, OnionSecretKey, RelayLayer,
    relay_handshake,
};
use shallot_proto::{ClientCircuit, ClientConfig, HopSpec, RelayCircuit, RelayConfig};

pub const L0: usize = LINK_CELL_LEN;

/// A one-hop circuit whose client side is driven by hand (raw layers), and the real relay.
pub struct ManualClient {
    pub layers: ClientLayers,
    pub relay: RelayCircuit,
    pub now: Instant,
}

impl ManualClient {
    pub fn new(exit: bool) -> Self {
        let now = Instant::now();
        let keys = OnionKeyRing::new(OnionSecretKey::generate());
        let (hs, msg) = ClientHandshake::start(b"relay", &keys.current_public()).unwrap();
        let create = LinkCell::Create {
            onion_key_id: keys.current_public().id(),
            handshake: msg,
        }
        .encode(L0)
        .unwrap();
        let mut relay = RelayCircuit::accept(
            &ClientCircuit::preamble(),
            &create,
            b"relay",
            &keys,
            RelayConfig {
                exit,
                // The timer these tests look at is the extension's alone.
                idle_timeout: None,
                ..RelayConfig::default()
            },
            now,
        )
        .unwrap();
        let created = relay.poll_transmit_prev().unwrap();
        let LinkCell::Created { handshake } = LinkCell::decode(&created).unwrap() else {
            panic!("no CREATED");
        };
        let mut layers = ClientLayers::new();
        layers.push_hop(hs.finish(&handshake).unwrap());
        Self { layers, relay, now }
    }

    /// Opens exit stream `id` to `echo.test:7` and has the exit report it connected; the
    /// CONNECTED cell is collected.
    pub fn connected_exit_stream(&mut self, id: u16) {
        self.send(&RelayFrame {
            stream_id: StreamId(id),
            msg: RelayMsg::Begin(Begin {
                host: Host::Name("echo.test".into()),
                port: 7,
                flags: 0,
            }),
        })
        .unwrap();
        self.relay.poll_action();
        self.relay
            .handle_exit_connected(StreamId(id), [192, 0, 2, 1].into(), 0, self.now)
            .unwrap();
        self.recv_all();
    }

    /// Seals `frame` for hop 0 and hands it to the relay.
    pub fn send(&mut self, frame: &RelayFrame) -> Result<(), shallot_proto::ProtoError> {
        let cell = self.seal(frame);
        self.relay.handle_prev_cell(cell, self.now)
    }

    pub fn seal(&mut self, frame: &RelayFrame) -> Vec<u8> {
        let mut cell = vec![0u8; L0];
        cell[0] = link_command::RELAY;
        let range = ClientLayers::message_range(L0 - 1, 0);
        frame.encode_into(&mut cell[1..][range]).unwrap();
        self.layers.seal_forward(0, &mut cell[1..]).unwrap();
        cell
    }

    /// Opens every cell the relay queued toward us; DESTROY cells come back as `None`.
    pub fn recv_all(&mut self) -> Vec<Option<RelayFrame>> {
        let mut out = Vec::new();
        while let Some(mut cell) = self.relay.poll_transmit_prev() {
            if cell[0] == link_command::DESTROY {
                out.push(None);
                continue;
            }
            let (_, range) = self.layers.open_backward(&mut cell[1..]).unwrap();
            out.push(Some(RelayFrame::decode(&cell[1..][range]).unwrap()));
        }
        out
    }
}

/// A real client on a one-hop circuit whose relay is driven by hand.
pub struct ManualRelay {
    pub client: ClientCircuit,
    pub layer: RelayLayer,
    pub now: Instant,
}

impl ManualRelay {
    pub fn new() -> Self {
        let now = Instant::now();
        let keys = OnionKeyRing::new(OnionSecretKey::generate());
        let spec = HopSpec {
            peer_id: b"relay".to_vec(),
            addrs: vec![],
            onion_key: keys.current_public(),
        };
        let mut client = ClientCircuit::new(&spec, ClientConfig::default(), now).unwrap();
        let create = client.poll_transmit().unwrap();
        let LinkCell::Create {
            onion_key_id,
            handshake,
        } = LinkCell::decode(&create).unwrap()
        else {
            panic!("no CREATE");
        };
        let (hop_keys, reply) =
            relay_handshake(b"relay", &keys, &onion_key_id, &handshake).unwrap();
        client
            .handle_cell(
                LinkCell::Created { handshake: reply }.encode(L0).unwrap(),
                now,
            )
            .unwrap();
        Self {
            client,
            layer: RelayLayer::new(hop_keys),
            now,
        }
    }

    /// Opens a stream to `x.test:1`, collects its BEGIN, and answers CONNECTED.
    pub fn connected_stream(&mut self) -> StreamId {
        let stream = self
            .client
            .open_stream(Host::Name("x.test".into()), 1)
            .unwrap();
        self.recv_all();
        self.send(&RelayFrame {
            stream_id: stream,
            msg: RelayMsg::Connected {
                addr: Host::V4([192, 0, 2, 1].into()),
                ttl: 0,
            },
        })
        .unwrap();
        stream
    }

    /// Seals `frame` as this relay's own message and hands it to the client.
    pub fn send(&mut self, frame: &RelayFrame) -> Result<(), shallot_proto::ProtoError> {
        let mut cell = vec![0u8; L0];
        cell[0] = link_command::RELAY;
        frame.encode_into(&mut cell[2..L0 - 16]).unwrap();
        self.layer.seal_backward(true, &mut cell[1..]).unwrap();
        self.client.handle_cell(cell, self.now)
    }

    /// Opens every cell the client queued; DESTROY cells come back as `None`.
    pub fn recv_all(&mut self) -> Vec<Option<RelayFrame>> {
        let mut out = Vec::new();
        while let Some(mut cell) = self.client.poll_transmit() {
            if cell[0] == link_command::DESTROY {
                out.push(None);
                continue;
            }
            assert_eq!(
                self.layer.open_forward(&mut cell[1..]).unwrap(),
                ForwardMarker::ForMe
            );
            out.push(Some(RelayFrame::decode(&cell[2..L0 - 16]).unwrap()));
        }
        out
    }
}
