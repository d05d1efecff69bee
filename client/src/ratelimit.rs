//! `--limit-rate`: one token bucket shared by every connection of the
//! client, so the limit holds for the whole process.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimit {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A limit of `rate` bytes per second.
    pub fn new(rate: u64) -> RateLimit {
        let rate = rate as f64;
        let burst = (rate / 10.0).clamp(1024.0, 4.0 * 1024.0 * 1024.0);
        RateLimit {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Largest slice worth asking for at once.
    pub fn slice(&self) -> usize {
        self.burst as usize
    }

    /// Blocks until `bytes` may be read.
    pub fn acquire(&self, bytes: usize) {
        let bytes = (bytes as f64).min(self.burst);
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let (tokens, last) = &mut *state;
                *tokens =
                    (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
                *last = now;
                if *tokens >= bytes {
                    *tokens -= bytes;
                    return;
                }
                Duration::from_secs_f64((bytes - *tokens) / self.rate)
            };
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_over_time() {
        let limit = RateLimit::new(200_000);
        let start = Instant::now();
        // One burst is free; the rest must take about (total - burst) / rate.
        let total = 200_000 + limit.slice();
        let mut done = 0;
        while done < total {
            let n = limit.slice().min(total - done);
            limit.acquire(n);
            done += n;
        }
        let secs = start.elapsed().as_secs_f64();
        assert!(secs >= 0.9, "too fast: {secs}");
    }
}
