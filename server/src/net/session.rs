//! One client connection speaking the fastdl protocol: reads request
//! lines, answers them in order, sends data.
//!
//! A session handles any number of requests, so a client reuses one
//! connection for many ranged reads and many files. Anything wrong in a
//! request gets one clear reply line; a framing problem (an overlong line,
//! a timeout) gets one and then the connection is closed, as do 32 refused
//! requests in a row (whatever the refusal: a malformed line, a request
//! before the version exchange, an unlisted name, a range outside the
//! file). While it waits for a request the session may be closed to make
//! room for another connection (see `table`); while it answers one, it may
//! not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastdl_protocol::digest::piece_count;
use fastdl_protocol::{Digest, ErrorCode, Reply, Request, VERSION};
use fastdl_support::human_bytes;
use log::{debug, info, warn};

use super::auth::Grant;
use super::conn::{Conn, LineError};
use super::table::Ticket;
use super::transport::{self, Io, SetupError};
use super::Ctx;
use crate::catalog::open::{OpenError, OpenFile};
use crate::catalog::FileInfo;
use crate::status::PortStats;
use crate::transfer::{self, plan::PlanRequest, SendError};

/// Consecutive refused requests tolerated before the connection is closed.
const MAX_BAD_REQUESTS: u32 = 32;

/// How long a last word (`ERROR TIMEOUT` to an evicted connection) may take.
const LAST_WORD: Duration = Duration::from_secs(1);

/// Digest lines sent per write of a `PIECES` reply.
const DIGESTS_PER_WRITE: usize = 1024;

/// What a handled request means for the connection.
enum Next {
    Continue,
    Close,
    /// `WATCH`: the connection now only hears of list changes.
    Watch,
}

/// How often a watching client hears `LISTED` while the list does not
/// change: well inside the client's 30 s read deadline, and a closed
/// watcher is noticed (its slot freed) within this.
pub const WATCH_HEARTBEAT: Duration = Duration::from_secs(15);

/// What answering a request amounted to, for the bad-request count.
enum Verdict {
    Served,
    Refused,
}

struct Session<'a> {
    conn: Conn,
    ctx: &'a Ctx,
    /// Its place in the connection table.
    ticket: &'a Ticket,
    port: &'a PortStats,
    port_index: usize,
    greeted: bool,
    /// Whether the client may see the list and the files: from the start
    /// on a server without tokens, after a good `AUTH` on one with.
    authorized: bool,
    /// The token it signed in with, re-checked at each request (a revoked
    /// token ends the connection).
    grant: Option<Grant>,
    requests: u64,
    sent: u64,
    files: BTreeMap<String, u64>,
    /// The last file served, kept open for the next ranged read of it
    /// while requests follow each other; closed when the connection
    /// waits.
    held: Option<(String, OpenFile)>,
}

/// What ended the wait for a request.
enum Waited {
    Line(Result<String, LineError>),
    Closed,
}

/// Serves one connection until the peer leaves, errs, is evicted, or the
/// server shuts down: first its transport (TLS handshake, or the check
/// that a plaintext client is one), then its requests.
pub async fn serve(
    ctx: Arc<Ctx>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    port_index: usize,
) {
    let port = &ctx.stats.ports[port_index];
    let _active = port.enter();

    let started = Instant::now();
    let Some(io) = set_up(&ctx, stream, peer, &ticket).await else {
        return;
    };
    // The requests' state (replies, transfers) lives in its own allocation,
    // made once the connection is set up: a task waiting for its first
    // byte then costs only what waiting needs (see set_up).
    Box::pin(requests(&ctx, io, peer, &ticket, port_index, started)).await;
}

