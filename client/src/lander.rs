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

use crate::download::{Job, Outcome, Verified};
use crate::store::{self, Landed, Spot};

/// Most files landed in one batch.
pub const MAX_BATCH: usize = 256;
/// How long a batch waits for company once its first file arrived.
const GATHER: Duration = Duration::from_millis(2);

/// Lands what arrives on `verified`, reporting each outcome on `results`,
/// until the channel closes.
pub fn run(verified: Receiver<(Job, Box<Verified>)>, results: Sender<(Job, Outcome)>) {
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
                let why = format!(
                    "{}: cannot flush {}: {e}",
                    job.entry.name,
                    v.spot.part_path().display()
                );
                (job, Outcome::Failed(why))
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
                folder_errors.push((id, e.to_string()));
            }
        }
    }
    placed
        .into_iter()
        .map(|(job, v, result)| {
            let Verified {
                spot,
                rate,
                fetched,
                ..
            } = *v;
            let _ = spot.folder.remove(&spot.journal());
            let entry = &job.entry;
            let dir_error = spot.folder.id().ok().and_then(|id| {
                folder_errors
                    .iter()
                    .find(|(failed, _)| *failed == id)
                    .map(|(_, e)| folder_error(&spot, e))
            });
            let outcome = match (result, &dir_error) {
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
                (Ok(Landed::New(_)), Some(e)) => Outcome::Failed(format!("{}: {e}", entry.name)),
                (Ok(Landed::AlreadyThere(path)), _) => Outcome::AlreadyHad(path),
                (Err(e), _) => {
                    Outcome::Failed(format!("{}: cannot move into place: {e}", entry.name))
                }
            };
            (job, outcome)
        })
        .collect()
}

fn folder_error(spot: &Spot, e: &str) -> String {
    format!(
        "in place as {}, but its folder could not be flushed: {e}",
        spot.path().display()
    )
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
