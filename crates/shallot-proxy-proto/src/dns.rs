//! The client's DNS port (specs/07 §8): one DNS query in, what to do with it out, and the
//! response once the exit has answered. The wire format is `hickory-proto`'s both ways; this
//! module only decides.
//!
//! Sans-IO like the handshakes: no socket, no clock, no cache. The client's IO shell reads a
//! datagram or a TCP frame ([`split_tcp_frame`]), calls [`read_query`], asks an exit for a
//! [`DnsQuery::ask`], and sends [`DnsQuery::respond`]'s bytes.

use std::net::IpAddr;

use hickory_proto::op::{Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use shallot_cell::{ResolvedAnswer, check_hostname};

/// Largest query read, in bytes (a UDP datagram or a TCP frame). One question is at most
/// 12 + 255 + 4 bytes; the rest is room for an EDNS OPT record with a cookie or the padding
/// of RFC 8467. A longer TCP frame closes the connection; a longer datagram is dropped.
pub const MAX_DNS_QUERY: usize = 512;
/// Largest UDP response, in bytes: RFC 1035 §4.2.1's limit. The front does not speak EDNS
/// (it answers without an OPT record, which tells the client so, RFC 6891 §7), so a larger
/// answer is cut to whole records and sent with TC set; the client asks again over TCP.
pub const MAX_UDP_RESPONSE: usize = 512;
/// Largest TCP response: what the 2-byte length prefix can say (RFC 1035 §4.2.2).
pub const MAX_TCP_RESPONSE: usize = u16::MAX as usize;
/// Largest TTL told to an application, in seconds: the exits' own largest clipped TTL
/// (specs/03 §4.10), so a hostile exit cannot make applications keep an answer for days.
pub const MAX_ANSWER_TTL: u32 = 3600;
/// Most records a query may declare besides its question. A query has no answer or authority
/// records and at most an OPT and a TSIG in its additional section; the header's counts are
/// checked against this before hickory reads the body, so that a 12-byte header declaring
/// 65,535 questions or records is answered FORMERR without allocating for them.
const MAX_QUERY_EXTRA_RECORDS: u16 = 4;

/// What an application asked, in the terms of a RESOLVE (specs/03 §4.9): the key of the
/// client's answer cache as well.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsAsk {
    /// An `A` question: IPv4 addresses of a name (lowercase, without the final dot; valid per
    /// `check_hostname`).
    V4(String),
    /// An `AAAA` question: IPv6 addresses of a name.
    V6(String),
    /// A `PTR` question for a whole `in-addr.arpa` or `ip6.arpa` name: the names of an
    /// address (Tor's RESOLVE_PTR).
    Reverse(IpAddr),
}

impl DnsAsk {
    /// The name or address to send in the RESOLVE.
    #[must_use]
    pub fn host(&self) -> shallot_cell::Host {
        use shallot_cell::Host;
        match self {
            Self::V4(name) | Self::V6(name) => Host::Name(name.clone()),
            Self::Reverse(IpAddr::V4(ip)) => Host::V4(*ip),
            Self::Reverse(IpAddr::V6(ip)) => Host::V6(*ip),
        }
    }
}

/// What the exits said about a [`DnsAsk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsOutcome {
    /// The exit's answers (addresses or names, each with its TTL); those of another type than
    /// the question's are left out, and none left is an empty NOERROR answer (NODATA).
    Resolved(Vec<ResolvedAnswer>),
    /// The exit could not resolve it: NXDOMAIN, as Tor's DNSPort answers an exit's RESOLVED
    /// error (`dnsserv_resolved`: `RESOLVED_TYPE_ERROR` → `DNS_ERR_NOTEXIST`).
    NoSuchName,
    /// No exit answered (no path, no circuit, timeouts): SERVFAIL, as Tor's DNSPort answers a
    /// request it could not send (`dnsserv_reject_request`) or a transient exit error.
    Unavailable,
}

/// What to do with bytes that arrived on the DNS port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAction {
    /// Say nothing: too short for a header, or a response (answering those could loop).
    Drop,
    /// Send this response at once (FORMERR, NOTIMP or REFUSED); nothing is asked of an exit.
    Reply(Vec<u8>),
    /// Ask an exit, then answer with [`DnsQuery::respond`].
    Resolve(DnsQuery),
}