/// The requests of one set-up connection, until it ends.
async fn requests(
    ctx: &Ctx,
    io: Io,
    peer: SocketAddr,
    ticket: &Ticket,
    port_index: usize,
    started: Instant,
) {
    let port = &ctx.stats.ports[port_index];
    let mut session = Session {
        conn: Conn::new(io, peer),
        ctx,
        ticket,
        port,
        port_index,
        greeted: false,
        authorized: ctx.tokens.is_none(),
        grant: None,
        requests: 0,
        sent: 0,
        files: BTreeMap::new(),
        held: None,
    };
    debug!("{peer}: connected on port {}", port.port);
    let mut bad = 0u32;
    loop {
        if !session.conn.has_line() {
            // Waiting: it may be closed to make room, and holds no file
            // (a file per waiting connection would run the server out of
            // descriptors long before its connection limit).
            session.held = None;
            ticket.waiting(session.conn.begin_wait());
        }
        let waited = tokio::select! {
            biased;
            () = ticket.close.cancelled() => Waited::Closed,
            line = session.conn.next_line(ctx.config.lines) => Waited::Line(line),
        };
        ticket.busy();
        let line = match waited {
            Waited::Closed => {
                if ticket.evicted() {
                    debug!("{peer}: closed to make room for a new connection");
                    session.evicted_word().await;
                }
                break;
            }
            Waited::Line(line) => line,
        };
        let Some((verdict, next)) = session.on_line(line).await else {
            break;
        };
        bad = match verdict {
            Verdict::Served => 0,
            Verdict::Refused => bad + 1,
        };
        if bad >= MAX_BAD_REQUESTS {
            warn!("{peer}: {bad} refused requests in a row, closing");
            break;
        }
        match next {
            Next::Continue => {}
            Next::Close => break,
            Next::Watch => {
                session.watch(ticket).await;
                break;
            }
        }
    }
    session.log_summary(started);
}

/// The connection's transport, within the deadlines and until evicted.
/// A plaintext server tells a connection closed before its first byte
/// why (a TLS server cannot: the client has not begun TLS).
async fn set_up(
    ctx: &Ctx,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ticket: &Ticket,
) -> Option<Io> {
    let lines = ctx.config.lines;
    let first = tokio::select! {
        biased;
        () = ticket.close.cancelled() => None,
        first = transport::first_byte(&stream, lines.idle) => Some(first),
    };
    let why = match first {
        Some(Ok(first)) => {
            // Boxed: the TLS handshake's state is kilobytes, and inline it
            // would size every connection's task, idle ones included.
            let setup = Box::pin(ctx.transport.setup(stream, first, lines.per_line));
            return tokio::select! {
                biased;
                () = ticket.close.cancelled() => None,
                io = setup => io.inspect_err(|e| debug!("{peer}: {e}")).ok(),
            };
        }
        Some(Err(SetupError::Idle(idle))) => format!("no request for {} s", idle.as_secs()),
        Some(Err(e)) => {
            debug!("{peer}: {e}");
            return None;
        }
        None if ticket.evicted() => EVICTED.to_owned(),
        None => return None,
    };
    debug!("{peer}: {why}; closing");
    // Evicted, it is out of the table: a last word only within the budget
    // of closing sockets.
    let slot = ticket.evicted().then(|| ctx.closing.enter());
    if !ctx.transport.is_tls() && !matches!(slot, Some(None)) {
        transport::say(&stream, &Reply::error(ErrorCode::Timeout, why)).await;
    }
    None
}

