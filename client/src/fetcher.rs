//! One connection's share of a download: take pieces from the shared
//! queue, ask for them with ranged reads (two in flight, so the connection
//! never idles for a round trip, more on a long path, to cover its
//! bandwidth-delay product, never more than its share of the file), hash
//! each piece while its bytes arrive, verify it (waiting for its digest if
//! that is still on its way), and write it at its offset in the part file.
//! With nothing left to take, it asks for copies of pieces held up on
//! slower connections (the end game), and once every piece has landed it
//! leaves whatever copies are still coming.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fastdl_protocol::digest::{piece_range, PieceHasher};
use fastdl_protocol::{Entry, Request, PIECE_SIZE};
use log::warn;

use crate::connection::{Connection, RequestError};
use crate::expected::Expected;
use crate::leftovers::Leftovers;
use crate::piece_writer::{PieceBuf, PieceWriter};
use crate::pieces::{PieceQueue, Stop};
use crate::progress::FileProgress;
use crate::ratelimit::RateLimit;

/// Ranged reads kept in flight per connection on a short path: one being
/// received while the next is already on its way.
const MIN_DEPTH: usize = 2;
/// The most ranged reads in flight on one connection.
const MAX_DEPTH: usize = 12;
/// The rate one connection should be able to reach without waiting for a
/// request: on a long path, enough pieces are asked for ahead to cover
/// this rate times the round trip (the bandwidth-delay product).
const TARGET_RATE: f64 = 100e6;

/// How many ranged reads to keep in flight on a path with round trip `rtt`,
/// when `pieces` pieces are shared by `workers` connections: never so many
/// that one connection holds more than its share while others idle.
fn pipeline_depth(rtt: Duration, pieces: u64, workers: usize) -> usize {
    let ahead = (rtt.as_secs_f64() * TARGET_RATE / PIECE_SIZE as f64).round() as usize;
    let share = pieces.div_ceil(workers.max(1) as u64).max(1);
    (MIN_DEPTH + ahead)
        .min(MAX_DEPTH)
        .min(usize::try_from(share).unwrap_or(usize::MAX))
}

/// Copies (end game) one connection asks for at a time: one arriving
/// while the next is on its way.
const COPY_DEPTH: usize = 2;

/// Bytes read from the socket at a time (hashing and progress follow).
const SLICE: usize = 256 * 1024;

/// What every connection of one download shares.
pub struct FileTask<'a> {
    pub entry: &'a Entry,
    pub writer: &'a PieceWriter<'a>,
    pub queue: &'a PieceQueue,
    /// Per-piece digests from the server (possibly still on their way);
    /// for a one-piece file, the file digest itself is the piece digest.
    pub expected: &'a Expected,
    pub progress: &'a FileProgress<'a>,
    pub limit: Option<&'a RateLimit>,
    /// How many connections share the queue (at most).
    pub workers: usize,
    /// Connections still receiving copies at the end.
    pub leftovers: &'a Leftovers,
}

/// How a connection's share of a download ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every answer was read: the connection can be reused.
    Clean,
    /// It was left (or cut) with copies nobody needs still coming: it
    /// cannot be reused.
    Spent,
}

/// Works on `task` over `conn` until no pieces are left for it. On error
/// every piece this connection held goes back to the queue.
/// `received` counts the bytes of pieces this connection landed. `asked`
/// are pieces already asked for on `conn` (and taken out of the queue),
/// whose answers come first.
pub fn run(
    conn: &mut Connection,
    task: &FileTask<'_>,
    buf: &mut PieceBuf,
    received: &AtomicU64,
    asked: Vec<u64>,
) -> Result<Ended, RequestError> {
    run_then(conn, task, buf, received, asked, None)
}

/// Reads an answer still due on a connection before its first data.
pub type BeforeData<'a> = &'a mut dyn FnMut(&mut Connection) -> Result<(), RequestError>;

/// Like [`run`], on a connection where an answer (the per-piece digests)
/// is still due before any data: `before_data` reads it after this
/// connection's first ranged reads went out, so that both share one round
/// trip.
pub fn run_after(
    conn: &mut Connection,
    task: &FileTask<'_>,
    buf: &mut PieceBuf,
    received: &AtomicU64,
    asked: Vec<u64>,
    before_data: BeforeData<'_>,
) -> Result<Ended, RequestError> {
    run_then(conn, task, buf, received, asked, Some(before_data))
}

