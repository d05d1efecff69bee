//! The client's known servers: which identity each server address had
//! when the client first met it (trust on first use, as ssh's
//! known_hosts).
//!
//! Format, one entry per line, written by the client on first contact or
//! by hand before it:
//!
//! ```text
//! # fastdl known servers
//! files.example.lan:1337 sha256//YhKJKSzoTt2b5FP18fvpHo7fJYqQCjAa3HWY3tvRMwE=
//! ```
//!
//! The address is the server as given to `--server` (`HOST:PORT`);
//! several lines for one address pin several identities, any of which is
//! accepted (put the new one in before a planned change of identity).
//! Blank lines and `#` comments are skipped; any other line that is not an
//! address and a fingerprint makes the file unreadable as a whole, with
//! the line number in the error: a half-understood trust file is worse
//! than none.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Fingerprint;

/// Longest known-servers file read.
const MAX_BYTES: u64 = 16 << 20;

/// What the known servers say of a server's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The identity is pinned for this address.
    Known,
    /// Nothing is pinned for this address yet.
    FirstContact,
    /// Another identity (or several) is pinned for this address.
    Changed { pinned: Vec<Fingerprint> },
}

/// A known-servers file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}:{line}: {why}", path.display())]
    Bad {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// The known servers, as read from their file, and pinned since.
pub struct KnownServers {
    path: PathBuf,
    pins: Mutex<HashMap<String, Vec<Fingerprint>>>,
}

/// One line of a known-servers file: its number, the address, the pin.
pub type Entry = (usize, String, Fingerprint);

/// A bad line of a known-servers file: its number, and why.
pub type BadLine = (usize, String);

/// Parses the text of a known-servers file: its entries, or the first bad
/// line and why.
pub fn parse(text: &str) -> Result<Vec<Entry>, BadLine> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(fp), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err((i + 1, "want: HOST:PORT sha256//BASE64".into()));
        };
        if !addr.contains(':') || addr.chars().any(char::is_control) {
            return Err((i + 1, format!("{addr:.80}: not HOST:PORT")));
        }
        let fp = fp.parse().map_err(|e| (i + 1, format!("{e}")))?;
        entries.push((i + 1, addr.to_owned(), fp));
    }
    Ok(entries)
}

impl KnownServers {
    /// Reads the file at `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<KnownServers, KnownError> {
        let read = |source| KnownError::Read {
            path: path.into(),
            source,
        };
        let text = match fs::File::open(path) {
            Ok(file) => {
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut io::Read::take(file, MAX_BYTES), &mut bytes)
                    .map_err(read)?;
                String::from_utf8(bytes).map_err(|_| KnownError::Bad {
                    path: path.into(),
                    line: 0,
                    why: "not UTF-8 text".into(),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(read(e)),
        };
        let entries = parse(&text).map_err(|(line, why)| KnownError::Bad {
            path: path.into(),
            line,
            why,
        })?;
        let mut pins: HashMap<String, Vec<Fingerprint>> = HashMap::new();
        for (_, addr, fp) in entries {
            pins.entry(addr).or_default().push(fp);
        }
        Ok(KnownServers {
            path: path.into(),
            pins: Mutex::new(pins),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Fingerprint>>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is known of `server` presenting `seen`.
    pub fn check(&self, server: &str, seen: &Fingerprint) -> Verdict {
        match self.lock().get(server) {
            None => Verdict::FirstContact,
            Some(pins) if pins.contains(seen) => Verdict::Known,
            Some(pins) => Verdict::Changed {
                pinned: pins.clone(),
            },
        }
    }

    /// Pins `fp` for `server` (first contact): remembered at once, and
    /// appended to the file. Returns whether it was new (false: another
    /// connection pinned it a moment ago); `Err` if meanwhile another
    /// identity was pinned for it, or the file cannot be written.
    pub fn pin(&self, server: &str, fp: Fingerprint) -> Result<bool, Verdict> {
        let mut pins = self.lock();
        match pins.get(server) {
            Some(known) if known.contains(&fp) => return Ok(false),
            Some(known) => {
                return Err(Verdict::Changed {
                    pinned: known.clone(),
                })
            }
            None => {}
        }
        pins.insert(server.to_owned(), vec![fp]);
        Ok(true)
    }

    /// Appends `server`'s pin to the file (the folders on the way made,
    /// mode 0700; the file 0600).
    pub fn save(&self, server: &str, fp: &Fingerprint) -> Result<(), KnownError> {
        let write = |source| KnownError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(write)?;
            }
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(write)?;
        file.write_all(format!("{server} {fp}\n").as_bytes())
            .map_err(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(seed: &[u8]) -> Fingerprint {
        Fingerprint::of_spki(seed)
    }

    #[test]
    fn first_contact_then_known_then_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/known_servers");
        let known = KnownServers::load(&path).unwrap();
        let (a, b) = (fp(b"a"), fp(b"b"));
        assert_eq!(known.check("h:1", &a), Verdict::FirstContact);
        assert_eq!(known.pin("h:1", a), Ok(true));
        assert_eq!(known.pin("h:1", a), Ok(false));
        known.save("h:1", &a).unwrap();
        assert_eq!(known.check("h:1", &a), Verdict::Known);
        assert_eq!(known.check("h:1", &b), Verdict::Changed { pinned: vec![a] });
        assert!(known.pin("h:1", b).is_err());
        // Another port is another server.
        assert_eq!(known.check("h:2", &a), Verdict::FirstContact);
        // The file says the same after a restart.
        let again = KnownServers::load(&path).unwrap();
        assert_eq!(again.check("h:1", &a), Verdict::Known);
    }

    #[test]
    fn hand_written_files_with_two_pins_and_comments() {
        let (a, b) = (fp(b"a"), fp(b"b"));
        let text = format!("# mine\n\n  srv:1337 {a}  \nsrv:1337 {b}\n");
        let entries = parse(&text).unwrap();
        assert_eq!(entries.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, text).unwrap();
        let known = KnownServers::load(&path).unwrap();
        assert_eq!(known.check("srv:1337", &b), Verdict::Known);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let a = fp(b"a");
        for (text, line) in [
            (format!("srv:1 {a}\nsrv:2\n"), 2),
            (format!("srv {a}\n"), 1),
            ("srv:1 sha256//short\n".to_owned(), 1),
            (format!("# x\nsrv:1 {a} extra\n"), 2),
        ] {
            assert_eq!(parse(&text).unwrap_err().0, line, "{text}");
        }
    }
}
