//! HOST: a hostname or an IP address, as BEGIN, CONNECTED and RESOLVE carry it. specs/03 §5.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::CellError;
use crate::reader::{Reader, Writer};

/// HOST TYPE values. specs/03 §5.
pub mod host_type {
    /// A hostname (ASCII, 1..=255 bytes).
    pub const NAME: u8 = 0;
    /// An IPv4 address (LEN 4).
    pub const V4: u8 = 4;
    /// An IPv6 address (LEN 16).
    pub const V6: u8 = 6;
}

/// Longest hostname, in bytes. specs/03 §5.1.
pub const MAX_HOSTNAME_LEN: usize = 255;

/// A destination: `TYPE [1] | LEN [1] | VALUE [LEN]`. specs/03 §5.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A hostname, resolved by the exit; valid per [`check_hostname`].
    Name(String),
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address.
    V6(Ipv6Addr),
}

impl Host {
    /// The HOST TYPE value.
    #[must_use]
    pub fn host_type(&self) -> u8 {
        match self {
            Self::Name(_) => host_type::NAME,
            Self::V4(_) => host_type::V4,
            Self::V6(_) => host_type::V6,
        }
    }

    /// Encoded length: 2 + LEN.
    pub(crate) fn encoded_len(&self) -> usize {
        2 + match self {
            Self::Name(n) => n.len(),
            Self::V4(_) => 4,
            Self::V6(_) => 16,
        }
    }

    /// Checks the value is encodable (a valid hostname).
    pub(crate) fn validate(&self) -> Result<(), CellError> {
        match self {
            Self::Name(n) => check_hostname(n.as_bytes()),
            Self::V4(_) | Self::V6(_) => Ok(()),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), CellError> {
        match self {
            Self::Name(n) => {
                let len = hostname_len(n.as_bytes())?;
                w.u8(host_type::NAME)?;
                w.u8(len)?;
                w.put(n.as_bytes())
            }
            Self::V4(a) => {
                w.u8(host_type::V4)?;
                w.u8(4)?;
                w.put(&a.octets())
            }
            Self::V6(a) => {
                w.u8(host_type::V6)?;
                w.u8(16)?;
                w.put(&a.octets())
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, CellError> {
        let t = r.u8()?;
        let len = r.u8()?;
        if !matches!(t, host_type::NAME | host_type::V4 | host_type::V6) {
            return Err(CellError::BadHostType(t));
        }
        let value = r.take(usize::from(len))?;
        host_from_parts(t, value).map_err(|e| match e {
            CellError::BadAnswerLength { answer_type, len } => CellError::BadHostLength {
                host_type: answer_type,
                len,
            },
            other => other,
        })
    }
}

/// Builds a host from TYPE and VALUE (shared with RESOLVED answers); length errors are reported
/// as [`CellError::BadAnswerLength`] and mapped by the caller.
pub(crate) fn host_from_parts(t: u8, value: &[u8]) -> Result<Host, CellError> {
    let bad_len = || CellError::BadAnswerLength {
        answer_type: t,
        len: value.len(),
    };
    match t {
        host_type::NAME => Ok(Host::Name(hostname_from_bytes(value)?)),
        host_type::V4 => {
            let octets: [u8; 4] = value.try_into().map_err(|_| bad_len())?;
            Ok(Host::V4(Ipv4Addr::from(octets)))
        }
        host_type::V6 => {
            let octets: [u8; 16] = value.try_into().map_err(|_| bad_len())?;
            Ok(Host::V6(Ipv6Addr::from(octets)))
        }
        other => Err(CellError::BadHostType(other)),
    }
}

/// Checks the hostname rule of specs/03 §5.1: 1..=255 bytes, each ASCII and not a control
/// character (0x00–0x1F, 0x7F).
pub fn check_hostname(name: &[u8]) -> Result<(), CellError> {
    if name.is_empty() {
        return Err(CellError::BadHostname { reason: "empty" });
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(CellError::BadHostname {
            reason: "longer than 255 bytes",
        });
    }
    if let Some(&b) = name.iter().find(|b| !b.is_ascii() || b.is_ascii_control()) {
        return Err(CellError::BadHostname {
            reason: if b == 0 {
                "contains a NUL byte"
            } else if b.is_ascii() {
                "contains a control character"
            } else {
                "contains a non-ASCII byte"
            },
        });
    }
    Ok(())
}

/// Validates and returns the LEN byte of a hostname.
pub(crate) fn hostname_len(name: &[u8]) -> Result<u8, CellError> {
    check_hostname(name)?;
    u8::try_from(name.len()).map_err(|_| CellError::BadHostname {
        reason: "longer than 255 bytes",
    })
}

/// Validates remote hostname bytes and makes a `String` of them.
pub(crate) fn hostname_from_bytes(value: &[u8]) -> Result<String, CellError> {
    check_hostname(value)?;
    // Printable ASCII is valid UTF-8; the error arm cannot happen after the check.
    String::from_utf8(value.to_vec()).map_err(|_| CellError::BadHostname {
        reason: "contains a non-ASCII byte",
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hostname_rules() {
        assert!(check_hostname(b"example.com").is_ok());
        assert!(check_hostname(b"with space.example").is_ok());
        assert!(check_hostname(&[b'a'; 255]).is_ok());
        assert!(check_hostname(&[b'a'; 256]).is_err());
        assert!(check_hostname(b"").is_err());
        assert!(check_hostname(b"a\0b").is_err());
        assert!(check_hostname(b"a\nb").is_err());
        assert!(check_hostname(b"a\x7fb").is_err());
        assert!(check_hostname("exämple.com".as_bytes()).is_err());
    }
}
