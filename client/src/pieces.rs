//! The pieces of one download, shared by all its connections.
//!
//! Connections take pieces from one queue (work-stealing: a fast
//! connection simply takes more), give back the ones they could not
//! finish, and record the ones that landed and verified. A piece that fails
//! verification goes back to the front of the queue, so that another
//! connection is likely to fetch it; after [`MAX_PIECE_FAILURES`] the whole
//! download stops.
//!
//! The end game: once every piece is taken, a connection that runs dry may
//! ask for a copy of a piece still waiting behind others on a slower
//! connection ([`PieceQueue::take_copy`]); whichever copy lands first
//! counts. A connection stuck in loss recovery then no longer holds up the
//! whole file.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// Who took a piece from the queue, and when (in taking order).
#[derive(Clone, Copy)]
struct Taken {
    by: usize,
    seq: u64,
    /// A second connection asked for it too (end game).
    copied: bool,
}

/// How one taker is getting on: when it first took a piece, when one of
/// its pieces last landed, and how many did.
#[derive(Clone, Copy)]
struct Pace {
    started: Instant,
    last: Instant,
    landed: u32,
}

struct State {
    pending: VecDeque<u64>,
    digests: Vec<Option<Digest>>,
    failures: Vec<u8>,
    taken: Vec<Option<Taken>>,
    next_seq: u64,
    paces: HashMap<usize, Pace>,
    remaining: u64,
    stop: Option<Stop>,
}

pub struct PieceQueue {
    state: Mutex<State>,
    changed: Condvar,
    next_taker: AtomicUsize,
}

