//! The resume journal kept beside each part file.
//!
//! It names the file's identity (name, size and the key of its version:
//! the listed digest, or for a URL a digest of its URL, size and
//! validators) and the pieces already complete, with the BLAKE3 digest
//! each had when it was verified and written. It is replaced atomically (write, fsync,
//! rename), at most about once a second while a download runs and once at
//! its end. On the next attempt a journal whose identity still matches the
//! list lets the part file be resumed: its pieces are verified against the
//! server's per-piece digests, or (a source without them) against the
//! digests kept here, so a journal can never make a piece that is not
//! on disk as it was written count as good. A journal for another version
//! of the file means the part is dropped and the file starts over.
//!
//! Format (text, one field per line):
//!
//! ```text
//! fastdl-journal 1
//! name sub/movie night.mkv
//! size 734003200
//! digest <64 hex digits>
//! piece-size 1048576
//! done 0-15,17,20-699
//! kept <64 hex digits>,<64 hex digits>,...
//! ```
//!
//! `kept` holds one digest per complete piece, in piece order.

use std::io;

use fastdl_protocol::{Digest, Entry, PIECE_SIZE};

use super::store::Spot;

const MAGIC: &str = "fastdl-journal 1";

/// Longest journal read (a 1 TiB file's is about 7 MiB at worst).
const MAX_JOURNAL_BYTES: u64 = 16 << 20;

/// What a journal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub name: String,
    pub size: u64,
    pub digest: Digest,
    /// One flag per piece: complete or not.
    pub done: Vec<bool>,
    /// The digest of each complete piece, in order (empty: not recorded).
    pub kept: Vec<Digest>,
}

impl Journal {
    /// Whether this journal describes exactly the listed `entry`.
    pub fn matches(&self, entry: &Entry) -> bool {
        self.name == entry.name && self.size == entry.size && self.digest == entry.digest
    }

    /// A journal of what `pieces` says has landed (the digest of each
    /// landed piece, `None` for the others).
    pub fn of(entry: &Entry, pieces: &[Option<Digest>]) -> Journal {
        Journal {
            name: entry.name.clone(),
            size: entry.size,
            digest: entry.digest,
            done: pieces.iter().map(Option::is_some).collect(),
            kept: pieces.iter().flatten().copied().collect(),
        }
    }

    /// Per piece, the digest it had when written; `None` if the journal
    /// did not record them.
    pub fn kept_pieces(&self) -> Option<Vec<Option<Digest>>> {
        if self.kept.is_empty() && self.done.iter().any(|d| *d) {
            return None;
        }
        let mut kept = self.kept.iter();
        Some(
            self.done
                .iter()
                .map(|&done| if done { kept.next().copied() } else { None })
                .collect(),
        )
    }

