//! Downloading one listed file: the existing-file check, the part file,
//! the per-piece digests (fetched while a fresh download's first pieces are
//! already on their way), `--connections` workers sharing the piece queue
//! (taking over the connections `--once`'s head start primed for this
//! file), and the final whole-file check; flushing and landing are the
//! lander's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastdl_protocol::digest::{piece_count, piece_range, root_digest, PieceHasher};
use fastdl_protocol::{Digest, Entry, ErrorCode, PieceTree, PIECE_SIZE};
use fastdl_support::human_bytes;
use fastdl_support::shutdown::Shutdown;
use log::{debug, info, warn};

use crate::connection::{Ahead, Connection, RequestError};
use crate::expected::Expected;
use crate::fetcher::{self, Ended, FileTask};
use crate::journal::Journal;
use crate::leftovers::Leftovers;
use crate::outdir::{Found, OutDir};
use crate::piece_writer::{PieceBuf, PieceWriter};
use crate::pieces::{PieceQueue, Stop};
use crate::plan;
use crate::pool::Pool;
use crate::progress::Progress;
use crate::ratelimit::RateLimit;
use crate::store::{self, Spot};

/// Consecutive failed connection attempts after which a worker gives up
/// on the current attempt at a file (the scheduler retries the file later).
const MAX_CONNECT_FAILURES: u32 = 4;

/// How one attempt at a file ended.
#[derive(Debug)]
pub enum Outcome {
    /// Verified and in place (possibly under a numbered name).
    Landed,
    /// An identical file was already in the output folder.
    AlreadyHad(PathBuf),
    /// The server's file changed or left its list: fetch the list again.
    Changed(String),
    /// This attempt failed; the reason names the file and what went wrong.
    Failed(String),
    /// Shutdown was requested.
    Cancelled,
    /// Complete and verified, waiting in its part file to be flushed and
    /// landed by the [`crate::lander`].
    Verified(Box<Verified>),
}

/// A verified part file on its way to its final name.
#[derive(Debug)]
pub struct Verified {
    /// The open part file, to flush.
    pub part: std::fs::File,
    /// Where it lands (its folder open, the part and journal beside it).
    pub spot: Spot,
    /// Network rate and bytes fetched in this attempt, for the log.
    pub rate: f64,
    pub fetched: u64,
}

/// One file to fetch, and the servers that agree on what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub entry: Entry,
    /// Indices into [`Downloader::pools`].
    pub servers: Vec<usize>,
}

pub struct Downloader {
    /// One connection pool per `--server`.
    pub pools: Vec<Pool>,
    pub out: OutDir,
    pub connections: usize,
    /// `--plan`: let the server push the file over its N-stream plan first.
    pub plan: bool,
    pub limit: Option<RateLimit>,
    pub progress: Arc<Progress>,
    pub shutdown: Arc<Shutdown>,
}

impl Downloader {
    /// Why the run must stop, if a server turned out unusable (see
    /// [`Pool::fatal`]).
    pub fn fatal(&self) -> Option<&str> {
        self.pools.iter().find_map(|p| p.fatal())
    }