/// A connection whose next piece has not landed for this long (and for
/// [`STALL_FACTOR`] times the copier's own time per piece) counts as
/// stalled: even the piece it is receiving may then be copied.
const MIN_STALL: Duration = Duration::from_secs(1);
const STALL_FACTOR: u32 = 4;
/// A copy is asked for only if it should arrive this many times sooner
/// than the original: copies cost bandwidth, and the connection left with
/// the original is cut at the end instead of being reused.
const COPY_MARGIN: u32 = 2;
/// How often a connection waiting for work looks for stalled ones.
const STALL_POLL: Duration = Duration::from_millis(200);

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
                taken: vec![None; count as usize],
                next_seq: 0,
                paces: HashMap::new(),
                remaining,
                stop: None,
            }),
            changed: Condvar::new(),
            next_taker: AtomicUsize::new(0),
        }
    }

    /// A fresh identity for one connection taking pieces.
    pub fn taker(&self) -> usize {
        self.next_taker.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes pieces a connection asked for on its own (before it took
    /// anything from the queue) out of the pending ones.
    pub fn asked(&self, pieces: &[u64]) {
        self.lock().pending.retain(|p| !pieces.contains(p));
    }

    /// Records pieces asked for ahead (see [`Self::asked`]) as held by
    /// taker `by`, once it is known who receives them.
    pub fn held(&self, by: usize, pieces: &[u64]) {
        let mut state = self.lock();
        for &piece in pieces {
            record_taken(&mut state, by, piece);
        }
    }

    /// Takes the next piece for taker `by` without waiting.
    pub fn try_take(&self, by: usize) -> Option<u64> {
        let mut state = self.lock();
        if state.stop.is_some() {
            return None;
        }
        pop_missing(&mut state, by)
    }

    /// Takes the next piece for taker `by`, waiting while other connections
    /// still hold pieces that might come back; in the end game this may be
    /// a copy (see [`Self::take_copy`]), also of the piece a stalled
    /// connection is stuck on. `None` once everything landed or the
    /// download stopped.
    pub fn take(&self, by: usize, rtt: Duration) -> Option<u64> {
        let mut state = self.lock();
        loop {
            if state.stop.is_some() || state.remaining == 0 {
                return None;
            }
            if let Some(piece) = pop_missing(&mut state, by) {
                return Some(piece);
            }
            if let Some(piece) = take_copy(&mut state, by, rtt, Instant::now()) {
                return Some(piece);
            }
            state = self
                .changed
                .wait_timeout(state, STALL_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The end game, without waiting: once no piece is left to take, a
    /// piece for taker `by` (round trip `rtt`) to ask for a second time,
    /// or `None`.
    pub fn take_copy(&self, by: usize, rtt: Duration) -> Option<u64> {
        take_copy(&mut self.lock(), by, rtt, Instant::now())
    }

    /// Whether `piece` has landed (by any connection).
    pub fn landed(&self, piece: u64) -> bool {
        self.lock().digests[piece as usize].is_some()
    }

    /// Gives back pieces a connection could not finish.
    pub fn give_back(&self, pieces: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        for piece in pieces {
            state.taken[piece as usize] = None;
            state.pending.push_front(piece);
        }
        self.changed.notify_all();
    }

    /// Records a piece that landed and verified, fetched by taker `by`
    /// (`None`: not by a taker, a plan stream); false if it had landed
    /// already (another copy).
    pub fn complete(&self, piece: u64, digest: Digest, by: Option<usize>) -> bool {
        let mut state = self.lock();
        let slot = &mut state.digests[piece as usize];
        let first = slot.is_none();
        if first {
            *slot = Some(digest);
            state.remaining -= 1;
            if let Some(pace) = by.and_then(|by| state.paces.get_mut(&by)) {
                pace.last = Instant::now();
                pace.landed += 1;
            }
        }
        if state.remaining == 0 {
            self.changed.notify_all();
        }
        first
    }

    /// Records a piece that failed verification; returns false (and stops
    /// the download) once it failed too often.
    pub fn failed(&self, piece: u64) -> bool {
        let mut state = self.lock();
        state.failures[piece as usize] += 1;
        state.taken[piece as usize] = None;
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
/// stream completes pieces that are still queued for ranged reads),
/// recorded as taken by `by`.
fn pop_missing(state: &mut State, by: usize) -> Option<u64> {
    while let Some(piece) = state.pending.pop_front() {
        if state.digests[piece as usize].is_none() {
            record_taken(state, by, piece);
            return Some(piece);
        }
    }
    None
}

/// Notes that taker `by` asked for `piece`, now.
fn record_taken(state: &mut State, by: usize, piece: u64) {
    let seq = state.next_seq;
    state.next_seq += 1;
    state.paces.entry(by).or_insert_with(|| {
        let now = Instant::now();
        Pace {
            started: now,
            last: now,
            landed: 0,
        }
    });
    state.taken[piece as usize] = Some(Taken {
        by,
        seq,
        copied: false,
    });
}

/// The end game: once no piece is left to take, a piece for taker `by`
/// (whose round trip is `rtt`) to ask for a second time, marked as copied.
/// A piece is worth copying when its holder would deliver it more than
/// [`COPY_MARGIN`] times later than a copy would arrive (a round trip plus
/// the copier's time per piece); the holder's first piece due (likely
/// arriving already) only once the holder has stalled. Of the worthwhile
/// pieces, the one expected last. No piece is copied twice. `None` while
/// pieces are still pending, or when nothing is worth copying.
fn take_copy(state: &mut State, by: usize, rtt: Duration, now: Instant) -> Option<u64> {
    if state.stop.is_some() || state.remaining == 0 || has_missing(state) {
        return None;
    }
    let per_piece = |pace: &Pace| match pace.landed {
        0 => now.saturating_duration_since(pace.started),
        n => pace.last.saturating_duration_since(pace.started) / n,
    };
    let own = state.paces.get(&by).map(per_piece);
    let copy_eta = rtt + own.unwrap_or(rtt);
    let stall_after = own.map_or(MIN_STALL, |t| (t * STALL_FACTOR).max(MIN_STALL));
    // Per other taker, in taking order: the pieces it still owes.
    let mut due: HashMap<usize, Vec<(u64, u64, bool)>> = HashMap::new();
    for (piece, taken) in state.taken.iter().enumerate() {
        match taken {
            Some(t) if t.by != by && state.digests[piece].is_none() => due
                .entry(t.by)
                .or_default()
                .push((t.seq, piece as u64, t.copied)),
            _ => {}
        }
    }
    let (_, piece) = due
        .into_iter()
        .filter_map(|(holder, mut pieces)| {
            let pace = state.paces.get(&holder)?;
            pieces.sort_unstable();
            let (place, &(_, piece, _)) = pieces
                .iter()
                .enumerate()
                .rev()
                .find(|(_, (_, _, copied))| !copied)?;
            let waited = now.saturating_duration_since(pace.last);
            let eta = if waited >= stall_after {
                Duration::MAX
            } else if place == 0 {
                return None;
            } else {
                (per_piece(pace) * (place as u32 + 1)).saturating_sub(waited)
            };
            (eta > copy_eta.saturating_mul(COPY_MARGIN)).then_some((eta, piece))
        })
        .max()?;
    if let Some(t) = state.taken[piece as usize].as_mut() {
        t.copied = true;
    }
    Some(piece)
}

/// Whether a pending piece is still to be taken.
fn has_missing(state: &State) -> bool {
    state
        .pending
        .iter()
        .any(|&piece| state.digests[piece as usize].is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pieces_are_handed_out_once_and_come_back() {
        let q = PieceQueue::new(3, vec![None, Some(Digest([1; 32])), None]);
        assert_eq!(q.remaining(), 2);
        assert_eq!(q.try_take(0), Some(0));
        assert_eq!(q.try_take(0), Some(2));
        assert_eq!(q.try_take(0), None);
        q.give_back([2]);
        assert_eq!(q.take(0, Duration::ZERO), Some(2));
        q.complete(0, Digest([0; 32]), None);
        q.complete(2, Digest([2; 32]), None);
        assert_eq!(q.remaining(), 0);
        assert_eq!(q.take(0, Duration::ZERO), None);
        assert!(q.digests().iter().all(Option::is_some));
    }

    #[test]
    fn pieces_asked_for_ahead_are_not_handed_out() {
        let q = PieceQueue::new(4, vec![None; 4]);
        q.asked(&[0, 2]);
        assert_eq!(q.try_take(0), Some(1));
        assert_eq!(q.try_take(0), Some(3));
        assert_eq!(q.try_take(0), None);
        assert_eq!(q.remaining(), 4, "asked for is not landed");
    }

    #[test]
    fn pieces_landed_elsewhere_are_skipped() {
        let q = PieceQueue::new(3, vec![None, None, None]);
        q.complete(0, Digest([0; 32]), None);
        q.complete(2, Digest([2; 32]), None);
        assert_eq!(q.try_take(0), Some(1));
        assert_eq!(q.try_take(0), None);
    }

    #[test]
    fn a_piece_that_keeps_failing_stops_the_download() {
        let q = PieceQueue::new(1, vec![None]);
        for _ in 0..MAX_PIECE_FAILURES - 1 {
            let p = q.take(0, Duration::ZERO).unwrap();
            assert!(q.failed(p));
        }
        let p = q.take(0, Duration::ZERO).unwrap();
        assert!(!q.failed(p));
        assert_eq!(q.stopped(), Some(Stop::BadPiece(0)));
        assert_eq!(q.take(0, Duration::ZERO), None);
    }

    #[test]
    fn waiting_takers_wake_when_a_piece_comes_back_or_all_land() {
        let q = Arc::new(PieceQueue::new(2, vec![None, None]));
        let a = q.try_take(0).unwrap();
        let b = q.try_take(0).unwrap();
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.take(0, Duration::ZERO))
        };
        q.give_back([b]);
        assert_eq!(waiter.join().unwrap(), Some(b));
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.take(0, Duration::ZERO))
        };
        q.complete(a, Digest([0; 32]), None);
        q.complete(b, Digest([0; 32]), None);
        assert_eq!(waiter.join().unwrap(), None);
    }

    /// Taker 0 holds pieces 0..4 in taking order; taker 1 fetched 4 and 5.
    fn end_game() -> PieceQueue {
        let q = PieceQueue::new(6, vec![None; 6]);
        for want in 0..4 {
            assert_eq!(q.try_take(0), Some(want));
        }
        for piece in [4, 5] {
            assert_eq!(q.try_take(1), Some(piece));
            assert!(q.complete(piece, Digest([9; 32]), Some(1)));
        }
        q
    }

    #[test]
    fn copies_come_last_first_and_the_piece_arriving_only_once_stalled() {
        let q = end_game();
        let copy =
            |after: Duration| take_copy(&mut q.lock(), 1, Duration::ZERO, Instant::now() + after);
        let soon = Duration::from_millis(500);
        assert_eq!(copy(soon), Some(3), "the piece due last");
        assert_eq!(copy(soon), Some(2));
        assert_eq!(copy(soon), Some(1));
        assert_eq!(copy(soon), None, "the piece arriving now is left alone");
        assert_eq!(
            copy(MIN_STALL * 2),
            Some(0),
            "unless its connection stalled"
        );
        assert_eq!(copy(MIN_STALL * 2), None, "no piece is copied twice");
    }

    #[test]
    fn no_copies_while_pieces_are_pending_of_own_pieces_or_when_not_worth_it() {
        let q = PieceQueue::new(3, vec![None; 3]);
        assert_eq!(q.try_take(0), Some(0));
        assert_eq!(q.try_take(0), Some(1));
        let later = Instant::now() + MIN_STALL * 2;
        assert_eq!(
            take_copy(&mut q.lock(), 1, Duration::ZERO, later),
            None,
            "piece 2 is pending"
        );
        assert_eq!(q.try_take(1), Some(2));
        assert_eq!(take_copy(&mut q.lock(), 0, Duration::ZERO, later), None, "piece 2 is the first due on its connection, which has not stalled by the copier's own pace");
        let q = end_game();
        let slow_copier = Duration::from_secs(10);
        let soon = Instant::now() + Duration::from_millis(500);
        assert_eq!(
            take_copy(&mut q.lock(), 1, slow_copier, soon),
            None,
            "the holder is sooner"
        );
        assert_eq!(
            take_copy(&mut q.lock(), 0, Duration::ZERO, soon),
            None,
            "its own pieces"
        );
    }

    #[test]
    fn a_copy_that_lands_second_does_not_count() {
        let q = end_game();
        let piece = take_copy(
            &mut q.lock(),
            1,
            Duration::ZERO,
            Instant::now() + MIN_STALL * 2,
        )
        .unwrap();
        assert!(q.complete(piece, Digest([1; 32]), Some(1)));
        assert!(!q.complete(piece, Digest([1; 32]), Some(0)));
        assert!(q.landed(piece));
        assert_eq!(q.remaining(), 3);
    }

    #[test]
    fn a_waiting_taker_wakes_for_a_stalled_connection() {
        let q = Arc::new(end_game());
        // Taker 1 has nothing left but copies; taker 0 holds four pieces
        // and lands none: after the stall time `take` hands out a copy.
        let waiter = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(piece) = q.take(1, Duration::ZERO) {
                    got.push(piece);
                    q.complete(piece, Digest([3; 32]), Some(1));
                }
                got
            })
        };
        let mut got = waiter.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert_eq!(q.remaining(), 0);
    }
}
