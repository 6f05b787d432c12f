//! Which networks an address belongs to, for the view's Sybil caps (specs/04 §6.3) and the
//! path rules (specs/05 §3.2): an IPv4 /24 inside a /16, an IPv6 /48 inside a /32.
//!
//! An IPv6 address that only carries an IPv4 address counts as that IPv4 address, or one host
//! could sign the same machine under many "different" IPv6 networks and slip past the caps:
//! IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64's well-known prefix
//! (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::/48` for a.b.c.d) and Teredo
//! (`2001:0::/32`, the client's address in the last 32 bits, inverted).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `ip`, or the IPv4 address an IPv6 address embeds.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // IPv4-mapped.
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last32),
        // IPv4-compatible (deprecated), not :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(last32),
        // NAT64, RFC 6052's well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last32),
        // 6to4, RFC 3056: 2002:AABB:CCDD::/48.
        [0x2002, _, _, _, _, _, _, _] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        // Teredo, RFC 4380: 2001:0000::/32, the client's IPv4 address inverted in the last 32 bits.
        [0x2001, 0, _, _, _, _, _, _] => Some(Ipv4Addr::from(!u32::from(last32))),
        _ => None,
    }
}

/// The small network a cap counts: an IPv4 /24 or an IPv6 /48 (of the canonical address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subnet {
    /// The first three octets of an IPv4 address.
    V4([u8; 3]),
    /// The first six octets of an IPv6 address.
    V6([u8; 6]),
}

impl Subnet {
    /// The /24 or /48 of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }
}

/// The large network a cap and the path rule count: an IPv4 /16 or an IPv6 /32 (of the
/// canonical address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Block {
    /// The first two octets of an IPv4 address.
    V4([u8; 2]),
    /// The first four octets of an IPv6 address.
    V6([u8; 4]),
}

impl Block {
    /// The /16 or /32 of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self::V4([o[0], o[1]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self::V6([o[0], o[1], o[2], o[3]])
            }
        }
    }
}

/// The unit a per-address limit counts (specs/00 §4.4): one IPv4 address, or an IPv6 /64 (the
/// smallest network a home or a server is given, so a host cannot pick a fresh IPv6 address
/// per connection), of the canonical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first eight octets of an IPv6 address.
    V6([u8; 8]),
}

impl HostKey {
    /// The address or /64 of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv6_forms_that_carry_an_ipv4_address_count_as_it() {
        let table = [
            ("198.51.100.7", "198.51.100.7"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
            ("::198.51.100.7", "198.51.100.7"),
            ("64:ff9b::198.51.100.7", "198.51.100.7"),
            ("2002:c633:6407::1", "198.51.100.7"),
            // Teredo: 198.51.100.7 inverted is 57.204.155.248 = 0x39cc:0x9bf8.
            ("2001:0:4136:e378:8000:63bf:39cc:9bf8", "198.51.100.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("::1", "::1"),
            ("::", "::"),
        ];
        for (given, want) in table {
            assert_eq!(canonical_ip(ip(given)), ip(want), "{given}");
        }
    }

    #[test]
    fn one_host_behind_any_embedding_is_one_subnet_and_one_block() {
        let forms = [
            "198.51.100.7",
            "::ffff:198.51.100.7",
            "2002:c633:6407::1",
            "64:ff9b::c633:6407",
        ];
        for f in forms {
            assert_eq!(Subnet::of(ip(f)), Subnet::V4([198, 51, 100]), "{f}");
            assert_eq!(Block::of(ip(f)), Block::V4([198, 51]), "{f}");
        }
        assert_eq!(
            Subnet::of(ip("2001:db8:1:2::1")),
            Subnet::V6([0x20, 0x01, 0x0d, 0xb8, 0, 1])
        );
        assert_eq!(
            Block::of(ip("2001:db8:1:2::1")),
            Block::V6([0x20, 0x01, 0x0d, 0xb8])
        );
    }

    #[test]
    fn a_host_key_is_an_ipv4_address_or_an_ipv6_slash_64() {
        assert_eq!(
            HostKey::of(ip("2001:db8:1:2::1")),
            HostKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            HostKey::of(ip("2001:db8:1:2::1")),
            HostKey::of(ip("2001:db8:1:3::1"))
        );
        assert_ne!(
            HostKey::of(ip("198.51.100.7")),
            HostKey::of(ip("198.51.100.8"))
        );
        assert_eq!(
            HostKey::of(ip("::ffff:198.51.100.7")),
            HostKey::V4([198, 51, 100, 7])
        );
    }
}
