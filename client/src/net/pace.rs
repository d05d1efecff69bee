//! The progress deadline on everything read from a server
//! (`--speed-limit`, `--speed-time`, in the spirit of curl's options of the
//! same names and aria2's `--lowest-speed-limit`).
//!
//! A server that trickles a reply (one byte every few seconds) or stalls in
//! the middle of one would otherwise hold a connection for as long as it
//! likes: a read timeout alone restarts with every byte. So every
//! connection counts the bytes it received and the time it spent *waiting
//! in reads* for them; once that waiting adds up to `--speed-time` with
//! fewer than `--speed-limit` bytes per second received over it, the read
//! fails as too slow. Time spent elsewhere (our own `--limit-rate`,
//! hashing, writing to disk) is not the server's fault and does not count,
//! so a transfer that is slow because the client holds it back is never
//! cut. A read that waits for the whole window without a byte fails too
//! (the socket's read timeout is the window).
//!
//! Defaults: 1 KiB/s over 30 s. A stalled or trickling server costs a
//! download attempt about 30 s; a healthy path of even 100 KB/s is 100
//! times above the floor.

use std::io::{self, Read};
use std::time::{Duration, Instant};

pub use fastdl_support::SpeedFloor;

/// One window's bookkeeping, and the verdict on it: a pure decision with
/// the time passed in, so that it is testable without a socket.
#[derive(Debug, Clone, Default)]
pub struct Window {
    waited: Duration,
    got: u64,
}

impl Window {
    /// Records one read that brought `bytes` after waiting `waited`.
    /// Returns `Err` with what was seen when a full window brought less
    /// than the floor; a window that passes starts a new one.
    pub fn record(
        &mut self,
        floor: &SpeedFloor,
        bytes: u64,
        waited: Duration,
    ) -> Result<(), TooSlow> {
        self.got += bytes;
        self.waited += waited;
        if self.waited < floor.window {
            return Ok(());
        }
        let verdict = if self.got < floor.min_bytes_over(self.waited) {
            Err(TooSlow {
                got: self.got,
                waited: self.waited,
                floor: *floor,
                stalled: false,
            })
        } else {
            Ok(())
        };
        *self = Window::default();
        verdict
    }
}

/// A server delivered less than the floor over a whole window.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TooSlow {
    pub got: u64,
    pub waited: Duration,
    pub floor: SpeedFloor,
    /// Whether the last read waited a whole window for nothing (a stall,
    /// whatever came before it).
    pub stalled: bool,
}

impl TooSlow {
    fn describe(&self) -> String {
        if self.stalled {
            format!(
                "server sent nothing for {} s (--speed-time)",
                self.floor.window.as_secs()
            )
        } else {
            format!(
                "server too slow: {} bytes in {:.0} s of waiting (--speed-limit {} B/s over --speed-time {} s)",
                self.got,
                self.waited.as_secs_f64(),
                self.floor.min_rate,
                self.floor.window.as_secs()
            )
        }
    }
}

/// A reader that enforces a [`SpeedFloor`] on `inner`. The caller sets
/// the socket's read timeout to the window, so a read that brings nothing
/// for a whole window ends too.
pub struct Paced<R> {
    inner: R,
    floor: SpeedFloor,
    window: Window,
}

impl<R> Paced<R> {
    pub fn new(inner: R, floor: SpeedFloor) -> Paced<R> {
        Paced {
            inner,
            floor,
            window: Window::default(),
        }
    }

    /// The stream underneath, for writing (writes are not paced here:
    /// the socket's write timeout bounds them).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Whether an I/O error is a [`TooSlow`] verdict or a read that waited a
/// whole window in vain: the server is there but does not deliver.
pub fn is_too_slow(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || e.kind() == io::ErrorKind::WouldBlock
        || e.get_ref().is_some_and(|inner| inner.is::<TooSlow>())
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        let result = self.inner.read(buf);
        let waited = started.elapsed();
        let got = match &result {
            Ok(n) => *n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let verdict = TooSlow {
                    got: self.window.got,
                    waited: self.window.waited + waited,
                    floor: self.floor,
                    stalled: true,
                };
                return Err(io::Error::new(io::ErrorKind::TimedOut, verdict));
            }
            Err(_) => 0,
        };
        if let Err(slow) = self.window.record(&self.floor, got, waited) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, slow));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: SpeedFloor = SpeedFloor {
        min_rate: 1000,
        window: Duration::from_secs(10),
    };

    #[test]
    fn a_trickle_fails_once_the_waiting_fills_a_window() {
        let mut w = Window::default();
        // One byte every 2 s: fine until 10 s of waiting are reached.
        for _ in 0..4 {
            assert!(w.record(&FLOOR, 1, Duration::from_secs(2)).is_ok());
        }
        let slow = w.record(&FLOOR, 1, Duration::from_secs(2)).unwrap_err();
        assert_eq!(slow.got, 5);
        assert_eq!(slow.waited, Duration::from_secs(10));
    }

    #[test]
    fn time_not_spent_waiting_does_not_count() {
        // --limit-rate: each read finds its bytes already there (1 ms of
        // waiting), however long the client paused in between.
        let mut w = Window::default();
        for _ in 0..100_000 {
            assert!(w.record(&FLOOR, 500, Duration::from_millis(1)).is_ok());
        }
    }

    #[test]
    fn a_window_stretched_by_a_long_wait_is_held_to_the_rate_over_all_of_it() {
        // 10 s of bytes (10,000) after 19 s of waiting: about half the
        // floor, which one window's worth of bytes used to pass.
        let mut w = Window::default();
        assert!(w.record(&FLOOR, 0, Duration::from_secs(9)).is_ok());
        assert!(w.record(&FLOOR, 10_000, Duration::from_secs(10)).is_err());
        let mut w = Window::default();
        assert!(w.record(&FLOOR, 0, Duration::from_secs(9)).is_ok());
        assert!(w.record(&FLOOR, 19_000, Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn a_good_window_starts_a_new_one() {
        let mut w = Window::default();
        assert!(w.record(&FLOOR, 10_000, Duration::from_secs(10)).is_ok());
        // The next window is judged on its own bytes.
        assert!(w.record(&FLOOR, 0, Duration::from_secs(9)).is_ok());
        assert!(w.record(&FLOOR, 0, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_read_that_waits_a_whole_window_is_too_slow() {
        struct Stalled;
        impl Read for Stalled {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        let mut paced = Paced::new(Stalled, FLOOR);
        let e = paced.read(&mut [0u8; 8]).unwrap_err();
        assert!(is_too_slow(&e), "{e}");
        assert!(e.to_string().contains("sent nothing for 10 s"), "{e}");
    }
}
