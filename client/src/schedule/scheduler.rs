//! The scheduler: turns the lines of input.txt into jobs for the engine
//! and decides what happens after each attempt (done, try again later,
//! wait for a name to be listed, give up), keeping one [`State`] per line.
//!
//! A name is placed by the servers' lists (the majority vote between
//! mirrors); a URL is probed first (`sources::http::probe`), which names
//! and sizes it. Two lines that would land under the same name are never
//! downloaded at the same time (their part files would be one file).
//! The loop waits on five things at once (new lines, outcomes, probe
//! results, the time of the next retry or list fetch, shutdown), so it
//! never polls.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use fastdl_protocol::Entry;
use fastdl_support::printable;
use log::{debug, error, info, warn};

use super::board::Board;
use super::input::Line;
use super::item::Item;
use super::names::{self, Next, Placement, Policy, State};
use super::web_slots::WebSlots;
use crate::download::outcome::{Job, Outcome};
use crate::download::Engine;
use crate::lists::vote::{vote, Vote};
use crate::lists::{fetch_all, Lists};
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use crate::sources::fastdl::Server;
use crate::sources::http::probe::{ProbeError, Probed, Prober};

/// What a finished run amounts to.
#[derive(Debug, Default)]
pub struct Summary {
    /// Files landed in this run.
    pub downloaded: usize,
    /// Lines whose file was already in place (same content).
    pub already_had: usize,
    /// Lines given up on (their name or URL), and why.
    pub failed: Vec<(String, String)>,
    /// Refused lines past the first [`MAX_REFUSALS_KEPT`]: counted, not
    /// kept or shown one by one.
    pub more_refused: usize,
    /// Whether Ctrl-C ended the run (exit 130 in `--once`).
    pub cancelled: bool,
    /// Why the run had to stop (a server no retry can help with).
    pub fatal: Option<String>,
}

/// Refused lines of input.txt kept (logged, shown in the summary, known
/// by their text); past it they are only counted.
pub const MAX_REFUSALS_KEPT: usize = 10_000;

/// A line's hash, to know a refused line again without keeping it.
fn line_hash(line: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    line.hash(&mut hasher);
    hasher.finish()
}

/// Whether [`Scheduler::place`] reports what it decides (new names) or
/// stays quiet (names placed again after a list fetch).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Voice {
    Loud,
    Quiet,
}

/// The web side: which engine source fetches URLs, the probes, and how
/// many URLs may be between their probe and their outcome at once (each
/// may hold up to a piece of memory: its first bytes).
pub struct Web {
    /// The engine's index of the web source (after the fastdl servers).
    pub source: usize,
    /// Where URLs' first requests run.
    pub prober: Prober,
    /// The URLs between their probe and their outcome, and the memory
    /// their first bytes hold.
    pub slots: WebSlots,
}

/// What the scheduler works with.
pub struct Parts {
    /// Where files are downloaded.
    pub engine: Engine,
    /// The fastdl servers (`--server`), in the order given.
    pub servers: Vec<Arc<Server>>,
    /// The web side, for URL lines.
    pub web: Web,
    /// The servers' lists as last fetched.
    pub lists: Lists,
    /// Why no server's list is known, if none is.
    pub unreachable: Option<String>,
    /// Every attempt's outcome (engine and lander).
    pub outcomes: Receiver<(Job, Outcome)>,
    /// Bars, totals and the `--json` events.
    pub progress: Arc<Progress>,
    /// A server's index whenever its list changed (watch mode; see
    /// `lists::watch`).
    pub list_changes: Receiver<usize>,
}

/// What ended a try at a line.
enum Ended<'a> {
    /// A download attempt, with its outcome.
    Download(&'a Job, &'a Outcome),
    /// A probe, and why it failed.
    Probe(String),
}

/// The scheduler of one run.
pub struct Scheduler {
    parts: Parts,
    policy: Policy,
    shutdown: Arc<Shutdown>,
    /// Every line and its state, with the indexes the loop asks of them.
    items: Board,
    /// URLs waiting for a probe slot, in the order they came.
    url_queue: VecDeque<String>,
    /// The last failure reported per line (a failure is reported once).
    reported: HashMap<String, String>,
    /// How often each line waited for another download of the same name:
    /// its wait doubles each time (a URL is probed again after each wait).
    parked: HashMap<String, u32>,
    next_refresh: Instant,
    summary: Summary,
    /// Refused lines kept as items so far (see [`MAX_REFUSALS_KEPT`]).
    refusals_kept: usize,
    /// The hashes of refused lines past that.
    refusals_past: std::collections::HashSet<u64>,
}

