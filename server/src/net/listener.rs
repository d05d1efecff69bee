//! Accepting connections on every listening port: each new connection is
//! admitted to the connection table (which may close a waiting one to make
//! room) and gets its own task, or is refused with one `ERROR BUSY` line
//! when only busy connections stand in the way.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fastdl_protocol::{ErrorCode, Reply};
use log::{debug, warn};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::limits::ClosingSlot;
use super::session::serve;
use super::table::{Refusal, Ticket};
use super::Ctx;
use crate::transfer;

/// How long a refused connection may take to receive its one line.
pub const REFUSAL_DEADLINE: Duration = Duration::from_millis(500);

/// Connections the kernel may hold for us before we accept them (capped
/// by `net.core.somaxconn`). std's default of 128 overflows when thousands
/// of clients connect at once: the kernel then drops their SYNs and each
/// waits a second to try again.
const BACKLOG: u32 = 4096;

/// Binds every `(ip, port)`; port 0 picks a free port. Must run inside
/// the runtime.
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|&addr| {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }?;
            socket.set_reuseaddr(true)?;
            socket
                .bind(addr)
                .and_then(|()| socket.listen(BACKLOG))
                .with_context(|| format!("cannot listen on {addr}"))
        })
        .collect()
}

/// Accepts fastdl connections on `listener` (the `index`-th port) until
/// shutdown; a refused one gets its `ERROR BUSY` line.
pub async fn run(ctx: Arc<Ctx>, listener: TcpListener, index: usize, shutdown: CancellationToken) {
    let refusals = Arc::clone(&ctx);
    accept_each(
        &ctx,
        &listener,
        &shutdown,
        |stream, peer, ticket| {
            tokio::spawn(serve(Arc::clone(&ctx), stream, peer, ticket, index));
        },
        |stream, refusal| {
            // Past the budget of closing sockets: closed at once.
            if let Some(slot) = refusals.closing.enter() {
                tokio::spawn(refuse(stream, refusal, Arc::clone(&refusals), slot));
            }
        },
    )
    .await;
}

/// The accept loop every listener shares (fastdl's and the HTTP face's):
/// accepts until shutdown, admits each connection to the one connection
/// table, and hands it to `admitted` with its ticket, or to `refused`
/// (counted and logged here).
pub async fn accept_each(
    ctx: &Ctx,
    listener: &TcpListener,
    shutdown: &CancellationToken,
    mut admitted: impl FnMut(TcpStream, SocketAddr, Ticket),
    mut refused: impl FnMut(TcpStream, Refusal),
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors: the connection that has waited
                // longest makes room (its socket closes within its last
                // word); in any case, back off briefly instead of spinning.
                let errno = e.raw_os_error().map(rustix::io::Errno::from_raw_os_error);
                let out_of_fds = matches!(
                    errno,
                    Some(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)
                );
                if out_of_fds && ctx.table.evict_longest_waiting() {
                    debug!(
                        "accept failed: {e}; closed the connection waiting longest to make room"
                    );
                } else {
                    warn!("accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        transfer::tune_for_bulk(&stream);
        match ctx.table.admit(peer.ip(), Instant::now()) {
            Ok((ticket, room)) => {
                if room.evicted > 0 {
                    debug!(
                        "{peer}: admitted; {} waiting connection(s) closed to make room",
                        room.evicted
                    );
                }
                admitted(stream, peer, ticket);
            }
            Err(refusal) => {
                ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
                debug!("{peer}: refused: {refusal}");
                refused(stream, refusal);
            }
        }
    }
}

/// Sends one `ERROR BUSY` line (over TLS when the server speaks it, so
/// that the client can read it) and closes, holding a place among the
/// closing sockets.
async fn refuse(stream: TcpStream, refusal: Refusal, ctx: Arc<Ctx>, _slot: ClosingSlot) {
    let line = format!("{}\n", Reply::error(ErrorCode::Busy, refusal.to_string()));
    let setup = ctx
        .transport
        .accept(stream, REFUSAL_DEADLINE, REFUSAL_DEADLINE);
    let Ok(mut io) = setup.await else {
        return;
    };
    let floor = ctx.config.send_floor;
    let _ = tokio::time::timeout(
        REFUSAL_DEADLINE,
        transfer::write_all(&mut io, line.as_bytes(), floor),
    )
    .await;
    linger_close(io.tcp(), REFUSAL_DEADLINE).await;
}

/// Closes our side after a last line, and reads (and drops) what the peer
/// still sends for up to `wait`: closing with its requests unread would
/// make the kernel answer with a reset, which can destroy our last line
/// in the peer's buffer before it reads it.
pub async fn linger_close(stream: &TcpStream, wait: Duration) {
    let _ = rustix::net::shutdown(stream, rustix::net::Shutdown::Write);
    let deadline = tokio::time::Instant::now() + wait;
    let mut drained = 0usize;
    while drained < 1 << 20 {
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return;
        }
        let mut scratch = [0u8; 4096];
        match stream.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