    /// Makes one attempt at downloading `job.entry` from `job.servers`.
    pub fn download(&self, job: &Job) -> Outcome {
        let entry = &job.entry;
        match store::already_have(&self.out, entry) {
            Ok(Some(path)) => return Outcome::AlreadyHad(path),
            Ok(None) => {}
            Err(e) => {
                return Outcome::Failed(format!(
                    "{}: cannot check the output folder: {e}",
                    entry.name
                ))
            }
        }
        let spot = match Spot::make(&self.out, &entry.name) {
            Ok(spot) => spot,
            Err(e) => {
                return Outcome::Failed(format!("{}: cannot prepare its folder: {e}", entry.name))
            }
        };
        let part_path = spot.part_path();
        let resume = match self.prepare_resume(entry, &spot) {
            Ok(resume) => resume,
            Err(e) => {
                return Outcome::Failed(format!(
                    "{}: cannot check {}: {e}",
                    entry.name,
                    part_path.display()
                ))
            }
        };
        if !resume {
            // A file that cannot fit is refused before anything is asked
            // for it (a listed size also bounds what its digests may cost).
            if let Err(why) = self.room_for(entry) {
                return Outcome::Failed(format!("{}: {why}", entry.name));
            }
        }
        let part = match store::open_part(&spot, entry.size) {
            Ok(file) => file,
            Err(e) => {
                return Outcome::Failed(format!(
                    "{}: cannot prepare {}: {e}",
                    entry.name,
                    part_path.display()
                ))
            }
        };
        let count = piece_count(entry.size);
        // A fresh download from one server does not wait for the per-piece
        // digests: its workers ask for pieces while the digests are on
        // their way, and each piece waits for its digest before it is
        // judged. That saves a round trip before the data flows. Resuming
        // needs the digests first, mirrors need them to pick servers, and
        // a plan is received before the workers start.
        let overlap = !resume && !self.plan && count > 1 && job.servers.len() == 1;
        let (expected, servers) = if overlap {
            (Expected::pending(entry.digest), job.servers.clone())
        } else {
            match self.piece_digests(entry, &job.servers) {
                Ok((digests, servers)) => (Expected::known(digests, entry.digest), servers),
                Err(outcome) => return outcome,
            }
        };
        let have = if resume {
            let have = verify_part(&part, entry, expected.all().unwrap_or_default());
            let kept = have.iter().filter(|h| h.is_some()).count();
            info!(
                "{}: resuming; {kept} of {count} pieces already verified",
                entry.name
            );
            have
        } else {
            vec![None; count as usize]
        };
        let already: u64 = (0..count)
            .filter(|&i| have[i as usize].is_some())
            .map(|i| piece_range(entry.size, i).1)
            .sum();
        let queue = PieceQueue::new(count, have);
        let progress = self.progress.start_file(&entry.name, entry.size, already);
        let writer = PieceWriter::new(&part, entry.size);
        let leftovers = Leftovers::default();
        let task = FileTask {
            entry,
            writer: &writer,
            queue: &queue,
            expected: &expected,
            progress: &progress,
            limit: self.limit.as_ref(),
            workers: self.connections * servers.len(),
            leftovers: &leftovers,
        };
        if self.plan && count > 0 {
            if already > 0 {
                info!(
                    "{}: part of the file is already here; fetching the rest with ranged reads",
                    entry.name
                );
            } else if let Err(e) = plan::receive(&self.pools[servers[0]], &task, &self.shutdown) {
                match e {
                    RequestError::WrongInput(_)
                    | RequestError::Server {
                        code: ErrorCode::Changed,
                        ..
                    } => {
                        return self.request_failed(entry, e, &self.pools[servers[0]]);
                    }
                    e => warn!("{}: plan failed ({e}); using ranged reads", entry.name),
                }
            }
            let missing = queue.remaining();
            if missing > 0 && queue.stopped().is_none() && !self.shutdown.is_requested() {
                info!(
                    "{}: {missing} chunks missing after the plan; fetching them with ranged reads",
                    entry.name
                );
            }
        }
        // `--connections` workers per agreeing server, all taking pieces from
        // one queue: a faster server simply takes more.
        let per_server = self.connections.min(queue.remaining() as usize);
        let shares: Vec<AtomicU64> = servers.iter().map(|_| AtomicU64::new(0)).collect();
        let pools: Vec<(&Pool, &AtomicU64)> = servers
            .iter()
            .zip(&shares)
            .flat_map(|(&s, share)| std::iter::repeat_n((&self.pools[s], share), per_server))
            .collect();
        let live = AtomicUsize::new(pools.len());
        let last_error = std::sync::Mutex::new(None::<String>);
        let run_worker = |pool: &Pool, share: &AtomicU64, primed: Option<Primed>| {
            if let Err(e) = self.worker(&task, pool, share, primed) {
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
            if live.fetch_sub(1, Ordering::SeqCst) == 1 && queue.remaining() > 0 {
                let why = last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "no connection could be made".into());
                queue.stop(Stop::Unreachable(why));
            }
            queue.wake_all();
        };
        let early = std::thread::scope(|scope| {
            // A one-piece file has nothing to resume from: no journal.
            let (stop_journal, journal_stop) = crossbeam_channel::bounded::<()>(0);
            if count > 1 {
                scope.spawn(|| keep_journal(entry, &queue, &spot, journal_stop));
            }
            let early = match pools[..] {
                // A lone connection works on this thread: no spawn per small file.
                [(pool, share)] if !overlap => {
                    run_worker(pool, share, None);
                    None
                }
                // Digests on the way: every worker starts now; the one on
                // this thread asks for the digests together with its first
                // pieces, then works on like the others.
                [ref others @ .., (pool, share)] if overlap => {
                    let pending = PendingDigests {
                        expected: &expected,
                        queue: &queue,
                    };
                    let (lead, mut rest) = take_primed(pool, entry, others.len(), &queue);
                    let handles: Vec<_> = others
                        .iter()
                        .map(|&(pool, share)| {
                            let primed = rest.pop();
                            scope.spawn(move || run_worker(pool, share, primed))
                        })
                        .collect();
                    let early = self.lead_worker(&task, pool, share, &expected, lead).err();
                    drop(pending);
                    if early.is_none() {
                        run_worker(pool, share, None);
                    }
                    for handle in handles {
                        let _ = handle.join();
                    }
                    early
                }
                _ => {
                    let handles: Vec<_> = pools
                        .iter()
                        .map(|&(pool, share)| scope.spawn(move || run_worker(pool, share, None)))
                        .collect();
                    for handle in handles {
                        let _ = handle.join();
                    }
                    None
                }
            };
            drop(stop_journal);
            early
        });
        let fetched = progress.fetched();
        let rate = progress.rate();
        if progress.copies() > 0 {
            info!(
                "{}: end game: pieces held up on a slow connection were asked for twice; {} of copies not used",
                entry.name,
                human_bytes(progress.copies())
            );
        }
        drop(progress);
        if let Some(outcome) = early {
            return outcome;
        }
        if self.shutdown.is_requested() {
            return Outcome::Cancelled;
        }
        if let Some(stop) = queue.stopped() {
            return match stop {
                Stop::Changed(why) => Outcome::Changed(format!("{}: {why}", entry.name)),
                Stop::BadPiece(piece) => Outcome::Failed(format!(
                    "{}: piece {piece} failed verification {} times; part file kept at {}",
                    entry.name,
                    crate::pieces::MAX_PIECE_FAILURES,
                    part_path.display()
                )),
                Stop::Local(why) => Outcome::Failed(format!(
                    "{}: cannot write {}: {why}",
                    entry.name,
                    part_path.display()
                )),
                Stop::Unreachable(why) => Outcome::Failed(format!(
                    "{}: {} unreachable: {why}",
                    entry.name,
                    self.describe(&servers)
                )),
                Stop::Cancelled => Outcome::Cancelled,
            };
        }
        if servers.len() > 1 {
            let total: u64 = shares
                .iter()
                .map(|s| s.load(Ordering::Relaxed))
                .sum::<u64>()
                .max(1);
            let split: Vec<String> = servers
                .iter()
                .zip(&shares)
                .map(|(&s, share)| {
                    let bytes = share.load(Ordering::Relaxed);
                    format!(
                        "{} {} ({:.0}%)",
                        self.pools[s].addr(),
                        human_bytes(bytes),
                        bytes as f64 * 100.0 / total as f64
                    )
                })
                .collect();
            info!("{}: pieces by server: {}", entry.name, split.join(", "));
        }
        self.finish(entry, part, spot, &queue, rate, fetched)
    }

