//! Relay descriptors: the byte-exact encoding, signing and verification of specs/04 §3–§4.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use libp2p_identity::{PeerId, ed25519};
use multiaddr::{Multiaddr, Protocol};
use shallot_crypto::OnionPublicKey;
use shallot_exit_policy::PolicySummary;

use crate::err::DirectoryError;

/// The eight bytes every descriptor starts with (specs/04 §3.1).
pub const DESCRIPTOR_MAGIC: [u8; 8] = *b"SHDESC01";

/// What precedes an Ed25519 key in its PeerId (libp2p's peer-ids spec): the identity
/// multihash (code 0, 36 bytes) of the key's protobuf encoding (KeyType Ed25519 = 1, then
/// 32 bytes of Data).
const ED25519_PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
/// Largest encoded descriptor a reader accepts (specs/04 §3.1).
pub const MAX_DESCRIPTOR_LEN: usize = 4096;
/// Most listen addresses one descriptor may carry.
pub const MAX_ADDRS: usize = 8;
/// Longest binary multiaddr accepted.
pub const MAX_ADDR_LEN: usize = 255;
/// Most declared family members.
pub const MAX_FAMILY: usize = 16;
/// Longest exit-policy summary accepted (Tor's summary limit, specs/06 §7).
pub const MAX_POLICY_SUMMARY_LEN: usize = shallot_exit_policy::MAX_SUMMARY_LEN;
/// How long a relay's descriptor is valid for (specs/04 §4).
pub const DESCRIPTOR_LIFETIME_SECS: u64 = 3 * 3600;
/// The longest lifetime a reader accepts (specs/04 §4).
pub const MAX_DESCRIPTOR_LIFETIME_SECS: u64 = 24 * 3600;
/// How often a relay publishes a fresh descriptor (specs/04 §4).
pub const REPUBLISH_INTERVAL_SECS: u64 = 3600;
/// How far in the reader's future `PUBLISHED_AT` may be (specs/04 §4).
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Bit of [`Descriptor::protocols`] for circuit protocol version 1.
pub const PROTOCOL_CIRCUIT_V1: u32 = 1;

const SIGNATURE_LEN: usize = 64;
const SIGNING_CONTEXT: &[u8] = b"shallot-descriptor-v1";

/// Descriptor flags (specs/04 §3.2). Unknown bits are kept (they are signed) and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RelayFlags(pub u32);

impl RelayFlags {
    /// The relay opens streams for clients.
    pub const EXIT: u32 = 1;
    /// The relay has (nearly) spent its accounting allowance and accepts no new circuits
    /// until its period turns (Tor's `hibernating 1`): clients leave it out of their views.
    pub const HIBERNATING: u32 = 1 << 1;

    /// Whether the EXIT bit is set.
    pub fn is_exit(self) -> bool {
        self.0 & Self::EXIT != 0
    }

    /// Whether the HIBERNATING bit is set.
    pub fn is_hibernating(self) -> bool {
        self.0 & Self::HIBERNATING != 0
    }
}

