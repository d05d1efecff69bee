//! Landing verified files in batches.
//!
//! Rule 1 wants every file flushed to disk before its one rename. Doing
//! that file by file costs a journal commit each, which caps small-file
//! throughput near the disk's fsync rate. The lander takes verified part
//! files from every download thread, and for each batch that has gathered
//! (everything ready, up to [`MAX_BATCH`]) flushes them together (a plain
//! fsync for a lone file, one `syncfs` for several), then renames each into
//! place without replacing anything, and fsyncs each folder once. No file
//! is renamed before it is durable, and the download threads go on to the
//! next file meanwhile.

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
/// How long a batch waits for company once its first file arrived.
const GATHER: Duration = Duration::from_millis(2);

/// Lands what arrives on `verified`, reporting each outcome on `results`,
/// until the channel closes.
pub fn run(verified: Receiver<ToLand>, results: Sender<Report>) {
    while let Ok(first) = verified.recv() {
        let mut batch = vec![first];
        let until = Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            match verified.recv_deadline(until) {
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
        let result = store::place(&v.spot, &job.entry);
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
            let dir_error = v.spot.folder.id().ok().and_then(|id| {
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
        ..
    } = verified;
    let _ = spot.folder.remove(&spot.journal());
    let entry = &job.entry;
    match (result, dir_error) {
        (Ok(Landed::New(path)), None) => {
            info!(
                "{}: done, {} verified, {} fetched this run ({}/s) -> {}",
                entry.name,
                human_bytes(entry.size),
                human_bytes(fetched),
                human_bytes(rate as u64),
                path.display()
            );
            Outcome::Landed
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
