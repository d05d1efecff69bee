//! How long to wait before trying again: one policy for every retry of
//! the client (a new connection after one broke, a file after a failed
//! attempt, the first list while no server answers), exponential with
//! jitter (`backon`), so that many clients that lost the same server do
//! not all come back in the same instant.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An exponential backoff: `first`, then doubling, capped at `max`, each
/// wait jittered by up to its own length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Between a broken connection and the next attempt to connect.
    pub const RECONNECT: Backoff = Backoff {
        first: Duration::from_millis(250),
        max: Duration::from_secs(5),
    };

    /// The wait before try number `n` (1: the first retry).
    pub fn wait(&self, n: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(n.saturating_sub(1) as usize)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_and_stay_under_the_cap() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        for n in 1..=10u32 {
            let base = Duration::from_secs(1 << (n - 1).min(6)).min(b.max);
            let w = b.wait(n);
            assert!(w >= base && w <= (base * 2).min(b.max), "try {n}: {w:?}");
        }
        assert_eq!(b.wait(100), b.max);
    }
}