/// A query the front can answer through an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    metadata: Metadata,
    question: Query,
    ask: DnsAsk,
}

/// Decides what a query asks for (specs/07 §8.2):
///
/// - fewer than 12 bytes (no header), or QR set: [`DnsAction::Drop`];
/// - an opcode other than QUERY: NOTIMP;
/// - not exactly one question (RFC 9619: QDCOUNT is one; answering the first of several
///   would send a question section that differs from the query's), records in the answer or
///   authority section, more than a handful of additional records, or a body hickory cannot
///   read: FORMERR;
/// - a class other than IN, or a type other than A, AAAA and PTR: NOTIMP;
/// - a name a RESOLVE cannot carry (specs/03 §5.1), or a PTR question for anything but a
///   whole reverse-address name: REFUSED (the network cannot ask it; it says nothing about
///   whether the name exists);
/// - otherwise [`DnsAction::Resolve`].
#[must_use]
pub fn read_query(bytes: &[u8]) -> DnsAction {
    let Ok(Header { metadata, counts }) = Header::read(&mut BinDecoder::new(bytes)) else {
        return DnsAction::Drop;
    };
    if metadata.message_type == MessageType::Response {
        return DnsAction::Drop;
    }
    let refuse =
        |code| error_response(&metadata, None, code).map_or(DnsAction::Drop, DnsAction::Reply);
    if metadata.op_code != OpCode::Query {
        return refuse(ResponseCode::NotImp);
    }
    if counts.queries != 1
        || counts.answers != 0
        || counts.authorities != 0
        || counts.additionals > MAX_QUERY_EXTRA_RECORDS
    {
        return refuse(ResponseCode::FormErr);
    }
    let Ok(message) = Message::from_vec(bytes) else {
        return refuse(ResponseCode::FormErr);
    };
    let Some(question) = message.queries.into_iter().next() else {
        return refuse(ResponseCode::FormErr);
    };
    let answer_now = |code| {
        error_response(&metadata, Some(&question), code).map_or(DnsAction::Drop, DnsAction::Reply)
    };
    if question.query_class() != DNSClass::IN {
        return answer_now(ResponseCode::NotImp);
    }
    let ask = match question.query_type() {
        RecordType::A => hostname(question.name()).map(DnsAsk::V4),
        RecordType::AAAA => hostname(question.name()).map(DnsAsk::V6),
        RecordType::PTR => reverse_address(question.name()).map(DnsAsk::Reverse),
        _ => return answer_now(ResponseCode::NotImp),
    };
    match ask {
        Some(ask) => DnsAction::Resolve(DnsQuery {
            metadata,
            question,
            ask,
        }),
        None => answer_now(ResponseCode::Refused),
    }
}

impl DnsQuery {
    /// What to ask an exit.
    #[must_use]
    pub fn ask(&self) -> &DnsAsk {
        &self.ask
    }

    /// The response to send, at most `limit` bytes ([`MAX_UDP_RESPONSE`] or
    /// [`MAX_TCP_RESPONSE`]): answers that do not fit are left out, whole, and TC is set.
    /// TTLs are the exit's, at most [`MAX_ANSWER_TTL`]. `None` only if not even the bare
    /// header and question fit or encode; the caller then says nothing.
    #[must_use]
    pub fn respond(&self, outcome: &DnsOutcome, limit: usize) -> Option<Vec<u8>> {
        let (code, answers) = match outcome {
            DnsOutcome::Resolved(answers) => (ResponseCode::NoError, self.records(answers)),
            DnsOutcome::NoSuchName => (ResponseCode::NXDomain, Vec::new()),
            DnsOutcome::Unavailable => (ResponseCode::ServFail, Vec::new()),
        };
        let mut message = response(&self.metadata, Some(&self.question), code);
        message.answers = answers;
        loop {
            let bytes = message.to_vec().ok()?;
            if bytes.len() <= limit {
                return Some(bytes);
            }
            message.answers.pop()?;
            message.metadata.truncation = true;
        }
    }

