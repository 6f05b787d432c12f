//! The parts of a rule: decision, port range, and where the rule came from.

use std::fmt;

use crate::addr::IpPrefix;

/// What a rule, or a whole policy, decides for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The exit may open the connection.
    Accept,
    /// The exit must refuse the connection.
    Reject,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
        })
    }
}

/// An inclusive range of TCP ports. A rule's range may be empty: Tor reads the port `0` as the
/// range 1–0, which matches nothing (specs/06 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    min: u16,
    max: u16,
}

impl PortRange {
    /// Every port, 1–65535 (`*`).
    pub const ALL: PortRange = PortRange { min: 1, max: 65535 };

    /// The empty range Tor makes of the port `0`.
    pub(crate) const EMPTY: PortRange = PortRange { min: 1, max: 0 };

    /// The range `min..=max`, or `None` unless `1 <= min <= max`.
    pub const fn new(min: u16, max: u16) -> Option<Self> {
        if min >= 1 && min <= max {
            Some(PortRange { min, max })
        } else {
            None
        }
    }

    /// The lowest port.
    pub const fn min(&self) -> u16 {
        self.min
    }

    /// The highest port.
    pub const fn max(&self) -> u16 {
        self.max
    }

    /// Whether `port` is in the range.
    pub const fn contains(&self, port: u16) -> bool {
        self.min <= port && port <= self.max
    }

    /// Whether the range has no port.
    pub const fn is_empty(&self) -> bool {
        self.min > self.max
    }
}

impl fmt::Display for PortRange {
    /// `80` or `1-1023`, the summary's notation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// Why the reject-private prelude (specs/06 §6) refuses an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PreludeKind {
    /// One of Tor's `private` networks (specs/06 §4.1).
    Private,
    /// IPv4 multicast, 224.0.0.0/4 (specs/06 §4.2).
    Multicast,
    /// A range of IANA's special-purpose registries (specs/06 §4.2).
    SpecialPurpose,
    /// A 6to4 address that carries a non-public IPv4 address (specs/06 §4.2).
    EmbedsNonPublic,
    /// One of the relay's own addresses.
    OwnAddress,
}

/// One rule after expansion: `*` becomes an IPv4 and an IPv6 rule, `private` twelve rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) decision: Decision,
    pub(crate) prefix: IpPrefix,
    pub(crate) ports: PortRange,
    pub(crate) origin: Origin,
}

impl Rule {
    pub(crate) fn matches(&self, addr: std::net::IpAddr, port: u16) -> bool {
        self.ports.contains(port) && self.prefix.contains(addr)
    }
}

/// Where an expanded rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The policy file's rule at this index of the policy's source lines.
    Line(usize),
    /// The reject-private prelude.
    Prelude(PreludeKind),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(PortRange::new(0, 5), None);
        assert_eq!(PortRange::new(6, 5), None);
        let r = PortRange::new(80, 81).unwrap();
        assert!(r.contains(80) && r.contains(81) && !r.contains(79) && !r.contains(82));
        assert_eq!(r.to_string(), "80-81");
        assert_eq!(PortRange::new(443, 443).unwrap().to_string(), "443");
        assert!(PortRange::EMPTY.is_empty());
        assert!(!PortRange::EMPTY.contains(0) && !PortRange::EMPTY.contains(1));
        assert!(!PortRange::ALL.contains(0) && PortRange::ALL.contains(65535));
    }
}