    /// Whether a fresh download of `entry` fits on the output folder's
    /// file system; the reason if not.
    fn room_for(&self, entry: &Entry) -> Result<(), String> {
        match self.out.available() {
            Ok(free) if entry.size > free => Err(format!(
                "needs {}, and only {} are free in {}",
                human_bytes(entry.size),
                human_bytes(free),
                self.out.path().display()
            )),
            // Unknown free space: preallocation will tell.
            _ => Ok(()),
        }
    }

    /// Decides whether an existing part file is resumed: yes when its
    /// journal names this very version of the file (or there is no journal,
    /// in which case every piece is checked anyway); a part of another
    /// version is dropped.
    fn prepare_resume(&self, entry: &Entry, spot: &Spot) -> std::io::Result<bool> {
        let journal = Journal::load(spot)?;
        if spot.folder.look(&spot.part())? == Found::Nothing {
            if journal.is_some() {
                spot.folder.remove(&spot.journal())?;
            }
            return Ok(false);
        }
        match journal {
            Some(j) if j.matches(entry) => Ok(true),
            Some(j) => {
                info!(
                    "{}: the server's file changed since this part was started (size {} -> {}, digest {} -> {}); starting over",
                    entry.name, j.size, entry.size, j.digest, entry.digest
                );
                spot.folder.remove(&spot.part())?;
                spot.folder.remove(&spot.journal())?;
                Ok(false)
            }
            None => {
                info!(
                    "{}: found a part file without a journal; checking its pieces",
                    entry.name
                );
                Ok(true)
            }
        }
    }

