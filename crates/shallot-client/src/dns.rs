//! The DNS port (`dns_listen`, Tor's DNSPort, Arti's `dns_listen`): A, AAAA and PTR queries
//! over UDP and TCP, each answered by a RESOLVE at an exit (specs/07 §8).
//!
//! What a query asks and how it is answered is `shallot_proxy_proto`'s sans-IO code (the wire
//! format is hickory-proto's); this module is the IO shell: the sockets, the bounds, the
//! answer cache, and the lookups through the circuit manager. The client never resolves a
//! name itself (specs/07 §1): a miss becomes a RESOLVE on a circuit of the DNS port's own
//! isolation group.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use shallot_cell::{EndReason, ResolvedAnswer};
use shallot_proxy_proto::{
    DnsAction, DnsAsk, DnsOutcome, DnsQuery, MAX_DNS_QUERY, MAX_TCP_RESPONSE, MAX_UDP_RESPONSE,
    read_query, split_tcp_frame, tcp_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::err::StreamFailure;
use crate::front::{Connector, accept_bounded};
use crate::pool::Isolation;
use crate::sensitive::Sensitive;

/// Most answers kept in the cache; when it is full, expired answers go first, then the one
/// that expires soonest.
pub(crate) const MAX_DNS_CACHE_ENTRIES: usize = 1024;
/// Longest an answer is kept, whatever TTL an exit gave (the exits' largest clipped TTL,
/// specs/03 §4.10).
pub(crate) const MAX_DNS_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Most lookups waiting for an exit at once, over UDP and TCP together; a query past it is
/// answered SERVFAIL at once instead of waiting.
pub(crate) const MAX_DNS_LOOKUPS_IN_FLIGHT: usize = 256;
/// Most TCP connections served at once; more wait in the listen backlog.
pub(crate) const MAX_DNS_TCP_CONNECTIONS: usize = 64;
/// Most queries of one TCP connection answered at once (RFC 7766 §6.2.1.1 pipelining); the
/// connection is not read further until one is answered.
pub(crate) const MAX_DNS_TCP_QUERIES_PER_CONNECTION: usize = 16;
/// A TCP connection with no query arriving and none waiting is closed after this long
/// (RFC 7766 §6.2.3: servers should close idle connections, within seconds).
pub(crate) const DNS_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one response may take to write to a TCP connection (a client that does not read
/// would otherwise hold its lookups' slots forever).
pub(crate) const DNS_TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers from exits, kept for their TTL (at most [`MAX_DNS_CACHE_TTL`]) and at most
/// [`MAX_DNS_CACHE_ENTRIES`] of them. Keyed by what was asked (name and type, or address):
/// plain state taking `now`, so its rules are tested with synthetic instants.
#[derive(Debug, Default)]
pub(crate) struct DnsCache {
    entries: HashMap<DnsAsk, CachedAnswer>,
}

#[derive(Debug)]
struct CachedAnswer {
    answers: Vec<ResolvedAnswer>,
    expires: Instant,
}

impl DnsCache {
    /// The answers to `ask` if they have not expired, each TTL the seconds left (rounded up),
    /// so that an application's own cache never keeps them longer than the exit said.
    pub(crate) fn get(&self, ask: &DnsAsk, now: Instant) -> Option<Vec<ResolvedAnswer>> {
        let entry = self.entries.get(ask)?;
        let left = entry.expires.checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        let secs =
            u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0)).unwrap_or(u32::MAX);
        Some(
            entry
                .answers
                .iter()
                .map(|answer| match answer {
                    ResolvedAnswer::Name(name, _) => ResolvedAnswer::Name(name.clone(), secs),
                    ResolvedAnswer::V4(ip, _) => ResolvedAnswer::V4(*ip, secs),
                    ResolvedAnswer::V6(ip, _) => ResolvedAnswer::V6(*ip, secs),
                    other => other.clone(),
                })
                .collect(),
        )
    }

    /// Keeps `answers` for the smallest of their TTLs (at most [`MAX_DNS_CACHE_TTL`]);
    /// answers with a TTL of 0, and error answers, are not kept.
    pub(crate) fn insert(&mut self, ask: DnsAsk, answers: Vec<ResolvedAnswer>, now: Instant) {
        let ttl = answers
            .iter()
            .map(|answer| match answer {
                ResolvedAnswer::Name(_, ttl)
                | ResolvedAnswer::V4(_, ttl)
                | ResolvedAnswer::V6(_, ttl) => *ttl,
                ResolvedAnswer::TransientError(_) | ResolvedAnswer::PermanentError(_) => 0,
            })
            .min()
            .unwrap_or(0);
        if ttl == 0 {
            return;
        }
        let keep = Duration::from_secs(u64::from(ttl)).min(MAX_DNS_CACHE_TTL);
        if self.entries.len() >= MAX_DNS_CACHE_ENTRIES && !self.entries.contains_key(&ask) {
            self.entries.retain(|_, entry| entry.expires > now);
            if self.entries.len() >= MAX_DNS_CACHE_ENTRIES {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| key.clone());
                if let Some(key) = soonest {
                    self.entries.remove(&key);
                }
            }
        }
        self.entries.insert(
            ask,
            CachedAnswer {
                answers,
                expires: now + keep,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The DNS port's state shared by its UDP socket and its TCP connections.
pub(crate) struct DnsFront<C> {
    connector: Arc<C>,
    cache: Mutex<DnsCache>,
    lookups: Arc<Semaphore>,
}

/// What to do with a query after the cache and the lookup bound were consulted.
enum Planned {
    /// Send this now (or nothing, for `None`).
    Now(Option<Vec<u8>>),
    /// Ask an exit, holding one of the [`MAX_DNS_LOOKUPS_IN_FLIGHT`] slots.
    Lookup(DnsQuery, OwnedSemaphorePermit),
}

impl<C: Connector> DnsFront<C> {
    pub(crate) fn new(connector: Arc<C>) -> Arc<Self> {
        Arc::new(Self {
            connector,
            cache: Mutex::new(DnsCache::default()),
            lookups: Arc::new(Semaphore::new(MAX_DNS_LOOKUPS_IN_FLIGHT)),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, DnsCache> {
        // The cache holds no invariant a panic elsewhere could break halfway.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers what needs no exit (errors, cache hits, the lookup bound) at once.
    fn plan(&self, bytes: &[u8], limit: usize) -> Planned {
        let query = match read_query(bytes) {
            DnsAction::Drop => return Planned::Now(None),
            DnsAction::Reply(reply) => return Planned::Now(Some(reply)),
            DnsAction::Resolve(query) => query,
        };
        if let Some(answers) = self.cache().get(query.ask(), Instant::now()) {
            return Planned::Now(query.respond(&DnsOutcome::Resolved(answers), limit));
        }
        match Arc::clone(&self.lookups).try_acquire_owned() {
            Ok(permit) => Planned::Lookup(query, permit),
            Err(_) => {
                debug!("dns port: too many lookups in flight: SERVFAIL");
                Planned::Now(query.respond(&DnsOutcome::Unavailable, limit))
            }
        }
    }

    /// Asks an exit (a RESOLVE in the DNS port's isolation group) and builds the response.
    async fn lookup(&self, query: DnsQuery, limit: usize) -> Option<Vec<u8>> {
        let ask = query.ask();
        let outcome = match self.connector.resolve(&Isolation::Dns, &ask.host()).await {
            Ok(answers) => {
                self.cache()
                    .insert(ask.clone(), answers.clone(), Instant::now());
                DnsOutcome::Resolved(answers)
            }
            // RFC 7686 §2: a .onion name (and so ours) gets NXDOMAIN, never a lookup.
            Err(
                StreamFailure::ResolveFailed
                | StreamFailure::End(EndReason::ResolveFailed)
                | StreamFailure::TorOnionName
                | StreamFailure::OnionAddressInvalid(_)
                | StreamFailure::OnionServiceUnreachable,
            ) => DnsOutcome::NoSuchName,
            Err(failure) => {
                debug!(name = ?Sensitive(ask), %failure, "dns port: no exit answered");
                DnsOutcome::Unavailable
            }
        };
        query.respond(&outcome, limit)
    }

    /// The whole answer to one message: what [`Self::plan`] decides, then the lookup.
    #[cfg(test)]
    pub(crate) async fn answer(&self, bytes: &[u8], limit: usize) -> Option<Vec<u8>> {
        match self.plan(bytes, limit) {
            Planned::Now(reply) => reply,
            Planned::Lookup(query, _permit) => self.lookup(query, limit).await,
        }
    }
}

/// Binds the DNS port: UDP, then TCP on the same port (the one UDP got if 0 was asked), as
/// resolvers expect both on one port (RFC 7766 §5).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let udp = std::net::UdpSocket::bind(addr)?;
    udp.set_nonblocking(true)?;
    let udp = UdpSocket::from_std(udp)?;
    let tcp = crate::client::bind_front(udp.local_addr()?)?;
    Ok((udp, tcp))
}

/// Serves the UDP socket until the task is dropped. Errors, cache hits and refusals are
/// answered in this loop; each lookup runs in its own task (at most
/// [`MAX_DNS_LOOKUPS_IN_FLIGHT`] of them).
pub(crate) async fn serve_udp<C: Connector>(socket: UdpSocket, front: Arc<DnsFront<C>>) {
    let socket = Arc::new(socket);
    // One byte more than a query may have, to tell a longer datagram from one that fits.
    let mut buf = [0u8; MAX_DNS_QUERY + 1];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                // ICMP errors of earlier sends surface here on some systems: keep serving.
                debug!(%err, "dns port: udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if len > MAX_DNS_QUERY {
            debug!(len, "dns port: datagram longer than a query: dropped");
            continue;
        }
        match front.plan(&buf[..len], MAX_UDP_RESPONSE) {
            Planned::Now(reply) => send_udp(&socket, reply, peer).await,
            Planned::Lookup(query, permit) => {
                let (socket, front) = (Arc::clone(&socket), Arc::clone(&front));
                tokio::spawn(async move {
                    let _permit = permit;
                    let reply = front.lookup(query, MAX_UDP_RESPONSE).await;
                    send_udp(&socket, reply, peer).await;
                });
            }
        }
    }
}

async fn send_udp(socket: &UdpSocket, reply: Option<Vec<u8>>, peer: SocketAddr) {
    if let Some(reply) = reply
        && let Err(err) = socket.send_to(&reply, peer).await
    {
        debug!(%err, "dns port: udp send failed");
    }
}

/// Accepts TCP connections until the task is dropped, at most [`MAX_DNS_TCP_CONNECTIONS`] at
/// once (the rest wait in the listen backlog).
pub(crate) async fn serve_tcp<C: Connector>(listener: TcpListener, front: Arc<DnsFront<C>>) {
    accept_bounded(listener, MAX_DNS_TCP_CONNECTIONS, "dns port", move |conn| {
        let front = Arc::clone(&front);
        async move { serve_tcp_conn(conn, &front).await }
    })
    .await;
}

/// Serves one TCP connection (RFC 1035 §4.2.2 framing, RFC 7766 pipelining): frames are read
/// while fewer than [`MAX_DNS_TCP_QUERIES_PER_CONNECTION`] queries wait, answers are written in
/// the order they come. A frame longer than [`MAX_DNS_QUERY`], a message hickory cannot even
/// read a header of, [`DNS_TCP_IDLE_TIMEOUT`] without a query, or a write that takes longer
/// than [`DNS_TCP_WRITE_TIMEOUT`] closes it; after the client's end of stream the queries
/// already read are still answered.
pub(crate) async fn serve_tcp_conn<C, S>(conn: S, front: &DnsFront<C>)
where
    C: Connector,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(conn);
    let mut buf = [0u8; 2 + MAX_DNS_QUERY];
    let mut filled = 0;
    let mut read_closed = false;
    let mut waiting = FuturesUnordered::new();
    let idle = tokio::time::sleep(DNS_TCP_IDLE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        // Every whole frame in the buffer first, as long as there is room to answer it.
        while waiting.len() < MAX_DNS_TCP_QUERIES_PER_CONNECTION {
            let (consumed, planned) = match split_tcp_frame(&buf[..filled]) {
                Ok(Some((consumed, message))) => (consumed, front.plan(message, MAX_TCP_RESPONSE)),
                Ok(None) => break,
                Err(oversized) => {
                    debug!(%oversized, "dns port: closing the connection");
                    return;
                }
            };
            buf.copy_within(consumed..filled, 0);
            filled -= consumed;
            match planned {
                Planned::Now(Some(reply)) => {
                    if !write_frame(&mut writer, &reply).await {
                        return;
                    }
                }
                // A message without a readable header: the stream cannot be trusted further.
                Planned::Now(None) => return,
                Planned::Lookup(query, permit) => waiting.push(async move {
                    let _permit = permit;
                    front.lookup(query, MAX_TCP_RESPONSE).await
                }),
            }
        }
        if read_closed && waiting.is_empty() {
            return;
        }
        let can_read = !read_closed && waiting.len() < MAX_DNS_TCP_QUERIES_PER_CONNECTION;
        tokio::select! {
            // `read` is cancel-safe: a select that finishes another way loses no bytes.
            got = reader.read(&mut buf[filled..]), if can_read => match got {
                Ok(0) => {
                    if filled > 0 {
                        debug!(filled, "dns port: connection closed inside a frame");
                    }
                    read_closed = true;
                }
                Ok(n) => {
                    filled += n;
                    idle.as_mut().reset(tokio::time::Instant::now() + DNS_TCP_IDLE_TIMEOUT);
                }
                Err(_) => return,
            },
            Some(reply) = waiting.next(), if !waiting.is_empty() => {
                if let Some(reply) = reply
                    && !write_frame(&mut writer, &reply).await
                {
                    return;
                }
                idle.as_mut().reset(tokio::time::Instant::now() + DNS_TCP_IDLE_TIMEOUT);
            }
            () = &mut idle, if waiting.is_empty() => {
                debug!("dns port: idle connection closed");
                return;
            }
        }
    }
}

/// Writes one framed response; false if the connection is unusable.
async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, message: &[u8]) -> bool {
    let Some(frame) = tcp_frame(message) else {
        return false;
    };
    let write = async {
        writer.write_all(&frame).await?;
        writer.flush().await
    };
    matches!(
        tokio::time::timeout(DNS_TCP_WRITE_TIMEOUT, write).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, PTR};
    use hickory_proto::rr::{Name, RData, RecordType};
    use shallot_cell::Host;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::stream::StreamHandle;

    /// A resolver without a network: `example.test` has an IPv4 and an IPv6 address,
    /// 127.0.0.1 has a name, `slow.test` waits until released, anything else fails as
    /// `failure` says. Counts the lookups and records their isolation.
    struct FakeResolver {
        lookups: AtomicUsize,
        isolation: Mutex<Vec<Isolation>>,
        failure: StreamFailure,
        release: tokio::sync::Notify,
    }

    impl FakeResolver {
        fn new(failure: StreamFailure) -> Arc<Self> {
            Arc::new(Self {
                lookups: AtomicUsize::new(0),
                isolation: Mutex::new(Vec::new()),
                failure,
                release: tokio::sync::Notify::new(),
            })
        }
    }

    #[allow(clippy::manual_async_fn)]
    impl Connector for FakeResolver {
        fn connect<'a, S>(
            &'a self,
            _iso: &'a Isolation,
            _host: &'a Host,
            _port: u16,
            _io: &'a mut S,
            _early: &'a mut Vec<u8>,
        ) -> impl Future<Output = Result<(StreamHandle, Host), StreamFailure>> + Send + 'a
        where
            S: AsyncRead + Unpin + Send,
        {
            async { Err(StreamFailure::NoPath) }
        }

        fn resolve<'a>(
            &'a self,
            iso: &'a Isolation,
            host: &'a Host,
        ) -> impl Future<Output = Result<Vec<ResolvedAnswer>, StreamFailure>> + Send + 'a {
            async move {
                self.lookups.fetch_add(1, Ordering::SeqCst);
                self.isolation.lock().expect("lock").push(iso.clone());
                match host {
                    Host::Name(n) if n == "example.test" => Ok(vec![
                        ResolvedAnswer::V4(Ipv4Addr::new(192, 0, 2, 7), 300),
                        ResolvedAnswer::V6(Ipv6Addr::LOCALHOST, 300),
                    ]),
                    Host::Name(n) if n == "slow.test" => {
                        self.release.notified().await;
                        // TTL 0: never cached, every query of it is a lookup.
                        Ok(vec![ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, 0)])
                    }
                    Host::V4(ip) if *ip == Ipv4Addr::LOCALHOST => {
                        Ok(vec![ResolvedAnswer::Name("localhost".into(), 3600)])
                    }
                    _ => Err(self.failure.clone()),
                }
            }
        }
    }

    fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries
            .push(Query::query(Name::from_ascii(name).expect("name"), rtype));
        m.to_vec().expect("encode")
    }

    fn parse(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).expect("response parses")
    }

    async fn ask(front: &DnsFront<FakeResolver>, name: &str, rtype: RecordType) -> Message {
        let reply = front
            .answer(&query(9, name, rtype), MAX_UDP_RESPONSE)
            .await
            .expect("an answer");
        parse(&reply)
    }

    #[tokio::test]
    async fn queries_map_to_resolves_in_the_dns_isolation_group() {
        let fake = FakeResolver::new(StreamFailure::ResolveFailed);
        let front = DnsFront::new(Arc::clone(&fake));
        let a = ask(&front, "Example.Test.", RecordType::A).await;
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.metadata.id, 9);
        let data: Vec<_> = a.answers.iter().map(|r| (r.data.clone(), r.ttl)).collect();
        assert_eq!(data, vec![(RData::A(A::new(192, 0, 2, 7)), 300)]);
        let aaaa = ask(&front, "example.test", RecordType::AAAA).await;
        assert_eq!(aaaa.answers[0].data, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
        let ptr = ask(&front, "1.0.0.127.in-addr.arpa", RecordType::PTR).await;
        assert_eq!(
            ptr.answers[0].data,
            RData::PTR(PTR(Name::from_ascii("localhost.").expect("name")))
        );
        assert_eq!(ptr.answers[0].ttl, 3600);
        assert_eq!(
            *fake.isolation.lock().expect("lock"),
            vec![Isolation::Dns; 3],
            "DNS lookups never share the circuits of SOCKS users"
        );
    }

    #[tokio::test]
    async fn unknown_names_are_nxdomain_and_unreachable_exits_servfail() {
        let front = DnsFront::new(FakeResolver::new(StreamFailure::ResolveFailed));
        let m = ask(&front, "missing.test", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        for failure in [
            StreamFailure::NoPath,
            StreamFailure::Timeout,
            StreamFailure::CircuitFailed,
        ] {
            let front = DnsFront::new(FakeResolver::new(failure.clone()));
            let m = ask(&front, "missing.test", RecordType::A).await;
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::ServFail,
                "{failure}"
            );
        }
    }

    #[tokio::test]
    async fn notimp_and_formerr_ask_no_exit() {
        let fake = FakeResolver::new(StreamFailure::ResolveFailed);
        let front = DnsFront::new(Arc::clone(&fake));
        let mx = ask(&front, "example.test", RecordType::MX).await;
        assert_eq!(mx.metadata.response_code, ResponseCode::NotImp);
        let mut two = query(3, "example.test", RecordType::A);
        two[5] = 2;
        let formerr = parse(&front.answer(&two, MAX_UDP_RESPONSE).await.expect("reply"));
        assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(formerr.metadata.id, 3);
        assert_eq!(front.answer(&[1, 2, 3], MAX_UDP_RESPONSE).await, None);
        assert_eq!(fake.lookups.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn answers_are_cached_and_counted_down() {
        let fake = FakeResolver::new(StreamFailure::ResolveFailed);
        let front = DnsFront::new(Arc::clone(&fake));
        ask(&front, "example.test", RecordType::A).await;
        let again = ask(&front, "EXAMPLE.test", RecordType::A).await;
        assert_eq!(
            fake.lookups.load(Ordering::SeqCst),
            1,
            "the second came from the cache"
        );
        assert!((299..=300).contains(&again.answers[0].ttl));
        // Another type is another entry; failures are never kept.
        ask(&front, "example.test", RecordType::AAAA).await;
        ask(&front, "missing.test", RecordType::A).await;
        ask(&front, "missing.test", RecordType::A).await;
        assert_eq!(fake.lookups.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn the_cache_expires_answers_and_keeps_to_its_bound() {
        let t0 = Instant::now();
        let mut cache = DnsCache::default();
        let key = |i: usize| DnsAsk::V4(format!("n{i}.test"));
        let answer = |ttl| vec![ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, ttl)];
        cache.insert(key(0), answer(300), t0);
        assert!(cache.get(&key(0), t0 + Duration::from_secs(299)).is_some());
        assert!(cache.get(&key(0), t0 + Duration::from_secs(300)).is_none());
        // A hostile TTL is kept no longer than the bound; a TTL of 0 is not kept.
        cache.insert(key(1), answer(u32::MAX), t0);
        assert!(cache.get(&key(1), t0 + MAX_DNS_CACHE_TTL).is_none());
        cache.insert(key(2), answer(0), t0);
        assert!(cache.get(&key(2), t0).is_none());

        let mut cache = DnsCache::default();
        for i in 0..MAX_DNS_CACHE_ENTRIES {
            let ttl = 100 + u32::try_from(i).expect("small");
            cache.insert(key(i), answer(ttl), t0);
        }
        assert_eq!(cache.len(), MAX_DNS_CACHE_ENTRIES);
        cache.insert(key(MAX_DNS_CACHE_ENTRIES), answer(3600), t0);
        assert_eq!(cache.len(), MAX_DNS_CACHE_ENTRIES);
        assert!(
            cache.get(&key(0), t0).is_none(),
            "the soonest to expire went"
        );
        assert!(cache.get(&key(1), t0).is_some());
        assert!(cache.get(&key(MAX_DNS_CACHE_ENTRIES), t0).is_some());
        // Expired answers go before live ones.
        let later = t0 + Duration::from_secs(150);
        cache.insert(key(MAX_DNS_CACHE_ENTRIES + 1), answer(3600), later);
        assert_eq!(cache.len(), MAX_DNS_CACHE_ENTRIES - 49);
    }

    #[tokio::test]
    async fn lookups_past_the_bound_are_servfail_at_once() {
        let fake = FakeResolver::new(StreamFailure::ResolveFailed);
        let front = DnsFront::new(Arc::clone(&fake));
        let mut held = Vec::new();
        for _ in 0..MAX_DNS_LOOKUPS_IN_FLIGHT {
            match front.plan(&query(1, "slow.test", RecordType::A), MAX_UDP_RESPONSE) {
                Planned::Lookup(_, permit) => held.push(permit),
                Planned::Now(_) => panic!("refused below the bound"),
            }
        }
        let Planned::Now(Some(reply)) =
            front.plan(&query(2, "slow.test", RecordType::A), MAX_UDP_RESPONSE)
        else {
            panic!("a lookup past the bound");
        };
        assert_eq!(parse(&reply).metadata.response_code, ResponseCode::ServFail);
        drop(held);
        assert!(matches!(
            front.plan(&query(3, "slow.test", RecordType::A), MAX_UDP_RESPONSE),
            Planned::Lookup(..)
        ));
    }

    async fn udp_front(fake: Arc<FakeResolver>) -> (UdpSocket, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let task = tokio::spawn(serve_udp(socket, DnsFront::new(fake)));
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client.connect(addr).await.expect("connect");
        (client, task)
    }

    #[tokio::test]
    async fn udp_answers_and_drops_what_is_no_query() {
        let (client, task) = udp_front(FakeResolver::new(StreamFailure::ResolveFailed)).await;
        let mut buf = [0u8; 1024];
        // Garbage and an oversized datagram get no answer; the next query does.
        client.send(&[0u8; 5]).await.expect("send");
        client.send(&[0u8; MAX_DNS_QUERY + 1]).await.expect("send");
        client
            .send(&query(77, "example.test", RecordType::A))
            .await
            .expect("send");
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("answered")
            .expect("recv");
        let m = parse(&buf[..n]);
        assert_eq!(m.metadata.id, 77);
        assert_eq!(m.answers.len(), 1);
        task.abort();
    }

    async fn tcp_front(fake: Arc<FakeResolver>) -> (TcpStream, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(serve_tcp(listener, DnsFront::new(fake)));
        (TcpStream::connect(addr).await.expect("connect"), task)
    }

    async fn read_frame(conn: &mut TcpStream) -> Option<Message> {
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut body).await.ok()?;
        Some(parse(&body))
    }

    async fn closed(conn: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn tcp_pipelined_queries_split_across_writes_are_all_answered() {
        let (mut conn, task) = tcp_front(FakeResolver::new(StreamFailure::ResolveFailed)).await;
        let mut bytes = Vec::new();
        for (id, rtype) in [
            (1, RecordType::A),
            (2, RecordType::MX),
            (3, RecordType::AAAA),
        ] {
            bytes.extend(tcp_frame(&query(id, "example.test", rtype)).expect("frame"));
        }
        // One byte at a time for the first frame, the rest at once.
        for b in &bytes[..5] {
            conn.write_all(&[*b]).await.expect("write");
            tokio::task::yield_now().await;
        }
        conn.write_all(&bytes[5..]).await.expect("write");
        conn.shutdown().await.expect("half-close");
        let mut ids = Vec::new();
        while let Some(m) = read_frame(&mut conn).await {
            ids.push((m.metadata.id, m.metadata.response_code));
        }
        ids.sort_by_key(|(id, _)| *id);
        assert_eq!(
            ids,
            vec![
                (1, ResponseCode::NoError),
                (2, ResponseCode::NotImp),
                (3, ResponseCode::NoError)
            ],
            "after the client's end of stream the queries read are still answered"
        );
        task.abort();
    }

    #[tokio::test]
    async fn tcp_oversized_frame_closes_the_connection() {
        let (mut conn, task) = tcp_front(FakeResolver::new(StreamFailure::ResolveFailed)).await;
        let len = u16::try_from(MAX_DNS_QUERY + 1).expect("fits");
        conn.write_all(&len.to_be_bytes()).await.expect("write");
        conn.write_all(&[0u8; 64]).await.expect("write");
        assert!(closed(&mut conn).await);
        task.abort();
    }

    #[tokio::test]
    async fn tcp_truncated_frame_gets_no_answer_and_is_closed() {
        let (mut conn, task) = tcp_front(FakeResolver::new(StreamFailure::ResolveFailed)).await;
        let frame = tcp_frame(&query(5, "example.test", RecordType::A)).expect("frame");
        conn.write_all(&frame[..frame.len() - 4])
            .await
            .expect("write");
        conn.shutdown().await.expect("half-close");
        assert!(closed(&mut conn).await, "answered a truncated frame");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn tcp_idle_connections_are_closed() {
        let fake = FakeResolver::new(StreamFailure::ResolveFailed);
        let front = DnsFront::new(fake);
        let (mut app, served) = tokio::io::duplex(1024);
        let conn = tokio::spawn(async move { serve_tcp_conn(served, &front).await });
        tokio::time::sleep(DNS_TCP_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(conn.is_finished(), "an idle connection stayed open");
        let mut rest = Vec::new();
        assert_eq!(app.read_to_end(&mut rest).await.expect("eof"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn tcp_stops_reading_while_its_queries_in_flight_are_at_the_bound() {
        let fake = FakeResolver::new(StreamFailure::ResolveFailed);
        let front = DnsFront::new(Arc::clone(&fake));
        let (mut app, served) = tokio::io::duplex(64 * 1024);
        let conn = tokio::spawn(async move { serve_tcp_conn(served, &front).await });
        for id in 0..=MAX_DNS_TCP_QUERIES_PER_CONNECTION {
            let id = u16::try_from(id).expect("small");
            let frame = tcp_frame(&query(id, "slow.test", RecordType::A)).expect("frame");
            app.write_all(&frame).await.expect("write");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            fake.lookups.load(Ordering::SeqCst),
            MAX_DNS_TCP_QUERIES_PER_CONNECTION,
            "one query more than the bound was taken"
        );
        // Waiting lookups keep the connection open past the idle timeout.
        tokio::time::sleep(DNS_TCP_IDLE_TIMEOUT * 2).await;
        assert!(!conn.is_finished());
        fake.release.notify_waiters();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            fake.lookups.load(Ordering::SeqCst),
            MAX_DNS_TCP_QUERIES_PER_CONNECTION + 1
        );
        fake.release.notify_waiters();
        let mut answered = 0;
        let mut len = [0u8; 2];
        while answered <= MAX_DNS_TCP_QUERIES_PER_CONNECTION {
            app.read_exact(&mut len).await.expect("len");
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            app.read_exact(&mut body).await.expect("body");
            answered += 1;
        }
        conn.abort();
    }
}
