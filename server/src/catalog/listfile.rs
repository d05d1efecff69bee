//! The list file (`text.txt`): the published list, replaced atomically
//! (a temporary file beside it, written, flushed, renamed over it, then
//! the folder flushed) so that a reader never sees half a list.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fastdl_protocol::Listing;

/// Replaces `path` with `listing`'s lines.
pub fn write(path: &Path, listing: &Listing) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .context("list file path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(listing.to_text().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write list file {}", path.display()))?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
