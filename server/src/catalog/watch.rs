//! Keeps the catalog current: file-system events (notify) trigger a rescan
//! shortly after they settle, and a periodic rescan catches what events
//! miss (network file systems, overflowed event queues).
//!
//! The watch never follows a link out of the folder (a link to the folder
//! holding the server's log would otherwise turn every log line into an
//! event, a rescan and maybe another log line), and events on the
//! server's own files (its list file and log, when they sit inside the
//! folder) are ignored for the same reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use notify::{Config, RecommendedWatcher, RecursiveMode, Watcher};

use super::Catalog;

/// How long events must be quiet before a rescan (editors and copies
/// produce bursts).
const SETTLE: Duration = Duration::from_millis(150);

/// Starts the notify watcher, forwarding events into `wake`. The watcher
/// must be kept alive by the caller. A failure is logged and the periodic
/// rescan carries on alone.
pub fn watch(catalog: &Catalog, wake: Sender<()>) -> Option<RecommendedWatcher> {
    let own: Vec<PathBuf> = catalog.excluded().to_vec();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads (ours when hashing and serving, or anyone's) change nothing.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let only_ours = !event.paths.is_empty() && event.paths.iter().all(|p| own.contains(p));
        if !only_ours {
            let _ = wake.try_send(());
        }
    };
    let config = Config::default().with_follow_symlinks(false);
    let mut watcher = match RecommendedWatcher::new(handler, config) {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot watch the resources folder ({e}); relying on the periodic rescan");
            return None;
        }
    };
    if let Err(e) = watcher.watch(catalog.root(), RecursiveMode::Recursive) {
        warn!(
            "cannot watch {} ({e}); relying on the periodic rescan",
            catalog.root().display()
        );
        return None;
    }
    Some(watcher)
}

/// Rescans on every settled burst of events and every `period`, for the
/// life of the process (the thread ends with it). Events that never settle
/// (a file written to without pause: a copy, a log) do not hold off the
/// rescan past `period` after the last one, so other changes are still
/// published (see [`settled`]).
pub fn run_rescans(catalog: Arc<Catalog>, wake: Receiver<()>, period: Duration) {
    let mut last = Instant::now();
    loop {
        if wake.recv_timeout(period).is_ok() {
            let mut now = Instant::now();
            while !settled(last, now, period) && wake.recv_timeout(SETTLE).is_ok() {
                now = Instant::now();
            }
            debug!("files changed in {}; rescanning", catalog.root().display());
        }
        last = Instant::now();
        if let Err(e) = catalog.rescan() {
            warn!("rescan failed: {e:#}");
        }
    }
}

/// Whether a burst of events that is still going on has waited long
/// enough: `period` since the last rescan (`last`), at `now`.
fn settled(last: Instant, now: Instant, period: Duration) -> bool {
    now.saturating_duration_since(last) >= period
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_events_wait_at_most_a_period_since_the_last_rescan() {
        let last = Instant::now();
        let period = Duration::from_secs(5);
        assert!(!settled(last, last + Duration::from_secs(1), period));
        assert!(settled(last, last + period, period));
    }
}
