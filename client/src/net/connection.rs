//! One connection to a fastdl server: connect (TLS unless `--plaintext`),
//! the version exchange and access token (sent with the connect, their
//! answers checked before the first reply), and the requests the client
//! makes: the list, per-piece digests, ranged reads. Requests may be
//! pipelined: their answers are read in the order they were sent.
//!
//! Everything read from the server is bounded: reply lines by
//! `MAX_REPLY_LINE`, data by the length the client itself asked for, a
//! digest list by the count the listed size gives (checked before a line
//! of it is read), and time by the progress deadline of [`super::pace`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use fastdl_protocol::digest::piece_count;
use fastdl_protocol::line::expect_line;
use fastdl_protocol::listing::read_pieces;
use fastdl_protocol::{
    Digest, ErrorCode, Listing, ProtocolError, Reply, Request, MAX_REPLY_LINE, PIECE_SIZE, VERSION,
};

use super::pace::Paced;
use super::transport::{self, Endpoint, SetupError, Stream};
use crate::shutdown::Registration;

/// How long to wait for the server's reason after it closed the
/// connection under a request being sent (a refusal such as `ERROR BUSY`
/// precedes the close).
const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// Why a request to a server failed: who said what.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No connection could be set up (refused, unreachable, not TLS,
    /// another identity).
    #[error("{0}")]
    Setup(#[from] SetupError),
    /// The connection broke, timed out, or the server spoke nonsense.
    #[error("{0}")]
    Connection(#[from] ProtocolError),
    /// The server said `WRONG_INPUT`: it does not list (or serve) the name.
    #[error("the server refused: {0}")]
    WrongInput(String),
    /// The server answered with an `ERROR` line.
    #[error("the server said {}: {message}", code.as_str())]
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
    /// (trickling or stalled).
    pub fn is_too_slow(&self) -> bool {
        match self {
            RequestError::Connection(ProtocolError::Io(e)) => super::pace::is_too_slow(e),
            _ => false,
        }
    }

    /// The server says the file is not what was listed any more (changed,
    /// gone): fetch the list again before another attempt.
    pub fn is_changed(&self) -> bool {
        matches!(
            self,
            RequestError::WrongInput(_)
                | RequestError::Server {
                    code: ErrorCode::Changed,
                    ..
                }
        )
    }

    /// The connection may be fine but the server is busy or closed it to
    /// make room: try again on a new connection, later.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            RequestError::Server {
                code: ErrorCode::Busy | ErrorCode::Timeout,
                ..
            }
        )
    }
}

impl From<std::io::Error> for RequestError {
    fn from(e: std::io::Error) -> Self {
        RequestError::Connection(ProtocolError::Io(e))
    }
}

/// A connection to a server. The version exchange is pipelined: `FASTDL`
/// (and `AUTH`) go out right after the TLS handshake, and their answers
/// are checked before the first reply is read.
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
    /// Cut by Ctrl-C from the moment it was opened.
    _registered: Registration,
}

