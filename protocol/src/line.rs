//! Reading and writing the protocol's text lines with a hard length limit.
//!
//! Every line is UTF-8 ending in `\n` (a `\r` before it is tolerated). A
//! reader never buffers more than the limit it is given, so an endless line
//! from a hostile peer costs bounded memory.

use std::io::{BufRead, ErrorKind, Write};

use crate::error::ProtocolError;

/// Reads one line of at most `limit` bytes (newline included) and returns it
/// without its line ending. `Ok(None)` means the stream ended cleanly before
/// the line began.
pub fn read_line<R: BufRead + ?Sized>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<String>, ProtocolError> {
    let mut line: Vec<u8> = Vec::new();
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
        let room = limit.saturating_sub(line.len());
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
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ProtocolError::ControlChar);
    }
    Ok(Some(text))
}

/// Like [`read_line`], but a clean end of stream is an error too.
pub fn expect_line<R: BufRead + ?Sized>(
    reader: &mut R,
    limit: usize,
) -> Result<String, ProtocolError> {
    read_line(reader, limit)?.ok_or(ProtocolError::Closed)
}

/// Writes `line` followed by `\n`.
pub fn write_line<W: Write + ?Sized>(writer: &mut W, line: &str) -> Result<(), ProtocolError> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    writer.write_all(&bytes)?;
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
    fn limit_counts_the_newline_and_holds_across_buffer_refills() {
        let mut r = &b"abcd\n"[..];
        assert!(matches!(
            read_line(&mut r, 4),
            Err(ProtocolError::LineTooLong { limit: 4 })
        ));
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
    fn write_adds_newline() {
        let mut out = Vec::new();
        write_line(&mut out, "LIST").unwrap();
        assert_eq!(out, b"LIST\n");
    }
}
