//! The relay's key files: its identity (libp2p Ed25519, protobuf encoding) and its onion keys
//! (x25519, current and previous, 32 raw bytes each), in the data directory.
//!
//! Files are written 0600 through a temporary file in the same directory, synced, then renamed
//! over the old one, so a crash leaves the old key or the new one, never half of either. Secret
//! bytes read or written here sit in zeroizing buffers and are never logged.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use libp2p::identity::Keypair;
use shallot_crypto::{OnionKeyRing, OnionSecretKey};
use shallot_directory::{MAX_CLOCK_SKEW_SECS, MAX_DESCRIPTOR_LIFETIME_SECS};
use shallot_p2p::PeerId;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::err::RelayError;

/// The identity key file in the data directory.
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// The current onion key file in the data directory.
pub const ONION_KEY_FILE: &str = "onion.key";
/// The previous onion key file (present after a rotation).
pub const PREVIOUS_ONION_KEY_FILE: &str = "onion.key.previous";
/// Length of an onion key file.
const ONION_KEY_LEN: usize = 32;
/// A key file larger than this is not a key (bounds what a corrupt file makes us read).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// The keys a relay runs with.
pub(crate) struct RelayKeys {
    /// The libp2p identity (Ed25519); its PeerId names the relay.
    pub(crate) identity: Keypair,
    /// The onion keys.
    pub(crate) onion: OnionKeyRing,
    /// When the current onion key was made (the file's modification time).
    pub(crate) onion_created: SystemTime,
    /// When the previous onion key is to be dropped ([`previous_key_expiry`]), if there is one.
    pub(crate) previous_until: Option<SystemTime>,
}

/// When a previous onion key must go: the last descriptor naming it as current was published
/// just before the rotation at `rotated_at`, and readers whose clocks run up to
/// `MAX_CLOCK_SKEW` behind accept it until `lifetime` plus that skew later (specs/02 §2.2,
/// specs/04 §4).
pub(crate) fn previous_key_expiry(rotated_at: SystemTime, lifetime: Duration) -> SystemTime {
    rotated_at + lifetime + Duration::from_secs(MAX_CLOCK_SKEW_SECS)
}

/// Creates the relay's keys in `dir` if they are missing (the identity key and a current onion
/// key) and returns the relay's PeerId. Existing keys are loaded and checked, never replaced.
/// `shallot keygen --dir DIR` calls this.
pub fn keygen(dir: &Path) -> Result<PeerId, RelayError> {
    // keygen does not know the relay's lifetime: only a previous key that even the longest
    // lifetime a reader accepts has outlived is dropped here.
    let keys = load_or_create(dir, Duration::from_secs(MAX_DESCRIPTOR_LIFETIME_SECS))?;
    Ok(keys.identity.public().to_peer_id())
}

/// Loads the keys from `dir`, creating the directory (0700) and any missing key. A previous
/// onion key whose descriptors (of `lifetime`) have all expired is deleted, not loaded.
pub(crate) fn load_or_create(dir: &Path, lifetime: Duration) -> Result<RelayKeys, RelayError> {
    create_dir(dir)?;
    let id_path = dir.join(IDENTITY_KEY_FILE);
    let identity =
        match read_secret(&id_path)? {
            Some(bytes) => {
                let kp =
                    Keypair::from_protobuf_encoding(&bytes).map_err(|_| RelayError::KeyFormat {
                        path: id_path.clone(),
                        what: "not a libp2p protobuf-encoded keypair".into(),
                    })?;
                if kp.clone().try_into_ed25519().is_err() {
                    return Err(RelayError::KeyFormat {
                        path: id_path,
                        what: "not an Ed25519 keypair".into(),
                    });
                }
                kp
            }
            None => {
                let kp = Keypair::generate_ed25519();
                let bytes = Zeroizing::new(kp.to_protobuf_encoding().map_err(|_| {
                    RelayError::KeyFormat {
                        path: id_path.clone(),
                        what: "cannot encode the new keypair".into(),
                    }
                })?);
                write_secret(&id_path, &bytes)?;
                info!(peer_id = %kp.public().to_peer_id(), "created a new relay identity");
                kp
            }
        };
    let onion_path = dir.join(ONION_KEY_FILE);
    let current = match read_onion(&onion_path)? {
        Some(k) => k,
        None => {
            let k = OnionSecretKey::generate();
            write_secret(&onion_path, k.to_bytes().as_slice())?;
            info!("created a new onion key");
            k
        }
    };
    let onion_created = fs::metadata(&onion_path)
        .and_then(|m| m.modified())
        .map_err(|source| RelayError::KeyIo {
            path: onion_path.clone(),
            source,
        })?;
    let previous_path = dir.join(PREVIOUS_ONION_KEY_FILE);
    let expiry = previous_key_expiry(onion_created, lifetime);
    let previous = match read_onion(&previous_path)? {
        Some(_) if expiry <= SystemTime::now() => {
            remove_secret(&previous_path)?;
            info!("deleted the previous onion key: every descriptor naming it has expired");
            None
        }
        other => other,
    };
    let (onion, previous_until) = match previous {
        Some(previous) => {
            let mut ring = OnionKeyRing::new(previous);
            ring.rotate(current);
            (ring, Some(expiry))
        }
        None => (OnionKeyRing::new(current), None),
    };
    Ok(RelayKeys {
        identity,
        onion,
        onion_created,
        previous_until,
    })
}

