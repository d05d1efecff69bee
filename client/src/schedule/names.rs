//! One state per line of input.txt (a name or a URL), and the rules that
//! move it from one state to the next: pure functions of the vote, the
//! probe, the outcome, the policy and the time (passed in), so that the
//! scheduler's decisions are tested without a server.

use std::time::{Duration, Instant};

use fastdl_protocol::Digest;

use crate::download::outcome::{Job, Outcome};
use crate::lists::vote::Vote;
use crate::retry::Backoff;

/// What the scheduler knows of one name or URL, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A URL waiting for a free probe slot.
    Queued { attempts: u32 },
    /// A URL being probed, for its `attempt`-th try.
    Probing { attempt: u32 },
    /// Handed to the engine, for its `attempt`-th try; `job` is what the
    /// servers agreed the file is.
    Running { attempt: u32, job: Job },
    /// Waits for the servers to list it (or to agree on it): `why`.
    Waiting { why: String },
    /// Tries again at `at`; `attempts` have failed so far.
    Retry { at: Instant, attempts: u32 },
    /// In place: downloaded, or found already there.
    Done,
    /// Given up on (not a valid name; `--once` out of tries; no room).
    Failed { why: String },
}

/// How the scheduler treats names and failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `--once`: settle every name, then stop; failures count.
    pub once: bool,
    /// Attempts per file in `--once` mode.
    pub retries: u32,
    /// Waits between attempts at a file (`--retry-wait`, doubling to 60 s).
    pub backoff: Backoff,
    /// How often the lists are fetched again while names wait for them.
    pub poll: Duration,
}

/// What to do with a name, given the servers' vote on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Download it from these servers.
    Start(Job),
    /// Wait for the lists to change (watch mode).
    Wait(String),
    /// Give up on it (`--once`).
    Fail(String),
}

/// Places a name given the `vote` of `servers` servers on it; `shown`
/// names a server by index; `unreachable` says why no server's list is
/// known, if none is.
pub fn place(
    vote: Vote,
    servers: usize,
    shown: &dyn Fn(usize) -> String,
    unreachable: Option<&str>,
    once: bool,
) -> Placement {
    let why = match vote {
        Vote::Agreed { entry, servers, .. } => {
            return Placement::Start(Job::listed(entry, servers))
        }
        Vote::NotListed if unreachable.is_some() => format!(
            "cannot get the list from the server ({})",
            unreachable.unwrap_or_default()
        ),
        Vote::NotListed if servers == 1 => "not listed by the server".to_owned(),
        Vote::NotListed => "not listed by any server".to_owned(),
        Vote::NoMajority(claims) => {
            let said: Vec<String> = claims
                .iter()
                .map(|(s, size, digest)| {
                    format!("{} says {size} bytes, digest {digest}", shown(*s))
                })
                .collect();
            format!(
                "the servers disagree and no majority holds ({})",
                said.join("; ")
            )
        }
    };

    if once {
        Placement::Fail(why)
    } else {
        Placement::Wait(why)
    }
}

/// What follows the outcome of attempt number `attempt` at a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// In place.
    Done,
    /// Try again at this time.
    RetryAt(Instant),
    /// The file changed on its server: fetch the lists again, then place
    /// the name anew (or, if the lists still say the same, retry at this
    /// time: the server has not rescanned yet).
    Refresh { same_again_at: Instant },
    /// No more tries: why.
    GiveUp(String),
    /// Shutdown: leave it as it is.
    Stay,
}

/// The rule after an outcome.
pub fn after(outcome: &Outcome, attempt: u32, policy: &Policy, now: Instant) -> Next {
    let out_of_tries = policy.once && attempt >= policy.retries;
    match outcome {
        Outcome::Landed(_) | Outcome::AlreadyHad(_) => Next::Done,
        Outcome::Cancelled => Next::Stay,
        Outcome::Changed(e) if out_of_tries => Next::GiveUp(e.to_string()),
        Outcome::Changed(_) => Next::Refresh {
            same_again_at: now + policy.backoff.first,
        },
        Outcome::Failed(e) if out_of_tries || (policy.once && e.needs_room()) => {
            Next::GiveUp(e.to_string())
        }
        Outcome::Failed(_) => Next::RetryAt(now + policy.backoff.wait(attempt)),
    }
}

/// The rule after probe number `attempt` of a URL failed (`permanent`:
/// the server said the file is not there or not for us): try again later,
/// or give up (`--once` out of tries; a permanent failure in `--once`).
pub fn after_probe(
    permanent: bool,
    why: String,
    attempt: u32,
    policy: &Policy,
    now: Instant,
) -> Next {
    if policy.once && (permanent || attempt >= policy.retries) {
        return Next::GiveUp(why);
    }
    // Watch mode keeps asking, slowly for a file the server says is not
    // there (it may appear).
    let wait = if permanent {
        policy.backoff.max
    } else {
        policy.backoff.wait(attempt)
    };
    Next::RetryAt(now + wait)
}

/// Whether `vote` still agrees on exactly the file `job` fetched (after
/// the file changed, the server may not have rescanned yet).
pub fn same_file(vote: &Vote, job: &Job) -> bool {
    matches!(vote, Vote::Agreed { entry, .. } if *entry == job.entry)
}

