//! N-stream plans, done safely.
//!
//! For `PLAN <name>` the server picks N from the file size, binds N
//! listening ports (free ports from the OS) *before* it answers, and only
//! then sends `ACCEPTED N M PORT_1 ... PORT_N TOKEN`. Each port accepts one
//! stream, from the control connection's peer address only, that presents
//! the plan's one-time random token (`JOIN <token>`); the port closes as
//! soon as its stream joined, and every port closes after
//! [`JOIN_TIMEOUT`]. Chunk K goes out on stream K mod N, framed by a
//! 12-byte binary header, with `sendfile`, each stream held to the
//! progress deadline (a joined stream that is never read is cut within a
//! window of its buffers filling).
//!
//! At most `--max-plans` plans are open at once, and at most
//! `--max-plans-per-client` from one address (issue 15, break 7: one
//! address joining every stream and never reading must not hold every
//! plan); past either a request gets `ERROR BUSY`. A plan is open from
//! `ACCEPTED` until its last stream ends.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastdl_protocol::digest::piece_range;
use fastdl_protocol::plan::{chunk_count, chunks_of_stream, streams_for_size, FrameHeader};
use fastdl_protocol::{ErrorCode, Reply, Request};
use log::{debug, info, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::pace::SpeedFloor;
use crate::net::conn::{Conn, LineTimeouts};
use crate::net::transport::{first_byte, say, Transport};
use crate::status::Stats;

/// How long a plan's ports wait for their streams to join.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a joining connection may take to send its `JOIN` line.
const JOIN_LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections of one port being checked at once.
const MAX_ADMITTING: usize = 16;

/// Settings for plans.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Most plans open at once.
    pub max_plans: usize,
    /// Most plans open at once for one client address.
    pub max_per_addr: usize,
    /// Bytes to the size table's megabyte (1,000,000; smaller in tests).
    pub unit: u64,
    /// The progress deadline of every stream.
    pub floor: SpeedFloor,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_addr: HashMap<IpAddr, usize>,
}

/// The open plans of the server.
pub struct Plans {
    config: PlanConfig,
    open: Mutex<Open>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Streams speak what the control connection speaks (TLS by default,
    /// with the server's identity).
    transport: Transport,
}

/// Holds one plan's slot until the plan's last task drops it.
struct Slot {
    plans: Arc<Plans>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.plans.lock();
        open.total -= 1;
        if let Some(n) = open.per_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.per_addr.remove(&self.addr);
            }
        }
    }
}

/// What a plan needs from the session that asked for it.
pub struct PlanRequest<'a> {
    pub name: &'a str,
    pub file: File,
    pub size: u64,
    /// The address the control connection came in on: the plan's ports
    /// listen there.
    pub local: IpAddr,
    pub peer: SocketAddr,
    /// Index of the listening port the plan was asked for on (for the status report).
    pub port: usize,
}

impl Plans {
    pub fn new(
        config: PlanConfig,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
        transport: Transport,
    ) -> Plans {
        Plans {
            config,
            open: Mutex::new(Open::default()),
            stats,
            shutdown,
            transport,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, String> {
        let mut open = self.lock();
        if open.total >= self.config.max_plans {
            return Err(format!(
                "too many open plans (limit {}); try again later",
                self.config.max_plans
            ));
        }
        let mine = open.per_addr.entry(addr).or_insert(0);
        if *mine >= self.config.max_per_addr {
            return Err(format!(
                "too many open plans from your address (limit {}); try again later",
                self.config.max_per_addr
            ));
        }
        *mine += 1;
        open.total += 1;
        Ok(Slot {
            plans: Arc::clone(self),
            addr,
        })
    }

    /// Sets up a plan and returns the reply for the control connection.
    /// Must run inside the server's runtime (the ports are its sockets).
    pub fn offer(self: &Arc<Self>, request: PlanRequest<'_>) -> Reply {
        let slot = match self.acquire(request.peer.ip()) {
            Ok(slot) => slot,
            Err(why) => return Reply::error(ErrorCode::Busy, why),
        };
        let streams = streams_for_size(request.size, self.config.unit);
        let chunks = chunk_count(request.size);
        let mut listeners = Vec::with_capacity(streams as usize);
        for _ in 0..streams {
            match bind(request.local) {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    return Reply::error(ErrorCode::Io, format!("cannot open plan ports: {e}"))
                }
            }
        }
        let ports: Vec<u16> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.port())
            .collect();
        let token = match random_token() {
            Ok(token) => token,
            Err(e) => return Reply::error(ErrorCode::Io, format!("cannot make a plan token: {e}")),
        };
        let reply = Reply::Accepted {
            chunks,
            ports,
            token: token.clone(),
        };
        info!("{}: PLAN {}: {}", request.peer, request.name, reply);
        let plan = Arc::new(Plan {
            name: request.name.to_owned(),
            file: request.file,
            size: request.size,
            streams,
            chunks,
            token,
            peer_ip: request.peer.ip(),
            plans: Arc::clone(self),
            port: request.port,
            slot,
        });
        let deadline = Instant::now() + JOIN_TIMEOUT;
        for (index, listener) in listeners.into_iter().enumerate() {
            let plan = Arc::clone(&plan);
            tokio::spawn(async move { plan.accept(index, listener, deadline).await });
        }
        reply
    }
}