/// The memory held by a job's first piece fetched with it (see
/// [`WebSlots`]).
fn head_len(job: &Job) -> u64 {
    job.head.as_ref().map_or(0, |h| h.held() as u64)
}

/// How long a line first waits when another one is landing under the same
/// name (then twice as long each time, up to 64 times this).
const SAME_NAME_WAIT: Duration = Duration::from_millis(500);

impl Scheduler {
    pub fn new(parts: Parts, policy: Policy, shutdown: Arc<Shutdown>) -> Scheduler {
        Scheduler {
            parts,
            policy,
            shutdown,
            items: Board::default(),
            url_queue: VecDeque::new(),
            reported: HashMap::new(),
            parked: HashMap::new(),
            next_refresh: Instant::now(),
            summary: Summary::default(),
            refusals_kept: 0,
            refusals_past: std::collections::HashSet::new(),
        }
    }

    /// Runs until shutdown, or in `--once` mode until every line is settled.
    pub fn run(mut self, mut input: Receiver<Vec<Line>>) -> Summary {
        let mut input_open = true;
        let outcomes = self.parts.outcomes.clone();
        let probes = self.parts.web.prober.results.clone();
        let mut list_changes = self.parts.list_changes.clone();
        loop {
            let deadline = self.next_deadline();
            let timeout = deadline.map_or(crossbeam_channel::never(), crossbeam_channel::at);
            select! {
                recv(input) -> batch => match batch {
                    Ok(batch) => self.add_lines(batch),
                    Err(_) => {
                        // A closed channel is always ready: stop selecting on it.
                        input_open = false;
                        input = crossbeam_channel::never();
                    }
                },
                recv(outcomes) -> outcome => {
                    if let Ok((job, outcome)) = outcome {
                        self.settle(job, outcome);
                    }
                },
                recv(probes) -> probed => {
                    if let Ok((key, result)) = probed {
                        self.probed(key, result);
                    }
                },
                recv(list_changes) -> changed => match changed {
                    // Names waiting for the servers may be listed now.
                    Ok(_) if self.names_waiting() => self.refresh(),
                    Ok(_) => {}
                    Err(_) => list_changes = crossbeam_channel::never(),
                },
                recv(self.shutdown.signal()) -> _ => {},
                recv(timeout) -> _ => {},
            }
            if self.shutdown.is_requested() {
                self.summary.cancelled = true;
                break;
            }
            if let Some(why) = self.parts.engine.fatal() {
                self.summary.fatal = Some(why);
                break;
            }
            self.on_time(Instant::now());
            if self.policy.once && !input_open && !self.busy() {
                break;
            }
        }
        self.summary
    }

    fn state(&self, key: &str) -> Option<&State> {
        self.items.state(key)
    }

    fn set(&mut self, key: &str, state: State) {
        self.items.set(key, state);
    }

    /// Whether some line is still on its way or will be retried.
    fn busy(&self) -> bool {
        self.items.busy()
    }

    /// When the loop must look again without being woken: the next retry,
    /// or the next list fetch while names wait for the servers.
    fn next_deadline(&self) -> Option<Instant> {
        let retry = self.items.next_retry();
        let refresh = self.names_waiting().then_some(self.next_refresh);
        retry.into_iter().chain(refresh).min()
    }

    fn names_waiting(&self) -> bool {
        self.items.any_waiting()
    }

    /// Retries that are due, and the list fetch they (or waiting names) call for.
    fn on_time(&mut self, now: Instant) {
        let due = self.items.due(now);
        let names_due = due
            .iter()
            .any(|key| matches!(self.items.get(key).map(|t| &t.item), Some(Item::Name(_))));
        if (names_due || self.names_waiting()) && now >= self.next_refresh {
            self.refresh();
        }
        if due.is_empty() {
            return;
        }
        for key in due {
            let Some(State::Retry { attempts, .. }) = self.state(&key).cloned() else {
                continue;
            };
            match self.items.get(&key).map(|t| &t.item) {
                Some(Item::Name(_)) => self.place(key, Voice::Quiet),
                Some(Item::Url { .. }) => self.queue_url(key, attempts),
                None => {}
            }
        }
        self.show_totals();
    }

