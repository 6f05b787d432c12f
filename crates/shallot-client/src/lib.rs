#![doc = include_str!("../README.md")]

mod circuit;
mod client;
mod config;
mod dns;
mod err;
mod front;
mod http_connect;
mod manager;
mod metrics;
mod path;
mod pool;
mod sensitive;
mod socks;
mod status_page;
mod stream;
mod timeout;

pub use circuit::{BuildFailure, CircuitHandle};
pub use client::{
    BOOTSTRAP_WARN_AFTER, BOOTSTRAP_WARN_INTERVAL, Bootstrap, CircuitSummary, Client, ClientHandle,
};
pub use config::{
    ClientConfig, DEFAULT_BUILD_TIMEOUT_INITIAL_SECS, DEFAULT_BUILD_TIMEOUT_MAX_SECS,
    DEFAULT_BUILD_TIMEOUT_MIN_SECS, DEFAULT_CIRCUIT_REUSE_SECS, DEFAULT_MAX_CIRCUITS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_STREAM_ATTEMPTS, DEFAULT_PREEMPTIVE_PORTS,
    DEFAULT_SOCKS_LISTEN, DEFAULT_STREAM_TIMEOUT_SECS, DEFAULT_VIEW_REFRESH_SECS,
};
pub use err::{ClientError, StreamFailure};
pub use front::HANDSHAKE_TIMEOUT;
pub use metrics::{
    BUILD_TIME_BUCKETS, METRICS_PATH, PAGE_PATH, STATUS_PATH, STATUS_TEXT_PATH,
    THROUGHPUT_INTERVAL, THROUGHPUT_SAMPLES,
};
pub use sensitive::{Sensitive, set_safe_logging};
pub use shallot_proxy_proto::MAX_HTTP_HEAD;
pub use stream::{APP_CHANNEL_CHUNKS, APP_CHUNK, DataStream, HALF_CLOSE_GRACE};
pub use timeout::BUILD_TIME_SAMPLES;
