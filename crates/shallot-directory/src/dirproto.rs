//! The directory protocol's messages (specs/04 §7), byte for byte: what a client or a relay asks
//! a relay for (a listing of the descriptors it holds, or only what changed since an earlier
//! listing), and how a relay offers its own fresh descriptor to others. Decoding never panics,
//! checks every length against the bounds below, and refuses trailing bytes.

use crate::descriptor::MAX_DESCRIPTOR_LEN;
use crate::err::DirectoryError;
use crate::view::AddrSet;

/// The protocol version in every message.
pub const DIR_VERSION: u8 = 2;
/// Most entries in one listing; a server with more sets [`Listing::more`] and the client asks
/// again from the last sequence number it got.
pub const MAX_LISTING_ENTRIES: usize = 4096;
/// Largest encoded request: an announcement of the largest descriptor.
pub const MAX_REQUEST_LEN: usize = 2 + 2 + MAX_DESCRIPTOR_LEN;
/// Largest encoded response (about 8,000 typical descriptors): a server stops adding entries
/// before a listing would grow past it, and a client reads no more of one answer.
pub const MAX_RESPONSE_LEN: usize = 2 * 1024 * 1024;
/// Bytes of a listing before its entries: version, kind, epoch, seq, flags, count.
pub const LISTING_HEADER_LEN: usize = 2 + 8 + 8 + 1 + 4;
/// Bytes an entry adds to its descriptor: FIRST_SEEN, PROVEN, the descriptor's length.
pub const ENTRY_OVERHEAD: usize = 8 + 1 + 2;

const KIND_LISTING: u8 = 1;
const KIND_ANNOUNCE: u8 = 2;

/// A request of the directory protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirRequest {
    /// The descriptors the server added after `since` in its epoch `epoch` (`epoch` 0, or
    /// another epoch than the server's: all of them).
    Listing {
        /// The server's epoch the client last saw (0: none).
        epoch: u64,
        /// The last sequence number the client got in that epoch.
        since: u64,
    },
    /// The sender's own descriptor, freshly signed (encoded bytes).
    Announce(Vec<u8>),
}

/// One descriptor of a listing, with what the server knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingEntry {
    /// When the server first held the relay (Unix seconds).
    pub first_seen: u64,
    /// The descriptor's addresses the server proved (dialed, and authenticated the PeerId).
    pub proven: AddrSet,
    /// The descriptor (encoded, not yet verified by the receiver).
    pub descriptor: Vec<u8>,
}

/// A listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    /// The server's epoch: a random number it picked at start.
    pub epoch: u64,
    /// The sequence number of the last entry in this listing (or the server's current one).
    pub seq: u64,
    /// The entries are everything the server holds (a full listing, not changes).
    pub full: bool,
    /// There are more entries after these: ask again since `seq`.
    pub more: bool,
    /// The entries, in the server's sequence order.
    pub entries: Vec<ListingEntry>,
}

/// What a server says to an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceStatus {
    /// Taken: the server will prove its addresses and then list it.
    Accepted,
    /// The server holds this descriptor or a newer one.
    Unchanged,
    /// Not a valid descriptor (signature, fields, time).
    Invalid,
    /// Not the descriptor of the peer that sent it.
    NotOwn,
    /// The server takes no more announcements now (its bounds are reached).
    Busy,
}

/// A response of the directory protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirResponse {
    /// The answer to [`DirRequest::Listing`].
    Listing(Listing),
    /// The answer to [`DirRequest::Announce`].
    Announce(AnnounceStatus),
}

impl AnnounceStatus {
    fn code(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Unchanged => 1,
            Self::Invalid => 2,
            Self::NotOwn => 3,
            Self::Busy => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Accepted,
            1 => Self::Unchanged,
            2 => Self::Invalid,
            3 => Self::NotOwn,
            4 => Self::Busy,
            _ => return None,
        })
    }
}

fn bad(what: &'static str) -> DirectoryError {
    DirectoryError::BadMessage(what)
}

/// A cursor over bytes being decoded.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DirectoryError> {
        if self.0.len() < n {
            return Err(bad(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DirectoryError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DirectoryError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DirectoryError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DirectoryError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn descriptor(&mut self) -> Result<Vec<u8>, DirectoryError> {
        let len = usize::from(self.u16("descriptor length")?);
        if len == 0 || len > MAX_DESCRIPTOR_LEN {
            return Err(bad("descriptor length out of range"));
        }
        Ok(self.take(len, "descriptor")?.to_vec())
    }

    fn header(&mut self) -> Result<u8, DirectoryError> {
        if self.u8("version")? != DIR_VERSION {
            return Err(bad("unknown directory protocol version"));
        }
        self.u8("kind")
    }

    fn end(&self) -> Result<(), DirectoryError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes"))
        }
    }
}