fn bind(ip: IpAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind((ip, 0))?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares two tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct Plan {
    name: String,
    file: File,
    size: u64,
    streams: u32,
    chunks: u64,
    token: String,
    peer_ip: IpAddr,
    plans: Arc<Plans>,
    port: usize,
    /// Released when the last task holding the plan ends.
    #[allow(dead_code)]
    slot: Slot,
}

impl Plan {
    /// Accepts candidates for stream `index` until one joins, the deadline
    /// passes, or the server shuts down; then the port closes.
    async fn accept(self: Arc<Self>, index: usize, listener: TcpListener, deadline: Instant) {
        let joined = CancellationToken::new();
        let won = Arc::new(AtomicBool::new(false));
        let admitting = Arc::new(AtomicUsize::new(0));
        loop {
            let accepted = tokio::select! {
                () = joined.cancelled() => return,
                () = self.plans.shutdown.cancelled() => return,
                accepted = tokio::time::timeout_at(deadline.into(), listener.accept()) => accepted,
            };
            let (stream, addr) = match accepted {
                Err(_) => {
                    info!(
                        "plan for {}: stream {index} never joined; port closed",
                        self.name
                    );
                    return;
                }
                Ok(Err(e)) => {
                    debug!("plan for {}: accept failed: {e}", self.name);
                    continue;
                }
                Ok(Ok(pair)) => pair,
            };
            if addr.ip() != self.peer_ip {
                warn!(
                    "plan for {}: refused a connection from {addr} (plan belongs to {})",
                    self.name, self.peer_ip
                );
                continue;
            }
            // Each candidate is checked on its own task, so one that
            // trickles its JOIN line cannot hold up the others.
            if admitting.load(Ordering::SeqCst) >= MAX_ADMITTING {
                warn!(
                    "plan for {}: too many connections waiting to join; refused {addr}",
                    self.name
                );
                continue;
            }
            admitting.fetch_add(1, Ordering::SeqCst);
            let (plan, joined, won, admitting) = (
                Arc::clone(&self),
                joined.clone(),
                Arc::clone(&won),
                Arc::clone(&admitting),
            );
            tokio::spawn(async move {
                let admitted = plan.admit(stream, addr, index, &won).await;
                admitting.fetch_sub(1, Ordering::SeqCst);
                if let Some(conn) = admitted {
                    joined.cancel();
                    plan.send_stream(conn, index).await;
                }
            });
        }
    }

    /// Checks a candidate for stream `index`: the right token, in time,
    /// and first. Returns the connection, its `STREAM` line sent.
    async fn admit(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        index: usize,
        won: &AtomicBool,
    ) -> Option<Conn> {
        let transport = &self.plans.transport;
        let first = tokio::select! {
            () = self.plans.shutdown.cancelled() => return None,
            first = first_byte(&stream, JOIN_LINE_TIMEOUT) => first,
        };
        let Ok(first) = first else {
            // Nothing came: in plain text the connection can still be told.
            if !transport.is_tls() {
                say(&stream, &Reply::wrong_input("bad plan token")).await;
            }
            return None;
        };
        let io = tokio::select! {
            () = self.plans.shutdown.cancelled() => return None,
            io = transport.setup(stream, first, JOIN_LINE_TIMEOUT) => io.ok()?,
        };
        let mut conn = Conn::new(io, addr);
        let timeouts = LineTimeouts {
            idle: JOIN_LINE_TIMEOUT,
            per_line: JOIN_LINE_TIMEOUT,
        };
        let line = tokio::select! {
            () = self.plans.shutdown.cancelled() => return None,
            line = conn.next_line(timeouts) => line,
        };
        let token_ok = matches!(
            line.as_deref().map(Request::parse),
            Ok(Ok(Request::Join { token })) if same_token(&token, &self.token)
        );
        let floor = self.plans.config.floor;
        if !token_ok {
            warn!(
                "plan for {}: refused a connection from {addr} to stream {index}: bad token",
                self.name
            );
            let refusal = format!("{}\n", Reply::wrong_input("bad plan token"));
            let _ = tokio::time::timeout(
                JOIN_LINE_TIMEOUT,
                super::write_all(&mut conn.io, refusal.as_bytes(), floor),
            )
            .await;
            return None;
        }
        if won.swap(true, Ordering::SeqCst) {
            // Another connection won this stream a moment earlier.
            return None;
        }
        let mine = chunks_of_stream(self.chunks, self.streams, index as u32);
        let header = format!(
            "{}\n",
            Reply::Stream {
                index: index as u32,
                chunks: mine,
            }
        );
        super::write_all(&mut conn.io, header.as_bytes(), floor)
            .await
            .ok()
            .map(|()| conn)
    }

    /// Sends chunks index, index + N, index + 2N, ... on one stream.
    async fn send_stream(&self, conn: Conn, index: usize) {
        let mut io = conn.io;
        super::tune_for_bulk(io.tcp());
        let stats = &self.plans.stats;
        stats.active_transfers.fetch_add(1, Ordering::Relaxed);
        let mut pace = super::pace(&io, self.plans.config.floor);
        let mut chunk = index as u64;
        while chunk < self.chunks {
            let (offset, length) = piece_range(self.size, chunk);
            let header = FrameHeader {
                chunk,
                length: length as u32,
            }
            .encode();
            let sent = tokio::select! {
                () = self.plans.shutdown.cancelled() => break,
                sent = super::send_range(
                    &mut io,
                    &header,
                    &self.file,
                    (offset, length),
                    &mut pace,
                    &stats.ports[self.port].bytes_sent,
                ) => sent,
            };
            if let Err(e) = sent {
                info!(
                    "plan for {}: stream {index} cut at chunk {chunk}: {e}",
                    self.name
                );
                break;
            }
            chunk += self.streams as u64;
        }
        stats.active_transfers.fetch_sub(1, Ordering::Relaxed);
        if let crate::net::transport::Io::Tls(tls) = &mut io {
            let _ = tokio::time::timeout(
                JOIN_LINE_TIMEOUT,
                tokio::io::AsyncWriteExt::shutdown(tls.as_mut()),
            )
            .await;
        }
        let _ = rustix::net::shutdown(io.tcp(), rustix::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_compared_exactly() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..31]));
    }

    #[test]
    fn one_address_cannot_take_every_plan() {
        let floor = SpeedFloor {
            min_rate: 1,
            window: Duration::from_secs(1),
        };
        let plans = Arc::new(Plans::new(
            PlanConfig {
                max_plans: 3,
                max_per_addr: 2,
                unit: 1,
                floor,
            },
            Arc::new(Stats::new(&[1])),
            CancellationToken::new(),
            Transport::Plain,
        ));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = plans.acquire(a).unwrap();
        let _second = plans.acquire(a).unwrap();
        assert!(plans.acquire(a).err().unwrap().contains("your address"));
        let _third = plans.acquire(b).unwrap();
        assert!(plans
            .acquire(b)
            .err()
            .unwrap()
            .contains("too many open plans"));
        drop(first);
        assert!(plans.acquire(a).is_ok());
    }
}