    /// The answer records of the question's type, in the exit's order.
    fn records(&self, answers: &[ResolvedAnswer]) -> Vec<Record> {
        let name = self.question.name();
        answers
            .iter()
            .filter_map(|answer| {
                let (data, ttl) = match (answer, &self.ask) {
                    (ResolvedAnswer::V4(ip, ttl), DnsAsk::V4(_)) => (RData::A(A(*ip)), *ttl),
                    (ResolvedAnswer::V6(ip, ttl), DnsAsk::V6(_)) => (RData::AAAA(AAAA(*ip)), *ttl),
                    (ResolvedAnswer::Name(host, ttl), DnsAsk::Reverse(_)) => {
                        // An exit's name that is no DNS name is left out, not sent mangled.
                        let mut target = Name::from_ascii(host).ok()?;
                        target.set_fqdn(true);
                        (RData::PTR(PTR(target)), *ttl)
                    }
                    _ => return None,
                };
                Some(Record::from_rdata(
                    name.clone(),
                    ttl.min(MAX_ANSWER_TTL),
                    data,
                ))
            })
            .collect()
    }
}

/// The response header for `request`: its id, opcode, RD and CD; RA set (the front resolves
/// recursively, through the exits).
fn response(request: &Metadata, question: Option<&Query>, code: ResponseCode) -> Message {
    let mut message = Message::new(request.id, MessageType::Response, request.op_code);
    message.metadata = Metadata::response_from_request(request);
    message.metadata.recursion_available = true;
    message.metadata.response_code = code;
    message.queries.extend(question.cloned());
    message
}

fn error_response(
    request: &Metadata,
    question: Option<&Query>,
    code: ResponseCode,
) -> Option<Vec<u8>> {
    response(request, question, code).to_vec().ok()
}

/// The name of an A or AAAA question as a RESOLVE carries it: lowercase, without the final
/// dot; `None` if specs/03 §5.1 refuses it (the root, or longer than 255 bytes as text).
fn hostname(name: &Name) -> Option<String> {
    let text = name.to_lowercase().to_ascii();
    let text = text.strip_suffix('.').unwrap_or(&text).to_owned();
    check_hostname(text.as_bytes()).ok().map(|()| text)
}

/// The address a whole `in-addr.arpa` (4 labels) or `ip6.arpa` (32 nibbles) name stands for.
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let mut fqdn = name.clone();
    fqdn.set_fqdn(true);
    let net = fqdn.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// A TCP frame length above [`MAX_DNS_QUERY`]: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("dns frame of {0} bytes, more than a query can be")]
pub struct OversizedFrame(pub usize);

/// Splits the first DNS-over-TCP message off `buf` (RFC 1035 §4.2.2: a 2-byte big-endian
/// length, then the message): `Ok(Some((consumed, message)))`, `Ok(None)` if more bytes are
/// needed (never more than `2 + MAX_DNS_QUERY` in all), or [`OversizedFrame`].
pub fn split_tcp_frame(buf: &[u8]) -> Result<Option<(usize, &[u8])>, OversizedFrame> {
    let Some((len, rest)) = buf.split_first_chunk::<2>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes(*len));
    if len > MAX_DNS_QUERY {
        return Err(OversizedFrame(len));
    }
    Ok(rest.get(..len).map(|message| (2 + len, message)))
}

