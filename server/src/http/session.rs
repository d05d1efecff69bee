//! One HTTP connection: its transport, then its requests one after the
//! other (keep-alive), each under the same deadlines as a fastdl request
//! line (the idle timeout for its first byte, the request deadline for
//! its whole head), each answer under the send progress deadline.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::request::{target, BadRequest, Request, Target};
use super::respond::{self, Answer};
use crate::catalog::open::{OpenError, OpenFile};
use crate::catalog::FileInfo;
use crate::net::conn::{Conn, LineError};
use crate::net::limits::ClosingSlot;
use crate::net::listener::{linger_close, REFUSAL_DEADLINE};
use crate::net::table::Refusal;
use crate::net::table::Ticket;
use crate::net::transport::{self, Io, Transport};
use crate::net::Ctx;
use crate::status::PortStats;
use crate::transfer;

/// Largest request head accepted (nginx's default buffers hold 8 KiB;
/// browsers send 1-2 KiB).
const MAX_HEAD: usize = 16 << 10;

/// Refused requests in a row (404, 400, 401) after which the connection
/// is closed, as the fastdl protocol does.
const MAX_REFUSED: u32 = 32;

/// How long a closing connection's late bytes are read and dropped.
const LINGER: Duration = Duration::from_secs(2);

/// What to do after an answer.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Close,
}

struct Session<'a> {
    ctx: &'a Ctx,
    conn: Conn,
    port: &'a PortStats,
    /// The file last opened, kept for the next range of the same file
    /// while requests follow each other; closed when the connection waits.
    held: Option<(String, OpenFile)>,
    refused: u32,
}

/// Serves one connection until the peer leaves, errs, is evicted or the
/// server shuts down.
pub async fn serve(
    ctx: Arc<Ctx>,
    transport: Transport,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    port_index: usize,
) {
    let port = &ctx.stats.ports[port_index];
    let _active = port.enter();

    // Closed to make room (or shutdown) before its first request: the
    // socket goes at once, not at the idle deadline.
    let io = tokio::select! {
        biased;
        () = ticket.close.cancelled() => None,
        io = set_up(&ctx, &transport, stream, peer) => io,
    };
    if let Some(io) = io {
        let mut session = Session {
            ctx: &ctx,
            conn: Conn::new(io, peer),
            port,
            held: None,
            refused: 0,
        };
        Box::pin(session.requests(&ticket)).await;
    }
}

/// A connection the table refused (every connection in the way is busy):
/// `503 Service Unavailable` with `Retry-After`, over TLS when the port
/// speaks it, then the close, all within a few seconds.
pub async fn refuse(
    ctx: Arc<Ctx>,
    transport: Transport,
    stream: tokio::net::TcpStream,
    refusal: Refusal,
    _slot: ClosingSlot,
) {
    let setup = transport.accept(stream, REFUSAL_DEADLINE, REFUSAL_DEADLINE);
    let Ok(mut io) = setup.await else {
        return;
    };
    let answer = respond::text(
        "503 Service Unavailable",
        &format!("{refusal}\n"),
        &[("Retry-After", "1")],
        false,
    );
    let send = transfer::write_all(&mut io, answer.as_bytes(), ctx.config.send_floor);
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, send).await;
    linger_close(io.tcp(), REFUSAL_DEADLINE).await;
}