/// Drops the previous onion key from `ring` and deletes its file (specs/02 §2.2). The key
/// leaves memory even if the file cannot be deleted (the error says so; the next start deletes
/// it).
pub(crate) fn drop_previous_onion(dir: &Path, ring: &mut OnionKeyRing) -> Result<(), RelayError> {
    ring.forget_previous();
    remove_secret(&dir.join(PREVIOUS_ONION_KEY_FILE))
}

/// Deletes a key file; one that is already gone is fine.
fn remove_secret(path: &Path) -> Result<(), RelayError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RelayError::KeyIo {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Rotates the onion keys on disk and in `ring`: the current key becomes the previous one and a
/// fresh key becomes current (specs/04 §4). Returns the new key's creation time.
pub(crate) fn rotate_onion(dir: &Path, ring: &mut OnionKeyRing) -> Result<SystemTime, RelayError> {
    let next = OnionSecretKey::generate();
    let current_path = dir.join(ONION_KEY_FILE);
    // Previous first: a crash between the two writes leaves current == previous, harmless.
    if let Some(current) = read_onion(&current_path)? {
        write_secret(
            &dir.join(PREVIOUS_ONION_KEY_FILE),
            current.to_bytes().as_slice(),
        )?;
    }
    write_secret(&current_path, next.to_bytes().as_slice())?;
    ring.rotate(next);
    Ok(SystemTime::now())
}

fn create_dir(dir: &Path) -> Result<(), RelayError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| RelayError::KeyIo {
        path: dir.to_owned(),
        source,
    })
}

fn read_onion(path: &Path) -> Result<Option<OnionSecretKey>, RelayError> {
    let Some(bytes) = read_secret(path)? else {
        return Ok(None);
    };
    let arr: Zeroizing<[u8; ONION_KEY_LEN]> = Zeroizing::new(bytes.as_slice().try_into().map_err(
        |_| RelayError::KeyFormat {
            path: path.to_owned(),
            what: format!(
                "an onion key file holds exactly {ONION_KEY_LEN} bytes, this one {}",
                bytes.len()
            ),
        },
    )?);
    Ok(Some(OnionSecretKey::from_bytes(*arr)))
}

