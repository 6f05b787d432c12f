//! The relay's key files: its identity (libp2p Ed25519, protobuf encoding) and its onion keys
//! (x25519, current and previous, 32 raw bytes each), in the data directory.
//!
//! Files are written 0600 through a temporary file in the same directory, synced, then renamed
//! over the old one, so a crash leaves the old key or the new one, never half of either. Secret
//! bytes read or written here sit in zeroizing buffers and are never logged.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use libp2p::identity::Keypair;
use shallot_crypto::{OnionKeyRing, OnionSecretKey};
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
}

/// Creates the relay's keys in `dir` if they are missing (the identity key and a current onion
/// key) and returns the relay's PeerId. Existing keys are loaded and checked, never replaced.
/// `shallot keygen --dir DIR` calls this.
pub fn keygen(dir: &Path) -> Result<PeerId, RelayError> {
    let keys = load_or_create(dir)?;
    Ok(keys.identity.public().to_peer_id())
}

/// Loads the keys from `dir`, creating the directory (0700) and any missing key.
pub(crate) fn load_or_create(dir: &Path) -> Result<RelayKeys, RelayError> {
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
    let onion = match read_onion(&dir.join(PREVIOUS_ONION_KEY_FILE))? {
        Some(previous) => {
            let mut ring = OnionKeyRing::new(previous);
            ring.rotate(current);
            ring
        }
        None => OnionKeyRing::new(current),
    };
    Ok(RelayKeys {
        identity,
        onion,
        onion_created,
    })
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
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let io = |source| RelayError::KeyIo {
        path: path.to_owned(),
        source,
    };
    // tempfile creates the file 0600 on unix; set it again in case of an odd umask policy.
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
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
        let mut keys = load_or_create(dir.path()).unwrap();
        let first = keys.onion.current_public();
        assert!(keys.onion.previous_public().is_none());
        rotate_onion(dir.path(), &mut keys.onion).unwrap();
        let second = keys.onion.current_public();
        assert_ne!(first, second);
        assert_eq!(keys.onion.previous_public(), Some(first));
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(again.onion.current_public(), second);
        assert_eq!(again.onion.previous_public(), Some(first));
        assert!(again.onion.find(&first.id()).is_some());
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
