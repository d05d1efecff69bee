//! Read pacing for control connections: a connection may sit idle between
//! requests for `--idle-timeout`, but once a request line has begun it must
//! be complete within `--request-timeout`. A slow-loris peer that trickles
//! one byte at a time is cut off instead of holding a session forever.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct PacedReader {
    stream: TcpStream,
    idle: Duration,
    per_line: Duration,
    line_deadline: Option<Instant>,
}

/// Which limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle,
    Line,
}

impl PacedReader {
    pub fn new(stream: TcpStream, idle: Duration, per_line: Duration) -> PacedReader {
        PacedReader {
            stream,
            idle,
            per_line,
            line_deadline: None,
        }
    }

    /// Marks the start of waiting for a new request line.
    pub fn begin_line(&mut self) {
        self.line_deadline = None;
    }

    /// Which limit a timeout error came from.
    pub fn expired(&self) -> Expired {
        if self.line_deadline.is_some() {
            Expired::Line
        } else {
            Expired::Idle
        }
    }
}

impl Read for PacedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.line_deadline {
            None => self.idle,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request line too slow",
                    ));
                }
                left
            }
        };
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let n = self.stream.read(buf)?;
        if n > 0 && self.line_deadline.is_none() {
            self.line_deadline = Some(Instant::now() + self.per_line);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn a_begun_line_must_finish_in_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut reader =
            PacedReader::new(stream, Duration::from_secs(30), Duration::from_millis(200));
        reader.begin_line();
        peer.write_all(b"G").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(reader.read(&mut buf).unwrap(), 1);
        // Nothing more arrives: the line deadline, not the 30 s idle limit, ends it.
        let started = Instant::now();
        let err = reader.read(&mut buf).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(reader.expired(), Expired::Line);
        reader.begin_line();
        assert_eq!(reader.expired(), Expired::Idle);
    }
}
