//! What goes into the engine (a [`Job`]) and what comes out of one attempt
//! at it (an [`Outcome`]), with the reasons kept typed up to the decision
//! that needs them: the scheduler retries, waits for a new list, or gives
//! up, and the log says who found what (a check made here, or what a
//! server said).

use std::io;
use std::path::PathBuf;

use fastdl_protocol::{Digest, Entry};

use super::source::{SourceError, Trouble};
use crate::disk::store::Spot;

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Its name (where it lands under `--out`), size and BLAKE3 digest.
    pub entry: Entry,
    /// Indices into the engine's sources that agree on what it is.
    pub sources: Vec<usize>,
}

/// An outcome as the engine and the lander report it: which job, and how
/// its attempt ended.
pub type Report = (Job, Outcome);

/// A verified file as the engine hands it to the lander.
pub type ToLand = (Job, Box<Verified>);

/// How one attempt at a file ended.
#[derive(Debug)]
pub enum Outcome {
    /// Verified and in place (possibly under a numbered name).
    Landed,
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
    /// The whole file's digest is not the listed one.
    #[error("the whole file's digest {got} is not the listed {want} (checked here)")]
    Mismatch { got: Digest, want: Digest },
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
    pub part: std::fs::File,
    /// Where it lands (its folder open, the part and journal beside it).
    pub spot: Spot,
    /// Network rate and bytes fetched in this attempt, for the log.
    pub rate: f64,
    pub fetched: u64,
}
