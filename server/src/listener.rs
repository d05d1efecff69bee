//! Accepting connections on every listening port, within the connection
//! limits, and starting one session thread per accepted connection.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fastdl_protocol::{ErrorCode, Reply};
use log::{debug, info, warn};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::limits::ConnectionLimits;
use crate::session::{serve, Shared};

/// Stack size of a session thread: sessions keep little on the stack.
const SESSION_STACK: usize = 256 * 1024;

/// Binds every `(ip, port)`; port 0 picks a free port.
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|addr| {
            let listener =
                TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect()
}

/// Accepts until shutdown, then waits (up to `drain`) for sessions to end.
pub fn run(
    listeners: Vec<TcpListener>,
    limits: Arc<ConnectionLimits>,
    shared: Arc<Shared>,
    drain: Duration,
) {
    while !shared.shutdown.is_requested() {
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| PollFd::new(l, PollFlags::IN))
            .collect();
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                warn!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        for (index, listener) in listeners.iter().enumerate() {
            if ready[index] {
                accept_ready(listener, index, &limits, &shared);
            }
        }
    }
    drop(listeners);
    let deadline = Instant::now() + drain;
    while shared.shutdown.open_connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accept_ready(
    listener: &TcpListener,
    index: usize,
    limits: &Arc<ConnectionLimits>,
    shared: &Arc<Shared>,
) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(pair) => pair,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
                return;
            }
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let slot = match limits.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                debug!("{peer}: refused: {refusal}");
                refuse(stream, &refusal.to_string());
                continue;
            }
        };
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("session {peer}"))
            .stack_size(SESSION_STACK)
            .spawn(move || {
                let _slot = slot;
                let port = &shared.stats.ports[index];
                port.accepted.fetch_add(1, Ordering::Relaxed);
                port.active.fetch_add(1, Ordering::Relaxed);
                let _registered = shared.shutdown.register(&stream);
                info!("{peer}: connected on port {}", port.port);
                serve(stream, peer, index, &shared);
                port.active.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            warn!("{peer}: cannot start a session thread: {e}");
        }
    }
}

fn refuse(mut stream: TcpStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let line = format!("{}\n", Reply::error(ErrorCode::Busy, why));
    let _ = stream.write_all(line.as_bytes());
    let _ = rustix::net::shutdown(stream.as_fd(), rustix::net::Shutdown::Write);
}
