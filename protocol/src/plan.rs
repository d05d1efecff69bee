//! The N-stream plan: how many data streams a file gets, and the
//! binary frame header that carries each chunk on a stream.
//!
//! The server answers `PLAN <name>` with
//! `ACCEPTED <N> <M> <PORT_1> ... <PORT_N> <TOKEN>`. Chunk `K` (0-based) is
//! bytes `K * CHUNK_SIZE ..` of the file, goes on stream `K mod N`, and is
//! framed by [`FrameHeader`]: `K` as a big-endian u64, then its length as a
//! big-endian u32, then the bytes.

use crate::PIECE_SIZE;

/// Bytes per chunk: one piece, so every chunk is checked against its
/// per-piece digest as it lands.
pub const CHUNK_SIZE: u64 = PIECE_SIZE;

/// Most streams a plan uses.
pub const MAX_STREAMS: u32 = 8;

/// The seed's megabyte: decimal, as in "10 MB".
pub const MB: u64 = 1_000_000;

/// Number of streams for a file of `size` bytes, with `unit` bytes to the
/// table's megabyte (`MB` normally; smaller in tests to exercise every row
/// with small files). Ranges include their lower bound:
///
/// | size | streams |
/// | --- | --- |
/// | under 10 MB | 1 |
/// | 10 MB to under 50 MB | 2 |
/// | 50 MB to under 100 MB | 3 |
/// | 100 MB to under 250 MB | 5 |
/// | 250 MB to under 700 MB | 6 (the seed leaves 250-400 MB open; it joins the 400-700 MB row) |
/// | 700 MB to 1 GB (1000 MB) inclusive | 7 |
/// | over 1 GB | 8 |
pub fn streams_for_size(size: u64, unit: u64) -> u32 {
    let unit = unit.max(1);
    let mb = |n: u64| n.saturating_mul(unit);
    match size {
        s if s < mb(10) => 1,
        s if s < mb(50) => 2,
        s if s < mb(100) => 3,
        s if s < mb(250) => 5,
        s if s < mb(700) => 6,
        s if s <= mb(1000) => 7,
        _ => 8,
    }
}

/// Number of chunks in a file of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// Number of chunks stream `index` of `streams` carries (chunk K goes on
/// stream K mod N).
pub fn chunks_of_stream(chunks: u64, streams: u32, index: u32) -> u64 {
    let (streams, index) = (streams.max(1) as u64, index as u64);
    if index >= chunks {
        0
    } else {
        (chunks - index).div_ceil(streams)
    }
}

/// The binary header in front of every chunk on a data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub chunk: u64,
    pub length: u32,
}

impl FrameHeader {
    pub const LEN: usize = 12;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.chunk.to_be_bytes());
        out[8..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; Self::LEN]) -> FrameHeader {
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&bytes[..8]);
        let mut length = [0u8; 4];
        length.copy_from_slice(&bytes[8..]);
        FrameHeader {
            chunk: u64::from_be_bytes(chunk),
            length: u32::from_be_bytes(length),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_at_every_boundary() {
        let cases = [
            (0, 1),
            (10 * MB - 1, 1),
            (10 * MB, 2),
            (50 * MB - 1, 2),
            (50 * MB, 3),
            (100 * MB - 1, 3),
            (100 * MB, 5),
            (250 * MB - 1, 5),
            (250 * MB, 6),
            (400 * MB, 6),
            (700 * MB - 1, 6),
            (700 * MB, 7),
            (1000 * MB, 7),
            (1000 * MB + 1, 8),
            (u64::MAX, 8),
        ];
        for (size, streams) in cases {
            assert_eq!(streams_for_size(size, MB), streams, "size {size}");
        }
    }

    #[test]
    fn table_scales_for_tests() {
        assert_eq!(streams_for_size(9_999, 1000), 1);
        assert_eq!(streams_for_size(10_000, 1000), 2);
        assert_eq!(streams_for_size(1_000_001, 1000), 8);
        assert_eq!(streams_for_size(5, 0), 1, "a zero unit is treated as 1");
    }

    #[test]
    fn frame_header_round_trips_big_endian() {
        let h = FrameHeader {
            chunk: 0x0102_0304_0506_0708,
            length: 0x0A0B_0C0D,
        };
        let bytes = h.encode();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(FrameHeader::decode(&bytes), h);
    }

    #[test]
    fn chunks_spread_round_robin() {
        assert_eq!(chunks_of_stream(10, 3, 0), 4); // 0 3 6 9
        assert_eq!(chunks_of_stream(10, 3, 1), 3); // 1 4 7
        assert_eq!(chunks_of_stream(10, 3, 2), 3); // 2 5 8
        assert_eq!(chunks_of_stream(1, 8, 5), 0);
        assert_eq!(chunks_of_stream(0, 1, 0), 0);
        let total: u64 = (0..7).map(|i| chunks_of_stream(1000, 7, i)).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn chunks_cover_the_file() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE + 1), 2);
    }
}
