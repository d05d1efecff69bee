//! One client connection: reads request lines, answers them, sends data.
//!
//! A session handles any number of requests in order, so a client reuses
//! one connection for many ranged reads and many files. Anything wrong in
//! a request gets one clear reply line; a framing problem (an overlong
//! line, a timeout) gets one and then the connection is closed.

use std::collections::BTreeMap;
use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use fastdl_protocol::line::read_line;
use fastdl_protocol::listing::write_pieces;
use fastdl_protocol::{ErrorCode, ProtocolError, Reply, Request, MAX_REQUEST_LINE, VERSION};
use log::{debug, info, warn};

use crate::catalog::{Catalog, FileInfo};
use crate::pacing::{Expired, PacedReader};
use crate::plan::{PlanRequest, Plans};
use crate::status::{PortStats, Stats};
use crate::transfer::{self, send_range, OpenError, OpenFile};
use fastdl_support::human_bytes;
use fastdl_support::shutdown::Shutdown;

/// Settings every session shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub idle_timeout: Duration,
    /// Time a begun request line has to complete.
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    pub max_range: u64,
}

/// What sessions share with the rest of the server.
pub struct Shared {
    pub catalog: Arc<Catalog>,
    pub stats: Arc<Stats>,
    pub shutdown: Arc<Shutdown>,
    pub config: SessionConfig,
    pub plans: Arc<Plans>,
    /// Asks the catalog for an early rescan (a file changed under us).
    pub rescan: Sender<()>,
}

/// Consecutive bad requests tolerated before the connection is closed.
const MAX_BAD_REQUESTS: u32 = 32;

enum Next {
    Continue,
    Close,
}

struct Session<'a> {
    stream: &'a TcpStream,
    peer: SocketAddr,
    shared: &'a Shared,
    port: &'a PortStats,
    port_index: usize,
    greeted: bool,
    requests: u64,
    sent: u64,
    files: BTreeMap<String, u64>,
    /// The last file served, kept open for the next ranged read of it.
    held: Option<(String, OpenFile)>,
}

