//! The catalog: what the server publishes.
//!
//! It scans the resources folder (recursively, regular files only, hidden
//! entries skipped, symlinks only when they resolve to a regular file
//! inside the folder), computes each file's BLAKE3 piece tree once per
//! (path, size, mtime), publishes an immutable [`Snapshot`] that sessions
//! read without locking, and rewrites the list file atomically whenever
//! the published list changes. Submodules: `scan` (what is a candidate),
//! `open` (the one safe way to open a file of the folder), `listfile`
//! (`text.txt`), `watch` (when to rescan).

pub mod listfile;
pub mod open;
pub mod scan;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result};
use fastdl_protocol::{Entry, Listing, PieceTree};
use log::{debug, info, warn};

use self::open::{open_regular, Listed, OpenError};

/// What the server knows about one published file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// The real (canonical) path the name resolved to when it was listed.
    pub path: PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
    pub tree: Arc<PieceTree>,
}

impl FileInfo {
    /// What an open of this file checks against.
    pub fn listed(&self) -> Listed<'_> {
        Listed {
            path: &self.path,
            size: self.size,
            mtime: self.mtime,
        }
    }
}

/// One published state of the folder: the list and the files behind it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub listing: Listing,
    pub files: HashMap<String, FileInfo>,
    /// The whole `LIST` reply, rendered once per change and shared by
    /// every session (a list of a million files is 140 MB of text).
    pub list_reply: Arc<[u8]>,
}

/// The folder being published and its current snapshot.
pub struct Catalog {
    root: PathBuf,
    list_path: PathBuf,
    /// Paths never to publish (the list file and the log, if they sit inside).
    excluded: Vec<PathBuf>,
    current: RwLock<Arc<Snapshot>>,
    /// The list's generation, counted up at every change of the list;
    /// `WATCH` sessions wait on it.
    generation: tokio::sync::watch::Sender<u64>,
    /// Digest cache: canonical path -> (size, mtime, tree).
    cache: Mutex<HashMap<PathBuf, FileInfo>>,
    /// Skipped entries already reported (see [`scan::walk`]).
    reported: Mutex<HashSet<String>>,
    /// The server's own files by device and inode, every version seen
    /// (see [`scan::walk`]).
    own: Mutex<HashSet<(u64, u64)>>,
    scan_lock: Mutex<()>,
}

