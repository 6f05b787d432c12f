//! The exit's outside world: name resolution (hickory, configured upstreams only), the exit
//! policy checked against the *resolved* address, TCP connects with a timeout, and the mapping
//! of each failure to an END reason (specs/03 §4.1, §6; specs/06 §5).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use shallot_cell::{EndReason, Host, MAX_RESOLVED_ANSWERS, ResolvedAnswer, check_hostname};
use shallot_exit_policy::{Decision, ExitPolicy, ExitPolicyConfig, RelayExitPolicy, is_public};
use tokio::net::TcpStream;
use tracing::warn;

use crate::config::RelayConfig;
use crate::err::RelayError;

/// TTL (seconds) the exit reports for `localhost` (a fixed value, not a cache's).
const LOCAL_TTL: u32 = 60;
/// The TTL an exit reports for an answer whose TTL is at most this (specs/03 §4.10; Tor's
/// `MIN_DNS_TTL`).
pub const MIN_CLIENT_TTL: u32 = 300;
/// The TTL an exit reports for an answer whose TTL is above [`MIN_CLIENT_TTL`] (Tor's
/// `MAX_DNS_TTL`).
pub const MAX_CLIENT_TTL: u32 = 3600;
/// Resolved addresses an exit tries to connect to, in order, within one connect timeout.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// An exit's policy, resolver and timeouts.
pub(crate) struct Exit {
    policy: RelayExitPolicy,
    /// Reverse lookups of private and other non-public addresses are answered (only when the
    /// policy's reject-private prelude is off: such names describe the exit's own network).
    reverse_private: bool,
    resolver: Option<TokioResolver>,
    connect_timeout: Duration,
    resolve_timeout: Duration,
}

impl Exit {
    /// Loads the policy file and builds the resolver. `own_addrs` are the relay's addresses
    /// (rejected by the prelude unless `exit_policy_reject_private` is off, specs/06 §6).
    pub(crate) fn new(
        config: &RelayConfig,
        policy_file: &Path,
        own_addrs: &[IpAddr],
    ) -> Result<Self, RelayError> {
        let text =
            std::fs::read_to_string(policy_file).map_err(|source| RelayError::PolicyRead {
                path: policy_file.to_owned(),
                source,
            })?;
        let policy = ExitPolicy::parse(&policy_file.display().to_string(), &text)?;
        for w in policy.warnings() {
            warn!("exit policy: {w}");
        }
        let policy = RelayExitPolicy::new(
            policy,
            &ExitPolicyConfig {
                reject_private: config.exit_policy_reject_private,
                private_allowed: config.exit_policy_private_allowed.clone(),
            },
            own_addrs,
        );
        Ok(Self {
            policy,
            reverse_private: !config.exit_policy_reject_private,
            resolver: build_resolver(
                &config.dns_upstreams,
                Duration::from_secs(config.resolve_timeout_secs),
            )?,
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            resolve_timeout: Duration::from_secs(config.resolve_timeout_secs),
        })
    }

    /// The relay's exit policy.
    pub(crate) fn policy(&self) -> &RelayExitPolicy {
        &self.policy
    }

