//! One attempt at one file, from the check of what is already in `--out`
//! to the whole-file verdict. Its phases, in order:
//!
//! 1. [`Attempt::open`]: an identical file already in place ends it at
//!    once; otherwise the part file is opened (resumed when its journal
//!    names this very version), checked to fit, and given its size.
//! 2. Digests ([`Attempt::digests_arrived`]): a file of more than one piece
//!    needs its per-piece digests, asked for by the first connection that
//!    takes work from it. A fresh download does not wait for them (pieces
//!    wait for their digest before they are judged); a resumed one checks
//!    the pieces it kept against them first.
//! 3. The plan (`--plan`): the source pushes the file over its own
//!    streams; what it did not deliver is fetched piece by piece.
//! 4. Pieces: taken by the connections of the engine (several files at
//!    once), each landed by [`super::landing`].
//! 5. [`Attempt::finish`]: the pieces' digests must combine into the
//!    listed digest; the part file then goes to the lander.
//!
//! An attempt that stops early (the file changed, a piece kept failing,
//! the disk, the sources) says why through the outcome sent when the last
//! connection lets go of it (its `Drop`), after its journal was written:
//! so no connection can still be writing into the part file when the
//! scheduler starts the next attempt.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Sender;
use fastdl_protocol::digest::{piece_count, piece_range, root_digest, PieceHasher};
use fastdl_protocol::{Digest, Entry, PieceTree, PIECE_SIZE};
use fastdl_support::human_bytes;
use log::{info, warn};

use super::expected::Expected;
use super::leftovers::Leftovers;
use super::outcome::{hex, Algo, FileError, Job, Outcome, Report, ToLand, Verified};
use super::pieces::PieceQueue;
use super::source::SourceError;
use crate::disk::journal::Journal;
use crate::disk::outdir::{Found, OutDir};
use crate::disk::piece_writer::PieceWriter;
use crate::disk::store::{self, Spot};
use crate::progress::{FileProgress, Progress};

/// Setbacks (broken connections, connect failures) one source may cause
/// an attempt before it is dropped for that file; a source too slow for
/// the progress deadline is dropped at once.
pub const MAX_SETBACKS: u32 = 4;

/// Why an attempt stopped before its file was complete.
#[derive(Debug)]
pub enum Stop {
    Changed(SourceError),
    Failed(FileError),
    Cancelled,
}

/// Whether the source should push the file first (`--plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    No,
    Wanted,
    Running,
}

/// What an attempt's phases share with the engine.
pub struct Context<'a> {
    /// Where the part file is made.
    pub out: &'a OutDir,
    /// Where the file's bar and counters go.
    pub progress: &'a Arc<Progress>,
    /// Where an attempt that ends early reports.
    pub outcomes: &'a Sender<Report>,
    /// Where a verified file goes (the lander).
    pub verified: &'a Sender<ToLand>,
    /// Whether `--plan` asks the server to push the file.
    pub plan: bool,
}

/// Mutable bookkeeping of an attempt.
struct State {
    plan: Plan,
    /// Pieces are handed out (a resumed file: once its kept pieces were
    /// checked; `--plan`: once the plan ended).
    open: bool,
    stop: Option<Stop>,
    /// Sources that agree on the file and are still used for it, with the
    /// setbacks each caused.
    sources: Vec<(usize, u32)>,
    /// Pieces landed when the journal was last written.
    journaled: Option<usize>,
    /// The whole file was found wrong and its part removed: no journal may
    /// name it again (a later attempt starts over).
    discarded: bool,
}

/// One attempt at one file.
pub struct Attempt {
    /// What is downloaded, and from where.
    pub job: Job,
    /// Where it lands (folder and name) and its part file.
    pub spot: Spot,
    /// The part file, shared with the writer and, once verified, the lander.
    part: Arc<File>,
    /// Writes verified pieces into the part file.
    pub writer: PieceWriter,
    /// Which pieces are pending, taken, landed.
    pub queue: PieceQueue,
    /// The pieces' digests, which may still be coming.
    pub expected: Expected,
    /// This file's bar and counters.
    pub progress: FileProgress,
    /// Connections still receiving copies, cut when the file is done.
    pub leftovers: Leftovers,
    resume: bool,
    state: Mutex<State>,
    /// Sent to the lander (complete and verified).
    finished: AtomicBool,
    outcomes: Sender<Report>,
    verified: Sender<ToLand>,
    started: Instant,
    /// Bytes landed from each of `job.sources` (same order), for the log
    /// of a file fetched from several servers.
    shares: Vec<AtomicU64>,
}

