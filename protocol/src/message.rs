//! Requests (client to server) and reply header lines (server to client).
//!
//! Each message is one text line: a command word, fixed fields separated
//! by single spaces, and for messages about a file the name last, taking
//! the rest of the line (so names may contain spaces). Binary bytes only
//! follow a `DATA <length>` line, and exactly that many.

use std::fmt;

use crate::error::ProtocolError;
use crate::name::validate_name;

/// A request line sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `FASTDL <version>`: must come first on every connection.
    Hello { version: u32 },
    /// `LIST`: the published list.
    List,
    /// `GET <offset> <length> <name>`: a ranged read of a listed file.
    Get {
        offset: u64,
        length: u64,
        name: String,
    },
    /// `PIECES <name>`: the per-piece digests of a listed file.
    Pieces { name: String },
    /// `PLAN <name>`: an N-stream plan for a listed file.
    Plan { name: String },
    /// `JOIN <token>`: the first line on a plan's data stream.
    Join { token: String },
    /// `AUTH <token>`: an access token, for a server that wants one
    /// before it shows its list or any byte.
    Auth { token: String },
    /// `QUIT`: the server answers `BYE` and closes.
    Quit,
    /// `WATCH`: the last request on its connection; the server answers
    /// `LISTED <generation>` at once, again whenever its list changes, and
    /// every few seconds while it does not (a heartbeat), until the client
    /// closes the connection.
    Watch,
}

/// Machine-readable error classes carried by `ERROR <CODE> <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// The requested protocol version is not spoken here.
    Version,
    /// A request came before `FASTDL <version>`.
    Handshake,
    /// The server is at a connection or plan limit; try again later.
    Busy,
    /// The file changed since it was listed; fetch the list again.
    Changed,
    /// A request line was too long.
    TooLong,
    /// The peer was idle or too slow.
    Timeout,
    /// A range larger than the server allows.
    Limit,
    /// The server failed to read the file.
    Io,
    /// The server wants an access token (none was given, or it was not
    /// accepted).
    Auth,
    /// Sent in plain text by a server that speaks TLS to a client that
    /// does not.
    TlsRequired,
    /// Sent in plain text by a server that runs without TLS
    /// (`--plaintext`) to a client that began a TLS handshake.
    PlaintextOnly,
    /// A code this build does not know (from a newer peer).
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Version => "VERSION",
            ErrorCode::Handshake => "HANDSHAKE",
            ErrorCode::Busy => "BUSY",
            ErrorCode::Changed => "CHANGED",
            ErrorCode::TooLong => "TOO_LONG",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Limit => "LIMIT",
            ErrorCode::Io => "IO",
            ErrorCode::Auth => "AUTH",
            ErrorCode::TlsRequired => "TLS_REQUIRED",
            ErrorCode::PlaintextOnly => "PLAINTEXT_ONLY",
            ErrorCode::Other(code) => code,
        }
    }

    fn parse(code: &str) -> ErrorCode {
        match code {
            "VERSION" => ErrorCode::Version,
            "HANDSHAKE" => ErrorCode::Handshake,
            "BUSY" => ErrorCode::Busy,
            "CHANGED" => ErrorCode::Changed,
            "TOO_LONG" => ErrorCode::TooLong,
            "TIMEOUT" => ErrorCode::Timeout,
            "LIMIT" => ErrorCode::Limit,
            "IO" => ErrorCode::Io,
            "AUTH" => ErrorCode::Auth,
            "TLS_REQUIRED" => ErrorCode::TlsRequired,
            "PLAINTEXT_ONLY" => ErrorCode::PlaintextOnly,
            other => ErrorCode::Other(other.to_owned()),
        }
    }
}

/// A reply header line sent by a server. The lines of a listing and of a
/// digest list are parsed by [`crate::listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `FASTDL <version>`: the handshake was accepted.
    Hello { version: u32 },
    /// `LIST <count>`: `count` entry lines follow, then `END`.
    List { count: u64 },
    /// `DATA <length>`: exactly `length` raw bytes follow.
    Data { length: u64 },
    /// `PIECES <size> <piece_size> <count>`: `count` digest lines follow, then `END`.
    Pieces {
        size: u64,
        piece_size: u64,
        count: u64,
    },
    /// `ACCEPTED <N> <M> <PORT_1> ... <PORT_N> <TOKEN>`: a plan of N
    /// streams carrying M chunks; each port takes one `JOIN <TOKEN>`.
    Accepted {
        chunks: u64,
        ports: Vec<u16>,
        token: String,
    },
    /// `STREAM <index> <chunks>`: a data stream joined; `chunks` frames follow.
    Stream { index: u32, chunks: u64 },
    /// `END`: closes a multi-line reply.
    End,
    /// `WRONG_INPUT <reason>`: the request named something that is not served.
    WrongInput { reason: String },
    /// `ERROR <CODE> <message>`: any other failure.
    Error { code: ErrorCode, message: String },
    /// `BYE`: answer to `QUIT`; the server closes the connection.
    Bye,
    /// `AUTH OK`: the access token was accepted (or none is needed).
    AuthOk,
    /// `LISTED <generation>`: on a `WATCH` connection, the generation of
    /// the server's list (a new number: the list changed).
    Listed { generation: u64 },
}