/// TLS with the server identity (or plain HTTP with `--plaintext`); a
/// client of the other kind is told in plain text (if it speaks it) and
/// closed.
async fn set_up(
    ctx: &Ctx,
    transport: &Transport,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<Io> {
    let lines = ctx.config.lines;
    let first = match transport::first_byte(&stream, lines.idle).await {
        Ok(first) => first,
        Err(e) => {
            debug!("{peer}: HTTP: {e}");
            return None;
        }
    };
    let starts_tls = first == fastdl_tls::TLS_HANDSHAKE_BYTE;
    match (transport, starts_tls) {
        (Transport::Plain, false) => Some(Io::Plain(stream)),
        // Boxed, as for fastdl connections: the handshake's state is not
        // part of every waiting connection's task.
        (Transport::Tls(_), true) => {
            match Box::pin(transport.setup(stream, first, lines.per_line)).await {
                Ok(io) => Some(io),
                Err(e) => {
                    debug!("{peer}: HTTP: {e}");
                    None
                }
            }
        }
        (Transport::Tls(_), false) => {
            let mut io = Io::Plain(stream);
            let answer = respond::text(
                "400 Bad Request",
                "This port speaks HTTPS (TLS with the fastdl server's identity).\n",
                &[],
                false,
            );
            let _ = transfer::write_all(&mut io, answer.as_bytes(), ctx.config.send_floor).await;
            // The request was only peeked at: read it, or the close resets
            // the connection and the answer with it.
            linger_close(io.tcp(), LINGER).await;
            None
        }
        (Transport::Plain, true) => None,
    }
}

impl Session<'_> {
    async fn requests(&mut self, ticket: &Ticket) {
        let peer = self.conn.peer;
        loop {
            if !self.conn.has_head(MAX_HEAD) {
                // Waiting: closable to make room, and holding no file.
                self.held = None;
                ticket.waiting(self.conn.begin_wait());
            }
            let head = tokio::select! {
                biased;
                () = ticket.close.cancelled() => return,
                head = self.conn.next_head(self.ctx.config.lines, MAX_HEAD) => head,
            };
            ticket.busy();
            let after = match head {
                Ok(head) => match Request::parse(&head) {
                    Ok(request) => self.answer(&request, ticket).await,
                    Err(e) => self.bad(&e).await,
                },
                Err(LineError::TooLong) => {
                    let answer =
                        respond::text("431 Request Header Fields Too Large", "", &[], false);
                    let _ = self.send(&answer).await;
                    After::Close
                }
                Err(e) => {
                    debug!("{peer}: HTTP: {e}");
                    return;
                }
            };
            if after == After::Close || self.refused >= MAX_REFUSED {
                // Done: what is left is the close, which may be cut short
                // to make room.
                ticket.waiting(Instant::now());
                tokio::select! {
                    biased;
                    () = ticket.close.cancelled() => {}
                    () = self.close() => {}
                }
                return;
            }
        }
    }

    /// Ends the connection after an answer: TLS says so (close_notify),
    /// and what the client still sends (pipelined requests, the rest of a
    /// refused one) is read and dropped for a moment, since closing with
    /// it unread would reset the connection and cut the answer short in
    /// the client's buffers.
    async fn close(&mut self) {
        if let Io::Tls(tls) = &mut self.conn.io {
            let shutdown = tokio::io::AsyncWriteExt::shutdown(tls.as_mut());
            let _ = tokio::time::timeout(LINGER, shutdown).await;
        }
        linger_close(self.conn.io.tcp(), LINGER).await;
    }

    async fn send(&mut self, bytes: &str) -> Result<(), transfer::SendError> {
        transfer::write_all(
            &mut self.conn.io,
            bytes.as_bytes(),
            self.ctx.config.send_floor,
        )
        .await
    }

    /// Sends a short text answer; counts it as refused.
    async fn refuse(
        &mut self,
        status: &str,
        why: &str,
        extra: &[(&str, &str)],
        keep: bool,
    ) -> After {
        self.refused += 1;
        let answer = respond::text(status, &format!("{why}\n"), extra, keep);
        match self.send(&answer).await {
            Ok(()) if keep => After::Continue,
            _ => After::Close,
        }
    }

    async fn bad(&mut self, e: &BadRequest) -> After {
        debug!("{}: HTTP: {e}", self.conn.peer);
        self.refuse("400 Bad Request", &e.to_string(), &[], false)
            .await
    }

    async fn answer(&mut self, request: &Request, ticket: &Ticket) -> After {
        let keep = request.keep_alive();
        let head_only = match request.method.as_str() {
            "GET" => false,
            "HEAD" => true,
            _ => {
                return self
                    .refuse(
                        "405 Method Not Allowed",
                        "only GET and HEAD",
                        &[("Allow", "GET, HEAD")],
                        keep,
                    )
                    .await
            }
        };
        if !self.authorized(request, ticket).await {
            let challenge = [("WWW-Authenticate", "Bearer realm=\"fastdl\"")];
            return self
                .refuse(
                    "401 Unauthorized",
                    "a valid token is needed (Authorization: Bearer TOKEN)",
                    &challenge,
                    false,
                )
                .await;
        }
        let mut wanted = target(&request.target);
        // A published file named index.html or index.json is that file,
        // not the index (the index links it by that path).
        if let Target::Index | Target::Json = wanted {
            let path = request.target.trim_start_matches('/');
            let name = path.split(['?', '#']).next().unwrap_or("");
            if self.ctx.catalog.snapshot().files.contains_key(name) {
                wanted = Target::File(name.to_owned());
            }
        }
        match wanted {
            Target::Index if request.wants_json() => self.index(true, head_only, keep).await,
            Target::Index => self.index(false, head_only, keep).await,
            Target::Json => self.index(true, head_only, keep).await,
            Target::File(name) => self.file(request, &name, head_only, keep).await,
            Target::Refused(why) => self.refuse("400 Bad Request", why, &[], keep).await,
        }
    }

    /// Whether the request may see the files: always on a public server,
    /// else with a valid bearer token (a bad one is answered late, the
    /// wait growing with the address's failures, during which the
    /// connection counts as waiting).
    async fn authorized(&self, request: &Request, ticket: &Ticket) -> bool {
        let Some(tokens) = &self.ctx.tokens else {
            return true;
        };
        let ip = self.conn.peer.ip();
        if request.bearer().and_then(|t| tokens.check(t)).is_some() {
            tokens.succeeded(ip);
            return true;
        }
        let wait = tokens.failed(ip, Instant::now());
        warn!(
            "{}: HTTP: no valid token; answering in {wait:?}",
            self.conn.peer
        );
        crate::net::session::penalty_wait(ticket, wait).await;
        false
    }

    async fn index(&mut self, json: bool, head_only: bool, keep: bool) -> After {
        let snapshot = self.ctx.catalog.snapshot();
        let body = self.ctx.index_pages.get(&snapshot, json);
        drop(snapshot);
        let content_type = if json {
            "application/json"
        } else {
            "text/html; charset=utf-8"
        };
        let head = respond::page_head(content_type, body.len(), keep);
        self.refused = 0;
        let mut sent = self.send(&head).await;
        if sent.is_ok() && !head_only {
            sent = self.send(&body).await;
        }
        match sent {
            Ok(()) if keep => After::Continue,
            _ => After::Close,
        }
    }

    async fn file(&mut self, request: &Request, name: &str, head_only: bool, keep: bool) -> After {
        let Some(info) = self.ctx.catalog.snapshot().files.get(name).cloned() else {
            return self.refuse("404 Not Found", "not listed", &[], keep).await;
        };
        if let Err(after) = self.hold(name, &info, keep).await {
            return after;
        }
        let answer = respond::answer(request, info.size, &respond::etag(&info), info.mtime);
        let head = respond::file_head(&info, &answer, keep);
        let range = match answer {
            Answer::Whole => (0, info.size),
            Answer::Part { offset, length } => (offset, length),
            Answer::Unsatisfiable => (0, 0),
        };
        let Some((_, file)) = &self.held else {
            return After::Close;
        };
        let range = if head_only { (range.0, 0) } else { range };
        file.will_need(range.0, range.1);
        let io = &mut self.conn.io;
        let mut pace = transfer::pace(io, self.ctx.config.send_floor);
        let stats = &self.ctx.stats;
        stats.active_transfers.fetch_add(1, Ordering::Relaxed);
        let sent = transfer::send_range(
            io,
            head.as_bytes(),
            &file.file,
            range,
            &mut pace,
            &self.port.bytes_sent,
        )
        .await;
        stats.active_transfers.fetch_sub(1, Ordering::Relaxed);
        match sent {
            Ok(()) => {
                self.refused = 0;
                if keep {
                    After::Continue
                } else {
                    After::Close
                }
            }
            Err(e) => {
                info!("{}: HTTP: {name}: transfer cut: {e}", self.conn.peer);
                After::Close
            }
        }
    }

    /// Makes [`Self::held`] the open file for `name` (kept from the last
    /// request if it is still what was listed); the answer given instead
    /// if it cannot be.
    async fn hold(&mut self, name: &str, info: &FileInfo, keep: bool) -> Result<(), After> {
        let reusable = matches!(&self.held, Some((held, file)) if held == name && file.still_listed(&info.listed()));
        if reusable {
            return Ok(());
        }
        self.held = None;
        match OpenFile::open(self.ctx.catalog.root(), &info.listed()) {
            Ok(file) => {
                self.held = Some((name.to_owned(), file));
                Ok(())
            }
            Err(e) => {
                let _ = self.ctx.rescan.try_send(());
                let (status, why) = match e {
                    OpenError::Changed(_) => {
                        ("503 Service Unavailable", "the file is changing; try again")
                    }
                    OpenError::Outside => ("404 Not Found", "not served"),
                    OpenError::Io(_) => ("500 Internal Server Error", "cannot read the file"),
                };
                warn!("{}: HTTP: {name}: {e}", self.conn.peer);
                Err(self
                    .refuse(status, why, &[("Retry-After", "1")], keep)
                    .await)
            }
        }
    }
}
