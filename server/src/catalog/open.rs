//! Opening files of the published folder, the one way the server does it.
//!
//! Every open, by the scan that hashes a file and by every transfer, goes
//! through [`open_regular`]: without following a final link, without
//! blocking (a FIFO renamed over a listed file would otherwise hold the
//! opener in `open(2)` forever, and with it a connection slot), and only
//! if the opened file is a regular file. A transfer then checks, on the
//! opened file itself, that it is still inside the folder and still the
//! size and age it was listed with ([`open_listed`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// What the server knows of a listed file, as far as opening it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<'a> {
    /// The real path the name resolved to when it was listed.
    pub path: &'a Path,
    pub size: u64,
    pub mtime: SystemTime,
}

/// Why a listed file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Size, mtime or type differ from what was listed, or it is gone.
    #[error("{0}")]
    Changed(String),
    /// It no longer resolves to a regular file inside the folder.
    #[error("no longer a regular file inside the folder")]
    Outside,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Opens `path` for reading: no final link followed, no blocking on a
/// FIFO or device, and only a regular file is returned.
pub fn open_regular(path: &Path) -> Result<File, OpenError> {
    open_with_meta(path).map(|(file, _)| file)
}

/// [`open_regular`], with the opened file's metadata (one `fstat` per
/// open: the transfer path used to ask three times).
fn open_with_meta(path: &Path) -> Result<(File, std::fs::Metadata), OpenError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP => OpenError::Outside,
        Errno::NOENT => OpenError::Changed("file was removed since it was listed".into()),
        e => OpenError::Io(e.into()),
    })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(OpenError::Outside);
    }
    Ok((file, meta))
}

/// Opens a listed file for sending after checking, on the opened file
/// itself, that it is still a regular file inside `root` with the size and
/// mtime it was listed with (and its metadata). A link or a FIFO swapped
/// in after listing is refused at once.
pub fn open_listed(
    root: &Path,
    listed: &Listed<'_>,
) -> Result<(File, std::fs::Metadata), OpenError> {
    let (file, meta) = open_with_meta(listed.path)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    if !real.starts_with(root) {
        return Err(OpenError::Outside);
    }
    if meta.len() != listed.size || meta.modified().ok() != Some(listed.mtime) {
        return Err(OpenError::Changed(format!(
            "file changed since it was listed (size {} -> {})",
            listed.size,
            meta.len()
        )));
    }
    Ok((file, meta))
}

/// Ranges shorter than this are sent without `WILLNEED` advice.
pub const WILL_NEED_MIN: u64 = 256 * 1024;

/// A listed file held open across the requests of one session, so that
/// each ranged read does not pay for an open (and the kernel's readahead
/// state carries over from piece to piece).
#[derive(Debug)]
pub struct OpenFile {
    pub file: File,
    dev: u64,
    ino: u64,
}

impl OpenFile {
    /// Opens a listed file with every check of [`open_listed`], and tells
    /// the kernel it will be read sequentially.
    pub fn open(root: &Path, listed: &Listed<'_>) -> Result<OpenFile, OpenError> {
        let (file, meta) = open_listed(root, listed)?;
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Ok(OpenFile {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the held file is still exactly what was listed: a regular
    /// file of the listed size and mtime, still the one found at its path
    /// (a rename over it, or a link swapped in, makes this false).
    pub fn still_listed(&self, listed: &Listed<'_>) -> bool {
        let (Ok(held), Ok(at_path)) =
            (self.file.metadata(), std::fs::symlink_metadata(listed.path))
        else {
            return false;
        };
        held.len() == listed.size
            && held.modified().ok() == Some(listed.mtime)
            && at_path.is_file()
            && at_path.dev() == self.dev
            && at_path.ino() == self.ino
    }

    /// Asks the kernel to start reading a range now, ahead of the send,
    /// unless it is shorter than [`WILL_NEED_MIN`]: the send's own read of
    /// so few pages is one request to the disk anyway, and the advice
    /// walks the page cache over the range even when all of it is there
    /// (8% of the server's CPU serving 1000 files of 100 KiB).
    pub fn will_need(&self, offset: u64, length: u64) {
        if length < WILL_NEED_MIN {
            return;
        }
        let _ = rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(length),
            rustix::fs::Advice::WillNeed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_and_links_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(matches!(open_regular(&fifo), Err(OpenError::Outside)));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        assert!(matches!(
            open_regular(&dir.path().join("link")),
            Err(OpenError::Outside)
        ));
        assert!(matches!(
            open_regular(&dir.path().join("gone")),
            Err(OpenError::Changed(_))
        ));
        assert!(open_regular(&file).is_ok());
    }

    #[test]
    fn a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let path = root.join("f");
        std::fs::write(&path, b"abc").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let listed = Listed {
            path: &path,
            size: 3,
            mtime,
        };
        let held = OpenFile::open(&root, &listed).unwrap();
        assert!(held.still_listed(&listed));
        std::fs::write(&path, b"abcd").unwrap();
        assert!(matches!(
            open_listed(&root, &listed),
            Err(OpenError::Changed(_))
        ));
        assert!(!held.still_listed(&listed));
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(matches!(
            open_listed(elsewhere.path(), &listed),
            Err(OpenError::Outside) | Err(OpenError::Changed(_))
        ));
    }
}
