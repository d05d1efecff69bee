//! Inputs pinned from fuzzing the protocol parsers (see fuzz/README.md).
//!
//! The fuzz targets found no crash, hang or unbounded allocation; these are
//! the corner cases their properties lean on, kept as plain tests so that
//! a change to the parsers that breaks one shows up in `cargo test`
//! without a fuzzer. A crash found later goes here too, as the minimised
//! input (`#[ignore = "bug: ..."]` until it is fixed).

use std::io::BufReader;

use fastdl_protocol::digest::piece_count;
use fastdl_protocol::line::read_line;
use fastdl_protocol::listing::read_pieces;
use fastdl_protocol::{
    validate_name, Digest, Entry, ErrorCode, Listing, NameError, ProtocolError, Reply, Request,
    MAX_LIST_ENTRIES, MAX_REPLY_LINE, MAX_REQUEST_LINE,
};

const HEX: &str = "3b1c6f0e1d8d1c4b6e5f2a7b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d";

#[test]
fn line_limit_edges_hold_with_one_byte_buffers() {
    // The limit counts the text, not its ending.
    for (text_len, limit, fits) in [
        (0, 0, true),
        (1, 0, false),
        (4096, 4096, true),
        (4097, 4096, false),
    ] {
        let mut input = vec![b'x'; text_len];
        input.push(b'\n');
        let mut r = BufReader::with_capacity(1, &input[..]);
        let got = read_line(&mut r, limit);
        if fits {
            assert_eq!(got.unwrap().map(|l| l.len()), Some(text_len));
        } else {
            assert!(
                matches!(got, Err(ProtocolError::LineTooLong { .. })),
                "{text_len} bytes, limit {limit}: {got:?}"
            );
        }
    }
    // Only one CR before the LF is a line ending; another is a control char.
    let mut r = &b"LIST\r\r\n"[..];
    assert!(matches!(
        read_line(&mut r, 100),
        Err(ProtocolError::ControlChar)
    ));
    // A refused line is consumed: the next one reads normally.
    let mut r = &b"\xff\nLIST\n"[..];
    assert!(matches!(
        read_line(&mut r, 100),
        Err(ProtocolError::NotUtf8)
    ));
    assert_eq!(read_line(&mut r, 100).unwrap().as_deref(), Some("LIST"));
}

#[test]
fn requests_re_encode_canonically() {
    for (line, canonical) in [
        ("get 007 000 a", "GET 7 0 a"),
        ("fastdl 0001", "FASTDL 1"),
        ("Pieces x  y", "PIECES x  y"),
        (
            "GET 18446744073709551615 0 a/b c",
            "GET 18446744073709551615 0 a/b c",
        ),
    ] {
        let request = Request::parse(line).unwrap();
        assert_eq!(request.to_string(), canonical);
        assert_eq!(Request::parse(canonical).unwrap(), request);
    }
    for line in [
        "GET 00000000000000000000001 0 a", // 23 digits: refused even though the value fits
        "GET 1 2 a\0",
        "GET 1 2 a\u{85}",  // NEL: a C1 control character
        "\u{ff27}ET 1 2 a", // fullwidth G is not a command letter
        "GET 1 2 ",
        "PIECES  x",
    ] {
        assert!(Request::parse(line).is_err(), "{line:?}");
    }
}

#[test]
fn the_wrong_input_reply_to_a_hostile_line_is_one_bounded_line() {
    // Characters that Debug-escape to many bytes, a whole request line of them.
    for c in ['\u{200b}', '"', '\\', '\t', '€'] {
        let mut line = "GET 1 2 ".to_owned();
        while line.len() + c.len_utf8() < MAX_REQUEST_LINE {
            line.push(c);
        }
        let error = Request::parse(&line).unwrap_err();
        let reply = Reply::wrong_input(error.to_string()).to_string();
        assert!(reply.len() < MAX_REPLY_LINE, "{c:?}: {} bytes", reply.len());
        assert!(!reply.contains(['\n', '\r']));
        assert!(matches!(Reply::parse(&reply), Ok(Reply::WrongInput { .. })));
        let malformed = Request::parse(&format!("X{line}")).unwrap_err();
        assert!(malformed.to_string().len() < 2000, "{c:?}: {malformed}");
    }
}

#[test]
fn replies_with_tabs_normalise_once_then_stay() {
    let cases = [
        ("WRONG_INPUT a\tb", "WRONG_INPUT a b"),
        ("ERROR A\tB c\td", "ERROR A_B c d"),
        ("ERROR X", "ERROR X "),
        ("error busy now", "ERROR busy now"),
        ("data 0005", "DATA 5"),
    ];
    for (line, once) in cases {
        let reply = Reply::parse(line).unwrap();
        assert_eq!(reply.to_string(), once, "{line:?}");
        let again = Reply::parse(once).unwrap();
        assert_eq!(again.to_string(), once, "{line:?}");
    }
    assert_eq!(
        Reply::parse("ERROR busy now").unwrap(),
        Reply::Error {
            code: ErrorCode::Other("busy".into()),
            message: "now".into()
        },
        "codes are case-sensitive, unlike commands"
    );
}

