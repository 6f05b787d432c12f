//! The on-disk cache of a client's view (specs/04 §6.4).
//!
//! This is the crate's only IO, and it is local files only: the cache is part of the view's
//! contract (what is written is what is verified again on load), so it lives beside it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::descriptor::MAX_DESCRIPTOR_LEN;
use crate::err::DirectoryError;
use crate::view::{MAX_VIEW_RELAYS, NetworkView};

/// The eight bytes a cache file starts with.
pub const CACHE_MAGIC: [u8; 8] = *b"SHVIEW01";

/// Encodes the view's entries as a cache file body.
pub fn encode_cache(view: &NetworkView) -> Vec<u8> {
    let mut out = CACHE_MAGIC.to_vec();
    // The view is bounded by MAX_VIEW_RELAYS, far below u32::MAX.
    let count = u32::try_from(view.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for entry in view.entries().take(count as usize) {
        let bytes = entry.descriptor.as_bytes();
        out.extend_from_slice(&entry.first_seen.to_be_bytes());
        // Descriptors are at most MAX_DESCRIPTOR_LEN (4096) bytes, which fits in a u16.
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// Decodes a cache file body into `(descriptor bytes, first seen)` pairs, unverified: the
/// caller hands them to [`NetworkView::offer_all`], which verifies each one.
pub fn decode_cache(bytes: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, &'static str> {
    let rest = bytes.strip_prefix(&CACHE_MAGIC[..]).ok_or("bad magic")?;
    let (count, mut rest) = rest.split_first_chunk::<4>().ok_or("truncated count")?;
    let count = u32::from_be_bytes(*count) as usize;
    if count > MAX_VIEW_RELAYS {
        return Err("more entries than a view can hold");
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let (first_seen, tail) = rest.split_first_chunk::<8>().ok_or("truncated entry")?;
        let (len, tail) = tail.split_first_chunk::<2>().ok_or("truncated entry")?;
        let len = usize::from(u16::from_be_bytes(*len));
        if len > MAX_DESCRIPTOR_LEN || tail.len() < len {
            return Err("truncated or oversized descriptor");
        }
        let (descriptor, tail) = tail.split_at(len);
        entries.push((descriptor.to_vec(), u64::from_be_bytes(*first_seen)));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err("trailing bytes");
    }
    Ok(entries)
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

/// Reads the cache at `path`, verifying every descriptor again at `now` into `view`. Returns
/// how many entries were admitted. A missing file is an empty cache.
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
    let entries = decode_cache(&bytes).map_err(|reason| DirectoryError::CorruptCache {
        path: path.to_path_buf(),
        reason,
    })?;
    let admitted = view
        .offer_all(entries, now)
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
    use crate::view::ViewConfig;

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
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).expect("write");
        let mut loaded = NetworkView::new(ViewConfig::default());
        assert_eq!(load_cache(&path, &mut loaded, NOW).expect("load"), 2);
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
