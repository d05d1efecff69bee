//! The queue: turns names from input.txt into downloads.
//!
//! It owns the client's view of every server's list, decides what to do
//! with each name (queue it with the servers that agree on it, wait for it
//! to be listed, or count it as failed), hands jobs to `--jobs` download
//! threads over a crossbeam channel, and decides what happens after each
//! attempt: done, retry with backoff, wait for the name to (re)appear, or
//! failed (`--once`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use fastdl_protocol::{validate_name, Listing, ProtocolError};
use fastdl_support::printable;
use fastdl_support::shutdown::Shutdown;
use log::{error, info, warn};

use crate::connection::{Ahead, RequestError};
use crate::download::{Downloader, Job, Outcome};
use crate::lander;
use crate::mirrors::{vote, Vote};

/// Longest wait between retries of one file in watch mode.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// What a finished run amounts to.
#[derive(Debug, Default)]
pub struct Summary {
    pub downloaded: usize,
    pub already_had: usize,
    pub failed: Vec<(String, String)>,
    pub cancelled: bool,
    /// Why the run had to stop (a server no retry can help with).
    pub fatal: Option<String>,
}

/// How the scheduler treats names and failures.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `--once`: settle every name, then stop; failures count.
    pub once: bool,
    /// Attempts per file in `--once` mode.
    pub retries: u64,
    /// First wait before a retry; doubled per failure up to [`MAX_RETRY_WAIT`].
    pub retry_wait: Duration,
    /// How often the lists are re-fetched while names wait for them.
    pub poll: Duration,
}

pub struct Scheduler {
    downloader: Arc<Downloader>,
    /// Each server's list (`None`: not reachable at the last fetch).
    lists: Vec<Option<Listing>>,
    policy: Policy,
    shutdown: Arc<Shutdown>,
    jobs: Sender<Job>,
    results: Receiver<(Job, Outcome)>,
    seen: HashSet<String>,
    /// Names waiting for the servers (not listed, or no majority), with
    /// what was last said about them.
    waiting: BTreeMap<String, String>,
    active: HashSet<String>,
    attempts: HashMap<String, u64>,
    retry_at: BTreeMap<String, Instant>,
    next_refresh: Instant,
    unreachable: BTreeSet<usize>,
    summary: Summary,
}

/// Whether `place` reports what it decides (new names) or stays quiet
/// (names re-checked after a refresh).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Report {
    Loud,
    Quiet,
}

