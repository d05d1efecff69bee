//! The progress deadline on everything the server sends (`--speed-limit`
//! over `--speed-time`): a peer that takes fewer than the floor's bytes
//! per second over a whole window is cut off.
//!
//! Progress is what the peer took, not what the server handed to its own
//! socket: a send fills the socket's buffer at once (megabytes on a fast
//! path), so counting sends would let a reader at 1 byte/s hold a
//! connection for minutes before a send blocks for long enough to time
//! out, and each byte it read would restart the timeout. So a window
//! counts the bytes that *left* the send queue: written, minus what the
//! queue still holds (`SIOCOUTQ`: sent but not acknowledged, plus not yet
//! sent). A peer that stops reading fills its receive window, stops
//! acknowledging, and makes no progress from then on.
//!
//! Defaults: 1 KiB/s over 10 s. A reader at 1 byte/s is cut within one
//! window of its buffers filling; any real client, even one holding
//! itself to `--limit-rate 4K`, takes far more than the floor whenever
//! it has data to take, because the server only sends what it asked for.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

pub use fastdl_support::SpeedFloor;

/// A peer took less than the floor over a whole window.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("peer took {taken} bytes in {} s (floor {} B/s over {} s)", window.as_secs(), floor.min_rate, floor.window.as_secs())]
pub struct TooSlow {
    pub taken: u64,
    pub window: Duration,
    pub floor: SpeedFloor,
}

/// The bookkeeping of one send (a reply, a range, a plan stream): a pure
/// decision with the time and the queue length passed in.
#[derive(Debug, Clone)]
pub struct SendPace {
    floor: SpeedFloor,
    window_start: Instant,
    /// Bytes written since the start, and the queue length then.
    written: u64,
    queued_at_start: u64,
    /// Bytes out of the queue at the start of the current window.
    left_at_window_start: u64,
}

impl SendPace {
    /// A send starting at `now` on a socket whose queue holds `queued`.
    pub fn start(floor: SpeedFloor, now: Instant, queued: u64) -> SendPace {
        SendPace {
            floor,
            window_start: now,
            written: 0,
            queued_at_start: queued,
            left_at_window_start: 0,
        }
    }

    /// Records `n` bytes handed to the socket.
    pub fn wrote(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// When the current window must be judged.
    pub fn deadline(&self) -> Instant {
        self.window_start + self.floor.window
    }

    /// Judges the window if it is over at `now`, the send queue holding
    /// `queued` bytes; a window that passes starts the next one.
    pub fn judge(&mut self, now: Instant, queued: u64) -> Result<(), TooSlow> {
        if now < self.deadline() {
            return Ok(());
        }
        let left = (self.queued_at_start + self.written).saturating_sub(queued);
        let taken = left.saturating_sub(self.left_at_window_start);
        if taken
            < self
                .floor
                .min_bytes_over(now.saturating_duration_since(self.window_start))
        {
            return Err(TooSlow {
                taken,
                window: now.saturating_duration_since(self.window_start),
                floor: self.floor,
            });
        }
        self.window_start = now;
        self.left_at_window_start = left;
        Ok(())
    }
}

/// Bytes in a TCP socket's send queue: not yet sent, or sent and not yet
/// acknowledged. 0 if it cannot be told (then only sends count).
pub fn queued(socket: impl AsFd) -> u64 {
    let mut value: libc::c_int = 0;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket.as_fd());
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at
    // `value` for the length of the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut value) };
    if rc == 0 {
        value.max(0) as u64
    } else {
        0
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
    fn a_reader_that_stopped_is_cut_after_one_window() {
        let t0 = Instant::now();
        let mut pace = SendPace::start(FLOOR, t0, 0);
        // 4 MB fill the buffers at once; the peer took 1 MB and stopped.
        pace.wrote(4_000_000);
        assert!(pace.judge(t0 + Duration::from_secs(5), 3_000_000).is_ok());
        assert!(pace.judge(t0 + Duration::from_secs(10), 3_000_000).is_ok());
        // The next window: nothing more left the queue.
        let slow = pace
            .judge(t0 + Duration::from_secs(20), 3_000_000)
            .unwrap_err();
        assert_eq!(slow.taken, 0);
    }

    #[test]
    fn a_steady_reader_is_never_cut() {
        let t0 = Instant::now();
        let mut pace = SendPace::start(FLOOR, t0, 100);
        let mut queue = 100u64;
        for second in 1..=100u64 {
            pace.wrote(5_000);
            queue = queue + 5_000 - 2_000; // takes 2 KB/s, the queue grows
            assert!(pace
                .judge(t0 + Duration::from_secs(second), queue.min(1 << 20))
                .is_ok());
        }
    }

    #[test]
    fn bytes_queued_before_the_send_count_when_they_leave() {
        let t0 = Instant::now();
        let mut pace = SendPace::start(FLOOR, t0, 50_000);
        assert!(pace.judge(t0 + FLOOR.window, 30_000).is_ok());
        assert!(pace.judge(t0 + FLOOR.window * 2, 30_000).is_err());
    }

    #[test]
    fn the_queue_of_a_real_socket_can_be_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(queued(&stream), 0);
    }
}