    fn add_lines(&mut self, lines: Vec<Line>) {
        for line in lines {
            let line = match line {
                Line::Text(text) => text,
                Line::Unreadable { shown, why } => {
                    self.refuse_line(shown, why.to_owned());
                    continue;
                }
            };
            let item = match Item::parse(&line) {
                Ok(item) => item,
                Err(why) => {
                    self.refuse_line(line, why);
                    continue;
                }
            };
            let key = item.key().to_owned();
            if self.items.contains(&key) {
                continue;
            }
            if let Item::Name(name) = &item {
                if let Err(e) = fastdl_protocol::validate_name(name) {
                    self.refuse_line(line, format!("not a valid name: {e}"));
                    continue;
                }
                if crate::disk::store::is_working_name(name) {
                    let why = "a name of the client's own part and journal files".to_owned();
                    self.refuse_line(line, why);
                    continue;
                }
            }
            let is_url = matches!(item, Item::Url { .. });
            self.parts.progress.events.queued(&key, is_url);
            self.items
                .insert(key.clone(), item, State::Queued { attempts: 0 });
            if is_url {
                self.queue_url(key, 0);
            } else {
                self.place(key, Voice::Loud);
            }
        }
        self.show_totals();
    }

    /// A line that asks for nothing the client can fetch.
    fn refuse_line(&mut self, line: String, why: String) {
        if self.items.contains(&line) {
            return;
        }
        if self.refusals_kept >= MAX_REFUSALS_KEPT {
            // A file of garbage (64 MiB of it: 1.6 million lines) costs a
            // hash per line from here on, not a log line, a summary line
            // and a map entry each.
            let first = self.refusals_past.is_empty();
            if self.refusals_past.insert(line_hash(&line)) && self.policy.once {
                self.summary.more_refused += 1;
            }
            if first {
                warn!("more than {MAX_REFUSALS_KEPT} lines refused; further ones are counted, not shown");
            }
            return;
        }
        self.refusals_kept += 1;
        let shown = printable(&line).into_owned();
        warn!("{shown}: {why}; ignored");
        self.parts.progress.events.failed(&shown, &why, None);
        if self.policy.once {
            self.summary.failed.push((shown, why.clone()));
        }
        self.items
            .insert(line.clone(), Item::Name(line), State::Failed { why });
    }

    fn shown(&self, server: usize) -> String {
        self.parts.servers[server].addr().to_string()
    }

    /// Whether another line is downloading into `name` now.
    fn lands_at(&self, name: &str, except: &str) -> bool {
        self.items.running_as(name).is_some_and(|key| key != except)
    }

    /// Hands `job` to the engine for `key`'s `attempt`-th try, unless
    /// another line lands under the same name now (then it waits a moment).
    fn start(&mut self, key: String, job: Job, attempt: u32) {
        if self.lands_at(&job.entry.name, &key) {
            debug!(
                "{key}: another download lands as {} now; waiting for it",
                job.entry.name
            );
            if matches!(
                self.items.get(&key).map(|t| &t.item),
                Some(Item::Url { .. })
            ) {
                // Its probe slot frees; it is queued again when due.
                self.parts.web.slots.done(head_len(&job));
            }
            let times = self.parked.entry(key.clone()).or_insert(0);
            *times += 1;
            let at = Instant::now() + SAME_NAME_WAIT * 2u32.pow((*times - 1).min(6));
            self.set(
                &key,
                State::Retry {
                    at,
                    attempts: attempt - 1,
                },
            );
            return;
        }
        self.parts.engine.submit(job.clone());
        let events = &self.parts.progress.events;
        events.started(&key, &job.entry.name, job.entry.size, attempt);
        self.set(&key, State::Running { attempt, job });
    }

    /// Decides what to do with a name now: start it with the servers that
    /// agree on it, let it wait for the servers, or (`--once`) fail it.
    fn place(&mut self, name: String, voice: Voice) {
        let vote = vote(&name, &self.parts.lists.by_server);
        let was = self.state(&name).cloned();
        let shown = |s: usize| self.shown(s);
        let placement = names::place(
            vote.clone(),
            self.parts.servers.len(),
            &shown,
            self.parts.unreachable.as_deref(),
            self.policy.once,
        );
        let was_waiting = matches!(was, Some(State::Waiting { .. }));
        if voice == Voice::Loud || was_waiting {
            if let Placement::Start(job) = &placement {
                self.log_dissenters(&name, &vote, job);
            }
        }
        match placement {
            Placement::Start(job) => {
                if was_waiting {
                    info!("{name}: now listed; queued");
                }
                let attempt = match was {
                    Some(State::Retry { attempts, .. }) => attempts + 1,
                    _ => 1,
                };
                self.start(name, job, attempt);
            }
            Placement::Fail(why) => {
                warn!("{name}: {why}");
                self.fail(&name, why);
            }
            Placement::Wait(why) => {
                let changed = !matches!(&was, Some(State::Waiting { why: old }) if *old == why);
                if voice == Voice::Loud || changed {
                    warn!("{name}: {why}; will check again when the list is re-fetched");
                }
                self.set(&name, State::Waiting { why });
            }
        }
    }

