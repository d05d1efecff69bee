//! The output folder: where a name lands, its hidden part file, the
//! existing-file rules, and the final fsync-and-rename.
//!
//! A file appears under its final name only through [`place`], after it
//! was verified and flushed: one rename that never replaces an existing
//! file (the lander then fsyncs the folder). An existing file with the same
//! digest means the download is already done; one with a different digest
//! is never touched, and the new file takes the first free `name (N).ext`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fastdl_protocol::{Digest, Entry};
use log::info;
use rustix::fs::{renameat_with, RenameFlags, CWD};

/// Where the verified file for `name` lands (before any renaming).
pub fn final_path(out: &Path, name: &str) -> PathBuf {
    name.split('/')
        .fold(out.to_path_buf(), |p, part| p.join(part))
}

/// The hidden part file beside the final path.
pub fn part_path(final_path: &Path) -> PathBuf {
    sibling(final_path, "fastdl-part")
}

/// A hidden sibling `.<file name>.<suffix>`, shortened with a digest of
/// the name when it would exceed the usual 255-byte file-name limit.
pub fn sibling(final_path: &Path, suffix: &str) -> PathBuf {
    let file_name = final_path.file_name().unwrap_or_default().to_string_lossy();
    let hidden = if file_name.len() + suffix.len() + 2 <= 255 {
        format!(".{file_name}.{suffix}")
    } else {
        let digest = Digest::of(file_name.as_bytes()).to_string();
        format!(".fastdl-{}.{suffix}", &digest[..32])
    };
    final_path.with_file_name(hidden)
}

/// `name.ext` -> `name (n).ext`; `name` -> `name (n)`; `.rc` -> `.rc (n)`.
/// The stem is shortened when the result would pass the 255-byte limit.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let (stem, ext) = match file_name.rfind('.') {
        Some(dot) if dot > 0 => file_name.split_at(dot),
        _ => (&file_name[..], ""),
    };
    let tag = format!(" ({n})");
    let room = 255usize.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    path.with_file_name(format!("{}{tag}{ext}", &stem[..cut]))
}

/// BLAKE3 of a file on disk.
pub fn digest_of_file(path: &Path) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok(Digest(*hasher.finalize().as_bytes()))
}

