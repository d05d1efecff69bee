//! N-stream plans (seed 000), done safely.
//!
//! For `PLAN <name>` the server picks N from the file size, binds N
//! listening ports (free ports from the OS) *before* it answers, and only
//! then sends `ACCEPTED N M PORT_1 ... PORT_N TOKEN`. Each port accepts one
//! connection, from the control connection's peer address only, that
//! presents the plan's one-time random token (`JOIN <token>`); the port
//! closes as soon as its stream joined, and every port closes after
//! [`JOIN_TIMEOUT`]. Chunk K goes out on stream K mod N, framed by a
//! 12-byte binary header, with sendfile. At most `--max-plans` plans are
//! open at once; past that a request gets `ERROR BUSY`.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastdl_protocol::digest::piece_range;
use fastdl_protocol::line::read_line;
use fastdl_protocol::plan::{chunk_count, streams_for_size, FrameHeader};
use fastdl_protocol::{ErrorCode, Reply, Request};
use fastdl_support::shutdown::Shutdown;
use log::{debug, info, warn};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::pacing::PacedReader;
use crate::status::Stats;
use crate::transfer::{self, send_range};

/// How long a plan's ports wait for their streams to join.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a joining connection may take to send its `JOIN` line.
const JOIN_LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections of one plan being checked at once.
const MAX_ADMITTING: usize = 16;

/// Settings for plans.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub max_plans: usize,
    /// Bytes to the size table's megabyte (1,000,000; smaller in tests).
    pub unit: u64,
    pub write_timeout: Duration,
}

/// The open plans of the server.
pub struct Plans {
    config: PlanConfig,
    open: AtomicUsize,
}

/// Holds one plan slot until dropped.
struct Slot(Arc<Plans>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a plan needs from the session that asked for it.
pub struct PlanRequest<'a> {
    pub name: &'a str,
    pub file: File,
    pub size: u64,
    pub control: &'a TcpStream,
    pub peer: SocketAddr,
    pub shutdown: Arc<Shutdown>,
    pub stats: Arc<Stats>,
    /// Index of the listening port the plan was asked for on (for the status report).
    pub port: usize,
}

impl Plans {
    pub fn new(config: PlanConfig) -> Plans {
        Plans {
            config,
            open: AtomicUsize::new(0),
        }
    }