/// Replaces characters that would break the one-line framing.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn parse_u64(field: &str, what: &'static str, line: &str) -> Result<u64, ProtocolError> {
    if field.is_empty() || field.len() > 20 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtocolError::malformed(what, line));
    }
    field
        .parse()
        .map_err(|_| ProtocolError::malformed(what, line))
}

fn parse_u32(field: &str, what: &'static str, line: &str) -> Result<u32, ProtocolError> {
    let value = parse_u64(field, what, line)?;
    u32::try_from(value).map_err(|_| ProtocolError::malformed(what, line))
}

/// Splits off the command word; the command is case-insensitive for people
/// typing into `nc`.
fn command(line: &str) -> (String, &str) {
    match line.split_once(' ') {
        Some((cmd, rest)) => (cmd.to_ascii_uppercase(), rest),
        None => (line.to_ascii_uppercase(), ""),
    }
}

fn no_args(rest: &str, what: &'static str, line: &str) -> Result<(), ProtocolError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::malformed(what, line))
    }
}

fn parse_name(rest: &str) -> Result<String, ProtocolError> {
    validate_name(rest)?;
    Ok(rest.to_owned())
}

/// Length of a plan token in hex digits (128 random bits).
pub const TOKEN_HEX_LEN: usize = 32;

/// Longest access token (`AUTH`), in bytes.
pub const MAX_ACCESS_TOKEN: usize = 512;

/// Whether `token` can be an access token: 1 to [`MAX_ACCESS_TOKEN`]
/// visible ASCII characters (no spaces), so that it is one field of a
/// line and can sit in a token file, an environment variable and an HTTP
/// header alike.
pub fn is_access_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_ACCESS_TOKEN
        && token.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_token(field: &str, line: &str) -> Result<String, ProtocolError> {
    if field.len() == TOKEN_HEX_LEN && field.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(field.to_ascii_lowercase())
    } else {
        Err(ProtocolError::malformed("plan token (32 hex digits)", line))
    }
}

fn parse_accepted(rest: &str, line: &str) -> Result<Reply, ProtocolError> {
    let fields: Vec<&str> = rest.split(' ').collect();
    let bad =
        || ProtocolError::malformed("ACCEPTED (want ACCEPTED <N> <M> <PORT>... <TOKEN>)", line);
    let n = parse_u32(fields.first().ok_or_else(bad)?, "ACCEPTED N", line)?;
    if n == 0 || n > crate::plan::MAX_STREAMS || fields.len() != n as usize + 3 {
        return Err(bad());
    }
    let chunks = parse_u64(fields[1], "ACCEPTED M", line)?;
    let ports = fields[2..2 + n as usize]
        .iter()
        .map(|p| {
            let port = parse_u32(p, "ACCEPTED port", line)?;
            u16::try_from(port).ok().filter(|&p| p != 0).ok_or_else(bad)
        })
        .collect::<Result<Vec<u16>, _>>()?;
    let token = parse_token(fields[2 + n as usize], line)?;
    Ok(Reply::Accepted {
        chunks,
        ports,
        token,
    })
}