    fn log_dissenters(&self, name: &str, vote: &Vote, job: &Job) {
        let dissenters = names::dissenters(vote);
        for (s, size, digest) in dissenters {
            warn!(
                "{name}: server {} claims {size} bytes with digest {digest}, but {} of {} servers listing it \
                 say {} bytes with digest {}; not using it for this file",
                self.shown(*s),
                job.sources.len(),
                job.sources.len() + dissenters.len(),
                job.entry.size,
                job.entry.digest
            );
        }
    }

    /// Queues a URL for a probe (after `attempts` failed tries), and starts
    /// the probes there is room for.
    fn queue_url(&mut self, key: String, attempts: u32) {
        self.set(&key, State::Queued { attempts });
        self.url_queue.push_back(key);
        self.start_probes();
    }

    fn start_probes(&mut self) {
        while self.parts.web.slots.can_probe() {
            let Some(key) = self.url_queue.pop_front() else {
                return;
            };
            let Some(tracked) = self.items.get(&key) else {
                continue;
            };
            let (Item::Url { url, .. }, State::Queued { attempts }) =
                (&tracked.item, tracked.state())
            else {
                continue;
            };
            let (url, attempt) = (url.clone(), attempts + 1);
            self.parts.web.prober.ask(&key, &url);
            self.parts.web.slots.probing();
            self.set(&key, State::Probing { attempt });
        }
    }

    /// A URL's probe came back: start its download, or decide when to try
    /// again.
    fn probed(&mut self, key: String, result: Result<Probed, ProbeError>) {
        let Some(tracked) = self.items.get(&key) else {
            return;
        };
        let (Item::Url { check, .. }, State::Probing { attempt }) =
            (&tracked.item, tracked.state())
        else {
            return;
        };
        let (check, attempt) = (check.clone(), *attempt);
        match result {
            Ok(probed) => {
                let job = Job {
                    entry: Entry {
                        name: probed.name,
                        size: probed.size,
                        digest: probed.version,
                    },
                    remote: probed.url,
                    sources: vec![self.parts.web.source],
                    check: check.or(probed.announced),
                    per_piece: false,
                    ranges: probed.ranges,
                    head: probed.head,
                    validator: probed.validator,
                };
                self.parts.web.slots.probed(head_len(&job));
                if !job.ranges && job.entry.size > fastdl_protocol::PIECE_SIZE {
                    info!(
                        "{key}: the server serves no ranges, or no validator (ETag, Last-Modified) to check them against; fetching it in one answer over one connection"
                    );
                }
                self.start(key, job, attempt);
                // Its answer may hold less than the piece it reserved.
                self.start_probes();
            }
            Err(e) => {
                self.parts.web.slots.probe_failed();
                let why = e.to_string();
                let next = names::after_probe(
                    e.is_permanent(),
                    why.clone(),
                    attempt,
                    &self.policy,
                    Instant::now(),
                );
                self.follow(&key, next, attempt, Ended::Probe(why));
                self.start_probes();
            }
        }
        self.show_totals();
    }

    /// An attempt ended.
    fn settle(&mut self, job: Job, outcome: Outcome) {
        let Some((key, attempt)) = self.items.running(&job).map(|(k, a)| (k.to_owned(), a)) else {
            return;
        };
        let is_url = matches!(
            self.items.get(&key).map(|t| &t.item),
            Some(Item::Url { .. })
        );
        if is_url {
            self.parts.web.slots.done(head_len(&job));
        }
        match &outcome {
            Outcome::AlreadyHad(path) => {
                info!(
                    "{key}: already in place as {} (same digest); skipped",
                    path.display()
                );
                self.summary.already_had += 1;
            }
            Outcome::Landed(_) => self.summary.downloaded += 1,
            _ => {}
        }
        if let Outcome::Landed(path) | Outcome::AlreadyHad(path) = &outcome {
            let already = matches!(outcome, Outcome::AlreadyHad(_));
            let (name, size) = (&job.entry.name, job.entry.size);
            let check = job.check.as_ref();
            self.parts
                .progress
                .events
                .done(&key, name, path, size, check, already);
        }
        let next = names::after(&outcome, attempt, &self.policy, Instant::now());
        self.follow(&key, next, attempt, Ended::Download(&job, &outcome));
        if is_url {
            self.start_probes();
        }
        self.show_totals();
    }

