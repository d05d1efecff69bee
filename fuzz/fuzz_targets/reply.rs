//! What a client reads from a (possibly hostile) server: reply header
//! lines (`Reply::parse`), listing bodies (`Listing::read_body`) and digest
//! lists (`listing::read_pieces`), with small counts, huge counts, and the
//! counts the headers themselves announce.
//!
//! Properties: no panic, no allocation beyond what the input justifies
//! (libFuzzer's -rss_limit_mb and -malloc_limit_mb catch that); a parsed
//! reply re-encodes to one line that parses to a reply encoding the same
//! way; an accepted listing or digest list is exactly what it claims and
//! survives the server's own encoder and the parser again.
#![no_main]

use std::io::{BufRead, BufReader};

use fastdl_protocol::digest::piece_count;
use fastdl_protocol::line::expect_line;
use fastdl_protocol::listing::{read_pieces, write_pieces};
use fastdl_protocol::{
    validate_name, Listing, ProtocolError, Reply, MAX_LIST_ENTRIES, MAX_REPLY_LINE, PIECE_SIZE,
};
use libfuzzer_sys::fuzz_target;

fn count_from(byte: u8) -> u64 {
    const HUGE: [u64; 8] = [
        MAX_LIST_ENTRIES - 1,
        MAX_LIST_ENTRIES,
        MAX_LIST_ENTRIES + 1,
        u32::MAX as u64,
        1 << 43,
        1 << 44, // piece_count(u64::MAX)
        (1 << 44) + 1,
        u64::MAX,
    ];
    if byte >= 0xf0 {
        HUGE[(byte & 7) as usize]
    } else {
        (byte % 40) as u64
    }
}

fn check_reply(reply: &Reply) {
    let text = reply.to_string();
    assert!(!text.contains(['\n', '\r']), "{text:?}");
    let again = Reply::parse(&text).unwrap_or_else(|e| panic!("{reply:?} -> {text:?}: {e}"));
    assert_eq!(again.to_string(), text, "{reply:?} -> {again:?}");
}

fn check_listing(listing: &Listing, count: u64) {
    assert!(listing.len() as u64 <= count);
    for entry in listing.entries() {
        assert_eq!(validate_name(&entry.name), Ok(()), "{:?}", entry.name);
        assert_eq!(listing.get(&entry.name), Some(entry));
    }
    let mut wire = Vec::new();
    listing.write_reply(&mut wire).unwrap();
    let mut r = &wire[..];
    let header = Reply::parse(&expect_line(&mut r, MAX_REPLY_LINE).unwrap()).unwrap();
    assert_eq!(
        header,
        Reply::List {
            count: listing.len() as u64
        }
    );
    let back = Listing::read_body(&mut r, listing.len() as u64).unwrap();
    assert_eq!(&back, listing);
    assert!(r.is_empty());
}

fn check_pieces(pieces: &[fastdl_protocol::Digest], count: u64) {
    assert_eq!(pieces.len() as u64, count);
    let size = count * PIECE_SIZE;
    let mut wire = Vec::new();
    write_pieces(&mut wire, size, pieces).unwrap();
    let mut r = &wire[..];
    let header = Reply::parse(&expect_line(&mut r, MAX_REPLY_LINE).unwrap()).unwrap();
    assert_eq!(
        header,
        Reply::Pieces {
            size,
            piece_size: PIECE_SIZE,
            count
        }
    );
    assert_eq!(piece_count(size), count);
    assert_eq!(read_pieces(&mut r, count).unwrap(), pieces);
    assert!(r.is_empty());
}

/// Reads replies the way a client does until the stream ends or breaks.
fn client_stream<R: BufRead>(reader: &mut R) {
    for _ in 0..64 {
        let line = match expect_line(reader, MAX_REPLY_LINE) {
            Ok(line) => line,
            Err(ProtocolError::NotUtf8 | ProtocolError::ControlChar) => continue,
            Err(_) => return,
        };
        assert!(line.len() < MAX_REPLY_LINE);
        let Ok(reply) = Reply::parse(&line) else {
            continue;
        };
        check_reply(&reply);
        match reply {
            Reply::List { count } => match Listing::read_body(reader, count) {
                Ok(listing) => check_listing(&listing, count),
                Err(_) => return,
            },
            Reply::Pieces { count, .. } => match read_pieces(reader, count) {
                Ok(pieces) => check_pieces(&pieces, count),
                Err(_) => return,
            },
            Reply::Data { length } => {
                // Skip the data bytes, as far as they go.
                let mut left = length;
                while left > 0 {
                    let Ok(buf) = reader.fill_buf() else { return };
                    if buf.is_empty() {
                        return;
                    }
                    let n = buf.len().min(left.min(usize::MAX as u64) as usize);
                    reader.consume(n);
                    left -= n as u64;
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, count, cap, rest @ ..] = data else {
        return;
    };
    let capacity = 1 + (*cap as usize * 53) % 9000;
    let mut reader = BufReader::with_capacity(capacity, rest);
    let count = count_from(*count);
    match mode % 3 {
        0 => client_stream(&mut reader),
        1 => {
            if let Ok(listing) = Listing::read_body(&mut reader, count) {
                check_listing(&listing, count);
            }
        }
        _ => {
            if let Ok(pieces) = read_pieces(&mut reader, count) {
                check_pieces(&pieces, count);
            }
        }
    }
    // Reply::parse straight on the text, control characters and all.
    if let Ok(text) = std::str::from_utf8(rest) {
        for line in text.split('\n') {
            if let Ok(reply) = Reply::parse(line) {
                if !line.chars().any(char::is_control) {
                    check_reply(&reply);
                }
            }
        }
    }
});