/// Serves one connection until the peer leaves, errs, or shutdown.
pub fn serve(stream: TcpStream, peer: SocketAddr, port_index: usize, shared: &Shared) {
    let port = &shared.stats.ports[port_index];
    let started = Instant::now();
    let _ = stream.set_write_timeout(Some(shared.config.write_timeout));
    transfer::tune_for_bulk(&stream);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let paced = PacedReader::new(
        read_half,
        shared.config.idle_timeout,
        shared.config.request_timeout,
    );
    let mut reader = BufReader::with_capacity(MAX_REQUEST_LINE, paced);
    let mut session = Session {
        stream: &stream,
        peer,
        shared,
        port,
        port_index,
        greeted: false,
        requests: 0,
        sent: 0,
        files: BTreeMap::new(),
        held: None,
    };
    let mut bad = 0u32;
    while !shared.shutdown.is_requested() {
        reader.get_mut().begin_line();
        let reply_and_next = match read_line(&mut reader, MAX_REQUEST_LINE) {
            Ok(None) => break,
            Ok(Some(line)) => {
                session.requests += 1;
                match Request::parse(&line) {
                    Ok(request) => {
                        bad = 0;
                        match session.handle(request) {
                            Ok(next) => next,
                            Err(e) => {
                                debug!("{peer}: connection lost: {e}");
                                Next::Close
                            }
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        debug!("{peer}: bad request: {e}");
                        session.reply_then(&Reply::wrong_input(e.to_string()), Next::Continue)
                    }
                }
            }
            Err(ProtocolError::LineTooLong { limit }) => {
                warn!("{peer}: request line over {limit} bytes, closing");
                let msg = format!("request line longer than {limit} bytes");
                session.reply_then(&Reply::error(ErrorCode::TooLong, msg), Next::Close)
            }
            Err(e @ (ProtocolError::NotUtf8 | ProtocolError::ControlChar)) => {
                bad += 1;
                session.reply_then(&Reply::wrong_input(e.to_string()), Next::Continue)
            }
            Err(ProtocolError::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                let why = match reader.get_ref().expired() {
                    Expired::Idle => {
                        format!("no request for {} s", shared.config.idle_timeout.as_secs())
                    }
                    Expired::Line => format!(
                        "request line not completed within {} s",
                        shared.config.request_timeout.as_secs()
                    ),
                };
                info!("{peer}: {why}; closing");
                session.reply_then(&Reply::error(ErrorCode::Timeout, why), Next::Close)
            }
            Err(_) => break,
        };
        if bad >= MAX_BAD_REQUESTS {
            warn!("{peer}: {bad} bad requests in a row, closing");
            break;
        }
        if let Next::Close = reply_and_next {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let files: Vec<String> = session
        .files
        .iter()
        .take(5)
        .map(|(name, bytes)| format!("{name} ({})", human_bytes(*bytes)))
        .collect();
    let more = session.files.len().saturating_sub(5);
    info!(
        "{peer}: closed after {:.1} s, {} requests, {} sent{}{}",
        secs,
        session.requests,
        human_bytes(session.sent),
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

impl Session<'_> {
    fn reply(&self, reply: &Reply) -> std::io::Result<()> {
        let mut line = reply.to_string();
        line.push('\n');
        let mut w = self.stream;
        w.write_all(line.as_bytes())
    }

    fn reply_then(&self, reply: &Reply, next: Next) -> Next {
        match self.reply(reply) {
            Ok(()) => next,
            Err(_) => Next::Close,
        }
    }

    fn handle(&mut self, request: Request) -> std::io::Result<Next> {
        debug!("{}: {}", self.peer, request);
        if !self.greeted {
            return Ok(match request {
                Request::Hello { version } if version == VERSION => {
                    self.greeted = true;
                    self.reply_then(&Reply::Hello { version: VERSION }, Next::Continue)
                }
                Request::Hello { version } => {
                    let msg =
                        format!("version {version} is not supported; this server speaks {VERSION}");
                    self.reply_then(&Reply::error(ErrorCode::Version, msg), Next::Close)
                }
                Request::Quit => self.reply_then(&Reply::Bye, Next::Close),
                _ => {
                    let msg = format!("send \"FASTDL {VERSION}\" first");
                    self.reply_then(&Reply::error(ErrorCode::Handshake, msg), Next::Continue)
                }
            });
        }
        match request {
            Request::Hello { .. } => {
                self.reply(&Reply::Hello { version: VERSION })?;
            }
            Request::List => {
                let snapshot = self.shared.catalog.snapshot();
                let mut w = self.stream;
                snapshot.listing.write_reply(&mut w).map_err(into_io)?;
            }
            Request::Pieces { name } => {
                let snapshot = self.shared.catalog.snapshot();
                match snapshot.files.get(&name) {
                    Some(info) => {
                        let mut w = self.stream;
                        write_pieces(&mut w, info.size, &info.tree.pieces).map_err(into_io)?;
                    }
                    None => self.reply(&Reply::wrong_input(format!("not listed: {name}")))?,
                }
            }
            Request::Get {
                offset,
                length,
                name,
            } => return self.get(offset, length, name),
            Request::Plan { name } => {
                let reply = self.plan(&name);
                self.reply(&reply)?;
            }
            Request::Join { .. } => {
                self.reply(&Reply::wrong_input("JOIN belongs on a plan's data port"))?;
            }
            Request::Quit => {
                self.reply(&Reply::Bye)?;
                return Ok(Next::Close);
            }
        }
        Ok(Next::Continue)
    }

    /// The open file for a listed name: the one this session already holds
    /// if it is still exactly what was listed, else a freshly opened and
    /// checked one. On refusal, the reply to give.
    fn hold(&mut self, name: &str, info: &FileInfo) -> Result<(), Reply> {
        let reusable =
            matches!(&self.held, Some((held, file)) if held == name && file.still_listed(info));
        if !reusable {
            self.held = None;
            let file = match OpenFile::open(self.shared.catalog.root(), info) {
                Ok(file) => file,
                Err(OpenError::Changed(why)) => {
                    info!("{}: {name}: {why}", self.peer);
                    let _ = self.shared.rescan.try_send(());
                    return Err(Reply::error(ErrorCode::Changed, format!("{name}: {why}")));
                }
                Err(OpenError::Outside) => {
                    warn!(
                        "{}: {name}: no longer a regular file inside the folder; refused",
                        self.peer
                    );
                    let _ = self.shared.rescan.try_send(());
                    return Err(Reply::wrong_input(format!("not served: {name}")));
                }
                Err(OpenError::Io(e)) => {
                    warn!("{}: {name}: cannot open: {e}", self.peer);
                    return Err(Reply::error(ErrorCode::Io, format!("{name}: cannot read")));
                }
            };
            self.held = Some((name.to_owned(), file));
        }
        Ok(())
    }

    /// The file [`Self::hold`] holds.
    fn held(&self) -> Option<&OpenFile> {
        self.held.as_ref().map(|(_, file)| file)
    }

    /// Answers `PLAN <name>`: `ACCEPTED ...` with the ports already open, or an error.
    fn plan(&mut self, name: &str) -> Reply {
        let snapshot = self.shared.catalog.snapshot();
        let Some(info) = snapshot.files.get(name) else {
            return Reply::wrong_input(format!("not listed: {name}"));
        };
        if let Err(refusal) = self.hold(name, info) {
            return refusal;
        }
        let file = match self.held().map(|f| f.file.try_clone()) {
            Some(Ok(file)) => file,
            _ => return Reply::error(ErrorCode::Io, format!("{name}: cannot read")),
        };
        self.shared.plans.offer(PlanRequest {
            name,
            file,
            size: info.size,
            control: self.stream,
            peer: self.peer,
            shutdown: Arc::clone(&self.shared.shutdown),
            stats: Arc::clone(&self.shared.stats),
            port: self.port_index,
        })
    }

    fn get(&mut self, offset: u64, length: u64, name: String) -> std::io::Result<Next> {
        let snapshot = self.shared.catalog.snapshot();
        let Some(info) = snapshot.files.get(&name) else {
            self.reply(&Reply::wrong_input(format!("not listed: {name}")))?;
            return Ok(Next::Continue);
        };
        if offset.checked_add(length).is_none_or(|end| end > info.size) {
            let msg = format!(
                "range {offset}+{length} is outside {name} ({} bytes)",
                info.size
            );
            self.reply(&Reply::wrong_input(msg))?;
            return Ok(Next::Continue);
        }
        if length > self.shared.config.max_range {
            let msg = format!(
                "ranges are limited to {} bytes per request",
                self.shared.config.max_range
            );
            self.reply(&Reply::error(ErrorCode::Limit, msg))?;
            return Ok(Next::Continue);
        }
        if let Err(refusal) = self.hold(&name, info) {
            self.reply(&refusal)?;
            return Ok(Next::Continue);
        }
        let Some(file) = self.held() else {
            return Ok(Next::Close);
        };
        file.will_need(offset, length);
        let header = format!("{}\n", Reply::Data { length });
        let stats = &self.shared.stats;
        stats.active_transfers.fetch_add(1, Ordering::Relaxed);
        let result = send_range(
            self.stream,
            header.as_bytes(),
            &file.file,
            offset,
            length,
            &self.port.bytes_sent,
        );
        stats.active_transfers.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.sent += length;
                *self.files.entry(name).or_default() += length;
                Ok(Next::Continue)
            }
            Err(e) => {
                info!(
                    "{}: {name}: transfer of {offset}+{length} cut: {e}",
                    self.peer
                );
                Ok(Next::Close)
            }
        }
    }
}

fn into_io(e: ProtocolError) -> std::io::Error {
    match e {
        ProtocolError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}
