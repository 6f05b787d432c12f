#![doc = include_str!("../README.md")]

mod dns;
mod err;
pub mod feed;
mod http;
mod socks;

pub use dns::{
    DnsAction, DnsAsk, DnsOutcome, DnsQuery, MAX_ANSWER_TTL, MAX_DNS_QUERY, MAX_TCP_RESPONSE,
    MAX_UDP_RESPONSE, OversizedFrame, read_query, split_tcp_frame, tcp_frame,
};
pub use err::{HttpError, SocksError};
pub use http::{
    CONNECT_ESTABLISHED, HTTP_HANDSHAKE_BUFFER, HttpAction, HttpAsk, HttpConnectHandshake,
    HttpRefusal, HttpRequest, MAX_HTTP_HEAD, MAX_HTTP_HEADERS, http_response,
};
pub use socks::{
    CMD_BIND, CMD_CONNECT, CMD_RESOLVE, CMD_RESOLVE_PTR, CMD_UDP_ASSOCIATE, Credentials,
    MAX_SOCKS_MESSAGE, SocksAction, SocksAsk, SocksHandshake, SocksRequest, encode_reply,
    encode_reply_code,
};
