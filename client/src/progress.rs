//! What the user sees while files download: with a terminal, an indicatif
//! bar per active file (bytes, rate, ETA) and a total line; without one
//! (stderr redirected, or -q), plain log lines at start, every few seconds,
//! and at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastdl_support::human_bytes;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use log::info;

use crate::events::Events;

/// How often a file's progress is logged in plain mode.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A file in progress as `--json` reports it: id, name, size, and its
/// bytes present (shared with its [`FileProgress`]).
type LiveFile = (u64, String, u64, Arc<AtomicU64>);

/// What the user sees of the whole run: the bars (or plain lines), the
/// total, the files in progress, and the `--json` events.
pub struct Progress {
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    queued: AtomicU64,
    done: AtomicU64,
    bytes: AtomicU64,
    /// The files in progress, by id: their name, size and bytes present
    /// (for `--json`'s progress events).
    live: Mutex<Vec<LiveFile>>,
    next_id: AtomicU64,
    /// The `--json` event stream (off without it).
    pub events: Events,
}

impl Progress {
    /// Bars when `bars` is true, plain log lines otherwise; JSON events on
    /// stdout when `json` is.
    pub fn new(bars: bool, json: bool) -> Progress {
        let (multi, total) = if bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let total = multi.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template("total: {pos}/{len} files done  {msg}")
                    .expect("progress template is valid"),
            );
            // The draw target skips draws closer than 100 ms apart, and a
            // skipped one is not made up for: the line could show a stale
            // total (a file done, "1/2 files done") until the next change.
            // A steady tick redraws it four times a second.
            total.enable_steady_tick(Duration::from_millis(250));
            (Some(multi), Some(total))
        } else {
            (None, None)
        };
        Progress {
            multi,
            total,
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            events: Events::new(json),
        }
    }

    /// Each file in progress: its name, bytes present and size.
    pub fn live_files(&self) -> Vec<(String, u64, u64)> {
        self.live_lock()
            .iter()
            .map(|(_, name, size, received)| {
                (name.clone(), received.load(Ordering::Relaxed), *size)
            })
            .collect()
    }

    fn live_lock(&self) -> std::sync::MutexGuard<'_, Vec<LiveFile>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bars, when there are any (log lines are printed above them).
    pub fn bars(&self) -> Option<&MultiProgress> {
        self.multi.as_ref()
    }

    /// Sets the total line: `done` of `total` files (the scheduler calls
    /// this on every change, so a finished file shows at once).
    pub fn totals(&self, done: u64, total: u64) {
        self.queued.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
        if let Some(bar) = &self.total {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    fn add_bytes(&self, n: u64) {
        let bytes = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(total) = &self.total {
            total.set_message(format!("{} received", human_bytes(bytes)));
        }
    }

    /// A progress display for one file, of which `already` bytes are present.
    pub fn start_file(owner: &Arc<Progress>, name: &str, size: u64, already: u64) -> FileProgress {
        let bar = owner.multi.as_ref().map(|multi| {
            let bar = multi.insert_from_back(1, ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{wide_msg} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta:>4} [{bar:30}]",
                )
                .expect("progress template is valid")
                .progress_chars("=> "),
            );
            bar.set_message(name.to_owned());
            bar.set_position(already);
            bar.reset_eta();
            bar
        });
        if bar.is_none() {
            info!("{name}: downloading {}", human_bytes(size));
        }
        let id = owner.next_id.fetch_add(1, Ordering::Relaxed);
        let received = Arc::new(AtomicU64::new(already));
        owner
            .live_lock()
            .push((id, name.to_owned(), size, Arc::clone(&received)));
        FileProgress {
            owner: Arc::clone(owner),
            bar,
            id,
            name: name.to_owned(),
            size,
            received,
            fetched: AtomicU64::new(0),
            copies: AtomicU64::new(0),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }
}

/// Progress of one file.
pub struct FileProgress {
    owner: Arc<Progress>,
    bar: Option<ProgressBar>,
    /// Its entry among the owner's live files.
    id: u64,
    name: String,
    size: u64,
    received: Arc<AtomicU64>,
    fetched: AtomicU64,
    copies: AtomicU64,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl FileProgress {
    /// Sets the bytes already present (a resumed file's kept pieces, known
    /// once they were checked).
    pub fn already(&self, bytes: u64) {
        self.received.store(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Counts `n` more bytes received (shown at once; counted as fetched
    /// once their whole piece is in, [`Self::piece_read`]).
    pub fn add(&self, n: u64) {
        let received = self.received.fetch_add(n, Ordering::Relaxed) + n;
        self.owner.add_bytes(n);
        match &self.bar {
            Some(bar) => bar.set_position(received),
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    let rate = self.rate();
                    let eta = (self.size.saturating_sub(received)) as f64 / rate.max(1.0);
                    info!(
                        "{}: {:.0}% of {}, {}/s, ETA {:.0} s",
                        self.name,
                        received as f64 * 100.0 / self.size.max(1) as f64,
                        human_bytes(self.size),
                        human_bytes(rate as u64),
                        eta
                    );
                }
            }
        }
    }

    /// Takes back bytes that were counted but thrown away (a bad piece).
    pub fn take_back(&self, n: u64) {
        let received = self
            .received
            .fetch_sub(n, Ordering::Relaxed)
            .saturating_sub(n);
        if let Some(bar) = &self.bar {
            bar.set_position(received);
        }
    }

    /// Counts a piece of `n` bytes judged: landed, or failed its check
    /// (a copy that lost the race is not counted). What "fetched" reports:
    /// counted at the verdict, not as bytes come, so the figure does not
    /// depend on how far a copy still in flight had got when the file
    /// landed (the end game cuts it afterwards).
    pub fn fetched_piece(&self, n: u64) {
        self.fetched.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes back the `n` bytes of a copy that another copy beat (the end
    /// game; whole, or cut off): they count as copies, not as fetched.
    pub fn copy_not_used(&self, n: u64) {
        self.take_back(n);
        self.copies.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes received for pieces that had landed by another copy.
    pub fn copies(&self) -> u64 {
        self.copies.load(Ordering::Relaxed)
    }

    /// Average rate since the start, in bytes per second.
    pub fn rate(&self) -> f64 {
        self.fetched() as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    /// Bytes of pieces fetched in this attempt that landed or failed their
    /// check (copies that lost the race, and pieces given back, not).
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

impl Drop for FileProgress {
    fn drop(&mut self) {
        self.owner.live_lock().retain(|(id, ..)| *id != self.id);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            if let Some(multi) = &self.owner.multi {
                multi.remove(bar);
            }
        }
    }
}
