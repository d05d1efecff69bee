//! Orderly shutdown (Ctrl-C, SIGTERM): one signal that wakes every
//! sleeper at once, and a registry of open connections so that a read or
//! send blocked on one ends at once too.
//!
//! Nothing polls: a thread that waits (a retry pause, the scheduler, the
//! input watcher) waits on [`Shutdown::signal`] together with whatever it
//! waits for, or sleeps with [`Shutdown::sleep`], and wakes the moment
//! the signal fires; a thread blocked on a socket is woken by the socket
//! being shut down under it. So a Ctrl-C ends the client within
//! milliseconds in any state, also in the middle of a list fetch from a
//! server that stopped answering.

use std::collections::HashMap;
use std::net::{Shutdown as Direction, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// The shutdown signal and the registry of open connections.
pub struct Shutdown {
    requested: AtomicBool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
    /// Dropped on trigger: every receiver of [`Self::signal`] wakes.
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

/// Keeps a connection registered until dropped.
pub struct Registration {
    owner: Arc<Shutdown>,
    id: u64,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Shutdown {
            requested: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            sender: Mutex::new(Some(sender)),
            receiver,
        }
    }
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Raises the signal: wakes every waiter and cuts every registered
    /// connection.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for stream in open.values() {
            let _ = stream.shutdown(Direction::Both);
        }
    }

    /// A channel that never carries a message and disconnects when the
    /// signal fires: for `crossbeam_channel::select!` beside other waits.
    pub fn signal(&self) -> &Receiver<()> {
        &self.receiver
    }

    /// Sleeps for `wait`, or less if the signal fires; returns whether it
    /// fired.
    pub fn sleep(&self, wait: Duration) -> bool {
        let _ = self.receiver.recv_timeout(wait);
        self.is_requested()
    }

    /// Registers a connection; if shutdown is already under way it is cut now.
    pub fn register(self: &Arc<Self>, stream: &TcpStream) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, clone);
        }
        if self.is_requested() {
            let _ = stream.shutdown(Direction::Both);
        }
        Registration {
            owner: Arc::clone(self),
            id,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.owner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    #[test]
    fn the_signal_wakes_sleepers_and_cuts_connections() {
        let shutdown = Arc::new(Shutdown::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let sleeper = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::spawn(move || {
                let started = Instant::now();
                (shutdown.sleep(Duration::from_secs(60)), started.elapsed())
            })
        };
        let reader = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::spawn(move || {
                let _registered = shutdown.register(&client);
                let mut byte = [0u8; 1];
                client.read(&mut byte).map(|n| n == 0).unwrap_or(true)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        shutdown.trigger();
        let (fired, slept) = sleeper.join().unwrap();
        assert!(fired && slept < Duration::from_secs(5));
        assert!(reader.join().unwrap(), "the blocked read ended");
        assert!(
            shutdown.signal().recv().is_err(),
            "the channel is disconnected"
        );
        assert!(
            shutdown.sleep(Duration::from_secs(60)),
            "no wait after the signal"
        );
    }
}