impl Request {
    /// Parses one request line (without its line ending).
    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        let (cmd, rest) = command(line);
        match cmd.as_str() {
            "FASTDL" => Ok(Request::Hello {
                version: parse_u32(rest, "FASTDL version", line)?,
            }),
            "LIST" => no_args(rest, "LIST", line).map(|_| Request::List),
            "QUIT" => no_args(rest, "QUIT", line).map(|_| Request::Quit),
            "WATCH" => no_args(rest, "WATCH", line).map(|_| Request::Watch),
            "GET" => {
                let mut fields = rest.splitn(3, ' ');
                let (Some(offset), Some(length), Some(name)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return Err(ProtocolError::malformed(
                        "GET (want GET <offset> <length> <name>)",
                        line,
                    ));
                };
                Ok(Request::Get {
                    offset: parse_u64(offset, "GET offset", line)?,
                    length: parse_u64(length, "GET length", line)?,
                    name: parse_name(name)?,
                })
            }
            "PIECES" => Ok(Request::Pieces {
                name: parse_name(rest)?,
            }),
            "PLAN" => Ok(Request::Plan {
                name: parse_name(rest)?,
            }),
            "JOIN" => Ok(Request::Join {
                token: parse_token(rest, line)?,
            }),
            "AUTH" if is_access_token(rest) => Ok(Request::Auth {
                token: rest.to_owned(),
            }),
            "AUTH" => Err(ProtocolError::Malformed {
                what: "AUTH (want AUTH <token>: 1 to 512 visible ASCII characters)",
                line: "AUTH …".into(),
            }),
            _ => Err(ProtocolError::malformed("request (unknown command)", line)),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Hello { version } => write!(f, "FASTDL {version}"),
            Request::List => f.write_str("LIST"),
            Request::Get {
                offset,
                length,
                name,
            } => write!(f, "GET {offset} {length} {name}"),
            Request::Pieces { name } => write!(f, "PIECES {name}"),
            Request::Plan { name } => write!(f, "PLAN {name}"),
            Request::Join { token } => write!(f, "JOIN {token}"),
            Request::Auth { token } => write!(f, "AUTH {token}"),
            Request::Quit => f.write_str("QUIT"),
            Request::Watch => f.write_str("WATCH"),
        }
    }
}

impl Reply {
    /// Parses one reply header line (without its line ending).
    pub fn parse(line: &str) -> Result<Reply, ProtocolError> {
        let (cmd, rest) = command(line);
        match cmd.as_str() {
            "FASTDL" => Ok(Reply::Hello {
                version: parse_u32(rest, "FASTDL version", line)?,
            }),
            "LIST" => Ok(Reply::List {
                count: parse_u64(rest, "LIST count", line)?,
            }),
            "DATA" => Ok(Reply::Data {
                length: parse_u64(rest, "DATA length", line)?,
            }),
            "PIECES" => {
                let fields: Vec<&str> = rest.split(' ').collect();
                let [size, piece_size, count] = fields[..] else {
                    return Err(ProtocolError::malformed("PIECES header", line));
                };
                Ok(Reply::Pieces {
                    size: parse_u64(size, "PIECES size", line)?,
                    piece_size: parse_u64(piece_size, "PIECES piece size", line)?,
                    count: parse_u64(count, "PIECES count", line)?,
                })
            }
            "ACCEPTED" => parse_accepted(rest, line),
            "STREAM" => {
                let (index, chunks) = rest
                    .split_once(' ')
                    .ok_or_else(|| ProtocolError::malformed("STREAM header", line))?;
                Ok(Reply::Stream {
                    index: parse_u32(index, "STREAM index", line)?,
                    chunks: parse_u64(chunks, "STREAM chunks", line)?,
                })
            }
            "END" => no_args(rest, "END", line).map(|_| Reply::End),
            "BYE" => no_args(rest, "BYE", line).map(|_| Reply::Bye),
            "AUTH" if rest == "OK" => Ok(Reply::AuthOk),
            "LISTED" => Ok(Reply::Listed {
                generation: parse_u64(rest, "LISTED generation", line)?,
            }),
            "WRONG_INPUT" => Ok(Reply::WrongInput {
                reason: rest.to_owned(),
            }),
            "ERROR" => {
                let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
                if code.is_empty() {
                    return Err(ProtocolError::malformed("ERROR code", line));
                }
                Ok(Reply::Error {
                    code: ErrorCode::parse(code),
                    message: message.to_owned(),
                })
            }
            _ => Err(ProtocolError::malformed("reply", line)),
        }
    }

