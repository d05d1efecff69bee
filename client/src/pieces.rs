//! The pieces of one download, shared by all its connections.
//!
//! Connections take pieces from one queue (work-stealing: a fast
//! connection simply takes more), give back the ones they could not
//! finish, and record the ones that landed and verified. A piece that fails
//! verification goes back to the front of the queue, so that another
//! connection is likely to fetch it; after [`MAX_PIECE_FAILURES`] the whole
//! download stops.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

use fastdl_protocol::Digest;

/// Times one piece may fail verification before the download gives up.
pub const MAX_PIECE_FAILURES: u8 = 3;

/// Why a download stopped before all pieces landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The file changed on the server or was removed from its list.
    Changed(String),
    /// A piece failed verification too often.
    BadPiece(u64),
    /// A local write failed.
    Local(String),
    /// No connection to the server could be kept up.
    Unreachable(String),
    /// Shutdown was requested.
    Cancelled,
}

struct State {
    pending: VecDeque<u64>,
    digests: Vec<Option<Digest>>,
    failures: Vec<u8>,
    remaining: u64,
    stop: Option<Stop>,
}

pub struct PieceQueue {
    state: Mutex<State>,
    changed: Condvar,
}

impl PieceQueue {
    /// A queue holding `count` pieces, of which those in `have` already
    /// landed with the given digests.
    pub fn new(count: u64, have: Vec<Option<Digest>>) -> PieceQueue {
        debug_assert_eq!(have.len() as u64, count);
        let pending: VecDeque<u64> = (0..count).filter(|&i| have[i as usize].is_none()).collect();
        let remaining = pending.len() as u64;
        PieceQueue {
            state: Mutex::new(State {
                pending,
                digests: have,
                failures: vec![0; count as usize],
                remaining,
                stop: None,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes pieces a connection asked for on its own (before it took
    /// anything from the queue) out of the pending ones.
    pub fn asked(&self, pieces: &[u64]) {
        self.lock().pending.retain(|p| !pieces.contains(p));
    }

    /// Takes the next piece without waiting.
    pub fn try_take(&self) -> Option<u64> {
        let mut state = self.lock();
        if state.stop.is_some() {
            return None;
        }
        pop_missing(&mut state)
    }

    /// Takes the next piece, waiting while other connections still hold
    /// pieces that might come back. `None` once everything landed or the
    /// download stopped.
    pub fn take(&self) -> Option<u64> {
        let mut state = self.lock();
        loop {
            if state.stop.is_some() || state.remaining == 0 {
                return None;
            }
            if let Some(piece) = pop_missing(&mut state) {
                return Some(piece);
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Gives back pieces a connection could not finish.
    pub fn give_back(&self, pieces: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        for piece in pieces {
            state.pending.push_front(piece);
        }
        self.changed.notify_all();
    }

    /// Records a piece that landed and verified.
    pub fn complete(&self, piece: u64, digest: Digest) {
        let mut state = self.lock();
        let slot = &mut state.digests[piece as usize];
        if slot.is_none() {
            *slot = Some(digest);
            state.remaining -= 1;
        }
        if state.remaining == 0 {
            self.changed.notify_all();
        }
    }

    /// Records a piece that failed verification; returns false (and stops
    /// the download) once it failed too often.
    pub fn failed(&self, piece: u64) -> bool {
        let mut state = self.lock();
        state.failures[piece as usize] += 1;
        if state.failures[piece as usize] >= MAX_PIECE_FAILURES {
            state.stop.get_or_insert(Stop::BadPiece(piece));
            self.changed.notify_all();
            return false;
        }
        state.pending.push_front(piece);
        self.changed.notify_all();
        true
    }

    /// Stops the download for every connection.
    pub fn stop(&self, why: Stop) {
        let mut state = self.lock();
        state.stop.get_or_insert(why);
        self.changed.notify_all();
    }

    /// Wakes every waiting connection so it can notice the world changed
    /// (for example that it is the last one standing).
    pub fn wake_all(&self) {
        self.changed.notify_all();
    }

    pub fn stopped(&self) -> Option<Stop> {
        self.lock().stop.clone()
    }

    pub fn remaining(&self) -> u64 {
        self.lock().remaining
    }

    /// Which pieces have landed, with their digests.
    pub fn digests(&self) -> Vec<Option<Digest>> {
        self.lock().digests.clone()
    }
}

/// The next pending piece that has not landed by another route (a plan
/// stream completes pieces that are still queued for ranged reads).
fn pop_missing(state: &mut State) -> Option<u64> {
    while let Some(piece) = state.pending.pop_front() {
        if state.digests[piece as usize].is_none() {
            return Some(piece);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pieces_are_handed_out_once_and_come_back() {
        let q = PieceQueue::new(3, vec![None, Some(Digest([1; 32])), None]);
        assert_eq!(q.remaining(), 2);
        assert_eq!(q.try_take(), Some(0));
        assert_eq!(q.try_take(), Some(2));
        assert_eq!(q.try_take(), None);
        q.give_back([2]);
        assert_eq!(q.take(), Some(2));
        q.complete(0, Digest([0; 32]));
        q.complete(2, Digest([2; 32]));
        assert_eq!(q.remaining(), 0);
        assert_eq!(q.take(), None);
        assert!(q.digests().iter().all(Option::is_some));
    }

    #[test]
    fn pieces_asked_for_ahead_are_not_handed_out() {
        let q = PieceQueue::new(4, vec![None; 4]);
        q.asked(&[0, 2]);
        assert_eq!(q.try_take(), Some(1));
        assert_eq!(q.try_take(), Some(3));
        assert_eq!(q.try_take(), None);
        assert_eq!(q.remaining(), 4, "asked for is not landed");
    }

    #[test]
    fn pieces_landed_elsewhere_are_skipped() {
        let q = PieceQueue::new(3, vec![None, None, None]);
        q.complete(0, Digest([0; 32]));
        q.complete(2, Digest([2; 32]));
        assert_eq!(q.try_take(), Some(1));
        assert_eq!(q.try_take(), None);
    }

    #[test]
    fn a_piece_that_keeps_failing_stops_the_download() {
        let q = PieceQueue::new(1, vec![None]);
        for _ in 0..MAX_PIECE_FAILURES - 1 {
            let p = q.take().unwrap();
            assert!(q.failed(p));
        }
        let p = q.take().unwrap();
        assert!(!q.failed(p));
        assert_eq!(q.stopped(), Some(Stop::BadPiece(0)));
        assert_eq!(q.take(), None);
    }

    #[test]
    fn waiting_takers_wake_when_a_piece_comes_back_or_all_land() {
        let q = Arc::new(PieceQueue::new(2, vec![None, None]));
        let a = q.try_take().unwrap();
        let b = q.try_take().unwrap();
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.take())
        };
        q.give_back([b]);
        assert_eq!(waiter.join().unwrap(), Some(b));
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.take())
        };
        q.complete(a, Digest([0; 32]));
        q.complete(b, Digest([0; 32]));
        assert_eq!(waiter.join().unwrap(), None);
    }
}
