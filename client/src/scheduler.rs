//! The queue: turns names from input.txt into downloads.
//!
//! It owns the client's view of the server's list, decides which names to
//! queue (listed, valid, not seen before in this run), hands them to
//! `--jobs` download threads over a crossbeam channel, and decides what
//! happens after each attempt: done, retry with backoff, wait for the name
//! to (re)appear in the list, or count as failed (`--once`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use fastdl_protocol::{validate_name, Entry, Listing};
use fastdl_support::shutdown::Shutdown;
use log::{error, info, warn};

use crate::download::{Downloader, Outcome};

/// Longest wait between retries of one file in watch mode.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// What a finished run amounts to.
#[derive(Debug, Default)]
pub struct Summary {
    pub downloaded: usize,
    pub already_had: usize,
    pub failed: Vec<(String, String)>,
    pub cancelled: bool,
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
    /// How often the list is re-fetched while names wait for it.
    pub poll: Duration,
}

pub struct Scheduler {
    downloader: Arc<Downloader>,
    listing: Listing,
    once: bool,
    retries: u64,
    retry_wait: Duration,
    poll: Duration,
    shutdown: Arc<Shutdown>,
    jobs: Sender<Entry>,
    results: Receiver<(Entry, Outcome)>,
    seen: HashSet<String>,
    waiting: BTreeSet<String>,
    active: HashSet<String>,
    attempts: HashMap<String, u64>,
    retry_at: BTreeMap<String, Instant>,
    next_refresh: Instant,
    list_unreachable: bool,
    summary: Summary,
}

impl Scheduler {
    /// Starts `workers` download threads and returns the scheduler that feeds them.
    pub fn new(
        downloader: Arc<Downloader>,
        listing: Listing,
        workers: usize,
        policy: Policy,
        shutdown: Arc<Shutdown>,
    ) -> Scheduler {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Entry>();
        let (result_tx, results) = crossbeam_channel::unbounded();
        for i in 0..workers {
            let (job_rx, result_tx, downloader) =
                (job_rx.clone(), result_tx.clone(), Arc::clone(&downloader));
            let spawned = std::thread::Builder::new()
                .name(format!("job {i}"))
                .spawn(move || {
                    for entry in job_rx {
                        let outcome = downloader.download(&entry);
                        if result_tx.send((entry, outcome)).is_err() {
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
            listing,
            once: policy.once,
            retries: policy.retries,
            retry_wait: policy.retry_wait,
            poll: policy.poll,
            shutdown,
            jobs,
            results,
            seen: HashSet::new(),
            waiting: BTreeSet::new(),
            active: HashSet::new(),
            attempts: HashMap::new(),
            retry_at: BTreeMap::new(),
            next_refresh: Instant::now(),
            list_unreachable: false,
            summary: Summary::default(),
        }
    }

    /// Runs until shutdown, or in `--once` mode until every name is settled.
    pub fn run(mut self, names: Receiver<Vec<String>>) -> Summary {
        let tick = Duration::from_millis(100);
        let mut input_open = true;
        loop {
            if self.shutdown.is_requested() {
                self.summary.cancelled = true;
                break;
            }
            select! {
                recv(names) -> batch => match batch {
                    Ok(batch) => self.add_names(batch),
                    Err(_) => input_open = false,
                },
                recv(self.results) -> result => {
                    if let Ok((entry, outcome)) = result {
                        self.settle(entry, outcome);
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
            if self.once && !input_open && self.active.is_empty() && self.retry_at.is_empty() {
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
                warn!("{name:?}: not a valid name ({e}); ignored");
                if self.once {
                    self.summary
                        .failed
                        .push((name, format!("not a valid name: {e}")));
                }
                continue;
            }
            match self.listing.get(&name).cloned() {
                Some(entry) => self.queue(entry),
                None if self.once => {
                    warn!("{name}: not listed by the server");
                    self.summary
                        .failed
                        .push((name, "not listed by the server".into()));
                }
                None => {
                    warn!("{name}: not listed by the server; will check again when the list is re-fetched");
                    self.waiting.insert(name);
                }
            }
        }
    }

    fn queue(&mut self, entry: Entry) {
        if self.active.insert(entry.name.clone()) {
            self.downloader.progress.queued();
        }
        if self.jobs.send(entry).is_err() {
            error!("download threads are gone");
        }
    }

    fn settle(&mut self, entry: Entry, outcome: Outcome) {
        let name = entry.name.clone();
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
            Outcome::Changed(why) => {
                info!("{why}; fetching the list again");
                self.refresh();
                match self.listing.get(&name).cloned() {
                    Some(new) if self.attempt(&name) => {
                        if new != entry {
                            info!("{name}: the server has a new version; starting it again");
                            self.queue(new);
                        } else {
                            // The server has not finished rescanning yet: ask again shortly.
                            self.retry_at.insert(name, Instant::now() + self.retry_wait);
                        }
                    }
                    Some(_) => self.give_up(&name, why),
                    None if self.once => {
                        self.give_up(&name, format!("{name}: no longer listed by the server"))
                    }
                    None => {
                        warn!(
                            "{name}: no longer listed by the server; waiting for it to come back"
                        );
                        self.done(&name);
                        self.waiting.insert(name);
                    }
                }
            }
            Outcome::Failed(why) => {
                if !self.attempt(&name) {
                    self.give_up(&name, why);
                    return;
                }
                let n = self.attempts[&name];
                let wait = (self.retry_wait * (1 << (n - 1).min(10))).min(MAX_RETRY_WAIT);
                warn!("{why}; trying again in {} s", wait.as_secs());
                self.retry_at.insert(name, Instant::now() + wait);
            }
        }
    }

    /// Counts an attempt; false when `--once` has used up its retries.
    fn attempt(&mut self, name: &str) -> bool {
        let n = self.attempts.entry(name.to_owned()).or_insert(0);
        *n += 1;
        !self.once || *n < self.retries
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
            match self.listing.get(&name).cloned() {
                Some(entry) => self.queue(entry),
                None if self.once => {
                    self.give_up(&name, format!("{name}: no longer listed by the server"))
                }
                None => {
                    warn!("{name}: no longer listed by the server; waiting for it to come back");
                    self.done(&name);
                    self.waiting.insert(name);
                }
            }
        }
    }

    /// Fetches the list again and queues waiting names that appeared.
    fn refresh(&mut self) {
        self.next_refresh = Instant::now() + self.poll;
        let pool = &self.downloader.pool;
        let fetched = pool.get().and_then(|mut conn| {
            let listing = conn.list();
            if listing.is_ok() {
                pool.put(conn);
            }
            listing
        });
        match fetched {
            Ok(listing) => {
                if self.list_unreachable {
                    info!("server {} is reachable again", pool.addr());
                    self.list_unreachable = false;
                }
                if listing != self.listing {
                    info!("the server's list changed: {} files", listing.len());
                }
                self.listing = listing;
            }
            Err(e) => {
                pool.clear();
                if !self.list_unreachable {
                    warn!(
                        "cannot fetch the list from {} ({e}); will keep trying",
                        pool.addr()
                    );
                    self.list_unreachable = true;
                }
                return;
            }
        }
        let appeared: Vec<Entry> = self
            .waiting
            .iter()
            .filter_map(|name| self.listing.get(name).cloned())
            .collect();
        for entry in appeared {
            info!("{}: now listed by the server; queued", entry.name);
            self.waiting.remove(&entry.name);
            self.queue(entry);
        }
    }
}
