//! Reusing connections across files: a finished download hands its
//! connections back here and the next one picks them up, so a queue of
//! small files costs no handshake storm. `--once` also opens a download's
//! connections here ahead of need, while the list is fetched.

use std::net::SocketAddr;
use std::sync::Mutex;

use crate::connection::{Connection, RequestError};

pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(addr: SocketAddr, max_idle: usize) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An idle connection, or a new one.
    pub fn get(&self) -> Result<Connection, RequestError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => Connection::open(self.addr),
        }
    }

    /// Opens new connections, all at once, until `want` are idle, each
    /// greeted before it joins the pool. Used by `--once` at startup, while
    /// the list is fetched, so that the first download finds its
    /// connections ready. Failures are left to the workers, which connect
    /// (and report) themselves.
    pub fn warm(&self, want: usize) {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
        let missing = want.min(self.max_idle).saturating_sub(idle);
        std::thread::scope(|scope| {
            for _ in 0..missing {
                scope.spawn(|| {
                    if let Ok(mut conn) = Connection::open(self.addr) {
                        if conn.greet().is_ok() {
                            self.put(conn);
                        }
                    }
                });
            }
        });
    }

    /// Returns a healthy connection for reuse. One more than the pool keeps
    /// is simply closed (the server takes the end of the stream, or a reset,
    /// as a goodbye): saying QUIT and waiting for BYE would cost the caller
    /// a round trip.
    pub fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Drops every idle connection (for example after the server restarted).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