    /// Resolves `host` (a literal address resolves to itself).
    async fn lookup(&self, host: &Host) -> Result<(Vec<IpAddr>, u32), EndReason> {
        let name = match host {
            Host::V4(a) => return Ok((vec![IpAddr::V4(*a)], 0)),
            Host::V6(a) => return Ok((vec![IpAddr::V6(*a)], 0)),
            Host::Name(n) => n,
        };
        if is_localhost(name) {
            return Ok((
                vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
                LOCAL_TTL,
            ));
        }
        let Some(resolver) = &self.resolver else {
            return Err(EndReason::ResolveFailed);
        };
        let lookup = tokio::time::timeout(self.resolve_timeout, resolver.lookup_ip(name.as_str()))
            .await
            .map_err(|_| EndReason::ResolveFailed)?
            .map_err(|_| EndReason::ResolveFailed)?;
        let remaining = lookup
            .valid_until()
            .saturating_duration_since(Instant::now())
            .as_secs();
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err(EndReason::ResolveFailed);
        }
        Ok((
            addrs,
            clip_ttl(u32::try_from(remaining).unwrap_or(u32::MAX)),
        ))
    }

    /// BEGIN: resolve, check the policy on each resolved address and refuse the addresses
    /// where `is_relay` says a relay listens (specs/06 §6.1), connect to the first allowed one
    /// (trying up to [`MAX_CONNECT_ATTEMPTS`] within the connect timeout). Returns the
    /// connection, the address and the TTL for CONNECTED.
    pub(crate) async fn connect(
        &self,
        host: &Host,
        port: u16,
        is_relay: &(dyn Fn(SocketAddr) -> bool + Send + Sync),
    ) -> Result<(TcpStream, IpAddr, u32), EndReason> {
        let (addrs, ttl) = self.lookup(host).await?;
        let allowed: Vec<IpAddr> = addrs
            .into_iter()
            // specs/06 §5.1: evaluate (and connect to) the IPv4 address of an IPv4-mapped one.
            .map(|a| a.to_canonical())
            .filter(|a| self.policy.evaluate(*a, port).decision == Decision::Accept)
            .filter(|a| !is_relay(SocketAddr::new(*a, port)))
            .collect();
        if allowed.is_empty() {
            return Err(EndReason::ExitPolicy);
        }
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut last = EndReason::Misc;
        for addr in allowed.into_iter().take(MAX_CONNECT_ATTEMPTS) {
            match tokio::time::timeout_at(deadline, TcpStream::connect(SocketAddr::new(addr, port)))
                .await
            {
                Err(_) => return Err(EndReason::Timeout),
                Ok(Ok(conn)) => {
                    let _ = conn.set_nodelay(true);
                    return Ok((conn, addr, ttl));
                }
                Ok(Err(e)) => last = end_reason_of(&e),
            }
        }
        Err(last)
    }

    /// RESOLVE: the addresses of a name, or the names of an address (a reverse lookup, Tor's
    /// RESOLVE_PTR).
    pub(crate) async fn resolve(&self, host: &Host) -> Vec<ResolvedAnswer> {
        let ip = match host {
            Host::V4(a) => IpAddr::V4(*a),
            Host::V6(a) => IpAddr::V6(*a),
            Host::Name(_) => return self.resolve_name(host).await,
        };
        self.reverse(ip.to_canonical()).await
    }

    async fn resolve_name(&self, host: &Host) -> Vec<ResolvedAnswer> {
        match self.lookup(host).await {
            Ok((addrs, ttl)) => addrs
                .into_iter()
                .take(MAX_RESOLVED_ANSWERS)
                .map(|a| match a.to_canonical() {
                    IpAddr::V4(v4) => ResolvedAnswer::V4(v4, ttl),
                    IpAddr::V6(v6) => ResolvedAnswer::V6(v6, ttl),
                })
                .collect(),
            Err(_) => vec![ResolvedAnswer::PermanentError(0)],
        }
    }

    /// The PTR names of `ip` from the configured upstreams. Refused (a permanent error) for a
    /// non-public address while the reject-private prelude is on, and without upstreams.
    /// Names that break specs/03 §5.1 are left out; none left is a permanent error.
    async fn reverse(&self, ip: IpAddr) -> Vec<ResolvedAnswer> {
        let failed = vec![ResolvedAnswer::PermanentError(0)];
        if !is_public(ip) && !self.reverse_private {
            return failed;
        }
        let Some(resolver) = &self.resolver else {
            return failed;
        };
        let Ok(Ok(lookup)) = tokio::time::timeout(
            self.resolve_timeout,
            resolver.reverse_lookup(Name::from(ip)),
        )
        .await
        else {
            return failed;
        };
        let names: Vec<ResolvedAnswer> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::PTR(ptr) => {
                    let name = ptr.0.to_ascii();
                    let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
                    check_hostname(name.as_bytes())
                        .ok()
                        .map(|()| ResolvedAnswer::Name(name, clip_ttl(record.ttl)))
                }
                _ => None,
            })
            .take(MAX_RESOLVED_ANSWERS)
            .collect();
        if names.is_empty() { failed } else { names }
    }
}

