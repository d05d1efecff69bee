//! Access tokens (`--token-file`): who may see the list and the files.
//!
//! The file holds one token per line, optionally followed by a label (for
//! the log: whose token it is); blank lines and `#` comments are skipped.
//! It is read at start and read again whenever it changed (checked at each
//! `AUTH` and HTTP request, and at most once a second for connections
//! already signed in, by its size, modification time and inode: an
//! editor's rename over it counts), so tokens can be added and revoked
//! without a restart. A revoked token ends the connections signed in with
//! it at their next request (an answer already under way is finished). A
//! token file that is gone, is not a regular file, or no longer parses
//! accepts no token until it is fixed (the edit may have been a
//! revocation: failing open would keep a revoked token good), with an
//! error in the log.
//!
//! Tokens are kept only as BLAKE3 hashes, and a presented token is hashed
//! and compared with every stored hash in constant time (blake3::Hash's
//! equality), so neither timing nor memory gives a token away. An address
//! that presents bad tokens waits before each refusal: 250 ms, doubling
//! per failure up to 16 s, forgotten after 10 quiet minutes.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use fastdl_protocol::message::is_access_token;
use log::{info, warn};

/// Longest token file read.
const MAX_FILE: u64 = 16 << 20;
/// Shortest token that does not draw a warning (a token is a password).
const SHORT_TOKEN: usize = 16;
/// The wait before the first refusal of an address, doubled per failure.
const FIRST_PENALTY: Duration = Duration::from_millis(250);
const MAX_PENALTY: Duration = Duration::from_secs(16);
/// Failures of an address are forgotten after this much quiet.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses with failures remembered at once (the oldest go first).
const MAX_REMEMBERED: usize = 10_000;

/// One accepted token.
struct Token {
    hash: blake3::Hash,
    label: String,
}

/// What identifies a version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: Option<SystemTime>,
    ino: u64,
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {}:{line}: {why}", path.display())]
    Bad {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

struct Failures {
    count: u32,
    last: Instant,
}

/// The accepted tokens, and the addresses that failed.
pub struct Tokens {
    path: PathBuf,
    /// The tokens, and the version of the file they were read from
    /// (`None`: the file is gone, and no token is accepted).
    current: Mutex<(Option<Stamp>, Vec<Token>)>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Counted up at every change of the accepted tokens, so a signed-in
    /// connection re-checks its token only after one.
    generation: AtomicU64,
    /// When the file was last looked at for a signed-in connection.
    looked: Mutex<Instant>,
}

/// A connection's accepted token, as [`Tokens::still_valid`] re-checks it.
#[derive(Debug, Clone)]
pub struct Grant {
    hash: blake3::Hash,
    /// The tokens' generation it was last checked against, and whether
    /// it was accepted then.
    generation: u64,
    valid: bool,
}

/// How often the token file is looked at for connections already signed
/// in (their requests would otherwise stat it thousands of times a second).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Parses a token file's text: `(token, label)` per line, or the first bad
/// line (1-based) and why.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (token, label) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(t, l)| (t, l.trim()));
        if !is_access_token(token) {
            return Err((
                i + 1,
                "a token is 1 to 512 visible ASCII characters, without spaces".into(),
            ));
        }
        tokens.push((token.to_owned(), label.to_owned()));
    }
    Ok(tokens)
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = fs::metadata(path)?;
    Ok(Stamp {
        size: meta.len(),
        mtime: meta.modified().ok(),
        ino: meta.ino(),
    })
}

