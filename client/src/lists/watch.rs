//! Hearing of list changes when they happen. A name appended before its
//! file was published used to wait for the next list poll (measured:
//! 5,020 ms with `--poll 5`, against 26-29 ms for a name already listed).
//! Now one thread per server keeps a `WATCH` connection open (see
//! PROTOCOL.md, "Watching the list") and tells the scheduler as soon as the
//! server's list generation changes; the scheduler then fetches the lists
//! if any name waits. The poll stays as the fallback: for servers that do
//! not know `WATCH` (the watcher stops at their `WRONG_INPUT`), and while a
//! watch connection is down (it is opened again with backoff).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use log::debug;

use crate::net::connection::RequestError;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::sources::fastdl::Server;

/// Waits between watch connections: from the first failure to the longest.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// Starts a watcher per server; each sends its server's index on `changed`
/// whenever that server's list changes, until shutdown.
pub fn start(servers: &[Arc<Server>], changed: &Sender<usize>, shutdown: &Arc<Shutdown>) {
    for (index, server) in servers.iter().enumerate() {
        let (server, changed, shutdown) =
            (Arc::clone(server), changed.clone(), Arc::clone(shutdown));
        let spawned = std::thread::Builder::new()
            .name(format!("watch {index}"))
            .spawn(move || watch(&server, index, &changed, &shutdown));
        if let Err(e) = spawned {
            log::warn!("cannot start a thread to watch server {index}'s list: {e}; polling it");
        }
    }
}

fn watch(server: &Server, index: usize, changed: &Sender<usize>, shutdown: &Shutdown) {
    // The generation last heard, kept across connections.
    let mut last: Option<u64> = None;
    let backoff = Backoff {
        first: FIRST_WAIT,
        max: LONGEST_WAIT,
    };
    let mut failures = 0u32;
    while !shutdown.is_requested() {
        let mut heard = false;
        let ended = server.watch(|generation| {
            // The first number of each connection counts as a change too:
            // the list may have changed between the lists fetched at start
            // (or while the watch was down) and this watch; the scheduler
            // fetches the lists only if some name waits.
            if !heard || last.is_some_and(|l| l != generation) {
                let _ = changed.send(index);
            }
            heard = true;
            last = Some(generation);
        });
        match &ended {
            RequestError::WrongInput(why) => {
                debug!(
                    "server {}: no WATCH ({why}); its list is polled",
                    server.addr()
                );
                return;
            }
            e if e.is_fatal() => return,
            e => debug!("server {}: list watch ended: {e}", server.addr()),
        }
        // A watch that worked starts the waits over, unless the server
        // closed it to make room: a full server is not pressed again soon
        // (the watcher would push out another idle connection).
        let evicted = matches!(
            &ended,
            RequestError::Server {
                code: fastdl_protocol::ErrorCode::Timeout,
                ..
            }
        );
        failures = if heard && !evicted { 1 } else { failures + 1 };
        let wait = backoff.wait(failures);
        let _ = shutdown.signal().recv_timeout(wait);
    }
}
