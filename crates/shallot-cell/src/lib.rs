#![doc = include_str!("../README.md")]

mod err;
mod host;
mod link;
mod reader;
mod relay;
mod size;

pub use err::CellError;
pub use host::{Host, MAX_HOSTNAME_LEN, check_hostname, host_type};
pub use link::{
    CIRCUIT_PROTOCOL, DestroyReason, LinkCell, OnionKeyId, PREAMBLE_VERSION, Preamble, link_command,
};
pub use relay::{
    Begin, EndReason, Extend, MAX_ADDR_LEN, MAX_EXTEND_ADDRS, MAX_PEER_ID_LEN,
    MAX_RESOLVED_ANSWERS, RelayFrame, RelayMsg, ResolvedAnswer, StreamId, StreamIdRule,
    answer_type, decode_data, encode_data_into, relay_command,
};
pub use size::{
    LAYER_OVERHEAD, LINK_CELL_LEN, MAX_HOPS, RELAY_HEADER_LEN, link_cell_len,
    link_index_for_cell_len, max_data_len, relay_payload_len,
};
