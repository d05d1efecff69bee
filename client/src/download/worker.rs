//! One connection of the engine: it keeps a connection to its source open
//! (connecting again, after a pause that grows with each failure, when it
//! breaks), takes work from the board, keeps a few requests in flight
//! (more on a long path, to cover its bandwidth-delay product; never more
//! of one file than its share), and reads their answers in order: digest
//! lists go to their file, pieces are landed.
//!
//! When a connection fails, everything it had in flight goes back to its
//! file, and the file the failure concerned counts a setback against the
//! source (a source too slow for the progress deadline counts as all of
//! them): a file with no usable source left stops, and the scheduler
//! decides when to try it again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fastdl_protocol::digest::piece_range;
use fastdl_protocol::PIECE_SIZE;
use log::debug;

use super::attempt::{Attempt, Stop, MAX_SETBACKS};
use super::landing::{self, Landed, PieceRequest};
use super::outcome::FileError;
use super::pieces::Taker;
use super::source::{Channel, Source, SourceError, Trouble};
use super::{Shared, Wants, Work};
use crate::disk::piece_writer::PieceBuf;
use crate::retry::Backoff;

/// Ranged reads kept in flight per connection on a short path: one being
/// received while the next is already on its way.
const MIN_DEPTH: usize = 2;
/// The most ranged reads in flight on one connection.
pub const MAX_DEPTH: usize = 12;
/// The rate one connection should be able to reach without waiting for a
/// request: on a long path, enough pieces are asked for ahead to cover
/// this rate times the round trip (the bandwidth-delay product).
const TARGET_RATE: f64 = 100e6;

/// How many ranged reads to keep in flight on a path with round trip `rtt`,
/// when `pieces` pieces are shared by `workers` connections: never so many
/// that one connection holds more than its share while others idle.
pub fn pipeline_depth(rtt: Duration, pieces: u64, workers: usize) -> usize {
    let ahead = (rtt.as_secs_f64() * TARGET_RATE / PIECE_SIZE as f64).round() as usize;
    let share = pieces.div_ceil(workers.max(1) as u64).max(1);
    (MIN_DEPTH + ahead)
        .min(MAX_DEPTH)
        .min(usize::try_from(share).unwrap_or(usize::MAX))
}

/// A request in flight.
enum Asked {
    Digests(Arc<Attempt>),
    Piece(Arc<Attempt>, PieceRequest),
}

impl Asked {
    fn attempt(&self) -> &Arc<Attempt> {
        match self {
            Asked::Digests(a) | Asked::Piece(a, _) => a,
        }
    }
}

/// One connection worker.
pub struct Worker {
    shared: Arc<Shared>,
    source: usize,
    src: Arc<dyn Source>,
    me: Taker,
    conn: Option<Box<dyn Channel>>,
    flight: VecDeque<Asked>,
    /// Pieces in flight per file (by the attempt's address).
    held: HashMap<usize, usize>,
    /// Failures in a row, for the pause before the next connect.
    failures: u32,
    buf: PieceBuf,
}

/// The connection requests were sent on (there is one while anything is
/// in flight).
fn live(conn: &mut Option<Box<dyn Channel>>) -> &mut dyn Channel {
    match conn {
        Some(channel) => channel.as_mut(),
        None => unreachable!("requests in flight have an open connection"),
    }
}

fn key(attempt: &Arc<Attempt>) -> usize {
    Arc::as_ptr(attempt) as usize
}

impl Worker {
    pub fn new(shared: Arc<Shared>, source: usize, me: Taker) -> Worker {
        let src = Arc::clone(&shared.sources[source]);
        Worker {
            shared,
            source,
            src,
            me,
            conn: None,
            flight: VecDeque::new(),
            held: HashMap::new(),
            failures: 0,
            buf: PieceBuf::reuse(),
        }
    }

    /// Works until shutdown.
    pub fn run(mut self) {
        if self.shared.settings.connect_early {
            // A failure here is met again, and handled, at the first request.
            if let Ok(channel) = self.src.connect() {
                self.conn = Some(channel);
            }
        }
        while !self.shared.shutdown.is_requested() {
            if !self.fill() {
                break;
            }
            if let Some(asked) = self.flight.pop_front() {
                self.receive(asked);
            }
        }
        self.give_back_all();
    }