fn run_then(
    conn: &mut Connection,
    task: &FileTask<'_>,
    buf: &mut PieceBuf,
    received: &AtomicU64,
    asked: Vec<u64>,
    before_data: Option<BeforeData<'_>>,
) -> Result<Ended, RequestError> {
    let me = task.queue.taker();
    task.queue.held(me, &asked);
    let depth = pipeline_depth(conn.rtt(), task.queue.remaining(), task.workers);
    let mut in_flight: VecDeque<u64> = asked.into();
    let result = pump(
        conn,
        task,
        buf,
        (me, depth),
        &mut in_flight,
        received,
        before_data,
    );
    match result {
        Ok(ended) => Ok(ended),
        // Cut because every piece landed: nothing it waited for is needed.
        Err(_) if task.leftovers.was_cut(me) => Ok(Ended::Spent),
        Err(e) => {
            task.leftovers.answered(me);
            task.queue.give_back(in_flight.drain(..).rev());
            Err(e)
        }
    }
}

fn pump(
    conn: &mut Connection,
    task: &FileTask<'_>,
    buf: &mut PieceBuf,
    (me, depth): (usize, usize),
    in_flight: &mut VecDeque<u64>,
    received: &AtomicU64,
    mut before_data: Option<BeforeData<'_>>,
) -> Result<Ended, RequestError> {
    let size = task.entry.size;
    // Signed up with the leftovers: answers are due on this connection.
    let mut due = false;
    loop {
        while in_flight.len() < depth {
            let next = task.queue.try_take(me).or_else(|| {
                // A connection that still owes the digests must not wait
                // for pieces that themselves wait for those digests.
                if before_data.is_some() {
                    return None;
                }
                let copy = (in_flight.len() < COPY_DEPTH)
                    .then(|| task.queue.take_copy(me, conn.rtt()))
                    .flatten();
                // Waiting for a piece to come back is only for a
                // connection with nothing else to do.
                copy.or_else(|| {
                    in_flight
                        .is_empty()
                        .then(|| task.queue.take(me, conn.rtt()))?
                })
            });
            let Some(piece) = next else { break };
            in_flight.push_back(piece);
            let (offset, length) = piece_range(size, piece);
            conn.send(&Request::Get {
                offset,
                length,
                name: task.entry.name.clone(),
            })?;
        }
        if !due && !in_flight.is_empty() {
            task.leftovers.waiting(me, conn.stream());
            due = true;
        }
        if let Some(read_first) = before_data.take() {
            read_first(conn)?;
        }
        let Some(&piece) = in_flight.front() else {
            return Ok(Ended::Clean);
        };
        if receive(conn, task, piece, buf, me)? {
            received.fetch_add(piece_range(task.entry.size, piece).1, Ordering::Relaxed);
        }
        in_flight.pop_front();
        if in_flight.is_empty() {
            due = false;
            if task.leftovers.answered(me) {
                return Ok(Ended::Spent);
            }
        }
        if task.queue.remaining() == 0 {
            // Every piece landed: what is still due here are copies.
            task.leftovers.all_landed();
            if !in_flight.is_empty() {
                return Ok(Ended::Spent);
            }
        }
        if task.queue.stopped().is_some() {
            // Leave the connection in a clean state: drain what we asked for.
            while let Some(&piece) = in_flight.front() {
                receive_discard(conn, task, piece)?;
                in_flight.pop_front();
            }
            task.queue.give_back(std::mem::take(in_flight));
            if due && task.leftovers.answered(me) {
                return Ok(Ended::Spent);
            }
            return Ok(Ended::Clean);
        }
    }
}

/// Receives one requested piece over a control connection; true if it
/// was this copy that landed.
fn receive(
    conn: &mut Connection,
    task: &FileTask<'_>,
    piece: u64,
    buf: &mut PieceBuf,
    me: usize,
) -> Result<bool, RequestError> {
    let (_, length) = piece_range(task.entry.size, piece);
    conn.data_header(length)?;
    let peer = conn.peer();
    Ok(land_piece(
        conn.data(),
        task,
        (piece, Some(me)),
        buf,
        &peer,
    )?)
}

