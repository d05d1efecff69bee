//! Landing verified files in batches.
//!
//! Rule 1 wants every file flushed to disk before its one rename. Doing
//! that file by file costs a journal commit each, which caps small-file
//! throughput near the disk's fsync rate. The lander takes verified part
//! files from every download thread, and for each batch that has gathered
//! flushes them together (a plain fsync for a lone file, one `syncfs` for
//! several), then renames each into place without replacing anything, and
//! fsyncs each folder once. No file is renamed before it is durable, and
//! the download threads go on to the next file meanwhile.
//!
//! A batch closes when files stop coming ([`QUIET`] without a new one),
//! after [`MAX_WAIT`] from its first file, or at [`MAX_BATCH`] files. A
//! lone file so waits 1 ms; a stream of small files lands in batches of
//! dozens. Measured on 1000 files of 100 KiB: closing 2 ms after the first
//! file made 428 batches (a `syncfs` of 0.36 ms and a folder fsync of
//! 0.19 ms each, the lander the slowest stage); this rule makes about 20.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fastdl_support::human_bytes;
use log::info;

use super::store::{self, Landed};
use crate::download::outcome::{FileError, Job, Outcome, Report, ToLand, Verified};

/// Most files landed in one batch.
pub const MAX_BATCH: usize = 256;
/// A batch closes when no file has come for this long...
const QUIET: Duration = Duration::from_millis(1);
/// ...or this long after its first file came.
const MAX_WAIT: Duration = Duration::from_millis(25);

