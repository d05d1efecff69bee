//! The download engine: connections take pieces, not files.
//!
//! Each source (a server) gets `--connections` workers, each with its own
//! long-lived connection. All of them take their work from one board: the
//! files being downloaded, in the order they were submitted, and the files
//! waiting to start. A worker takes, in this order: the digests a file
//! still needs, a plan to run (`--plan`), the next piece of the first file
//! that has one for it, and a copy of a piece held up on a slower
//! connection (the end game). Opener threads ([`OPENERS`]) start files
//! ahead of the workers: the next one as soon as fewer pieces are left to
//! take than the workers could ask for at once ([`LOOKAHEAD_PER_WORKER`]
//! each), up to `--jobs` files. So a queue of small files keeps every
//! connection busy (eight 100 KiB files in flight at once on four
//! connections, each landing on its own), one large file has all of them,
//! and the next large file is not preallocated on disk until the current
//! one is nearly handed out. Opening (the existing-file check, the part
//! file) never delays a connection's reads.
//!
//! Each file is one [`attempt::Attempt`]: its phases, its pieces, its
//! verdict. The engine hands verified part files to the lander and every
//! other outcome to the scheduler; it never decides whether to try again.
//!
//! Submodules: `source` (the seam to where bytes come from), `attempt`
//! (one file), `head` (a first piece its probe brought), `worker` (one
//! connection), `landing` (one piece), `pieces` (the piece queue and the
//! end game), `expected` (digests that may still be on their way),
//! `leftovers` (connections cut at the end), `ratelimit` (`--limit-rate`),
//! `outcome` (what goes in and comes out).

pub mod attempt;
pub mod expected;
pub mod head;
pub mod landing;
pub mod leftovers;
pub mod outcome;
pub mod pieces;
pub mod ratelimit;
pub mod source;
pub mod worker;

#[cfg(test)]
mod engine_tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use fastdl_support::human_bytes;
use log::{error, info};

use self::attempt::{Attempt, Context};
use self::expected::Ticket;
use self::head::Head;
use self::outcome::{Job, Report, ToLand};
use self::pieces::{Taker, STALL_POLL};
use self::ratelimit::RateLimit;
use self::source::Source;
use crate::disk::outdir::OutDir;
use crate::progress::Progress;
use crate::shutdown::Shutdown;

/// How the engine works.
pub struct Settings {
    /// Connections (workers) per source.
    pub connections: usize,
    /// Most files being downloaded at once (`--jobs`).
    pub max_files: usize,
    /// `--plan`: let each file's source push it first.
    pub plan: bool,
    /// `--limit-rate`, shared by every connection.
    pub limit: Option<Arc<RateLimit>>,
    /// Connect every worker at start instead of at its first request
    /// (`--once`: downloads follow at once, and the handshakes overlap
    /// the list fetch).
    pub connect_early: bool,
}

/// What the engine's workers share.
pub struct Shared {
    /// Where pieces come from (fastdl servers, then the web).
    pub sources: Vec<Arc<dyn Source>>,
    /// Connections, jobs, rate limit, plan.
    pub settings: Settings,
    /// The output folder.
    pub out: OutDir,
    /// Bars, counters and events.
    pub progress: Arc<Progress>,
    /// Ctrl-C: every wait ends.
    pub shutdown: Arc<Shutdown>,
    board: Mutex<Board>,
    /// Signalled when work may be there: a file opened, a piece given
    /// back, shutdown.
    wake: Condvar,
    /// Signalled when the opener may have a file to start: one submitted,
    /// pieces taken, a file over, shutdown.
    wake_opener: Condvar,
    outcomes: Sender<Report>,
    verified: Sender<ToLand>,
    /// Per source, whether its workers run (see [`Source::on_demand`]).
    started: Vec<AtomicBool>,
}