/// The wait before a bad token is refused. The connection counts as
/// waiting meanwhile: it may be closed to make room (a client with bad
/// tokens does not hold busy slots for the penalty's 16 s).
pub async fn penalty_wait(ticket: &Ticket, wait: Duration) {
    ticket.waiting(Instant::now());
    tokio::select! {
        biased;
        () = ticket.close.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
}

/// What a connection closed to make room is told.
const EVICTED: &str =
    "closed to make room: the server is full and this connection was idle longest";

impl Session<'_> {
    /// The last word of a connection closed to make room. It is out of the
    /// table already, so it has one only within the budget of closing
    /// sockets (`limits::Closing`).
    async fn evicted_word(&mut self) {
        if let Some(_slot) = self.ctx.closing.enter() {
            self.last_word(&Reply::error(ErrorCode::Timeout, EVICTED))
                .await;
        }
    }

    /// Answers what came in place of a request line: the request, or the
    /// error the line had. `None`: the connection is over.
    async fn on_line(&mut self, line: Result<String, LineError>) -> Option<(Verdict, Next)> {
        let peer = self.conn.peer;
        let answered = match line {
            Ok(line) => {
                self.requests += 1;
                match Request::parse(&line) {
                    Ok(request) => self.handle(request).await,
                    Err(e) => {
                        debug!("{peer}: bad request: {e}");
                        self.refuse(&Reply::wrong_input(e.to_string())).await
                    }
                }
            }
            Err(LineError::BadText(e)) => self.refuse(&Reply::wrong_input(e.to_string())).await,
            Err(LineError::Closed) => return None,
            Err(e @ (LineError::ClosedMidLine | LineError::Io(_))) => {
                debug!("{peer}: {e}");
                return None;
            }
            Err(e @ LineError::TooLong) => {
                warn!("{peer}: {e}, closing");
                self.last_word(&Reply::error(ErrorCode::TooLong, e.to_string()))
                    .await;
                return None;
            }
            Err(e @ (LineError::Idle(_) | LineError::Slow(_))) => {
                info!("{peer}: {e}; closing");
                self.last_word(&Reply::error(ErrorCode::Timeout, e.to_string()))
                    .await;
                return None;
            }
        };
        Some(answered)
    }

    /// Sends one reply line.
    async fn reply(&mut self, reply: &Reply) -> Result<(), SendError> {
        let line = fastdl_protocol::line::framed(reply);
        transfer::write_all(
            &mut self.conn.io,
            line.as_bytes(),
            self.ctx.config.send_floor,
        )
        .await
    }

    /// Sends a reply; a failed send closes the connection.
    async fn answer(&mut self, reply: &Reply, verdict: Verdict) -> (Verdict, Next) {
        match self.reply(reply).await {
            Ok(()) => (verdict, Next::Continue),
            Err(e) => {
                debug!("{}: connection lost: {e}", self.conn.peer);
                (verdict, Next::Close)
            }
        }
    }

    async fn refuse(&mut self, reply: &Reply) -> (Verdict, Next) {
        self.answer(reply, Verdict::Refused).await
    }

    /// A last line before closing, given a short time at most.
    async fn last_word(&mut self, reply: &Reply) {
        if tokio::time::timeout(LAST_WORD, self.reply(reply))
            .await
            .is_ok()
        {
            if let Io::Tls(tls) = &mut self.conn.io {
                // close_notify: the client can tell our close from a cut.
                let shutdown = tokio::io::AsyncWriteExt::shutdown(tls.as_mut());
                let _ = tokio::time::timeout(LAST_WORD, shutdown).await;
            }
            super::listener::linger_close(self.conn.io.tcp(), LAST_WORD).await;
        }
    }

    async fn handle(&mut self, request: Request) -> (Verdict, Next) {
        match &request {
            // A token is a secret: never in the log.
            Request::Auth { .. } => debug!("{}: AUTH (token withheld)", self.conn.peer),
            request => debug!("{}: {request}", self.conn.peer),
        }
        if !self.greeted {
            return match request {
                Request::Hello { version } if version == VERSION => {
                    self.greeted = true;
                    self.answer(&Reply::Hello { version: VERSION }, Verdict::Served)
                        .await
                }
                Request::Hello { version } => {
                    let msg =
                        format!("version {version} is not supported; this server speaks {VERSION}");
                    self.refuse(&Reply::error(ErrorCode::Version, msg)).await;
                    (Verdict::Refused, Next::Close)
                }
                Request::Quit => {
                    let _ = self.reply(&Reply::Bye).await;
                    (Verdict::Served, Next::Close)
                }
                _ => {
                    let msg = format!("send \"FASTDL {VERSION}\" first");
                    self.refuse(&Reply::error(ErrorCode::Handshake, msg)).await
                }
            };
        }
        if let Request::Auth { token } = &request {
            return self.auth(token).await;
        }
        if self.revoked() {
            info!("{}: its token was revoked; closing", self.conn.peer);
            let why = "the token this connection signed in with is no longer accepted";
            self.last_word(&Reply::error(ErrorCode::Auth, why)).await;
            return (Verdict::Refused, Next::Close);
        }
        if !self.authorized && !matches!(request, Request::Hello { .. } | Request::Quit) {
            let why = "this server needs an access token: fastdl-client --token TOKEN \
                       (or the environment variable FASTDL_TOKEN)";
            info!("{}: {request} without a token; refused", self.conn.peer);
            self.last_word(&Reply::error(ErrorCode::Auth, why)).await;
            return (Verdict::Refused, Next::Close);
        }
        match request {
            Request::Hello { .. } => {
                self.answer(&Reply::Hello { version: VERSION }, Verdict::Served)
                    .await
            }
            Request::Auth { .. } => (Verdict::Served, Next::Continue),
            Request::List => {
                let listing = Arc::clone(&self.ctx.catalog.snapshot().list_reply);
                let sent =
                    transfer::write_all(&mut self.conn.io, &listing, self.ctx.config.send_floor)
                        .await;
                self.after_send(sent, Verdict::Served)
            }
            Request::Pieces { name } => self.pieces(&name).await,
            Request::Get {
                offset,
                length,
                name,
            } => self.get(offset, length, name).await,
            Request::Plan { name } => self.plan(&name).await,
            Request::Join { .. } => {
                self.refuse(&Reply::wrong_input("JOIN belongs on a plan's data port"))
                    .await
            }
            Request::Quit => {
                let _ = self.reply(&Reply::Bye).await;
                (Verdict::Served, Next::Close)
            }
            Request::Watch => (Verdict::Served, Next::Watch),
        }
    }

    /// A `WATCH` connection: `LISTED <generation>` now, at every change of
    /// the list and every [`WATCH_HEARTBEAT`], until the client goes (a
    /// send fails), the connection is closed to make room (it counts as
    /// waiting since the watch began, so watchers go first), or shutdown.
    async fn watch(&mut self, ticket: &Ticket) {
        let peer = self.conn.peer;
        let mut changes = self.ctx.catalog.watch();
        ticket.waiting(self.conn.begin_wait());
        loop {
            if self.revoked() {
                info!("{peer}: its token was revoked; watch ended");
                let why = "the token this connection signed in with is no longer accepted";
                self.last_word(&Reply::error(ErrorCode::Auth, why)).await;
                return;
            }
            let generation = *changes.borrow_and_update();
            if let Err(e) = self.reply(&Reply::Listed { generation }).await {
                debug!("{peer}: watch ended: {e}");
                return;
            }
            tokio::select! {
                biased;
                () = ticket.close.cancelled() => {
                    if ticket.evicted() {
                        self.evicted_word().await;
                    }
                    return;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(WATCH_HEARTBEAT) => {}
            }
        }
    }

    /// Answers `AUTH <token>`: `AUTH OK`, or (after a wait that grows with
    /// the address's failures) `ERROR AUTH` and the close.
    async fn auth(&mut self, token: &str) -> (Verdict, Next) {
        let peer = self.conn.peer;
        let Some(tokens) = &self.ctx.tokens else {
            // A public server: any token, or none, will do.
            self.authorized = true;
            return self.answer(&Reply::AuthOk, Verdict::Served).await;
        };
        match tokens.check(token) {
            Some(label) => {
                tokens.succeeded(peer.ip());
                info!(
                    "{peer}: token accepted{}",
                    if label.is_empty() {
                        String::new()
                    } else {
                        format!(" ({label})")
                    }
                );
                self.authorized = true;
                self.grant = Some(tokens.grant(token));
                self.answer(&Reply::AuthOk, Verdict::Served).await
            }
            None => {
                let wait = tokens.failed(peer.ip(), Instant::now());
                warn!("{peer}: token not accepted; answering in {wait:?}");
                penalty_wait(self.ticket, wait).await;
                let reply = Reply::error(ErrorCode::Auth, "token not accepted");
                self.last_word(&reply).await;
                (Verdict::Refused, Next::Close)
            }
        }
    }

    /// Whether the token the connection signed in with has since been
    /// revoked.
    fn revoked(&mut self) -> bool {
        match (&self.ctx.tokens, &mut self.grant) {
            (Some(tokens), Some(grant)) => !tokens.still_valid(grant),
            _ => false,
        }
    }

    fn after_send(&self, sent: Result<(), SendError>, verdict: Verdict) -> (Verdict, Next) {
        match sent {
            Ok(()) => (verdict, Next::Continue),
            Err(e) => {
                info!("{}: reply cut: {e}", self.conn.peer);
                (verdict, Next::Close)
            }
        }
    }

    /// The listed file `name`, or the refusal to send.
    fn listed(&self, name: &str) -> Result<FileInfo, Reply> {
        self.ctx
            .catalog
            .snapshot()
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| Reply::wrong_input(format!("not listed: {name}")))
    }

    async fn pieces(&mut self, name: &str) -> (Verdict, Next) {
        let info = match self.listed(name) {
            Ok(info) => info,
            Err(refusal) => return self.refuse(&refusal).await,
        };
        let header = Reply::Pieces {
            size: info.size,
            piece_size: fastdl_protocol::PIECE_SIZE,
            count: piece_count(info.size),
        };
        let mut text = fastdl_protocol::line::framed(&header);
        let floor = self.ctx.config.send_floor;
        // In slices: a huge file's digests are never one buffer.
        for digests in info.tree.pieces.chunks(DIGESTS_PER_WRITE) {
            push_digests(&mut text, digests);
            if let Err(e) = transfer::write_all(&mut self.conn.io, text.as_bytes(), floor).await {
                return self.after_send(Err(e), Verdict::Served);
            }
            text.clear();
        }
        text.push_str(&fastdl_protocol::line::framed(&Reply::End));
        let sent = transfer::write_all(&mut self.conn.io, text.as_bytes(), floor).await;
        self.after_send(sent, Verdict::Served)
    }

    /// Makes [`Self::held`] the open file for a listed name: the one this
    /// session already holds if it is still exactly what was listed, else a
    /// freshly opened and checked one. On refusal, the reply to give.
    fn hold(&mut self, name: &str, info: &FileInfo) -> Result<(), Reply> {
        let reusable = matches!(&self.held, Some((held, file)) if held == name && file.still_listed(&info.listed()));
        if !reusable {
            self.held = None;
            let peer = self.conn.peer;
            let file = match OpenFile::open(self.ctx.catalog.root(), &info.listed()) {
                Ok(file) => file,
                Err(OpenError::Changed(why)) => {
                    info!("{peer}: {name}: {why}");
                    let _ = self.ctx.rescan.try_send(());
                    return Err(Reply::error(ErrorCode::Changed, format!("{name}: {why}")));
                }
                Err(OpenError::Outside) => {
                    warn!("{peer}: {name}: no longer a regular file inside the folder; refused");
                    let _ = self.ctx.rescan.try_send(());
                    return Err(Reply::wrong_input(format!("not served: {name}")));
                }
                Err(OpenError::Io(e)) => {
                    warn!("{peer}: {name}: cannot open: {e}");
                    return Err(Reply::error(ErrorCode::Io, format!("{name}: cannot read")));
                }
            };
            self.held = Some((name.to_owned(), file));
        }
        Ok(())
    }

    async fn get(&mut self, offset: u64, length: u64, name: String) -> (Verdict, Next) {
        let info = match self.listed(&name) {
            Ok(info) => info,
            Err(refusal) => return self.refuse(&refusal).await,
        };
        if offset.checked_add(length).is_none_or(|end| end > info.size) {
            let msg = format!(
                "range {offset}+{length} is outside {name} ({} bytes)",
                info.size
            );
            return self.refuse(&Reply::wrong_input(msg)).await;
        }
        let max_range = self.ctx.config.max_range;
        if length > max_range {
            let msg = format!("ranges are limited to {max_range} bytes per request");
            return self.refuse(&Reply::error(ErrorCode::Limit, msg)).await;
        }
        if let Err(refusal) = self.hold(&name, &info) {
            return self.refuse(&refusal).await;
        }
        let Some((_, file)) = self.held.as_ref() else {
            return (Verdict::Served, Next::Close);
        };
        file.will_need(offset, length);
        let header = format!("{}\n", Reply::Data { length });
        let stats = &self.ctx.stats;
        stats.active_transfers.fetch_add(1, Ordering::Relaxed);
        let io = &mut self.conn.io;
        let mut pace = transfer::pace(io, self.ctx.config.send_floor);
        let result = transfer::send_range(
            io,
            header.as_bytes(),
            &file.file,
            (offset, length),
            &mut pace,
            &self.port.bytes_sent,
        )
        .await;
        stats.active_transfers.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.sent += length;
                *self.files.entry(name).or_default() += length;
                (Verdict::Served, Next::Continue)
            }
            Err(e) => {
                info!(
                    "{}: {name}: transfer of {offset}+{length} cut: {e}",
                    self.conn.peer
                );
                (Verdict::Served, Next::Close)
            }
        }
    }

    /// Answers `PLAN <name>`: `ACCEPTED ...` with the ports already open,
    /// or a refusal.
    async fn plan(&mut self, name: &str) -> (Verdict, Next) {
        let info = match self.listed(name) {
            Ok(info) => info,
            Err(refusal) => return self.refuse(&refusal).await,
        };
        if let Err(refusal) = self.hold(name, &info) {
            return self.refuse(&refusal).await;
        }
        let file = match self.held.as_ref().map(|(_, f)| f.file.try_clone()) {
            Some(Ok(file)) => file,
            _ => {
                let reply = Reply::error(ErrorCode::Io, format!("{name}: cannot read"));
                return self.refuse(&reply).await;
            }
        };
        let local = match self.conn.io.tcp().local_addr() {
            Ok(addr) => addr.ip(),
            Err(e) => {
                let reply = Reply::error(ErrorCode::Io, format!("cannot set up a plan: {e}"));
                return self.refuse(&reply).await;
            }
        };
        let reply = self.ctx.plans.offer(PlanRequest {
            name,
            file,
            size: info.size,
            local,
            peer: self.conn.peer,
            port: self.port_index,
        });
        let verdict = if matches!(reply, Reply::Accepted { .. }) {
            Verdict::Served
        } else {
            Verdict::Refused
        };
        self.answer(&reply, verdict).await
    }

    fn log_summary(&self, started: Instant) {
        let peer: SocketAddr = self.conn.peer;
        if self.requests == 0 {
            debug!(
                "{peer}: closed after {:.1} s without a request",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        let files: Vec<String> = self
            .files
            .iter()
            .take(5)
            .map(|(name, bytes)| format!("{name} ({})", human_bytes(*bytes)))
            .collect();
        let more = self.files.len().saturating_sub(5);
        info!(
            "{peer}: closed after {:.1} s, {} requests, {} sent{}{}",
            started.elapsed().as_secs_f64(),
            self.requests,
            human_bytes(self.sent),
            if files.is_empty() {
                String::new()
            } else {
                format!(": {}", files.join(", "))
            },
            if more > 0 {
                format!(" and {more} more files")
            } else {
                String::new()
            },
        );
    }
}

fn push_digests(text: &mut String, digests: &[Digest]) {
    use std::fmt::Write;
    for digest in digests {
        let _ = writeln!(text, "{digest}");
    }
}
