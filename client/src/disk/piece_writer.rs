//! Writing verified pieces into the part file, and the piece buffers that
//! make direct I/O possible.
//!
//! Whole pieces of a large file are written through a second descriptor
//! of the same part file opened with `O_DIRECT`: the bytes go from our
//! buffer straight to the disk, piece by piece, while the other
//! connections (and the kernel, into this connection's socket buffer) go
//! on receiving; the page cache is not filled with a file nobody is
//! reading yet (on a VM, memory the host must first hand back), and the
//! final fsync has only the metadata and the device cache left to do.
//! Everything else (the short last piece, small files, file systems that
//! refuse `O_DIRECT`) goes through the ordinary descriptor. Either way a
//! piece is written only after it was verified, and the lander's fsync
//! before the rename covers both paths.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fastdl_protocol::PIECE_SIZE;
use log::debug;

/// Files at least this big have their whole pieces written with `O_DIRECT`.
/// Below it, buffered writes and one batched flush are cheaper.
pub const DIRECT_MIN_SIZE: u64 = 16 * PIECE_SIZE;
/// Alignment of offsets, lengths and buffers for `O_DIRECT`.
const ALIGN: usize = 4096;

/// Writes pieces at their offsets in one part file.
pub struct PieceWriter {
    part: Arc<File>,
    direct: Option<File>,
    /// Cleared when the file system refuses a direct write.
    direct_ok: AtomicBool,
}

impl PieceWriter {
    /// A writer for `part`, which holds a file of `size` bytes. Direct I/O
    /// is used when the file is large and the file system accepts it.
    pub fn new(part: Arc<File>, size: u64) -> PieceWriter {
        let direct = if size >= DIRECT_MIN_SIZE {
            reopen_direct(&part)
                .map_err(|e| debug!("no direct I/O for this part file: {e}"))
                .ok()
        } else {
            None
        };
        PieceWriter {
            part,
            direct_ok: AtomicBool::new(direct.is_some()),
            direct,
        }
    }

    /// A writer that always writes through the page cache.
    #[cfg(test)]
    pub fn buffered(part: Arc<File>) -> PieceWriter {
        PieceWriter {
            part,
            direct: None,
            direct_ok: AtomicBool::new(false),
        }
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            if self.direct_ok.load(Ordering::Relaxed) && aligned(data, offset) {
                match direct.write_all_at(data, offset) {
                    Ok(()) => return Ok(()),
                    // Refused (EINVAL: not for this file system or device) or
                    // failed: this piece, and the rest of the file, go through
                    // the page cache, which reports its own errors.
                    Err(e) => {
                        debug!("direct write failed ({e}); writing through the page cache");
                        self.direct_ok.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        self.part.write_all_at(data, offset)
    }

    /// Whether whole pieces currently go to the disk directly.
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.direct.is_some() && self.direct_ok.load(Ordering::Relaxed)
    }
}

fn aligned(data: &[u8], offset: u64) -> bool {
    (data.as_ptr() as usize).is_multiple_of(ALIGN)
        && data.len().is_multiple_of(ALIGN)
        && offset.is_multiple_of(ALIGN as u64)
}

/// Opens the very file `part` refers to a second time, with `O_DIRECT`.
/// Going through `/proc/self/fd` reaches the same inode even if the path
/// was replaced meanwhile; a second open file description keeps the
/// ordinary descriptor buffered.
fn reopen_direct(part: &File) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", part.as_raw_fd()))
}

/// A buffer for one piece whose start is aligned for direct I/O. Dropped,
/// its memory is kept for the next buffer this thread asks for
/// ([`PieceBuf::reuse`]), so that a thread downloading one small file after
/// another does not allocate and zero a piece's worth of memory per file.
#[derive(Default)]
pub struct PieceBuf {
    raw: Vec<u8>,
    start: usize,
}

thread_local! {
    /// The memory of this thread's last dropped piece buffer.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        if !raw.is_empty() {
            // During thread exit the slot may be gone; the memory is freed then.
            let _ = SPARE.try_with(|spare| spare.set(raw));
        }
    }
}

impl PieceBuf {
    /// A buffer holding this thread's spare memory, if it has some.
    pub fn reuse() -> PieceBuf {
        let raw = SPARE.try_with(|spare| spare.take()).unwrap_or_default();
        let start = raw.as_ptr().align_offset(ALIGN);
        PieceBuf { raw, start }
    }

    /// The first `len` bytes of the buffer (growing it as needed). Their
    /// start is aligned to [`ALIGN`].
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < self.start + len {
            let len = len.max(PIECE_SIZE as usize);
            self.raw = vec![0; len + ALIGN];
            self.start = self.raw.as_ptr().align_offset(ALIGN);
        }
        &mut self.raw[self.start..self.start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_dropped_buffer_is_reused_by_the_same_thread() {
        let mut first = PieceBuf::reuse();
        let ptr = first.get(10).as_ptr();
        drop(first);
        let mut again = PieceBuf::reuse();
        assert_eq!(again.get(PIECE_SIZE as usize).as_ptr(), ptr);
        assert_eq!(again.get(10).as_ptr() as usize % ALIGN, 0);
        let elsewhere = std::thread::spawn(|| PieceBuf::reuse().raw.len());
        assert_eq!(elsewhere.join().unwrap(), 0, "other threads start empty");
    }

    #[test]
    fn piece_buffers_are_aligned_and_sized() {
        let mut buf = PieceBuf::default();
        for len in [1, 100, PIECE_SIZE as usize, 5, 3 * PIECE_SIZE as usize] {
            let slice = buf.get(len);
            assert_eq!(slice.len(), len);
            assert!((slice.as_ptr() as usize).is_multiple_of(ALIGN));
        }
    }

    #[test]
    fn direct_and_buffered_writes_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let size = DIRECT_MIN_SIZE + 1000;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(size).unwrap();
        let writer = PieceWriter::new(Arc::new(file), size);
        let mut buf = PieceBuf::default();
        // A whole piece (direct where the file system allows it), a short
        // last piece (always buffered), and an unaligned write.
        let piece = buf.get(PIECE_SIZE as usize);
        piece.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        writer.write_at(piece, PIECE_SIZE).unwrap();
        writer.write_at(&[7u8; 1000], DIRECT_MIN_SIZE).unwrap();
        writer.write_at(&[9u8; 3], 5).unwrap();
        drop(writer);
        let mut content = Vec::new();
        File::open(&path)
            .unwrap()
            .read_to_end(&mut content)
            .unwrap();
        assert_eq!(content.len() as u64, size);
        assert_eq!(&content[..5], &[0; 5]);
        assert_eq!(&content[5..8], &[9; 3]);
        let p = PIECE_SIZE as usize;
        assert!(content[p..2 * p]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == i as u8));
        assert!(content[DIRECT_MIN_SIZE as usize..].iter().all(|&b| b == 7));
    }

    #[test]
    fn small_files_are_written_buffered() {
        let file = tempfile::tempfile().unwrap();
        let file = Arc::new(file);
        assert!(!PieceWriter::new(Arc::clone(&file), DIRECT_MIN_SIZE - 1).is_direct());
        assert!(!PieceWriter::buffered(file).is_direct());
    }
}