fn read(path: &Path) -> Result<(Stamp, Vec<Token>), TokenFileError> {
    let read_err = |source| TokenFileError::Read {
        path: path.into(),
        source,
    };
    let stamp = stamp(path).map_err(read_err)?;
    // Never blocks: a FIFO put in its place would otherwise hang the
    // reader (and every connection waiting for the tokens).
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(read_err)?;
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(TokenFileError::Bad {
            path: path.into(),
            line: 0,
            why: "not a regular file".into(),
        });
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE), &mut bytes)
        .map_err(read_err)?;
    let text = String::from_utf8(bytes).map_err(|_| TokenFileError::Bad {
        path: path.into(),
        line: 0,
        why: "not UTF-8 text".into(),
    })?;
    let parsed = parse(&text).map_err(|(line, why)| TokenFileError::Bad {
        path: path.into(),
        line,
        why,
    })?;
    let tokens = parsed
        .into_iter()
        .map(|(token, label)| {
            if token.len() < SHORT_TOKEN {
                warn!(
                    "token file {}: a token of {} characters is easy to guess; use {SHORT_TOKEN} or more",
                    path.display(),
                    token.len()
                );
            }
            Token {
                hash: blake3::hash(token.as_bytes()),
                label,
            }
        })
        .collect();
    Ok((stamp, tokens))
}

impl Tokens {
    /// Reads the token file; an unreadable or malformed one is an error at
    /// start (later, a bad version is logged and the last good one kept).
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let current = read(path)?;
        if current.1.is_empty() {
            warn!(
                "token file {} holds no token: nobody can connect until one is added",
                path.display()
            );
        }
        Ok(Tokens {
            path: path.into(),
            current: Mutex::new((Some(current.0), current.1)),
            failures: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            looked: Mutex::new(Instant::now()),
        })
    }

    /// Reads the file again if it changed (or went).
    fn refresh(&self, current: &mut (Option<Stamp>, Vec<Token>)) {
        let now = match stamp(&self.path) {
            Ok(now) => Some(now),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!("cannot look at token file {}: {e}", self.path.display());
                return;
            }
        };
        if now == current.0 {
            return;
        }
        match now {
            None => {
                log::error!(
                    "token file {} is gone: no token is accepted until it is back",
                    self.path.display()
                );
                *current = (None, Vec::new());
            }
            Some(_) => match read(&self.path) {
                Ok(fresh) => {
                    info!(
                        "token file {} changed: {} tokens",
                        self.path.display(),
                        fresh.1.len()
                    );
                    *current = (Some(fresh.0), fresh.1);
                }
                Err(e) => {
                    // Fail closed: the edit may have been a revocation.
                    log::error!("{e}; no token is accepted until the file is fixed");
                    *current = (now, Vec::new());
                }
            },
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the token of `grant` is still accepted: looks at the file
    /// at most once every [`LOOK_EVERY`], and compares only after the
    /// tokens changed.
    pub fn still_valid(&self, grant: &mut Grant) -> bool {
        let due = {
            let mut looked = self.looked.lock().unwrap_or_else(|p| p.into_inner());
            let due = looked.elapsed() >= LOOK_EVERY;
            if due {
                *looked = Instant::now();
            }
            due
        };
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if due {
            self.refresh(&mut current);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if generation != grant.generation {
            grant.generation = generation;
            grant.valid = current.1.iter().any(|t| t.hash == grant.hash);
        }
        grant.valid
    }

    /// The grant of an accepted `token`, for [`Self::still_valid`].
    pub fn grant(&self, token: &str) -> Grant {
        Grant {
            hash: blake3::hash(token.as_bytes()),
            generation: self.generation.load(Ordering::SeqCst),
            valid: true,
        }
    }

    /// Number of tokens accepted now.
    pub fn count(&self) -> usize {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .len()
    }

    /// The label of `token` if it is accepted (the file is read again
    /// first if it changed).
    pub fn check(&self, token: &str) -> Option<String> {
        let presented = blake3::hash(token.as_bytes());
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut current);
        // Every stored hash is compared, each in constant time.
        let mut found = None;
        for stored in &current.1 {
            if stored.hash == presented {
                found = Some(stored.label.clone());
            }
        }
        found
    }

    /// Records a bad token from `addr`; returns how long to wait before
    /// refusing it.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
        if failures.len() >= MAX_REMEMBERED && !failures.contains_key(&addr) {
            if let Some(oldest) = failures.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a) {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(addr).or_insert(Failures {
            count: 0,
            last: now,
        });
        entry.count += 1;
        entry.last = now;
        penalty(entry.count)
    }

    /// A good token from `addr`: its failures are forgotten.
    pub fn succeeded(&self, addr: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }
}

