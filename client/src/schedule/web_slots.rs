//! How many URLs may be between their probe and their outcome at once.
//!
//! A URL holds memory from its probe to its outcome: the probe reads the
//! file's first piece (up to [`PIECE_SIZE`], all of a small file) and the
//! job carries it until the file has landed. The first rule was a count,
//! two per `--jobs` (32 by default), which bounded that memory at 32 MiB
//! but let only 32 small files be on their way at once: each waits for
//! its batch to land (`disk::lander`), and with 1000 URLs of 100 KiB the
//! probes stood idle (0.27-0.30 s against 0.25-0.27 s with 128 slots, on
//! tmpfs). So the memory is counted as it is: a probe out reserves a
//! whole piece, an answer keeps what it really holds, and the count of
//! URLs is a backstop, four per `--jobs` (64 by default: as fast as 128
//! on that run, 0.20 s, with a peak RSS of 22-24 MiB instead of 29-30).

use fastdl_protocol::PIECE_SIZE;

/// The URLs between probe and outcome, and the memory they may hold.
#[derive(Debug)]
pub struct WebSlots {
    /// Most URLs between their probe and their outcome.
    max_lines: usize,
    /// Most bytes their first pieces may hold.
    budget: u64,
    /// URLs between their probe and their outcome now.
    lines: usize,
    /// What they may hold now: a whole piece per probe out, the buffer
    /// of each answer in hand.
    bytes: u64,
}

impl WebSlots {
    pub fn new(max_lines: usize, budget: u64) -> WebSlots {
        WebSlots {
            max_lines,
            budget,
            lines: 0,
            bytes: 0,
        }
    }

    /// Whether another probe may go out now.
    pub fn can_probe(&self) -> bool {
        self.lines < self.max_lines && self.bytes + PIECE_SIZE <= self.budget.max(PIECE_SIZE)
    }

    /// A probe went out: it may bring up to a piece.
    pub fn probing(&mut self) {
        self.lines += 1;
        self.bytes += PIECE_SIZE;
    }

    /// A probe came back holding `head` bytes.
    pub fn probed(&mut self, head: u64) {
        self.bytes = self.bytes.saturating_sub(PIECE_SIZE) + head.min(PIECE_SIZE);
    }

    /// A probe failed: its slot is free.
    pub fn probe_failed(&mut self) {
        self.lines = self.lines.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(PIECE_SIZE);
    }

    /// A URL whose probe brought `head` bytes is over (its download ended,
    /// or it waits for another line landing under its name).
    pub fn done(&mut self, head: u64) {
        self.lines = self.lines.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(head.min(PIECE_SIZE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_answers_leave_room_for_more_probes() {
        let mut slots = WebSlots::new(100, 4 * PIECE_SIZE);
        for _ in 0..4 {
            assert!(slots.can_probe());
            slots.probing();
        }
        // Four probes out could each bring a whole piece.
        assert!(!slots.can_probe());
        // Each brought a small file: room for more.
        for _ in 0..4 {
            slots.probed(100 * 1024);
        }
        assert!(slots.can_probe());
        let mut out = 4;
        while slots.can_probe() {
            slots.probing();
            slots.probed(100 * 1024);
            out += 1;
        }
        // Answers of 100 KiB in 4 pieces, one piece kept for the next probe.
        let fits = (3 * PIECE_SIZE / (100 * 1024) + 1) as usize;
        assert_eq!(out, fits);
        slots.done(100 * 1024);
        assert!(slots.can_probe());
    }

    #[test]
    fn the_count_is_a_backstop_and_failures_free_their_slot() {
        let mut slots = WebSlots::new(2, 100 * PIECE_SIZE);
        slots.probing();
        slots.probing();
        assert!(!slots.can_probe());
        slots.probe_failed();
        assert!(slots.can_probe());
        slots.probed(0);
        slots.done(0);
        slots.probing();
        slots.probed(PIECE_SIZE);
        slots.done(PIECE_SIZE);
        assert_eq!((slots.lines, slots.bytes), (0, 0));
        // A budget under one piece still lets one probe out at a time.
        let mut tiny = WebSlots::new(10, 1);
        assert!(tiny.can_probe());
        tiny.probing();
        assert!(!tiny.can_probe());
    }
}
