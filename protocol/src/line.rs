//! Reading and writing the protocol's text lines with a hard length limit.
//!
//! Every line is UTF-8 ending in `\n` (a `\r` before it is tolerated). A
//! limit counts the line's text, not its ending: a request line of exactly
//! `MAX_REQUEST_LINE` bytes is accepted, with `\n` or `\r\n` after it. A
//! reader never buffers more than the limit (plus the ending) it is given,
//! so an endless line from a hostile peer costs bounded memory.
//!
//! [`read_line`] reads from a blocking `BufRead`; [`take_line`] is the same
//! rule over bytes already received, for readers that gather bytes on
//! their own (the server's event loop).

use std::io::{BufRead, ErrorKind, Write};

use crate::error::ProtocolError;

/// Bytes a line ending may add to a line's limit (`\r\n`).
const ENDING: usize = 2;

/// What the start of a buffer holds, for [`take_line`].
#[derive(Debug)]
pub enum Scan {
    /// No whole line yet, and no more than the limit allows so far.
    Partial,
    /// More than the limit without a line ending: the peer must be cut off.
    TooLong,
    /// A whole line, `consumed` bytes with its ending; its text, or why it
    /// is refused (the line is consumed either way).
    Line {
        text: Result<String, ProtocolError>,
        consumed: usize,
    },
}

/// Looks for one line of at most `limit` bytes of text at the start of
/// `buf`.
pub fn take_line(buf: &[u8], limit: usize) -> Scan {
    let window = &buf[..buf.len().min(limit + ENDING)];
    match window.iter().position(|&b| b == b'\n') {
        Some(pos) => Scan::Line {
            text: checked(&buf[..pos], limit),
            consumed: pos + 1,
        },
        None if buf.len() >= limit + ENDING => Scan::TooLong,
        None => Scan::Partial,
    }
}

/// The text of a line without its `\n`: at most `limit` bytes once a
/// final `\r` is dropped, UTF-8, no control character but tab.
fn checked(line: &[u8], limit: usize) -> Result<String, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limit {
        return Err(ProtocolError::LineTooLong { limit });
    }
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ProtocolError::ControlChar);
    }
    Ok(text.to_owned())
}

/// Reads one line of at most `limit` bytes of text (its ending not
/// counted) and returns it without its line ending. `Ok(None)` means the
/// stream ended cleanly before the line began.
pub fn read_line<R: BufRead + ?Sized>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<String>, ProtocolError> {
    let mut line: Vec<u8> = Vec::new();
    let limit_with_ending = limit + ENDING;
    loop {
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if available.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(ProtocolError::Closed)
            };
        }
        let room = limit_with_ending.saturating_sub(line.len());
        let window = &available[..available.len().min(room)];
        if let Some(pos) = window.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&window[..pos]);
            reader.consume(pos + 1);
            break;
        }
        if window.len() == room {
            return Err(ProtocolError::LineTooLong { limit });
        }
        let taken = window.len();
        line.extend_from_slice(window);
        reader.consume(taken);
    }
    checked(&line, limit).map(Some)
}

/// Like [`read_line`], but a clean end of stream is an error too.
pub fn expect_line<R: BufRead + ?Sized>(
    reader: &mut R,
    limit: usize,
) -> Result<String, ProtocolError> {
    read_line(reader, limit)?.ok_or(ProtocolError::Closed)
}

/// A request or reply as it goes on the wire: its text and `\n`. Every
/// line any side sends is made here (async senders write the bytes
/// themselves).
pub fn framed(message: &impl std::fmt::Display) -> String {
    let mut line = message.to_string();
    line.push('\n');
    line
}

/// Writes `line` followed by `\n`, in one write.
pub fn write_line<W: Write + ?Sized>(writer: &mut W, line: &str) -> Result<(), ProtocolError> {
    writer.write_all(framed(&line).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn reads_lines_and_strips_endings() {
        let mut r = &b"one\r\ntwo\nthree"[..];
        assert_eq!(read_line(&mut r, 100).unwrap().as_deref(), Some("one"));
        assert_eq!(read_line(&mut r, 100).unwrap().as_deref(), Some("two"));
        assert!(matches!(read_line(&mut r, 100), Err(ProtocolError::Closed)));
        let mut empty = &b""[..];
        assert!(read_line(&mut empty, 100).unwrap().is_none());
    }

    #[test]
    fn limit_counts_the_text_and_holds_across_buffer_refills() {
        let mut r = &b"abcde\n"[..];
        assert!(matches!(
            read_line(&mut r, 4),
            Err(ProtocolError::LineTooLong { limit: 4 })
        ));
        let mut r = &b"abcd\r\n"[..];
        assert_eq!(read_line(&mut r, 4).unwrap().as_deref(), Some("abcd"));
        let mut r = &b"abc\n"[..];
        assert_eq!(read_line(&mut r, 4).unwrap().as_deref(), Some("abc"));
        let long = vec![b'x'; 10_000];
        let mut r = BufReader::with_capacity(7, &long[..]);
        assert!(matches!(
            read_line(&mut r, 4096),
            Err(ProtocolError::LineTooLong { .. })
        ));
    }

    #[test]
    fn refuses_bad_bytes() {
        let mut r = &b"\xff\xfe\n"[..];
        assert!(matches!(
            read_line(&mut r, 100),
            Err(ProtocolError::NotUtf8)
        ));
        let mut r = &b"a\0b\n"[..];
        assert!(matches!(
            read_line(&mut r, 100),
            Err(ProtocolError::ControlChar)
        ));
        let mut r = "fïlé\tx\n".as_bytes();
        assert_eq!(read_line(&mut r, 100).unwrap().as_deref(), Some("fïlé\tx"));
    }

    #[test]
    fn take_line_agrees_with_read_line() {
        assert!(matches!(take_line(b"", 4), Scan::Partial));
        assert!(matches!(take_line(b"abcd\r", 4), Scan::Partial));
        assert!(matches!(take_line(b"abcdef", 4), Scan::TooLong));
        assert!(matches!(
            take_line(b"abcd\r\nLIST\n", 4),
            Scan::Line { text: Ok(t), consumed: 6 } if t == "abcd"
        ));
        assert!(matches!(
            take_line(b"abcde\n", 4),
            Scan::TooLong | Scan::Line { text: Err(_), .. }
        ));
        assert!(matches!(
            take_line(b"a\0\nb", 4),
            Scan::Line {
                text: Err(ProtocolError::ControlChar),
                consumed: 3
            }
        ));
    }

    #[test]
    fn write_adds_newline() {
        let mut out = Vec::new();
        write_line(&mut out, "LIST").unwrap();
        assert_eq!(out, b"LIST\n");
    }
}