/// Reads piece `piece` (exactly its length) from `reader`, hashing while
/// the bytes arrive; a piece that matches its digest is written at its
/// offset and recorded, a bad one goes back to the queue. Only an error of
/// the reader is returned: verification and write problems are recorded in
/// the queue. `source` names where the bytes came from, for the log, and
/// `by` the taker that asked for it (none for a plan stream). Returns
/// whether this copy landed (false: it failed, or another copy of the piece
/// had landed first).
pub fn land_piece(
    reader: &mut impl Read,
    task: &FileTask<'_>,
    (piece, by): (u64, Option<usize>),
    buf: &mut PieceBuf,
    source: &dyn std::fmt::Display,
) -> std::io::Result<bool> {
    let (offset, length) = piece_range(task.entry.size, piece);
    let length = length as usize;
    let buf = buf.get(length);
    let mut hasher = PieceHasher::new(task.entry.size, piece);
    let mut got = 0usize;
    while got < length {
        let mut want = SLICE.min(length - got);
        if let Some(limit) = task.limit {
            want = want.min(limit.slice());
            limit.acquire(want);
        }
        let slice = &mut buf[got..got + want];
        if let Err(e) = reader.read_exact(slice) {
            if task.queue.landed(piece) {
                // A copy cut off (the end game): another one landed.
                task.progress.copy_not_used(got as u64);
            } else {
                // This piece will be fetched again: its bytes so far do not
                // count towards the file.
                task.progress.take_back(got as u64);
            }
            return Err(e);
        }
        hasher.update(slice);
        got += want;
        task.progress.add(want as u64);
    }
    let digest = hasher.finalize();
    let Some(want) = task.expected.piece(piece) else {
        // The digests will not come, and the download has been stopped.
        task.progress.take_back(length as u64);
        task.queue.give_back([piece]);
        return Ok(false);
    };
    if digest != want {
        task.progress.take_back(length as u64);
        warn!(
            "{}: piece {piece} (bytes {offset}..{}) from {source} failed verification; fetching it again",
            task.entry.name,
            offset + length as u64,
        );
        if !task.queue.failed(piece) {
            warn!(
                "{}: piece {piece} failed verification too often; giving up on this attempt",
                task.entry.name
            );
        }
        return Ok(false);
    }
    if task.queue.landed(piece) {
        // Another copy (end game) landed first.
        task.progress.copy_not_used(length as u64);
        return Ok(false);
    }
    if let Err(e) = task.writer.write_at(buf, offset) {
        task.queue.give_back([piece]);
        task.queue.stop(Stop::Local(e.to_string()));
        return Ok(false);
    }
    if !task.queue.complete(piece, digest, by) {
        // Both copies verified at once; the other one counted.
        task.progress.copy_not_used(length as u64);
        return Ok(false);
    }
    Ok(true)
}

/// Reads and drops one requested piece (after the download stopped).
fn receive_discard(
    conn: &mut Connection,
    task: &FileTask<'_>,
    piece: u64,
) -> Result<(), RequestError> {
    let (_, length) = piece_range(task.entry.size, piece);
    conn.data_header(length)?;
    Ok(conn.skip_data(length)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_depth_grows_with_the_round_trip() {
        let depth = |rtt| pipeline_depth(rtt, 1000, 4);
        assert_eq!(depth(Duration::ZERO), MIN_DEPTH);
        // Loopback: one piece being received, the next on its way.
        assert_eq!(depth(Duration::from_micros(50)), MIN_DEPTH);
        // 50 ms at 100 MB/s is 5 MB in flight: 5 pieces ahead.
        assert_eq!(depth(Duration::from_millis(50)), MIN_DEPTH + 5);
        assert_eq!(depth(Duration::from_secs(2)), MAX_DEPTH);
    }

    #[test]
    fn one_connection_never_holds_more_than_its_share() {
        let long = Duration::from_millis(50);
        assert_eq!(pipeline_depth(long, 5, 4), 2);
        assert_eq!(pipeline_depth(long, 3, 4), 1);
        assert_eq!(pipeline_depth(Duration::ZERO, 1, 4), 1);
        assert_eq!(pipeline_depth(long, 0, 0), 1);
    }
}
