//! BLAKE3 digests and the piece tree.
//!
//! A file is cut into pieces of [`PIECE_SIZE`] bytes (the last one may be
//! shorter). Because the piece size is a power-of-two number of BLAKE3
//! chunks, every piece is a complete subtree of the file's BLAKE3 tree: its
//! chaining value can be computed on its own, as the bytes stream in, and
//! the chaining values of all pieces combine into the file's ordinary
//! `blake3::hash`. This lets a client verify each piece as it lands and the
//! whole file without reading it back, and lets a server publish per-piece
//! digests from the same single pass that gives the file digest.

use std::fmt;
use std::io::{self, Read};

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode,
};

use crate::PIECE_SIZE;

/// A 32-byte BLAKE3 digest: a whole file's hash or one piece's chaining value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(text: &str) -> Option<Digest> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0])?;
            let lo = hex_value(pair[1])?;
            out[i] = hi << 4 | lo;
        }
        Some(Digest(out))
    }

    /// The digest of the empty input.
    pub fn of_empty() -> Digest {
        Digest(*blake3::hash(b"").as_bytes())
    }

    /// The digest of `data` as one whole input.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Number of pieces in a file of `size` bytes.
pub fn piece_count(size: u64) -> u64 {
    size.div_ceil(PIECE_SIZE)
}

/// Byte range `(offset, len)` of piece `index` in a file of `size` bytes.
pub fn piece_range(size: u64, index: u64) -> (u64, u64) {
    // A piece index can come from a peer: saturate rather than overflow
    // (an index past the end gets an empty range).
    let offset = index.saturating_mul(PIECE_SIZE);
    (offset, PIECE_SIZE.min(size.saturating_sub(offset)))
}

/// Computes one piece's digest from its bytes, fed in any number of slices.
pub struct PieceHasher {
    hasher: blake3::Hasher,
    whole_file: bool,
}

impl PieceHasher {
    /// A hasher for piece `index` of a file of `file_size` bytes.
    pub fn new(file_size: u64, index: u64) -> PieceHasher {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(index * PIECE_SIZE);
        PieceHasher {
            hasher,
            whole_file: file_size <= PIECE_SIZE,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// The piece's digest. For a file of one piece this is the file digest;
    /// otherwise it is the piece's BLAKE3 chaining value.
    pub fn finalize(&self) -> Digest {
        if self.whole_file {
            Digest(*self.hasher.finalize().as_bytes())
        } else if self.hasher.count() == 0 {
            // An empty non-final piece cannot exist; report a digest that
            // matches nothing rather than panicking inside blake3.
            Digest([0; 32])
        } else {
            Digest(self.hasher.finalize_non_root())
        }
    }
}

/// The digests of every piece of a file, and the file digest they combine to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceTree {
    pub size: u64,
    pub pieces: Vec<Digest>,
    pub root: Digest,
}

impl PieceTree {
    /// Builds the tree from per-piece digests. Returns `None` when the number
    /// of digests does not fit `size`.
    pub fn from_pieces(size: u64, pieces: Vec<Digest>) -> Option<PieceTree> {
        if pieces.len() as u64 != piece_count(size) {
            return None;
        }
        let root = root_digest(size, &pieces);
        Some(PieceTree { size, pieces, root })
    }

