//! Typed errors for everything that can go wrong reading or writing the
//! protocol.

use std::io;

use crate::name::NameError;

/// An error while reading, parsing or writing protocol messages.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection where a message was expected.
    #[error("connection closed by peer")]
    Closed,
    /// A line exceeded the allowed length before its newline arrived.
    #[error("line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    /// A line was not valid UTF-8.
    #[error("line is not valid UTF-8")]
    NotUtf8,
    /// A line contained a control character other than the final CR LF.
    #[error("line contains a control character")]
    ControlChar,
    /// A line did not have the expected shape.
    #[error("malformed {what}: {line:?}")]
    Malformed { what: &'static str, line: String },
    /// A name broke the name rules.
    #[error("bad name: {0}")]
    BadName(#[from] NameError),
    /// The peer answered with something that is not valid at this point.
    #[error("unexpected reply: {0:?}")]
    Unexpected(String),
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, line: &str) -> Self {
        // Keep error messages bounded even for hostile input.
        let mut line = line.to_owned();
        if line.len() > 200 {
            let mut cut = 200;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        ProtocolError::Malformed { what, line }
    }
}
