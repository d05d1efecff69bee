//! One control connection to a server: connect, version handshake (sent
//! with the connect, its answer checked before the first reply), and the
//! requests the client makes (list, per-piece digests, ranged reads).
//! Requests may be sent ahead of need (see [`Ahead`]): a download takes
//! their answers over, or they are read and dropped before the next reply.
//!
//! Everything read from the server is bounded: reply lines by
//! `MAX_REPLY_LINE`, data by the length the client itself asked for, a
//! digest list by the listed size of its file (an answer to a request sent
//! ahead that nobody took over is never drained if it is a digest list:
//! the connection is closed instead), and time by the progress deadline
//! of [`crate::pace`].

use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use fastdl_protocol::line::expect_line;
use fastdl_protocol::listing::read_pieces;
use fastdl_protocol::{
    Digest, ErrorCode, Listing, ProtocolError, Reply, Request, MAX_REPLY_LINE, VERSION,
};

use crate::pace::Paced;
use crate::transport::{self, Endpoint, SetupError, Stream};
/// How long to wait for the server's reason after it closed the
/// connection under a request being sent (a refusal such as `ERROR BUSY`
/// precedes the close).
const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// Why a request to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No connection could be set up (refused, unreachable, not TLS,
    /// another identity).
    #[error("{0}")]
    Setup(#[from] SetupError),
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

impl RequestError {
    /// Whether no retry can help: the server's identity changed, it does
    /// not speak what we speak (TLS or not), or it refused our token.
    /// The run stops, saying why.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            RequestError::Setup(SetupError::IdentityChanged(_) | SetupError::NotTls(_))
                | RequestError::Server {
                    code: ErrorCode::Auth | ErrorCode::TlsRequired | ErrorCode::PlaintextOnly,
                    ..
                }
        )
    }

    /// The server is there but delivers below the progress deadline
    /// (trickling or stalled): worth no new connection in this attempt.
    pub fn is_too_slow(&self) -> bool {
        matches!(self, RequestError::Connection(ProtocolError::Io(e)) if crate::pace::is_too_slow(e))
    }
}

impl From<std::io::Error> for RequestError {
    fn from(e: std::io::Error) -> Self {
        RequestError::Connection(ProtocolError::Io(e))
    }
}

/// A request sent before anything needed it: `--once` asks for the first
/// file's digests and first pieces while the list is still on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ahead {
    Pieces {
        name: String,
    },
    Get {
        name: String,
        offset: u64,
        length: u64,
    },
}

impl Ahead {
    fn request(&self) -> Request {
        match self {
            Ahead::Pieces { name } => Request::Pieces { name: name.clone() },
            Ahead::Get {
                name,
                offset,
                length,
            } => Request::Get {
                offset: *offset,
                length: *length,
                name: name.clone(),
            },
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Ahead::Pieces { name } | Ahead::Get { name, .. } => name,
        }
    }
}

/// A connected control connection. The version handshake is pipelined:
/// `FASTDL` goes out with the connect, and its answer is checked before
/// the first reply is read, so a new connection costs one round trip
/// (the TCP handshake) before its first request is on the wire.
pub struct Connection {
    /// Everything read and written goes through here (plain TCP, or TLS).
    reader: BufReader<Paced<Stream>>,
    /// A second handle on the socket: to cut it from another thread
    /// (shutdown, the end game) and to set its timeouts.
    socket: TcpStream,
    peer: SocketAddr,
    /// Whether the answers to the version exchange (and to `AUTH`) have
    /// been read.
    greeted: bool,
    /// Whether `AUTH` went out with the version exchange.
    authenticating: bool,
    rtt: Duration,
    /// Requests sent ahead whose answers nobody has read or taken over.
    ahead: VecDeque<Ahead>,
}

/// Resolves `server` (HOST:PORT) to its first address.
pub fn resolve(server: &str) -> std::io::Result<SocketAddr> {
    server
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"))
}

