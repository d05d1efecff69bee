//! How the client reaches one server: TLS 1.3 with the server's identity
//! pinned (the default), or plain TCP with `--plaintext`, and never one
//! for the other.
//!
//! A TLS connection sends its ClientHello and looks at the first bytes
//! that come back before it lets rustls read them: a server that does not
//! speak TLS answers with a text line (`ERROR PLAINTEXT_ONLY ...` from a
//! fastdl server run with `--plaintext`, or whatever an older server says
//! to bytes it cannot read), and that line, not a handshake failure, is
//! what the user sees. A server whose identity is not the one pinned for
//! its address is refused (`fastdl_tls::pin`); nothing is read from it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastdl_tls::known::KnownServers;
use fastdl_tls::pin::{identity_changed, IdentityChanged, PinnedServer};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::pace::SpeedFloor;
use crate::shutdown::{Registration, Shutdown};

/// How long to wait for a TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket reads that feed TLS: whole records per read, not one syscall
/// per 16 KiB record.
const TLS_READ_BUFFER: usize = 256 << 10;

/// How connections to one server are made.
#[derive(Clone)]
pub enum Security {
    Plain,
    Tls {
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    },
}

impl Security {
    /// TLS for `server` (HOST:PORT as the user gave it), pinned in `known`.
    pub fn tls(server: &str, known: &Arc<KnownServers>) -> Security {
        let verifier = Arc::new(PinnedServer::new(server, Arc::clone(known)));
        let config = verifier.client_config(fastdl_tls::ALPN_FASTDL);
        let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::try_from("fastdl-server").expect("a valid name"));
        Security::Tls { config, name }
    }
}

/// Everything needed to open a connection to one server.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The server as the user named it (`--server`), for messages.
    pub shown: String,
    pub security: Security,
    /// The access token, sent with the version exchange.
    pub token: Option<String>,
    /// The progress deadline of every read.
    pub floor: SpeedFloor,
    /// Every connection is registered here from its TCP connect on, so
    /// that Ctrl-C cuts it whatever it is waiting for (a handshake, a
    /// list, a piece).
    pub shutdown: Arc<Shutdown>,
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server's identity is not the pinned one: refuse everything.
    #[error("{0}")]
    IdentityChanged(IdentityChanged),
    /// The server answered the TLS handshake with a text line.
    #[error("the server does not speak TLS here; it answered \"{0}\"")]
    NotTls(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

/// A connected stream to a server.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, Buffered>>),
}

/// A socket with a large read buffer under TLS: rustls asks for a record
/// at a time, the buffer reads many.
pub struct Buffered {
    reader: BufReader<TcpStream>,
}

impl Read for Buffered {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reader.get_mut().write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.reader.get_mut().write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.reader.get_mut().flush()
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An open stream, a second handle on its socket (to cut it from another
/// thread, or set its timeouts), the round trip seen connecting, and its
/// place in the shutdown's registry (for as long as it is open).
pub struct Connected {
    pub stream: Stream,
    pub socket: TcpStream,
    pub rtt: Duration,
    pub registered: Registration,
}

/// Connects to `endpoint`, with the TLS handshake done (and the identity
/// checked) when TLS is in use. Reads and writes time out after the
/// progress window.
pub fn connect(endpoint: &Endpoint) -> Result<Connected, SetupError> {
    connect_to(endpoint.addr, endpoint)
}

/// Like [`connect`], to another port of the same server (a plan's
/// streams), with the same identity check.
pub fn connect_to(addr: SocketAddr, endpoint: &Endpoint) -> Result<Connected, SetupError> {
    let started = Instant::now();
    let socket = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    let rtt = started.elapsed();
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(endpoint.floor.window))?;
    socket.set_write_timeout(Some(endpoint.floor.window))?;
    let handle = socket.try_clone()?;
    let registered = endpoint.shutdown.register(&socket);
    let stream = match &endpoint.security {
        Security::Plain => Stream::Plain(socket),
        Security::Tls { config, name } => Stream::Tls(Box::new(handshake(
            socket,
            Arc::clone(config),
            name.clone(),
        )?)),
    };
    Ok(Connected {
        stream,
        socket: handle,
        rtt,
        registered,
    })
}

fn handshake(
    socket: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<StreamOwned<ClientConnection, Buffered>, SetupError> {
    let mut conn = ClientConnection::new(config, name)
        .map_err(|e| SetupError::Handshake(io::Error::other(e)))?;
    let mut socket = Buffered {
        reader: BufReader::with_capacity(TLS_READ_BUFFER, socket),
    };
    while conn.wants_write() {
        conn.write_tls(&mut socket)?;
    }
    // A TLS record, or a line of text from a server that speaks none?
    let first = socket.reader.fill_buf()?;
    match first.first() {
        None => {
            return Err(SetupError::Handshake(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            )))
        }
        Some(&byte) if !fastdl_tls::is_tls_record_start(byte) => {
            let mut line = Vec::new();
            let _ = (&mut socket.reader).take(512).read_until(b'\n', &mut line);
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            return Err(SetupError::NotTls(
                fastdl_support::printable(&text).into_owned(),
            ));
        }
        Some(_) => {}
    }
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut socket) {
            let changed = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(identity_changed)
                .cloned();
            return Err(match changed {
                Some(changed) => SetupError::IdentityChanged(changed),
                None => SetupError::Handshake(e),
            });
        }
    }
    Ok(StreamOwned::new(conn, socket))
}
