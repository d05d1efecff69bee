//! A connection's byte stream: TLS 1.3 by default, plain TCP with
//! `--plaintext`, and never one for the other.
//!
//! A new connection's first byte says what its client speaks: a TLS
//! record (0x16, a ClientHello) or a text line. A TLS server that meets a
//! text line answers, in plain text, `ERROR TLS_REQUIRED ...` and closes;
//! a plaintext server that meets a ClientHello answers `ERROR
//! PLAINTEXT_ONLY ...` and closes (the client shows that line instead of
//! a handshake failure). Nothing falls back.
//!
//! Reads for request lines go through [`Io::try_read`], which never
//! waits: the caller waits for the socket first, so that a connection
//! waiting for a request holds no buffer (for TLS, a read that finds only
//! part of a record returns "would block", and the wait begins again).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use fastdl_protocol::{ErrorCode, Reply};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How new connections are set up.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

/// A connection's stream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no first byte within {} s", .0.as_secs())]
    Idle(Duration),
    #[error("TLS handshake not complete within {} s", .0.as_secs())]
    Slow(Duration),
    #[error("client speaks plain text to a TLS port; told so")]
    PlainToTls,
    #[error("client began a TLS handshake on a plaintext port; told so")]
    TlsToPlain,
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Sets up a new connection whose first byte is `first` (see
    /// [`first_byte`]): for TLS, the handshake within `per_line`. A client
    /// of the wrong kind gets one plain-text line that says so.
    pub async fn setup(
        &self,
        stream: TcpStream,
        first: u8,
        per_line: Duration,
    ) -> Result<Io, SetupError> {
        let starts_tls = first == fastdl_tls::TLS_HANDSHAKE_BYTE;
        match (self, starts_tls) {
            (Transport::Plain, false) => Ok(Io::Plain(stream)),
            (Transport::Tls(acceptor), true) => {
                let handshake = acceptor.accept(stream);
                match tokio::time::timeout(per_line, handshake).await {
                    Err(_) => Err(SetupError::Slow(per_line)),
                    Ok(Err(e)) => Err(SetupError::Handshake(e)),
                    Ok(Ok(tls)) => Ok(Io::Tls(Box::new(tls))),
                }
            }
            (Transport::Tls(_), false) => {
                let why = "this server speaks fastdl over TLS (protocol 2); update the client, \
                           or run both ends with --plaintext on a trusted link";
                say(&stream, &Reply::error(ErrorCode::TlsRequired, why)).await;
                Err(SetupError::PlainToTls)
            }
            (Transport::Plain, true) => {
                let why = "this server runs without TLS (--plaintext); run the client with \
                           --plaintext too, on a trusted link only";
                say(&stream, &Reply::error(ErrorCode::PlaintextOnly, why)).await;
                Err(SetupError::TlsToPlain)
            }
        }
    }

    /// Sets up a new connection in one go: its first byte within `idle`,
    /// then [`Self::setup`].
    pub async fn accept(
        &self,
        stream: TcpStream,
        idle: Duration,
        per_line: Duration,
    ) -> Result<Io, SetupError> {
        let first = first_byte(&stream, idle).await?;
        self.setup(stream, first, per_line).await
    }
}

/// Waits (up to `idle`) for a new connection's first byte, and peeks at
/// it: what the client speaks.
pub async fn first_byte(stream: &TcpStream, idle: Duration) -> Result<u8, SetupError> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(idle, stream.peek(&mut first)).await;
    match peeked.map_err(|_| SetupError::Idle(idle))?? {
        0 => Err(SetupError::Io(io::ErrorKind::UnexpectedEof.into())),
        _ => Ok(first[0]),
    }
}

/// One plain-text line (to a client of the wrong kind, or a plaintext one
/// closed before its first request), then close.
pub async fn say(stream: &TcpStream, reply: &Reply) {
    let line = fastdl_protocol::line::framed(reply);
    let deadline = Instant::now() + Duration::from_millis(500);
    let _ = tokio::time::timeout_at(deadline.into(), async {
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            stream.writable().await?;
            match stream.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    super::listener::linger_close(stream, Duration::from_millis(500)).await;
}

impl Io {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(stream) => stream,
            Io::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Reads what is there without waiting: `WouldBlock` if nothing (for
    /// TLS: no whole record) is.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(stream) => stream.try_read(buf),
            Io::Tls(tls) => {
                // A poll that registers no one: the caller waits on the
                // socket itself when this would block.
                let mut cx = Context::from_waker(Waker::noop());
                let mut read = ReadBuf::new(buf);
                match Pin::new(tls.as_mut()).poll_read(&mut cx, &mut read) {
                    Poll::Ready(Ok(())) => Ok(read.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

/// The TLS acceptor for `config`.
pub fn tls(config: Arc<rustls::ServerConfig>) -> Transport {
    Transport::Tls(TlsAcceptor::from(config))
}