    fn acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut current = self.open.load(Ordering::SeqCst);
        loop {
            if current >= self.config.max_plans {
                return None;
            }
            match self.open.compare_exchange(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot(Arc::clone(self))),
                Err(now) => current = now,
            }
        }
    }

    /// Sets up a plan and returns the reply for the control connection.
    pub fn offer(self: &Arc<Self>, request: PlanRequest<'_>) -> Reply {
        let Some(slot) = self.acquire() else {
            let msg = format!(
                "too many open plans (limit {}); try again later",
                self.config.max_plans
            );
            return Reply::error(ErrorCode::Busy, msg);
        };
        let streams = streams_for_size(request.size, self.config.unit);
        let chunks = chunk_count(request.size);
        let local_ip = match request.control.local_addr() {
            Ok(addr) => addr.ip(),
            Err(e) => return Reply::error(ErrorCode::Io, format!("cannot set up a plan: {e}")),
        };
        let mut listeners = Vec::with_capacity(streams as usize);
        for _ in 0..streams {
            match TcpListener::bind((local_ip, 0)).and_then(|l| l.set_nonblocking(true).map(|_| l))
            {
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
        let plan = Plan {
            name: request.name.to_owned(),
            file: request.file,
            size: request.size,
            streams,
            chunks,
            token,
            peer_ip: request.peer.ip(),
            shutdown: request.shutdown,
            stats: request.stats,
            port: request.port,
            write_timeout: self.config.write_timeout,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("plan {}", request.peer))
            .spawn(move || {
                let _slot = slot;
                plan.run(listeners);
            });
        match spawned {
            Ok(_) => reply,
            Err(e) => Reply::error(ErrorCode::Io, format!("cannot start the plan: {e}")),
        }
    }
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
    shutdown: Arc<Shutdown>,
    stats: Arc<Stats>,
    port: usize,
    write_timeout: Duration,
}

impl Plan {
    fn run(&self, listeners: Vec<TcpListener>) {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut open: Vec<Option<TcpListener>> = listeners.into_iter().map(Some).collect();
        let joined: Vec<AtomicBool> = (0..open.len()).map(|_| AtomicBool::new(false)).collect();
        let admitting = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            while open.iter().any(Option::is_some) && !self.shutdown.is_requested() {
                // A port closes as soon as its stream joined.
                for (slot, done) in open.iter_mut().zip(&joined) {
                    if done.load(Ordering::SeqCst) {
                        *slot = None;
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let missing: Vec<usize> =
                        (0..open.len()).filter(|&i| open[i].is_some()).collect();
                    info!(
                        "plan for {}: streams {missing:?} never joined; ports closed",
                        self.name
                    );
                    break;
                }
                let ready = wait_ready(&open, left.min(Duration::from_millis(50)));
                for index in ready {
                    let Some(listener) = &open[index] else {
                        continue;
                    };
                    let Ok((stream, addr)) = listener.accept() else {
                        continue;
                    };
                    // Each candidate is checked on its own thread, so one that
                    // trickles its JOIN line cannot hold up the other ports.
                    if admitting.load(Ordering::SeqCst) >= MAX_ADMITTING {
                        warn!(
                            "plan for {}: too many connections waiting to join; refused {addr}",
                            self.name
                        );
                        continue;
                    }
                    admitting.fetch_add(1, Ordering::SeqCst);
                    let (joined, admitting) = (&joined, &admitting);
                    scope.spawn(move || {
                        let admitted = self.admit(&stream, addr, index, &joined[index]);
                        admitting.fetch_sub(1, Ordering::SeqCst);
                        if admitted {
                            self.send_stream(stream, index);
                        }
                    });
                }
            }
            open.clear();
        });
        debug!("plan for {} finished", self.name);
    }

    /// Checks a connection to stream `index`'s port: right address, right token.
    fn admit(
        &self,
        stream: &TcpStream,
        addr: SocketAddr,
        index: usize,
        joined: &AtomicBool,
    ) -> bool {
        if addr.ip() != self.peer_ip {
            warn!(
                "plan for {}: refused a connection from {addr} (plan belongs to {})",
                self.name, self.peer_ip
            );
            return false;
        }
        let setup = stream
            .set_nonblocking(false)
            .and_then(|_| stream.set_read_timeout(Some(JOIN_LINE_TIMEOUT)))
            .and_then(|_| stream.set_write_timeout(Some(self.write_timeout)));
        if setup.is_err() {
            return false;
        }
        let Ok(read_half) = stream.try_clone() else {
            return false;
        };
        // The whole JOIN line must arrive within JOIN_LINE_TIMEOUT.
        let paced = PacedReader::new(read_half, JOIN_LINE_TIMEOUT, JOIN_LINE_TIMEOUT);
        let mut reader = BufReader::with_capacity(256, paced);
        let token_ok = match read_line(&mut reader, 256) {
            Ok(Some(line)) => {
                matches!(Request::parse(&line), Ok(Request::Join { token }) if same_token(&token, &self.token))
            }
            _ => false,
        };
        let mut writer = stream;
        if token_ok && joined.swap(true, Ordering::SeqCst) {
            // Another connection won this stream a moment earlier.
            return false;
        }
        if !token_ok {
            warn!(
                "plan for {}: refused a connection from {addr} to stream {index}: bad token",
                self.name
            );
            let _ =
                writer.write_all(format!("{}\n", Reply::wrong_input("bad plan token")).as_bytes());
            return false;
        }
        let mine = chunks_of_stream(self.chunks, self.streams, index as u32);
        let header = Reply::Stream {
            index: index as u32,
            chunks: mine,
        };
        writer.write_all(format!("{header}\n").as_bytes()).is_ok()
    }

    /// Sends chunks index, index + N, index + 2N, ... on one stream.
    fn send_stream(&self, stream: TcpStream, index: usize) {
        let _registered = self.shutdown.register(&stream);
        transfer::tune_for_bulk(&stream);
        let stats = &self.stats;
        stats.active_transfers.fetch_add(1, Ordering::Relaxed);
        let mut chunk = index as u64;
        while chunk < self.chunks && !self.shutdown.is_requested() {
            let (offset, length) = piece_range(self.size, chunk);
            let header = FrameHeader {
                chunk,
                length: length as u32,
            }
            .encode();
            if let Err(e) = send_range(
                &stream,
                &header,
                &self.file,
                offset,
                length,
                &stats.ports[self.port].bytes_sent,
            ) {
                info!(
                    "plan for {}: stream {index} cut at chunk {chunk}: {e}",
                    self.name
                );
                break;
            }
            chunk += self.streams as u64;
        }
        stats.active_transfers.fetch_sub(1, Ordering::Relaxed);
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

/// Number of chunks stream `index` of `streams` carries.
pub fn chunks_of_stream(chunks: u64, streams: u32, index: u32) -> u64 {
    let (streams, index) = (streams as u64, index as u64);
    if index >= chunks {
        0
    } else {
        (chunks - index).div_ceil(streams)
    }
}

/// Indices of the open listeners that have a connection waiting.
fn wait_ready(open: &[Option<TcpListener>], timeout: Duration) -> Vec<usize> {
    let indices: Vec<usize> = (0..open.len()).filter(|&i| open[i].is_some()).collect();
    let mut fds: Vec<PollFd> = indices
        .iter()
        .filter_map(|&i| open[i].as_ref().map(|l| PollFd::new(l, PollFlags::IN)))
        .collect();
    let timeout = Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(n) if n > 0 => indices
            .iter()
            .zip(fds.iter())
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(&i, _)| i)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_spread_round_robin() {
        assert_eq!(chunks_of_stream(10, 3, 0), 4); // 0 3 6 9
        assert_eq!(chunks_of_stream(10, 3, 1), 3); // 1 4 7
        assert_eq!(chunks_of_stream(10, 3, 2), 3); // 2 5 8
        assert_eq!(chunks_of_stream(1, 8, 5), 0);
        assert_eq!(chunks_of_stream(0, 1, 0), 0);
        let total: u64 = (0..7).map(|i| chunks_of_stream(1000, 7, i)).sum();
        assert_eq!(total, 1000);
    }

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
}
