//! `Entry::parse_line` on arbitrary text, and the round trip both ways.
//!
//! Properties: no panic; an accepted line names a valid name, and its
//! entry re-encodes (`to_line` with the parsed index) to a line that
//! parses to the same index and entry; from the other side, an entry built
//! from arbitrary fields encodes to a line that parses back to exactly it
//! if and only if its name is valid; a one-line listing body accepts the
//! line exactly when the framing and `parse_line` do.
#![no_main]

use fastdl_protocol::line::read_line;
use fastdl_protocol::{validate_name, Digest, Entry, Listing, MAX_REPLY_LINE};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fn parsed_side(line: &str) {
    let Ok((index, entry)) = Entry::parse_line(line) else {
        return;
    };
    assert_eq!(validate_name(&entry.name), Ok(()), "{line:?}");
    let again = entry.to_line(index as usize);
    assert!(!again.contains(['\n', '\r']), "{again:?}");
    let back = Entry::parse_line(&again).unwrap_or_else(|e| panic!("{line:?} -> {again:?}: {e}"));
    assert_eq!(back, (index, entry.clone()), "{line:?} -> {again:?}");
    assert_eq!(back.1.to_line(index as usize), again, "not stable");

    // The same line as a one-entry LIST body, as a client reads it.
    if index == 1 && !line.contains('\r') {
        let body = format!("{line}\nEND\n");
        let framed = read_line(&mut body.as_bytes(), MAX_REPLY_LINE).is_ok_and(|l| l.is_some());
        let listing = Listing::read_body(&mut body.as_bytes(), 1);
        assert_eq!(listing.is_ok(), framed, "{line:?}: {listing:?}");
        if let Ok(listing) = listing {
            assert_eq!(listing.entries(), [entry]);
        }
    }
}

fn built_side(u: &mut Unstructured) -> libfuzzer_sys::arbitrary::Result<()> {
    let index = u64::arbitrary(u)?;
    let size = u64::arbitrary(u)?;
    let digest = Digest(<[u8; 32]>::arbitrary(u)?);
    let name = String::arbitrary(u)?;
    let entry = Entry { name, size, digest };
    let line = entry.to_line(index as usize);
    let parsed = Entry::parse_line(&line);
    if validate_name(&entry.name).is_ok() {
        assert_eq!(parsed.ok(), Some((index, entry)), "{line:?}");
    } else {
        assert!(parsed.is_err(), "{line:?} parsed with an invalid name");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            parsed_side(text);
            for line in text.split('\n') {
                parsed_side(line);
            }
        }
    } else {
        let _ = built_side(&mut Unstructured::new(rest));
    }
});
