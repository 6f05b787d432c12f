//! The on-disk cache of a client's view (specs/04 §6.4).
//!
//! This is the crate's only IO, and it is local files only: the cache is part of the view's
//! contract (what is written is what is verified again on load), so it lives beside it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p_identity::PeerId;

use crate::descriptor::MAX_DESCRIPTOR_LEN;
use crate::err::DirectoryError;
use crate::view::{MAX_VIEW_RELAYS, NetworkView, Sighting};

/// The eight bytes a cache file starts with.
pub const CACHE_MAGIC: [u8; 8] = *b"SHVIEW02";
/// The first version's magic: entries only, no sightings. Still read.
const CACHE_MAGIC_V1: [u8; 8] = *b"SHVIEW01";
/// The longest PeerId a sighting may name (an identity multihash of a public key).
const MAX_PEER_ID_LEN: usize = 64;

/// A cache file's contents, not verified yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheContents {
    /// `(descriptor bytes, first seen)` of the relays the view held: the caller hands them to
    /// [`NetworkView::offer_all`], which verifies each one.
    pub entries: Vec<(Vec<u8>, u64)>,
    /// Relays that had left the view, with when they were first seen (specs/04 §6.5).
    pub sightings: Vec<(PeerId, Sighting)>,
}

/// Encodes the view's entries and sightings as a cache file body (specs/04 §6.4).
pub fn encode_cache(view: &NetworkView) -> Vec<u8> {
    let mut out = CACHE_MAGIC.to_vec();
    // The view and its sightings are bounded by MAX_VIEW_RELAYS, far below u32::MAX.
    let count = u32::try_from(view.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for entry in view.entries().take(count as usize) {
        let bytes = entry.descriptor.as_bytes();
        out.extend_from_slice(&entry.first_seen.to_be_bytes());
        // Descriptors are at most MAX_DESCRIPTOR_LEN (4096) bytes, which fits in a u16.
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let sightings: Vec<(Vec<u8>, &Sighting)> = view
        .departed()
        .map(|(peer, sighting)| (peer.to_bytes(), sighting))
        .filter(|(peer, _)| peer.len() <= MAX_PEER_ID_LEN)
        .take(MAX_VIEW_RELAYS)
        .collect();
    out.extend_from_slice(&(sightings.len() as u32).to_be_bytes());
    for (peer, sighting) in sightings {
        out.push(peer.len() as u8);
        out.extend_from_slice(&peer);
        out.extend_from_slice(&sighting.first_seen.to_be_bytes());
        out.extend_from_slice(&sighting.last_valid.to_be_bytes());
    }
    out
}

/// Decodes a cache file body, unverified (specs/04 §6.4); a first-version file has no
/// sightings.
pub fn decode_cache(bytes: &[u8]) -> Result<CacheContents, &'static str> {
    let (with_sightings, rest) = if let Some(rest) = bytes.strip_prefix(&CACHE_MAGIC[..]) {
        (true, rest)
    } else if let Some(rest) = bytes.strip_prefix(&CACHE_MAGIC_V1[..]) {
        (false, rest)
    } else {
        return Err("bad magic");
    };
    let (count, mut rest) = take_count(rest)?;
    let mut contents = CacheContents {
        entries: Vec::with_capacity(count),
        sightings: Vec::new(),
    };
    for _ in 0..count {
        let (first_seen, tail) = take_u64(rest)?;
        let (len, tail) = tail.split_first_chunk::<2>().ok_or("truncated entry")?;
        let len = usize::from(u16::from_be_bytes(*len));
        if len > MAX_DESCRIPTOR_LEN || tail.len() < len {
            return Err("truncated or oversized descriptor");
        }
        let (descriptor, tail) = tail.split_at(len);
        contents.entries.push((descriptor.to_vec(), first_seen));
        rest = tail;
    }
    if with_sightings {
        let (count, mut tail) = take_count(rest)?;
        contents.sightings.reserve(count);
        for _ in 0..count {
            let (len, after) = tail.split_first().ok_or("truncated sighting")?;
            let len = usize::from(*len);
            if len > MAX_PEER_ID_LEN || after.len() < len {
                return Err("truncated or oversized PeerId");
            }
            let (peer, after) = after.split_at(len);
            let peer = PeerId::from_bytes(peer).map_err(|_| "malformed PeerId")?;
            let (first_seen, after) = take_u64(after)?;
            let (last_valid, after) = take_u64(after)?;
            let sighting = Sighting {
                first_seen,
                last_valid,
            };
            contents.sightings.push((peer, sighting));
            tail = after;
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err("trailing bytes");
    }
    Ok(contents)
}

/// A count of at most [`MAX_VIEW_RELAYS`] items.
fn take_count(bytes: &[u8]) -> Result<(usize, &[u8]), &'static str> {
    let (count, rest) = bytes.split_first_chunk::<4>().ok_or("truncated count")?;
    let count = u32::from_be_bytes(*count) as usize;
    if count > MAX_VIEW_RELAYS {
        return Err("more entries than a view can hold");
    }
    Ok((count, rest))
}

fn take_u64(bytes: &[u8]) -> Result<(u64, &[u8]), &'static str> {
    let (value, rest) = bytes.split_first_chunk::<8>().ok_or("truncated entry")?;
    Ok((u64::from_be_bytes(*value), rest))
}

