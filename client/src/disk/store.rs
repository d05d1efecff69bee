//! The output folder: where a name lands, its hidden part file, the
//! existing-file rules, and the final fsync-and-rename.
//!
//! A file appears under its final name only through [`place`], after it
//! was verified and flushed: one rename that never replaces an existing
//! file (the lander then fsyncs the folder). An existing file with the same
//! digest means the download is already done; one with a different digest
//! is never touched, and the new file takes the first free `name (N).ext`.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use fastdl_protocol::{Digest, Entry};
use log::info;
use rustix::io::Errno;

use super::outdir::{Folder, Found, OutDir};

/// Where one name lands: its folder, open (reached without following a
/// link), and the file's name in it. The part file and the journal are
/// hidden siblings of that name. A clone shares the folder's descriptor.
#[derive(Debug, Clone)]
pub struct Spot {
    pub folder: Folder,
    pub leaf: String,
}

impl Spot {
    /// The spot of `name` if its folder exists; `Ok(None)` if not.
    pub fn find(out: &OutDir, name: &str) -> io::Result<Option<Spot>> {
        Ok(out
            .folder_of(name, false)?
            .map(|folder| Spot::in_folder(folder, name)))
    }

    /// The spot of `name`, its folders created as needed.
    pub fn make(out: &OutDir, name: &str) -> io::Result<Spot> {
        let folder = out
            .folder_of(name, true)?
            .ok_or_else(|| io::Error::other("folder vanished while it was made"))?;
        Ok(Spot::in_folder(folder, name))
    }

    fn in_folder(folder: Folder, name: &str) -> Spot {
        let leaf = name.rsplit('/').next().unwrap_or(name).to_owned();
        Spot { folder, leaf }
    }

    /// The hidden part file's name.
    pub fn part(&self) -> String {
        sibling(&self.leaf, "fastdl-part")
    }

    /// The hidden journal's name.
    pub fn journal(&self) -> String {
        sibling(&self.leaf, "fastdl-journal")
    }

    /// The final path, for messages.
    pub fn path(&self) -> PathBuf {
        self.folder.path_of(&self.leaf)
    }

    /// The part file's path, for messages.
    pub fn part_path(&self) -> PathBuf {
        self.folder.path_of(&self.part())
    }
}

/// Whether `name` (its last component) has the shape of the client's own
/// working files (`.<name>.fastdl-part`, `.<name>.fastdl-journal`,
/// `.fastdl-...`): a download never lands under such a name, or a later
/// download's part or journal could replace or delete it.
pub fn is_working_name(name: &str) -> bool {
    let leaf = name.rsplit('/').next().unwrap_or(name);
    leaf.starts_with('.') && leaf.contains(".fastdl-") || leaf.starts_with(".fastdl-")
}

/// A hidden sibling `.<file name>.<suffix>`, shortened with a digest of
/// the name when it would exceed the usual 255-byte file-name limit.
pub fn sibling(leaf: &str, suffix: &str) -> String {
    if leaf.len() + suffix.len() + 2 <= 255 {
        format!(".{leaf}.{suffix}")
    } else {
        let digest = Digest::of(leaf.as_bytes()).to_string();
        format!(".fastdl-{}.{suffix}", &digest[..32])
    }
}

/// `name.ext` -> `name (n).ext`; `name` -> `name (n)`; `.rc` -> `.rc (n)`.
/// The stem is shortened when the result would pass the 255-byte limit.
pub fn numbered(leaf: &str, n: u32) -> String {
    let (stem, ext) = match leaf.rfind('.') {
        Some(dot) if dot > 0 => leaf.split_at(dot),
        _ => (leaf, ""),
    };
    let tag = format!(" ({n})");
    let room = 255usize.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tag}{ext}", &stem[..cut])
}

/// True if `leaf` in `folder` is a regular file (not a link) holding
/// exactly the listed file.
fn holds(folder: &Folder, leaf: &str, entry: &Entry) -> io::Result<bool> {
    match folder.look(leaf)? {
        Found::File { size } if size == entry.size => {
            Ok(folder.digest_of(leaf)? == Some(entry.digest))
        }
        _ => Ok(false),
    }
}

/// Most `name (N).ext` candidates looked at.
const MAX_NUMBERED: u32 = 9999;