    /// The first connection of a fresh download: asks for the per-piece
    /// digests and for its first pieces in one round trip, and reads the
    /// digests before its first piece, releasing every piece that waits
    /// for them. Returns the outcome of the attempt when the digests could
    /// not be had; afterwards the caller goes on as an ordinary worker.
    fn lead_worker(
        &self,
        task: &FileTask<'_>,
        pool: &Pool,
        share: &AtomicU64,
        expected: &Expected,
        primed: Option<Primed>,
    ) -> Result<(), Outcome> {
        let entry = task.entry;
        let (mut conn, asked) = match primed {
            Some(primed) => (primed.conn, Some(primed.pieces)),
            None => (
                pool.get()
                    .map_err(|e| self.request_failed(entry, e, pool))?,
                None,
            ),
        };
        let mut buf = PieceBuf::reuse();
        let mut read_digests = |conn: &mut Connection| {
            let pieces = conn.pieces_reply(&entry.name, entry.size)?;
            let pieces =
                adding_up(entry, pool, pieces).map_err(|message| RequestError::Server {
                    code: ErrorCode::Changed,
                    message,
                })?;
            expected.arrive(pieces);
            Ok(())
        };
        let result = {
            let _registered = self.shutdown.register(conn.stream());
            // A primed connection asked for the digests already.
            let asked = match asked {
                Some(pieces) => Ok(pieces),
                None => conn.ask_pieces(&entry.name).map(|()| Vec::new()),
            };
            asked.and_then(|asked| {
                fetcher::run_after(&mut conn, task, &mut buf, share, asked, &mut read_digests)
            })
        };
        match result {
            Ok(ended) => {
                if ended == Ended::Clean {
                    pool.put(conn);
                }
                Ok(())
            }
            Err(e) if expected.is_pending() => Err(self.request_failed(entry, e, pool)),
            Err(e) => {
                // The digests are in; the connection broke later. The
                // caller carries on as an ordinary worker (reconnecting).
                debug!("{}: connection to {} lost ({e})", entry.name, pool.addr());
                pool.clear();
                Ok(())
            }
        }
    }

    /// "server A" or "servers A, B".
    fn describe(&self, servers: &[usize]) -> String {
        let addrs: Vec<String> = servers
            .iter()
            .map(|&s| self.pools[s].addr().to_string())
            .collect();
        match addrs.len() {
            1 => format!("server {}", addrs[0]),
            _ => format!("servers {}", addrs.join(", ")),
        }
    }

