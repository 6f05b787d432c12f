//! Address prefixes, Tor's textual address forms, and the address sets of specs/06 §4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::rule::PreludeKind;

/// An IP address family. Rules of one family never match an address of the other
/// (specs/06 §5.1: IPv4-mapped IPv6 addresses are IPv6 addresses here, as in Tor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    /// IPv4 (32-bit addresses).
    Ipv4,
    /// IPv6 (128-bit addresses).
    Ipv6,
}

impl AddressFamily {
    /// Both families, IPv4 first.
    pub const ALL: [AddressFamily; 2] = [AddressFamily::Ipv4, AddressFamily::Ipv6];

    /// Address width in bits.
    pub const fn width(self) -> u8 {
        match self {
            AddressFamily::Ipv4 => 32,
            AddressFamily::Ipv6 => 128,
        }
    }

    /// The family of `addr`.
    pub const fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => AddressFamily::Ipv4,
            IpAddr::V6(_) => AddressFamily::Ipv6,
        }
    }
}

/// An address prefix (`10.0.0.0/8`, `[fc00::]/7`): the addresses whose first `len` bits equal
/// the network's. Host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    family: AddressFamily,
    /// The network address, right-aligned (an IPv4 address uses the low 32 bits).
    bits: u128,
    len: u8,
}

/// The mask of the first `len` bits of a `width`-bit address, right-aligned.
const fn mask(len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        (u128::MAX << (width - len)) & all
    }
}

const fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => a.to_bits() as u128,
        IpAddr::V6(a) => a.to_bits(),
    }
}

impl IpPrefix {
    /// The prefix of length `len` containing `addr`, or `None` if `len` is longer than the
    /// address.
    pub const fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let family = AddressFamily::of(addr);
        if len > family.width() {
            return None;
        }
        Some(IpPrefix {
            family,
            bits: addr_bits(addr) & mask(len, family.width()),
            len,
        })
    }

    /// The single-address prefix of `addr` (`/32` or `/128`).
    pub const fn host(addr: IpAddr) -> Self {
        let family = AddressFamily::of(addr);
        IpPrefix {
            family,
            bits: addr_bits(addr),
            len: family.width(),
        }
    }

    /// Every address of `family` (`*4` or `*6`).
    pub const fn any(family: AddressFamily) -> Self {
        IpPrefix {
            family,
            bits: 0,
            len: 0,
        }
    }

    const fn v4(a: [u8; 4], len: u8) -> Self {
        IpPrefix {
            family: AddressFamily::Ipv4,
            bits: u32::from_be_bytes(a) as u128,
            len,
        }
    }

    const fn v6(high16: u16, len: u8) -> Self {
        Self::v6_bits((high16 as u128) << 112, len)
    }

    const fn v6_bits(bits: u128, len: u8) -> Self {
        IpPrefix {
            family: AddressFamily::Ipv6,
            bits,
            len,
        }
    }

    /// The IPv6 addresses of `self` (an IPv6 prefix) that carry an IPv4 address of `inner`
    /// right after `self`'s prefix, as 6to4 does.
    fn embedding(self, inner: IpPrefix) -> Self {
        let shift = 128 - u32::from(self.len) - 32;
        Self::v6_bits(self.bits | (inner.bits << shift), self.len + inner.len)
    }

    /// The prefix's family.
    pub const fn family(&self) -> AddressFamily {
        self.family
    }

    /// The prefix length in bits.
    pub const fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for a zero-length prefix: every address of the family.
    pub const fn is_any(&self) -> bool {
        self.len == 0
    }

    /// The network (first) address.
    pub fn network(&self) -> IpAddr {
        self.address_at(self.bits)
    }

    fn address_at(&self, bits: u128) -> IpAddr {
        match self.family {
            // The low 32 bits hold the IPv4 address; truncation is the intent.
            AddressFamily::Ipv4 => IpAddr::V4(Ipv4Addr::from_bits(bits as u32)),
            AddressFamily::Ipv6 => IpAddr::V6(Ipv6Addr::from_bits(bits)),
        }
    }

    /// Whether `addr` is in this prefix. An address of the other family never is
    /// (Tor compares with `CMP_EXACT`).
    pub fn contains(&self, addr: IpAddr) -> bool {
        AddressFamily::of(addr) == self.family
            && addr_bits(addr) & mask(self.len, self.family.width()) == self.bits
    }

    /// Whether every address of `other` is in `self`.
    pub(crate) fn covers(&self, other: &IpPrefix) -> bool {
        self.family == other.family
            && self.len <= other.len
            && other.bits & mask(self.len, self.family.width()) == self.bits
    }

    /// Whether the two prefixes share an address.
    pub(crate) fn overlaps(&self, other: &IpPrefix) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The two halves of this prefix, or `None` for a single address.
    fn halves(&self) -> Option<(IpPrefix, IpPrefix)> {
        let width = self.family.width();
        if self.len >= width {
            return None;
        }
        let len = self.len + 1;
        let high_bit = 1u128 << (width - len);
        let low = IpPrefix { len, ..*self };
        let high = IpPrefix {
            len,
            bits: self.bits | high_bit,
            family: self.family,
        };
        Some((low, high))
    }

    /// The number of addresses in the prefix, saturating at `u128::MAX` for `[::]/0`.
    pub(crate) fn size(&self) -> u128 {
        1u128
            .checked_shl(u32::from(self.family.width() - self.len))
            .unwrap_or(u128::MAX)
    }
}

