//! Landing one piece: read exactly its bytes (held to `--limit-rate`),
//! hash them as they arrive, judge them against the piece's digest
//! (waiting for the digests if they are still on their way), and write a
//! good piece at its offset in the part file. Nothing unverified is ever
//! written.

use std::io::Read;

use fastdl_protocol::digest::{piece_range, PieceHasher};
use log::warn;

use super::attempt::{Attempt, Stop};
use super::expected::{Judge, Ticket};
use super::outcome::FileError;
use super::pieces::Taker;
use super::ratelimit::RateLimit;
use crate::disk::piece_writer::PieceBuf;

/// Bytes read at a time (hashing and progress follow each slice).
const SLICE: usize = 256 * 1024;

/// What became of a piece whose bytes were read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landed {
    /// Verified, written, counted.
    Yes,
    /// Verified, but another copy (the end game) landed first.
    Copy,
    /// Not verified (it goes back to be fetched again, or the attempt
    /// stopped).
    No,
}

/// Reads piece `piece` into `buf` (its exact length), hashing and counting
/// it as it comes; its digest.
fn read_piece(
    reader: &mut dyn Read,
    attempt: &Attempt,
    piece: u64,
    buf: &mut [u8],
    limit: Option<&RateLimit>,
) -> std::io::Result<fastdl_protocol::Digest> {
    let progress = &attempt.progress;
    let mut hasher = PieceHasher::new(attempt.size(), piece);
    let mut got = 0usize;
    while got < buf.len() {
        let mut want = SLICE.min(buf.len() - got);
        if let Some(limit) = limit {
            want = want.min(limit.slice());
            limit.acquire(want);
        }
        let slice = &mut buf[got..got + want];
        if let Err(e) = reader.read_exact(slice) {
            if attempt.queue.landed(piece) {
                // A copy cut off (the end game): another one landed.
                progress.copy_not_used(got as u64);
            } else {
                // This piece will be fetched again: its bytes so far do
                // not count towards the file.
                progress.take_back(got as u64);
            }
            return Err(e);
        }
        hasher.update(slice);
        got += want;
        progress.add(want as u64);
    }
    Ok(hasher.finalize())
}

/// Which piece is landed, who asked for it (none: a plan stream pushed
/// it), and the digests request it may wait for.
#[derive(Debug, Clone, Copy)]
pub struct PieceRequest {
    pub piece: u64,
    pub by: Option<Taker>,
    pub ticket: Ticket,
}

/// Lands the piece `request` of `attempt` from `reader` (exactly its
/// length), sent by `source`. Only an error of the reader is returned;
/// verification and write problems are recorded in the attempt.
pub fn land(
    reader: &mut dyn Read,
    attempt: &Attempt,
    request: PieceRequest,
    buf: &mut PieceBuf,
    limit: Option<&RateLimit>,
    source: &str,
) -> std::io::Result<Landed> {
    let length = piece_range(attempt.size(), request.piece).1 as usize;
    let buf = buf.get(length);
    let digest = read_piece(reader, attempt, request.piece, buf, limit)?;
    Ok(judge_and_write(attempt, request, buf, digest, source))
}

/// Lands piece `request` of `attempt` from `bytes` already in memory
/// (exactly its length; an HTTP probe's answer) whose piece digest is
/// `digest`, written from where they are, without a copy.
pub fn land_bytes(
    attempt: &Attempt,
    request: PieceRequest,
    bytes: &[u8],
    digest: fastdl_protocol::Digest,
    source: &str,
) -> Landed {
    attempt.progress.add(bytes.len() as u64);
    judge_and_write(attempt, request, bytes, digest, source)
}

/// Judges piece `request`, read whole as `bytes` with digest `digest`,
/// against what is expected of it, and writes it if it is good.
fn judge_and_write(
    attempt: &Attempt,
    PieceRequest { piece, by, ticket }: PieceRequest,
    bytes: &[u8],
    digest: fastdl_protocol::Digest,
    source: &str,
) -> Landed {
    let name = &attempt.job.entry.name;
    let progress = &attempt.progress;
    let (offset, length) = piece_range(attempt.size(), piece);
    let length = length as usize;
    let want = match attempt.expected.piece(piece, ticket) {
        Judge::Against(want) => Some(want),
        Judge::Accept => None,
        // The digests will not come (the attempt has stopped), or not in
        // time for this piece: it is fetched again if still wanted.
        Judge::Never | Judge::NotYet => {
            progress.take_back(length as u64);
            attempt.queue.give_back(piece);
            return Landed::No;
        }
    };
    if want.is_some_and(|want| digest != want) {
        progress.take_back(length as u64);
        progress.fetched_piece(length as u64);
        warn!(
            "{name}: piece {piece} (bytes {offset}..{}) from {source} failed verification; fetching it again",
            offset + length as u64,
        );
        if !attempt.queue.failed(piece) {
            warn!("{name}: piece {piece} failed verification too often; giving up on this attempt");
            attempt.stop(Stop::Failed(FileError::BadPiece {
                piece,
                times: super::pieces::MAX_PIECE_FAILURES,
            }));
        }
        return Landed::No;
    }
    if attempt.queue.landed(piece) || attempt.is_stopped() {
        // Another copy landed first, or nothing more is wanted.
        progress.copy_not_used(length as u64);
        return Landed::Copy;
    }
    if let Err(e) = attempt.writer.write_at(bytes, offset) {
        attempt.queue.give_back(piece);
        attempt.stop(Stop::Failed(FileError::Disk {
            what: "cannot write",
            path: attempt.spot.part_path(),
            source: e,
        }));
        return Landed::No;
    }
    if !attempt.queue.complete(piece, digest, by) {
        // Both copies verified at once; the other one counted.
        progress.copy_not_used(length as u64);
        return Landed::Copy;
    }
    progress.fetched_piece(length as u64);
    Landed::Yes
}