#[test]
fn entry_lines_re_encode_canonically() {
    let line = format!("007) 1) x\t0042\t{}", HEX.to_uppercase());
    let (index, entry) = Entry::parse_line(&line).unwrap();
    assert_eq!((index, entry.name.as_str(), entry.size), (7, "1) x", 42));
    let canonical = entry.to_line(index as usize);
    assert_eq!(canonical, format!("7) 1) x\t42\t{HEX}"));
    assert_eq!(Entry::parse_line(&canonical).unwrap(), (index, entry));
    for bad in [
        format!("1) a\t1\t{HEX}\t"),
        format!("1) a\t\t{HEX}"),
        format!("1)  a\t1\t{HEX}"),
        format!("1) a/\t1\t{HEX}"),
        format!("123456789012345678901) a\t1\t{HEX}"),
        format!("1) a\t123456789012345678901\t{HEX}"),
        format!("1) a\t1\t{HEX}0"),
    ] {
        assert!(Entry::parse_line(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn huge_counts_cost_nothing_up_front() {
    // Counts at and past the caps, against an empty or short body: an
    // error, at once, with no allocation sized by the count.
    let caps = piece_count(u64::MAX);
    assert_eq!(caps, 1 << 44);
    for count in [caps, caps + 1, u64::MAX] {
        assert!(read_pieces(&mut &b""[..], count).is_err());
        assert!(read_pieces(&mut &b"END\n"[..], count).is_err());
    }
    for count in [MAX_LIST_ENTRIES, MAX_LIST_ENTRIES + 1, u64::MAX] {
        assert!(Listing::read_body(&mut &b""[..], count).is_err());
        assert!(Listing::read_body(&mut &b"END\n"[..], count).is_err());
    }
    // Zero is a real count: just END.
    assert_eq!(
        read_pieces(&mut &b"END\n"[..], 0).unwrap(),
        Vec::<Digest>::new()
    );
    assert!(Listing::read_body(&mut &b"END\n"[..], 0)
        .unwrap()
        .is_empty());
}

#[test]
fn a_listing_with_a_repeated_name_keeps_the_first() {
    let other = "0".repeat(64);
    let body = format!("1) a\t1\t{HEX}\n2) a\t2\t{other}\nEND\n");
    let listing = Listing::read_body(&mut body.as_bytes(), 2).unwrap();
    assert_eq!(listing.len(), 1);
    assert_eq!(listing.get("a").unwrap().size, 1);
}

#[test]
fn name_edges() {
    for ok in [
        "a..b",
        "...",
        "a/...",
        ".a/b.",
        "a/ b",
        "a /b",
        "x\u{2028}y",      // LINE SEPARATOR: not a control char, and not a '\n' byte
        "\u{feff}x",       // BOM: neither control nor whitespace
        "\u{202e}txt.exe", // RIGHT-TO-LEFT OVERRIDE: a format char, allowed
    ] {
        assert_eq!(validate_name(ok), Ok(()), "{ok:?}");
    }
    for (bad, why) in [
        ("\u{2028}x", NameError::OuterWhitespace),
        ("x\u{a0}", NameError::OuterWhitespace),
        ("a\u{85}b", NameError::ControlChar),
        ("a\u{9f}b", NameError::ControlChar),
        ("a/./b", NameError::DotComponent),
        ("a/..", NameError::DotComponent),
        ("/", NameError::Absolute),
        ("//a", NameError::Absolute),
        ("a\\b", NameError::Backslash),
    ] {
        assert_eq!(validate_name(bad), Err(why), "{bad:?}");
    }
    // Length limits count bytes, not chars.
    let c = "é".repeat(128); // 256 bytes
    assert_eq!(validate_name(&c), Err(NameError::ComponentTooLong));
    let name = vec!["é".repeat(127); 4].join("/") + "/" + &"b".repeat(4); // 1024 bytes
    assert_eq!(name.len(), 1024);
    assert_eq!(validate_name(&name), Ok(()));
    assert_eq!(validate_name(&format!("{name}b")), Err(NameError::TooLong));
}

/// Found by the `plan_frames` target (built with `-a`): a frame header's
/// chunk ordinal comes from the server, and `client/src/plan.rs` computes
/// `piece_range(size, frame.chunk)` before checking `frame.chunk < chunks`.
/// Minimised input: chunk ordinal `1 << 44` (frame header bytes
/// `00 00 10 00 00 00 00 00 | 00 10 00 00`).
#[test]
fn piece_range_of_a_hostile_chunk_ordinal_does_not_overflow() {
    use fastdl_protocol::digest::piece_range;
    use fastdl_protocol::plan::FrameHeader;
    let frame = FrameHeader::decode(&[0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
    assert_eq!(frame.chunk, 1 << 44);
    for index in [frame.chunk, (1 << 44) + 3, u64::MAX] {
        let (_, length) = piece_range(30 << 20, index);
        assert_eq!(length, 0, "index {index} is past the end of any file");
    }
}