/// The files of the engine.
#[derive(Default)]
struct Board {
    /// Submitted, not started.
    queued: VecDeque<Job>,
    /// Being downloaded, in the order they were started.
    active: Vec<Arc<Attempt>>,
    /// Being opened by a worker (they count towards `max_files`).
    opening: usize,
    /// Workers waiting on `wake`, and openers waiting on `wake_opener`:
    /// a condition variable's notify is a system call even when nobody
    /// waits, and the workers signalled the openers at every piece they
    /// took (for 1000 small files, some 16,000 `futex` calls in a run of
    /// 0.3 s).
    workers_waiting: usize,
    openers_waiting: usize,
}

/// What a worker takes from the board.
pub enum Work {
    /// Ask a file's source for its per-piece digests.
    Digests(Arc<Attempt>),
    /// Run a file's plan (`--plan`).
    Plan(Arc<Attempt>),
    /// Fetch a piece (or a copy of one: the end game), judged against the
    /// digests request out when it was taken.
    Piece(Arc<Attempt>, u64, Ticket),
}

/// Threads opening files. A file's opening is its existing-file check,
/// its part file and, for a URL, writing the first piece its probe
/// brought (all of a small file): with 1000 URLs of 100 KiB one opener
/// was the busiest thread (a third of the client's CPU) and the probes
/// waited for it; two cut the run from 0.32 s to 0.28 s (median of 8, on
/// tmpfs). More do not help on two cores.
const OPENERS: usize = 2;

/// Pieces left to take, per worker, below which the opener starts the
/// next file: the most one connection keeps in flight on a long path, so
/// that no connection runs dry while a file is being opened.
pub const LOOKAHEAD_PER_WORKER: u64 = worker::MAX_DEPTH as u64;

/// What a worker may take, as far as it is concerned.
pub struct Wants<'a> {
    /// The worker's source.
    pub source: usize,
    /// Which worker asks (pieces are taken per worker).
    pub taker: Taker,
    /// Its connection's round trip (for the end game's estimate).
    pub rtt: Duration,
    /// Whether it can run something long without holding up answers it
    /// owes (a plan).
    pub idle: bool,
    /// Whether it may take another piece of this file (its own share).
    pub room_for: &'a dyn Fn(&Attempt) -> bool,
}

/// The running engine.
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// `--limit-rate`, for bytes read outside the engine (URL probes), so
    /// that one limit holds for the whole process.
    pub fn limit(&self) -> Option<Arc<RateLimit>> {
        self.shared.settings.limit.clone()
    }

    /// Starts the workers: `settings.connections` per source. Outcomes go
    /// to `outcomes`, verified files to `verified` (the lander).
    pub fn start(
        sources: Vec<Arc<dyn Source>>,
        settings: Settings,
        out: OutDir,
        progress: Arc<Progress>,
        shutdown: Arc<Shutdown>,
        outcomes: Sender<Report>,
        verified: Sender<ToLand>,
    ) -> Engine {
        let started = sources.iter().map(|_| Default::default()).collect();
        let shared = Arc::new(Shared {
            started,
            sources,
            settings,
            out,
            progress,
            shutdown,
            board: Mutex::new(Board::default()),
            wake: Condvar::new(),
            wake_opener: Condvar::new(),
            outcomes,
            verified,
        });
        for source in 0..shared.sources.len() {
            if !shared.sources[source].on_demand() {
                start_workers(&shared, source);
            }
        }
        {
            let shared = Arc::clone(&shared);
            spawn("journals", move || shared.keep_journals());
        }
        for i in 0..OPENERS {
            let shared = Arc::clone(&shared);
            spawn(&format!("opener {i}"), move || shared.open_ahead());
        }
        {
            // Waiters on the board wake when shutdown is signalled.
            let shared = Arc::clone(&shared);
            spawn("engine stop", move || {
                let _ = shared.shutdown.signal().recv();
                let _board = shared.lock();
                shared.wake.notify_all();
                shared.wake_opener.notify_all();
            });
        }
        Engine { shared }
    }

    /// Queues a file.
    pub fn submit(&self, job: Job) {
        for &source in &job.sources {
            start_workers(&self.shared, source);
        }
        let mut board = self.shared.lock();
        board.queued.push_back(job);
        let wake = board.openers_waiting > 0;
        drop(board);
        if wake {
            self.shared.wake_opener.notify_one();
        }
    }

    /// Why the run must stop, if a source turned out unusable.
    pub fn fatal(&self) -> Option<String> {
        self.shared.sources.iter().find_map(|s| s.fatal())
    }

    /// The sources, for the scheduler's list fetches.
    pub fn sources(&self) -> &[Arc<dyn Source>] {
        &self.shared.sources
    }
}

