//! The list file (`text.txt`): the published list, replaced atomically so
//! that a reader never sees half a list. `tempfile` makes the temporary
//! file beside it (a random name, mode 0600, removed if anything fails);
//! it is written, flushed, and renamed over the list, then the folder is
//! flushed so the rename itself survives a crash.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use fastdl_protocol::Listing;

/// Replaces `path` with `listing`'s lines.
pub fn write(path: &Path, listing: &Listing) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let replace = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".text.")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        tmp.write_all(listing.to_text().as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    replace().with_context(|| format!("cannot write list file {}", path.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastdl_protocol::{Digest, Entry};

    #[test]
    fn replaces_the_list_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text.txt");
        std::fs::write(&path, "old\n").unwrap();
        let listing = Listing::new(vec![Entry {
            name: "a.bin".into(),
            size: 3,
            digest: Digest::of(b"abc"),
        }]);
        write(&path, &listing).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), listing.to_text());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["text.txt"]);
    }
}