/// True if `path` is a regular file (not a symlink) holding exactly the listed file.
fn holds(path: &Path, entry: &Entry) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == entry.size => {
            Ok(digest_of_file(path)? == entry.digest)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Most `name (N).ext` candidates looked at.
const MAX_NUMBERED: u32 = 9999;

/// If the listed file is already in the output folder (under its name or a
/// `name (N).ext` of an earlier collision), where.
pub fn already_have(out: &Path, entry: &Entry) -> io::Result<Option<PathBuf>> {
    let path = final_path(out, &entry.name);
    if fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    if holds(&path, entry)? {
        return Ok(Some(path));
    }
    for n in 1..=MAX_NUMBERED {
        let candidate = numbered(&path, n);
        if fs::symlink_metadata(&candidate).is_err() {
            return Ok(None);
        }
        if holds(&candidate, entry)? {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

/// Opens (creating) the part file and gives it its full size up front.
/// Anything at the part path that is not a regular file (a symlink planted
/// there, say) is removed first, and the open never follows a symlink, so
/// bytes are only ever written inside the output folder.
pub fn open_part(part: &Path, size: u64) -> io::Result<File> {
    if let Some(parent) = part.parent() {
        fs::create_dir_all(parent)?;
    }
    if let Ok(meta) = fs::symlink_metadata(part) {
        if !meta.is_file() {
            log::warn!("{}: not a regular file; removing it", part.display());
            fs::remove_file(part)?;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(part)?;
    if file.metadata()?.len() != size {
        file.set_len(size)?;
    }
    if size > 0 {
        // Reserve the blocks now so a full disk shows up before the transfer.
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, size) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(file)
}

/// Where a verified part file ended up.
#[derive(Debug, PartialEq, Eq)]
pub enum Landed {
    /// Under the listed name, or a numbered name beside an existing
    /// different file.
    New(PathBuf),
    /// An identical file was already there; the part was removed.
    AlreadyThere(PathBuf),
}

/// Moves a verified, already flushed part file to its final name without
/// ever replacing a file. The caller fsyncs the folder afterwards (once per
/// folder for a batch: see `lander`).
pub fn place(part: &Path, entry: &Entry, out: &Path) -> io::Result<Landed> {
    let target = final_path(out, &entry.name);
    let mut candidate = target.clone();
    let mut n = 0;
    loop {
        match renameat_with(CWD, part, CWD, &candidate, RenameFlags::NOREPLACE) {
            Ok(()) => break,
            Err(rustix::io::Errno::EXIST) => {
                if holds(&candidate, entry)? {
                    fs::remove_file(part)?;
                    return Ok(Landed::AlreadyThere(candidate));
                }
                n += 1;
                if n > MAX_NUMBERED {
                    return Err(io::Error::other(format!(
                        "{} and {MAX_NUMBERED} numbered variants already exist",
                        target.display()
                    )));
                }
                candidate = numbered(&target, n);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if candidate != target {
        info!(
            "{}: a different file already exists at {}; kept the new download as {}",
            entry.name,
            target.display(),
            candidate.display()
        );
    }
    Ok(Landed::New(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, content: &[u8]) -> Entry {
        Entry {
            name: name.into(),
            size: content.len() as u64,
            digest: Digest::of(content),
        }
    }

    #[test]
    fn paths_stay_in_the_folder_and_parts_are_hidden() {
        let out = Path::new("/o");
        assert_eq!(final_path(out, "a/b c.txt"), Path::new("/o/a/b c.txt"));
        assert_eq!(
            part_path(Path::new("/o/a/b.txt")),
            Path::new("/o/a/.b.txt.fastdl-part")
        );
        let long = "x".repeat(250);
        let part = part_path(&Path::new("/o").join(&long));
        assert!(part.file_name().unwrap().len() <= 255);
        assert!(part.file_name().unwrap().to_string_lossy().starts_with('.'));
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(
            numbered(Path::new("/o/a.tar.gz"), 1),
            Path::new("/o/a.tar (1).gz")
        );
        assert_eq!(
            numbered(Path::new("/o/movie.mkv"), 2),
            Path::new("/o/movie (2).mkv")
        );
        assert_eq!(
            numbered(Path::new("/o/README"), 1),
            Path::new("/o/README (1)")
        );
        assert_eq!(numbered(Path::new("/o/.rc"), 1), Path::new("/o/.rc (1)"));
        let long = format!("{}.bin", "é".repeat(125));
        let n = numbered(&Path::new("/o").join(&long), 12);
        let name = n.file_name().unwrap().to_str().unwrap();
        assert!(name.len() <= 255 && name.ends_with(" (12).bin"), "{name}");
    }

    #[test]
    fn placing_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let e = entry("f.txt", b"new");
        // Nothing there: lands under its name.
        let part = part_path(&final_path(out, "f.txt"));
        fs::write(&part, b"new").unwrap();
        assert_eq!(
            place(&part, &e, out).unwrap(),
            Landed::New(out.join("f.txt"))
        );
        // Same content there: the part goes away, nothing changes.
        fs::write(&part, b"new").unwrap();
        assert_eq!(
            place(&part, &e, out).unwrap(),
            Landed::AlreadyThere(out.join("f.txt"))
        );
        assert!(!part.exists());
        // Different content there: kept, new one numbered.
        let e2 = entry("f.txt", b"newer");
        fs::write(&part, b"newer").unwrap();
        assert_eq!(
            place(&part, &e2, out).unwrap(),
            Landed::New(out.join("f (1).txt"))
        );
        assert_eq!(fs::read(out.join("f.txt")).unwrap(), b"new");
        assert_eq!(already_have(out, &e2).unwrap(), Some(out.join("f (1).txt")));
        assert_eq!(already_have(out, &e).unwrap(), Some(out.join("f.txt")));
        assert_eq!(already_have(out, &entry("f.txt", b"other")).unwrap(), None);
    }

    #[test]
    fn part_files_get_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("sub/.x.fastdl-part");
        let f = open_part(&part, 12345).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 12345);
        let f = open_part(&part, 0).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
    }
}
