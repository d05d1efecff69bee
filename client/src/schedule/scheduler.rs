//! The scheduler: turns names from input.txt into jobs for the engine and
//! decides what happens after each attempt (done, try again later, wait
//! for the name to be listed, give up), keeping one [`State`] per name.
//! It waits on four things at once (new names, outcomes, the time of the
//! next retry or list fetch, shutdown), so it never polls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver};
use fastdl_protocol::validate_name;
use fastdl_support::printable;
use log::{error, info, warn};

use super::names::{self, Next, Placement, Policy, State};
use crate::download::outcome::{Job, Outcome};
use crate::download::Engine;
use crate::lists::vote::vote;
use crate::lists::{fetch_all, Lists};
use crate::progress::Progress;
use crate::shutdown::Shutdown;
use crate::sources::fastdl::Server;

/// What a finished run amounts to.
#[derive(Debug, Default)]
pub struct Summary {
    pub downloaded: usize,
    pub already_had: usize,
    /// Names given up on, and why.
    pub failed: Vec<(String, String)>,
    pub cancelled: bool,
    /// Why the run had to stop (a server no retry can help with).
    pub fatal: Option<String>,
}

/// Whether [`Scheduler::place`] reports what it decides (new names) or
/// stays quiet (names placed again after a list fetch).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Voice {
    Loud,
    Quiet,
}

/// The scheduler of one run.
pub struct Scheduler {
    engine: Engine,
    servers: Vec<Arc<Server>>,
    lists: Lists,
    policy: Policy,
    shutdown: Arc<Shutdown>,
    outcomes: Receiver<(Job, Outcome)>,
    progress: Arc<Progress>,
    names: HashMap<String, State>,
    next_refresh: Instant,
    summary: Summary,
}

impl Scheduler {
    pub fn new(
        engine: Engine,
        servers: Vec<Arc<Server>>,
        lists: Lists,
        policy: Policy,
        shutdown: Arc<Shutdown>,
        outcomes: Receiver<(Job, Outcome)>,
        progress: Arc<Progress>,
    ) -> Scheduler {
        Scheduler {
            engine,
            servers,
            lists,
            policy,
            shutdown,
            outcomes,
            progress,
            names: HashMap::new(),
            next_refresh: Instant::now(),
            summary: Summary::default(),
        }
    }