/// The wait before the refusal of an address's `count`-th bad token.
fn penalty(count: u32) -> Duration {
    FIRST_PENALTY
        .saturating_mul(1 << (count.saturating_sub(1)).min(10))
        .min(MAX_PENALTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_with_labels_and_comments() {
        let parsed = parse("# team\nabc-123 alice laptop\n\n  xyz  \n").unwrap();
        assert_eq!(
            parsed,
            [
                ("abc-123".to_owned(), "alice laptop".to_owned()),
                ("xyz".to_owned(), String::new())
            ]
        );
        assert_eq!(parse("ok\né bad\n").unwrap_err().0, 2);
    }

    #[test]
    fn checked_against_every_token_and_reread_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "first-token-0123456789 alice\n").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(
            tokens.check("first-token-0123456789").as_deref(),
            Some("alice")
        );
        assert_eq!(tokens.check("first-token-012345678"), None);
        // Replaced the way an editor does: a new file renamed over it.
        let tmp = dir.path().join("tokens.new");
        fs::write(&tmp, "second-token-0123456789 bob\n").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert_eq!(tokens.check("first-token-0123456789"), None, "revoked");
        assert_eq!(
            tokens.check("second-token-0123456789").as_deref(),
            Some("bob")
        );
        // A broken version accepts nothing until it is fixed.
        fs::write(&path, "second-token-0123456789 bob\né-is-no-token\n").unwrap();
        assert_eq!(tokens.check("second-token-0123456789"), None);
        fs::write(&path, "second-token-0123456789 bob\n").unwrap();
        assert!(tokens.check("second-token-0123456789").is_some());
        // So does a FIFO in its place, without blocking.
        fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(tokens.check("second-token-0123456789"), None);
        // A file that is gone accepts nothing.
        fs::remove_file(&path).unwrap();
        assert_eq!(tokens.check("second-token-0123456789"), None);
    }

    #[test]
    fn a_signed_in_grant_ends_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "kept-token-0123456789\nrevoked-token-0123456789\n").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let mut kept = tokens.grant("kept-token-0123456789");
        let mut revoked = tokens.grant("revoked-token-0123456789");
        assert!(tokens.still_valid(&mut kept) && tokens.still_valid(&mut revoked));
        let tmp = dir.path().join("tokens.new");
        fs::write(&tmp, "kept-token-0123456789\n").unwrap();
        fs::rename(&tmp, &path).unwrap();
        // Seen at the next look (at most a second later).
        *tokens.looked.lock().unwrap() -= LOOK_EVERY;
        assert!(tokens.still_valid(&mut kept));
        assert!(!tokens.still_valid(&mut revoked));
        assert!(!tokens.still_valid(&mut revoked), "and stays revoked");
    }

    #[test]
    fn bad_tokens_from_one_address_wait_longer_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        fs::write(&path, "x\n").unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        let waits: Vec<Duration> = (0..8).map(|_| tokens.failed(a, now)).collect();
        assert_eq!(waits[0], FIRST_PENALTY);
        assert_eq!(waits[1], FIRST_PENALTY * 2);
        assert_eq!(waits[7], MAX_PENALTY);
        assert_eq!(tokens.failed(b, now), FIRST_PENALTY, "another address");
        tokens.succeeded(a);
        assert_eq!(tokens.failed(a, now), FIRST_PENALTY);
        assert_eq!(
            tokens.failed(b, now + FORGET_AFTER * 2),
            FIRST_PENALTY,
            "forgotten"
        );
    }
}