/// Frames a response for TCP: the 2-byte length, then `message` (at most
/// [`MAX_TCP_RESPONSE`] bytes, as [`DnsQuery::respond`] promises; a longer one gives `None`).
#[must_use]
pub fn tcp_frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    Some([&len.to_be_bytes()[..], message].concat())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries
            .push(Query::query(Name::from_ascii(name).expect("name"), rtype));
        m.to_vec().expect("encode")
    }

    fn parse(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).expect("a response hickory reads")
    }

    fn resolve(bytes: &[u8]) -> DnsQuery {
        match read_query(bytes) {
            DnsAction::Resolve(q) => q,
            other => panic!("expected a lookup, got {other:?}"),
        }
    }

    fn reply_code(bytes: &[u8]) -> (ResponseCode, Message) {
        match read_query(bytes) {
            DnsAction::Reply(r) => {
                let m = parse(&r);
                (m.metadata.response_code, m)
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_aaaa_and_ptr_become_resolves() {
        assert_eq!(
            resolve(&query("WWW.Example.COM.", RecordType::A)).ask(),
            &DnsAsk::V4("www.example.com".into())
        );
        assert_eq!(
            resolve(&query("example.com", RecordType::AAAA)).ask(),
            &DnsAsk::V6("example.com".into())
        );
        let q = resolve(&query("4.3.2.1.in-addr.arpa.", RecordType::PTR));
        assert_eq!(q.ask(), &DnsAsk::Reverse(Ipv4Addr::new(1, 2, 3, 4).into()));
        assert_eq!(q.ask().host(), shallot_cell::Host::V4([1, 2, 3, 4].into()));
        let v6 = Name::from(IpAddr::V6(Ipv6Addr::LOCALHOST)).to_ascii();
        assert_eq!(
            resolve(&query(&v6, RecordType::PTR)).ask(),
            &DnsAsk::Reverse(Ipv6Addr::LOCALHOST.into())
        );
    }

    #[test]
    fn answers_keep_the_question_the_id_and_the_exit_ttls() {
        let q = resolve(&query("Example.com", RecordType::A));
        let outcome = DnsOutcome::Resolved(vec![
            ResolvedAnswer::V4(Ipv4Addr::new(192, 0, 2, 1), 300),
            ResolvedAnswer::V6(Ipv6Addr::LOCALHOST, 300),
            ResolvedAnswer::V4(Ipv4Addr::new(192, 0, 2, 2), 3600),
        ]);
        let m = parse(&q.respond(&outcome, MAX_UDP_RESPONSE).expect("response"));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.queries[0].name().to_ascii(), "Example.com.");
        let got: Vec<_> = m.answers.iter().map(|r| (r.data.clone(), r.ttl)).collect();
        assert_eq!(
            got,
            vec![
                (RData::A(A::new(192, 0, 2, 1)), 300),
                (RData::A(A::new(192, 0, 2, 2)), 3600)
            ]
        );
    }

    #[test]
    fn aaaa_of_a_v4_only_name_is_nodata_and_ptr_gives_names() {
        let q = resolve(&query("example.com", RecordType::AAAA));
        let v4_only = DnsOutcome::Resolved(vec![ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, 300)]);
        let m = parse(&q.respond(&v4_only, MAX_UDP_RESPONSE).expect("response"));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());

        let q = resolve(&query("1.0.0.127.in-addr.arpa", RecordType::PTR));
        let names = DnsOutcome::Resolved(vec![
            ResolvedAnswer::Name("localhost".into(), 60),
            ResolvedAnswer::Name("bad name\\".into(), 60),
        ]);
        let m = parse(&q.respond(&names, MAX_UDP_RESPONSE).expect("response"));
        assert_eq!(m.answers.len(), 1);
        assert_eq!(
            m.answers[0].data,
            RData::PTR(PTR(Name::from_ascii("localhost.").expect("name")))
        );
    }

    #[test]
    fn hostile_ttls_are_capped() {
        let q = resolve(&query("example.com", RecordType::A));
        let outcome = DnsOutcome::Resolved(vec![ResolvedAnswer::V4(Ipv4Addr::LOCALHOST, u32::MAX)]);
        let m = parse(&q.respond(&outcome, MAX_UDP_RESPONSE).expect("response"));
        assert_eq!(m.answers[0].ttl, MAX_ANSWER_TTL);
    }

    #[test]
    fn failures_are_nxdomain_and_servfail() {
        let q = resolve(&query("example.com", RecordType::A));
        for (outcome, code) in [
            (DnsOutcome::NoSuchName, ResponseCode::NXDomain),
            (DnsOutcome::Unavailable, ResponseCode::ServFail),
        ] {
            let m = parse(&q.respond(&outcome, MAX_UDP_RESPONSE).expect("response"));
            assert_eq!(m.metadata.response_code, code);
            assert_eq!(m.queries.len(), 1);
            assert!(m.answers.is_empty());
        }
    }

    #[test]
    fn other_types_classes_and_opcodes_are_notimp() {
        for rtype in [
            RecordType::MX,
            RecordType::TXT,
            RecordType::ANY,
            RecordType::SRV,
        ] {
            let (code, m) = reply_code(&query("example.com", rtype));
            assert_eq!(code, ResponseCode::NotImp, "{rtype}");
            assert_eq!(m.metadata.id, 0x1234);
            assert_eq!(m.queries[0].query_type(), rtype);
        }
        let mut chaos = Message::new(1, MessageType::Query, OpCode::Query);
        let mut q = Query::query(
            Name::from_ascii("version.bind").expect("name"),
            RecordType::TXT,
        );
        q.set_query_class(DNSClass::CH);
        chaos.queries.push(q);
        assert_eq!(
            reply_code(&chaos.to_vec().expect("encode")).0,
            ResponseCode::NotImp
        );
        let mut status = query("example.com", RecordType::A);
        status[2] = (status[2] & 0x87) | (2 << 3); // opcode STATUS
        assert_eq!(reply_code(&status).0, ResponseCode::NotImp);
    }

    #[test]
    fn malformed_queries_are_formerr_or_dropped() {
        assert_eq!(read_query(&[]), DnsAction::Drop);
        assert_eq!(read_query(&[0x12; 11]), DnsAction::Drop);
        // A header and half a question.
        let full = query("example.com", RecordType::A);
        let (code, m) = reply_code(&full[..full.len() - 3]);
        assert_eq!(code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.queries.is_empty());
        // No question, two questions, a header declaring 65,535 of them.
        for qdcount in [0u16, 2, u16::MAX] {
            let mut bytes = full.clone();
            bytes[4..6].copy_from_slice(&qdcount.to_be_bytes());
            assert_eq!(reply_code(&bytes).0, ResponseCode::FormErr, "{qdcount}");
        }
        // A response is never answered.
        let mut response = full;
        response[2] |= 0x80;
        assert_eq!(read_query(&response), DnsAction::Drop);
    }

    #[test]
    fn names_the_network_cannot_ask_are_refused() {
        assert_eq!(
            reply_code(&query(".", RecordType::A)).0,
            ResponseCode::Refused
        );
        for ptr in ["example.com", "3.2.1.in-addr.arpa", "1.ip6.arpa"] {
            assert_eq!(
                reply_code(&query(ptr, RecordType::PTR)).0,
                ResponseCode::Refused,
                "{ptr}"
            );
        }
    }

    #[test]
    fn big_udp_answers_are_cut_to_whole_records_with_tc() {
        let q = resolve(&query("1.0.0.127.in-addr.arpa", RecordType::PTR));
        // Distinct names: identical ones would compress to pointers.
        let outcome = DnsOutcome::Resolved(
            (0..16)
                .map(|i| ResolvedAnswer::Name(format!("{i}{}.example", "a".repeat(60)), 300))
                .collect(),
        );
        let udp = q.respond(&outcome, MAX_UDP_RESPONSE).expect("response");
        assert!(udp.len() <= MAX_UDP_RESPONSE);
        let m = parse(&udp);
        assert!(m.metadata.truncation);
        assert!(!m.answers.is_empty() && m.answers.len() < 16);
        let tcp = parse(&q.respond(&outcome, MAX_TCP_RESPONSE).expect("response"));
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 16);
    }

    #[test]
    fn tcp_frames_split_wait_and_refuse_oversized() {
        let framed = tcp_frame(b"abc").expect("frame");
        assert_eq!(framed, [0, 3, b'a', b'b', b'c']);
        assert_eq!(split_tcp_frame(&framed), Ok(Some((5, &b"abc"[..]))));
        assert_eq!(split_tcp_frame(&framed[..4]), Ok(None));
        assert_eq!(split_tcp_frame(&framed[..1]), Ok(None));
        let too_big = u16::try_from(MAX_DNS_QUERY + 1)
            .expect("fits")
            .to_be_bytes();
        assert_eq!(
            split_tcp_frame(&too_big),
            Err(OversizedFrame(MAX_DNS_QUERY + 1))
        );
        assert!(tcp_frame(&vec![0; MAX_TCP_RESPONSE + 1]).is_none());
    }
}