/// The TTL told to a client for an answer with `ttl` seconds left: one of two fixed values, so
/// that it does not count down in the shared cache and tell one client what another resolved
/// and when (specs/03 §4.10; Tor's `clip_dns_ttl`).
const fn clip_ttl(ttl: u32) -> u32 {
    if ttl <= MIN_CLIENT_TTL {
        MIN_CLIENT_TTL
    } else {
        MAX_CLIENT_TTL
    }
}

/// `localhost` (RFC 6761 §6.3), the one name an exit resolves without upstreams.
fn is_localhost(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    n.eq_ignore_ascii_case("localhost")
}

/// The END reason for a failed connect (specs/03 §4.1).
pub(crate) fn end_reason_of(e: &io::Error) -> EndReason {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => EndReason::ConnectRefused,
        io::ErrorKind::TimedOut => EndReason::Timeout,
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => EndReason::NoRoute,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => EndReason::ConnReset,
        _ => EndReason::Misc,
    }
}

/// A resolver over `upstreams` only: no system config, no hosts file. `None` without upstreams.
fn build_resolver(
    upstreams: &[SocketAddr],
    timeout: Duration,
) -> Result<Option<TokioResolver>, RelayError> {
    if upstreams.is_empty() {
        return Ok(None);
    }
    let mut config = ResolverConfig::default();
    for up in upstreams {
        let mut ns = NameServerConfig::udp_and_tcp(up.ip());
        let mut connections = Vec::new();
        for mut c in [ConnectionConfig::udp(), ConnectionConfig::tcp()] {
            c.port = up.port();
            connections.push(c);
        }
        ns.connections = connections;
        config.add_name_server(ns);
    }
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = timeout;
    opts.attempts = 1;
    // The cache keeps an answer for its real TTL, never longer (no minimum TTL): clients are
    // told clipped TTLs (clip_ttl), the cache itself must not serve stale answers.
    opts.positive_min_ttl = None;
    opts.negative_min_ttl = None;
    builder
        .build()
        .map(Some)
        .map_err(|e| RelayError::Resolver(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    fn no_relays(_: SocketAddr) -> bool {
        false
    }

    fn exit_with(policy: &str, reject_private: bool, upstreams: Vec<SocketAddr>) -> Exit {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(policy.as_bytes()).unwrap();
        let config = RelayConfig {
            exit_policy_reject_private: reject_private,
            dns_upstreams: upstreams,
            connect_timeout_secs: 2,
            resolve_timeout_secs: 2,
            ..RelayConfig::default()
        };
        Exit::new(&config, f.path(), &[]).unwrap()
    }

    /// A DNS server on 127.0.0.1 that answers each query with the record `answer` makes for it
    /// (none: an empty answer), and counts the queries it got.
    async fn dns_server(
        answer: impl Fn(&hickory_resolver::proto::op::Query) -> Option<RData> + Send + 'static,
        ttl: u32,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use hickory_resolver::proto::op::Message;
        use hickory_resolver::proto::rr::Record;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&queries);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries.first().cloned() else {
                    continue;
                };
                let mut response = query.into_response();
                response.metadata.recursion_available = true;
                if let Some(rdata) = answer(&q) {
                    response.add_answer(Record::from_rdata(q.name, ttl, rdata));
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
            }
        });
        (addr, queries)
    }

    /// A DNS server that answers every query with one PTR record for `ptr.example.` (TTL 300).
    async fn ptr_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use hickory_resolver::proto::rr::rdata::PTR;
        let target = Name::from_ascii("ptr.example.").unwrap();
        dns_server(move |_| Some(RData::PTR(PTR(target.clone()))), 300).await
    }

    /// A DNS server that answers every A query with 127.0.0.1 and `ttl`, every other query
    /// with no answer.
    async fn a_server(ttl: u32) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use hickory_resolver::proto::rr::RecordType;
        use hickory_resolver::proto::rr::rdata::A;
        dns_server(
            |q| (q.query_type == RecordType::A).then_some(RData::A(A(Ipv4Addr::LOCALHOST))),
            ttl,
        )
        .await
    }

    #[tokio::test]
    async fn a_cached_name_reports_the_same_ttl_to_every_client() {
        // specs/03 §4.10: the remaining TTL of a shared cache entry would tell a client what
        // another resolved and when; clipped TTLs do not count down.
        let (upstream, _) = a_server(300).await;
        let exit = exit_with("accept *:*", false, vec![upstream]);
        let name = Host::Name("cached.example".into());
        let first = exit.resolve(&name).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = exit.resolve(&name).await;
        assert_eq!(first, second, "the TTL counted down between two RESOLVEs");
        assert_eq!(
            first,
            vec![ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, MIN_CLIENT_TTL)]
        );
    }

    #[tokio::test]
    async fn connected_reports_the_clipped_ttl() {
        let (upstream, _) = a_server(1000).await;
        let exit = exit_with("accept *:*", false, vec![upstream]);
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let (_conn, addr, ttl) = exit
            .connect(&Host::Name("connect.example".into()), port, &no_relays)
            .await
            .unwrap();
        assert_eq!(addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(ttl, MAX_CLIENT_TTL);
    }

    #[tokio::test]
    async fn the_exit_cache_keeps_an_answer_no_longer_than_its_ttl() {
        let (upstream, queries) = a_server(1).await;
        let exit = exit_with("accept *:*", false, vec![upstream]);
        let name = Host::Name("short.example".into());
        let first = exit.resolve(&name).await;
        assert_eq!(
            first,
            vec![ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, MIN_CLIENT_TTL)]
        );
        let asked = queries.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(exit.resolve(&name).await, first);
        assert!(
            queries.load(std::sync::atomic::Ordering::Relaxed) > asked,
            "an answer with TTL 1 s was served from the cache after 2.5 s"
        );
    }

    #[tokio::test]
    async fn reverse_lookups_ask_the_upstream_and_refuse_private_addresses() {
        let (upstream, queries) = ptr_server().await;
        let exit = exit_with("accept *:*", true, vec![upstream]);
        let public = Host::V4(Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(
            exit.resolve(&public).await,
            vec![ResolvedAnswer::Name("ptr.example".into(), 300)]
        );
        let asked = queries.load(std::sync::atomic::Ordering::Relaxed);
        assert!(asked >= 1);
        // With the reject-private prelude on, a private address is refused without a query.
        let private = Host::V4(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(
            exit.resolve(&private).await,
            vec![ResolvedAnswer::PermanentError(0)]
        );
        assert_eq!(queries.load(std::sync::atomic::Ordering::Relaxed), asked);
        // With it off, the exit's own network is the operator's to expose.
        let open = exit_with("accept *:*", false, vec![upstream]);
        assert_eq!(
            open.resolve(&private).await,
            vec![ResolvedAnswer::Name("ptr.example".into(), 300)]
        );
        // Without upstreams there is nobody to ask.
        let none = exit_with("accept *:*", false, Vec::new());
        assert_eq!(
            none.resolve(&public).await,
            vec![ResolvedAnswer::PermanentError(0)]
        );
    }

    #[test]
    fn ttls_clip_to_two_values() {
        for (ttl, told) in [
            (0, MIN_CLIENT_TTL),
            (1, MIN_CLIENT_TTL),
            (299, MIN_CLIENT_TTL),
            (300, MIN_CLIENT_TTL),
            (301, MAX_CLIENT_TTL),
            (3600, MAX_CLIENT_TTL),
            (86_400, MAX_CLIENT_TTL),
            (u32::MAX, MAX_CLIENT_TTL),
        ] {
            assert_eq!(clip_ttl(ttl), told, "{ttl}");
        }
    }

    #[test]
    fn localhost_is_the_only_name_without_upstreams() {
        assert!(is_localhost("localhost"));
        assert!(is_localhost("LocalHost."));
        assert!(!is_localhost("localhost.example"));
        assert!(!is_localhost("example.com"));
    }

    #[tokio::test]
    async fn names_fail_cleanly_without_upstreams_and_localhost_resolves() {
        let exit = exit_with("accept *:*", false, Vec::new());
        let e = exit
            .connect(&Host::Name("example.com".into()), 80, &no_relays)
            .await
            .unwrap_err();
        assert_eq!(e, EndReason::ResolveFailed);
        let answers = exit.resolve(&Host::Name("localhost".into())).await;
        assert_eq!(
            answers,
            vec![
                ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, LOCAL_TTL),
                ResolvedAnswer::V6(Ipv6Addr::LOCALHOST, LOCAL_TTL)
            ]
        );
        let answers = exit.resolve(&Host::Name("nonexistent.test".into())).await;
        assert_eq!(answers, vec![ResolvedAnswer::PermanentError(0)]);
    }

    #[tokio::test]
    async fn the_policy_is_checked_on_the_resolved_address() {
        // With the prelude on, localhost resolves to loopback addresses, which are refused.
        let exit = exit_with("accept *:*", true, Vec::new());
        let e = exit
            .connect(&Host::Name("localhost".into()), 80, &no_relays)
            .await
            .unwrap_err();
        assert_eq!(e, EndReason::ExitPolicy);
        // Port 0 is always refused.
        let exit = exit_with("accept *:*", false, Vec::new());
        let e = exit
            .connect(&Host::V4(Ipv4Addr::LOCALHOST), 0, &no_relays)
            .await
            .unwrap_err();
        assert_eq!(e, EndReason::ExitPolicy);
        // An IPv4-mapped IPv6 address is judged as its IPv4 address.
        let exit = exit_with("reject 127.0.0.1:*\naccept *:*", false, Vec::new());
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        let e = exit
            .connect(&Host::V6(mapped), 9, &no_relays)
            .await
            .unwrap_err();
        assert_eq!(e, EndReason::ExitPolicy);
    }

    #[tokio::test]
    async fn a_relays_listen_address_is_refused_after_resolution() {
        let exit = exit_with("accept *:*", false, Vec::new());
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = relay.local_addr().unwrap();
        // A relay listening at this port on both loopback addresses.
        let is_relay = move |a: SocketAddr| a.port() == at.port() && a.ip().is_loopback();
        // By address and by a name that resolves to it: refused, although the policy accepts.
        for host in [
            Host::V4(Ipv4Addr::LOCALHOST),
            Host::Name("localhost".into()),
        ] {
            let e = exit.connect(&host, at.port(), &is_relay).await.unwrap_err();
            assert_eq!(e, EndReason::ExitPolicy, "{host:?}");
        }
        // Another port of the same address is not a relay.
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = other.local_addr().unwrap().port();
        let (_conn, addr, _) = exit
            .connect(&Host::V4(Ipv4Addr::LOCALHOST), port, &is_relay)
            .await
            .unwrap();
        assert_eq!(addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[tokio::test]
    async fn an_unanswering_upstream_is_a_resolve_failure_within_the_timeout() {
        // A UDP socket that never answers stands in for a dead DNS server.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let exit = exit_with("accept *:*", false, vec![silent.local_addr().unwrap()]);
        let e = exit
            .connect(&Host::Name("example.com".into()), 80, &no_relays)
            .await
            .unwrap_err();
        assert_eq!(e, EndReason::ResolveFailed);
    }

    #[test]
    fn connect_errors_map_to_end_reasons() {
        use io::ErrorKind as K;
        for (k, r) in [
            (K::ConnectionRefused, EndReason::ConnectRefused),
            (K::TimedOut, EndReason::Timeout),
            (K::HostUnreachable, EndReason::NoRoute),
            (K::NetworkUnreachable, EndReason::NoRoute),
            (K::ConnectionReset, EndReason::ConnReset),
            (K::Other, EndReason::Misc),
        ] {
            assert_eq!(end_reason_of(&io::Error::from(k)), r, "{k:?}");
        }
    }
}