/// A relay's self-description, before signing or after verification.
#[derive(Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The relay's Ed25519 identity key; its PeerId is derived from it.
    pub identity: ed25519::PublicKey,
    /// When the relay made this descriptor (UNIX seconds).
    pub published_at: u64,
    /// When it stops being valid (UNIX seconds).
    pub expires_at: u64,
    /// Bit *i* set: circuit protocol version *i*+1 spoken.
    pub protocols: u32,
    /// Flags, see [`RelayFlags`].
    pub flags: RelayFlags,
    /// Listen addresses, without a `/p2p/` suffix.
    pub addrs: Vec<Multiaddr>,
    /// The current onion key (specs/02).
    pub onion_key: OnionPublicKey,
    /// The previous onion key, still accepted during rotation.
    pub previous_onion_key: Option<OnionPublicKey>,
    /// The relay's declared family.
    pub family: Vec<PeerId>,
    /// The exit-policy summary (specs/06); empty for a non-exit.
    pub policy_summary: Vec<u8>,
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Descriptor")
            .field("peer_id", &self.peer_id())
            .field("published_at", &self.published_at)
            .field("expires_at", &self.expires_at)
            .field("flags", &self.flags)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Descriptor {
    /// The PeerId of the identity key.
    pub fn peer_id(&self) -> PeerId {
        libp2p_identity::PublicKey::from(self.identity.clone()).to_peer_id()
    }

    /// The IP addresses among the listen addresses (what the Sybil caps count).
    pub fn ip_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().filter_map(ip_of)
    }

    /// The exit-policy summary (specs/06 §7) of an exit; `None` for a non-exit.
    pub fn exit_policy_summary(&self) -> Result<Option<PolicySummary>, DirectoryError> {
        if self.policy_summary.is_empty() {
            return Ok(None);
        }
        PolicySummary::decode_bytes(&self.policy_summary)
            .map(Some)
            .map_err(|_| DirectoryError::Invalid("exit-policy summary does not parse"))
    }

    /// Checks the field rules of specs/04 §3 that do not depend on time.
    fn check_fields(&self) -> Result<(), DirectoryError> {
        if self.protocols & PROTOCOL_CIRCUIT_V1 == 0 {
            return Err(DirectoryError::Invalid(
                "circuit protocol version 1 not offered",
            ));
        }
        if self.addrs.is_empty() || self.addrs.len() > MAX_ADDRS {
            return Err(DirectoryError::Invalid("address count outside 1..=8"));
        }
        for addr in &self.addrs {
            let len = addr.as_ref().len();
            if len == 0 || len > MAX_ADDR_LEN {
                return Err(DirectoryError::Invalid("address length outside 1..=255"));
            }
            if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                return Err(DirectoryError::Invalid("address carries a /p2p/ component"));
            }
        }
        if self.family.len() > MAX_FAMILY {
            return Err(DirectoryError::Invalid("more than 16 family members"));
        }
        if self.policy_summary.len() > MAX_POLICY_SUMMARY_LEN {
            return Err(DirectoryError::Invalid("exit-policy summary too long"));
        }
        if self.flags.is_exit() == self.policy_summary.is_empty() {
            return Err(DirectoryError::Invalid(
                "EXIT flag and exit-policy summary disagree",
            ));
        }
        if self.flags.is_exit() {
            self.exit_policy_summary()?;
        }
        Ok(())
    }

    /// Checks the lifetime rules of specs/04 §4 at `now` (UNIX seconds).
    pub fn check_time(&self, now: u64) -> Result<(), DirectoryError> {
        if self.published_at >= self.expires_at {
            return Err(DirectoryError::Expired("expires before it is published"));
        }
        if self.expires_at - self.published_at > MAX_DESCRIPTOR_LIFETIME_SECS {
            return Err(DirectoryError::Expired("lifetime longer than 24 hours"));
        }
        if self.published_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(DirectoryError::Expired("published in the future"));
        }
        if now >= self.expires_at {
            return Err(DirectoryError::Expired("expired"));
        }
        Ok(())
    }

    /// The bytes the signature covers: everything before SIGNATURE (specs/04 §3.1).
    fn encode_unsigned(&self) -> Result<Vec<u8>, DirectoryError> {
        self.check_fields()?;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&DESCRIPTOR_MAGIC);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.published_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        out.extend_from_slice(&self.protocols.to_be_bytes());
        out.extend_from_slice(&self.flags.0.to_be_bytes());
        out.push(u8_len(self.addrs.len())?);
        for addr in &self.addrs {
            put_bytes16(&mut out, addr.as_ref())?;
        }
        out.extend_from_slice(&self.onion_key.0);
        match &self.previous_onion_key {
            Some(key) => {
                out.push(1);
                out.extend_from_slice(&key.0);
            }
            None => out.push(0),
        }
        out.push(u8_len(self.family.len())?);
        for member in &self.family {
            let bytes = member.to_bytes();
            out.push(u8_len(bytes.len())?);
            out.extend_from_slice(&bytes);
        }
        put_bytes16(&mut out, &self.policy_summary)?;
        Ok(out)
    }

    /// Encodes and signs the descriptor with the relay's identity keypair, which must be the
    /// keypair of [`Descriptor::identity`].
    pub fn sign(&self, keypair: &ed25519::Keypair) -> Result<SignedDescriptor, DirectoryError> {
        if keypair.public() != self.identity {
            return Err(DirectoryError::Signing(
                "keypair does not match the identity key",
            ));
        }
        let mut bytes = self.encode_unsigned()?;
        let signature = keypair.sign(&signed_message(&bytes));
        bytes.extend_from_slice(&signature);
        if bytes.len() > MAX_DESCRIPTOR_LEN {
            return Err(DirectoryError::Oversized {
                len: bytes.len(),
                max: MAX_DESCRIPTOR_LEN,
            });
        }
        Ok(SignedDescriptor {
            descriptor: self.clone(),
            bytes,
        })
    }
}