/// Reads a key file: `None` if it does not exist. Warns when others may read it.
fn read_secret(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, RelayError> {
    let io = |source| RelayError::KeyIo {
        path: path.to_owned(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !meta.is_file() || meta.len() > MAX_KEY_FILE_LEN {
        return Err(RelayError::KeyFormat {
            path: path.to_owned(),
            what: "not a key file (a directory, or too large)".into(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "key file is readable by others; it should be 0600"
            );
        }
    }
    fs::read(path).map(|b| Some(Zeroizing::new(b))).map_err(io)
}

/// Writes a key file atomically with mode 0600.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), RelayError> {
    write_private(path, bytes).map_err(|source| RelayError::KeyIo {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file of the data directory atomically with mode 0600: a crash leaves the old
/// contents or the new, never part of either.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    // tempfile creates the file 0600 on unix; set it again in case of an odd umask policy.
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// The descriptor lifetime of these tests (the default, 3 h).
    const LIFETIME: Duration = Duration::from_secs(3 * 3600);

    #[test]
    fn keygen_creates_0600_files_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("relay");
        let a = keygen(&data).unwrap();
        let b = keygen(&data).unwrap();
        assert_eq!(a, b, "keygen must not replace an existing identity");
        for f in [IDENTITY_KEY_FILE, ONION_KEY_FILE] {
            let meta = fs::metadata(data.join(f)).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
            }
            assert!(meta.len() > 0);
        }
        assert_eq!(fs::metadata(data.join(ONION_KEY_FILE)).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
    }

    #[test]
    fn rotation_keeps_the_previous_key_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = load_or_create(dir.path(), LIFETIME).unwrap();
        let first = keys.onion.current_public();
        assert!(keys.onion.previous_public().is_none());
        rotate_onion(dir.path(), &mut keys.onion).unwrap();
        let second = keys.onion.current_public();
        assert_ne!(first, second);
        assert_eq!(keys.onion.previous_public(), Some(first));
        let again = load_or_create(dir.path(), LIFETIME).unwrap();
        assert_eq!(again.onion.current_public(), second);
        assert_eq!(again.onion.previous_public(), Some(first));
        assert!(again.onion.find(&first.id()).is_some());
    }

    /// Sets the current onion key's file time, which is when it became current.
    fn rotated_ago(dir: &Path, ago: Duration) {
        let f = fs::File::options()
            .write(true)
            .open(dir.join(ONION_KEY_FILE))
            .unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn the_previous_key_goes_once_every_descriptor_naming_it_has_expired() {
        // specs/02 §2.2: a descriptor published just before the rotation names the old key as
        // current until lifetime + MAX_CLOCK_SKEW later; after that nobody may use it.
        let lifetime = LIFETIME;
        let skew = Duration::from_secs(shallot_directory::MAX_CLOCK_SKEW_SECS);
        let dir = tempfile::tempdir().unwrap();
        let mut keys = load_or_create(dir.path(), LIFETIME).unwrap();
        let first = keys.onion.current_public();
        rotate_onion(dir.path(), &mut keys.onion).unwrap();

        // Still within lifetime + skew of the rotation: the previous key stays.
        rotated_ago(dir.path(), lifetime + skew - Duration::from_secs(60));
        let held = load_or_create(dir.path(), LIFETIME).unwrap();
        assert_eq!(held.onion.previous_public(), Some(first));
        let due = held.previous_until.unwrap();
        let expected = SystemTime::now() + Duration::from_secs(60);
        let off = due
            .duration_since(expected)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(5),
            "due {off:?} away from the expected time"
        );

        rotated_ago(dir.path(), lifetime + skew + Duration::from_secs(1));
        let again = load_or_create(dir.path(), LIFETIME).unwrap();
        assert!(
            again.onion.previous_public().is_none() && again.onion.find(&first.id()).is_none(),
            "the previous onion key is still held lifetime + skew after the rotation"
        );
        assert!(!dir.path().join(PREVIOUS_ONION_KEY_FILE).exists());
        assert!(again.previous_until.is_none());
        assert_eq!(again.onion.current_public(), keys.onion.current_public());

        // A running relay drops it from memory and disk the same way.
        drop_previous_onion(dir.path(), &mut keys.onion).unwrap();
        assert!(keys.onion.find(&first.id()).is_none());
        drop_previous_onion(dir.path(), &mut keys.onion).unwrap();
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path()).unwrap();
        fs::write(dir.path().join(ONION_KEY_FILE), [7u8; 31]).unwrap();
        let err = keygen(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("exactly 32 bytes") && err.contains(ONION_KEY_FILE),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_KEY_FILE), b"garbage").unwrap();
        let err = keygen(dir.path()).unwrap_err().to_string();
        assert!(err.contains("protobuf"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(IDENTITY_KEY_FILE)).unwrap();
        assert!(keygen(dir.path()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_key_file_is_an_error_and_open_permissions_only_warn() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let peer = keygen(dir.path()).unwrap();
        let id = dir.path().join(IDENTITY_KEY_FILE);
        fs::set_permissions(&id, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            keygen(dir.path()).unwrap(),
            peer,
            "0644 is a warning, not an error"
        );
        // A path that cannot be read as a file (a dangling symlink loop) is an error.
        fs::remove_file(dir.path().join(ONION_KEY_FILE)).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join(ONION_KEY_FILE),
            dir.path().join(ONION_KEY_FILE),
        )
        .unwrap();
        let err = keygen(dir.path()).unwrap_err();
        assert!(matches!(err, RelayError::KeyIo { .. }), "{err}");
    }
}