/// Starts the `--connections` workers of `source`, unless they run.
/// Worker `i` of source `s` is taker `s * connections + i`.
fn start_workers(shared: &Arc<Shared>, source: usize) {
    let Some(started) = shared.started.get(source) else {
        return;
    };
    if started.swap(true, Ordering::SeqCst) {
        return;
    }
    let connections = shared.settings.connections;
    for i in 0..connections {
        let me = Taker(source * connections + i);
        let shared = Arc::clone(shared);
        spawn(&format!("conn {source}.{}", me.0), move || {
            worker::Worker::new(shared, source, me).run()
        });
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        error!("cannot start thread {name}: {e}");
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next thing `wants` should do; waits for one if `wait` (until
    /// shutdown: `None`).
    pub fn next_work(&self, wants: &Wants<'_>, wait: bool) -> Option<Work> {
        let mut board = self.lock();
        loop {
            if self.shutdown.is_requested() {
                return None;
            }
            let before = board.active.len();
            board
                .active
                .retain(|a| !a.is_stopped() && a.queue.remaining() > 0);
            let found = find_work(&board, wants);
            let fewer = matches!(found, Some(Work::Piece(..))) || board.active.len() < before;
            if fewer && board.openers_waiting > 0 {
                // Fewer pieces left to take, or a file over: the opener
                // may start the next one.
                self.wake_opener.notify_one();
            }
            if found.is_some() {
                return found;
            }
            if !wait {
                return None;
            }
            // A copy may become worth asking for as time passes: look
            // again soon while some file is down to its last pieces.
            let copies = board
                .active
                .iter()
                .any(|a| a.uses(wants.source) && a.queue.copies_possible());
            board.workers_waiting += 1;
            board = if copies {
                self.wake
                    .wait_timeout(board, STALL_POLL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            } else {
                self.wake.wait(board).unwrap_or_else(|p| p.into_inner())
            };
            board.workers_waiting -= 1;
        }
    }

    /// An opener: starts the queued files, in order, whenever the active
    /// ones have fewer pieces left to take than the workers could ask for
    /// at once, up to `max_files` files; until shutdown.
    fn open_ahead(&self) {
        loop {
            // The workers running now (a source on demand starts later).
            let running = self
                .started
                .iter()
                .filter(|s| s.load(Ordering::Relaxed))
                .count();
            let lookahead =
                (running.max(1) * self.settings.connections) as u64 * LOOKAHEAD_PER_WORKER;
            let job = {
                let mut board = self.lock();
                loop {
                    if self.shutdown.is_requested() {
                        return;
                    }
                    board
                        .active
                        .retain(|a| !a.is_stopped() && a.queue.remaining() > 0);
                    let untaken: u64 = board.active.iter().map(|a| a.queue.untaken()).sum();
                    let room = board.active.len() + board.opening < self.settings.max_files;
                    if room && untaken < lookahead {
                        if let Some(job) = board.queued.pop_front() {
                            board.opening += 1;
                            break job;
                        }
                    }
                    board.openers_waiting += 1;
                    board = self
                        .wake_opener
                        .wait(board)
                        .unwrap_or_else(|p| p.into_inner());
                    board.openers_waiting -= 1;
                }
            };
            self.open(job);
        }
    }

    /// Phase 1 of a file: opens it and puts it on the board (or reports
    /// the outcome of an attempt that ended there).
    fn open(&self, job: Job) {
        let cx = Context {
            out: &self.out,
            progress: &self.progress,
            outcomes: &self.outcomes,
            verified: &self.verified,
            plan: self.settings.plan,
        };
        let opened = Attempt::open(job.clone(), &cx);
        if let (Ok(attempt), Some(head)) = (&opened, &job.head) {
            land_head(attempt, head);
        }
        let mut board = self.lock();
        board.opening -= 1;
        match opened {
            // Nothing (left) to fetch: an empty file, a file whose first
            // answer held it all, a part file complete before a crash.
            Ok(attempt) if attempt.queue.remaining() == 0 => {
                drop(board);
                self.finish(&attempt);
            }
            Ok(attempt) => {
                board.active.push(attempt);
                if board.workers_waiting > 0 {
                    self.wake.notify_all();
                }
            }
            Err(outcome) => {
                drop(board);
                let _ = self.outcomes.send((job, outcome));
            }
        }
    }

    /// Phase 5 of a file whose pieces may all be in ([`Attempt::finish`]);
    /// a file fetched from several servers logs what each delivered.
    pub fn finish(&self, attempt: &Attempt) {
        if !attempt.finish() || attempt.job.sources.len() < 2 {
            return;
        }
        let shares = attempt.shares();
        let total = shares.iter().map(|(_, b)| b).sum::<u64>().max(1);
        let split: Vec<String> = shares
            .iter()
            .map(|&(s, bytes)| {
                format!(
                    "{} {} ({:.0}%)",
                    self.sources[s].name(),
                    human_bytes(bytes),
                    bytes as f64 * 100.0 / total as f64
                )
            })
            .collect();
        info!(
            "{}: pieces by server: {}",
            attempt.remote(),
            split.join(", ")
        );
    }

    /// Wakes workers waiting for work (a piece came back).
    pub fn notify(&self) {
        let board = self.lock();
        if board.workers_waiting > 0 {
            self.wake.notify_all();
        }
    }

    /// Writes each active file's journal about once a second, for the
    /// life of the engine.
    fn keep_journals(&self) {
        while !self.shutdown.sleep(Duration::from_secs(1)) {
            let active: Vec<Arc<Attempt>> = self.lock().active.clone();
            for attempt in active {
                attempt.keep_journal(false);
            }
        }
    }
}

/// Lands a file's first piece from the bytes fetched with the job (an HTTP
/// probe's answer), as if a connection had just read them. Its digest was
/// taken over exactly that piece of a file of this size.
fn land_head(attempt: &Attempt, head: &Head) {
    let length = fastdl_protocol::digest::piece_range(attempt.size(), 0).1 as usize;
    if head.bytes().len() != length || attempt.queue.landed(0) {
        return;
    }
    let request = landing::PieceRequest {
        piece: 0,
        by: None,
        ticket: attempt.expected.ticket(),
    };
    // Verification and write problems are recorded in the attempt.
    landing::land_bytes(
        attempt,
        request,
        head.bytes(),
        head.digest(),
        "the first answer",
    );
}

/// Work on the active files for `wants`, without waiting.
fn find_work(board: &Board, wants: &Wants<'_>) -> Option<Work> {
    let usable = || {
        board
            .active
            .iter()
            .filter(|a| a.uses(wants.source) && !a.is_stopped())
    };
    for a in usable() {
        if a.take_digests_request() {
            return Some(Work::Digests(Arc::clone(a)));
        }
        if wants.idle && a.take_plan() {
            return Some(Work::Plan(Arc::clone(a)));
        }
    }
    for a in usable() {
        if a.is_open() && (wants.room_for)(a) {
            if let Some(piece) = a.queue.try_take(wants.taker) {
                return Some(Work::Piece(Arc::clone(a), piece, a.expected.ticket()));
            }
        }
    }
    for a in usable() {
        if a.is_open() && (wants.room_for)(a) {
            if let Some(piece) = a.queue.take_copy(wants.taker, wants.rtt) {
                return Some(Work::Piece(Arc::clone(a), piece, a.expected.ticket()));
            }
        }
    }
    None
}
