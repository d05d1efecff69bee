//! The network side of the server: listeners, the connection table, one
//! task per connection speaking the protocol.
//!
//! # Why an event loop, and why tokio
//!
//! A connection waiting for a request used to hold a thread (and its
//! stack), so the connection limit could not be raised past a few
//! hundred, and 600 idle connections from anywhere locked every client out
//! (issue 16). Now a waiting connection is a socket registered with epoll
//! and a small task; its buffer exists only while it holds part of a
//! request line. The event loop is tokio's (multi-threaded runtime, one
//! worker per core), chosen over a hand-driven mio loop because every
//! connection needs several deadlines (idle, request line, progress of
//! each send, eviction, shutdown), which tokio's timers and `select!`
//! give without a timer wheel of our own, and because TLS and the HTTP
//! face plug into the same streams. Measured: 10,000 idle connections
//! alone cost the server 31 MB (about 3 KB each: task, socket
//! registration, table entry); with 20 clients downloading beside them
//! (bench/ case 6) it peaked at 33-43 MiB (nginx: 31 MiB), and the
//! clients' rate was 0.88-1.03x that of an idle server; 5,300 idle or
//! trickling connections in the e2e test (`flood`) peak at 19 MiB.
//!
//! Transfers run in the same loop on non-blocking sockets (`sendfile`
//! for plaintext), each send waiting for the socket, never blocking a
//! worker; the 1 GiB loopback transfer is as fast as it was with one
//! thread per connection (BENCHMARKS.md).
//!
//! Submodules: `listener` (accept, admit or refuse), `table` (limits and
//! eviction), `transport` (TLS or plain, and the check that a client
//! speaks the same), `conn` (request lines in, with their deadlines),
//! `auth` (access tokens), `session` (the protocol), `limits` (file
//! descriptors and the defaults they allow).

pub mod auth;
pub mod conn;
pub mod limits;
pub mod listener;
pub mod session;
pub mod table;
pub mod transport;

use std::sync::Arc;

use crossbeam_channel::Sender;

use self::auth::Tokens;
use self::conn::LineTimeouts;
use self::table::Table;
use self::transport::Transport;
use crate::catalog::Catalog;
use crate::status::Stats;
use crate::transfer::pace::SpeedFloor;
use crate::transfer::plan::Plans;

/// Settings every connection shares.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Deadlines for request lines.
    pub lines: LineTimeouts,
    /// The progress deadline of every send.
    pub send_floor: SpeedFloor,
    /// Largest range one `GET` may ask for.
    pub max_range: u64,
}

/// What every connection shares with the rest of the server.
pub struct Ctx {
    pub catalog: Arc<Catalog>,
    pub stats: Arc<Stats>,
    pub table: Arc<Table>,
    pub plans: Arc<Plans>,
    pub config: Config,
    /// TLS (the server's identity) or plain TCP, for every connection.
    pub transport: Transport,
    /// The accepted access tokens; `None`: the folder is public.
    pub tokens: Option<Tokens>,
    /// Asks the catalog for an early rescan (a file changed under us).
    pub rescan: Sender<()>,
    /// The HTTP face's index pages, shared by its connections.
    pub index_pages: crate::http::respond::IndexPages,
    /// Sockets being closed outside the connection table.
    pub closing: limits::Closing,
}