    pub fn encode(&self) -> String {
        let mut ranges = Vec::new();
        let mut i = 0;
        while i < self.done.len() {
            if !self.done[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i + 1 < self.done.len() && self.done[i + 1] {
                i += 1;
            }
            ranges.push(if start == i {
                format!("{start}")
            } else {
                format!("{start}-{i}")
            });
            i += 1;
        }
        let kept: Vec<String> = self.kept.iter().map(Digest::to_string).collect();
        format!(
            "{MAGIC}\nname {}\nsize {}\ndigest {}\npiece-size {PIECE_SIZE}\ndone {}\nkept {}\n",
            self.name,
            self.size,
            self.digest,
            ranges.join(","),
            kept.join(",")
        )
    }

    /// Parses a journal; `None` for anything not written by this version.
    pub fn parse(text: &str) -> Option<Journal> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let name = lines.next()?.strip_prefix("name ")?.to_owned();
        let size: u64 = lines.next()?.strip_prefix("size ")?.parse().ok()?;
        let digest = Digest::from_hex(lines.next()?.strip_prefix("digest ")?)?;
        let piece_size: u64 = lines.next()?.strip_prefix("piece-size ")?.parse().ok()?;
        if piece_size != PIECE_SIZE {
            return None;
        }
        let count = usize::try_from(size.div_ceil(PIECE_SIZE)).ok()?;
        let mut done = vec![false; count];
        let ranges = lines.next()?.strip_prefix("done")?.trim();
        for range in ranges.split(',').filter(|r| !r.is_empty()) {
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
                None => {
                    let a = range.parse::<usize>().ok()?;
                    (a, a)
                }
            };
            if a > b || b >= count {
                return None;
            }
            done[a..=b].iter_mut().for_each(|d| *d = true);
        }
        // Older journals have no `kept` line.
        let kept = match lines.next().and_then(|l| l.strip_prefix("kept")) {
            Some(list) => list
                .trim()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(Digest::from_hex)
                .collect::<Option<Vec<_>>>()?,
            None => Vec::new(),
        };
        if !kept.is_empty() && kept.len() != done.iter().filter(|d| **d).count() {
            return None;
        }
        Some(Journal {
            name,
            size,
            digest,
            done,
            kept,
        })
    }

    /// Replaces the journal of `spot` atomically.
    pub fn store(&self, spot: &Spot) -> io::Result<()> {
        let tmp = format!("{}-tmp", spot.journal());
        spot.folder
            .replace(&spot.journal(), &tmp, self.encode().as_bytes())
    }

    /// Loads the journal of `spot`; `Ok(None)` if there is none or it is
    /// unreadable as a journal.
    pub fn load(spot: &Spot) -> io::Result<Option<Journal>> {
        Ok(spot
            .folder
            .read_small(&spot.journal(), MAX_JOURNAL_BYTES)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| Journal::parse(&text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(done: Vec<bool>) -> Journal {
        let size = done.len() as u64 * PIECE_SIZE - 7;
        let kept = (0..done.iter().filter(|d| **d).count())
            .map(|i| Digest::of(&[i as u8]))
            .collect();
        Journal {
            name: "dir/a b ü.bin".into(),
            size,
            digest: Digest::of(b"x"),
            done,
            kept,
        }
    }

    #[test]
    fn keeps_each_done_piece_s_digest_and_reads_journals_without_them() {
        let j = journal(vec![true, false, true]);
        let kept = j.kept_pieces().unwrap();
        assert_eq!(kept, [Some(Digest::of(&[0])), None, Some(Digest::of(&[1]))]);
        let text = j.encode();
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("kept"))
            .map(|l| format!("{l}\n"))
            .collect();
        let old = Journal::parse(&without).unwrap();
        assert_eq!(old.done, j.done);
        assert_eq!(old.kept_pieces(), None, "digests not recorded");
        // A kept list that does not match the done pieces is refused.
        let short = text.replace(&format!(",{}", Digest::of(&[1])), "");
        assert!(Journal::parse(&short).is_none());
    }

    #[test]
    fn round_trips_with_ranges() {
        for done in [
            vec![false; 5],
            vec![true; 5],
            vec![true, true, false, true, false, true, true, true],
            vec![false, true],
        ] {
            let j = journal(done);
            let text = j.encode();
            assert_eq!(Journal::parse(&text), Some(j), "{text}");
        }
        let j = journal(vec![true, true, false, true, false, true, true, true]);
        assert!(j.encode().contains("\ndone 0-1,3,5-7\n"));
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let good = journal(vec![true, false, true]).encode();
        assert!(Journal::parse("").is_none());
        assert!(Journal::parse(&good.replace("fastdl-journal 1", "fastdl-journal 2")).is_none());
        assert!(Journal::parse(&good.replace("done 0,2", "done 0,3")).is_none());
        assert!(Journal::parse(&good.replace("done 0,2", "done 2-1")).is_none());
        assert!(Journal::parse(&good.replace("piece-size 1048576", "piece-size 4096")).is_none());
        assert!(Journal::parse(&good.replace("size ", "size x")).is_none());
    }

    #[test]
    fn stores_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let out = crate::disk::outdir::OutDir::open(dir.path()).unwrap();
        let spot = Spot::make(&out, "a").unwrap();
        assert_eq!(Journal::load(&spot).unwrap(), None);
        let j = journal(vec![true, false]);
        j.store(&spot).unwrap();
        assert_eq!(Journal::load(&spot).unwrap(), Some(j));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }

    #[test]
    fn matches_only_the_same_version() {
        let j = journal(vec![true]);
        let entry = Entry {
            name: j.name.clone(),
            size: j.size,
            digest: j.digest,
        };
        assert!(j.matches(&entry));
        assert!(!j.matches(&Entry {
            size: j.size + 1,
            ..entry.clone()
        }));
        assert!(!j.matches(&Entry {
            digest: Digest::of(b"y"),
            ..entry
        }));
    }
}
