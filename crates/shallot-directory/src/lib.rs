#![doc = include_str!("../README.md")]

mod assemble;
mod cache;
mod clock;
mod descriptor;
mod dirproto;
mod dirstore;
mod err;
mod records;
mod subnet;
mod view;

pub use assemble::{
    AssemblyReport, Gathered, MAX_CANDIDATES, MAX_DOWN_CHECKS, MAX_DOWN_REPORTS,
    MAX_SOURCE_INVALID, MAX_SOURCE_STALE, MAX_VERDICTS, SourceListing, VERDICT_LIFETIME_SECS,
    Verdicts, assemble, gather,
};
pub use cache::{CACHE_MAGIC, CacheContents, decode_cache, encode_cache, load_cache, write_cache};
pub use clock::WallClock;
pub use descriptor::{
    DESCRIPTOR_LIFETIME_SECS, DESCRIPTOR_MAGIC, Descriptor, MAX_ADDR_LEN, MAX_ADDRS,
    MAX_CLOCK_SKEW_SECS, MAX_DESCRIPTOR_LEN, MAX_DESCRIPTOR_LIFETIME_SECS, MAX_FAMILY,
    MAX_POLICY_SUMMARY_LEN, PROTOCOL_CIRCUIT_V1, REPUBLISH_INTERVAL_SECS, RelayFlags,
    SignedDescriptor, ip_of, socket_of,
};
pub use dirproto::{
    AnnounceStatus, DIR_VERSION, DirRequest, DirResponse, ENTRY_OVERHEAD, LISTING_HEADER_LEN,
    Listing, ListingEntry, MAX_LISTING_ENTRIES, MAX_REQUEST_LEN, MAX_RESPONSE_LEN,
};
pub use dirstore::{
    DOWN_RECHECK_SECS, DirStore, LIVENESS_FAILURES_TO_DOWN, LIVENESS_RECHECK_SECS,
    LIVENESS_RETRY_SECS, MAX_DOWN, MAX_HEARD, MAX_PENDING_PER_BLOCK, MAX_PENDING_PER_SUBNET,
    MAX_PENDING_PROBES, MAX_REFUTED, MAX_STORE_ENTRIES, MAX_STORE_PER_BLOCK, MAX_STORE_PER_SUBNET,
    MAX_VOUCHED, Offered, Probe, Standing, StoreConfig, StoreEntry,
};
pub use err::DirectoryError;
pub use records::{
    DESCRIPTOR_KEY_PREFIX, RecordRefusal, descriptor_key, is_newer, peer_of_descriptor_key,
    validate_record,
};
pub use subnet::{Block, HostKey, Subnet, canonical_ip};
pub use view::{
    AddrSet, Admission, DEFAULT_MAX_RELAYS_PER_BLOCK, DEFAULT_MAX_RELAYS_PER_SUBNET,
    MAX_VIEW_RELAYS, NetworkView, SIGHTING_RETENTION_SECS, Sighting, ViewConfig, ViewEntry,
};
