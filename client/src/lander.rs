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

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fastdl_support::human_bytes;
use log::info;

use crate::download::{Job, Outcome, Verified};
use crate::store::{self, Landed};

/// Most files landed in one batch.
pub const MAX_BATCH: usize = 256;
/// How long a batch waits for company once its first file arrived.
const GATHER: Duration = Duration::from_millis(2);

/// Lands what arrives on `verified`, reporting each outcome on `results`,
/// until the channel closes.
pub fn run(
    out: PathBuf,
    verified: Receiver<(Job, Box<Verified>)>,
    results: Sender<(Job, Outcome)>,
) {
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
        for (job, outcome) in land_batch(&out, batch) {
            if results.send((job, outcome)).is_err() {
                return;
            }
        }
    }
}

fn land_batch(out: &Path, batch: Vec<(Job, Box<Verified>)>) -> Vec<(Job, Outcome)> {
    if let Err(e) = flush(&batch) {
        return batch
            .into_iter()
            .map(|(job, v)| {
                let why = format!(
                    "{}: cannot flush {}: {e}",
                    job.entry.name,
                    v.part_path.display()
                );
                (job, Outcome::Failed(why))
            })
            .collect();
    }
    let mut dirs = BTreeSet::new();
    let mut placed = Vec::with_capacity(batch.len());
    for (job, v) in batch {
        let result = store::place(&v.part_path, &job.entry, out);
        if let Ok(Landed::New(path)) = &result {
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        placed.push((job, v, result));
    }
    let mut dir_error = None;
    for dir in &dirs {
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            dir_error = Some(format!("cannot flush folder {}: {e}", dir.display()));
        }
    }
    placed
        .into_iter()
        .map(|(job, v, result)| {
            let _ = std::fs::remove_file(&v.journal_path);
            let entry = &job.entry;
            let outcome = match (result, &dir_error) {
                (Ok(Landed::New(path)), None) => {
                    info!(
                        "{}: done, {} verified, {} fetched this run ({}/s) -> {}",
                        entry.name,
                        human_bytes(entry.size),
                        human_bytes(v.fetched),
                        human_bytes(v.rate as u64),
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

/// Makes every part file of the batch durable.
fn flush(batch: &[(Job, Box<Verified>)]) -> std::io::Result<()> {
    let open = |v: &Verified| match &v.part {
        Some(file) => file.try_clone(),
        None => std::fs::File::open(&v.part_path),
    };
    match batch {
        [] => Ok(()),
        [(_, v)] => open(v)?.sync_all(),
        [(_, v), ..] => {
            // One flush of the file system covers every file of the batch.
            let file = open(v)?;
            rustix::fs::syncfs(file.as_fd())?;
            Ok(())
        }
    }
}