/// A descriptor together with its signed encoding, as stored in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDescriptor {
    descriptor: Descriptor,
    bytes: Vec<u8>,
}

impl SignedDescriptor {
    /// Decodes and verifies `bytes` (specs/04 §3, §4): size, structure, canonical form,
    /// signature and, at `now` (UNIX seconds), the lifetime rules.
    pub fn verify(bytes: &[u8], now: u64) -> Result<Self, DirectoryError> {
        let signed = Self::verify_ignoring_time(bytes)?;
        signed.descriptor.check_time(now)?;
        Ok(signed)
    }

    /// Like [`SignedDescriptor::verify`] without the lifetime rules (for callers that apply
    /// them separately, such as a cache loader reporting expiry on its own).
    pub fn verify_ignoring_time(bytes: &[u8]) -> Result<Self, DirectoryError> {
        if bytes.len() > MAX_DESCRIPTOR_LEN {
            return Err(DirectoryError::Oversized {
                len: bytes.len(),
                max: MAX_DESCRIPTOR_LEN,
            });
        }
        let (descriptor, signed_len) = decode_unsigned(bytes)?;
        let signature = &bytes[signed_len..];
        if signature.len() != SIGNATURE_LEN {
            return Err(DirectoryError::Malformed(
                "trailing bytes after the signature",
            ));
        }
        // specs/04 §3.3: one descriptor, one encoding.
        if descriptor.encode_unsigned()? != bytes[..signed_len] {
            return Err(DirectoryError::NonCanonical);
        }
        if !descriptor
            .identity
            .verify(&signed_message(&bytes[..signed_len]), signature)
        {
            return Err(DirectoryError::BadSignature);
        }
        Ok(Self {
            descriptor,
            bytes: bytes.to_vec(),
        })
    }

    /// The verified descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The signed encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The relay's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.descriptor.peer_id()
    }

    /// The descriptor `bytes` claim to hold, decoded without checking the canonical form or
    /// the signature: only to refuse cheaply what would be refused anyway whatever the
    /// signature (a store's full subnet, a refuted descriptor), never to accept anything.
    pub fn unverified_claim(bytes: &[u8]) -> Option<Descriptor> {
        if bytes.len() > MAX_DESCRIPTOR_LEN {
            return None;
        }
        decode_unsigned(bytes).ok().map(|(d, _)| d)
    }

    /// The PeerId that `bytes` would belong to if they verified, read from the identity key's
    /// place without checking anything else, not even that the key is a curve point (to match
    /// bytes against a descriptor already verified; never a substitute for
    /// [`SignedDescriptor::verify`]). Every entry of every listing a relay synchronises is
    /// matched this way, and decompressing the point was most of the cost of a listing that
    /// held nothing new.
    pub fn peer_of_bytes(bytes: &[u8]) -> Option<PeerId> {
        let key = bytes.get(DESCRIPTOR_MAGIC.len()..DESCRIPTOR_MAGIC.len() + 32)?;
        let mut multihash = [0; ED25519_PEER_ID_PREFIX.len() + 32];
        multihash[..ED25519_PEER_ID_PREFIX.len()].copy_from_slice(&ED25519_PEER_ID_PREFIX);
        multihash[ED25519_PEER_ID_PREFIX.len()..].copy_from_slice(key);
        PeerId::from_bytes(&multihash).ok()
    }
}