    fn rtt(&self) -> Duration {
        self.conn.as_ref().map_or(Duration::ZERO, |c| c.rtt())
    }

    /// Most requests in flight on this connection.
    fn depth(&self) -> usize {
        pipeline_depth(self.rtt(), u64::MAX, 1).min(self.src.max_depth().max(1))
    }

    /// Takes work until the pipeline is full (waiting only while nothing
    /// is in flight). Returns false at shutdown.
    fn fill(&mut self) -> bool {
        while self.flight.len() < self.depth() {
            let idle = self.flight.is_empty();
            let workers = self.shared.settings.connections;
            let rtt = self.rtt();
            let held = &self.held;
            let room_for = |a: &Attempt| {
                let mine = held
                    .get(&(a as *const Attempt as usize))
                    .copied()
                    .unwrap_or(0);
                let share = pipeline_depth(rtt, a.queue.remaining(), workers * a.job.sources.len());
                mine < share.max(1)
            };
            let wants = Wants {
                source: self.source,
                taker: self.me,
                rtt,
                idle,
                room_for: &room_for,
            };
            let Some(work) = self.shared.next_work(&wants, idle) else {
                return !self.shared.shutdown.is_requested();
            };
            match work {
                Work::Plan(attempt) => self.plan(&attempt),
                Work::Digests(attempt) => {
                    let asked = Asked::Digests(attempt);
                    if let Err(e) = self.ask(&asked) {
                        asked.attempt().digests_lost();
                        self.failed(e, asked.attempt());
                        continue;
                    }
                    self.flight.push_back(asked);
                }
                Work::Piece(attempt, piece, ticket) => {
                    let request = PieceRequest {
                        piece,
                        by: Some(self.me),
                        ticket,
                    };
                    let asked = Asked::Piece(attempt, request);
                    if let Err(e) = self.ask(&asked) {
                        asked.attempt().queue.give_back(piece);
                        self.shared.notify();
                        self.failed(e, asked.attempt());
                        continue;
                    }
                    let attempt = asked.attempt();
                    if !self.held.contains_key(&key(attempt)) {
                        let me = self.me;
                        if let Some(socket) = live(&mut self.conn).socket() {
                            attempt.leftovers.waiting(me, socket);
                        }
                    }
                    *self.held.entry(key(attempt)).or_insert(0) += 1;
                    self.flight.push_back(asked);
                }
            }
        }
        true
    }

    fn channel(&mut self) -> &mut dyn Channel {
        live(&mut self.conn)
    }

