//! Sending a byte range of a listed file: the safety checks made on every
//! request, the socket settings for bulk sends, and the zero-copy send
//! (`sendfile`) itself.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::SendFlags;

use crate::catalog::FileInfo;

/// Send buffer asked for on data connections where that beats autotuning.
const SEND_BUFFER: usize = 8 << 20;

/// Prepares a connection that carries file data: no Nagle delay for the
/// reply lines, and the largest send buffer the system allows when that is
/// more than autotuning would reach. A connection can only have as many
/// bytes in flight as its send buffer holds, and autotuning stops at
/// `net.ipv4.tcp_wmem`'s maximum (4 MiB by default): about 80 MB/s at a
/// 50 ms round trip. An explicit size switches autotuning off and is capped
/// at twice `net.core.wmem_max`, so it is only asked for where the
/// administrator raised `wmem_max` (on a stock kernel, 212992, it would
/// make things worse).
pub fn tune_for_bulk(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    if let Some(size) = bulk_send_buffer() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(stream, size);
    }
}

/// [`SEND_BUFFER`], if this network namespace grants more with it than
/// autotuning reaches; read once.
fn bulk_send_buffer() -> Option<usize> {
    static SIZE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        let last_number = |path: &str| -> Option<usize> {
            std::fs::read_to_string(path)
                .ok()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        };
        let wmem_max = last_number("/proc/sys/net/core/wmem_max")?;
        let autotune_max = last_number("/proc/sys/net/ipv4/tcp_wmem")?;
        worth_asking(SEND_BUFFER, wmem_max, autotune_max).then_some(SEND_BUFFER)
    })
}

/// Whether asking for `ask` bytes of send buffer (granted: twice the ask,
/// capped at twice `wmem_max`) gives more than autotuning's `autotune_max`.
fn worth_asking(ask: usize, wmem_max: usize, autotune_max: usize) -> bool {
    2 * ask.min(wmem_max) > autotune_max
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_buffer_is_asked_for_only_where_it_beats_autotuning() {
        // Stock kernel: wmem_max 212992 would cap a connection at 416 KiB.
        assert!(!worth_asking(SEND_BUFFER, 212_992, 4 << 20));
        // wmem_max raised to 4 MiB: 8 MiB granted, autotuning stops at 4.
        assert!(worth_asking(SEND_BUFFER, 4 << 20, 4 << 20));
        // Autotuning already allowed as much.
        assert!(!worth_asking(SEND_BUFFER, 16 << 20, 16 << 20));
    }
}