    /// The per-piece digests the pieces are checked against, and the
    /// servers to fetch from. Every agreeing server is asked; one whose
    /// digests do not add up to the agreed file digest (or that cannot be
    /// reached) is not used for this file. A one-piece file needs no
    /// digests: its piece digest is the file digest.
    fn piece_digests(
        &self,
        entry: &Entry,
        servers: &[usize],
    ) -> Result<(Vec<Digest>, Vec<usize>), Outcome> {
        if piece_count(entry.size) <= 1 {
            return Ok((Vec::new(), servers.to_vec()));
        }
        let mut agreed: Option<Vec<Digest>> = None;
        let mut usable = Vec::new();
        let mut last_error = None;
        for &s in servers {
            let pool = &self.pools[s];
            let fetched = pool.get().and_then(|mut conn| {
                let _registered = self.shutdown.register(conn.stream());
                let pieces = conn.pieces(&entry.name, entry.size);
                if pieces.is_ok() {
                    pool.put(conn);
                }
                pieces
            });
            match fetched {
                Ok(pieces) => match adding_up(entry, pool, pieces) {
                    Ok(pieces) => {
                        if agreed.as_ref().is_some_and(|a| *a != pieces) {
                            warn!(
                                "{}: server {} sent other per-piece digests; not used",
                                entry.name,
                                pool.addr()
                            );
                            continue;
                        }
                        agreed.get_or_insert(pieces);
                        usable.push(s);
                    }
                    Err(why) => last_error = Some(Outcome::Changed(why)),
                },
                Err(e) => {
                    debug!("{}: server {}: {e}", entry.name, pool.addr());
                    last_error = Some(self.request_failed(entry, e, pool));
                }
            }
        }
        match agreed {
            Some(pieces) => Ok((pieces, usable)),
            None => Err(last_error.unwrap_or(Outcome::Failed(format!(
                "{}: no server to fetch from",
                entry.name
            )))),
        }
    }

    fn request_failed(&self, entry: &Entry, e: RequestError, pool: &Pool) -> Outcome {
        if self.shutdown.is_requested() {
            return Outcome::Cancelled;
        }
        pool.note(&e);
        match e {
            RequestError::WrongInput(why) => Outcome::Changed(format!("{}: {why}", entry.name)),
            RequestError::Server {
                code: ErrorCode::Changed,
                message,
            } => Outcome::Changed(message),
            e => {
                pool.clear();
                Outcome::Failed(format!("{}: server {}: {e}", entry.name, pool.addr()))
            }
        }
    }

    /// One connection's life within a download: (re)connect with backoff
    /// and work until no piece is left. Returns the last error if it gave up.
    fn worker(
        &self,
        task: &FileTask<'_>,
        pool: &Pool,
        share: &AtomicU64,
        mut primed: Option<Primed>,
    ) -> Result<(), String> {
        let mut failures = 0u32;
        let mut buf = PieceBuf::reuse();
        loop {
            if self.shutdown.is_requested() {
                task.queue.stop(Stop::Cancelled);
                return Ok(());
            }
            if task.queue.stopped().is_some() || task.queue.remaining() == 0 {
                if let Some(primed) = primed.take() {
                    task.queue.give_back(primed.pieces);
                }
                return Ok(());
            }
            let (got, asked) = match primed.take() {
                Some(primed) => (Ok(primed.conn), primed.pieces),
                None => (pool.get(), Vec::new()),
            };
            let mut conn = match got {
                Ok(conn) => conn,
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_CONNECT_FAILURES {
                        return Err(format!("{}: {e}", pool.addr()));
                    }
                    debug!("{}: cannot connect ({e}); retrying", task.entry.name);
                    self.pause(failures);
                    continue;
                }
            };
            let result = {
                let _registered = self.shutdown.register(conn.stream());
                fetcher::run(&mut conn, task, &mut buf, share, asked)
            };
            match result {
                Ok(ended) => {
                    if ended == Ended::Clean {
                        pool.put(conn);
                    }
                    return Ok(());
                }
                Err(RequestError::WrongInput(why)) => {
                    task.queue.stop(Stop::Changed(why));
                    return Ok(());
                }
                Err(RequestError::Server {
                    code: ErrorCode::Changed,
                    message,
                }) => {
                    task.queue.stop(Stop::Changed(message));
                    return Ok(());
                }
                Err(e) => {
                    if self.shutdown.is_requested() {
                        continue;
                    }
                    pool.note(&e);
                    if e.is_fatal() {
                        return Err(format!("{}: {e}", pool.addr()));
                    }
                    if e.is_too_slow() {
                        // Another connection to a server this slow would
                        // fare no better; the others (or the next attempt,
                        // after a pause) carry on.
                        return Err(format!("{}: {e}", pool.addr()));
                    }
                    // A pooled connection may have gone stale: the first
                    // failure retries at once on a fresh connection.
                    pool.clear();
                    failures += 1;
                    if failures >= MAX_CONNECT_FAILURES {
                        return Err(format!("{}: {e}", pool.addr()));
                    }
                    debug!(
                        "{}: connection to {} lost ({e}); reconnecting",
                        task.entry.name,
                        conn.peer()
                    );
                    if failures > 1 {
                        self.pause(failures);
                    }
                }
            }
        }
    }

    /// Sleeps 250 ms, 500 ms, 1 s, ... (capped at 5 s), waking early on shutdown.
    fn pause(&self, failures: u32) {
        let wait = Duration::from_millis(250u64 << failures.min(5).saturating_sub(1))
            .min(Duration::from_secs(5));
        let step = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        while waited < wait && !self.shutdown.is_requested() {
            std::thread::sleep(step);
            waited += step;
        }
    }

    /// Whole-file check; flushing and landing are the lander's.
    fn finish(
        &self,
        entry: &Entry,
        part: std::fs::File,
        spot: Spot,
        queue: &PieceQueue,
        rate: f64,
        fetched: u64,
    ) -> Outcome {
        let digests: Option<Vec<Digest>> = queue.digests().into_iter().collect();
        let Some(digests) = digests else {
            return Outcome::Failed(format!("{}: pieces missing after download", entry.name));
        };
        let root = root_digest(entry.size, &digests);
        if root != entry.digest {
            warn!(
                "{}: whole-file digest {root} does not match the listed {}",
                entry.name, entry.digest
            );
            let _ = spot.folder.remove(&spot.part());
            let _ = spot.folder.remove(&spot.journal());
            return Outcome::Failed(format!(
                "{}: whole-file digest does not match the list",
                entry.name
            ));
        }
        Outcome::Verified(Box::new(Verified {
            part,
            spot,
            rate,
            fetched,
        }))
    }
}

