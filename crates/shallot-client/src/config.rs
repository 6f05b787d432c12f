//! Settings of the client process (`shallot client --config FILE`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shallot_p2p::Multiaddr;

use crate::err::ClientError;

/// Default SOCKS5/HTTP CONNECT listen address: Tor's SOCKS port, so torsocks, proxychains and
/// existing browser settings work unchanged.
pub const DEFAULT_SOCKS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9050));
/// Default time a circuit takes new streams after its first use (Tor's MaxCircuitDirtiness).
pub const DEFAULT_CIRCUIT_REUSE_SECS: u64 = 600;
/// Default ports the client keeps a clean circuit ready for, before any application asks.
pub const DEFAULT_PREEMPTIVE_PORTS: [u16; 2] = [80, 443];
/// Default most circuits open (built or building) at once. A browser that isolates sites by
/// credentials (Tor Browser) holds one for each site it keeps an idle keep-alive connection to,
/// every site of the last couple of minutes: with 32, the 33rd site waited and failed. Tor
/// caps only circuits being built (MaxClientCircuitsPending, 32); this caps all of them, well
/// above what a browser keeps open and at half a guard's per-address circuit limit.
pub const DEFAULT_MAX_CIRCUITS: usize = 128;
/// Default build timeout before enough build times were measured to learn one.
pub const DEFAULT_BUILD_TIMEOUT_INITIAL_SECS: u64 = 60;
/// Default lower bound of the learned build timeout.
pub const DEFAULT_BUILD_TIMEOUT_MIN_SECS: u64 = 5;
/// Default upper bound of the learned build timeout.
pub const DEFAULT_BUILD_TIMEOUT_MAX_SECS: u64 = 120;
/// Default time one attempt waits for CONNECTED (or RESOLVED).
pub const DEFAULT_STREAM_TIMEOUT_SECS: u64 = 15;
/// Default attempts (each on a different circuit) for a stream or a build.
pub const DEFAULT_MAX_STREAM_ATTEMPTS: u32 = 3;
/// Default interval between view refreshes from the DHT (specs/04 §6.1).
pub const DEFAULT_VIEW_REFRESH_SECS: u64 = 600;
/// Default most application connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Settings of the client process. Every field has a named default; unknown fields are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Where the SOCKS5 and HTTP CONNECT front listens. Default [`DEFAULT_SOCKS_LISTEN`].
    pub socks_listen: SocketAddr,
    /// DHT servers to bootstrap from, each a multiaddr ending with `/p2p/<PeerId>`.
    /// Default: none.
    pub bootstrap: Vec<String>,
    /// Where the view cache and the pinned guards (`guards.state`) live. Default: none
    /// (nothing is kept on disk; guards are not pinned across runs).
    pub data_dir: Option<PathBuf>,
    /// Where to serve Prometheus metrics at `/metrics`. Default: none (off).
    pub metrics_listen: Option<SocketAddr>,
    /// Where the DNS port listens, UDP and TCP on the same port (Tor's DNSPort): A, AAAA and
    /// PTR queries answered by exits (specs/07 §8). Default: none (off).
    pub dns_listen: Option<SocketAddr>,
    /// Seconds a circuit takes new streams after its first use. Default
    /// [`DEFAULT_CIRCUIT_REUSE_SECS`].
    pub circuit_reuse_secs: u64,
    /// Ports to keep a clean circuit ready for, besides those used recently. Default
    /// [`DEFAULT_PREEMPTIVE_PORTS`].
    pub preemptive_ports: Vec<u16>,
    /// Most circuits open or building at once; at the limit the least recently used idle one
    /// is closed to make room. Default [`DEFAULT_MAX_CIRCUITS`].
    pub max_circuits: usize,
    /// Build timeout until enough builds were measured. Default
    /// [`DEFAULT_BUILD_TIMEOUT_INITIAL_SECS`].
    pub build_timeout_initial_secs: u64,
    /// Lower bound of the learned build timeout. Default [`DEFAULT_BUILD_TIMEOUT_MIN_SECS`].
    pub build_timeout_min_secs: u64,
    /// Upper bound of the learned build timeout. Default [`DEFAULT_BUILD_TIMEOUT_MAX_SECS`].
    pub build_timeout_max_secs: u64,
    /// Seconds one attempt waits for the exit's CONNECTED or RESOLVED. Default
    /// [`DEFAULT_STREAM_TIMEOUT_SECS`].
    pub stream_timeout_secs: u64,
    /// Attempts, each on a different path, for a stream or a circuit build. Default
    /// [`DEFAULT_MAX_STREAM_ATTEMPTS`].
    pub max_stream_attempts: u32,
    /// Seconds between view refreshes from the DHT. Default [`DEFAULT_VIEW_REFRESH_SECS`].
    pub view_refresh_secs: u64,
    /// Most application connections served at once; more wait in the listen backlog.
    /// Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Scrub destinations and client addresses from logs. Default: true.
    pub safe_logging: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            socks_listen: DEFAULT_SOCKS_LISTEN,
            bootstrap: Vec::new(),
            data_dir: None,
            metrics_listen: None,
            dns_listen: None,
            circuit_reuse_secs: DEFAULT_CIRCUIT_REUSE_SECS,
            preemptive_ports: DEFAULT_PREEMPTIVE_PORTS.to_vec(),
            max_circuits: DEFAULT_MAX_CIRCUITS,
            build_timeout_initial_secs: DEFAULT_BUILD_TIMEOUT_INITIAL_SECS,
            build_timeout_min_secs: DEFAULT_BUILD_TIMEOUT_MIN_SECS,
            build_timeout_max_secs: DEFAULT_BUILD_TIMEOUT_MAX_SECS,
            stream_timeout_secs: DEFAULT_STREAM_TIMEOUT_SECS,
            max_stream_attempts: DEFAULT_MAX_STREAM_ATTEMPTS,
            view_refresh_secs: DEFAULT_VIEW_REFRESH_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            safe_logging: true,
        }
    }
}

