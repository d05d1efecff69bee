//! The digests a download checks its pieces against. They may still be on
//! their way when the first pieces are asked for: a fresh download asks for
//! the per-piece digests and its first pieces in the same round trip, and a
//! piece that arrives first waits here for its digest before it is judged.

use std::sync::OnceLock;

use fastdl_protocol::Digest;

/// Per-piece digests, known now or later.
pub struct Expected {
    /// `None` once it is clear they will not come (the download stops).
    pieces: OnceLock<Option<Vec<Digest>>>,
    /// The whole-file digest: a one-piece file's only piece digest.
    file: Digest,
}

impl Expected {
    /// Digests known up front (empty for a one-piece file).
    pub fn known(pieces: Vec<Digest>, file: Digest) -> Expected {
        Expected {
            pieces: OnceLock::from(Some(pieces)),
            file,
        }
    }

    /// Digests that [`Self::arrive`] or [`Self::fail`] will settle.
    pub fn pending(file: Digest) -> Expected {
        Expected {
            pieces: OnceLock::new(),
            file,
        }
    }

    pub fn arrive(&self, pieces: Vec<Digest>) {
        let _ = self.pieces.set(Some(pieces));
    }

    /// No digests will come: every waiting piece is released unjudged.
    pub fn fail(&self) {
        let _ = self.pieces.set(None);
    }

    /// Whether the digests are still awaited.
    pub fn is_pending(&self) -> bool {
        self.pieces.get().is_none()
    }

    /// All per-piece digests, waiting for them if need be; `None` if they
    /// will not come.
    pub fn all(&self) -> Option<&[Digest]> {
        self.pieces.wait().as_deref()
    }

    /// The digest piece `piece` must have, waiting for it if need be.
    pub fn piece(&self, piece: u64) -> Option<Digest> {
        let pieces = self.all()?;
        Some(pieces.get(piece as usize).copied().unwrap_or(self.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn d(byte: u8) -> Digest {
        Digest([byte; 32])
    }

    #[test]
    fn known_digests_answer_at_once() {
        let e = Expected::known(vec![d(1), d(2)], d(9));
        assert_eq!(e.piece(1), Some(d(2)));
        // A one-piece file has no list: its piece digest is the file digest.
        assert_eq!(Expected::known(Vec::new(), d(9)).piece(0), Some(d(9)));
    }

    #[test]
    fn a_waiting_piece_gets_its_digest_when_it_arrives() {
        let e = Expected::pending(d(9));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| e.piece(0));
            std::thread::sleep(Duration::from_millis(20));
            e.arrive(vec![d(3), d(4)]);
            assert_eq!(waiter.join().unwrap(), Some(d(3)));
        });
    }

    #[test]
    fn a_failure_releases_waiters_and_arrived_digests_stay() {
        let e = Expected::pending(d(9));
        assert!(e.is_pending());
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| e.piece(0));
            e.fail();
            assert_eq!(waiter.join().unwrap(), None);
        });
        let e = Expected::pending(d(9));
        e.arrive(vec![d(5)]);
        e.fail();
        assert!(!e.is_pending());
        assert_eq!(e.piece(0), Some(d(5)));
    }
}