/// The connections of `pool` primed for `entry` by `--once`'s head
/// start, taken over: the one that asked for the digests (for the lead
/// worker) and up to `others` that asked for pieces only. Their pieces
/// are recorded as asked for. Any other primed connection goes back to
/// the pool, where its answers are read and dropped.
fn take_primed(
    pool: &Pool,
    entry: &Entry,
    others: usize,
    queue: &PieceQueue,
) -> (Option<Primed>, Vec<Primed>) {
    let (mut lead, mut rest) = (None, Vec::new());
    for mut conn in pool.take_primed(&entry.name) {
        let Some((digests, pieces)) = fits(entry, conn.ahead()) else {
            pool.put(conn);
            continue;
        };
        let slot_free = if digests {
            lead.is_none()
        } else {
            rest.len() < others
        };
        if !slot_free {
            pool.put(conn);
            continue;
        }
        conn.take_ahead();
        queue.asked(&pieces);
        let primed = Primed { conn, pieces };
        if digests {
            lead = Some(primed);
        } else {
            rest.push(primed);
        }
    }
    if lead.is_some() || !rest.is_empty() {
        debug!(
            "{}: head start taken over on {} connection(s)",
            entry.name,
            rest.len() + usize::from(lead.is_some())
        );
    }
    (lead, rest)
}

/// A connection whose requests sent ahead (`--once`'s head start) a
/// download takes over: their answers come first on it.
struct Primed {
    conn: Connection,
    /// Pieces asked for (after the digests, if those were asked for too).
    pieces: Vec<u64>,
}

/// Whether requests sent ahead are, in order, what a download of `entry`
/// would ask for: optionally the digests first, then whole pieces. Returns
/// whether the digests were asked for, and the pieces.
fn fits(entry: &Entry, ahead: &std::collections::VecDeque<Ahead>) -> Option<(bool, Vec<u64>)> {
    let mut requests = ahead.iter().peekable();
    let digests = matches!(requests.peek(), Some(Ahead::Pieces { .. }));
    if digests {
        requests.next();
    }
    let pieces = requests
        .map(|request| match *request {
            Ahead::Get { offset, length, .. } => piece_at(entry.size, offset, length),
            Ahead::Pieces { .. } => None,
        })
        .collect::<Option<Vec<u64>>>()?;
    Some((digests, pieces))
}

