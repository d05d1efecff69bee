//! Keeps the catalog current: file-system events (notify) trigger a rescan
//! shortly after they settle, and a periodic rescan catches what events
//! miss (network file systems, overflowed event queues).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use notify::{RecursiveMode, Watcher};

use crate::catalog::Catalog;
use fastdl_support::shutdown::Shutdown;

/// How long events must be quiet before a rescan (editors and copies
/// produce bursts).
const SETTLE: Duration = Duration::from_millis(150);

/// Starts the notify watcher, forwarding events into `wake`. The watcher
/// must be kept alive by the caller. A failure is logged and the periodic
/// rescan carries on alone.
pub fn watch(catalog: &Catalog, wake: Sender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // Reads (ours when hashing and serving, or anyone's) change nothing.
        if let Ok(event) = event {
            if !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = wake.try_send(());
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
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

/// Rescans on every settled burst of events and every `period`, until shutdown.
pub fn run_rescans(
    catalog: Arc<Catalog>,
    wake: Receiver<()>,
    period: Duration,
    shutdown: Arc<Shutdown>,
) {
    let mut next_periodic = Instant::now() + period;
    let tick = Duration::from_millis(200);
    while !shutdown.is_requested() {
        let wait = next_periodic
            .saturating_duration_since(Instant::now())
            .min(tick);
        let woke = wake.recv_timeout(wait).is_ok();
        if !woke && Instant::now() < next_periodic {
            continue;
        }
        if woke {
            // Let the burst settle.
            while wake.recv_timeout(SETTLE).is_ok() {}
        }
        next_periodic = Instant::now() + period;
        debug!("rescanning {}", catalog.root().display());
        if let Err(e) = catalog.rescan() {
            warn!("rescan failed: {e:#}");
        }
    }
}
