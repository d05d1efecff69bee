//! The N-stream plan as a client meets it from a (possibly hostile)
//! server: `ACCEPTED` and `STREAM` lines, then 12-byte frame headers whose
//! chunk ordinal and length are checked against the plan, using the
//! protocol helpers the client uses (`plan::FrameHeader`,
//! `digest::piece_range`, `plan::chunk_count`, `plan::streams_for_size`),
//! applied, as `client/src/plan.rs` does, to the raw server-sent values.
//!
//! Properties: no panic (build with `-a` for overflow checks); replies
//! re-encode to text that parses back the same; a frame header survives
//! encode/decode; a frame the checks accept lies inside the file; the
//! stream table gives 1..=8 streams and never goes down as files grow.
#![no_main]

use fastdl_protocol::digest::piece_range;
use fastdl_protocol::plan::{chunk_count, streams_for_size, FrameHeader, MAX_STREAMS, MB};
use fastdl_protocol::Reply;
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fn lines(text: &str) {
    for line in text.split('\n') {
        let Ok(reply) = Reply::parse(line) else {
            continue;
        };
        if let Reply::Accepted { ports, token, .. } = &reply {
            assert!(!ports.is_empty() && ports.len() <= MAX_STREAMS as usize);
            assert!(ports.iter().all(|&p| p != 0));
            assert_eq!(token.len(), 32);
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        if matches!(reply, Reply::Accepted { .. } | Reply::Stream { .. }) {
            let again = reply.to_string();
            assert_eq!(Reply::parse(&again).ok().as_ref(), Some(&reply), "{line:?}");
        }
    }
}

fn frames(u: &mut Unstructured) -> libfuzzer_sys::arbitrary::Result<()> {
    let size = u64::arbitrary(u)?;
    let unit = u64::arbitrary(u)?;
    let streams = streams_for_size(size, unit);
    assert!((1..=MAX_STREAMS).contains(&streams));
    let bigger = size.saturating_add(u64::arbitrary(u)?);
    assert!(
        streams_for_size(bigger, unit) >= streams,
        "{size} -> {bigger}"
    );
    let streams = streams_for_size(size, MB) as u64;
    let chunks = chunk_count(size);
    let index = u64::arbitrary(u)? % streams;
    // The frames a server sends on stream `index`, checked as the client does.
    // (Arbitrary arrays never run out: they fill with zeros. Take bytes.)
    while let Ok(bytes) = u.bytes(FrameHeader::LEN) {
        let raw: [u8; FrameHeader::LEN] = bytes.try_into().unwrap();
        let frame = FrameHeader::decode(&raw);
        assert_eq!(frame.encode(), raw);
        let (offset, length) = piece_range(size, frame.chunk);
        let accepted =
            frame.chunk < chunks && frame.chunk % streams == index && frame.length as u64 == length;
        if accepted {
            assert!(length > 0 || size == 0);
            assert!(offset.checked_add(length).is_some_and(|end| end <= size));
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            lines(text);
        }
    } else {
        let _ = frames(&mut Unstructured::new(rest));
    }
});