impl Connection {
    /// Connects (TLS, with the server's identity checked, unless
    /// `--plaintext`) and sends the version exchange, and the access
    /// token if there is one; their answers are checked with the first
    /// reply. Reads are held to the endpoint's progress deadline.
    pub fn open(endpoint: &Endpoint) -> Result<Connection, RequestError> {
        let connected = transport::connect(endpoint)?;
        let mut conn = Connection {
            reader: BufReader::with_capacity(
                64 * 1024,
                Paced::new(connected.stream, endpoint.floor),
            ),
            socket: connected.socket,
            peer: endpoint.addr,
            greeted: false,
            authenticating: endpoint.token.is_some(),
            rtt: connected.rtt,
            ahead: VecDeque::new(),
        };
        conn.send(&Request::Hello { version: VERSION })?;
        if let Some(token) = &endpoint.token {
            conn.send(&Request::Auth {
                token: token.clone(),
            })?;
        }
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
                Reply::Hello { version } if version == VERSION => {}
                other => return Err(unexpected(other)),
            }
            if self.authenticating {
                match self.read_reply()? {
                    Reply::AuthOk => {}
                    other => return Err(unexpected(other)),
                }
            }
            self.greeted = true;
        }
        Ok(())
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket, for registering with the shutdown registry.
    pub fn stream(&self) -> &TcpStream {
        &self.socket
    }

    /// Sends one request line. If the server closed the connection under
    /// it, the reason it gave first (`ERROR BUSY ...`, say) is the error,
    /// not the broken pipe.
    pub fn send(&mut self, request: &Request) -> Result<(), RequestError> {
        let mut line = request.to_string();
        line.push('\n');
        let stream = self.reader.get_mut().get_mut();
        if let Err(e) = stream
            .write_all(line.as_bytes())
            .and_then(|()| stream.flush())
        {
            return Err(self.refusal().unwrap_or(RequestError::from(e)));
        }
        Ok(())
    }

    /// The error line a server sent before it closed the connection, if
    /// one is waiting (read with a short timeout: nothing else is).
    fn refusal(&mut self) -> Option<RequestError> {
        let _ = self.socket.set_read_timeout(Some(REFUSAL_WAIT));
        loop {
            match self.read_reply() {
                Err(e @ (RequestError::Server { .. } | RequestError::WrongInput(_))) => {
                    return Some(e)
                }
                // An answer to an earlier request: the refusal may follow.
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Sends a request ahead of need; its answer waits for
    /// [`Self::take_ahead`] or is dropped by [`Self::settle`].
    pub fn send_ahead(&mut self, ahead: Ahead) -> Result<(), RequestError> {
        self.send(&ahead.request())?;
        self.ahead.push_back(ahead);
        Ok(())
    }

    /// The requests sent ahead whose answers are still unread.
    pub fn ahead(&self) -> &VecDeque<Ahead> {
        &self.ahead
    }

    /// Takes over the requests sent ahead: the caller reads their answers,
    /// in order, before any other.
    pub fn take_ahead(&mut self) -> VecDeque<Ahead> {
        std::mem::take(&mut self.ahead)
    }

    /// Reads and drops the answers to requests sent ahead that nobody took
    /// over (a refusal is an answer too: the name may not be listed, or
    /// the file may be shorter than the range asked for). Data answers are
    /// bounded by the length asked for; a digest list is bounded only by
    /// a file size nobody checked here, so a connection owing one is not
    /// drained: the error makes its owner close it.
    pub fn settle(&mut self) -> Result<(), RequestError> {
        while let Some(ahead) = self.ahead.pop_front() {
            self.greet()?;
            let answer = match self.read_reply() {
                Err(RequestError::WrongInput(_) | RequestError::Server { .. }) => continue,
                answer => answer?,
            };
            match (ahead, answer) {
                (Ahead::Get { length, .. }, Reply::Data { length: got }) if got == length => {
                    self.skip_data(length)?;
                }
                (Ahead::Pieces { .. }, Reply::Pieces { .. }) => {
                    return Err(RequestError::Connection(ProtocolError::Unexpected(
                        "an unused digest list is not drained; closing the connection".into(),
                    )))
                }
                (_, other) => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    /// Reads one reply line; error replies become errors.
    pub fn reply(&mut self) -> Result<Reply, RequestError> {
        self.settle()?;
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

    /// Fetches the published list, sending `ahead` right after the request
    /// (their answers follow the list's).
    pub fn list(&mut self, ahead: Vec<Ahead>) -> Result<Listing, RequestError> {
        self.settle()?;
        self.send(&Request::List)?;
        for request in &ahead {
            self.send(&request.request())?;
        }
        self.greet()?;
        let listing = match self.read_reply()? {
            Reply::List { count } => Listing::read_body(&mut self.reader, count)?,
            other => return Err(unexpected(other)),
        };
        self.ahead.extend(ahead);
        Ok(listing)
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

    /// Reads and drops `length` data bytes (an answer nobody needs).
    pub fn skip_data(&mut self, length: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.reader).take(length), &mut std::io::sink())?;
        if copied < length {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

fn unexpected(reply: Reply) -> RequestError {
    RequestError::Connection(ProtocolError::Unexpected(reply.to_string()))
}
