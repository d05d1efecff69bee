//! Sending a byte range of a listed file: the safety checks made on every
//! request, and the zero-copy send (`sendfile`) itself.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::SendFlags;

use crate::catalog::FileInfo;

/// Prepares a connection that carries file data: no Nagle delay for the
/// reply lines. The send buffer is left to the kernel's autotuning: asking
/// for a size switches autotuning off and, where `net.core.wmem_max` is
/// small (212992 on a stock kernel), would cap the connection far below
/// what autotuning reaches on a long path.
pub fn tune_for_bulk(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Why a listed file was not opened.
#[derive(Debug)]
pub enum OpenError {
    /// Size, mtime or type differ from what was listed.
    Changed(String),
    /// It no longer resolves to a regular file inside the folder.
    Outside,
    Io(io::Error),
}

/// Opens a listed file for sending after checking, on the opened file
/// itself, that it is still a regular file inside `root` with the size and
/// mtime it was listed with. A symlink swapped in after listing is refused.
pub fn open_listed(root: &Path, info: &FileInfo) -> Result<File, OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&info.path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => OpenError::Outside,
            Some(code) if code == rustix::io::Errno::NOENT.raw_os_error() => {
                OpenError::Changed("file was removed since it was listed".into())
            }
            _ => OpenError::Io(e),
        })?;
    let real =
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(OpenError::Io)?;
    if !real.starts_with(root) {
        return Err(OpenError::Outside);
    }
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(OpenError::Outside);
    }
    if meta.len() != info.size || meta.modified().ok() != Some(info.mtime) {
        return Err(OpenError::Changed(format!(
            "file changed since it was listed (size {} -> {})",
            info.size,
            meta.len()
        )));
    }
    Ok(file)
}

/// A listed file held open across the requests of one session, so that
/// each ranged read does not pay for an open (and the kernel's readahead
/// state carries over from piece to piece).
pub struct OpenFile {
    pub file: File,
    dev: u64,
    ino: u64,
}

impl OpenFile {
    /// Opens a listed file with every check of [`open_listed`], and tells
    /// the kernel it will be read sequentially.
    pub fn open(root: &Path, info: &FileInfo) -> Result<OpenFile, OpenError> {
        let file = open_listed(root, info)?;
        let meta = file.metadata().map_err(OpenError::Io)?;
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Ok(OpenFile {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the held file is still exactly what was listed: a regular
    /// file of the listed size and mtime, still the one found at its path
    /// (a rename over it, or a symlink swapped in, makes this false).
    pub fn still_listed(&self, info: &FileInfo) -> bool {
        let (Ok(held), Ok(at_path)) = (self.file.metadata(), std::fs::symlink_metadata(&info.path))
        else {
            return false;
        };
        held.len() == info.size
            && held.modified().ok() == Some(info.mtime)
            && at_path.is_file()
            && at_path.dev() == self.dev
            && at_path.ino() == self.ino
    }

    /// Asks the kernel to start reading a range now, ahead of `sendfile`.
    pub fn will_need(&self, offset: u64, length: u64) {
        let _ = rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(length),
            rustix::fs::Advice::WillNeed,
        );
    }
}

/// Sends `header` and then `length` bytes of `file` from `offset`. The
/// header goes out with MSG_MORE so that it shares a segment with the data.
/// `sent` is advanced as bytes leave. An error here leaves the connection
/// unusable (the peer was promised `length` bytes).
pub fn send_range(
    stream: &TcpStream,
    header: &[u8],
    file: &File,
    offset: u64,
    length: u64,
    sent: &AtomicU64,
) -> io::Result<()> {
    let more = if length > 0 {
        SendFlags::MORE
    } else {
        SendFlags::empty()
    };
    let mut rest = header;
    while !rest.is_empty() {
        match rustix::net::send(stream, rest, more) {
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut pos = offset;
    let end = offset + length;
    const STEP: u64 = 8 << 20;
    while pos < end {
        let want = (end - pos).min(STEP) as usize;
        match rustix::fs::sendfile(stream, file, Some(&mut pos), want) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while it was being sent",
                ))
            }
            Ok(n) => {
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
