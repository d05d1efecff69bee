//! Orderly shutdown: one flag that every loop checks, and a registry of
//! open connections so that a blocked read or send ends at once when the
//! flag is raised.

use std::collections::HashMap;
use std::net::{Shutdown as Direction, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
}

/// Keeps a connection registered until dropped.
pub struct Registration<'a> {
    owner: &'a Shutdown,
    id: u64,
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Raises the flag and cuts every registered connection.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for stream in open.values() {
            let _ = stream.shutdown(Direction::Both);
        }
    }

    /// Registers a connection; if shutdown is already under way it is cut now.
    pub fn register(&self, stream: &TcpStream) -> Registration<'_> {
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
        Registration { owner: self, id }
    }

    /// Number of connections still registered.
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.owner
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