/// The dissenters of an agreed vote, for the log: `(server, size, digest)`.
pub fn dissenters(vote: &Vote) -> &[(usize, u64, Digest)] {
    match vote {
        Vote::Agreed { dissenters, .. } => dissenters,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::outcome::FileError;
    use crate::download::source::{SourceError, Trouble};
    use fastdl_protocol::Entry;

    fn policy(once: bool) -> Policy {
        Policy {
            once,
            retries: 3,
            backoff: Backoff {
                first: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            poll: Duration::from_secs(5),
        }
    }

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            size: 1,
            digest: Digest::of(b"x"),
        }
    }

    fn shown(i: usize) -> String {
        format!("s{i}")
    }

    fn changed() -> SourceError {
        SourceError {
            trouble: Trouble::Changed,
            cause: "CHANGED".into(),
        }
    }

    #[test]
    fn an_agreed_name_starts_and_others_wait_or_fail() {
        let vote = Vote::Agreed {
            entry: entry("a"),
            servers: vec![0, 2],
            dissenters: vec![(1, 2, Digest::of(b"y"))],
        };
        assert_eq!(
            place(vote.clone(), 3, &shown, None, true),
            Placement::Start(Job::listed(entry("a"), vec![0, 2]))
        );
        assert_eq!(dissenters(&vote).len(), 1);
        assert_eq!(
            place(Vote::NotListed, 1, &shown, None, false),
            Placement::Wait("not listed by the server".into())
        );
        match place(Vote::NotListed, 1, &shown, Some("refused"), true) {
            Placement::Fail(why) => {
                assert!(why.contains("cannot get the list") && why.contains("refused"))
            }
            other => panic!("{other:?}"),
        }
        let no_majority =
            Vote::NoMajority(vec![(0, 1, Digest::of(b"a")), (1, 1, Digest::of(b"b"))]);
        match place(no_majority, 2, &shown, None, true) {
            Placement::Fail(why) => assert!(why.contains("s0 says") && why.contains("s1 says")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_retry_with_growing_waits_until_once_runs_out() {
        let now = Instant::now();
        let failed = Outcome::Failed(FileError::BadPiece { piece: 1, times: 3 });
        let Next::RetryAt(first) = after(&failed, 1, &policy(true), now) else {
            panic!()
        };
        let Next::RetryAt(second) = after(&failed, 2, &policy(true), now) else {
            panic!()
        };
        assert!(first >= now + Duration::from_secs(1) && second >= now + Duration::from_secs(2));
        assert!(matches!(
            after(&failed, 3, &policy(true), now),
            Next::GiveUp(_)
        ));
        assert!(
            matches!(after(&failed, 30, &policy(false), now), Next::RetryAt(_)),
            "watch mode never gives up"
        );
    }

    #[test]
    fn no_room_is_not_retried_in_once_mode_and_changes_refresh_the_lists() {
        let now = Instant::now();
        let full = Outcome::Failed(FileError::NoRoom {
            need: "1 GiB".into(),
            free: "1 MiB".into(),
            dir: "/o".into(),
        });
        assert!(matches!(
            after(&full, 1, &policy(true), now),
            Next::GiveUp(_)
        ));
        assert!(matches!(
            after(&full, 1, &policy(false), now),
            Next::RetryAt(_)
        ));
        assert!(matches!(
            after(&Outcome::Changed(changed()), 1, &policy(true), now),
            Next::Refresh { .. }
        ));
        assert!(matches!(
            after(&Outcome::Changed(changed()), 3, &policy(true), now),
            Next::GiveUp(_)
        ));
        assert_eq!(
            after(&Outcome::Landed("x".into()), 1, &policy(true), now),
            Next::Done
        );
        assert_eq!(
            after(&Outcome::Cancelled, 1, &policy(true), now),
            Next::Stay
        );
    }

    #[test]
    fn a_failed_probe_is_retried_and_a_missing_file_waits_long_or_fails_at_once() {
        let now = Instant::now();
        let why = || "HTTP 404".to_owned();
        assert!(matches!(
            after_probe(true, why(), 1, &policy(true), now),
            Next::GiveUp(_)
        ));
        assert_eq!(
            after_probe(true, why(), 1, &policy(false), now),
            Next::RetryAt(now + Duration::from_secs(60))
        );
        let Next::RetryAt(at) = after_probe(false, why(), 1, &policy(true), now) else {
            panic!()
        };
        assert!(at < now + Duration::from_secs(3));
        assert!(matches!(
            after_probe(false, why(), 3, &policy(true), now),
            Next::GiveUp(_)
        ));
    }

    #[test]
    fn the_same_file_is_recognised_after_a_change_report() {
        let job = Job::listed(entry("a"), vec![0]);
        let same = Vote::Agreed {
            entry: entry("a"),
            servers: vec![0],
            dissenters: vec![],
        };
        assert!(same_file(&same, &job));
        let mut newer = entry("a");
        newer.size = 2;
        let other = Vote::Agreed {
            entry: newer,
            servers: vec![0],
            dissenters: vec![],
        };
        assert!(!same_file(&other, &job));
        assert!(!same_file(&Vote::NotListed, &job));
    }
}
