//! `Request::parse` on whatever a client may send, through the same
//! `read_line` framing the server uses, plus directly on raw text.
//!
//! Properties: no panic; a framed line is never longer than the limit and
//! holds no newline or control character but tab; an accepted request
//! re-encodes to text that parses back to the same request, and any name
//! in it passes `validate_name`; the `WRONG_INPUT` reply the server would
//! send for a refused line fits one reply line and parses back.
#![no_main]

use std::io::BufReader;

use fastdl_protocol::line::read_line;
use fastdl_protocol::{
    validate_name, ProtocolError, Reply, Request, MAX_REPLY_LINE, MAX_REQUEST_LINE,
};
use libfuzzer_sys::fuzz_target;

fn check(line: &str) {
    match Request::parse(line) {
        Ok(request) => {
            if let Request::Get { name, .. } | Request::Pieces { name } | Request::Plan { name } =
                &request
            {
                assert_eq!(
                    validate_name(name),
                    Ok(()),
                    "{line:?} let a bad name through"
                );
                assert!(
                    line.ends_with(name.as_str()),
                    "{line:?}: name {name:?} is not the tail"
                );
            }
            if let Request::Join { token } = &request {
                assert_eq!(token.len(), 32, "{line:?}");
                assert!(token
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
            let text = request.to_string();
            assert!(!text.contains(['\n', '\r']), "{text:?}");
            assert_eq!(
                Request::parse(&text).ok().as_ref(),
                Some(&request),
                "{line:?} -> {request:?} -> {text:?} does not parse back"
            );
        }
        Err(e) => {
            // What the server answers to a bad request.
            let reply = Reply::wrong_input(e.to_string()).to_string();
            assert!(
                reply.len() < MAX_REPLY_LINE,
                "reply of {} bytes",
                reply.len()
            );
            assert!(!reply.contains(['\n', '\r']), "{reply:?}");
            assert!(
                matches!(Reply::parse(&reply), Ok(Reply::WrongInput { .. })),
                "{reply:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, cap, rest @ ..] = data else {
        return;
    };
    // Sometimes a tiny limit, to hit the limit logic with short inputs.
    let limit = if mode & 1 == 0 {
        MAX_REQUEST_LINE
    } else {
        (*mode >> 1) as usize % 48
    };
    // Buffer sizes from 1 byte up, so lines straddle refills.
    let capacity = 1 + (*cap as usize * 37) % 5000;
    let mut reader = BufReader::with_capacity(capacity, rest);
    loop {
        match read_line(&mut reader, limit) {
            Ok(Some(line)) => {
                assert!(
                    line.len() < limit.max(1),
                    "{} bytes, limit {limit}",
                    line.len()
                );
                assert!(
                    !line.chars().any(|c| c.is_control() && c != '\t'),
                    "{line:?}"
                );
                check(&line);
            }
            Ok(None) => break,
            // The server answers these and keeps reading.
            Err(ProtocolError::NotUtf8 | ProtocolError::ControlChar) => continue,
            // The server closes on these.
            Err(ProtocolError::LineTooLong { limit: l }) => {
                assert_eq!(l, limit);
                break;
            }
            Err(ProtocolError::Closed) => break,
            Err(e) => panic!("unexpected error from an in-memory reader: {e}"),
        }
    }
    // Straight to the parser, control characters and all.
    if let Ok(text) = std::str::from_utf8(rest) {
        check(text);
        for line in text.split('\n') {
            check(line);
        }
    }
});