/// If the listed file is already in the output folder (under its name or a
/// `name (N).ext` of an earlier collision), where.
pub fn already_have(out: &OutDir, entry: &Entry) -> io::Result<Option<PathBuf>> {
    let Some(spot) = Spot::find(out, &entry.name)? else {
        return Ok(None);
    };
    let folder = &spot.folder;
    if folder.look(&spot.leaf)? == Found::Nothing {
        return Ok(None);
    }
    if holds(folder, &spot.leaf, entry)? {
        return Ok(Some(spot.path()));
    }
    for n in 1..=MAX_NUMBERED {
        let candidate = numbered(&spot.leaf, n);
        if folder.look(&candidate)? == Found::Nothing {
            return Ok(None);
        }
        if holds(folder, &candidate, entry)? {
            return Ok(Some(folder.path_of(&candidate)));
        }
    }
    Ok(None)
}

/// Opens (creating) the part file and gives it its full size up front.
/// Anything at the part's name that is not a regular file (a link planted
/// there, say) is removed first, and nothing is opened through a link, so
/// bytes are only ever written inside the output folder.
///
/// A new file of one piece is left empty: its one write, of all its bytes
/// at offset 0, gives it its size, and reserving blocks for it up front
/// bought nothing but two system calls and, on ext4, an unwritten extent
/// to convert at writeback (for 1000 files of 100 KiB on tmpfs the
/// `fallocate` alone was 7% of the client's CPU). The free space was
/// checked before (`room_for`), and a full disk still fails the write.
pub fn open_part(spot: &Spot, size: u64) -> io::Result<File> {
    let file = spot.folder.open_writable(&spot.part())?;
    // One writer per part file: a second fastdl client on the same
    // folder would otherwise write its pieces into this one's. A POSIX
    // record lock, held by the process: this client's own later attempts
    // at the file never conflict with it.
    match rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK | Errno::ACCESS) => {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the part file is locked by another download of this file (another fastdl client on the same folder?)",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let len = file.metadata()?.len();
    if len == 0 && size <= fastdl_protocol::PIECE_SIZE {
        return Ok(file);
    }
    if len != size {
        file.set_len(size)?;
    }
    if size > 0 {
        // Reserve the blocks now so a full disk shows up before the transfer.
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, size) {
            Ok(()) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => {}
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

/// Moves a verified, already flushed part file (`file`, open) to its final
/// name without ever replacing a file. The caller flushes the folder
/// afterwards (once per folder for a batch: see `lander`).
///
/// Renames go by name, and what was verified is the open file, so the
/// name must still be that file: one swapped in under the part's name
/// (a link, other bytes) while it was downloaded never lands. It is
/// checked before the rename and, for a swap in between, after it.
pub fn place(spot: &Spot, entry: &Entry, file: &File) -> io::Result<Landed> {
    let folder = &spot.folder;
    let part = spot.part();
    let swapped = || {
        io::Error::other(format!(
            "{} was replaced while it was being downloaded; not landing it",
            spot.part_path().display()
        ))
    };
    if !folder.holds_file(&part, file)? {
        return Err(swapped());
    }
    let mut candidate = spot.leaf.clone();
    let mut n = 0;
    loop {
        match folder.rename_new(&part, &candidate) {
            Ok(()) => break,
            Err(Errno::EXIST) => {
                if holds(folder, &candidate, entry)? {
                    folder.remove(&part)?;
                    return Ok(Landed::AlreadyThere(folder.path_of(&candidate)));
                }
                n += 1;
                if n > MAX_NUMBERED {
                    return Err(io::Error::other(format!(
                        "{} and {MAX_NUMBERED} numbered variants already exist",
                        spot.path().display()
                    )));
                }
                candidate = numbered(&spot.leaf, n);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !folder.holds_file(&candidate, file)? {
        // Back under the part's name, where nothing is taken for done.
        let _ = folder.rename_new(&candidate, &part);
        return Err(swapped());
    }
    let landed = folder.path_of(&candidate);
    if candidate != spot.leaf {
        info!(
            "{}: a different file already exists at {}; kept the new download as {}",
            entry.name,
            spot.path().display(),
            landed.display()
        );
    }
    Ok(Landed::New(landed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn entry(name: &str, content: &[u8]) -> Entry {
        Entry {
            name: name.into(),
            size: content.len() as u64,
            digest: Digest::of(content),
        }
    }

    #[test]
    fn parts_are_hidden_siblings() {
        assert_eq!(sibling("b.txt", "fastdl-part"), ".b.txt.fastdl-part");
        for ours in [
            ".b.txt.fastdl-part",
            "d/.b.fastdl-journal",
            ".fastdl-0a1b.fastdl-part",
        ] {
            assert!(is_working_name(ours), "{ours}");
        }
        for theirs in ["b.fastdl-part", ".profile", "a.fastdl-journal.txt"] {
            assert!(!is_working_name(theirs), "{theirs}");
        }
        let long = "x".repeat(250);
        let part = sibling(&long, "fastdl-part");
        assert!(part.len() <= 255);
        assert!(part.starts_with(".fastdl-"));
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("a.tar.gz", 1), "a.tar (1).gz");
        assert_eq!(numbered("movie.mkv", 2), "movie (2).mkv");
        assert_eq!(numbered("README", 1), "README (1)");
        assert_eq!(numbered(".rc", 1), ".rc (1)");
        let long = format!("{}.bin", "é".repeat(125));
        let name = numbered(&long, 12);
        assert!(name.len() <= 255 && name.ends_with(" (12).bin"), "{name}");
    }

    fn put_part(out: &OutDir, name: &str, content: &[u8]) -> (Spot, File) {
        let spot = Spot::make(out, name).unwrap();
        spot.folder.replace(&spot.part(), ".tmp", content).unwrap();
        let file = File::open(spot.part_path()).unwrap();
        (spot, file)
    }

    #[test]
    fn placing_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::open(dir.path()).unwrap();
        let root = dir.path();
        let e = entry("f.txt", b"new");
        // Nothing there: lands under its name.
        let (spot, file) = put_part(&out, "f.txt", b"new");
        assert_eq!(
            place(&spot, &e, &file).unwrap(),
            Landed::New(root.join("f.txt"))
        );
        // Same content there: the part goes away, nothing changes.
        let (spot, file) = put_part(&out, "f.txt", b"new");
        assert_eq!(
            place(&spot, &e, &file).unwrap(),
            Landed::AlreadyThere(root.join("f.txt"))
        );
        assert!(!spot.part_path().exists());
        // Different content there: kept, new one numbered.
        let e2 = entry("f.txt", b"newer");
        let (spot, file) = put_part(&out, "f.txt", b"newer");
        assert_eq!(
            place(&spot, &e2, &file).unwrap(),
            Landed::New(root.join("f (1).txt"))
        );
        assert_eq!(fs::read(root.join("f.txt")).unwrap(), b"new");
        assert_eq!(
            already_have(&out, &e2).unwrap(),
            Some(root.join("f (1).txt"))
        );
        assert_eq!(already_have(&out, &e).unwrap(), Some(root.join("f.txt")));
        assert_eq!(already_have(&out, &entry("f.txt", b"other")).unwrap(), None);
        assert_eq!(
            already_have(&out, &entry("no/such/dir", b"x")).unwrap(),
            None
        );
    }

    #[test]
    fn a_part_swapped_under_its_name_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::open(dir.path()).unwrap();
        let e = entry("f.txt", b"verified");
        // Other bytes in its place.
        let (spot, file) = put_part(&out, "f.txt", b"verified");
        spot.folder
            .replace(&spot.part(), ".tmp", b"imposter")
            .unwrap();
        assert!(place(&spot, &e, &file).is_err());
        // A link in its place (to the very file, even).
        let (spot, file) = put_part(&out, "g.txt", b"verified");
        let moved = dir.path().join("elsewhere");
        fs::rename(spot.part_path(), &moved).unwrap();
        std::os::unix::fs::symlink(&moved, spot.part_path()).unwrap();
        assert!(place(&spot, &entry("g.txt", b"verified"), &file).is_err());
        for name in ["f.txt", "g.txt"] {
            assert!(
                fs::symlink_metadata(dir.path().join(name)).is_err(),
                "{name} landed"
            );
        }
    }

    #[test]
    fn a_part_file_has_one_writer_process() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::open(dir.path()).unwrap();
        let spot = Spot::make(&out, "x.bin").unwrap();
        let _ours = open_part(&spot, 10).unwrap();
        // Another process asking for the same lock (python's
        // `fcntl.lockf` is F_SETLK, as ours) is refused.
        let other = std::process::Command::new("python3")
            .arg("-c")
            .arg("import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)")
            .arg(spot.part_path())
            .status()
            .unwrap();
        assert!(!other.success(), "another process got the lock");
        // This process again: no conflict.
        assert!(open_part(&spot, 10).is_ok());
    }

    #[test]
    fn part_files_get_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::open(dir.path()).unwrap();
        let spot = Spot::make(&out, "sub/x").unwrap();
        // Several pieces: sized (and reserved) up front.
        let big = 3 * fastdl_protocol::PIECE_SIZE + 5;
        let f = open_part(&spot, big).unwrap();
        assert_eq!(f.metadata().unwrap().len(), big);
        // A part of another size is cut to this one's, even a small one.
        let f = open_part(&spot, 12345).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 12345);
        let f = open_part(&spot, 0).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        // A new file of one piece waits for its one write.
        let spot = Spot::make(&out, "sub/y").unwrap();
        let f = open_part(&spot, 12345).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert_eq!(
            spot.part_path(),
            Path::new(dir.path()).join("sub/.y.fastdl-part")
        );
    }
}