impl fmt::Display for IpPrefix {
    /// Tor's notation: `10.0.0.0/8`, `[fc00::]/7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network() {
            IpAddr::V4(a) => write!(f, "{a}/{}", self.len),
            IpAddr::V6(a) => write!(f, "[{a}]/{}", self.len),
        }
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;

    /// `10.200.0.0/16`, `2001:db8::/32` (brackets allowed), or one address. Host bits must be
    /// zero, so that what is written is what is matched.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.rsplit_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or ADDRESS/LENGTH"))?;
        let Some(len) = len else {
            return Ok(Self::host(addr));
        };
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: the prefix length is not a number"))?;
        let prefix =
            Self::new(addr, len).ok_or_else(|| format!("{s:?}: prefix length too long"))?;
        if prefix.network() != addr {
            return Err(format!(
                "{s:?} has host bits set (the network is {})",
                prefix.network()
            ));
        }
        Ok(prefix)
    }
}

impl serde::Serialize for IpPrefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IpPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An address in `prefix` that no prefix of `covers` contains, if there is one.
///
/// Splits `prefix` in halves only where a cover lies strictly inside it, so the work is bounded
/// by `covers.len() × width` prefix visits.
pub(crate) fn uncovered_address(prefix: IpPrefix, covers: &[IpPrefix]) -> Option<IpAddr> {
    let relevant: Vec<IpPrefix> = covers
        .iter()
        .filter(|c| c.overlaps(&prefix))
        .copied()
        .collect();
    if relevant.iter().any(|c| c.covers(&prefix)) {
        return None;
    }
    if relevant.is_empty() {
        return Some(prefix.network());
    }
    // Every relevant cover is strictly inside `prefix`, so `prefix` is not a single address.
    let (low, high) = prefix.halves()?;
    uncovered_address(low, &relevant).or_else(|| uncovered_address(high, &relevant))
}

/// Tor's `private` networks, in Tor's order (`private_nets[]` in tor's `policies.c`;
/// tor(1) `ExitPolicy`). specs/06 §4.1.
pub const PRIVATE_NETS: [IpPrefix; 12] = [
    IpPrefix::v4([0, 0, 0, 0], 8),
    IpPrefix::v4([169, 254, 0, 0], 16),
    IpPrefix::v4([127, 0, 0, 0], 8),
    IpPrefix::v4([192, 168, 0, 0], 16),
    IpPrefix::v4([10, 0, 0, 0], 8),
    IpPrefix::v4([172, 16, 0, 0], 12),
    IpPrefix::v6(0x0000, 8),
    IpPrefix::v6(0xfc00, 7),
    IpPrefix::v6(0xfe80, 10),
    IpPrefix::v6(0xfec0, 10),
    IpPrefix::v6(0xff00, 8),
    IpPrefix::v6(0x0000, 127),
];

/// IPv4 multicast, which the reject-private prelude adds to Tor's list. specs/06 §4.2.
pub const IPV4_MULTICAST: IpPrefix = IpPrefix::v4([224, 0, 0, 0], 4);

