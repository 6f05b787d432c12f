//! The guard state file (specs/05 §6): a small line-based text format, written atomically.
//!
//! This is the crate's only IO, and it is one local file.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use libp2p_identity::PeerId;

use crate::bias::BiasState;
use crate::err::PathError;
use crate::guard::{GUARD_MAX_FAILURES, Guard, MAX_SAMPLED_GUARDS};

/// The line that opens a guard state file of this version.
pub const GUARD_STATE_HEADER: &str = "shallot-guard-state 1";
/// The longest guard state file read; anything longer is corrupt.
pub const MAX_GUARD_STATE_LEN: usize = 16 * 1024;

/// Encodes guards as a state file body.
pub(crate) fn encode(guards: &[Guard]) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut out = String::from(
        "# Shallot guard state (specs/05 §6). Written by the client; edit only while it is stopped.\n",
    );
    out.push_str(GUARD_STATE_HEADER);
    out.push('\n');
    for g in guards.iter().take(MAX_SAMPLED_GUARDS) {
        out.push_str(&format!(
            "guard {} added={} provisional={} unlisted-since={} failures={} failing-since={} \
             last-failure={} last-success={} pb-attempts={} pb-built={} pb-use-attempts={} \
             pb-use-succeeded={} pb-state={}\n",
            g.peer,
            g.added_at,
            u8::from(g.provisional),
            opt(g.unlisted_since),
            g.failures,
            opt(g.failing_since),
            opt(g.last_failure),
            opt(g.last_success),
            g.bias.circ_attempts,
            g.bias.circ_built,
            g.bias.use_attempts,
            g.bias.use_succeeded,
            g.bias.state.as_str(),
        ));
    }
    out
}

/// Decodes a state file body (specs/05 §6.2). Errors carry the line number (0 for the file).
pub(crate) fn decode(text: &str) -> Result<Vec<Guard>, (usize, &'static str)> {
    if text.len() > MAX_GUARD_STATE_LEN {
        return Err((0, "file longer than the limit"));
    }
    let mut header_seen = false;
    let mut guards: Vec<Guard> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !header_seen {
            if line != GUARD_STATE_HEADER {
                return Err((n, "missing or unsupported header"));
            }
            header_seen = true;
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some("guard") {
            // specs/05 §6.2: unknown line keywords are ignored (later versions may add some).
            continue;
        }
        let peer: PeerId = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or((n, "guard line without a valid PeerId"))?;
        let mut guard = Guard::new(peer, 0, false);
        let mut added = false;
        let mut seen: Vec<&str> = Vec::new();
        for word in words {
            let (key, value) = word.split_once('=').ok_or((n, "field is not key=value"))?;
            if seen.contains(&key) {
                return Err((n, "field given twice"));
            }
            seen.push(key);
            match key {
                "added" => {
                    guard.added_at = number(value).ok_or((n, "bad added"))?;
                    added = true;
                }
                "provisional" => {
                    guard.provisional = match value {
                        "0" => false,
                        "1" => true,
                        _ => return Err((n, "provisional is not 0 or 1")),
                    }
                }
                "unlisted-since" => {
                    guard.unlisted_since = optional(value).ok_or((n, "bad unlisted-since"))?;
                }
                "failures" => {
                    let failures: u64 = number(value).ok_or((n, "bad failures"))?;
                    let max = u64::from(GUARD_MAX_FAILURES);
                    guard.failures = u8::try_from(failures.min(max)).unwrap_or(GUARD_MAX_FAILURES);
                }
                "failing-since" => {
                    guard.failing_since = optional(value).ok_or((n, "bad failing-since"))?;
                }
                "last-failure" => {
                    guard.last_failure = optional(value).ok_or((n, "bad last-failure"))?;
                }
                "last-success" => {
                    guard.last_success = optional(value).ok_or((n, "bad last-success"))?;
                }
                "pb-attempts" => {
                    guard.bias.circ_attempts = count(value).ok_or((n, "bad pb-attempts"))?
                }
                "pb-built" => guard.bias.circ_built = count(value).ok_or((n, "bad pb-built"))?,
                "pb-use-attempts" => {
                    guard.bias.use_attempts = count(value).ok_or((n, "bad pb-use-attempts"))?;
                }
                "pb-use-succeeded" => {
                    guard.bias.use_succeeded = count(value).ok_or((n, "bad pb-use-succeeded"))?;
                }
                "pb-state" => {
                    guard.bias.state = BiasState::parse(value).ok_or((n, "bad pb-state"))?;
                }
                // specs/05 §6.2: unknown fields are ignored.
                _ => {}
            }
        }
        if !added {
            return Err((n, "guard line without added="));
        }
        // A hand-edited file may claim more successes than attempts: they are read as all.
        guard.bias.circ_built = guard.bias.circ_built.min(guard.bias.circ_attempts);
        guard.bias.use_succeeded = guard.bias.use_succeeded.min(guard.bias.use_attempts);
        if guards.iter().any(|g| g.peer == guard.peer) {
            return Err((n, "guard listed twice"));
        }
        if guards.len() < MAX_SAMPLED_GUARDS {
            guards.push(guard);
        }
    }
    if !header_seen {
        return Err((0, "missing header"));
    }
    Ok(guards)
}

