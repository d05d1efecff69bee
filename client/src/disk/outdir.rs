//! The output folder (`--out`), reached only through descriptors.
//!
//! Every file the client creates, reads, renames or removes under `--out`
//! is reached from one descriptor of that folder, one name component at a
//! time (`openat` with `O_NOFOLLOW`), never by a path the kernel resolves
//! on its own. A symbolic link anywhere below `--out` (a folder `sub`
//! that is a link, a link planted at a part file's name) is therefore
//! never followed: bytes, part files and journals land inside `--out` or
//! nowhere. `--out` itself may be a link: where it leads is the user's
//! choice, made once at start.
//!
//! This is the equivalent walk of `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`; it is used everywhere because it works on every
//! kernel and file system, and names are validated first (no `..`, no
//! leading `/`), so a walk can only go down. For the same reason the
//! journal's write-then-rename ([`Folder::replace`]) is done here rather
//! than with `tempfile`, whose files are made and persisted by path.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fastdl_protocol::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

/// Mode of created folders and files (before the umask).
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// The output folder, open.
pub struct OutDir {
    root: Arc<OwnedFd>,
    path: PathBuf,
}

/// One folder below (or at) `--out`, open: where one name's final file,
/// part file and journal live. Its descriptor is shared by its clones
/// (each file's attempt and its landing hold one): duplicating it for
/// every file cost two system calls each way, per clone.
#[derive(Debug, Clone)]
pub struct Folder {
    fd: Arc<OwnedFd>,
    /// For messages only: the path the folder was reached by.
    path: PathBuf,
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl OutDir {
    /// Creates `path` if needed (following links on the way: the user
    /// named it) and opens it.
    pub fn open(path: &Path) -> io::Result<OutDir> {
        std::fs::create_dir_all(path)?;
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(OutDir {
            root: Arc::new(root),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `name` (a valid protocol name) is or would be, for messages.
    pub fn display(&self, name: &str) -> PathBuf {
        name.split('/')
            .fold(self.path.clone(), |p, part| p.join(part))
    }

    /// Bytes the user may still write on the output folder's file system.
    pub fn available(&self) -> io::Result<u64> {
        let stat = rustix::fs::fstatvfs(&self.root).map_err(errno)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// The folder that holds `name`, walked without following links and
    /// created on the way when `create`. `Ok(None)`: it does not exist
    /// (and `create` is false). A link or a file on the way is an error
    /// that names it.
    pub fn folder_of(&self, name: &str, create: bool) -> io::Result<Option<Folder>> {
        let mut parts: Vec<&str> = name.split('/').collect();
        parts.pop();
        let mut fd = Arc::clone(&self.root);
        let mut path = self.path.clone();
        for part in parts {
            path.push(part);
            if create {
                match rustix::fs::mkdirat(&fd, part, Mode::from_raw_mode(DIR_MODE)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            fd = match rustix::fs::openat(&fd, part, flags, Mode::empty()) {
                Ok(next) => Arc::new(next),
                Err(Errno::NOENT) if !create => return Ok(None),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    let link = rustix::fs::statat(&fd, part, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    return Err(if link {
                        io::Error::other(format!(
                            "{} is a symbolic link inside the output folder; not followed",
                            path.display()
                        ))
                    } else {
                        io::Error::new(
                            errno(e).kind(),
                            format!("{} is not a folder", path.display()),
                        )
                    });
                }
                Err(e) => return Err(errno(e)),
            };
        }
        Ok(Some(Folder { fd, path }))
    }
}

/// What is at a name in a folder, without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// A regular file of this many bytes.
    File {
        size: u64,
    },
    /// Anything else: a link, a folder, a FIFO...
    Other,
}

impl Folder {
    /// The path of `leaf` in this folder, for messages.
    pub fn path_of(&self, leaf: &str) -> PathBuf {
        self.path.join(leaf)
    }

    /// Identity of the folder (device and inode), to flush each folder once.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(&self.fd).map_err(errno)?;
        Ok((st.st_dev, st.st_ino))
    }

    pub fn look(&self, leaf: &str) -> io::Result<Found> {
        match rustix::fs::statat(&self.fd, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(Found::File {
                    size: st.st_size as u64,
                })
            }
            Ok(_) => Ok(Found::Other),
            Err(Errno::NOENT) => Ok(Found::Nothing),
            Err(e) => Err(errno(e)),
        }
    }

    fn open_at(&self, leaf: &str, flags: OFlags) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            leaf,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Opens a regular file for reading; `Ok(None)` if there is none
    /// (anything else at the name, a link or a FIFO, counts as none: it is
    /// opened without blocking and checked before it is read).
    pub fn open_regular(&self, leaf: &str) -> io::Result<Option<File>> {
        let file = match self.open_at(leaf, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(c) if c == Errno::NOENT.raw_os_error() || c == Errno::LOOP.raw_os_error()) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Ok(None);
        }
        Ok(Some(file))
    }

    /// BLAKE3 of the regular file at `leaf` (`None` if there is none).
    pub fn digest_of(&self, leaf: &str) -> io::Result<Option<Digest>> {
        let Some(file) = self.open_regular(leaf)? else {
            return Ok(None);
        };
        let mut hasher = blake3::Hasher::new();
        // The descriptor's own /proc entry: the very file opened above.
        hasher.update_mmap_rayon(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        Ok(Some(Digest(*hasher.finalize().as_bytes())))
    }

    /// Opens (creating) a file for reading and writing. Anything at the
    /// name that is not a regular file (a link planted there, say) is
    /// removed first, and so is a regular file with other names (a hard
    /// link to a file elsewhere, whose bytes writing here would change),
    /// so bytes are only ever written inside the folder, to a file only
    /// this name reaches.
    pub fn open_writable(&self, leaf: &str) -> io::Result<File> {
        if self.look(leaf)? == Found::Other {
            log::warn!(
                "{}: not a regular file; removing it",
                self.path_of(leaf).display()
            );
            self.remove(leaf)?;
        }
        let file = self.open_at(leaf, OFlags::RDWR | OFlags::CREATE)?;
        if rustix::fs::fstat(&file).map_err(errno)?.st_nlink == 1 {
            return Ok(file);
        }
        log::warn!(
            "{}: has other names (a hard link); removing it and starting a new file",
            self.path_of(leaf).display()
        );
        drop(file);
        self.remove(leaf)?;
        self.open_at(leaf, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL)
    }

    /// Reads a small file whole; `Ok(None)` if there is none or it is
    /// longer than `limit`.
    pub fn read_small(&self, leaf: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.open_regular(leaf)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        Ok((bytes.len() as u64 <= limit).then_some(bytes))
    }

    /// Replaces `leaf` with `bytes` atomically: a temporary file beside
    /// it, written and flushed, renamed over it.
    pub fn replace(&self, leaf: &str, tmp_leaf: &str, bytes: &[u8]) -> io::Result<()> {
        let _ = self.remove(tmp_leaf);
        let mut file = self.open_at(tmp_leaf, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        rustix::fs::renameat(&self.fd, tmp_leaf, &self.fd, leaf).map_err(errno)
    }

    /// Renames `from` to `to` in this folder, never replacing anything:
    /// `Err(EXIST)` if `to` exists.
    /// Whether `leaf` is `file` itself and its only name (the same inode,
    /// not a link to it, not a file put there in its place, not one a
    /// hard link elsewhere also reaches).
    pub fn holds_file(&self, leaf: &str, file: &File) -> io::Result<bool> {
        let ours = rustix::fs::fstat(file).map_err(errno)?;
        match rustix::fs::statat(&self.fd, leaf, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(st.st_dev == ours.st_dev && st.st_ino == ours.st_ino && st.st_nlink == 1),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }

    pub fn rename_new(&self, from: &str, to: &str) -> Result<(), Errno> {
        rustix::fs::renameat_with(&self.fd, from, &self.fd, to, RenameFlags::NOREPLACE)
    }

    /// Removes the file (or link) `leaf`; nothing there is fine.
    pub fn remove(&self, leaf: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, leaf, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Flushes the folder itself (its entries: names just renamed in).
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(errno)
    }
}

impl AsFd for Folder {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_walked_and_made_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::open(&tmp.path().join("out")).unwrap();
        assert!(out.folder_of("a/b/c.bin", false).unwrap().is_none());
        let folder = out.folder_of("a/b/c.bin", true).unwrap().unwrap();
        assert_eq!(folder.path_of("c.bin"), tmp.path().join("out/a/b/c.bin"));
        folder.replace("c.bin", ".c.tmp", b"xyz").unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("out/a/b/c.bin")).unwrap(),
            b"xyz"
        );

        // A link to a folder elsewhere, on the way to a name: refused,
        // whether asked to create or not; nothing is made through it.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("out/link")).unwrap();
        for create in [false, true] {
            let err = out.folder_of("link/deeper/x", create).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // A file where a folder should be.
        std::fs::write(tmp.path().join("out/file"), b"").unwrap();
        assert!(out.folder_of("file/x", true).is_err());
    }

    #[test]
    fn leaves_are_never_opened_through_links_or_fifos() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::open(tmp.path()).unwrap();
        let folder = out.folder_of("x", false).unwrap().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("link")).unwrap();
        assert_eq!(folder.look("link").unwrap(), Found::Other);
        assert!(folder.open_regular("link").unwrap().is_none());
        assert!(folder.digest_of("link").unwrap().is_none());
        // Opening it for writing replaces the link by a file of our own.
        let mut f = folder.open_writable("link").unwrap();
        f.write_all(b"ours").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(folder.look("link").unwrap(), Found::File { size: 4 });
        rustix::fs::mknodat(
            &folder,
            "fifo",
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(folder.open_regular("fifo").unwrap().is_none(), "no block");
        assert_eq!(folder.digest_of("link").unwrap(), Some(Digest::of(b"ours")));
    }

    #[test]
    fn renames_never_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::open(tmp.path()).unwrap();
        let folder = out.folder_of("x", false).unwrap().unwrap();
        folder.replace("a", ".a.tmp", b"1").unwrap();
        folder.replace("b", ".b.tmp", b"2").unwrap();
        assert_eq!(folder.rename_new("a", "b"), Err(Errno::EXIST));
        folder.rename_new("a", "c").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"2");
        assert_eq!(std::fs::read(tmp.path().join("c")).unwrap(), b"1");
        folder.remove("c").unwrap();
        folder.remove("c").unwrap();
        assert!(out.available().unwrap() > 0);
    }

    #[test]
    fn a_hard_link_at_the_name_is_replaced_not_written_through() {
        use std::fs;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim.txt");
        fs::write(&victim, b"theirs").unwrap();
        fs::hard_link(&victim, dir.path().join("part")).unwrap();
        let out = OutDir::open(dir.path()).unwrap();
        let folder = out.folder_of("part", false).unwrap().unwrap();
        let mut file = folder.open_writable("part").unwrap();
        file.write_all(b"ours").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"theirs");
        assert_eq!(fs::read(dir.path().join("part")).unwrap(), b"ours");
        assert!(folder.holds_file("part", &file).unwrap());
        // A hard link made to it later: no longer only ours to land.
        fs::hard_link(dir.path().join("part"), outside.path().join("grab")).unwrap();
        assert!(!folder.holds_file("part", &file).unwrap());
    }
}