    /// Sends a request, connecting first if need be.
    fn ask(&mut self, asked: &Asked) -> Result<(), SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.src.connect()?);
        }
        match asked {
            Asked::Digests(attempt) => self.channel().ask_digests(&attempt.job),
            Asked::Piece(attempt, request) => {
                let (offset, length) = piece_range(attempt.size(), request.piece);
                self.channel().ask_range(&attempt.job, offset, length)
            }
        }
    }

    /// Reads the answer to `asked`, the oldest request in flight.
    fn receive(&mut self, asked: Asked) {
        let source_name = self.src.name().to_owned();
        let result = match &asked {
            Asked::Digests(attempt) => self.channel().read_digests(&attempt.job).map(|digests| {
                attempt.digests_arrived(digests, &source_name);
                self.shared.finish(attempt);
                self.shared.notify();
            }),
            Asked::Piece(attempt, request) => {
                let length = piece_range(attempt.size(), request.piece).1;
                let shared = Arc::clone(&self.shared);
                let limit = shared.settings.limit.as_deref();
                let channel = live(&mut self.conn);
                let landed = channel.await_range(length).and_then(|()| {
                    landing::land(
                        channel.body(),
                        attempt,
                        *request,
                        &mut self.buf,
                        limit,
                        &source_name,
                    )
                    .map_err(|e| SourceError {
                        trouble: if crate::net::pace::is_too_slow(&e) {
                            Trouble::TooSlow
                        } else {
                            Trouble::Broken
                        },
                        cause: Box::new(e),
                    })
                });
                self.release(attempt);
                landed.map(|landed| {
                    if landed == Landed::Yes {
                        self.failures = 0;
                        attempt.credit(self.source, length);
                        self.shared.finish(attempt);
                    }
                    if landed == Landed::No {
                        self.shared.notify();
                    }
                })
            }
        };
        if let Err(e) = result {
            let attempt = Arc::clone(asked.attempt());
            match asked {
                Asked::Digests(a) => a.digests_lost(),
                Asked::Piece(a, request) => a.queue.give_back(request.piece),
            }
            self.failed(e, &attempt);
        }
    }

    /// This connection has one piece fewer of `attempt` in flight.
    fn release(&mut self, attempt: &Arc<Attempt>) {
        if let Some(count) = self.held.get_mut(&key(attempt)) {
            *count -= 1;
            if *count == 0 {
                self.held.remove(&key(attempt));
                attempt.leftovers.answered(self.me);
            }
        }
    }

    /// Everything in flight goes back to its file.
    fn give_back_all(&mut self) {
        while let Some(asked) = self.flight.pop_front() {
            match &asked {
                Asked::Digests(a) => a.digests_lost(),
                Asked::Piece(a, request) => {
                    a.queue.give_back(request.piece);
                    self.release(a);
                }
            }
        }
        self.held.clear();
        self.shared.notify();
    }

    /// A request concerning `attempt` failed: the connection is dropped,
    /// everything in flight goes back, the failure is counted where it
    /// belongs, and the next connect waits a while.
    fn failed(&mut self, e: SourceError, attempt: &Arc<Attempt>) {
        // Cut at the end of a file because only copies nobody needs were
        // still coming: not a failure.
        let cut = attempt.leftovers.was_cut(self.me);
        self.conn = None;
        self.give_back_all();
        self.src.note(&e);
        if cut || self.shared.shutdown.is_requested() {
            return;
        }
        let name = self.src.name().to_owned();
        debug!("{}: connection to {name} lost: {e}", attempt.remote());
        match e.trouble {
            Trouble::Fatal => return,
            Trouble::Changed => {
                attempt.stop(Stop::Changed(e));
                return;
            }
            Trouble::TooSlow => {
                self.failures = self.failures.max(MAX_SETBACKS);
                attempt.setback(self.source, MAX_SETBACKS, || FileError::Source {
                    server: name,
                    cause: e,
                });
            }
            Trouble::Busy | Trouble::Broken => {
                self.failures += 1;
                attempt.setback(self.source, 1, || FileError::Source {
                    server: name,
                    cause: e,
                });
            }
        }
        // The first failure tries again at once: a kept connection may
        // simply have gone stale.
        if self.failures > 1 {
            self.shared
                .shutdown
                .sleep(Backoff::RECONNECT.wait(self.failures - 1));
        }
    }

    /// Runs a file's plan: its source pushes it over streams of its own;
    /// each chunk is landed like a piece.
    fn plan(&mut self, attempt: &Arc<Attempt>) {
        let limit = self.shared.settings.limit.as_deref();
        let name = self.src.name().to_owned();
        let source = self.source;
        let land = |reader: &mut dyn std::io::Read, piece: u64| {
            let mut buf = PieceBuf::reuse();
            let request = PieceRequest {
                piece,
                by: None,
                ticket: attempt.expected.ticket(),
            };
            let landed = landing::land(reader, attempt, request, &mut buf, limit, &name)?;
            if landed == Landed::Yes {
                attempt.credit(source, piece_range(attempt.size(), piece).1);
            }
            Ok(landed == Landed::Yes)
        };
        let pushed = self.src.push(&attempt.job, &land);
        match pushed {
            Some(Err(e)) if e.trouble == Trouble::Changed => attempt.stop(Stop::Changed(e)),
            // Nothing can fetch what is missing piece by piece.
            Some(Err(e)) if !attempt.job.ranges => {
                self.src.note(&e);
                attempt.stop(Stop::Failed(FileError::Source {
                    server: name.clone(),
                    cause: e,
                }));
            }
            Some(Err(e)) => {
                self.src.note(&e);
                log::warn!(
                    "{}: plan failed ({e}); using ranged reads",
                    attempt.remote()
                );
            }
            Some(Ok(())) | None => {}
        }
        attempt.plan_done();
        self.shared.finish(attempt);
        self.shared.notify();
    }
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