/// The ranges of IANA's IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890) that are not
/// globally reachable and not already in [`PRIVATE_NETS`] (which holds IPv4-mapped, NAT64
/// `64:ff9b::/96` and local-use NAT64 `64:ff9b:1::/48` inside `[::]/8`), except the
/// documentation ranges. specs/06 §4.2.
pub const SPECIAL_PURPOSE_NETS: [IpPrefix; 9] = [
    // Shared address space, carrier-grade NAT (RFC 6598).
    IpPrefix::v4([100, 64, 0, 0], 10),
    // IETF protocol assignments (RFC 6890).
    IpPrefix::v4([192, 0, 0, 0], 24),
    // The deprecated 6to4 relay anycast (RFC 7526).
    IpPrefix::v4([192, 88, 99, 0], 24),
    // Benchmarking (RFC 2544).
    IpPrefix::v4([198, 18, 0, 0], 15),
    // Reserved, and the limited broadcast 255.255.255.255 (RFC 1112, RFC 919).
    IpPrefix::v4([240, 0, 0, 0], 4),
    // Discard-only (RFC 6666).
    IpPrefix::v6(0x0100, 64),
    // Teredo (RFC 4380): every Teredo address, whatever client address it carries.
    IpPrefix::v6(0x2001, 32),
    // Benchmarking (RFC 5180).
    IpPrefix::v6_bits(0x2001_0002 << 96, 48),
    // Segment-routing SIDs (RFC 9602).
    IpPrefix::v6(0x5f00, 16),
];

/// 6to4 (RFC 3056): `2002:V4ADDR::/48` routes to the IPv4 address V4ADDR. specs/06 §4.2.
pub const SIX_TO_FOUR: IpPrefix = IpPrefix::v6(0x2002, 16);

/// The non-public prefixes that hold addresses directly: specs/06 §4.1 and §4.2.
fn listed_non_public() -> impl Iterator<Item = (IpPrefix, PreludeKind)> {
    let kind = |kind| move |p| (p, kind);
    PRIVATE_NETS
        .into_iter()
        .map(kind(PreludeKind::Private))
        .chain(std::iter::once((IPV4_MULTICAST, PreludeKind::Multicast)))
        .chain(SPECIAL_PURPOSE_NETS.map(kind(PreludeKind::SpecialPurpose)))
}

/// The 6to4 addresses of non-public IPv4 addresses, one prefix per non-public IPv4 prefix
/// (specs/06 §4.2): `10.0.0.0/8` gives `[2002:a00::]/24`.
fn six_to_four_of_non_public() -> impl Iterator<Item = (IpPrefix, PreludeKind)> {
    listed_non_public()
        .filter(|(p, _)| p.family() == AddressFamily::Ipv4)
        .map(|(p, _)| (SIX_TO_FOUR.embedding(p), PreludeKind::EmbedsNonPublic))
}

/// Every prefix that is not "public" (specs/06 §4.3), with what the reject-private prelude
/// says of it, in the prelude's order: Tor's private networks, IPv4 multicast, the
/// special-purpose ranges and the 6to4 addresses of all of those. The prelude and
/// [`is_public`] both read this one list.
pub(crate) fn non_public_nets() -> impl Iterator<Item = (IpPrefix, PreludeKind)> {
    listed_non_public().chain(six_to_four_of_non_public())
}

/// The non-public prefixes of `family`.
pub(crate) fn non_public(family: AddressFamily) -> impl Iterator<Item = IpPrefix> {
    non_public_nets()
        .map(|(p, _)| p)
        .filter(move |p| p.family() == family)
}

/// Whether `addr` is public in the sense of specs/06 §4.3.
pub fn is_public(addr: IpAddr) -> bool {
    !non_public(AddressFamily::of(addr)).any(|p| p.contains(addr))
}

/// Parses a dotted-quad IPv4 address the way Tor's `tor_inet_aton` does: exactly four decimal
/// parts of one to three digits, each at most 255 (leading zeros are decimal, not octal).
pub(crate) fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for slot in &mut out {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse::<u8>().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(out))
}

