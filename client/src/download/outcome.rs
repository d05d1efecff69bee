//! What goes into the engine (a [`Job`]) and what comes out of one attempt
//! at it (an [`Outcome`]), with the reasons kept typed up to the decision
//! that needs them: the scheduler retries, waits for a new list, or gives
//! up, and the log says who found what (a check made here, or what a
//! server said).

use std::io;
use std::path::PathBuf;

use fastdl_protocol::Entry;

use super::source::{SourceError, Trouble};
use crate::disk::store::Spot;

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Where it lands under `--out` (`name`), its size, and the key of
    /// this version of it, which its journal must match to be resumed (a
    /// fastdl file's BLAKE3 digest; for a URL, a digest of the URL, size,
    /// ETag and Last-Modified).
    pub entry: Entry,
    /// How its sources name it (a fastdl name, or a URL).
    pub remote: String,
    /// Indices into the engine's sources that agree on what it is.
    pub sources: Vec<usize>,
    /// How the whole file is verified before it lands (`None`: it cannot
    /// be; size and validators only).
    pub check: Option<Check>,
    /// Whether its sources give per-piece digests (fastdl's `PIECES`), so
    /// that each piece is verified as it lands and a resumed part file is
    /// re-checked against the server.
    pub per_piece: bool,
    /// Whether its sources serve ranges; if not, one connection fetches
    /// it whole, start to end.
    pub ranges: bool,
    /// Its first bytes, fetched already (at most one piece: an HTTP
    /// probe's answer).
    pub head: Option<std::sync::Arc<super::head::Head>>,
    /// What its sources must still serve for a range to belong to this
    /// version (an HTTP `If-Range` value: a strong ETag or a date).
    pub validator: Option<String>,
}

impl Job {
    /// The BLAKE3 digest of the file's content, when known before it is
    /// fetched (a fastdl list, or `blake3=` in the input).
    pub fn content_digest(&self) -> Option<fastdl_protocol::Digest> {
        let check = self.check.as_ref().filter(|c| c.algo == Algo::Blake3)?;
        let bytes: [u8; 32] = check.want.as_slice().try_into().ok()?;
        Some(fastdl_protocol::Digest(bytes))
    }

    /// A file a fastdl server lists: verified piece by piece against the
    /// server's digests, and as a whole against the listed BLAKE3 digest.
    pub fn listed(entry: Entry, sources: Vec<usize>) -> Job {
        Job {
            remote: entry.name.clone(),
            check: Some(Check {
                algo: Algo::Blake3,
                want: entry.digest.0.to_vec(),
                from: Claimant::List,
            }),
            entry,
            sources,
            per_piece: true,
            ranges: true,
            head: None,
            validator: None,
        }
    }
}

/// A whole-file digest a file must have, and who said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Which digest.
    pub algo: Algo,
    /// The digest the file must have.
    pub want: Vec<u8>,
    /// Who claimed it (for the message when it does not match).
    pub from: Claimant,
}

/// A digest algorithm a whole file can be checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// Checked for free: the pieces' BLAKE3 digests combine into it.
    Blake3,
    /// Checked by reading the finished part file once.
    Sha256,
    Sha512,
}

impl Algo {
    pub fn as_str(self) -> &'static str {
        match self {
            Algo::Blake3 => "blake3",
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }
}

/// Who gave the digest a file is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    /// The fastdl server's list.
    List,
    /// The line of input.txt (`sha256=...`, `blake3=...`).
    Input,
    /// The HTTP server's `Repr-Digest` (RFC 9530).
    Server,
}

impl Claimant {
    pub fn as_str(self) -> &'static str {
        match self {
            Claimant::List => "listed",
            Claimant::Input => "given in the input file",
            Claimant::Server => "announced by the server",
        }
    }
}

/// An outcome as the engine and the lander report it: which job, and how
/// its attempt ended.
pub type Report = (Job, Outcome);

/// A verified file as the engine hands it to the lander.
pub type ToLand = (Job, Box<Verified>);

/// How one attempt at a file ended.
#[derive(Debug)]
pub enum Outcome {
    /// Verified and in place, at this path (possibly a numbered name).
    Landed(PathBuf),
    /// An identical file was already in the output folder.
    AlreadyHad(PathBuf),
    /// A server says the file changed or left its list: fetch the lists
    /// again.
    Changed(SourceError),
    /// This attempt failed.
    Failed(FileError),
    /// Shutdown was requested.
    Cancelled,
}

/// Why an attempt at a file failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A piece's bytes did not match its digest, every time.
    #[error("piece {piece} failed verification {times} times (checked here against the server's per-piece digest); the part file is kept")]
    BadPiece { piece: u64, times: u8 },
    /// The whole file's digest is not the one it must have.
    #[error("the whole file's {} is {got}, not the {want} {} (checked here)", algo.as_str(), from.as_str())]
    Mismatch {
        algo: Algo,
        got: String,
        want: String,
        from: Claimant,
    },
    /// A server's per-piece digests do not combine into the listed digest.
    #[error(
        "server {server}: its per-piece digests do not add up to the listed digest (checked here)"
    )]
    DigestsDoNotAddUp { server: String },
    /// A source could not be used.
    #[error("server {server}: {cause}")]
    Source { server: String, cause: SourceError },
    /// The file cannot fit.
    #[error("needs {need}, and only {free} are free in {}", dir.display())]
    NoRoom {
        need: String,
        free: String,
        dir: PathBuf,
    },
    /// The output folder could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Disk {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// Whether another attempt soon is pointless: the disk is full, or the
    /// file cannot fit (space has to be made first).
    pub fn needs_room(&self) -> bool {
        match self {
            FileError::NoRoom { .. } => true,
            FileError::Disk { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull
                        | io::ErrorKind::QuotaExceeded
                        | io::ErrorKind::FileTooLarge
                )
            }
            _ => false,
        }
    }

    /// Whether the source was slow rather than absent.
    pub fn too_slow(&self) -> bool {
        matches!(self, FileError::Source { cause, .. } if cause.trouble == Trouble::TooSlow)
    }
}

/// A verified part file on its way to its final name.
#[derive(Debug)]
pub struct Verified {
    /// The open part file, to flush.
    pub part: std::sync::Arc<std::fs::File>,
    /// Where it lands (its folder open, the part and journal beside it).
    pub spot: Spot,
    /// The BLAKE3 digest of what was fetched: compared with a file already
    /// at the name, so the same content never lands twice.
    pub content: fastdl_protocol::Digest,
    /// What it was checked with as a whole (`None`: size and validators
    /// only; the log says so).
    pub checked: Option<Algo>,
    /// Network rate and bytes fetched in this attempt, for the log.
    pub rate: f64,
    /// Bytes of pieces fetched in this attempt (for the log line).
    pub fetched: u64,
    /// Whether a journal may be beside the part file, to remove once it
    /// landed: a file of one piece never has one (its piece is the file),
    /// and looking for it anyway was a failed `unlinkat` per small file.
    pub journal: bool,
}

/// Bytes as lowercase hex, as digests are written on input lines and
/// in messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