/// Reads one reply line from a server; its error replies become errors.
pub fn read_reply(reader: &mut impl BufRead) -> Result<Reply, RequestError> {
    let line = expect_line(reader, MAX_REPLY_LINE)?;
    match Reply::parse(&line)? {
        Reply::WrongInput { reason } => Err(RequestError::WrongInput(reason)),
        Reply::Error { code, message } => Err(RequestError::Server { code, message }),
        reply => Ok(reply),
    }
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
            _registered: connected.registered,
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

    /// Waits for the answers to the version exchange (and `AUTH`) now: a
    /// server that refused the connection (busy, another version, a bad
    /// token) is found out here.
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

    /// The socket, for the shutdown registry and for cutting the
    /// connection from another thread.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Sends one request line. If the server closed the connection under
    /// it, the reason it gave first (`ERROR BUSY ...`, say) is the error,
    /// not the broken pipe.
    pub fn send(&mut self, request: &Request) -> Result<(), RequestError> {
        let line = fastdl_protocol::line::framed(request);
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

    /// Reads one reply line; error replies become errors.
    pub fn reply(&mut self) -> Result<Reply, RequestError> {
        self.greet()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Reply, RequestError> {
        read_reply(&mut self.reader)
    }

    /// Fetches the published list.
    pub fn list(&mut self) -> Result<Listing, RequestError> {
        self.send(&Request::List)?;
        match self.reply()? {
            Reply::List { count } => Ok(Listing::read_body(&mut self.reader, count)?),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `WATCH`: from now on the connection only brings the list's
    /// generation ([`Self::listed`]).
    pub fn watch(&mut self) -> Result<(), RequestError> {
        self.send(&Request::Watch)
    }

    /// The next `LISTED <generation>` of a watching connection.
    pub fn listed(&mut self) -> Result<u64, RequestError> {
        match self.reply()? {
            Reply::Listed { generation } => Ok(generation),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `PIECES name`; the answer is read by [`Self::pieces_reply`]
    /// (other requests may be sent in between).
    pub fn ask_pieces(&mut self, name: &str) -> Result<(), RequestError> {
        self.send(&Request::Pieces {
            name: name.to_owned(),
        })
    }

    /// Reads the answer to `PIECES name` for a file listed with `size`
    /// bytes. The count must be the one `size` gives, checked before a
    /// digest line is read.
    pub fn pieces_reply(&mut self, name: &str, size: u64) -> Result<Vec<Digest>, RequestError> {
        match self.reply()? {
            Reply::Pieces {
                size: s,
                piece_size,
                count,
            } if s == size && piece_size == PIECE_SIZE && count == piece_count(size) => {
                Ok(read_pieces(&mut self.reader, count)?)
            }
            Reply::Pieces { size: s, .. } if s != size => Err(RequestError::Server {
                code: ErrorCode::Changed,
                message: format!("{name} now has {s} bytes, listed with {size}"),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `GET offset length name`.
    pub fn ask_range(&mut self, name: &str, offset: u64, length: u64) -> Result<(), RequestError> {
        self.send(&Request::Get {
            offset,
            length,
            name: name.to_owned(),
        })
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
    pub fn data(&mut self) -> &mut dyn Read {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pace::SpeedFloor;
    use crate::net::transport::Security;
    use crate::shutdown::Shutdown;
    use std::io::{BufRead, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A plaintext server on 127.0.0.1 that answers each connection with
    /// `script(request line)` until it returns `None` (then it closes).
    fn server(script: fn(&str) -> Option<String>) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut w = conn.try_clone().unwrap();
                let mut r = std::io::BufReader::new(conn);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    match script(line.trim_end()) {
                        Some(reply) => w.write_all(reply.as_bytes()).unwrap(),
                        None => break,
                    }
                    line.clear();
                }
            }
        });
        Endpoint {
            addr,
            shown: addr.to_string(),
            security: Security::Plain,
            token: None,
            floor: SpeedFloor {
                min_rate: 1,
                window: Duration::from_secs(5),
            },
            shutdown: Arc::new(Shutdown::default()),
        }
    }

    #[test]
    fn the_version_exchange_rides_with_the_first_request() {
        let endpoint = server(|line| match line {
            "FASTDL 2" => Some("FASTDL 2\n".into()),
            "LIST" => Some(
                "LIST 1\n1) a.bin\t3\t".to_owned() + &Digest::of(b"abc").to_string() + "\nEND\n",
            ),
            _ => None,
        });
        let mut conn = Connection::open(&endpoint).unwrap();
        let listing = conn.list().unwrap();
        assert_eq!(listing.get("a.bin").unwrap().size, 3);
        // The connection is kept: a second request on it works.
        assert_eq!(conn.list().unwrap(), listing);
    }

    #[test]
    fn error_replies_become_typed_errors_that_say_who_said_what() {
        let endpoint = server(|line| match line {
            "FASTDL 2" => Some("FASTDL 2\n".into()),
            l if l.starts_with("PIECES") => Some("WRONG_INPUT not listed: x\n".into()),
            _ => Some("ERROR CHANGED f.bin: file changed since it was listed\n".into()),
        });
        let mut conn = Connection::open(&endpoint).unwrap();
        conn.ask_pieces("x").unwrap();
        let e = conn.pieces_reply("x", 5).unwrap_err();
        assert!(e.is_changed(), "{e}");
        assert!(e.to_string().starts_with("the server refused"), "{e}");
        conn.ask_range("f.bin", 0, 10).unwrap();
        let e = conn.data_header(10).unwrap_err();
        assert!(e.is_changed() && !e.is_fatal(), "{e}");
        assert!(e.to_string().contains("the server said CHANGED"), "{e}");
    }

    #[test]
    fn a_busy_server_that_closes_at_once_is_reported_busy() {
        let endpoint = server(|_| None);
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint {
            addr: busy.local_addr().unwrap(),
            ..endpoint
        };
        std::thread::spawn(move || {
            let (mut conn, _) = busy.accept().unwrap();
            let _ = conn.write_all(b"ERROR BUSY server is at its connection limit (1)\n");
        });
        let e = Connection::open(&endpoint)
            .and_then(|mut c| c.list())
            .unwrap_err();
        assert!(e.is_busy(), "{e}");
    }
}