impl Scheduler {
    /// Starts `workers` download threads and returns the scheduler that feeds them.
    pub fn new(
        downloader: Arc<Downloader>,
        lists: Vec<Option<Listing>>,
        workers: usize,
        policy: Policy,
        shutdown: Arc<Shutdown>,
    ) -> Scheduler {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (result_tx, results) = crossbeam_channel::unbounded();
        let (verified_tx, verified_rx) = crossbeam_channel::unbounded();
        {
            let result_tx = result_tx.clone();
            let spawned = std::thread::Builder::new()
                .name("lander".into())
                .spawn(move || lander::run(verified_rx, result_tx));
            if let Err(e) = spawned {
                error!("cannot start the landing thread: {e}");
            }
        }
        for i in 0..workers {
            let (job_rx, result_tx, verified_tx, downloader) = (
                job_rx.clone(),
                result_tx.clone(),
                verified_tx.clone(),
                Arc::clone(&downloader),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("job {i}"))
                .spawn(move || {
                    for job in job_rx {
                        let sent = match downloader.download(&job) {
                            Outcome::Verified(verified) => {
                                verified_tx.send((job, verified)).is_ok()
                            }
                            outcome => result_tx.send((job, outcome)).is_ok(),
                        };
                        if !sent {
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                error!("cannot start a download thread: {e}");
            }
        }
        Scheduler {
            downloader,
            lists,
            policy,
            shutdown,
            jobs,
            results,
            seen: HashSet::new(),
            waiting: BTreeMap::new(),
            active: HashSet::new(),
            attempts: HashMap::new(),
            retry_at: BTreeMap::new(),
            next_refresh: Instant::now(),
            unreachable: BTreeSet::new(),
            summary: Summary::default(),
        }
    }

    /// Runs until shutdown, or in `--once` mode until every name is settled.
    pub fn run(mut self, mut names: Receiver<Vec<String>>) -> Summary {
        let tick = Duration::from_millis(100);
        let mut input_open = true;
        loop {
            if self.shutdown.is_requested() {
                self.summary.cancelled = true;
                break;
            }
            if let Some(why) = self.downloader.fatal() {
                self.summary.fatal = Some(why.to_owned());
                break;
            }
            select! {
                recv(names) -> batch => match batch {
                    Ok(batch) => self.add_names(batch),
                    Err(_) => {
                        // A closed channel is always ready: stop selecting on
                        // it, or this loop spins for the rest of the run.
                        input_open = false;
                        names = crossbeam_channel::never();
                    }
                },
                recv(self.results) -> result => {
                    if let Ok((job, outcome)) = result {
                        self.settle(job, outcome);
                    }
                },
                default(tick) => {},
            }
            let now = Instant::now();
            let retry_due = self.retry_at.values().any(|&t| t <= now);
            if now >= self.next_refresh && (!self.waiting.is_empty() || retry_due) {
                self.refresh();
            }
            self.start_due_retries();
            if self.policy.once && !input_open && self.active.is_empty() && self.retry_at.is_empty()
            {
                break;
            }
        }
        self.summary
    }

    fn add_names(&mut self, names: Vec<String>) {
        for name in names {
            if !self.seen.insert(name.clone()) {
                continue;
            }
            if let Err(e) = validate_name(&name) {
                warn!("{}: not a valid name ({e}); ignored", printable(&name));
                if self.policy.once {
                    let shown = printable(&name).into_owned();
                    self.summary
                        .failed
                        .push((shown, format!("not a valid name: {e}")));
                }
                continue;
            }
            self.place(name, Report::Loud);
        }
    }

    /// Decides what to do with a name now: queue it with the servers that
    /// agree on it, let it wait for the servers, or (`--once`) fail it.
    fn place(&mut self, name: String, report: Report) {
        let servers = self.downloader.pools.len();
        let why = match vote(&name, &self.lists) {
            Vote::Agreed {
                entry,
                servers: agreeing,
                dissenters,
            } => {
                if report == Report::Loud || self.waiting.contains_key(&name) {
                    for (s, size, digest) in &dissenters {
                        warn!(
                            "{name}: server {} claims {size} bytes with digest {digest}, but {} of {} servers listing it \
                             say {} bytes with digest {}; not using it for this file",
                            self.downloader.pools[*s].addr(),
                            agreeing.len(),
                            agreeing.len() + dissenters.len(),
                            entry.size,
                            entry.digest
                        );
                    }
                }
                if self.waiting.remove(&name).is_some() {
                    info!("{name}: now listed; queued");
                }
                self.queue(Job {
                    entry,
                    servers: agreeing,
                });
                return;
            }
            Vote::NotListed if servers == 1 => "not listed by the server".to_owned(),
            Vote::NotListed => "not listed by any server".to_owned(),
            Vote::NoMajority(claims) => {
                let said: Vec<String> = claims
                    .iter()
                    .map(|(s, size, digest)| {
                        format!(
                            "{} says {size} bytes, digest {digest}",
                            self.downloader.pools[*s].addr()
                        )
                    })
                    .collect();
                format!(
                    "the servers disagree and no majority holds ({})",
                    said.join("; ")
                )
            }
        };
        if self.policy.once {
            warn!("{name}: {why}");
            self.done(&name);
            self.summary.failed.push((name, why));
            return;
        }
        let changed = self.waiting.get(&name) != Some(&why);
        if report == Report::Loud || changed {
            warn!("{name}: {why}; will check again when the list is re-fetched");
        }
        self.done(&name);
        self.waiting.insert(name, why);
    }

    fn queue(&mut self, job: Job) {
        if self.active.insert(job.entry.name.clone()) {
            self.downloader.progress.queued();
        }
        if self.jobs.send(job).is_err() {
            error!("download threads are gone");
        }
    }

    fn settle(&mut self, job: Job, outcome: Outcome) {
        let name = job.entry.name.clone();
        match outcome {
            Outcome::Landed => {
                self.summary.downloaded += 1;
                self.done(&name);
            }
            Outcome::AlreadyHad(path) => {
                info!(
                    "{name}: already in place as {} (same digest); skipped",
                    path.display()
                );
                self.summary.already_had += 1;
                self.done(&name);
            }
            Outcome::Cancelled => {}
            Outcome::Verified(_) => error!("{name}: verified but not landed (internal error)"),
            Outcome::Changed(why) => {
                info!("{why}; fetching the list again");
                self.refresh();
                if !self.attempt(&name) {
                    self.give_up(&name, why);
                    return;
                }
                let now_listed = vote(&name, &self.lists);
                if matches!(&now_listed, Vote::Agreed { entry, .. } if *entry == job.entry) {
                    // The server has not finished rescanning yet: ask again shortly.
                    self.retry_at
                        .insert(name, Instant::now() + self.policy.retry_wait);
                } else {
                    if matches!(now_listed, Vote::Agreed { .. }) {
                        info!("{name}: the server has a new version; starting it again");
                    }
                    self.place(name, Report::Loud);
                }
            }
            Outcome::Failed(why) => {
                if !self.attempt(&name) {
                    self.give_up(&name, why);
                    return;
                }
                let n = self.attempts[&name];
                let wait = (self.policy.retry_wait * (1 << (n - 1).min(10))).min(MAX_RETRY_WAIT);
                warn!("{why}; trying again in {} s", wait.as_secs());
                self.retry_at.insert(name, Instant::now() + wait);
            }
        }
    }

    /// Counts an attempt; false when `--once` has used up its retries.
    fn attempt(&mut self, name: &str) -> bool {
        let n = self.attempts.entry(name.to_owned()).or_insert(0);
        *n += 1;
        !self.policy.once || *n < self.policy.retries
    }

    fn done(&mut self, name: &str) {
        if self.active.remove(name) {
            self.downloader.progress.finished();
        }
        self.attempts.remove(name);
    }

    fn give_up(&mut self, name: &str, why: String) {
        error!("{why}; giving up");
        self.summary.failed.push((name.to_owned(), why));
        self.done(name);
    }

    fn start_due_retries(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .retry_at
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.retry_at.remove(&name);
            self.place(name, Report::Quiet);
        }
    }

    /// Fetches every server's list again and re-places the waiting names.
    fn refresh(&mut self) {
        self.next_refresh = Instant::now() + self.policy.poll;
        let fetched = fetch_lists(&self.downloader, &[]);
        for (i, result) in fetched.into_iter().enumerate() {
            let addr = self.downloader.pools[i].addr();
            match result {
                Ok(listing) => {
                    if self.unreachable.remove(&i) {
                        info!("server {addr} is reachable again");
                    }
                    if self.lists[i].as_ref() != Some(&listing) {
                        info!("server {addr}: the list changed: {} files", listing.len());
                    }
                    self.lists[i] = Some(listing);
                }
                Err(e) => {
                    if self.unreachable.insert(i) {
                        warn!("cannot fetch the list from {addr} ({e}); will keep trying");
                    }
                    self.lists[i] = None;
                }
            }
        }
        let waiting: Vec<String> = self.waiting.keys().cloned().collect();
        for name in waiting {
            self.place(name, Report::Quiet);
        }
    }
}

/// Fetches the list from every server at once, sending `ahead` right
/// after each `LIST` request.
pub fn fetch_lists(downloader: &Downloader, ahead: &[Ahead]) -> Vec<Result<Listing, RequestError>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = downloader
            .pools
            .iter()
            .map(|pool| {
                scope.spawn(move || {
                    let fetched = pool.get().and_then(|mut conn| {
                        let listing = conn.list(ahead.to_vec());
                        if listing.is_ok() {
                            pool.put(conn);
                        }
                        listing
                    });
                    fetched.inspect_err(|e| {
                        pool.note(e);
                        pool.clear();
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RequestError::Connection(ProtocolError::Unexpected(
                        "list fetch panicked".into(),
                    )))
                })
            })
            .collect()
    })
}
