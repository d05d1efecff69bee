//! A file's first piece, read by the request that found the file (an
//! HTTP probe) and carried with its job to the opener that writes it.
//!
//! For 1000 URLs of 100 KiB the heads are 100 MB of memory passing
//! through: a new vector per file was a new zeroed allocation each time
//! (zeroing and page faults were 11% of the client's CPU, measured with
//! `perf` on tmpfs), so the buffers of heads that were written go back to
//! a small pool for the next probes ([`SPARE_BYTES`] at most: forty heads
//! of 100 KiB absorb the churn, and a run of large files, whose heads are
//! a whole piece, keeps four). The digest
//! is taken by the probe's thread right after reading, while the bytes
//! are in its cache.

use std::sync::Mutex;

use fastdl_protocol::Digest;

/// Most bytes of spare buffers kept for the next heads.
const SPARE_BYTES: usize = 4 << 20;

/// Buffers of heads that were dropped, and their total capacity.
static SPARE: Mutex<(Vec<Vec<u8>>, usize)> = Mutex::new((Vec::new(), 0));

/// A file's first piece and its piece digest.
pub struct Head {
    /// The buffer read into (perhaps a spare one, longer than the head).
    buf: Vec<u8>,
    /// How much of `buf` is the head.
    len: usize,
    /// The piece digest of the head, taken when it was read.
    digest: Digest,
}

impl Head {
    /// A buffer of at least `len` initialized bytes to read a head into:
    /// a spare one if there is one (not zeroed again), else a new one.
    pub fn buffer(len: usize) -> Vec<u8> {
        let spare = {
            let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
            let found = spare.0.pop();
            if let Some(buf) = &found {
                spare.1 -= buf.capacity();
            }
            found
        };
        let mut buf = spare.unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    /// The head held in the first `len` bytes of `buf` (from
    /// [`Head::buffer`]), whose piece digest is `digest`.
    pub fn new(buf: Vec<u8>, len: usize, digest: Digest) -> Head {
        let len = len.min(buf.len());
        Head { buf, len, digest }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The memory it holds: its buffer may be a spare one larger than
    /// its bytes (what `WebSlots` counts).
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// The piece digest of [`Head::bytes`] (piece 0 of the file's size).
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        if spare.1 + buf.capacity() <= SPARE_BYTES {
            spare.1 += buf.capacity();
            spare.0.push(buf);
        }
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Head) -> bool {
        self.digest == other.digest && self.bytes() == other.bytes()
    }
}

impl Eq for Head {}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Head({} bytes, {})", self.len, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_hold_what_was_read() {
        let mut buf = Head::buffer(10);
        assert!(buf.len() >= 10);
        buf[..3].copy_from_slice(b"abc");
        let head = Head::new(buf, 3, Digest::of(b"abc"));
        assert_eq!(head.bytes(), b"abc");
        assert!(head.held() >= 10);
        assert_eq!(head.digest(), Digest::of(b"abc"));
        assert_eq!(format!("{head:?}").split(',').next(), Some("Head(3 bytes"));
        drop(head);
        // A later buffer is long enough, whether spare or new.
        let again = Head::buffer(20);
        assert!(again.len() >= 20);
        // A length past the buffer is cut to it.
        assert_eq!(Head::new(vec![1, 2], 5, Digest::of(b"")).bytes(), &[1, 2]);
    }
}