impl Catalog {
    /// Opens the folder `dir`; nothing is scanned yet.
    pub fn new(dir: &Path, list_path: &Path, excluded: &[&Path]) -> Result<Catalog> {
        let root = fs::canonicalize(dir).with_context(|| {
            format!(
                "resources folder {} cannot be opened (create it, or pass --dir)",
                dir.display()
            )
        })?;
        if !root.is_dir() {
            anyhow::bail!("{} is not a folder", dir.display());
        }
        let excluded = excluded.iter().filter_map(|p| absolute(p).ok()).collect();
        Ok(Catalog {
            root,
            list_path: list_path.to_path_buf(),
            excluded,
            current: RwLock::new(Arc::new(Snapshot::default())),
            // Counted from the start time: a client that watched an earlier
            // run sees a new number even if the list is the same size.
            generation: tokio::sync::watch::Sender::new(start_millis()),
            cache: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashSet::new()),
            own: Mutex::new(HashSet::new()),
            scan_lock: Mutex::new(()),
        })
    }

    /// The canonical resources folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The paths the server writes itself (never published, and their
    /// changes are not changes of the folder).
    pub fn excluded(&self) -> &[PathBuf] {
        &self.excluded
    }

    /// The snapshot sessions serve from.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The list's generation, to wait for its next change.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Scans the folder, hashes what is new or changed, publishes the result
    /// and rewrites the list file if the list changed. Returns whether it did.
    pub fn rescan(&self) -> Result<bool> {
        let _one_at_a_time = self.scan_lock.lock().unwrap_or_else(|p| p.into_inner());
        let found = {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
            scan::walk(&self.root, &self.excluded, &mut own, &mut reported)
        };
        let mut files = HashMap::with_capacity(found.len());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut fresh_cache = HashMap::with_capacity(found.len());
        for found in found {
            let cached = cache
                .get(&found.real)
                .filter(|c| c.size == found.size && c.mtime == found.mtime)
                .cloned();
            let info = match cached {
                Some(info) => info,
                None => match hash_file(&found.real, found.size, found.mtime) {
                    Ok(Some(info)) => info,
                    Ok(None) => {
                        debug!(
                            "{}: changed while hashing; will retry on the next scan",
                            found.name
                        );
                        continue;
                    }
                    Err(e) => {
                        warn!("{}: cannot read, not listed: {e:#}", found.name);
                        continue;
                    }
                },
            };
            fresh_cache.insert(found.real, info.clone());
            files.insert(found.name, info);
        }
        *cache = fresh_cache;
        drop(cache);

        let entries = files
            .iter()
            .map(|(name, info)| Entry {
                name: name.clone(),
                size: info.size,
                digest: info.tree.root,
            })
            .collect();
        let listing = Listing::new(entries);
        let previous = self.snapshot();
        let changed = previous.listing != listing || !self.list_path.exists();
        if changed {
            listfile::write(&self.list_path, &listing)?;
            log_changes(&previous.listing, &listing);
        }
        let list_reply = if changed || previous.list_reply.is_empty() {
            let mut reply = Vec::new();
            listing
                .write_reply(&mut reply)
                .context("cannot render the list")?;
            Arc::from(reply)
        } else {
            Arc::clone(&previous.list_reply)
        };
        let snapshot = Arc::new(Snapshot {
            listing,
            files,
            list_reply,
        });
        let listed_anew = previous.listing != snapshot.listing;
        match self.current.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
        if listed_anew {
            // After the snapshot: a watcher that hears of it lists the new one.
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(changed)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn start_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Hashes a file; `Ok(None)` if it changed while being hashed (or is no
/// longer a regular file: opened the one safe way, a FIFO swapped in
/// costs nothing).
fn hash_file(path: &Path, size: u64, mtime: SystemTime) -> Result<Option<FileInfo>> {
    let file = match open_regular(path) {
        Ok(file) => file,
        Err(OpenError::Io(e)) => return Err(e.into()),
        Err(_) => return Ok(None),
    };
    let reader = BufReader::with_capacity(1 << 20, &file);
    let tree = match PieceTree::from_reader(reader, size) {
        Ok(tree) => tree,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if meta.len() != size || meta.modified().ok() != Some(mtime) {
        return Ok(None);
    }
    Ok(Some(FileInfo {
        path: path.to_path_buf(),
        size,
        mtime,
        tree: Arc::new(tree),
    }))
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(_) => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            let dir = fs::canonicalize(parent.unwrap_or(Path::new(".")))?;
            Ok(dir.join(path.file_name().unwrap_or_default()))
        }
    }
}

fn log_changes(before: &Listing, after: &Listing) {
    let added = after
        .entries()
        .iter()
        .filter(|e| before.get(&e.name).is_none())
        .count();
    let removed = before
        .entries()
        .iter()
        .filter(|e| after.get(&e.name).is_none())
        .count();
    let changed = after
        .entries()
        .iter()
        .filter(|e| before.get(&e.name).is_some_and(|b| b != *e))
        .count();
    info!(
        "list updated: {} files ({added} added, {removed} removed, {changed} changed)",
        after.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastdl_protocol::Digest;

    fn catalog(dir: &Path) -> (tempfile::TempDir, Catalog) {
        let out = tempfile::tempdir().unwrap();
        let list = out.path().join("text.txt");
        let cat = Catalog::new(dir, &list, &[]).unwrap();
        (out, cat)
    }

    #[test]
    fn lists_regular_files_with_digests_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), b"hello").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b c.bin"), b"").unwrap();
        fs::write(dir.path().join(".secret"), b"x").unwrap();
        fs::create_dir(dir.path().join(".git")).unwrap();
        fs::write(dir.path().join(".git/config"), b"x").unwrap();
        let (out, cat) = catalog(dir.path());
        assert!(cat.rescan().unwrap());
        let snap = cat.snapshot();
        let names: Vec<_> = snap
            .listing
            .entries()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["a.txt", "sub/b c.bin"]);
        assert_eq!(
            snap.listing.get("a.txt").unwrap().digest,
            Digest::of(b"hello")
        );
        let text = fs::read_to_string(out.path().join("text.txt")).unwrap();
        assert!(text.starts_with("1) a.txt\t5\t"), "{text}");
        assert!(!cat.rescan().unwrap(), "nothing changed");
    }

    #[test]
    fn symlinks_out_of_the_folder_are_not_listed() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real"), b"r").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("in")).unwrap();
        let (_out, cat) = catalog(dir.path());
        cat.rescan().unwrap();
        let snap = cat.snapshot();
        assert!(snap.listing.get("out").is_none());
        assert!(snap.listing.get("in").is_some());
        assert!(snap.listing.get("real").is_some());
    }

    #[test]
    fn changes_are_seen_on_rescan() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"1").unwrap();
        let (_out, cat) = catalog(dir.path());
        cat.rescan().unwrap();
        fs::write(dir.path().join("a"), b"22").unwrap();
        fs::write(dir.path().join("b"), b"3").unwrap();
        assert!(cat.rescan().unwrap());
        let snap = cat.snapshot();
        assert_eq!(snap.listing.get("a").unwrap().size, 2);
        fs::remove_file(dir.path().join("b")).unwrap();
        assert!(cat.rescan().unwrap());
        assert!(cat.snapshot().listing.get("b").is_none());
    }

    #[test]
    fn missing_folder_is_a_clear_error() {
        let err = Catalog::new(Path::new("/nonexistent/fastdl"), Path::new("t"), &[])
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("--dir"));
    }
}