fn put_descriptor(out: &mut Vec<u8>, d: &[u8]) -> Result<(), DirectoryError> {
    let len = u16::try_from(d.len())
        .ok()
        .filter(|l| *l > 0 && usize::from(*l) <= MAX_DESCRIPTOR_LEN)
        .ok_or(bad("descriptor length out of range"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(d);
    Ok(())
}

impl DirRequest {
    /// The request's bytes (specs/04 §7.2).
    pub fn encode(&self) -> Result<Vec<u8>, DirectoryError> {
        let mut out = vec![DIR_VERSION];
        match self {
            Self::Listing { epoch, since } => {
                out.push(KIND_LISTING);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(&since.to_be_bytes());
            }
            Self::Announce(d) => {
                out.push(KIND_ANNOUNCE);
                put_descriptor(&mut out, d)?;
            }
        }
        Ok(out)
    }

    /// Decodes a request from a peer (remote input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DirectoryError> {
        if bytes.len() > MAX_REQUEST_LEN {
            return Err(DirectoryError::MessageTooLong {
                len: bytes.len(),
                max: MAX_REQUEST_LEN,
            });
        }
        let mut r = Reader(bytes);
        let request = match r.header()? {
            KIND_LISTING => Self::Listing {
                epoch: r.u64("epoch")?,
                since: r.u64("since")?,
            },
            KIND_ANNOUNCE => Self::Announce(r.descriptor()?),
            _ => return Err(bad("unknown request kind")),
        };
        r.end()?;
        Ok(request)
    }
}

impl DirResponse {
    /// The response's bytes (specs/04 §7.3).
    pub fn encode(&self) -> Result<Vec<u8>, DirectoryError> {
        let mut out = vec![DIR_VERSION];
        match self {
            Self::Listing(l) => {
                let len = LISTING_HEADER_LEN
                    + l.entries
                        .iter()
                        .map(|e| ENTRY_OVERHEAD + e.descriptor.len())
                        .sum::<usize>();
                if l.entries.len() > MAX_LISTING_ENTRIES || len > MAX_RESPONSE_LEN {
                    return Err(bad("listing past its bounds"));
                }
                out.push(KIND_LISTING);
                out.extend_from_slice(&l.epoch.to_be_bytes());
                out.extend_from_slice(&l.seq.to_be_bytes());
                out.push(u8::from(l.full) | (u8::from(l.more) << 1));
                out.extend_from_slice(&(l.entries.len() as u32).to_be_bytes());
                for e in &l.entries {
                    out.extend_from_slice(&e.first_seen.to_be_bytes());
                    out.push(e.proven.0);
                    put_descriptor(&mut out, &e.descriptor)?;
                }
            }
            Self::Announce(status) => {
                out.push(KIND_ANNOUNCE);
                out.push(status.code());
            }
        }
        Ok(out)
    }

    /// Decodes a response from a peer (remote input).
    pub fn decode(bytes: &[u8]) -> Result<Self, DirectoryError> {
        if bytes.len() > MAX_RESPONSE_LEN {
            return Err(DirectoryError::MessageTooLong {
                len: bytes.len(),
                max: MAX_RESPONSE_LEN,
            });
        }
        let mut r = Reader(bytes);
        let response = match r.header()? {
            KIND_LISTING => {
                let epoch = r.u64("epoch")?;
                let seq = r.u64("seq")?;
                let flags = r.u8("flags")?;
                if flags & !0b11 != 0 {
                    return Err(bad("unknown listing flags"));
                }
                let n = r.u32("entry count")? as usize;
                if n > MAX_LISTING_ENTRIES {
                    return Err(bad("too many listing entries"));
                }
                let mut entries = Vec::with_capacity(n.min(r.0.len() / (ENTRY_OVERHEAD + 1)));
                for _ in 0..n {
                    entries.push(ListingEntry {
                        first_seen: r.u64("first seen")?,
                        proven: AddrSet(r.u8("proven")?),
                        descriptor: r.descriptor()?,
                    });
                }
                Self::Listing(Listing {
                    epoch,
                    seq,
                    full: flags & 1 != 0,
                    more: flags & 2 != 0,
                    entries,
                })
            }
            KIND_ANNOUNCE => {
                let code = r.u8("status")?;
                Self::Announce(
                    AnnounceStatus::from_code(code).ok_or(bad("unknown announce status"))?,
                )
            }
            _ => return Err(bad("unknown response kind")),
        };
        r.end()?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> Listing {
        Listing {
            epoch: 0x0102_0304_0506_0708,
            seq: 42,
            full: true,
            more: false,
            entries: vec![
                ListingEntry {
                    first_seen: 1_700_000_000,
                    proven: AddrSet(0b101),
                    descriptor: vec![0xAA; 300],
                },
                ListingEntry {
                    first_seen: 1_700_000_001,
                    proven: AddrSet::NONE,
                    descriptor: vec![0xBB; 1],
                },
            ],
        }
    }

    #[test]
    fn requests_and_responses_round_trip_and_have_fixed_bytes() {
        let req = DirRequest::Listing { epoch: 7, since: 9 };
        let bytes = req.encode().expect("encode");
        assert_eq!(
            hex::encode(&bytes),
            concat!("0201", "0000000000000007", "0000000000000009")
        );
        assert_eq!(DirRequest::decode(&bytes).expect("decode"), req);
        let ann = DirRequest::Announce(vec![1, 2, 3]);
        let bytes = ann.encode().expect("encode");
        assert_eq!(hex::encode(&bytes), "02020003010203");
        assert_eq!(DirRequest::decode(&bytes).expect("decode"), ann);
        let resp = DirResponse::Listing(listing());
        let bytes = resp.encode().expect("encode");
        let mut head = vec![2, 1];
        head.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        head.extend_from_slice(&42u64.to_be_bytes());
        head.push(1);
        head.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(&bytes[..LISTING_HEADER_LEN], &head[..]);
        assert_eq!(
            &bytes[LISTING_HEADER_LEN..LISTING_HEADER_LEN + 11],
            &hex::decode("000000006553f1000501 2c".replace(' ', "")).expect("hex")[..]
        );
        assert_eq!(DirResponse::decode(&bytes).expect("decode"), resp);
        for status in [
            AnnounceStatus::Accepted,
            AnnounceStatus::Unchanged,
            AnnounceStatus::Invalid,
            AnnounceStatus::NotOwn,
            AnnounceStatus::Busy,
        ] {
            let r = DirResponse::Announce(status);
            assert_eq!(
                DirResponse::decode(&r.encode().expect("encode")).expect("decode"),
                r
            );
        }
    }

    #[test]
    fn malformed_input_is_refused_with_a_reason() {
        let good = DirResponse::Listing(listing()).encode().expect("encode");
        for cut in 0..good.len() {
            assert!(DirResponse::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(DirResponse::decode(&trailing).is_err());
        let mut wrong_version = good.clone();
        wrong_version[0] = 1;
        assert!(DirResponse::decode(&wrong_version).is_err());
        let mut flags = good.clone();
        flags[18] = 0x80;
        assert!(DirResponse::decode(&flags).is_err());
        // An entry count past the bound is refused before anything is allocated for it.
        let mut huge = good[..19].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(DirResponse::decode(&huge).is_err());
        assert!(DirRequest::decode(&[2, 9]).is_err(), "unknown kind");
        assert!(
            DirRequest::decode(&[2, 2, 0, 0]).is_err(),
            "empty descriptor"
        );
        let too_long = vec![0u8; MAX_REQUEST_LEN + 1];
        assert!(matches!(
            DirRequest::decode(&too_long),
            Err(DirectoryError::MessageTooLong { .. })
        ));
    }

    fn entries(n: usize, len: usize) -> Vec<ListingEntry> {
        vec![
            ListingEntry {
                first_seen: 1,
                proven: AddrSet::ALL,
                descriptor: vec![0; len],
            };
            n
        ]
    }

    #[test]
    fn listings_are_bounded_in_entries_and_in_bytes() {
        let fits = (MAX_RESPONSE_LEN - LISTING_HEADER_LEN) / (ENTRY_OVERHEAD + MAX_DESCRIPTOR_LEN);
        let at_bytes = Listing {
            entries: entries(fits, MAX_DESCRIPTOR_LEN),
            ..Listing::default()
        };
        let bytes = DirResponse::Listing(at_bytes).encode().expect("encode");
        assert!(bytes.len() <= MAX_RESPONSE_LEN);
        assert!(DirResponse::decode(&bytes).is_ok());
        let past_bytes = Listing {
            entries: entries(fits + 1, MAX_DESCRIPTOR_LEN),
            ..Listing::default()
        };
        assert!(DirResponse::Listing(past_bytes).encode().is_err());
        let at_count = Listing {
            entries: entries(MAX_LISTING_ENTRIES, 1),
            ..Listing::default()
        };
        assert!(DirResponse::Listing(at_count).encode().is_ok());
        let past_count = Listing {
            entries: entries(MAX_LISTING_ENTRIES + 1, 1),
            ..Listing::default()
        };
        assert!(DirResponse::Listing(past_count).encode().is_err());
        let mut oversized = vec![2, 1];
        oversized.resize(MAX_RESPONSE_LEN + 1, 0);
        assert!(matches!(
            DirResponse::decode(&oversized),
            Err(DirectoryError::MessageTooLong { .. })
        ));
    }
}