/// Lands what arrives on `verified`, reporting each outcome on `results`,
/// until the channel closes.
pub fn run(verified: Receiver<ToLand>, results: Sender<Report>) {
    while let Ok(first) = verified.recv() {
        let mut batch = vec![first];
        let until = Instant::now() + MAX_WAIT;
        while batch.len() < MAX_BATCH {
            let wait = (Instant::now() + QUIET).min(until);
            match verified.recv_deadline(wait) {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Whatever else is already waiting joins too.
        while batch.len() < MAX_BATCH {
            match verified.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        for (job, outcome) in land_batch(batch) {
            if results.send((job, outcome)).is_err() {
                return;
            }
        }
    }
}

fn land_batch(batch: Vec<(Job, Box<Verified>)>) -> Vec<(Job, Outcome)> {
    if let Err(e) = flush(&batch) {
        return batch
            .into_iter()
            .map(|(job, v)| {
                let failed = FileError::Disk {
                    what: "cannot flush",
                    path: v.spot.part_path(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                };
                (job, Outcome::Failed(failed))
            })
            .collect();
    }
    let mut placed = Vec::with_capacity(batch.len());
    for (job, v) in batch {
        // An existing file at the name with this very content means done.
        let content = fastdl_protocol::Entry {
            digest: v.content,
            ..job.entry.clone()
        };
        let result = store::place(&v.spot, &content, &v.part);
        placed.push((job, v, result));
    }
    // Each folder that got a new name is flushed once; a failure there
    // concerns only the files renamed into that folder.
    let mut flushed = HashSet::new();
    let mut folder_errors = Vec::new();
    for (_, v, result) in &placed {
        if !matches!(result, Ok(Landed::New(_))) {
            continue;
        }
        let Ok(id) = v.spot.folder.id() else {
            continue;
        };
        if flushed.insert(id) {
            if let Err(e) = v.spot.folder.sync() {
                folder_errors.push((id, e));
            }
        }
    }
    placed
        .into_iter()
        .map(|(job, v, result)| {
            let failed_folder = || v.spot.folder.id().ok();
            let dir_error = (!folder_errors.is_empty())
                .then(failed_folder)
                .flatten()
                .and_then(|id| {
                    folder_errors
                        .iter()
                        .find(|(failed, _)| *failed == id)
                        .map(|(_, e)| std::io::Error::new(e.kind(), e.to_string()))
                });
            let outcome = outcome_of(&job, *v, result, dir_error);
            (job, outcome)
        })
        .collect()
}

/// What became of one file of a batch: `result` of its rename, and the
/// error flushing its folder, if that failed.
fn outcome_of(
    job: &Job,
    verified: Verified,
    result: std::io::Result<Landed>,
    dir_error: Option<std::io::Error>,
) -> Outcome {
    let Verified {
        spot,
        rate,
        fetched,
        checked,
        journal,
        ..
    } = verified;
    if journal {
        let _ = spot.folder.remove(&spot.journal());
    }
    let entry = &job.entry;
    match (result, dir_error) {
        (Ok(Landed::New(path)), None) => {
            let (verified, how) = match checked {
                Some(algo) => ("verified", format!("; checked whole by {}", algo.as_str())),
                None => (
                    "NOT verified by digest (none given or announced; checked only its size, and that every answer carried the first one's ETag or Last-Modified, or that one answer brought all of it)",
                    String::new(),
                ),
            };
            info!(
                "{}: done, {} {verified}, {} fetched this run ({}/s{how}) -> {}",
                entry.name,
                human_bytes(entry.size),
                human_bytes(fetched),
                human_bytes(rate as u64),
                path.display()
            );
            Outcome::Landed(path)
        }
        // In place, but not durably: its own folder could not be flushed
        // (other folders' files are not concerned).
        (Ok(Landed::New(path)), Some(e)) => Outcome::Failed(FileError::Disk {
            what: "in place, but cannot flush the folder of",
            path,
            source: e,
        }),
        (Ok(Landed::AlreadyThere(path)), _) => Outcome::AlreadyHad(path),
        (Err(e), _) => Outcome::Failed(FileError::Disk {
            what: "cannot move into place",
            path: spot.path(),
            source: e,
        }),
    }
}

/// Makes every part file of the batch durable.
fn flush(batch: &[(Job, Box<Verified>)]) -> std::io::Result<()> {
    match batch {
        [] => Ok(()),
        [(_, v)] => v.part.sync_all(),
        [(_, v), ..] => {
            // One flush of the file system covers every file of the batch.
            rustix::fs::syncfs(v.part.as_fd())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::outdir::OutDir;
    use crate::disk::store::{open_part, Spot};
    use fastdl_protocol::{Digest, Entry};
    use std::io::Write;

    /// A verified part file of `name` holding `bytes`, ready to land.
    fn verified(out: &OutDir, name: &str, bytes: &[u8]) -> ToLand {
        let spot = Spot::make(out, name).unwrap();
        let mut part = open_part(&spot, bytes.len() as u64).unwrap();
        part.write_all(bytes).unwrap();
        let job = Job::listed(
            Entry {
                name: name.into(),
                size: bytes.len() as u64,
                digest: Digest::of(bytes),
            },
            vec![0],
        );
        // A journal beside the part (as a file of several pieces has).
        std::fs::write(spot.folder.path_of(&spot.journal()), b"journal").unwrap();
        let v = Verified {
            part: part.into(),
            spot,
            content: Digest::of(bytes),
            checked: None,
            rate: 0.0,
            fetched: bytes.len() as u64,
            journal: true,
        };
        (job, Box::new(v))
    }

    #[test]
    fn a_batch_lands_each_file_by_its_own_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::open(tmp.path()).unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        // Already there with the same bytes; there with other bytes; new.
        std::fs::write(tmp.path().join("same.bin"), b"same").unwrap();
        std::fs::write(tmp.path().join("sub/other.bin"), b"mine").unwrap();
        let batch = vec![
            verified(&out, "same.bin", b"same"),
            verified(&out, "sub/other.bin", b"theirs"),
            verified(&out, "new.bin", b"new"),
        ];
        let landed = land_batch(batch);
        let by_name = |n: &str| &landed.iter().find(|(j, _)| j.entry.name == n).unwrap().1;
        assert!(matches!(by_name("same.bin"), Outcome::AlreadyHad(_)));
        assert!(matches!(by_name("sub/other.bin"), Outcome::Landed(_)));
        assert!(matches!(by_name("new.bin"), Outcome::Landed(_)));
        // Nothing overwritten; the other version kept under a new name.
        assert_eq!(
            std::fs::read(tmp.path().join("sub/other.bin")).unwrap(),
            b"mine"
        );
        assert_eq!(
            std::fs::read(tmp.path().join("sub/other (1).bin")).unwrap(),
            b"theirs"
        );
        assert_eq!(std::fs::read(tmp.path().join("new.bin")).unwrap(), b"new");
        // No part file or journal left behind.
        let mut left: Vec<String> = walkdir(tmp.path());
        left.sort();
        assert_eq!(
            left,
            [
                "new.bin",
                "same.bin",
                "sub",
                "sub/other (1).bin",
                "sub/other.bin"
            ]
        );
    }

    fn walkdir(root: &std::path::Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                found.push(path.strip_prefix(root).unwrap().display().to_string());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        found
    }
}
