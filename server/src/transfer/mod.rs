//! Sending bytes to a peer: replies, ranges of listed files (with
//! `sendfile`, zero copy), and the N-stream plans, every send held to the
//! progress deadline of [`pace`], and the socket settings for bulk sends.
//!
//! Sends run in the event loop on non-blocking sockets: a send waits for
//! the socket to take more, never a thread. With the page cache warm (the
//! common case for a file being served), `sendfile` costs the loop no
//! more than the copy inside the kernel. Over TLS the file is read in
//! 256 KiB slices and sealed by rustls (no kernel TLS on this machine).

pub mod pace;
pub mod plan;

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use std::os::unix::fs::FileExt;

use rustix::net::SendFlags;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use self::pace::{queued, SendPace, SpeedFloor, TooSlow};
use crate::net::transport::Io;

/// Send buffer asked for on data connections where that beats autotuning.
const SEND_BUFFER: usize = 8 << 20;

/// Prepares a connection that carries file data: no Nagle delay for the
/// reply lines, and the largest send buffer the system allows when that is
/// more than autotuning would reach. A connection can only have as many
/// bytes in flight as its send buffer holds, and autotuning stops at
/// `net.ipv4.tcp_wmem`'s maximum (4 MiB by default): about 80 MB/s at a
/// 50 ms round trip. An explicit size switches autotuning off and is capped
/// at twice `net.core.wmem_max`, so it is only asked for where the
/// administrator raised `wmem_max` (on a stock kernel, 212992, it would
/// make things worse).
pub fn tune_for_bulk(stream: &impl std::os::fd::AsFd) {
    let _ = rustix::net::sockopt::set_tcp_nodelay(stream, true);
    if let Some(size) = bulk_send_buffer() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(stream, size);
    }
}

/// [`SEND_BUFFER`], if this network namespace grants more with it than
/// autotuning reaches; read once.
fn bulk_send_buffer() -> Option<usize> {
    static SIZE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        let last_number = |path: &str| -> Option<usize> {
            std::fs::read_to_string(path)
                .ok()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        };
        let wmem_max = last_number("/proc/sys/net/core/wmem_max")?;
        let autotune_max = last_number("/proc/sys/net/ipv4/tcp_wmem")?;
        worth_asking(SEND_BUFFER, wmem_max, autotune_max).then_some(SEND_BUFFER)
    })
}

/// Whether asking for `ask` bytes of send buffer (granted: twice the ask,
/// capped at twice `wmem_max`) gives more than autotuning's `autotune_max`.
fn worth_asking(ask: usize, wmem_max: usize, autotune_max: usize) -> bool {
    2 * ask.min(wmem_max) > autotune_max
}

/// Why a send ended early. After any of these the connection is unusable
/// (its peer was promised bytes it will not get).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    TooSlow(#[from] TooSlow),
    #[error("file shrank while it was being sent")]
    Shrank,
}

/// Waits until `stream` can take more bytes, judging the progress
/// deadline at each window's end meanwhile.
async fn writable(stream: &TcpStream, pace: &mut SendPace) -> Result<(), SendError> {
    loop {
        let ready = tokio::time::timeout_at(pace.deadline().into(), stream.writable()).await;
        let now = Instant::now();
        if now >= pace.deadline() {
            pace.judge(now, queued(stream))?;
        }
        if let Ok(result) = ready {
            return Ok(result?);
        }
    }
}

/// Writes all of `bytes` (a reply) to `io`, held to `floor`.
pub async fn write_all(io: &mut Io, bytes: &[u8], floor: SpeedFloor) -> Result<(), SendError> {
    let mut pace = pace(io, floor);
    match io {
        Io::Plain(stream) => send_bytes(stream, bytes, SendFlags::empty(), &mut pace).await,
        Io::Tls(tls) => {
            tls_write_all(tls, bytes, &mut pace).await?;
            tls_flush(tls, &mut pace).await
        }
    }
}