impl ClientConfig {
    /// The bootstrap addresses, parsed; each must end with `/p2p/<PeerId>`.
    pub fn bootstrap_addrs(&self) -> Result<Vec<Multiaddr>, ClientError> {
        self.bootstrap
            .iter()
            .map(|s| {
                let addr: Multiaddr = s.parse().map_err(|e| ClientError::BadBootstrap {
                    addr: s.clone(),
                    reason: format!("{e}"),
                })?;
                if shallot_p2p::peer_of(&addr).is_none() {
                    return Err(ClientError::BadBootstrap {
                        addr: s.clone(),
                        reason: "no /p2p/<PeerId> at the end".to_owned(),
                    });
                }
                Ok(addr)
            })
            .collect()
    }

    /// Checks the ranges the fields must respect.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, reason| Err(ClientError::BadSetting { field, reason });
        if self.max_circuits == 0 {
            return bad("max_circuits", "must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_stream_attempts == 0 {
            return bad("max_stream_attempts", "must be at least 1");
        }
        if self.build_timeout_min_secs == 0
            || self.build_timeout_min_secs > self.build_timeout_max_secs
        {
            return bad(
                "build_timeout_min_secs",
                "must be at least 1 and at most build_timeout_max_secs",
            );
        }
        if self.stream_timeout_secs == 0 {
            return bad("stream_timeout_secs", "must be at least 1");
        }
        if self.view_refresh_secs == 0 {
            return bad("view_refresh_secs", "must be at least 1");
        }
        if self.preemptive_ports.contains(&0) {
            return bad("preemptive_ports", "port 0 is never allowed");
        }
        self.bootstrap_addrs().map(|_| ())
    }

    pub(crate) fn circuit_reuse(&self) -> Duration {
        Duration::from_secs(self.circuit_reuse_secs)
    }

    pub(crate) fn stream_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_timeout_secs)
    }

    pub(crate) fn view_refresh(&self) -> Duration {
        Duration::from_secs(self.view_refresh_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../configs/client.example.toml");

    #[test]
    fn example_parses_to_the_defaults() {
        let parsed: ClientConfig = toml::from_str(EXAMPLE).expect("example parses");
        assert_eq!(parsed, ClientConfig::default());
    }

    #[test]
    fn example_mentions_every_field() {
        // Every field of the serialized defaults must appear in the example, as a setting or
        // (for options that are off by default) as a commented-out line.
        let json = toml::to_string(&ClientConfig {
            data_dir: Some(PathBuf::from("x")),
            metrics_listen: Some(DEFAULT_SOCKS_LISTEN),
            dns_listen: Some(DEFAULT_SOCKS_LISTEN),
            ..ClientConfig::default()
        })
        .expect("serialize");
        let table: toml::Table = toml::from_str(&json).expect("reparse");
        assert!(
            table.len() >= 15,
            "expected all fields, got {}",
            table.len()
        );
        for key in table.keys() {
            let set = EXAMPLE.lines().any(|l| l.starts_with(&format!("{key} =")));
            let commented = EXAMPLE
                .lines()
                .any(|l| l.starts_with(&format!("# {key} =")));
            assert!(set || commented, "configs/client.example.toml misses {key}");
        }
    }

    #[test]
    fn commented_options_parse_when_uncommented() {
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| {
                if l.starts_with("# data_dir =")
                    || l.starts_with("# metrics_listen =")
                    || l.starts_with("# dns_listen =")
                {
                    &l[2..]
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: ClientConfig = toml::from_str(&uncommented).expect("parses");
        assert!(parsed.data_dir.is_some());
        assert!(parsed.metrics_listen.is_some());
        assert!(parsed.dns_listen.is_some());
        parsed.validate().expect("valid");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<ClientConfig>("socks_port = 9050\n").expect_err("refused");
        assert!(err.to_string().contains("socks_port"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let mut c = ClientConfig {
            max_circuits: 0,
            ..ClientConfig::default()
        };
        assert!(
            c.validate()
                .expect_err("refused")
                .to_string()
                .contains("max_circuits")
        );
        c.max_circuits = 1;
        c.bootstrap = vec!["/ip4/127.0.0.1/tcp/1".to_owned()];
        assert!(
            c.validate()
                .expect_err("refused")
                .to_string()
                .contains("/p2p/")
        );
        c.bootstrap = vec!["not an address".to_owned()];
        assert!(matches!(
            c.validate(),
            Err(ClientError::BadBootstrap { .. })
        ));
        c.bootstrap.clear();
        c.build_timeout_min_secs = 500;
        assert!(c.validate().is_err());
        c.build_timeout_min_secs = 5;
        c.preemptive_ports = vec![0];
        assert!(c.validate().is_err());
        c.preemptive_ports = vec![443];
        c.validate().expect("valid again");
    }
}
