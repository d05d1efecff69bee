//! Every line of input.txt with its one [`State`], and the indexes the
//! scheduler's loop asks of them after every event.
//!
//! The loop wakes for every outcome, probe result and new line, and then
//! asks: is anything still on its way, does a name wait for the lists,
//! when is the next retry, which retries are due, which line runs under
//! this landing name, what are the totals. Scanning every line for each
//! answer made a run over n lines cost n² (1000 lines of 100 KiB: about
//! ten scans of 1000 lines per event, some 3000 events, 15% of the
//! client's CPU; a day-long watch over 100,000 lines would spend its time
//! there). So a state changes only through [`Board::set`], which keeps
//! the counts per kind of state, the retries ordered by time and the
//! running lines by landing name up to date, and every answer is O(1) or
//! O(log n).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::item::Item;
use super::names::State;
use crate::download::outcome::Job;

/// One line of input.txt and where it stands.
#[derive(Debug)]
pub struct Tracked {
    /// What the line asks for.
    pub item: Item,
    state: State,
}

impl Tracked {
    /// Where the line stands (changed only through [`Board::set`]).
    pub fn state(&self) -> &State {
        &self.state
    }
}

/// The kinds of [`State`], to count lines by.
#[derive(Clone, Copy)]
enum Kind {
    Queued,
    Probing,
    Running,
    Waiting,
    Retry,
    Done,
    Failed,
}

const KINDS: usize = 7;

fn kind(state: &State) -> Kind {
    match state {
        State::Queued { .. } => Kind::Queued,
        State::Probing { .. } => Kind::Probing,
        State::Running { .. } => Kind::Running,
        State::Waiting { .. } => Kind::Waiting,
        State::Retry { .. } => Kind::Retry,
        State::Done => Kind::Done,
        State::Failed { .. } => Kind::Failed,
    }
}

/// The lines, their states and the indexes over them.
#[derive(Debug, Default)]
pub struct Board {
    /// Each line by its key (the name, or the URL).
    lines: HashMap<String, Tracked>,
    /// Kept in step with every line's state by [`Board::set`].
    ix: Indexes,
}

/// What the loop asks of the states, kept as they change.
#[derive(Debug, Default)]
struct Indexes {
    /// Lines per kind of state (indexed by `Kind`).
    counts: [usize; KINDS],
    /// Lines in `Retry`, by the time they are due.
    retries: BTreeSet<(Instant, String)>,
    /// The line running under each landing name (the scheduler never
    /// runs two lines under one name).
    landing: HashMap<String, String>,
}

impl Indexes {
    fn add(&mut self, key: &str, state: &State) {
        self.counts[kind(state) as usize] += 1;
        match state {
            State::Retry { at, .. } => {
                self.retries.insert((*at, key.to_owned()));
            }
            State::Running { job, .. } => {
                self.landing.insert(job.entry.name.clone(), key.to_owned());
            }
            _ => {}
        }
    }

    fn remove(&mut self, key: &str, state: &State) {
        self.counts[kind(state) as usize] -= 1;
        match state {
            State::Retry { at, .. } => {
                self.retries.remove(&(*at, key.to_owned()));
            }
            State::Running { job, .. }
                if self.landing.get(&job.entry.name).map(String::as_str) == Some(key) =>
            {
                self.landing.remove(&job.entry.name);
            }
            _ => {}
        }
    }

    fn count(&self, kinds: &[Kind]) -> usize {
        kinds.iter().map(|&k| self.counts[k as usize]).sum()
    }
}

impl Board {
    pub fn contains(&self, key: &str) -> bool {
        self.lines.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Tracked> {
        self.lines.get(key)
    }

    pub fn state(&self, key: &str) -> Option<&State> {
        self.lines.get(key).map(|t| &t.state)
    }

    /// Adds a new line; a key already on the board is left as it is.
    pub fn insert(&mut self, key: String, item: Item, state: State) {
        if self.lines.contains_key(&key) {
            return;
        }
        self.ix.add(&key, &state);
        self.lines.insert(key, Tracked { item, state });
    }

    /// Moves `key` to `state` (nothing if the line is unknown).
    pub fn set(&mut self, key: &str, state: State) {
        let Some(tracked) = self.lines.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut tracked.state, state);
        self.ix.remove(key, &old);
        self.ix.add(key, &tracked.state);
    }

    /// Whether some line is still on its way or will be retried.
    pub fn busy(&self) -> bool {
        let on_way = [Kind::Running, Kind::Retry, Kind::Probing, Kind::Queued];
        self.ix.count(&on_way) > 0
    }

