//! A fastdl server as a [`Source`]: its connections pipeline ranged reads
//! and digest lists (`GET`, `PIECES`), and it can push a whole file over
//! its N-stream plan (`--plan`). It also fetches the server's list for the
//! scheduler, over a connection of its own kept between fetches.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use fastdl_protocol::{Digest, Listing};

use super::fastdl_plan;
use crate::download::outcome::Job;
use crate::download::source::{Channel, Source, SourceError, Trouble};
use crate::net::connection::{Connection, RequestError};
use crate::net::pace::SpeedFloor;
use crate::net::transport::Endpoint;

/// Ranged reads one connection keeps in flight at most (the engine asks
/// for fewer on a short path).
const MAX_DEPTH: usize = 12;

/// How long a watching connection waits for the server's next `LISTED`
/// (it sends one at least every 15 s) before it counts as lost.
pub const WATCH_SILENCE: Duration = Duration::from_secs(40);

/// One fastdl server.
pub struct Server {
    endpoint: Endpoint,
    /// Why no connection to this server may be used at all, once that is
    /// known (its identity changed, it refused our token, it does not
    /// speak what we speak): the run stops with this.
    fatal: OnceLock<String>,
    /// The connection list fetches reuse.
    lists: Mutex<Option<Connection>>,
}

impl Server {
    pub fn new(endpoint: Endpoint) -> Server {
        Server {
            endpoint,
            fatal: OnceLock::new(),
            lists: Mutex::new(None),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// Notes an error met with this server (see [`Source::note`]).
    pub fn note_request(&self, e: &RequestError) {
        if e.is_fatal() {
            let text = e.to_string();
            let why = if text.contains(&self.endpoint.shown) {
                text
            } else {
                format!("server {}: {text}", self.endpoint.shown)
            };
            let _ = self.fatal.set(why);
        }
    }

    /// Watches the server's list (`WATCH`) until the connection ends,
    /// calling `listed` with every generation the server sends (at once,
    /// at every change, and as a heartbeat). Reads wait up to
    /// [`WATCH_SILENCE`] for each; the error says why the watch ended.
    pub fn watch(&self, mut listed: impl FnMut(u64)) -> RequestError {
        let endpoint = Endpoint {
            floor: SpeedFloor {
                min_rate: 0,
                window: WATCH_SILENCE,
            },
            ..self.endpoint.clone()
        };
        let mut conn = match Connection::open(&endpoint).and_then(|mut c| c.watch().map(|()| c)) {
            Ok(conn) => conn,
            Err(e) => {
                self.note_request(&e);
                return e;
            }
        };
        loop {
            match conn.listed() {
                Ok(generation) => listed(generation),
                Err(e) => {
                    self.note_request(&e);
                    return e;
                }
            }
        }
    }

    /// Fetches the server's list, over the kept connection if it still
    /// works, else a new one (every connection is registered with the
    /// shutdown: Ctrl-C ends a fetch from a server that stopped answering
    /// at once).
    pub fn list(&self) -> Result<Listing, RequestError> {
        let kept = self.lists.lock().unwrap_or_else(|p| p.into_inner()).take();
        let fetched = match kept {
            Some(conn) => match self.list_over(conn) {
                Ok(done) => Ok(done),
                // A kept connection may have gone stale: one new try.
                Err(_) => Connection::open(&self.endpoint).and_then(|c| self.list_over(c)),
            },
            None => Connection::open(&self.endpoint).and_then(|c| self.list_over(c)),
        };
        match fetched {
            Ok((listing, conn)) => {
                *self.lists.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                Ok(listing)
            }
            Err(e) => {
                self.note_request(&e);
                Err(e)
            }
        }
    }

    fn list_over(&self, mut conn: Connection) -> Result<(Listing, Connection), RequestError> {
        let listing = conn.list()?;
        Ok((listing, conn))
    }
}

/// How the engine should take a fastdl request error.
fn classify(e: RequestError) -> SourceError {
    let trouble = if e.is_fatal() {
        Trouble::Fatal
    } else if e.is_changed() {
        Trouble::Changed
    } else if e.is_too_slow() {
        Trouble::TooSlow
    } else if e.is_busy() {
        Trouble::Busy
    } else {
        Trouble::Broken
    };
    SourceError {
        trouble,
        cause: Box::new(e),
    }
}

impl Source for Server {
    fn name(&self) -> &str {
        &self.endpoint.shown
    }

    fn connect(&self) -> Result<Box<dyn Channel>, SourceError> {
        Connection::open(&self.endpoint)
            .map(|conn| Box::new(FastdlChannel { conn }) as Box<dyn Channel>)
            .map_err(classify)
    }

    fn max_depth(&self) -> usize {
        MAX_DEPTH
    }

    fn note(&self, e: &SourceError) {
        if let Some(request) = e.cause.downcast_ref::<RequestError>() {
            self.note_request(request);
        }
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.get().cloned()
    }

    fn push(
        &self,
        file: &Job,
        land: &(dyn Fn(&mut dyn Read, u64) -> std::io::Result<bool> + Sync),
    ) -> Option<Result<(), SourceError>> {
        let received = fastdl_plan::receive(&self.endpoint, &file.remote, file.entry.size, land);
        Some(received.map_err(classify))
    }
}

/// One connection to a fastdl server.
struct FastdlChannel {
    conn: Connection,
}

impl Channel for FastdlChannel {
    fn ask_range(&mut self, file: &Job, offset: u64, length: u64) -> Result<(), SourceError> {
        self.conn
            .ask_range(&file.remote, offset, length)
            .map_err(classify)
    }

    fn ask_digests(&mut self, file: &Job) -> Result<(), SourceError> {
        self.conn.ask_pieces(&file.remote).map_err(classify)
    }

    fn await_range(&mut self, length: u64) -> Result<(), SourceError> {
        self.conn.data_header(length).map_err(classify)
    }

    fn body(&mut self) -> &mut dyn Read {
        self.conn.data()
    }

    fn read_digests(&mut self, file: &Job) -> Result<Vec<Digest>, SourceError> {
        self.conn
            .pieces_reply(&file.remote, file.entry.size)
            .map_err(classify)
    }

    fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    fn socket(&self) -> Option<&TcpStream> {
        Some(self.conn.socket())
    }
}
