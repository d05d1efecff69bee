//! `--limit-rate`: one rate limiter (`governor`'s GCRA, a token bucket)
//! shared by every connection of the client, so the limit holds for the
//! whole process. One token is one byte; the burst is a tenth of a second
//! of the rate (at least 1 KiB, at most 4 MiB), so that a connection never
//! sleeps long and the rate stays smooth.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// The client's rate limit.
pub struct RateLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    clock: DefaultClock,
    burst: u32,
}

impl RateLimit {
    /// A limit of `rate` bytes per second (capped at 4 GiB/s, which is no
    /// limit on any link this runs on).
    pub fn new(rate: u64) -> RateLimit {
        let rate = u32::try_from(rate).unwrap_or(u32::MAX).max(1);
        let burst = (rate / 10).clamp(1024, 4 << 20).min(rate.max(1024));
        let quota = Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let clock = DefaultClock::default();
        RateLimit {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            burst,
        }
    }

    /// Largest slice worth asking for at once.
    pub fn slice(&self) -> usize {
        self.burst as usize
    }

    /// Blocks until `bytes` (at most [`Self::slice`]) may be read.
    pub fn acquire(&self, bytes: usize) {
        let bytes = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.burst);
        let n = NonZeroU32::new(bytes).unwrap_or(NonZeroU32::MIN);
        loop {
            match self.limiter.check_n(n) {
                Ok(Ok(())) | Err(_) => return,
                Ok(Err(not_until)) => {
                    std::thread::sleep(not_until.wait_time_from(self.clock.now()));
                }
            }
        }
    }
}

/// A reader held to a rate limit (none: as it is), for bytes read outside
/// the engine's connections: a URL's probe, which brings the first piece.
pub struct Limited<'a, R> {
    inner: R,
    limit: Option<&'a RateLimit>,
}

impl<'a, R> Limited<'a, R> {
    pub fn new(inner: R, limit: Option<&'a RateLimit>) -> Limited<'a, R> {
        Limited { inner, limit }
    }
}

impl<R: std::io::Read> std::io::Read for Limited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(limit) = self.limit else {
            return self.inner.read(buf);
        };
        let want = buf.len().min(limit.slice());
        limit.acquire(want);
        self.inner.read(&mut buf[..want])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
        assert!((0.9..3.0).contains(&secs), "{secs} s");
    }
}
