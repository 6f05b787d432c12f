#![doc = include_str!("../README.md")]

mod client;
mod err;
mod flow;
pub mod harness;
mod queue;
mod relay;
mod streams;

pub use client::{
    ClientCircuit, ClientConfig, ClientEvent, DEFAULT_BUILD_TIMEOUT, HopSpec, KEEPALIVE_INTERVAL,
};
pub use err::ProtoError;
pub use flow::{
    CIRCUIT_WINDOW_GROWTH_MAX, CLIENT_QUEUE_CELLS, CONTROL_RESERVE_CELLS, HALF_CLOSED_IDS,
    MAX_CIRCUIT_STREAM_BUFFER, MAX_PENDING_ACTIONS, MAX_STREAM_BUFFER, MAX_STREAMS_PER_CIRCUIT,
    OPTIMISTIC_DATA_MAX, RELAY_QUEUE_CELLS, STREAM_WINDOW_INITIAL, STREAM_WINDOW_MAX,
    WINDOW_UPDATE_THRESHOLD,
};
pub use relay::{
    DEFAULT_EXTEND_TIMEOUT, DEFAULT_IDLE_TIMEOUT, RelayAction, RelayCircuit, RelayConfig,
};
