//! One client connection's bytes: request lines in, replies and data out.
//!
//! Reading: a connection waiting for a request holds no thread and no
//! buffer; bytes are read (when the socket says they are there) into a
//! buffer that exists only while part of a request line is held. Two
//! deadlines apply: `--idle-timeout` for the first byte of a request, and
//! `--request-timeout` for a begun line to complete, counted from its
//! first byte, whether that byte arrived alone or behind a whole earlier
//! line in the same packet (issue 15, break 6). Lines longer than
//! `MAX_REQUEST_LINE` end the connection.
//!
//! Writing goes through [`crate::transfer`], every send held to the
//! progress deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fastdl_protocol::line::{take_line, Scan};
use fastdl_protocol::{ProtocolError, MAX_REQUEST_LINE};

use super::transport::Io;

/// Bytes read from the socket at a time while gathering request lines.
const READ_CHUNK: usize = 4096;

/// How long a connection may take over its requests.
#[derive(Debug, Clone, Copy)]
pub struct LineTimeouts {
    /// Waiting for the first byte of a request.
    pub idle: Duration,
    /// A begun request line must be complete within this.
    pub per_line: Duration,
}

/// Why no request line came.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The peer closed the connection between requests.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection inside a request line.
    #[error("connection closed inside a request line")]
    ClosedMidLine,
    /// A line longer than the limit: the connection must be closed.
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    TooLong,
    /// A whole line that is not text (consumed: the next may be fine).
    #[error("{0}")]
    BadText(ProtocolError),
    #[error("no request for {} s", .0.as_secs())]
    Idle(Duration),
    #[error("request line not completed within {} s", .0.as_secs())]
    Slow(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A client connection.
pub struct Conn {
    pub io: Io,
    pub peer: SocketAddr,
    /// Bytes received and not yet taken as lines (empty, and unallocated,
    /// while waiting between requests).
    pending: Vec<u8>,
    /// When the first byte of the line being gathered arrived.
    line_began: Option<Instant>,
    /// When the connection began to wait for its next request.
    idle_since: Instant,
}

impl Conn {
    pub fn new(io: Io, peer: SocketAddr) -> Conn {
        Conn {
            io,
            peer,
            pending: Vec::new(),
            line_began: None,
            idle_since: Instant::now(),
        }
    }

    /// The connection waits for its next request: since now, or, when
    /// part of it is here already, since that part began (so a client
    /// that keeps a begun request behind each whole one still counts as
    /// waiting, and as long as it has been trickling).
    pub fn begin_wait(&mut self) -> Instant {
        match self.line_began {
            Some(began) if !self.pending.is_empty() => began,
            _ => {
                self.idle_since = Instant::now();
                self.idle_since
            }
        }
    }

    /// Whether a whole request line (or one already too long) is here,
    /// to be answered without waiting, counting what the socket holds.
    pub fn has_line(&mut self) -> bool {
        let whole = |pending: &[u8]| !matches!(take_line(pending, MAX_REQUEST_LINE), Scan::Partial);
        whole(&self.pending) || (self.pull() && whole(&self.pending))
    }

    /// Whether a whole HTTP request head (or one already too long) is
    /// here, to be answered without waiting, counting what the socket
    /// holds.
    pub fn has_head(&mut self, limit: usize) -> bool {
        let whole = |pending: &[u8]| pending.len() > limit || head_end(pending).is_some();
        whole(&self.pending) || (self.pull() && whole(&self.pending))
    }

    /// Takes in what the socket already holds, without waiting (a client
    /// that pipelines is not waiting for anything, even when the buffer
    /// here ran dry); whether anything came. The end of the stream and
    /// errors are left for the next read to meet.
    fn pull(&mut self) -> bool {
        let mut chunk = [0u8; READ_CHUNK];
        match self.io.try_read(&mut chunk) {
            Ok(n) if n > 0 => {
                if self.pending.is_empty() {
                    self.line_began = Some(Instant::now());
                }
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next request line: waits (without a buffer while nothing has
    /// come) until one is complete, or a deadline passes.
    pub async fn next_line(&mut self, timeouts: LineTimeouts) -> Result<String, LineError> {
        loop {
            if let Some(line) = self.take_line()? {
                return line;
            }
            self.fill(timeouts).await?;
        }
    }

    /// The next HTTP request head (its lines and the blank line after
    /// them, at most `limit` bytes), under the same deadlines as a request
    /// line: `idle` for its first byte, `per_line` for the whole head.
    pub async fn next_head(
        &mut self,
        timeouts: LineTimeouts,
        limit: usize,
    ) -> Result<Vec<u8>, LineError> {
        loop {
            if let Some(end) = head_end(&self.pending) {
                if end > limit {
                    return Err(LineError::TooLong);
                }
                let head: Vec<u8> = self.pending.drain(..end).collect();
                self.line_began = (!self.pending.is_empty()).then(Instant::now);
                return Ok(head);
            }
            if self.pending.len() > limit {
                return Err(LineError::TooLong);
            }
            self.fill(timeouts).await?;
        }
    }

    /// Reads what has come, waiting for the socket (within the deadlines)
    /// if nothing has.
    async fn fill(&mut self, timeouts: LineTimeouts) -> Result<(), LineError> {
        loop {
            let mut chunk = [0u8; READ_CHUNK];
            match self.io.try_read(&mut chunk) {
                Ok(0) if self.pending.is_empty() => return Err(LineError::Closed),
                Ok(0) => return Err(LineError::ClosedMidLine),
                Ok(n) => {
                    if self.pending.is_empty() {
                        self.line_began = Some(Instant::now());
                    }
                    self.pending.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            let deadline = match self.line_began {
                Some(began) => began + timeouts.per_line,
                None => self.idle_since + timeouts.idle,
            };
            match tokio::time::timeout_at(deadline.into(), self.io.tcp().readable()).await {
                Ok(ready) => ready?,
                Err(_) if self.line_began.is_some() => {
                    return Err(LineError::Slow(timeouts.per_line))
                }
                Err(_) => return Err(LineError::Idle(timeouts.idle)),
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn take_line(&mut self) -> Result<Option<Result<String, LineError>>, LineError> {
        match take_line(&self.pending, MAX_REQUEST_LINE) {
            Scan::Partial => Ok(None),
            Scan::TooLong => Err(LineError::TooLong),
            Scan::Line { text, consumed } => {
                self.pending.drain(..consumed);
                if self.pending.is_empty() {
                    // Nothing held between requests.
                    self.pending = Vec::new();
                    self.line_began = None;
                } else {
                    // The next line began when these bytes arrived, which
                    // is no later than now.
                    self.line_began = Some(Instant::now());
                }
                Ok(Some(text.map_err(|e| match e {
                    ProtocolError::LineTooLong { .. } => LineError::TooLong,
                    e => LineError::BadText(e),
                })))
            }
        }
    }
}

/// Where an HTTP head ends in `bytes` (after its blank line), if it does.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    crlf.into_iter().chain(lf).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const QUICK: LineTimeouts = LineTimeouts {
        idle: Duration::from_secs(30),
        per_line: Duration::from_millis(300),
    };

    async fn pair() -> (Conn, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (Conn::new(Io::Plain(server), peer), client)
    }

    #[tokio::test]
    async fn half_a_line_behind_a_whole_one_meets_the_line_deadline() {
        let (mut conn, mut client) = pair().await;
        client.write_all(b"FASTDL 1\r\nLI").await.unwrap();
        assert_eq!(conn.next_line(QUICK).await.unwrap(), "FASTDL 1");
        let started = Instant::now();
        let err = conn.next_line(QUICK).await.unwrap_err();
        assert!(matches!(err, LineError::Slow(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_request_still_in_the_socket_is_not_waiting() {
        let (mut conn, mut client) = pair().await;
        client.write_all(b"FASTDL 2\n").await.unwrap();
        assert_eq!(conn.next_line(QUICK).await.unwrap(), "FASTDL 2");
        assert!(!conn.has_line(), "nothing sent yet");
        client.write_all(b"LIST\n").await.unwrap();
        conn.io.tcp().readable().await.unwrap();
        assert!(conn.has_line(), "the kernel holds a whole request");
        assert_eq!(conn.next_line(QUICK).await.unwrap(), "LIST");
        // A partial request counts as waiting since it began, not since
        // the connection was last looked at.
        let before = Instant::now();
        client.write_all(b"GE").await.unwrap();
        conn.io.tcp().readable().await.unwrap();
        assert!(!conn.has_line());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let since = conn.begin_wait();
        assert!(since >= before && since.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn lines_of_exactly_the_limit_pass_and_longer_ones_end_it() {
        let (mut conn, mut client) = pair().await;
        let mut line = vec![b'a'; MAX_REQUEST_LINE];
        line.extend_from_slice(b"\r\n");
        client.write_all(&line).await.unwrap();
        assert_eq!(conn.next_line(QUICK).await.unwrap().len(), MAX_REQUEST_LINE);
        client
            .write_all(&vec![b'b'; MAX_REQUEST_LINE + 3])
            .await
            .unwrap();
        assert!(matches!(
            conn.next_line(QUICK).await,
            Err(LineError::TooLong)
        ));
    }

    #[tokio::test]
    async fn bad_text_is_one_bad_line_and_idle_memory_is_freed() {
        let (mut conn, mut client) = pair().await;
        client.write_all(b"\xff\xfe\nLIST\n").await.unwrap();
        assert!(matches!(
            conn.next_line(QUICK).await,
            Err(LineError::BadText(_))
        ));
        assert_eq!(conn.next_line(QUICK).await.unwrap(), "LIST");
        assert_eq!(conn.pending.capacity(), 0);
        drop(client);
        assert!(matches!(
            conn.next_line(QUICK).await,
            Err(LineError::Closed)
        ));
    }
}