/// The prefix length of a contiguous dotted IPv4 netmask (`255.255.0.0` → 16), as Tor's
/// `addr_mask_get_bits`; `None` if the mask is not contiguous ones then zeros.
pub(crate) fn dotted_mask_len(mask: Ipv4Addr) -> Option<u8> {
    let m = mask.to_bits();
    let ones = m.leading_ones();
    // Contiguous iff everything after the leading ones is zero.
    if m.checked_shl(ones).unwrap_or(0) == 0 {
        u8::try_from(ones).ok()
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn private_nets_display_as_tor_writes_them() {
        let shown: Vec<String> = PRIVATE_NETS.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0/8",
                "169.254.0.0/16",
                "127.0.0.0/8",
                "192.168.0.0/16",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "[::]/8",
                "[fc00::]/7",
                "[fe80::]/10",
                "[fec0::]/10",
                "[ff00::]/8",
                "[::]/127",
            ]
        );
    }

    #[test]
    fn special_purpose_nets_display_as_iana_lists_them() {
        let shown: Vec<String> = SPECIAL_PURPOSE_NETS
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "100.64.0.0/10",
                "192.0.0.0/24",
                "192.88.99.0/24",
                "198.18.0.0/15",
                "240.0.0.0/4",
                "[100::]/64",
                "[2001::]/32",
                "[2001:2::]/48",
                "[5f00::]/16",
            ]
        );
        // Every non-public IPv4 prefix has its 6to4 image.
        let images: Vec<String> = six_to_four_of_non_public()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(images.len(), 12);
        assert!(images.contains(&"[2002:a00::]/24".to_owned()), "{images:?}");
        assert!(
            images.contains(&"[2002:c0a8::]/32".to_owned()),
            "{images:?}"
        );
        assert!(
            images.contains(&"[2002:f000::]/20".to_owned()),
            "{images:?}"
        );
    }

    #[test]
    fn prefix_new_clears_host_bits_and_rejects_long_masks() {
        let p = IpPrefix::new(ip("10.1.2.3"), 8).unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8");
        assert!(IpPrefix::new(ip("10.1.2.3"), 33).is_none());
        assert!(IpPrefix::new(ip("::1"), 129).is_none());
        assert_eq!(
            IpPrefix::new(ip("::1"), 128).unwrap().to_string(),
            "[::1]/128"
        );
    }

    #[test]
    fn contains_respects_family_and_edges() {
        let p = IpPrefix::new(ip("172.16.0.0"), 12).unwrap();
        assert!(p.contains(ip("172.31.255.255")));
        assert!(!p.contains(ip("172.32.0.0")));
        assert!(!p.contains(ip("::ffff:172.16.0.1")));
        assert!(IpPrefix::any(AddressFamily::Ipv6).contains(ip("2001:db8::1")));
        assert!(!IpPrefix::any(AddressFamily::Ipv6).contains(ip("1.2.3.4")));
    }

    #[test]
    fn sizes_saturate() {
        assert_eq!(IpPrefix::any(AddressFamily::Ipv4).size(), 1 << 32);
        assert_eq!(IpPrefix::any(AddressFamily::Ipv6).size(), u128::MAX);
        assert_eq!(IpPrefix::host(ip("::1")).size(), 1);
    }

    #[test]
    fn uncovered_address_finds_the_gap() {
        let any4 = IpPrefix::any(AddressFamily::Ipv4);
        let low = IpPrefix::new(ip("0.0.0.0"), 1).unwrap();
        let high_but_one = [
            IpPrefix::new(ip("128.0.0.0"), 2).unwrap(),
            IpPrefix::new(ip("192.0.0.0"), 3).unwrap(),
            IpPrefix::new(ip("224.0.0.0"), 4).unwrap(),
            IpPrefix::new(ip("240.0.0.0"), 5).unwrap(),
            IpPrefix::new(ip("248.0.0.0"), 5).unwrap(),
        ];
        let mut covers = vec![low];
        covers.extend(high_but_one);
        assert_eq!(uncovered_address(any4, &covers), None);
        covers.pop();
        assert_eq!(uncovered_address(any4, &covers), Some(ip("248.0.0.0")));
        assert_eq!(uncovered_address(any4, &[]), Some(ip("0.0.0.0")));
        assert_eq!(uncovered_address(any4, &[any4]), None);
    }

    #[test]
    fn ipv4_parsing_follows_tor_inet_aton() {
        assert_eq!(parse_ipv4("1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(parse_ipv4("010.0.0.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "1.2.3.",
            "0001.2.3.4",
            "1.2.3.a",
            "",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }

    #[test]
    fn dotted_masks() {
        assert_eq!(dotted_mask_len(Ipv4Addr::new(255, 255, 0, 0)), Some(16));
        assert_eq!(dotted_mask_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(dotted_mask_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(dotted_mask_len(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(dotted_mask_len(Ipv4Addr::new(0, 255, 255, 255)), None);
    }

    #[test]
    fn public_means_outside_private_multicast_and_special_purpose() {
        assert!(is_public(ip("1.1.1.1")));
        assert!(is_public(ip("2001:db8::1")));
        for private in [
            "10.0.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "239.255.255.255",
            "100.64.0.1",
            "240.0.0.1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for private in [
            "::1",
            "::",
            "::ffff:1.2.3.4",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
    }
}
