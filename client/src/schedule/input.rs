//! input.txt: parsing its names and watching it for changes.
//!
//! The file belongs to the user and is only ever read. It is watched
//! through its folder (editors replace files by renaming over them, which
//! silences a watch on the file itself) and also polled, because network
//! file systems send no events. Every read takes the whole file.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Sender};
use log::{debug, warn};
use notify::{RecursiveMode, Watcher};

use crate::shutdown::Shutdown;

/// Most bytes of input.txt that are read (a larger file is read this far).
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// Longest line taken whole from input.txt. A name is at most 1024
/// bytes; the rest is room for what may follow it. A longer line
/// (input.txt linked to /dev/zero, a pasted binary) is cut here: what is
/// left is not a valid name and is refused as one, shown bounded in the
/// log and the summary.
pub const MAX_INPUT_LINE: usize = 16 << 10;

/// The names in the text of input.txt, in order, each once: one name per
/// line, trimmed; blank lines and `#` comments skipped; CRLF and a leading
/// BOM tolerated. Lines that are not UTF-8 are skipped; lines longer than
/// [`MAX_INPUT_LINE`] are cut to it.
pub fn parse_names(content: &[u8]) -> Vec<String> {
    let content = content
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(content);
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for raw in content.split(|&b| b == b'\n') {
        let line = match std::str::from_utf8(&raw[..raw.len().min(MAX_INPUT_LINE)]) {
            Ok(line) => line,
            // Cut inside a character: keep what came before it.
            Err(e) if e.error_len().is_none() && raw.len() > MAX_INPUT_LINE => {
                std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default()
            }
            Err(_) => continue,
        };
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if seen.insert(name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Reads input.txt (bounded); `None` if it does not exist.
pub fn read_input(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(file) => {
            let mut content = Vec::new();
            file.take(MAX_INPUT_BYTES).read_to_end(&mut content)?;
            Ok(Some(content))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Watches input.txt and sends the names of every read whose content
/// changed, until shutdown.
pub struct InputWatcher {
    path: PathBuf,
    poll: Duration,
    names: Sender<Vec<String>>,
    shutdown: Arc<Shutdown>,
}

impl InputWatcher {
    pub fn new(
        path: &Path,
        poll: Duration,
        names: Sender<Vec<String>>,
        shutdown: Arc<Shutdown>,
    ) -> Self {
        InputWatcher {
            path: path.to_path_buf(),
            poll,
            names,
            shutdown,
        }
    }

    /// Runs the watch loop on the calling thread.
    pub fn run(self) {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
        let file_name = self.path.file_name().map(|n| n.to_os_string());
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Our own reads of the file show up as access events: waking on
            // them would re-read the file forever.
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let ours = event.paths.is_empty()
                || event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
            if ours {
                let _ = wake_tx.try_send(());
            }
        };
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let _watcher = notify::recommended_watcher(handler)
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w))
            .map_err(|e| {
                warn!(
                    "cannot watch {} ({e}); polling every {:?}",
                    dir.display(),
                    self.poll
                )
            })
            .ok();

        let mut last: Option<Vec<u8>> = None;
        let mut missing_reported = false;
        loop {
            // Read now (at start, on an event, or at the poll), then wait
            // for the next event, the next poll, or shutdown.
            if self.shutdown.is_requested() {
                return;
            }
            match read_input(&self.path) {
                Ok(Some(content)) => {
                    missing_reported = false;
                    if last.as_deref() != Some(&content[..]) {
                        debug!("{}: read {} bytes", self.path.display(), content.len());
                        let names = parse_names(&content);
                        last = Some(content);
                        if self.names.send(names).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if !missing_reported {
                        warn!(
                            "{} does not exist (yet); waiting for it",
                            self.path.display()
                        );
                        missing_reported = true;
                    }
                    last = None;
                }
                Err(e) => warn!("cannot read {}: {e}", self.path.display()),
            }
            select! {
                recv(wake_rx) -> _ => {},
                recv(self.shutdown.signal()) -> _ => return,
                default(self.poll) => {},
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_one_trimmed_name_per_line() {
        let text = "\u{feff}# how to use\r\na.txt\r\n\r\n  b c.bin  \n#x\na.txt\nsub/ü.txt";
        assert_eq!(
            parse_names(text.as_bytes()),
            ["a.txt", "b c.bin", "sub/ü.txt"]
        );
    }

    #[test]
    fn survives_garbage() {
        let mut bytes = b"ok\n\xff\xfe\x00bad\nfine\n".to_vec();
        bytes.extend((0..=255u8).collect::<Vec<_>>());
        assert_eq!(&parse_names(&bytes)[..2], ["ok", "fine"]);
        assert!(parse_names(b"").is_empty());
        assert!(parse_names(b"\n\n   \n# only comments\n").is_empty());
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut bytes = vec![b'z'; 5 << 20];
        bytes.extend_from_slice("\nok\n".as_bytes());
        bytes.extend("é".repeat(MAX_INPUT_LINE).as_bytes());
        let names = parse_names(&bytes);
        assert_eq!(names.len(), 3);
        assert_eq!(names[0].len(), MAX_INPUT_LINE);
        assert_eq!(names[1], "ok");
        assert_eq!(names[2], "é".repeat(MAX_INPUT_LINE / 2));
    }

    #[test]
    fn handles_many_lines() {
        let text: String = (0..100_000).map(|i| format!("file{i}\n")).collect();
        let names = parse_names(text.as_bytes());
        assert_eq!(names.len(), 100_000);
        assert_eq!(names[99_999], "file99999");
    }

    #[test]
    fn missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_input(&dir.path().join("nope")).unwrap().is_none());
    }
}