impl Attempt {
    /// Phase 1: the existing-file check and the part file. `Err` is the
    /// outcome of an attempt that ends here.
    pub fn open(job: Job, cx: &Context<'_>) -> Result<Arc<Attempt>, Outcome> {
        let entry = &job.entry;
        let disk = |what, path, source| Outcome::Failed(FileError::Disk { what, path, source });
        // The same content already in place? Known up front only from a
        // BLAKE3 digest; other files are compared when they land.
        if let Some(content) = job.content_digest() {
            let same = Entry {
                digest: content,
                ..entry.clone()
            };
            match store::already_have(cx.out, &same) {
                Ok(Some(path)) => return Err(Outcome::AlreadyHad(path)),
                Ok(None) => {}
                Err(e) => return Err(disk("cannot check", cx.out.display(&entry.name), e)),
            }
        }
        let spot = Spot::make(cx.out, &entry.name)
            .map_err(|e| disk("cannot make the folder of", cx.out.display(&entry.name), e))?;
        let resume =
            prepare_resume(&job, &spot).map_err(|e| disk("cannot check", spot.part_path(), e))?;
        if resume == Resume::Fresh {
            room_for(cx.out, entry.size).map_err(Outcome::Failed)?;
        }
        let part = store::open_part(&spot, entry.size)
            .map(Arc::new)
            .map_err(|e| disk("cannot prepare", spot.part_path(), e))?;
        let count = piece_count(entry.size);
        let writer = PieceWriter::new(Arc::clone(&part), entry.size);
        let expected = match job.content_digest() {
            _ if count > 1 && job.per_piece => Expected::pending(entry.digest),
            // A file of one piece needs no list: its digest is the file's.
            Some(content) if count <= 1 => Expected::known(Vec::new(), content),
            _ => Expected::unverified(),
        };
        let queue = PieceQueue::new(count, vec![None; count as usize]);
        let mut open = true;
        match &resume {
            Resume::Fresh => {}
            // Kept pieces are checked once the server's digests are here.
            Resume::Check if count > 1 => open = false,
            Resume::Check => queue.already_have(&verify_part(&part, entry.size, &[], entry.digest)),
            Resume::Kept(kept) => queue.already_have(&verify_kept(&part, entry.size, kept)),
        }
        // Pushed whole by the source: `--plan`, or a source without ranges.
        let plan = if count > 0 && ((cx.plan && resume == Resume::Fresh) || !job.ranges) {
            open = false;
            Plan::Wanted
        } else {
            Plan::No
        };
        let already = entry.size - queue.remaining_bytes(entry.size);
        let progress = Progress::start_file(cx.progress, &entry.name, entry.size, already);
        let sources = job.sources.iter().map(|&s| (s, 0)).collect();
        Ok(Arc::new(Attempt {
            spot,
            part,
            writer,
            queue,
            expected,
            progress,
            leftovers: Leftovers::default(),
            resume: resume != Resume::Fresh,
            state: Mutex::new(State {
                plan,
                open,
                stop: None,
                sources,
                journaled: None,
                discarded: false,
            }),
            finished: AtomicBool::new(false),
            outcomes: cx.outcomes.clone(),
            verified: cx.verified.clone(),
            started: Instant::now(),
            shares: job.sources.iter().map(|_| AtomicU64::new(0)).collect(),
            job,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file's name on its sources.
    pub fn remote(&self) -> &str {
        &self.job.remote
    }

    pub fn size(&self) -> u64 {
        self.job.entry.size
    }

    /// Whether source `source` may be used for this file now.
    pub fn uses(&self, source: usize) -> bool {
        let state = self.lock();
        state.stop.is_none() && state.sources.iter().any(|&(s, _)| s == source)
    }

    pub fn is_stopped(&self) -> bool {
        self.lock().stop.is_some() || self.queue.is_halted()
    }

    /// The digests request to make, if one is still wanted (the caller
    /// makes it).
    pub fn take_digests_request(&self) -> bool {
        self.lock().stop.is_none() && self.expected.take_request()
    }

    /// A digests request that will not be answered (its connection broke).
    pub fn digests_lost(&self) {
        self.expected.lost();
    }

    /// The plan to run, if it is due now (its digests are in).
    pub fn take_plan(&self) -> bool {
        let mut state = self.lock();
        if state.stop.is_none() && state.plan == Plan::Wanted && self.expected.is_known() {
            state.plan = Plan::Running;
            return true;
        }
        false
    }

    /// The plan ended (delivered all, some or nothing): pieces are handed
    /// out for whatever is missing.
    pub fn plan_done(&self) {
        let missing = self.queue.remaining();
        let mut state = self.lock();
        state.plan = Plan::No;
        state.open = true;
        drop(state);
        if missing > 0 && !self.is_stopped() && self.job.ranges {
            info!(
                "{}: {missing} chunks missing after the plan; fetching them with ranged reads",
                self.job.entry.name
            );
        }
    }

    /// Whether pieces are handed out.
    pub fn is_open(&self) -> bool {
        let state = self.lock();
        state.open && state.stop.is_none()
    }

    /// Phase 2: the per-piece digests from `server`. They must combine
    /// into the listed digest; a resumed file then checks the pieces it
    /// kept against them, and opens.
    pub fn digests_arrived(&self, digests: Vec<Digest>, server: &str) {
        let entry = &self.job.entry;
        match PieceTree::from_pieces(entry.size, digests) {
            Some(tree) if tree.root == entry.digest => {
                if self.resume {
                    let have = verify_part(&self.part, entry.size, &tree.pieces, entry.digest);
                    let kept = have.iter().filter(|h| h.is_some()).count();
                    info!(
                        "{}: resuming; {kept} of {} pieces already verified",
                        entry.name,
                        have.len()
                    );
                    self.queue.already_have(&have);
                    self.progress
                        .already(self.size() - self.queue.remaining_bytes(entry.size));
                }
                self.expected.arrive(tree.pieces);
                if self.resume {
                    self.lock().open = true;
                }
            }
            _ => {
                warn!(
                    "{}: server {server}: per-piece digests do not add up to the listed digest",
                    entry.name
                );
                self.stop(Stop::Failed(FileError::DigestsDoNotAddUp {
                    server: server.to_owned(),
                }));
            }
        }
    }

    /// Counts a setback caused by `source` (`weight` of them: a source too
    /// slow counts as all); a source with too many is no longer used for
    /// the file, and a file without sources stops with `error`.
    pub fn setback(&self, source: usize, weight: u32, error: impl FnOnce() -> FileError) {
        let mut state = self.lock();
        if state.stop.is_some() {
            return;
        }
        let Some(entry) = state.sources.iter_mut().find(|(s, _)| *s == source) else {
            return;
        };
        entry.1 += weight;
        if entry.1 < MAX_SETBACKS {
            return;
        }
        state.sources.retain(|&(s, _)| s != source);
        if state.sources.is_empty() {
            drop(state);
            self.stop(Stop::Failed(error()));
        }
    }

    /// Stops the attempt (the first reason counts); nothing more is handed
    /// out.
    pub fn stop(&self, why: Stop) {
        let mut state = self.lock();
        if state.stop.is_none() && !self.finished.load(Ordering::SeqCst) {
            state.stop = Some(why);
        }
        drop(state);
        self.queue.halt();
        self.expected.fail();
        self.leftovers.end();
    }

    /// Counts `bytes` landed from engine source `source`.
    pub fn credit(&self, source: usize, bytes: u64) {
        if let Some(i) = self.job.sources.iter().position(|&s| s == source) {
            self.shares[i].fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes landed in this attempt from each engine source that had any.
    pub fn shares(&self) -> Vec<(usize, u64)> {
        self.job
            .sources
            .iter()
            .zip(&self.shares)
            .map(|(&s, bytes)| (s, bytes.load(Ordering::Relaxed)))
            .collect()
    }

    /// Phase 5: every piece landed: the whole file's digest, then to the
    /// lander. Leftover connections still receiving copies are cut. Only
    /// the first call does anything; it returns whether the file went to
    /// the lander.
    pub fn finish(&self) -> bool {
        if self.queue.remaining() > 0 || self.finished.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.leftovers.end();
        let entry = &self.job.entry;
        let digests: Option<Vec<Digest>> = self.queue.digests().into_iter().collect();
        let content = digests.map(|d| root_digest(entry.size, &d));
        if let Err(e) = self.check_whole(content) {
            self.finished.store(false, Ordering::SeqCst);
            self.lock().discarded = true;
            let _ = self.spot.folder.remove(&self.spot.part());
            let _ = self.spot.folder.remove(&self.spot.journal());
            self.stop(Stop::Failed(e));
            return false;
        }
        // Keyed on the copies asked for, not on their bytes: a copy whose
        // connection was cut before it brought a whole piece counts too.
        let copies = self.queue.copies_asked();
        if copies > 0 {
            info!(
                "{}: end game: pieces held up on a slow connection were asked for twice ({copies}); {} of copies not used",
                entry.name,
                human_bytes(self.progress.copies())
            );
        }
        let verified = Verified {
            part: Arc::clone(&self.part),
            spot: self.spot.clone(),
            content: content.unwrap_or(Digest([0; 32])),
            checked: self.job.check.as_ref().map(|c| c.algo),
            rate: self.progress.rate(),
            fetched: self.progress.fetched(),
            journal: self.resume || piece_count(entry.size) > 1,
        };
        self.verified
            .send((self.job.clone(), Box::new(verified)))
            .is_ok()
    }

    /// The whole file against its check: the pieces' BLAKE3 digests
    /// combine into `content`; a SHA digest means reading the part once.
    fn check_whole(&self, content: Option<Digest>) -> Result<(), FileError> {
        let Some(check) = &self.job.check else {
            return Ok(());
        };
        let got = match check.algo {
            Algo::Blake3 => content.map(|d| d.0.to_vec()).unwrap_or_default(),
            Algo::Sha256 | Algo::Sha512 => {
                sha_of(&self.part, self.size(), check.algo).map_err(|e| FileError::Disk {
                    what: "cannot read back",
                    path: self.spot.part_path(),
                    source: e,
                })?
            }
        };
        if got == check.want {
            return Ok(());
        }
        Err(FileError::Mismatch {
            algo: check.algo,
            got: hex(&got),
            want: hex(&check.want),
            from: check.from,
        })
    }

    /// Writes the journal if more pieces landed since it was last written
    /// (files of more than one piece; `last`: the attempt is over, write
    /// what there is).
    pub fn keep_journal(&self, last: bool) {
        let pieces = self.queue.digests();
        if pieces.len() <= 1 || self.finished.load(Ordering::SeqCst) {
            return;
        }
        let count = pieces.iter().flatten().count();
        let mut state = self.lock();
        if state.discarded || state.journaled == Some(count) || (count == 0 && !last) {
            return;
        }
        let entry = &self.job.entry;
        let journal = Journal::of(entry, &pieces);
        match journal.store(&self.spot) {
            Ok(()) => state.journaled = Some(count),
            Err(e) => warn!(
                "{}: cannot write journal {}: {e}",
                entry.name,
                self.spot.folder.path_of(&self.spot.journal()).display()
            ),
        }
    }

    /// How long the attempt has run.
    pub fn age(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        self.keep_journal(true);
        let outcome = match self.state.get_mut().map(|s| s.stop.take()) {
            Ok(Some(Stop::Changed(e))) => Outcome::Changed(e),
            Ok(Some(Stop::Failed(e))) => Outcome::Failed(e),
            _ => Outcome::Cancelled,
        };
        let _ = self.outcomes.send((self.job.clone(), outcome));
    }
}

/// How an existing part file is resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resume {
    /// There is none (or it was dropped): start from nothing.
    Fresh,
    /// Check every piece against the server's per-piece digests.
    Check,
    /// Check the pieces the journal kept against the digests it recorded
    /// (a source without per-piece digests).
    Kept(Vec<Option<Digest>>),
}

/// Decides whether an existing part file is resumed: yes when its journal
/// names this very version of the file (or there is no journal and the
/// server can give per-piece digests, in which case every piece is
/// checked); a part of another version, or one that nothing can check, is
/// dropped.
fn prepare_resume(job: &Job, spot: &Spot) -> std::io::Result<Resume> {
    let entry = &job.entry;
    if spot.folder.look(&spot.part())? == Found::Nothing {
        // A journal without its part is stale, whether it reads or not
        // (an older format, a link planted there): the lander looks for a
        // journal only beside files that may have one.
        if spot.folder.look(&spot.journal())? != Found::Nothing {
            spot.folder.remove(&spot.journal())?;
        }
        return Ok(Resume::Fresh);
    }
    let journal = Journal::load(spot)?;
    let drop_part = |why: String| -> std::io::Result<Resume> {
        info!("{}: {why}; starting over", entry.name);
        spot.folder.remove(&spot.part())?;
        spot.folder.remove(&spot.journal())?;
        Ok(Resume::Fresh)
    };
    match journal {
        // A file that comes in one answer: nothing to resume from.
        _ if !job.ranges => drop_part(
            "the server sends this file in one answer (no ranges, or no validator to check them against)"
                .into(),
        ),
        Some(j) if j.matches(entry) && job.per_piece => Ok(Resume::Check),
        Some(j) if j.matches(entry) => match j.kept_pieces() {
            Some(kept) => Ok(Resume::Kept(kept)),
            None => drop_part("the part file's journal kept no piece digests".into()),
        },
        Some(j) => drop_part(format!(
            "the file changed since this part was started (size {} -> {}, version {} -> {})",
            j.size, entry.size, j.digest, entry.digest
        )),
        None if job.per_piece => {
            info!(
                "{}: found a part file without a journal; checking its pieces",
                entry.name
            );
            Ok(Resume::Check)
        }
        None => drop_part("found a part file without a journal".into()),
    }
}

/// The pieces of a part file that still hold what the journal recorded
/// for them (`kept`: per piece, the digest it had when written).
fn verify_kept(part: &File, size: u64, kept: &[Option<Digest>]) -> Vec<Option<Digest>> {
    let mut have = vec![None; kept.len()];
    let mut buf = vec![0u8; PIECE_SIZE as usize];
    for (piece, want) in kept.iter().enumerate() {
        let Some(want) = want else { continue };
        let (offset, len) = piece_range(size, piece as u64);
        let buf = &mut buf[..len as usize];
        if part.read_exact_at(buf, offset).is_err() {
            continue;
        }
        let mut hasher = PieceHasher::new(size, piece as u64);
        hasher.update(buf);
        if hasher.finalize() == *want {
            have[piece] = Some(*want);
        }
    }
    have
}

/// The SHA-256 or SHA-512 of the first `size` bytes of `part`.
fn sha_of(part: &File, size: u64, algo: Algo) -> std::io::Result<Vec<u8>> {
    let algorithm = match algo {
        Algo::Sha512 => &aws_lc_rs::digest::SHA512,
        _ => &aws_lc_rs::digest::SHA256,
    };
    let mut context = aws_lc_rs::digest::Context::new(algorithm);
    let mut buf = vec![0u8; PIECE_SIZE as usize];
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(PIECE_SIZE) as usize;
        part.read_exact_at(&mut buf[..len], offset)?;
        context.update(&buf[..len]);
        offset += len as u64;
    }
    Ok(context.finish().as_ref().to_vec())
}

/// Whether a fresh download of `size` bytes fits on the output folder's
/// file system.
fn room_for(out: &OutDir, size: u64) -> Result<(), FileError> {
    match out.available() {
        Ok(free) if size > free => Err(FileError::NoRoom {
            need: human_bytes(size),
            free: human_bytes(free),
            dir: out.path().to_path_buf(),
        }),
        // Unknown free space: preallocation will tell.
        _ => Ok(()),
    }
}

/// Checks every piece already in a part file against the expected digests
/// (in parallel: pieces are independent BLAKE3 subtrees; `expected` empty:
/// a one-piece file, checked against `file_digest`). Pieces that match
/// are kept whether or not the journal had recorded them yet, so a crash
/// loses only the pieces that were in flight.
fn verify_part(
    part: &File,
    size: u64,
    expected: &[Digest],
    file_digest: Digest,
) -> Vec<Option<Digest>> {
    let count = piece_count(size);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1) as usize);
    let mut have = vec![None; count as usize];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut buf = vec![0u8; PIECE_SIZE as usize];
                    let mut found = Vec::new();
                    for piece in (t as u64..count).step_by(threads) {
                        let (offset, len) = piece_range(size, piece);
                        let buf = &mut buf[..len as usize];
                        if part.read_exact_at(buf, offset).is_err() {
                            continue;
                        }
                        let mut hasher = PieceHasher::new(size, piece);
                        hasher.update(buf);
                        let digest = hasher.finalize();
                        let want = expected.get(piece as usize).copied().unwrap_or(file_digest);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;
    use fastdl_protocol::Entry;

    struct Scene {
        _tmp: tempfile::TempDir,
        out: OutDir,
        progress: Arc<Progress>,
        outcomes: (Sender<Report>, Receiver<Report>),
        verified: (Sender<ToLand>, Receiver<ToLand>),
    }

    impl Scene {
        fn new() -> Scene {
            let tmp = tempfile::tempdir().unwrap();
            Scene {
                out: OutDir::open(tmp.path()).unwrap(),
                _tmp: tmp,
                progress: Arc::new(Progress::new(false, false)),
                outcomes: crossbeam_channel::unbounded(),
                verified: crossbeam_channel::unbounded(),
            }
        }

        fn cx(&self, plan: bool) -> Context<'_> {
            Context {
                out: &self.out,
                progress: &self.progress,
                outcomes: &self.outcomes.0,
                verified: &self.verified.0,
                plan,
            }
        }
    }

    fn job(name: &str, content: &[u8]) -> Job {
        Job::listed(
            Entry {
                name: name.into(),
                size: content.len() as u64,
                digest: Digest::of(content),
            },
            vec![0, 1],
        )
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    /// Lands every piece of `bytes` as a connection would.
    fn land_all(a: &Attempt, bytes: &[u8]) {
        let tree = PieceTree::from_reader(bytes, bytes.len() as u64).unwrap();
        for (i, digest) in tree.pieces.iter().enumerate() {
            let (off, len) = piece_range(bytes.len() as u64, i as u64);
            a.writer
                .write_at(&bytes[off as usize..(off + len) as usize], off)
                .unwrap();
            a.queue.complete(i as u64, *digest, None);
        }
    }

    #[test]
    fn an_identical_file_in_place_ends_the_attempt_at_once() {
        let scene = Scene::new();
        let bytes = content(5000);
        std::fs::write(scene.out.path().join("f"), &bytes).unwrap();
        match Attempt::open(job("f", &bytes), &scene.cx(false)) {
            Err(Outcome::AlreadyHad(path)) => assert!(path.ends_with("f")),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn a_journal_without_its_part_is_removed_even_unreadable() {
        let scene = Scene::new();
        let journal = scene.out.path().join(".f.fastdl-journal");
        std::fs::write(&journal, b"not a journal of any version").unwrap();
        let bytes = content(5000);
        let a = Attempt::open(job("f", &bytes), &scene.cx(false)).unwrap();
        assert!(!journal.exists());
        // The file is one piece: its landing does not look for a journal.
        land_all(&a, &bytes);
        assert!(a.finish());
        let (_, verified) = scene.verified.1.try_recv().unwrap();
        assert!(!verified.journal);
    }

    #[test]
    fn a_multi_piece_file_wants_its_digests_once_and_lands_when_complete() {
        let scene = Scene::new();
        let bytes = content(3 * PIECE_SIZE as usize + 10);
        let a = Attempt::open(job("dir/f", &bytes), &scene.cx(false)).unwrap();
        assert!(a.is_open(), "a fresh file does not wait for digests");
        assert!(a.take_digests_request());
        assert!(!a.take_digests_request(), "asked once");
        a.digests_lost();
        assert!(
            a.take_digests_request(),
            "asked again after a broken connection"
        );
        let tree = PieceTree::from_reader(&bytes[..], bytes.len() as u64).unwrap();
        a.digests_arrived(tree.pieces.clone(), "s");
        assert_eq!(
            a.expected.piece(2, a.expected.ticket()),
            super::super::expected::Judge::Against(tree.pieces[2])
        );
        land_all(&a, &bytes);
        a.finish();
        let (done, verified) = scene.verified.1.try_recv().unwrap();
        assert_eq!(done.entry.name, "dir/f");
        assert!(verified.spot.part_path().exists());
        drop(a);
        assert!(scene.outcomes.1.try_recv().is_err(), "no other outcome");
    }

    #[test]
    fn digests_that_do_not_add_up_stop_the_attempt_and_say_who_sent_them() {
        let scene = Scene::new();
        let bytes = content(2 * PIECE_SIZE as usize + 1);
        let a = Attempt::open(job("f", &bytes), &scene.cx(false)).unwrap();
        a.digests_arrived(vec![Digest([7; 32]); 3], "mirror-b:1337");
        assert!(a.is_stopped());
        drop(a);
        let (_, outcome) = scene.outcomes.1.try_recv().unwrap();
        assert!(
            matches!(outcome, Outcome::Failed(FileError::DigestsDoNotAddUp { ref server }) if server == "mirror-b:1337"),
            "{outcome:?}"
        );
    }

    #[test]
    fn setbacks_drop_a_source_and_the_file_when_none_is_left() {
        let scene = Scene::new();
        let a = Attempt::open(job("f", b"abc"), &scene.cx(false)).unwrap();
        let err = || FileError::NoRoom {
            need: "x".into(),
            free: "y".into(),
            dir: "/".into(),
        };
        for _ in 0..MAX_SETBACKS {
            a.setback(0, 1, err);
        }
        assert!(!a.uses(0) && a.uses(1), "source 0 dropped, 1 left");
        a.setback(1, MAX_SETBACKS, err);
        assert!(a.is_stopped());
        drop(a);
        assert!(matches!(
            scene.outcomes.1.try_recv().unwrap().1,
            Outcome::Failed(FileError::NoRoom { .. })
        ));
    }

    #[test]
    fn a_resumed_file_keeps_its_verified_pieces_and_opens_with_its_digests() {
        let scene = Scene::new();
        let bytes = content(3 * PIECE_SIZE as usize);
        let j = job("f", &bytes);
        {
            let a = Attempt::open(j.clone(), &scene.cx(false)).unwrap();
            let tree = PieceTree::from_reader(&bytes[..], bytes.len() as u64).unwrap();
            a.digests_arrived(tree.pieces.clone(), "s");
            // Two of three pieces land, then the attempt is cancelled.
            for i in [0u64, 2] {
                let (off, len) = piece_range(bytes.len() as u64, i);
                a.writer
                    .write_at(&bytes[off as usize..(off + len) as usize], off)
                    .unwrap();
                a.queue.complete(i, tree.pieces[i as usize], None);
            }
            a.stop(Stop::Cancelled);
        }
        assert!(matches!(
            scene.outcomes.1.try_recv().unwrap().1,
            Outcome::Cancelled
        ));
        let a = Attempt::open(j, &scene.cx(false)).unwrap();
        assert!(!a.is_open(), "a resumed file waits for its digests");
        assert!(a.take_digests_request());
        let tree = PieceTree::from_reader(&bytes[..], bytes.len() as u64).unwrap();
        a.digests_arrived(tree.pieces, "s");
        assert!(a.is_open());
        assert_eq!(a.queue.remaining(), 1, "only the missing piece is left");
    }

    #[test]
    fn with_a_plan_pieces_wait_for_it_and_the_digests() {
        let scene = Scene::new();
        let bytes = content(2 * PIECE_SIZE as usize);
        let a = Attempt::open(job("f", &bytes), &scene.cx(true)).unwrap();
        assert!(!a.is_open());
        assert!(!a.take_plan(), "not before the digests");
        assert!(a.take_digests_request());
        let tree = PieceTree::from_reader(&bytes[..], bytes.len() as u64).unwrap();
        a.digests_arrived(tree.pieces, "s");
        assert!(a.take_plan());
        assert!(!a.take_plan(), "run once");
        a.plan_done();
        assert!(a.is_open());
    }
}
