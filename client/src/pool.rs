//! Reusing connections across files: a finished download hands its
//! connections back here and the next one picks them up, so a queue of
//! small files costs no handshake storm. `--once` also opens a download's
//! connections here ahead of need, while the list is fetched, each with its
//! share of the first file's first pieces already asked for (a download
//! takes those over with [`Pool::take_primed`]; anyone else gets the
//! connection with those answers read and dropped).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use crate::connection::{Ahead, Connection, RequestError};
use crate::transport::Endpoint;

/// The idle connections to one server.
pub struct Pool {
    /// How connections to this server are made.
    endpoint: Arc<Endpoint>,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    /// Why no connection to this server may be used at all, once that is
    /// known (its identity changed, it refused our token, it does not
    /// speak what we speak): the run stops with this.
    fatal: OnceLock<String>,
}

impl Pool {
    pub fn new(endpoint: Endpoint, max_idle: usize) -> Pool {
        Pool {
            endpoint: Arc::new(endpoint),
            idle: Mutex::new(Vec::new()),
            max_idle,
            fatal: OnceLock::new(),
        }
    }

    /// How connections to this server are made (a plan's streams too).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// Notes an error met with this server: one no retry can help makes
    /// the server unusable for the rest of the run (see [`Self::fatal`]).
    pub fn note(&self, e: &RequestError) {
        if e.is_fatal() {
            let _ = self
                .fatal
                .set(format!("server {}: {e}", self.endpoint.shown));
        }
    }

    /// Why this server cannot be used at all, if that is known.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    fn open(&self) -> Result<Connection, RequestError> {
        let opened = Connection::open(&self.endpoint);
        if let Err(e) = &opened {
            self.note(e);
        }
        opened
    }

    /// An idle connection with nothing left unread, or a new one.
    pub fn get(&self) -> Result<Connection, RequestError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut conn) = idle else {
                return self.open();
            };
            if conn.settle().is_ok() {
                return Ok(conn);
            }
        }
    }

    /// The idle connections whose requests sent ahead are all for `name`,
    /// with those requests still unread: the download of `name` takes
    /// their answers over.
    pub fn take_primed(&self, name: &str) -> Vec<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let (primed, rest) = idle.drain(..).partition(|conn: &Connection| {
            !conn.ahead().is_empty() && conn.ahead().iter().all(|a| a.name() == name)
        });
        *idle = rest;
        primed
    }

    /// Opens new connections, all at once, until `want` are idle, each
    /// greeted before it joins the pool; the `i`-th new one first sends
    /// `ahead(i)`. Used by `--once` at startup, while the list is fetched,
    /// so that the first download finds its connections ready and its
    /// first pieces on their way. Failures are left to the workers, which
    /// connect (and report) themselves.
    pub fn warm(&self, want: usize, ahead: impl Fn(usize) -> Vec<Ahead> + Sync) {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
        let missing = want.min(self.max_idle).saturating_sub(idle);
        let ahead = &ahead;
        std::thread::scope(|scope| {
            for i in 0..missing {
                scope.spawn(move || {
                    let Ok(mut conn) = self.open() else {
                        return;
                    };
                    let sent = ahead(i).into_iter().try_for_each(|a| conn.send_ahead(a));
                    match sent.and_then(|()| conn.greet()) {
                        Ok(()) => self.put(conn),
                        Err(e) => self.note(&e),
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
