//! Walking the published folder: which entries are candidates for the
//! list, under which names.
//!
//! Regular files only, recursively; hidden entries (a name starting with
//! `.`) and everything below them are skipped; a symlink counts only when
//! it resolves to a regular file inside the folder, and the walk never
//! descends through a link. Names that break the protocol's name rules
//! are skipped. Each skipped entry is reported once, when it first
//! appears, not on every rescan (a periodic rescan would otherwise repeat
//! the same warning for ever).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use fastdl_protocol::validate_name;
use fastdl_support::{printable, quote};
use log::{debug, warn};
use walkdir::WalkDir;

/// One candidate file found by a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    /// Its canonical path.
    pub real: PathBuf,
    pub size: u64,
    pub mtime: SystemTime,
}

/// Walks `root` and returns the candidates. `excluded` are canonical paths
/// never published (the server's own list file and log). `reported` holds
/// the skipped entries already warned about; it is replaced by this
/// walk's.
pub fn walk(
    root: &Path,
    excluded: &[PathBuf],
    own: &mut HashSet<(u64, u64)>,
    reported: &mut HashSet<String>,
) -> Vec<Found> {
    let mut now_skipped = HashSet::new();
    let mut skip = |key: String, why: &str| {
        if !reported.contains(&key) {
            warn!("{}: {why}", printable(&key));
        }
        now_skipped.insert(key);
    };
    // The server's own files, by device and inode, as they are now and as
    // they ever were (`own` keeps them across scans): a token file
    // rotated by rename leaves its old inode behind, still holding tokens
    // that may be valid, under any hard link made to it before.
    own.extend(
        excluded
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino())),
    );
    let mut found = Vec::new();
    let walker = WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                skip(e.to_string(), "cannot be scanned");
                continue;
            }
        };
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        let name = match name_of(root, entry.path()) {
            Ok(name) => name,
            Err(why) => {
                skip(entry.path().display().to_string(), &why);
                continue;
            }
        };
        // Symlinks count only when they resolve to a regular file inside
        // the folder; everything else that is not a regular file is skipped.
        let real = match fs::canonicalize(entry.path()) {
            Ok(real) => real,
            Err(e) => {
                debug!("{name}: skipped ({e})");
                continue;
            }
        };
        if file_type.is_symlink() {
            match real.strip_prefix(root) {
                Err(_) => {
                    skip(name, "symlink leads out of the folder, not listed");
                    continue;
                }
                // A link must not publish what is hidden by name.
                Ok(inside) if inside.components().any(|c| is_hidden(c.as_os_str())) => {
                    skip(name, "symlink leads to a hidden file or folder, not listed");
                    continue;
                }
                Ok(_) => {}
            }
        }
        if excluded.contains(&real) {
            continue;
        }
        let meta = match fs::metadata(&real) {
            Ok(meta) if meta.is_file() => meta,
            _ => continue,
        };
        // A hard link to one of the server's own files is that file.
        if own.contains(&(meta.dev(), meta.ino())) {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push(Found {
            name,
            real,
            size: meta.len(),
            mtime,
        });
    }
    *reported = now_skipped;
    found
}

/// The protocol name of a path under the root, or why it has none.
fn name_of(root: &Path, path: &Path) -> Result<String, String> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| "outside the folder".to_owned())?;
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(part) => parts.push(part),
                None => return Err("name is not valid UTF-8, not listed".into()),
            },
            _ => return Err("not a plain name, not listed".into()),
        }
    }
    let name = parts.join("/");
    validate_name(&name)
        .map(|()| name.clone())
        .map_err(|e| format!("not listed ({e}): {}", quote(&name)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_entries_are_reported_once_and_again_after_they_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(root.join("a"), b"a").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
        let mut reported = HashSet::new();
        let found = walk(&root, &[], &mut HashSet::new(), &mut reported);
        assert_eq!(found.len(), 1);
        assert!(reported.contains("out"));
        let again = walk(&root, &[], &mut HashSet::new(), &mut reported);
        assert_eq!(again, found);
        assert!(reported.contains("out"), "still known, not warned again");
        fs::remove_file(root.join("out")).unwrap();
        walk(&root, &[], &mut HashSet::new(), &mut reported);
        assert!(reported.is_empty());
    }

    #[test]
    fn links_to_hidden_files_or_into_hidden_folders_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::write(root.join(".secret"), b"s").unwrap();
        fs::create_dir(root.join(".git")).unwrap();
        fs::write(root.join(".git/config"), b"c").unwrap();
        fs::write(root.join("plain"), b"p").unwrap();
        std::os::unix::fs::symlink(root.join(".secret"), root.join("key.pem")).unwrap();
        std::os::unix::fs::symlink(root.join(".git/config"), root.join("gitcfg")).unwrap();
        std::os::unix::fs::symlink(root.join("plain"), root.join("alias")).unwrap();
        let names: Vec<String> = walk(&root, &[], &mut HashSet::new(), &mut HashSet::new())
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["alias", "plain"]);
    }

    #[test]
    fn hard_links_to_the_server_s_own_files_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let key = outside.path().join("identity.pem");
        fs::write(&key, b"PRIVATE").unwrap();
        fs::hard_link(&key, root.join("innocent.txt")).unwrap();
        fs::write(root.join("plain"), b"p").unwrap();
        let mut own = HashSet::new();
        let names: Vec<String> = walk(
            &root,
            std::slice::from_ref(&key),
            &mut own,
            &mut HashSet::new(),
        )
        .into_iter()
        .map(|f| f.name)
        .collect();
        assert_eq!(names, ["plain"]);
        // Rotated by rename: the old version, still linked here, stays
        // unlisted.
        let new = outside.path().join("identity.new");
        fs::write(&new, b"NEW").unwrap();
        fs::rename(&new, &key).unwrap();
        let names: Vec<String> = walk(&root, &[key], &mut own, &mut HashSet::new())
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["plain"]);
    }
}