fn signed_message(unsigned: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + unsigned.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(unsigned);
    message
}

fn u8_len(len: usize) -> Result<u8, DirectoryError> {
    u8::try_from(len).map_err(|_| DirectoryError::Invalid("list too long"))
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), DirectoryError> {
    let len = u16::try_from(bytes.len()).map_err(|_| DirectoryError::Invalid("field too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// A bounds-checked reader over remote input.
struct Reader<'a> {
    rest: &'a [u8],
    consumed: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DirectoryError> {
        if self.rest.len() < n {
            return Err(DirectoryError::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        self.consumed += n;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DirectoryError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DirectoryError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DirectoryError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DirectoryError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn bytes16(&mut self, what: &'static str) -> Result<&'a [u8], DirectoryError> {
        let len = u16::from_be_bytes(self.array(what)?);
        self.take(usize::from(len), what)
    }
}

/// Decodes everything before SIGNATURE; returns the descriptor and how many bytes it took.
fn decode_unsigned(bytes: &[u8]) -> Result<(Descriptor, usize), DirectoryError> {
    let mut r = Reader {
        rest: bytes,
        consumed: 0,
    };
    if r.array::<8>("truncated magic")? != DESCRIPTOR_MAGIC {
        return Err(DirectoryError::Malformed("bad magic"));
    }
    let identity = ed25519::PublicKey::try_from_bytes(&r.array::<32>("truncated identity key")?)
        .map_err(|_| DirectoryError::Malformed("identity key is not an Ed25519 point"))?;
    let published_at = r.u64("truncated PUBLISHED_AT")?;
    let expires_at = r.u64("truncated EXPIRES_AT")?;
    let protocols = r.u32("truncated PROTOCOLS")?;
    let flags = RelayFlags(r.u32("truncated FLAGS")?);
    let n_addrs = usize::from(r.u8("truncated N_ADDRS")?);
    if n_addrs == 0 || n_addrs > MAX_ADDRS {
        return Err(DirectoryError::Invalid("address count outside 1..=8"));
    }
    let mut addrs = Vec::with_capacity(n_addrs);
    for _ in 0..n_addrs {
        let raw = r.bytes16("truncated address")?;
        let addr = Multiaddr::try_from(raw.to_vec())
            .map_err(|_| DirectoryError::Malformed("address is not a multiaddr"))?;
        addrs.push(addr);
    }
    let onion_key = OnionPublicKey(r.array("truncated onion key")?);
    let previous_onion_key = match r.u8("truncated HAS_PREVIOUS")? {
        0 => None,
        1 => Some(OnionPublicKey(r.array("truncated previous onion key")?)),
        _ => return Err(DirectoryError::Malformed("HAS_PREVIOUS is neither 0 nor 1")),
    };
    let n_family = usize::from(r.u8("truncated N_FAMILY")?);
    if n_family > MAX_FAMILY {
        return Err(DirectoryError::Invalid("more than 16 family members"));
    }
    let mut family = Vec::with_capacity(n_family);
    for _ in 0..n_family {
        let len = usize::from(r.u8("truncated family member")?);
        let raw = r.take(len, "truncated family member")?;
        let peer = PeerId::from_bytes(raw)
            .map_err(|_| DirectoryError::Malformed("family member is not a PeerId"))?;
        family.push(peer);
    }
    let policy_summary = r.bytes16("truncated exit-policy summary")?.to_vec();
    let descriptor = Descriptor {
        identity,
        published_at,
        expires_at,
        protocols,
        flags,
        addrs,
        onion_key,
        previous_onion_key,
        family,
        policy_summary,
    };
    descriptor.check_fields()?;
    Ok((descriptor, r.consumed))
}

/// The IP address of a multiaddr's `/ip4` or `/ip6` component, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|proto| match proto {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The IP address and port of `/ip4|ip6/A/tcp|udp/P/…`, whatever follows: where a node
/// listening at `addr` can be reached.
pub fn socket_of(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(a) => IpAddr::V4(a),
        Protocol::Ip6(a) => IpAddr::V6(a),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) | Protocol::Udp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NOW: u64 = 1_800_000_000;

    pub(crate) fn sample(keypair: &ed25519::Keypair, addr: &str) -> Descriptor {
        Descriptor {
            identity: keypair.public(),
            published_at: NOW,
            expires_at: NOW + DESCRIPTOR_LIFETIME_SECS,
            protocols: PROTOCOL_CIRCUIT_V1,
            flags: RelayFlags::default(),
            addrs: vec![addr.parse().expect("test address")],
            onion_key: OnionPublicKey([7; 32]),
            previous_onion_key: None,
            family: Vec::new(),
            policy_summary: Vec::new(),
        }
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let keypair = ed25519::Keypair::generate();
        let mut descriptor = sample(&keypair, "/ip4/127.0.1.1/tcp/4000");
        descriptor.previous_onion_key = Some(OnionPublicKey([9; 32]));
        descriptor.family = vec![PeerId::random(), PeerId::random()];
        descriptor.flags = RelayFlags(RelayFlags::EXIT | 0x8000_0000);
        descriptor.policy_summary = b"accept 80,443".to_vec();
        let summary = descriptor
            .exit_policy_summary()
            .expect("summary")
            .expect("exit");
        assert!(summary.allows_port(443) && !summary.allows_port(25));
        let signed = descriptor.sign(&keypair).expect("sign");
        let verified = SignedDescriptor::verify(signed.as_bytes(), NOW + 1).expect("verify");
        assert_eq!(verified.descriptor(), &descriptor);
        assert_eq!(
            verified.peer_id(),
            libp2p_identity::PublicKey::from(keypair.public()).to_peer_id()
        );
    }

    #[test]
    fn sockets_are_ip_and_port_of_tcp_and_udp_addresses() {
        let sock = |s: &str| socket_of(&s.parse::<Multiaddr>().expect("addr"));
        let v4: SocketAddr = "127.0.1.1:9000".parse().expect("socket");
        let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("socket");
        assert_eq!(sock("/ip4/127.0.1.1/tcp/9000"), Some(v4));
        assert_eq!(sock("/ip4/127.0.1.1/udp/9000/quic-v1"), Some(v4));
        assert_eq!(sock("/ip6/2001:db8::1/tcp/443/ws"), Some(v6));
        assert_eq!(sock("/dns4/example.com/tcp/443"), None);
        assert_eq!(sock("/ip4/127.0.1.1"), None);
    }

    #[test]
    fn peer_of_bytes_is_the_peer_id_libp2p_derives_from_the_key() {
        for _ in 0..32 {
            let keypair = ed25519::Keypair::generate();
            let signed = sample(&keypair, "/ip4/127.0.1.1/tcp/4000")
                .sign(&keypair)
                .expect("sign");
            assert_eq!(
                SignedDescriptor::peer_of_bytes(signed.as_bytes()),
                Some(libp2p_identity::PublicKey::from(keypair.public()).to_peer_id())
            );
        }
        assert_eq!(SignedDescriptor::peer_of_bytes(&DESCRIPTOR_MAGIC), None);
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let keypair = ed25519::Keypair::generate();
        let signed = sample(&keypair, "/ip4/127.0.1.1/tcp/4000")
            .sign(&keypair)
            .expect("sign");
        let bytes = signed.as_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut forged = bytes.to_vec();
            forged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SignedDescriptor::verify(&forged, NOW + 1).is_err(),
                "bit {bit} flipped was accepted"
            );
        }
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let keypair = ed25519::Keypair::generate();
        let other = ed25519::Keypair::generate();
        let mut bytes = sample(&keypair, "/ip4/127.0.1.1/tcp/4000")
            .sign(&keypair)
            .expect("sign")
            .as_bytes()
            .to_vec();
        let signed_len = bytes.len() - SIGNATURE_LEN;
        let forged = other.sign(&signed_message(&bytes[..signed_len]));
        bytes[signed_len..].copy_from_slice(&forged);
        assert!(matches!(
            SignedDescriptor::verify(&bytes, NOW + 1),
            Err(DirectoryError::BadSignature)
        ));
    }

    #[test]
    fn signing_with_a_foreign_keypair_fails() {
        let keypair = ed25519::Keypair::generate();
        let other = ed25519::Keypair::generate();
        assert!(matches!(
            sample(&keypair, "/ip4/127.0.1.1/tcp/4000").sign(&other),
            Err(DirectoryError::Signing(_))
        ));
    }

    #[test]
    fn lifetime_rules() {
        let keypair = ed25519::Keypair::generate();
        let descriptor = sample(&keypair, "/ip4/127.0.1.1/tcp/4000");
        let bytes = descriptor.sign(&keypair).expect("sign").as_bytes().to_vec();
        assert!(SignedDescriptor::verify(&bytes, NOW).is_ok());
        assert!(SignedDescriptor::verify(&bytes, NOW - MAX_CLOCK_SKEW_SECS).is_ok());
        assert!(matches!(
            SignedDescriptor::verify(&bytes, NOW - MAX_CLOCK_SKEW_SECS - 1),
            Err(DirectoryError::Expired(_))
        ));
        assert!(matches!(
            SignedDescriptor::verify(&bytes, NOW + DESCRIPTOR_LIFETIME_SECS),
            Err(DirectoryError::Expired(_))
        ));

        let mut too_long = descriptor.clone();
        too_long.expires_at = NOW + MAX_DESCRIPTOR_LIFETIME_SECS + 1;
        let bytes = too_long.sign(&keypair).expect("sign").as_bytes().to_vec();
        assert!(matches!(
            SignedDescriptor::verify(&bytes, NOW),
            Err(DirectoryError::Expired(_))
        ));

        let mut backwards = descriptor;
        backwards.expires_at = NOW;
        let bytes = backwards.sign(&keypair).expect("sign").as_bytes().to_vec();
        assert!(matches!(
            SignedDescriptor::verify(&bytes, NOW - 1),
            Err(DirectoryError::Expired(_))
        ));
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let bytes = vec![0u8; MAX_DESCRIPTOR_LEN + 1];
        assert!(matches!(
            SignedDescriptor::verify(&bytes, NOW),
            Err(DirectoryError::Oversized { .. })
        ));
    }

    #[test]
    fn field_rules_are_enforced_on_signing() {
        let keypair = ed25519::Keypair::generate();
        let base = sample(&keypair, "/ip4/127.0.1.1/tcp/4000");
        let mut no_addrs = base.clone();
        no_addrs.addrs.clear();
        let mut exit_without_policy = base.clone();
        exit_without_policy.flags = RelayFlags(RelayFlags::EXIT);
        let mut policy_without_exit = base.clone();
        policy_without_exit.policy_summary = b"accept 80".to_vec();
        let mut no_v1 = base.clone();
        no_v1.protocols = 2;
        let mut with_p2p = base.clone();
        with_p2p.addrs = vec![
            format!("/ip4/127.0.0.1/tcp/1/p2p/{}", PeerId::random())
                .parse()
                .expect("addr"),
        ];
        let mut too_many_addrs = base;
        too_many_addrs.addrs = (0..9)
            .map(|i| format!("/ip4/127.0.{i}.1/tcp/1").parse().expect("addr"))
            .collect();
        for bad in [
            no_addrs,
            exit_without_policy,
            policy_without_exit,
            no_v1,
            with_p2p,
            too_many_addrs,
        ] {
            assert!(
                matches!(bad.sign(&keypair), Err(DirectoryError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn non_canonical_has_previous_is_refused() {
        let keypair = ed25519::Keypair::generate();
        let bytes = sample(&keypair, "/ip4/127.0.1.1/tcp/4000")
            .sign(&keypair)
            .expect("sign")
            .as_bytes()
            .to_vec();
        // HAS_PREVIOUS sits right after the onion key; 2 is neither 0 nor 1.
        let addr_len = usize::from(u16::from_be_bytes([bytes[65], bytes[66]]));
        let has_previous_at = 8 + 32 + 8 + 8 + 4 + 4 + 1 + 2 + addr_len + 32;
        let mut forged = bytes.clone();
        forged[has_previous_at] = 2;
        assert!(matches!(
            SignedDescriptor::verify(&forged, NOW),
            Err(DirectoryError::Malformed(_))
        ));
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        let keypair = ed25519::Keypair::generate();
        let bytes = sample(&keypair, "/ip4/127.0.1.1/tcp/4000")
            .sign(&keypair)
            .expect("sign")
            .as_bytes()
            .to_vec();
        for len in 0..bytes.len() {
            assert!(SignedDescriptor::verify(&bytes[..len], NOW).is_err());
        }
        let mut longer = bytes;
        longer.push(0);
        assert!(SignedDescriptor::verify(&longer, NOW).is_err());
    }

    #[test]
    fn ip_addrs_lists_only_ip_components() {
        let keypair = ed25519::Keypair::generate();
        let mut descriptor = sample(&keypair, "/ip4/127.0.1.1/tcp/4000");
        descriptor
            .addrs
            .push("/ip6/::1/udp/4000/quic-v1".parse().expect("addr"));
        descriptor
            .addrs
            .push("/dns4/relay.example/tcp/1".parse().expect("addr"));
        let ips: Vec<IpAddr> = descriptor.ip_addrs().collect();
        assert_eq!(
            ips,
            vec![
                "127.0.1.1".parse::<IpAddr>().expect("ip"),
                "::1".parse().expect("ip")
            ]
        );
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = SignedDescriptor::verify(&bytes, NOW);
        }

        #[test]
        fn round_trip_any_valid_descriptor(
            published in 0u64..4_000_000_000,
            lifetime in 1u64..=MAX_DESCRIPTOR_LIFETIME_SECS,
            protocols in proptest::num::u32::ANY,
            flags in proptest::num::u32::ANY,
            n_addrs in 1usize..=MAX_ADDRS,
            port in 1u16..,
            previous in proptest::option::of(proptest::array::uniform32(proptest::num::u8::ANY)),
            n_family in 0usize..=MAX_FAMILY,
            port_a in 1u16..30_000,
            port_b in 30_002u16..,
        ) {
            let keypair = ed25519::Keypair::generate();
            let exit = flags & RelayFlags::EXIT != 0;
            let descriptor = Descriptor {
                identity: keypair.public(),
                published_at: published,
                expires_at: published + lifetime,
                protocols: protocols | PROTOCOL_CIRCUIT_V1,
                flags: RelayFlags(flags),
                addrs: (0..n_addrs)
                    .map(|i| format!("/ip4/10.{i}.0.1/tcp/{port}").parse().expect("addr"))
                    .collect(),
                onion_key: OnionPublicKey([3; 32]),
                previous_onion_key: previous.map(OnionPublicKey),
                family: (0..n_family).map(|_| PeerId::random()).collect(),
                policy_summary: if exit {
                    format!("accept {port_a},{port_b}").into_bytes()
                } else {
                    Vec::new()
                },
            };
            let signed = descriptor.sign(&keypair).expect("sign");
            let verified = SignedDescriptor::verify(signed.as_bytes(), published).expect("verify");
            proptest::prop_assert_eq!(verified.descriptor(), &descriptor);
        }
    }
}