async fn send_bytes(
    stream: &TcpStream,
    mut bytes: &[u8],
    flags: SendFlags,
    pace: &mut SendPace,
) -> Result<(), SendError> {
    while !bytes.is_empty() {
        writable(stream, pace).await?;
        match stream.try_io(Interest::WRITABLE, || {
            rustix::net::send(stream, bytes, flags | SendFlags::NOSIGNAL).map_err(io::Error::from)
        }) {
            Ok(n) => {
                bytes = &bytes[n..];
                pace.wrote(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Hands `bytes` to TLS, held to `pace`: each wait for TLS to take more
/// ends at the window's end, when progress is judged.
async fn tls_write_all(
    tls: &mut TlsStream<TcpStream>,
    mut bytes: &[u8],
    pace: &mut SendPace,
) -> Result<(), SendError> {
    while !bytes.is_empty() {
        let written = tokio::time::timeout_at(pace.deadline().into(), tls.write(bytes)).await;
        judge_if_due(tls.get_ref().0, pace)?;
        if let Ok(n) = written {
            let n = n?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            bytes = &bytes[n..];
            pace.wrote(n);
        }
    }
    Ok(())
}

/// Writes out what TLS still holds, held to `pace`.
async fn tls_flush(tls: &mut TlsStream<TcpStream>, pace: &mut SendPace) -> Result<(), SendError> {
    loop {
        let flushed = tokio::time::timeout_at(pace.deadline().into(), tls.flush()).await;
        judge_if_due(tls.get_ref().0, pace)?;
        if let Ok(result) = flushed {
            return Ok(result?);
        }
    }
}

fn judge_if_due(stream: &TcpStream, pace: &mut SendPace) -> Result<(), TooSlow> {
    let now = Instant::now();
    if now >= pace.deadline() {
        pace.judge(now, queued(stream))?;
    }
    Ok(())
}

/// The progress deadline of a send starting now on `io`.
pub fn pace(io: &Io, floor: SpeedFloor) -> SendPace {
    SendPace::start(floor, Instant::now(), queued(io.tcp()))
}

/// Bytes read from a file at a time on the TLS path.
const TLS_READ: usize = 256 << 10;

/// Sends `header` and then `length` bytes of `file` from `offset`, held to
/// `pace` (one pace may cover several ranges: a plan stream's chunks), and
/// advances `sent` as bytes leave. In plain text, with `sendfile` (no copy
/// through this process; the header goes out with `MSG_MORE` to share a
/// segment with the data); over TLS, read into `buf` and sealed in
/// records.
pub async fn send_range(
    io: &mut Io,
    header: &[u8],
    file: &File,
    range: (u64, u64),
    pace: &mut SendPace,
    sent: &AtomicU64,
) -> Result<(), SendError> {
    match io {
        Io::Plain(stream) => sendfile_range(stream, header, file, range, pace, sent).await,
        Io::Tls(tls) => tls_range(tls, header, file, range, pace, sent).await,
    }
}

async fn sendfile_range(
    stream: &TcpStream,
    header: &[u8],
    file: &File,
    (offset, length): (u64, u64),
    pace: &mut SendPace,
    sent: &AtomicU64,
) -> Result<(), SendError> {
    let more = if length > 0 {
        SendFlags::MORE
    } else {
        SendFlags::empty()
    };
    send_bytes(stream, header, more, pace).await?;
    let mut pos = offset;
    let end = offset + length;
    while pos < end {
        writable(stream, pace).await?;
        let want = (end - pos).min(STEP) as usize;
        match stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut pos), want).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(SendError::Shrank),
            Ok(n) => {
                pace.wrote(n);
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn tls_range(
    tls: &mut TlsStream<TcpStream>,
    header: &[u8],
    file: &File,
    (offset, length): (u64, u64),
    pace: &mut SendPace,
    sent: &AtomicU64,
) -> Result<(), SendError> {
    tls_write_all(tls, header, pace).await?;
    let mut buf = vec![0u8; TLS_READ.min(length as usize)];
    let mut pos = offset;
    let end = offset + length;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let chunk = &mut buf[..want];
        file.read_exact_at(chunk, pos).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SendError::Shrank,
            _ => SendError::Io(e),
        })?;
        tls_write_all(tls, chunk, pace).await?;
        pos += want as u64;
        sent.fetch_add(want as u64, Ordering::Relaxed);
    }
    tls_flush(tls, pace).await
}

/// Most bytes one `sendfile` call is asked for.
const STEP: u64 = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_buffer_is_asked_for_only_where_it_beats_autotuning() {
        // Stock kernel: wmem_max 212992 would cap a connection at 416 KiB.
        assert!(!worth_asking(SEND_BUFFER, 212_992, 4 << 20));
        // wmem_max raised to 4 MiB: 8 MiB granted, autotuning stops at 4.
        assert!(worth_asking(SEND_BUFFER, 4 << 20, 4 << 20));
        // Autotuning already allowed as much.
        assert!(!worth_asking(SEND_BUFFER, 16 << 20, 16 << 20));
    }
}
