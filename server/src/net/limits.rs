//! File descriptors, and the connection limits they allow.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (the
//! usual default soft limit, 1024, is far below what an event loop can
//! hold). The default connection limit is then 10,000, or fewer if the
//! descriptors do not allow it: each connection may take two descriptors
//! (its socket, and the file it is sending while it answers; a waiting
//! connection holds no file), and a reserve stays free for the listeners,
//! the open plans (up to 8 ports and 8 streams each), the sockets of
//! connections being closed ([`Closing`]), and the log. With the hard
//! limit at 20,000 that is 9,776 connections; at 1,024, 288.
//!
//! Should descriptors run out anyway (a `--max-connections` above what
//! they allow, other processes' files), the listener closes the connection
//! that has waited longest for a request to accept the new one
//! (`listener::accept_each`), instead of refusing everyone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use log::warn;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The default most connections, where descriptors allow it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Descriptors a connection may hold at once: its socket and the file it
/// sends.
pub const FDS_PER_CONNECTION: usize = 2;

/// Sockets that may be closing at once outside the connection table (see
/// [`Closing`]).
pub const CLOSING_BUDGET: usize = 128;

/// Descriptors kept free for everything but client connections.
pub fn reserve(max_plans: usize) -> usize {
    64 + max_plans * 16 + CLOSING_BUDGET
}

/// Sockets being closed outside the connection table: a connection
/// closed to make room (its last word, up to a few seconds), a refused
/// one (its `ERROR BUSY` or `503`). They hold descriptors the table no
/// longer counts, so they are counted here, within [`CLOSING_BUDGET`]:
/// past it, a socket is closed at once, without its last word, and a
/// flood of refusals or evictions cannot run the server out of
/// descriptors.
#[derive(Debug, Default)]
pub struct Closing {
    in_flight: Arc<AtomicUsize>,
}

/// One socket's place in [`Closing`], given back when dropped (owned, so
/// that the task closing the socket can hold it).
#[derive(Debug)]
pub struct ClosingSlot(Arc<AtomicUsize>);

impl Closing {
    /// A place for one more closing socket, if the budget has one.
    pub fn enter(&self) -> Option<ClosingSlot> {
        let taken = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < CLOSING_BUDGET).then_some(n + 1)
            });
        taken.ok().map(|_| ClosingSlot(Arc::clone(&self.in_flight)))
    }
}

impl Drop for ClosingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Raises the soft descriptor limit to the hard one; returns the limit
/// now in force.
pub fn raise_nofile() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), hard) = (limit.current, limit.maximum) else {
        // Unlimited: nothing to raise.
        return u64::MAX;
    };
    let want = hard.unwrap_or(current.max(1 << 20));
    if want > current {
        let raised = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: hard,
            },
        );
        if let Err(e) = raised {
            warn!("cannot raise the file descriptor limit from {current} to {want}: {e}");
            return current;
        }
    }
    want
}

/// The default connection limit for `nofile` descriptors.
pub fn default_max_connections(nofile: u64, max_plans: usize) -> usize {
    DEFAULT_MAX_CONNECTIONS
        .min(affordable_connections(nofile, max_plans))
        .max(1)
}

/// The most connections `nofile` descriptors can serve at once.
pub fn affordable_connections(nofile: u64, max_plans: usize) -> usize {
    let usable = usize::try_from(nofile).unwrap_or(usize::MAX);
    usable.saturating_sub(reserve(max_plans)) / FDS_PER_CONNECTION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fits_the_descriptors() {
        assert_eq!(default_max_connections(1 << 20, 16), 10_000);
        assert_eq!(default_max_connections(20_000, 16), 9_776);
        assert_eq!(
            default_max_connections(1024, 16),
            (1024 - 64 - 256 - 128) / 2
        );
        assert_eq!(default_max_connections(10, 16), 1);
        assert!(raise_nofile() >= 1024);
    }

    #[test]
    fn closing_sockets_stay_within_their_budget() {
        let closing = Closing::default();
        let slots: Vec<_> = (0..CLOSING_BUDGET).map_while(|_| closing.enter()).collect();
        assert_eq!(slots.len(), CLOSING_BUDGET);
        assert!(closing.enter().is_none());
        drop(slots);
        assert!(closing.enter().is_some());
    }
}