    pub fn wrong_input(reason: impl Into<String>) -> Reply {
        Reply::WrongInput {
            reason: reason.into(),
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Hello { version } => write!(f, "FASTDL {version}"),
            Reply::List { count } => write!(f, "LIST {count}"),
            Reply::Data { length } => write!(f, "DATA {length}"),
            Reply::Pieces {
                size,
                piece_size,
                count,
            } => {
                write!(f, "PIECES {size} {piece_size} {count}")
            }
            Reply::Accepted {
                chunks,
                ports,
                token,
            } => {
                write!(f, "ACCEPTED {} {chunks}", ports.len())?;
                for port in ports {
                    write!(f, " {port}")?;
                }
                write!(f, " {token}")
            }
            Reply::Stream { index, chunks } => write!(f, "STREAM {index} {chunks}"),
            Reply::End => f.write_str("END"),
            Reply::WrongInput { reason } => write!(f, "WRONG_INPUT {}", one_line(reason)),
            Reply::Error { code, message } => {
                write!(
                    f,
                    "ERROR {} {}",
                    one_line(code.as_str()).replace(' ', "_"),
                    one_line(message)
                )
            }
            Reply::Bye => f.write_str("BYE"),
            Reply::AuthOk => f.write_str("AUTH OK"),
            Reply::Listed { generation } => write!(f, "LISTED {generation}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let cases = [
            Request::Hello { version: 1 },
            Request::List,
            Request::Quit,
            Request::Watch,
            Request::Get {
                offset: 0,
                length: 0,
                name: "a".into(),
            },
            Request::Get {
                offset: u64::MAX,
                length: 1 << 20,
                name: "my dir/ünï cødé file.txt".into(),
            },
            Request::Pieces { name: "x y".into() },
            Request::Plan {
                name: "big file.iso".into(),
            },
            Request::Join {
                token: "0123456789abcdef0123456789abcdef".into(),
            },
            Request::Auth {
                token: "s3cret-Token_with.punct!".into(),
            },
        ];
        for req in cases {
            let line = req.to_string();
            assert_eq!(Request::parse(&line).unwrap(), req, "{line}");
        }
    }

    #[test]
    fn request_text_is_what_a_person_types() {
        assert_eq!(
            Request::parse("get 10 20 my file.txt").unwrap(),
            Request::Get {
                offset: 10,
                length: 20,
                name: "my file.txt".into()
            }
        );
        assert_eq!(Request::parse("list").unwrap(), Request::List);
        assert_eq!(
            Request::Get {
                offset: 1,
                length: 2,
                name: "a b".into()
            }
            .to_string(),
            "GET 1 2 a b"
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        for line in [
            "",
            "HELLO",
            "FASTDL",
            "FASTDL x",
            "FASTDL 99999999999",
            "LIST extra",
            "GET",
            "GET 1 2",
            "GET -1 2 a",
            "GET +1 2 a",
            "GET 1 99999999999999999999 a",
            "GET 1 2 ../etc/passwd",
            "GET 1 2 /etc/hostname",
            "GET 1 2 a\\b",
            "GET  1 2 a",
            "PIECES",
            "PIECES ../x",
            "PLAN ../x",
            "JOIN",
            "JOIN xyz",
            "JOIN 0123456789abcdef0123456789abcdeg",
            "AUTH",
            "AUTH two words",
            "AUTH é",
        ] {
            assert!(Request::parse(line).is_err(), "{line:?} parsed");
        }
    }

    #[test]
    fn replies_round_trip() {
        let cases = [
            Reply::Hello { version: 1 },
            Reply::List { count: 3 },
            Reply::Data { length: 12345 },
            Reply::Pieces {
                size: 5,
                piece_size: 1 << 20,
                count: 1,
            },
            Reply::End,
            Reply::Bye,
            Reply::Listed { generation: 0 },
            Reply::Listed {
                generation: u64::MAX,
            },
            Reply::wrong_input("not listed: x y"),
            Reply::error(ErrorCode::Busy, "too many connections (limit 256)"),
            Reply::error(ErrorCode::Other("NEW_THING".into()), "from the future"),
            Reply::Accepted {
                chunks: 700,
                ports: vec![40001, 40002, 40003],
                token: "00112233445566778899aabbccddeeff".into(),
            },
            Reply::Stream {
                index: 2,
                chunks: 233,
            },
            Reply::AuthOk,
            Reply::error(ErrorCode::Auth, "a token is needed"),
            Reply::error(ErrorCode::TlsRequired, "x"),
            Reply::error(ErrorCode::PlaintextOnly, "y"),
        ];
        for reply in cases {
            let line = reply.to_string();
            assert_eq!(Reply::parse(&line).unwrap(), reply, "{line}");
        }
    }

    #[test]
    fn reply_text_never_spans_lines() {
        let line = Reply::wrong_input("a\nb\rc").to_string();
        assert_eq!(line, "WRONG_INPUT a b c");
        let line = Reply::error(ErrorCode::Io, "x\ny").to_string();
        assert_eq!(line, "ERROR IO x y");
    }

    #[test]
    fn bad_replies_are_refused() {
        for line in [
            "",
            "OK",
            "DATA",
            "DATA -5",
            "LIST x",
            "PIECES 1 2",
            "END x",
            "ERROR",
        ] {
            assert!(Reply::parse(line).is_err(), "{line:?} parsed");
        }
    }
}