    /// Runs until shutdown, or in `--once` mode until every name is settled.
    pub fn run(mut self, mut input: Receiver<Vec<String>>) -> Summary {
        let mut input_open = true;
        loop {
            let deadline = self.next_deadline();
            let timeout = deadline.map_or(crossbeam_channel::never(), crossbeam_channel::at);
            select! {
                recv(input) -> batch => match batch {
                    Ok(batch) => self.add_names(batch),
                    Err(_) => {
                        // A closed channel is always ready: stop selecting on it.
                        input_open = false;
                        input = crossbeam_channel::never();
                    }
                },
                recv(self.outcomes) -> outcome => {
                    if let Ok((job, outcome)) = outcome {
                        self.settle(job, outcome);
                    }
                },
                recv(self.shutdown.signal()) -> _ => {},
                recv(timeout) -> _ => {},
            }
            if self.shutdown.is_requested() {
                self.summary.cancelled = true;
                break;
            }
            if let Some(why) = self.engine.fatal() {
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

    /// Whether some name is still being downloaded or will be retried.
    fn busy(&self) -> bool {
        self.names
            .values()
            .any(|s| matches!(s, State::Running { .. } | State::Retry { .. }))
    }

    /// When the loop must look again without being woken: the next retry,
    /// or the next list fetch while names wait for the servers.
    fn next_deadline(&self) -> Option<Instant> {
        let retry = self
            .names
            .values()
            .filter_map(|s| match s {
                State::Retry { at, .. } => Some(*at),
                _ => None,
            })
            .min();
        let waiting = self
            .names
            .values()
            .any(|s| matches!(s, State::Waiting { .. }));
        let refresh = waiting.then_some(self.next_refresh);
        retry.into_iter().chain(refresh).min()
    }

    /// Retries that are due, and the list fetch they (or waiting names) call for.
    fn on_time(&mut self, now: Instant) {
        let due: Vec<String> = self
            .names
            .iter()
            .filter(|(_, s)| matches!(s, State::Retry { at, .. } if *at <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let waiting = self
            .names
            .values()
            .any(|s| matches!(s, State::Waiting { .. }));
        if (!due.is_empty() || waiting) && now >= self.next_refresh {
            self.refresh();
        }
        if due.is_empty() {
            return;
        }
        for name in due {
            self.place(name, Voice::Quiet);
        }
        self.show_totals();
    }

    fn add_names(&mut self, names: Vec<String>) {
        for name in names {
            if self.names.contains_key(&name) {
                continue;
            }
            if let Err(e) = validate_name(&name) {
                let shown = printable(&name).into_owned();
                warn!("{shown}: not a valid name ({e}); ignored");
                let why = format!("not a valid name: {e}");
                if self.policy.once {
                    self.summary.failed.push((shown, why.clone()));
                }
                self.names.insert(name, State::Failed { why });
                continue;
            }
            self.place(name, Voice::Loud);
        }
        self.show_totals();
    }

    fn shown(&self, server: usize) -> String {
        self.servers[server].addr().to_string()
    }

    /// Decides what to do with a name now: start it with the servers
    /// that agree on it, let it wait for the servers, or (`--once`) fail it.
    fn place(&mut self, name: String, report: Voice) {
        let vote = vote(&name, &self.lists.by_server);
        let was = self.names.get(&name).cloned();
        let shown = |s: usize| self.shown(s);
        let placement = names::place(vote.clone(), self.servers.len(), &shown, self.policy.once);
        let was_waiting = matches!(was, Some(State::Waiting { .. }));
        if report == Voice::Loud || was_waiting {
            if let Placement::Start(job) = &placement {
                for (s, size, digest) in names::dissenters(&vote) {
                    warn!(
                        "{name}: server {} claims {size} bytes with digest {digest}, but {} of {} servers listing it \
                         say {} bytes with digest {}; not using it for this file",
                        self.shown(*s),
                        job.sources.len(),
                        job.sources.len() + names::dissenters(&vote).len(),
                        job.entry.size,
                        job.entry.digest
                    );
                }
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
                self.engine.submit(job.clone());
                self.names.insert(name, State::Running { attempt, job });
            }
            Placement::Fail(why) => {
                warn!("{name}: {why}");
                self.summary.failed.push((name.clone(), why.clone()));
                self.names.insert(name, State::Failed { why });
            }
            Placement::Wait(why) => {
                let changed = !matches!(&was, Some(State::Waiting { why: old }) if *old == why);
                if report == Voice::Loud || changed {
                    warn!("{name}: {why}; will check again when the list is re-fetched");
                }
                self.names.insert(name, State::Waiting { why });
            }
        }
    }

    fn settle(&mut self, job: Job, outcome: Outcome) {
        let name = job.entry.name.clone();
        let Some(State::Running {
            attempt,
            job: running,
        }) = self.names.get(&name).cloned()
        else {
            return;
        };
        match &outcome {
            Outcome::AlreadyHad(path) => {
                info!(
                    "{name}: already in place as {} (same digest); skipped",
                    path.display()
                );
                self.summary.already_had += 1;
            }
            Outcome::Landed => self.summary.downloaded += 1,
            _ => {}
        }
        let now = Instant::now();
        match names::after(&outcome, attempt, &self.policy, now) {
            Next::Done => {
                self.names.insert(name, State::Done);
            }
            Next::Stay => {}
            Next::GiveUp(why) => {
                error!("{name}: {why}; giving up");
                self.summary.failed.push((name.clone(), why.clone()));
                self.names.insert(name, State::Failed { why });
            }
            Next::RetryAt(at) => {
                let why = match &outcome {
                    Outcome::Failed(e) => e.to_string(),
                    _ => String::new(),
                };
                warn!(
                    "{name}: {why}; trying again in {:.0} s",
                    at.saturating_duration_since(now).as_secs_f64()
                );
                self.names.insert(
                    name,
                    State::Retry {
                        at,
                        attempts: attempt,
                    },
                );
            }
            Next::Refresh { same_again_at } => {
                if let Outcome::Changed(e) = &outcome {
                    info!("{name}: {e}; fetching the list again");
                }
                self.refresh();
                let now_listed = vote(&name, &self.lists.by_server);
                self.names.insert(
                    name.clone(),
                    State::Retry {
                        at: same_again_at,
                        attempts: attempt,
                    },
                );
                if !names::same_file(&now_listed, &running) {
                    if matches!(now_listed, crate::lists::vote::Vote::Agreed { .. }) {
                        info!("{name}: the server has a new version; starting it again");
                    }
                    self.place(name, Voice::Loud);
                }
            }
        }
        self.show_totals();
    }

    /// Fetches every server's list again and places the waiting names anew
    /// (nothing if shutdown came first).
    fn refresh(&mut self) {
        self.next_refresh = Instant::now() + self.policy.poll;
        let Some(fetched) = fetch_all(&self.servers, &self.shutdown) else {
            return;
        };
        self.lists.update(&self.servers, fetched);
        let waiting: Vec<String> = self
            .names
            .iter()
            .filter(|(_, s)| matches!(s, State::Waiting { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            self.place(name, Voice::Quiet);
        }
        self.show_totals();
    }

    /// The progress display's total line, from the states now.
    fn show_totals(&self) {
        let (mut done, mut total) = (0, 0);
        for state in self.names.values() {
            match state {
                State::Done => {
                    done += 1;
                    total += 1;
                }
                State::Running { .. } | State::Retry { .. } => total += 1,
                _ => {}
            }
        }
        self.progress.totals(done, total);
    }
}
