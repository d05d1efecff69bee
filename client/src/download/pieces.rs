//! The pieces of one file being downloaded, shared by every connection
//! working on it.
//!
//! Connections take pieces from one queue (work-stealing: a fast
//! connection simply takes more), give back the ones they could not
//! finish, and record the ones that landed and verified. A piece that fails
//! verification goes back to the front of the queue, so that another
//! connection is likely to fetch it; after [`MAX_PIECE_FAILURES`] the
//! attempt stops. A taker is a connection worker of the engine, known by
//! its [`Taker`] number for as long as it runs.
//!
//! The end game: once every piece is taken, a connection that runs dry may
//! ask for a copy of a piece still waiting behind others on a slower
//! connection ([`PieceQueue::take_copy`]); whichever copy lands first
//! counts. A connection stuck in loss recovery then no longer holds up the
//! whole file.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fastdl_protocol::Digest;

/// Times one piece may fail verification before the attempt gives up.
pub const MAX_PIECE_FAILURES: u8 = 3;

/// Who takes pieces: a connection worker of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Taker(pub usize);

/// Who took a piece from the queue, and when (in taking order).
#[derive(Clone, Copy)]
struct Taken {
    by: Taker,
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
    paces: HashMap<Taker, Pace>,
    remaining: u64,
    halted: bool,
    /// Copies handed out by the end game.
    copies: u64,
}

/// The pieces of one file: pending, taken, landed.
pub struct PieceQueue {
    state: Mutex<State>,
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
pub const STALL_POLL: Duration = Duration::from_millis(200);

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
                halted: false,
                copies: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next piece for taker `by` without waiting.
    pub fn try_take(&self, by: Taker) -> Option<u64> {
        let mut state = self.lock();
        if state.halted {
            return None;
        }
        pop_missing(&mut state, by)
    }

    /// Marks as landed the pieces found intact in a part file being
    /// resumed (they were checked after the queue was made).
    pub fn already_have(&self, have: &[Option<Digest>]) {
        let mut state = self.lock();
        for (piece, digest) in have.iter().enumerate() {
            if let Some(digest) = digest {
                if state.digests[piece].is_none() {
                    state.digests[piece] = Some(*digest);
                    state.remaining -= 1;
                }
            }
        }
        let State {
            pending, digests, ..
        } = &mut *state;
        pending.retain(|&p| digests[p as usize].is_none());
    }

    /// The end game, without waiting: once no piece is left to take, a
    /// piece for taker `by` (round trip `rtt`) to ask for a second time,
    /// or `None`.
    pub fn take_copy(&self, by: Taker, rtt: Duration) -> Option<u64> {
        take_copy(&mut self.lock(), by, rtt, Instant::now())
    }

    /// Whether `piece` has landed (by any connection).
    pub fn landed(&self, piece: u64) -> bool {
        self.lock().digests[piece as usize].is_some()
    }

    /// Gives back a piece a connection could not finish.
    pub fn give_back(&self, piece: u64) {
        let mut state = self.lock();
        state.taken[piece as usize] = None;
        if state.digests[piece as usize].is_none() {
            state.pending.push_front(piece);
        }
    }

    /// Records a piece that landed and verified, fetched by taker `by`
    /// (`None`: not by a taker, a plan stream); false if it had landed
    /// already (another copy).
    pub fn complete(&self, piece: u64, digest: Digest, by: Option<Taker>) -> bool {
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
        first
    }

    /// Records a piece that failed verification; returns false (and halts
    /// the queue) once it failed too often.
    pub fn failed(&self, piece: u64) -> bool {
        let mut state = self.lock();
        state.failures[piece as usize] += 1;
        state.taken[piece as usize] = None;
        if state.failures[piece as usize] >= MAX_PIECE_FAILURES {
            state.halted = true;
            return false;
        }
        state.pending.push_front(piece);
        true
    }

    /// Halts the queue: nothing more is handed out.
    pub fn halt(&self) {
        self.lock().halted = true;
    }

    pub fn is_halted(&self) -> bool {
        self.lock().halted
    }

    /// Whether a piece is waiting to be taken.
    pub fn has_pending(&self) -> bool {
        let state = self.lock();
        !state.halted && has_missing(&state)
    }

    /// Pieces waiting to be taken (none once halted).
    pub fn untaken(&self) -> u64 {
        let state = self.lock();
        if state.halted {
            0
        } else {
            state.pending.len() as u64
        }
    }

    /// How many copies the end game asked for.
    pub fn copies_asked(&self) -> u64 {
        self.lock().copies
    }

    /// Whether other takers hold pieces that have not landed: a copy may
    /// become worth asking for as time passes.
    pub fn copies_possible(&self) -> bool {
        let state = self.lock();
        !state.halted && state.remaining > 0 && !has_missing(&state)
    }