    /// `key` failed for good (it is counted, and not tried again).
    fn fail(&mut self, key: &str, why: String) {
        self.parts.progress.events.failed(key, &why, None);
        self.summary.failed.push((key.to_owned(), why.clone()));
        self.set(key, State::Failed { why });
    }

    /// Applies the rule's verdict `next` to `key` after its `attempt`-th
    /// try ended as `ended`.
    fn follow(&mut self, key: &str, next: Next, attempt: u32, ended: Ended<'_>) {
        let now = Instant::now();
        match next {
            Next::Done => self.set(key, State::Done),
            Next::Stay => {}
            Next::GiveUp(why) => {
                error!("{key}: {why}; giving up");
                self.fail(key, why);
            }
            Next::RetryAt(at) => {
                let why = match ended {
                    Ended::Download(_, Outcome::Failed(e)) => e.to_string(),
                    Ended::Download(..) => String::new(),
                    Ended::Probe(why) => why,
                };
                if !why.is_empty() {
                    let wait = at.saturating_duration_since(now).as_secs_f64();
                    self.parts.progress.events.failed(key, &why, Some(wait));
                }
                if self.reported.get(key) != Some(&why) {
                    warn!(
                        "{key}: {why}; trying again in {:.0} s",
                        at.saturating_duration_since(now).as_secs_f64()
                    );
                    self.reported.insert(key.to_owned(), why);
                }
                self.set(
                    key,
                    State::Retry {
                        at,
                        attempts: attempt,
                    },
                );
            }
            Next::Refresh { same_again_at } => {
                self.refresh_after_change(key, same_again_at, attempt, ended)
            }
        }
    }

    /// A source said the file changed: a URL is probed again; a name's
    /// lists are fetched again, and it starts over if they list another
    /// version now (else it is tried again shortly: the server may not
    /// have rescanned yet).
    fn refresh_after_change(
        &mut self,
        key: &str,
        same_again_at: Instant,
        attempt: u32,
        ended: Ended<'_>,
    ) {
        let is_url = matches!(self.items.get(key).map(|t| &t.item), Some(Item::Url { .. }));
        if let Ended::Download(_, Outcome::Changed(e)) = ended {
            let next = if is_url {
                "asking for it again"
            } else {
                "fetching the list again"
            };
            info!("{key}: {e}; {next}");
        }
        if is_url {
            // A file replaced once mid-download starts over at once; one
            // whose answers keep saying "changed" (backends behind a load
            // balancer with different ETags, say) is asked again with
            // backoff, not in a loop.
            if attempt <= 1 {
                self.queue_url(key.to_owned(), attempt);
            } else {
                let at = Instant::now() + self.policy.backoff.wait(attempt - 1);
                self.set(
                    key,
                    State::Retry {
                        at,
                        attempts: attempt,
                    },
                );
            }
            return;
        }
        self.refresh();
        let now_listed = vote(key, &self.parts.lists.by_server);
        self.set(
            key,
            State::Retry {
                at: same_again_at,
                attempts: attempt,
            },
        );
        let same = matches!(ended, Ended::Download(job, _) if names::same_file(&now_listed, job));
        if !same {
            if matches!(now_listed, Vote::Agreed { .. }) {
                info!("{key}: the server has a new version; starting it again");
            }
            self.place(key.to_owned(), Voice::Loud);
        }
    }

    /// Fetches every server's list again and places the waiting names anew
    /// (nothing if shutdown came first).
    fn refresh(&mut self) {
        self.next_refresh = Instant::now() + self.policy.poll;
        let Some(fetched) = fetch_all(&self.parts.servers, &self.shutdown) else {
            return;
        };
        let errors: Vec<String> = fetched
            .iter()
            .zip(&self.parts.servers)
            .filter_map(|(r, s)| r.as_ref().err().map(|e| format!("{}: {e}", s.addr())))
            .collect();
        self.parts.lists.update(&self.parts.servers, fetched);
        let was_unreachable = self.parts.unreachable.is_some();
        self.parts.unreachable = (!self.parts.lists.any()).then(|| errors.join("; "));
        if was_unreachable && self.parts.unreachable.is_none() {
            // The list the client could not show at start.
            crate::lists::print(
                &self.parts.lists.by_server,
                &mut self.parts.progress.events.text_out(),
            );
        }
        for name in self.items.waiting() {
            self.place(name, Voice::Quiet);
        }
        self.show_totals();
    }

    /// The progress display's total line, from the states now.
    fn show_totals(&self) {
        let (done, total) = self.items.totals();
        self.parts.progress.totals(done as u64, total as u64);
    }
}