/// The piece that is exactly the range `offset`+`length` of a file of
/// `size` bytes, if there is one.
fn piece_at(size: u64, offset: u64, length: u64) -> Option<u64> {
    let piece = offset / PIECE_SIZE;
    (offset.is_multiple_of(PIECE_SIZE)
        && piece < piece_count(size)
        && piece_range(size, piece) == (offset, length))
        .then_some(piece)
}

/// The per-piece digests `pool`'s server sent for `entry`, if they add up
/// to the listed file digest; otherwise the reason (also logged), and that
/// server is not used for the file.
fn adding_up(entry: &Entry, pool: &Pool, pieces: Vec<Digest>) -> Result<Vec<Digest>, String> {
    match PieceTree::from_pieces(entry.size, pieces) {
        Some(tree) if tree.root == entry.digest => Ok(tree.pieces),
        _ => {
            warn!(
                "{}: server {}: per-piece digests do not add up to the listed digest; not used for this file",
                entry.name,
                pool.addr()
            );
            Err(format!(
                "{}: piece digests do not match the listed digest",
                entry.name
            ))
        }
    }
}

/// Digests a download's workers may be waiting for. Dropped before they
/// arrived (the fetch failed, or this thread is unwinding), it stops the
/// download and then releases the waiting pieces, so that no worker waits
/// forever or goes on fetching pieces it cannot judge.
struct PendingDigests<'a> {
    expected: &'a Expected,
    queue: &'a PieceQueue,
}

impl Drop for PendingDigests<'_> {
    fn drop(&mut self) {
        if self.expected.is_pending() {
            self.queue.stop(Stop::Cancelled);
            self.queue.wake_all();
            self.expected.fail();
        }
    }
}

/// Checks every piece already in a part file against the expected digests
/// (in parallel: pieces are independent BLAKE3 subtrees). Pieces that match
/// are kept whether or not the journal had recorded them yet, so a crash
/// loses only the pieces that were in flight.
fn verify_part(part: &std::fs::File, entry: &Entry, expected: &[Digest]) -> Vec<Option<Digest>> {
    use std::os::unix::fs::FileExt;
    let count = piece_count(entry.size);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1) as usize);
    let mut have = vec![None; count as usize];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut buf = vec![0u8; fastdl_protocol::PIECE_SIZE as usize];
                    let mut found = Vec::new();
                    for piece in (t as u64..count).step_by(threads) {
                        let (offset, len) = piece_range(entry.size, piece);
                        let buf = &mut buf[..len as usize];
                        if part.read_exact_at(buf, offset).is_err() {
                            continue;
                        }
                        let mut hasher = PieceHasher::new(entry.size, piece);
                        hasher.update(buf);
                        let digest = hasher.finalize();
                        let want = expected
                            .get(piece as usize)
                            .copied()
                            .unwrap_or(entry.digest);
                        if digest == want {
                            found.push((piece, digest));
                        }
                    }
                    found
                })
            })
            .collect();
        for handle in handles {
            for (piece, digest) in handle.join().unwrap_or_default() {
                have[piece as usize] = Some(digest);
            }
        }
    });
    have
}

/// Rewrites the journal about once a second while pieces land, and once
/// more when `stop` closes.
fn keep_journal(
    entry: &Entry,
    queue: &PieceQueue,
    spot: &Spot,
    stop: crossbeam_channel::Receiver<()>,
) {
    let mut written = None;
    loop {
        let last = !matches!(
            stop.recv_timeout(Duration::from_secs(1)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        );
        let done: Vec<bool> = queue.digests().iter().map(Option::is_some).collect();
        let count = done.iter().filter(|d| **d).count();
        if last && count == done.len() && written.is_none() {
            // Finished before a journal was ever needed: the part goes
            // straight on to be landed, nothing to resume from.
            return;
        }
        if written != Some(count) && (count > 0 || last) {
            let journal = Journal {
                name: entry.name.clone(),
                size: entry.size,
                digest: entry.digest,
                done,
            };
            match journal.store(spot) {
                Ok(()) => written = Some(count),
                Err(e) => warn!(
                    "{}: cannot write journal {}: {e}",
                    entry.name,
                    spot.folder.path_of(&spot.journal()).display()
                ),
            }
        }
        if last {
            return;
        }
    }
}