    /// Bytes of a file of `size` bytes not landed yet.
    pub fn remaining_bytes(&self, size: u64) -> u64 {
        let state = self.lock();
        state
            .digests
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_none())
            .map(|(i, _)| fastdl_protocol::digest::piece_range(size, i as u64).1)
            .sum()
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
fn pop_missing(state: &mut State, by: Taker) -> Option<u64> {
    while let Some(piece) = state.pending.pop_front() {
        if state.digests[piece as usize].is_none() {
            record_taken(state, by, piece);
            return Some(piece);
        }
    }
    None
}

/// Notes that taker `by` asked for `piece`, now.
fn record_taken(state: &mut State, by: Taker, piece: u64) {
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
fn take_copy(state: &mut State, by: Taker, rtt: Duration, now: Instant) -> Option<u64> {
    if state.halted || state.remaining == 0 || has_missing(state) {
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
    let mut due: HashMap<Taker, Vec<(u64, u64, bool)>> = HashMap::new();
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
    state.copies += 1;
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

    const T0: Taker = Taker(0);
    const T1: Taker = Taker(1);

    #[test]
    fn pieces_are_handed_out_once_and_come_back() {
        let q = PieceQueue::new(3, vec![None, Some(Digest([1; 32])), None]);
        assert_eq!(q.remaining(), 2);
        assert_eq!(q.try_take(T0), Some(0));
        assert_eq!(q.try_take(T0), Some(2));
        assert_eq!(q.try_take(T0), None);
        assert!(!q.has_pending() && q.copies_possible());
        q.give_back(2);
        assert!(q.has_pending());
        assert_eq!(q.try_take(T0), Some(2));
        q.complete(0, Digest([0; 32]), None);
        q.complete(2, Digest([2; 32]), None);
        assert_eq!(q.remaining(), 0);
        assert_eq!(q.try_take(T0), None);
        assert!(!q.copies_possible());
        assert!(q.digests().iter().all(Option::is_some));
    }

    #[test]
    fn pieces_found_in_a_resumed_part_are_not_handed_out() {
        let q = PieceQueue::new(4, vec![None; 4]);
        q.already_have(&[Some(Digest([0; 32])), None, Some(Digest([2; 32])), None]);
        assert_eq!(q.remaining(), 2);
        assert_eq!(q.try_take(T0), Some(1));
        assert_eq!(q.try_take(T0), Some(3));
        assert_eq!(q.try_take(T0), None);
    }

    #[test]
    fn pieces_landed_elsewhere_are_skipped() {
        let q = PieceQueue::new(3, vec![None, None, None]);
        q.complete(0, Digest([0; 32]), None);
        q.complete(2, Digest([2; 32]), None);
        assert_eq!(q.try_take(T0), Some(1));
        assert_eq!(q.try_take(T0), None);
    }

    #[test]
    fn a_piece_that_keeps_failing_halts_the_queue() {
        let q = PieceQueue::new(1, vec![None]);
        for _ in 0..MAX_PIECE_FAILURES - 1 {
            let p = q.try_take(T0).unwrap();
            assert!(q.failed(p));
        }
        let p = q.try_take(T0).unwrap();
        assert!(!q.failed(p));
        assert!(q.is_halted());
        assert_eq!(q.try_take(T0), None);
    }

    /// Taker 0 holds pieces 0..4 in taking order; taker 1 fetched 4 and 5.
    fn end_game() -> PieceQueue {
        let q = PieceQueue::new(6, vec![None; 6]);
        for want in 0..4 {
            assert_eq!(q.try_take(T0), Some(want));
        }
        for piece in [4, 5] {
            assert_eq!(q.try_take(T1), Some(piece));
            assert!(q.complete(piece, Digest([9; 32]), Some(T1)));
        }
        q
    }

    #[test]
    fn copies_come_last_first_and_the_piece_arriving_only_once_stalled() {
        let q = end_game();
        let copy =
            |after: Duration| take_copy(&mut q.lock(), T1, Duration::ZERO, Instant::now() + after);
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
        assert_eq!(q.copies_asked(), 4);
    }

    #[test]
    fn no_copies_while_pieces_are_pending_of_own_pieces_or_when_not_worth_it() {
        let q = PieceQueue::new(3, vec![None; 3]);
        assert_eq!(q.try_take(T0), Some(0));
        assert_eq!(q.try_take(T0), Some(1));
        let later = Instant::now() + MIN_STALL * 2;
        assert_eq!(
            take_copy(&mut q.lock(), T1, Duration::ZERO, later),
            None,
            "piece 2 is pending"
        );
        assert_eq!(q.try_take(T1), Some(2));
        assert_eq!(take_copy(&mut q.lock(), T0, Duration::ZERO, later), None, "piece 2 is the first due on its connection, which has not stalled by the copier's own pace");
        let q = end_game();
        let slow_copier = Duration::from_secs(10);
        let soon = Instant::now() + Duration::from_millis(500);
        assert_eq!(
            take_copy(&mut q.lock(), T1, slow_copier, soon),
            None,
            "the holder is sooner"
        );
        assert_eq!(
            take_copy(&mut q.lock(), T0, Duration::ZERO, soon),
            None,
            "its own pieces"
        );
    }

    #[test]
    fn a_copy_that_lands_second_does_not_count() {
        let q = end_game();
        let piece = take_copy(
            &mut q.lock(),
            T1,
            Duration::ZERO,
            Instant::now() + MIN_STALL * 2,
        )
        .unwrap();
        assert!(q.complete(piece, Digest([1; 32]), Some(T1)));
        assert!(!q.complete(piece, Digest([1; 32]), Some(T0)));
        assert!(q.landed(piece));
        assert_eq!(q.remaining(), 3);
    }
}