/// Writes the view to `path` atomically: a temporary file in the same directory, flushed and
/// synced, then renamed over the old file, so a crash leaves the old cache or the new one.
pub fn write_cache(path: &Path, view: &NetworkView) -> Result<(), DirectoryError> {
    let io_err = |source| DirectoryError::Cache {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temporary_path(path);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&encode_cache(view))?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Persist the rename itself; not every platform can open a directory, so best effort.
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Reads the cache at `path`, verifying every descriptor again at `now` into `view`, and
/// restores the sightings still within [`crate::SIGHTING_RETENTION_SECS`]. Returns how many entries
/// were admitted. A missing file is an empty cache.
pub fn load_cache(path: &Path, view: &mut NetworkView, now: u64) -> Result<usize, DirectoryError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(DirectoryError::Cache {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let contents = decode_cache(&bytes).map_err(|reason| DirectoryError::CorruptCache {
        path: path.to_path_buf(),
        reason,
    })?;
    for (peer, sighting) in contents.sightings {
        if sighting.kept_at(now) {
            view.remember(peer, sighting);
        }
    }
    let admitted = view
        .offer_all(contents.entries, now)
        .into_iter()
        .filter(|(admission, err)| {
            err.is_none() && matches!(admission, crate::view::Admission::Added)
        })
        .count();
    Ok(admitted)
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use libp2p_identity::ed25519;

    use super::*;
    use crate::descriptor::tests::{NOW, sample};
    use crate::view::{SIGHTING_RETENTION_SECS, ViewConfig};

    fn view_with(n: u8) -> NetworkView {
        let mut view = NetworkView::new(ViewConfig::default());
        for i in 0..n {
            let keypair = ed25519::Keypair::generate();
            let signed = sample(&keypair, &format!("/ip4/127.0.{i}.1/tcp/1"))
                .sign(&keypair)
                .expect("sign");
            view.offer(signed, u64::from(i));
        }
        view
    }

    #[test]
    fn cache_round_trips_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("view.cache");
        let view = view_with(5);
        write_cache(&path, &view).expect("write");
        let mut loaded = NetworkView::new(ViewConfig::default());
        assert_eq!(load_cache(&path, &mut loaded, NOW).expect("load"), 5);
        for entry in view.entries() {
            let peer = entry.descriptor.peer_id();
            assert_eq!(loaded.get(&peer), Some(entry));
        }
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("view.cache")]);
    }

    #[test]
    fn loaded_entries_are_verified_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("view.cache");
        write_cache(&path, &view_with(3)).expect("write");
        let mut loaded = NetworkView::new(ViewConfig::default());
        // Everything has expired by then.
        assert_eq!(
            load_cache(&path, &mut loaded, NOW + 86_400).expect("load"),
            0
        );
        // A tampered descriptor is refused, the others still load.
        let mut bytes = fs::read(&path).expect("read");
        // The last descriptor's last byte, before the (empty) sightings' count.
        let last = bytes.len() - 1 - 4;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).expect("write");
        let mut loaded = NetworkView::new(ViewConfig::default());
        assert_eq!(load_cache(&path, &mut loaded, NOW).expect("load"), 2);
    }

    /// A client that was off for longer than a descriptor lives loads only expired
    /// descriptors; it still knows when it first saw those relays once they are back.
    #[test]
    fn first_seen_survives_a_restart_after_every_descriptor_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("view.cache");
        let keypair = ed25519::Keypair::generate();
        let old = sample(&keypair, "/ip4/192.0.2.1/tcp/1");
        let peer = old.peer_id();
        let mut view = NetworkView::new(ViewConfig::default());
        view.offer(old.sign(&keypair).expect("sign"), NOW - 9 * 86_400);
        write_cache(&path, &view).expect("write");

        let restart = NOW + 2 * 86_400;
        let mut loaded = NetworkView::new(ViewConfig::default());
        assert_eq!(load_cache(&path, &mut loaded, restart).expect("load"), 0);
        // Written again before the relay is back: the sighting stays in the file.
        write_cache(&path, &loaded).expect("write");
        let mut reloaded = NetworkView::new(ViewConfig::default());
        load_cache(&path, &mut reloaded, restart).expect("load");
        let mut back = old.clone();
        back.published_at = restart;
        back.expires_at = restart + 3600;
        reloaded.offer(back.sign(&keypair).expect("sign"), restart);
        assert_eq!(
            reloaded.get(&peer).expect("back").first_seen,
            NOW - 9 * 86_400
        );

        // Past the retention the sighting is not restored.
        let much_later = NOW + SIGHTING_RETENTION_SECS + 86_400;
        let mut forgotten = NetworkView::new(ViewConfig::default());
        load_cache(&path, &mut forgotten, much_later).expect("load");
        assert_eq!(forgotten.departed().count(), 0);
    }

    #[test]
    fn sightings_round_trip_and_first_version_caches_still_load() {
        let mut view = view_with(2);
        let sighting = Sighting {
            first_seen: 7,
            last_valid: NOW,
        };
        let gone = PeerId::random();
        view.remember(gone, sighting);
        let contents = decode_cache(&encode_cache(&view)).expect("decode");
        assert_eq!(contents.entries.len(), 2);
        assert_eq!(contents.sightings, vec![(gone, sighting)]);

        let mut v1 = b"SHVIEW01".to_vec();
        v1.extend_from_slice(&1u32.to_be_bytes());
        let entry = view.entries().next().expect("entry");
        v1.extend_from_slice(&entry.first_seen.to_be_bytes());
        let bytes = entry.descriptor.as_bytes();
        v1.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        v1.extend_from_slice(bytes);
        let contents = decode_cache(&v1).expect("decode v1");
        assert_eq!(contents.entries, vec![(bytes.to_vec(), entry.first_seen)]);
        assert!(contents.sightings.is_empty());
    }

    #[test]
    fn missing_cache_is_empty_and_corrupt_cache_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent");
        let mut view = NetworkView::new(ViewConfig::default());
        assert_eq!(load_cache(&path, &mut view, NOW).expect("load"), 0);
        fs::write(&path, b"SHVIEW01\0\0\0\x05").expect("write");
        assert!(matches!(
            load_cache(&path, &mut view, NOW),
            Err(DirectoryError::CorruptCache { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_cache_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_cache(&bytes);
            let mut with_magic = CACHE_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_cache(&with_magic);
        }
    }
}