fn number(s: &str) -> Option<u64> {
    // Decimal digits only: no sign, no blanks, at most 20 digits.
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A path-bias count: a number, saturated at `u32::MAX`.
fn count(s: &str) -> Option<u32> {
    number(s).map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

fn optional(s: &str) -> Option<Option<u64>> {
    if s == "-" {
        Some(None)
    } else {
        number(s).map(Some)
    }
}

/// Reads the state file at `path`; a missing file is an empty guard set.
pub(crate) fn load(path: &Path) -> Result<Vec<Guard>, PathError> {
    let io_err = |source| PathError::GuardState {
        path: path.to_path_buf(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_err(err)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_GUARD_STATE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    let corrupt = |line, reason| PathError::CorruptGuardState {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt(0, "not UTF-8"))?;
    decode(text).map_err(|(line, reason)| corrupt(line, reason))
}

/// Writes the guards to `path` atomically (specs/05 §6.3): a temporary file in the same
/// directory, mode 0600, written, synced, renamed over the old file, then the directory synced.
pub(crate) fn store(path: &Path, guards: &[Guard]) -> Result<(), PathError> {
    let tmp = temporary_path(path);
    let result = (|| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        // A temporary file left by a crash may have another mode: start from a new file.
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(encode(guards).as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Persist the rename; not every platform can open a directory, so best effort.
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        PathError::GuardState {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use shallot_error::HasKind;

    use super::*;

    fn sample() -> Vec<Guard> {
        let mut a = Guard::new(PeerId::random(), 1_800_000_000, false);
        a.last_success = Some(1_800_000_500);
        let mut b = Guard::new(PeerId::random(), 1_800_000_100, true);
        b.unlisted_since = Some(1_800_000_200);
        b.failures = 3;
        b.failing_since = Some(1_800_000_300);
        b.last_failure = Some(1_800_000_400);
        b.bias.circ_attempts = 40;
        b.bias.circ_built = 9;
        b.bias.use_attempts = 7;
        b.bias.use_succeeded = 7;
        b.bias.state = BiasState::Disabled;
        vec![a, b]
    }

    #[test]
    fn round_trip() {
        let guards = sample();
        assert_eq!(decode(&encode(&guards)).expect("decode"), guards);
        assert_eq!(decode(&encode(&[])).expect("decode"), Vec::new());
    }

    #[test]
    fn unknown_lines_and_keys_are_ignored() {
        let guards = sample();
        let text = encode(&guards)
            .replace("last-success=", "colour=blue last-success=")
            .replace(
                GUARD_STATE_HEADER,
                &format!("{GUARD_STATE_HEADER}\nbridge x y=1"),
            );
        assert_eq!(decode(&text).expect("decode"), guards);
        // Missing optional keys read as none; failures above the cap are capped.
        let peer = PeerId::random();
        let text = format!("{GUARD_STATE_HEADER}\nguard {peer} added=5 failures=1000\n");
        let read = decode(&text).expect("decode");
        assert_eq!(read[0].failures, GUARD_MAX_FAILURES);
        assert_eq!(read[0].last_success, None);
        // A file of the version before path bias: counts start at zero, the guard is ok.
        assert_eq!(read[0].bias, crate::PathBias::default());
        // More successes than attempts are read as all.
        let text = format!("{GUARD_STATE_HEADER}\nguard {peer} added=5 pb-attempts=3 pb-built=9\n");
        let read = decode(&text).expect("decode");
        assert_eq!(
            (read[0].bias.circ_attempts, read[0].bias.circ_built),
            (3, 3)
        );
    }

    #[test]
    fn at_most_max_sampled_guards_are_kept() {
        let text: String = std::iter::once(format!("{GUARD_STATE_HEADER}\n"))
            .chain(
                (0..MAX_SAMPLED_GUARDS + 5)
                    .map(|_| format!("guard {} added=1\n", PeerId::random())),
            )
            .collect();
        assert_eq!(decode(&text).expect("decode").len(), MAX_SAMPLED_GUARDS);
    }

    #[test]
    fn corrupt_files_are_refused_with_the_line() {
        let peer = PeerId::random();
        let cases = [
            (String::new(), 0),
            ("shallot-guard-state 2\n".to_owned(), 1),
            (format!("guard {peer} added=1\n"), 1),
            (format!("{GUARD_STATE_HEADER}\nguard nonsense added=1\n"), 2),
            (format!("{GUARD_STATE_HEADER}\nguard {peer}\n"), 2),
            (format!("{GUARD_STATE_HEADER}\nguard {peer} added=-1\n"), 2),
            (
                format!("{GUARD_STATE_HEADER}\nguard {peer} added=1 added=2\n"),
                2,
            ),
            (
                format!("{GUARD_STATE_HEADER}\nguard {peer} added=1 provisional=2\n"),
                2,
            ),
            (
                format!("{GUARD_STATE_HEADER}\nguard {peer} added=1 failures\n"),
                2,
            ),
            (
                format!("{GUARD_STATE_HEADER}\nguard {peer} added=1 pb-state=fine\n"),
                2,
            ),
            (
                format!("{GUARD_STATE_HEADER}\nguard {peer} added=1 pb-attempts=-1\n"),
                2,
            ),
            (
                format!("{GUARD_STATE_HEADER}\n\nguard {peer} added=1\nguard {peer} added=2\n"),
                4,
            ),
            ("#".repeat(MAX_GUARD_STATE_LEN + 1), 0),
        ];
        for (text, line) in cases {
            let err = decode(&text).expect_err("corrupt");
            assert_eq!(err.0, line, "{text:.80}: {}", err.1);
        }
    }

    #[test]
    fn load_reports_corrupt_files_and_treats_missing_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guards.state");
        assert!(load(&path).expect("missing is empty").is_empty());
        fs::write(&path, b"\xff\xfe").expect("write");
        let err = load(&path).expect_err("not UTF-8");
        assert!(
            matches!(err, PathError::CorruptGuardState { line: 0, .. }),
            "{err}"
        );
        assert_eq!(err.kind(), shallot_error::ErrorKind::Storage);
        let guards = sample();
        store(&path, &guards).expect("store");
        assert_eq!(load(&path).expect("load"), guards);
        // Unwritable location: the error names the file.
        let err =
            store(&dir.path().join("missing\0dir/guards.state"), &sample()).expect_err("bad path");
        assert!(matches!(err, PathError::GuardState { .. }), "{err}");
    }
}