    /// Reads exactly `size` bytes from `reader` and hashes them piece by piece.
    pub fn from_reader<R: Read>(mut reader: R, size: u64) -> io::Result<PieceTree> {
        let count = piece_count(size);
        let mut pieces = Vec::with_capacity(count as usize);
        let mut buf = vec![0u8; PIECE_SIZE as usize];
        for index in 0..count {
            let (_, len) = piece_range(size, index);
            let buf = &mut buf[..len as usize];
            reader.read_exact(buf)?;
            let mut hasher = PieceHasher::new(size, index);
            hasher.update(buf);
            pieces.push(hasher.finalize());
        }
        let root = root_digest(size, &pieces);
        Ok(PieceTree { size, pieces, root })
    }
}

/// Combines per-piece digests into the file digest (equal to `blake3::hash`
/// of the whole file). `pieces.len()` must be `piece_count(size)`.
pub fn root_digest(size: u64, pieces: &[Digest]) -> Digest {
    match pieces {
        [] => Digest::of_empty(),
        [single] => *single,
        _ => {
            let cvs: Vec<[u8; 32]> = pieces.iter().map(|d| d.0).collect();
            let (left_len, left, right) = split(&cvs, size);
            let l = merge(left, left_len);
            let r = merge(right, size - left_len);
            Digest(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
        }
    }
}

/// Splits a run of piece chaining values covering `len` bytes the way the
/// BLAKE3 tree splits that input.
fn split(cvs: &[[u8; 32]], len: u64) -> (u64, &[[u8; 32]], &[[u8; 32]]) {
    let left_len = left_subtree_len(len);
    let left_pieces = (left_len / PIECE_SIZE) as usize;
    (left_len, &cvs[..left_pieces], &cvs[left_pieces..])
}

fn merge(cvs: &[[u8; 32]], len: u64) -> [u8; 32] {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let (left_len, left, right) = split(cvs, len);
    let l = merge(left, left_len);
    let r = merge(right, len - left_len);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"abc");
        let text = d.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(Digest::from_hex(&text), Some(d));
        assert_eq!(Digest::from_hex(&text.to_uppercase()), Some(d));
        assert_eq!(Digest::from_hex(&text[1..]), None);
        assert_eq!(Digest::from_hex(&format!("{}g", &text[1..])), None);
    }

    #[test]
    fn pieces_combine_to_the_plain_blake3_hash() {
        let p = PIECE_SIZE as usize;
        for len in [
            0,
            1,
            1023,
            1024,
            1025,
            p - 1,
            p,
            p + 1,
            2 * p,
            3 * p + 5,
            5 * p - 1024,
        ] {
            let bytes = data(len);
            let tree = PieceTree::from_reader(&bytes[..], len as u64).unwrap();
            assert_eq!(tree.pieces.len() as u64, piece_count(len as u64));
            assert_eq!(tree.root, Digest::of(&bytes), "len {len}");
            let again = PieceTree::from_pieces(len as u64, tree.pieces.clone()).unwrap();
            assert_eq!(again, tree);
        }
    }

    #[test]
    fn piece_hasher_accepts_slices() {
        let len = 2 * PIECE_SIZE as usize + 7;
        let bytes = data(len);
        let tree = PieceTree::from_reader(&bytes[..], len as u64).unwrap();
        let (off, plen) = piece_range(len as u64, 1);
        let mut h = PieceHasher::new(len as u64, 1);
        for part in bytes[off as usize..(off + plen) as usize].chunks(4000) {
            h.update(part);
        }
        assert_eq!(h.finalize(), tree.pieces[1]);
    }

    #[test]
    fn a_changed_piece_changes_its_digest_and_the_root() {
        let len = 3 * PIECE_SIZE as usize;
        let mut bytes = data(len);
        let before = PieceTree::from_reader(&bytes[..], len as u64).unwrap();
        bytes[PIECE_SIZE as usize + 10] ^= 1;
        let after = PieceTree::from_reader(&bytes[..], len as u64).unwrap();
        assert_eq!(before.pieces[0], after.pieces[0]);
        assert_ne!(before.pieces[1], after.pieces[1]);
        assert_eq!(before.pieces[2], after.pieces[2]);
        assert_ne!(before.root, after.root);
    }

    #[test]
    fn wrong_piece_count_is_refused() {
        assert!(PieceTree::from_pieces(PIECE_SIZE + 1, vec![Digest([0; 32])]).is_none());
        assert!(PieceTree::from_pieces(0, vec![Digest([0; 32])]).is_none());
    }

    #[test]
    fn piece_ranges_cover_the_file() {
        let size = 2 * PIECE_SIZE + 3;
        assert_eq!(piece_range(size, 0), (0, PIECE_SIZE));
        assert_eq!(piece_range(size, 2), (2 * PIECE_SIZE, 3));
        assert_eq!(piece_count(0), 0);
        assert_eq!(piece_count(1), 1);
        assert_eq!(piece_count(PIECE_SIZE), 1);
        assert_eq!(piece_count(PIECE_SIZE + 1), 2);
    }
}
