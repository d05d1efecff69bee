//! One control connection to a server: connect, version handshake (sent
//! with the connect, its answer checked before the first reply), and the
//! requests the client makes (list, per-piece digests, ranged reads).
//!
//! Everything read from the server is bounded: reply lines by
//! `MAX_REPLY_LINE`, data by the length the client itself asked for.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use fastdl_protocol::line::expect_line;
use fastdl_protocol::listing::read_pieces;
use fastdl_protocol::{
    Digest, ErrorCode, Listing, ProtocolError, Reply, Request, MAX_REPLY_LINE, VERSION,
};

/// How long to wait for a TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may stay silent in the middle of a reply.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection broke or the server spoke nonsense: reconnect and retry.
    #[error("{0}")]
    Connection(#[from] ProtocolError),
    /// The server does not list (or serve) the name.
    #[error("server refused: {0}")]
    WrongInput(String),
    /// The server answered with an error line.
    #[error("server error {}: {message}", code.as_str())]
    Server { code: ErrorCode, message: String },
}

impl From<std::io::Error> for RequestError {
    fn from(e: std::io::Error) -> Self {
        RequestError::Connection(ProtocolError::Io(e))
    }
}

/// A connected control connection. The version handshake is pipelined:
/// `FASTDL` goes out with the connect, and its answer is checked before
/// the first reply is read, so a new connection costs one round trip
/// (the TCP handshake) before its first request is on the wire.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    peer: SocketAddr,
    greeted: bool,
    rtt: Duration,
}

/// Resolves `server` (HOST:PORT) to its first address.
pub fn resolve(server: &str) -> std::io::Result<SocketAddr> {
    server
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"))
}

impl Connection {
    /// Connects and sends the version handshake (its answer is checked with
    /// the first reply).
    pub fn open(addr: SocketAddr) -> Result<Connection, RequestError> {
        let started = Instant::now();
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        let rtt = started.elapsed();
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut conn = Connection {
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
            peer: addr,
            greeted: false,
            rtt,
        };
        conn.send(&Request::Hello { version: VERSION })?;
        Ok(conn)
    }

    /// The round-trip time seen when connecting (the TCP handshake).
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// Waits for the answer to the handshake now (a connection opened
    /// ahead of need, before it joins the pool: a server that refused it,
    /// busy or on another version, is found out here and not by its user).
    pub fn greet(&mut self) -> Result<(), RequestError> {
        if !self.greeted {
            match self.read_reply()? {
                Reply::Hello { version } if version == VERSION => self.greeted = true,
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket, for registering with the shutdown registry.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Sends one request line.
    pub fn send(&mut self, request: &Request) -> Result<(), RequestError> {
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Reads one reply line; error replies become errors.
    pub fn reply(&mut self) -> Result<Reply, RequestError> {
        self.greet()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Reply, RequestError> {
        let line = expect_line(&mut self.reader, MAX_REPLY_LINE)?;
        match Reply::parse(&line)? {
            Reply::WrongInput { reason } => Err(RequestError::WrongInput(reason)),
            Reply::Error { code, message } => Err(RequestError::Server { code, message }),
            reply => Ok(reply),
        }
    }

    /// Fetches the published list.
    pub fn list(&mut self) -> Result<Listing, RequestError> {
        self.send(&Request::List)?;
        match self.reply()? {
            Reply::List { count } => Ok(Listing::read_body(&mut self.reader, count)?),
            other => Err(unexpected(other)),
        }
    }

    /// Fetches the per-piece digests of `name`, which must have `size` bytes.
    pub fn pieces(&mut self, name: &str, size: u64) -> Result<Vec<Digest>, RequestError> {
        self.ask_pieces(name)?;
        self.pieces_reply(name, size)
    }

    /// Sends `PIECES name`; the answer is read by [`Self::pieces_reply`]
    /// (other requests may be sent in between).
    pub fn ask_pieces(&mut self, name: &str) -> Result<(), RequestError> {
        self.send(&Request::Pieces {
            name: name.to_owned(),
        })
    }

    /// Reads the answer to `PIECES name` for a file of `size` bytes.
    pub fn pieces_reply(&mut self, name: &str, size: u64) -> Result<Vec<Digest>, RequestError> {
        match self.reply()? {
            Reply::Pieces {
                size: s,
                piece_size,
                count,
            } if s == size
                && piece_size == fastdl_protocol::PIECE_SIZE
                && count == fastdl_protocol::digest::piece_count(size) =>
            {
                Ok(read_pieces(&mut self.reader, count)?)
            }
            Reply::Pieces { size: s, .. } if s != size => Err(RequestError::Server {
                code: ErrorCode::Changed,
                message: format!("{name} now has {s} bytes, listed with {size}"),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Waits for the `DATA <length>` header of a ranged read and checks the
    /// length is the one asked for. The bytes follow through [`Self::data`].
    pub fn data_header(&mut self, expected: u64) -> Result<(), RequestError> {
        match self.reply()? {
            Reply::Data { length } if length == expected => Ok(()),
            Reply::Data { length } => Err(RequestError::Connection(ProtocolError::Unexpected(
                format!("DATA {length} when {expected} bytes were asked for"),
            ))),
            other => Err(unexpected(other)),
        }
    }

    /// The reader positioned at the data bytes.
    pub fn data(&mut self) -> &mut impl Read {
        &mut self.reader
    }
}

fn unexpected(reply: Reply) -> RequestError {
    RequestError::Connection(ProtocolError::Unexpected(reply.to_string()))
}