    /// Whether some name waits for the servers to list it.
    pub fn any_waiting(&self) -> bool {
        self.ix.counts[Kind::Waiting as usize] > 0
    }

    /// The names waiting for the servers to list them.
    pub fn waiting(&self) -> Vec<String> {
        if !self.any_waiting() {
            return Vec::new();
        }
        self.lines
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Waiting { .. }))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Lines in place, and lines in place or still on their way (the
    /// progress display's totals).
    pub fn totals(&self) -> (usize, usize) {
        let done = self.ix.counts[Kind::Done as usize];
        let on_way = [Kind::Running, Kind::Retry, Kind::Probing, Kind::Queued];
        (done, done + self.ix.count(&on_way))
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.ix.retries.first().map(|(at, _)| *at)
    }

    /// The lines whose retry is due at `now`, earliest first.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.ix
            .retries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// The line running under the landing name `name`, if one is.
    pub fn running_as(&self, name: &str) -> Option<&str> {
        self.ix.landing.get(name).map(String::as_str)
    }

    /// The line running `job` now, if one is (an outcome for a job no line
    /// runs any more is stale).
    pub fn running(&self, job: &Job) -> Option<(&str, u32)> {
        let key = self.running_as(&job.entry.name)?;
        match self.state(key) {
            Some(State::Running { attempt, job: j }) if j == job => Some((key, *attempt)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastdl_protocol::{Digest, Entry};
    use std::time::Duration;

    fn job(name: &str) -> Job {
        Job::listed(
            Entry {
                name: name.into(),
                size: 1,
                digest: Digest([1; 32]),
            },
            vec![0],
        )
    }

    fn name(key: &str) -> Item {
        Item::Name(key.into())
    }

    #[test]
    fn counts_follow_every_change() {
        let mut b = Board::default();
        assert!(!b.busy());
        b.insert("a".into(), name("a"), State::Queued { attempts: 0 });
        b.insert(
            "b".into(),
            name("b"),
            State::Waiting {
                why: "unlisted".into(),
            },
        );
        assert!(b.busy() && b.any_waiting());
        assert_eq!(b.totals(), (0, 1));
        assert_eq!(b.waiting(), vec!["b".to_string()]);
        b.set(
            "a",
            State::Running {
                attempt: 1,
                job: job("a"),
            },
        );
        b.set("a", State::Done);
        b.set("b", State::Failed { why: "no".into() });
        assert!(!b.busy() && !b.any_waiting());
        assert_eq!(b.totals(), (1, 1));
        // A key already there is not added twice, nor reset.
        b.insert("a".into(), name("a"), State::Queued { attempts: 0 });
        assert_eq!(b.state("a"), Some(&State::Done));
        assert_eq!(b.totals(), (1, 1));
    }

    #[test]
    fn retries_come_due_in_time_order() {
        let mut b = Board::default();
        let now = Instant::now();
        for (key, secs) in [("late", 9), ("soon", 1), ("mid", 5)] {
            b.insert(key.into(), name(key), State::Queued { attempts: 0 });
            let at = now + Duration::from_secs(secs);
            b.set(key, State::Retry { at, attempts: 1 });
        }
        assert_eq!(b.next_retry(), Some(now + Duration::from_secs(1)));
        assert!(b.due(now).is_empty());
        assert_eq!(b.due(now + Duration::from_secs(5)), vec!["soon", "mid"]);
        // Retried earlier than planned: its old time no longer counts.
        b.set("soon", State::Queued { attempts: 1 });
        assert_eq!(b.next_retry(), Some(now + Duration::from_secs(5)));
        b.set("mid", State::Done);
        b.set("late", State::Done);
        assert_eq!(b.next_retry(), None);
        assert!(b.busy(), "soon is queued");
    }

    #[test]
    fn running_lines_are_found_by_landing_name_and_job() {
        let mut b = Board::default();
        b.insert("x".into(), name("x"), State::Queued { attempts: 0 });
        let j = job("x");
        let running = State::Running {
            attempt: 2,
            job: j.clone(),
        };
        b.set("x", running);
        assert_eq!(b.running_as("x"), Some("x"));
        assert_eq!(b.running(&j), Some(("x", 2)));
        // Another version of the file is not this attempt's.
        let mut other = j.clone();
        other.entry.size = 2;
        assert_eq!(b.running(&other), None);
        b.set("x", State::Done);
        assert_eq!(b.running_as("x"), None);
        assert_eq!(b.running(&j), None);
    }
}
