//! input.txt: parsing its names and watching it for changes.
//!
//! The file belongs to the user and is only ever read. It is watched
//! through its folder (editors replace files by renaming over them, which
//! silences a watch on the file itself) and also polled, because network
//! file systems send no events. Every read takes the whole file, but a
//! watch takes an unfinished last line (no newline yet) only once it has
//! stayed the same for [`TAIL_SETTLE`]: a name appended in pieces (`echo
//! -n`, a slow writer) is not fetched by its first half.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Lines that are not text shown one by one; past this many they are
/// counted.
pub const MAX_UNREADABLE_SHOWN: usize = 1000;

/// One line of input.txt that asks for something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A name or a URL line, trimmed.
    Text(String),
    /// A line that cannot be read as one, and why; it is refused, shown
    /// as `shown` (so in `--once` the run fails instead of ignoring it).
    Unreadable { shown: String, why: &'static str },
}

/// The lines of input.txt (its text, as [`read_input`] read it), in
/// order, each once: one per line, trimmed; blank lines and `#` comments
/// skipped; CRLF and a leading BOM tolerated. Lines longer than
/// [`MAX_INPUT_LINE`] are cut to it. A line that is not UTF-8 is
/// [`Line::Unreadable`], and so is the rest of a file longer than
/// [`MAX_INPUT_BYTES`] (`complete` false): its last, cut line is not
/// taken for a name (a URL cut short names another file).
pub fn parse_names(content: &[u8], complete: bool) -> Vec<Line> {
    let content = content
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(content);
    let (content, cut) = match (complete, content.iter().rposition(|&b| b == b'\n')) {
        (true, _) => (content, None),
        (false, Some(end)) => (&content[..end], Some(&content[end + 1..])),
        (false, None) => (&content[..0], Some(content)),
    };
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    let (mut unreadable, mut more) = (0usize, 0usize);
    for raw in content.split(|&b| b == b'\n') {
        let raw = &raw[..raw.len().min(MAX_INPUT_LINE)];
        let line = match std::str::from_utf8(raw) {
            Ok(line) => Line::Text(line.trim().to_owned()),
            // Cut inside a character: keep what came before it.
            Err(e) if e.error_len().is_none() && raw.len() == MAX_INPUT_LINE => {
                let valid = std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default();
                Line::Text(valid.trim().to_owned())
            }
            // A file of garbage is refused in bounded memory: the first
            // lines one by one, the rest counted.
            Err(_) if unreadable >= MAX_UNREADABLE_SHOWN => {
                more += 1;
                continue;
            }
            Err(_) => {
                unreadable += 1;
                Line::Unreadable {
                    shown: String::from_utf8_lossy(raw).trim().to_owned(),
                    why: "the line is not UTF-8 text (shown with \u{fffd} for what is not)",
                }
            }
        };
        let key = match &line {
            Line::Text(name) if name.is_empty() || name.starts_with('#') => continue,
            Line::Text(name) | Line::Unreadable { shown: name, .. } => name.clone(),
        };
        if seen.insert(key) {
            names.push(line);
        }
    }
    if more > 0 {
        names.push(Line::Unreadable {
            shown: format!("{more} more lines"),
            why: "not UTF-8 text (not shown one by one)",
        });
    }
    if let Some(cut) = cut {
        let start = String::from_utf8_lossy(&cut[..cut.len().min(80)])
            .trim()
            .to_owned();
        let shown = if start.is_empty() {
            "(what follows the first 64 MiB)".to_owned()
        } else {
            format!("{start}...")
        };
        names.push(Line::Unreadable {
            shown,
            why: "the file is longer than 64 MiB; this line and every line after it were not read",
        });
    }
    names
}

/// Reads input.txt, at most [`MAX_INPUT_BYTES`] of it; `None` if it does
/// not exist. `complete` says whether that was all of it.
pub fn read_input(path: &Path) -> std::io::Result<Option<Input>> {
    match File::open(path) {
        Ok(file) => {
            let mut content = Vec::new();
            file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut content)?;
            let complete = content.len() as u64 <= MAX_INPUT_BYTES;
            content.truncate(MAX_INPUT_BYTES as usize);
            Ok(Some(Input { content, complete }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What [`read_input`] read.
#[derive(Debug, PartialEq, Eq)]
pub struct Input {
    /// The bytes of input.txt, up to [`MAX_INPUT_BYTES`].
    pub content: Vec<u8>,
    /// Whether that is all of it.
    pub complete: bool,
}

impl Input {
    /// Its lines: see [`parse_names`].
    pub fn lines(&self) -> Vec<Line> {
        parse_names(&self.content, self.complete)
    }
}

/// Watches input.txt and sends the names of every read whose content
/// changed, until shutdown.
pub struct InputWatcher {
    path: PathBuf,
    poll: Duration,
    names: Sender<Vec<Line>>,
    shutdown: Arc<Shutdown>,
}

impl InputWatcher {
    pub fn new(
        path: &Path,
        poll: Duration,
        names: Sender<Vec<Line>>,
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

        // What was last sent: the text read, and how much of it was taken.
        let mut last: Option<(Input, usize)> = None;
        let mut tail: Option<Tail> = None;
        let mut recheck = None;
        let mut missing_reported = false;
        loop {
            // Read now (at start, on an event, at the poll, or when an
            // unfinished last line may have settled), then wait for the
            // next of those, or shutdown.
            if self.shutdown.is_requested() {
                return;
            }
            match read_input(&self.path) {
                Ok(Some(input)) => {
                    missing_reported = false;
                    let taken;
                    (taken, recheck) = taken_now(&input.content, &mut tail, Instant::now());
                    let changed = last
                        .as_ref()
                        .is_none_or(|(before, len)| *before != input || *len != taken);
                    if changed {
                        debug!(
                            "{}: read {} bytes",
                            self.path.display(),
                            input.content.len()
                        );
                        let names = parse_names(&input.content[..taken], input.complete);
                        last = Some((input, taken));
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
            let wait = recheck.map_or(self.poll, |at: Instant| {
                self.poll.min(at.saturating_duration_since(Instant::now()))
            });
            select! {
                recv(wake_rx) -> _ => {},
                recv(self.shutdown.signal()) -> _ => return,
                default(wait) => {},
            }
        }
    }
}

/// How long an unfinished last line (no newline yet) must stay the same
/// before a watch takes it: a name being typed, or appended in pieces, is
/// not a name yet (`--once` takes it at once: the file is complete).
pub const TAIL_SETTLE: Duration = Duration::from_secs(1);

/// An unfinished last line, and since when it has been the same.
#[derive(Debug)]
pub struct Tail {
    text: Vec<u8>,
    since: Instant,
}

/// How much of input.txt's `content` a watch takes at `now`: all of it,
/// or all but an unfinished last line that has not stayed the same for
/// [`TAIL_SETTLE`]; and when to read again for that line (`tail` keeps
/// track of it between reads).
pub fn taken_now(
    content: &[u8],
    tail: &mut Option<Tail>,
    now: Instant,
) -> (usize, Option<Instant>) {
    let start = content
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let unfinished = &content[start..];
    if unfinished.iter().all(u8::is_ascii_whitespace) {
        *tail = None;
        return (content.len(), None);
    }
    let since = match tail {
        Some(t) if t.text == unfinished => t.since,
        _ => {
            *tail = Some(Tail {
                text: unfinished.to_vec(),
                since: now,
            });
            now
        }
    };
    if now.saturating_duration_since(since) >= TAIL_SETTLE {
        (content.len(), None)
    } else {
        (start, Some(since + TAIL_SETTLE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the readable lines.
    fn texts(content: &[u8]) -> Vec<String> {
        parse_names(content, true)
            .into_iter()
            .filter_map(|line| match line {
                Line::Text(name) => Some(name),
                Line::Unreadable { .. } => None,
            })
            .collect()
    }

    #[test]
    fn takes_one_trimmed_name_per_line() {
        let text = "\u{feff}# how to use\r\na.txt\r\n\r\n  b c.bin  \n#x\na.txt\nsub/ü.txt";
        assert_eq!(texts(text.as_bytes()), ["a.txt", "b c.bin", "sub/ü.txt"]);
    }

    #[test]
    fn survives_garbage() {
        let mut bytes = b"ok\n\xff\xfe\x00bad\nfine\n".to_vec();
        bytes.extend((0..=255u8).collect::<Vec<_>>());
        assert_eq!(&texts(&bytes)[..2], ["ok", "fine"]);
        assert!(parse_names(b"", true).is_empty());
        assert!(parse_names(b"\n\n   \n# only comments\n", true).is_empty());
    }

    #[test]
    fn lines_that_are_not_text_are_refused_not_skipped() {
        let lines = parse_names(b"a\ncaf\xe9.txt\nb\n", true);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], Line::Text("a".into()));
        assert!(
            matches!(&lines[1], Line::Unreadable { shown, .. } if shown == "caf\u{fffd}.txt"),
            "{lines:?}"
        );
        assert_eq!(lines[2], Line::Text("b".into()));
    }

    #[test]
    fn a_file_of_garbage_is_refused_in_bounded_memory() {
        let mut bytes = Vec::new();
        for i in 0..(MAX_UNREADABLE_SHOWN + 500) {
            bytes.extend_from_slice(format!("good \u{e9} {i}\n").as_bytes());
            bytes.extend_from_slice(format!("bad {i} ").as_bytes());
            bytes.extend_from_slice(b"\xff\n");
        }
        let lines = parse_names(&bytes, true);
        let refused: Vec<&Line> = lines
            .iter()
            .filter(|l| matches!(l, Line::Unreadable { .. }))
            .collect();
        // Lines that are text are all kept; the others up to the limit,
        // then one line counting the rest.
        assert_eq!(lines.len() - refused.len(), MAX_UNREADABLE_SHOWN + 500);
        assert_eq!(refused.len(), MAX_UNREADABLE_SHOWN + 1);
        assert!(
            matches!(refused.last(), Some(Line::Unreadable { shown, .. }) if shown == "500 more lines"),
            "{:?}",
            refused.last()
        );
    }

    #[test]
    fn the_rest_of_a_file_read_in_part_is_refused_and_its_cut_line_never_a_name() {
        let lines = parse_names(b"a.bin\nhttp://h/file.tar", false);
        assert_eq!(lines[0], Line::Text("a.bin".into()));
        assert!(
            matches!(&lines[1], Line::Unreadable { shown, .. } if shown.starts_with("http://h/file.tar")),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn a_file_over_the_limit_is_read_as_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.txt");
        let mut big = b"first\n".to_vec();
        big.resize(MAX_INPUT_BYTES as usize + 10, b'x');
        std::fs::write(&path, &big).unwrap();
        let input = read_input(&path).unwrap().unwrap();
        assert!(!input.complete);
        assert_eq!(input.content.len() as u64, MAX_INPUT_BYTES);
        std::fs::write(&path, b"first\n").unwrap();
        assert!(read_input(&path).unwrap().unwrap().complete);
    }

    #[test]
    fn overlong_lines_are_cut() {
        let mut bytes = vec![b'z'; 5 << 20];
        bytes.extend_from_slice("\nok\n".as_bytes());
        bytes.extend("é".repeat(MAX_INPUT_LINE).as_bytes());
        let names = texts(&bytes);
        assert_eq!(names.len(), 3);
        assert_eq!(names[0].len(), MAX_INPUT_LINE);
        assert_eq!(names[1], "ok");
        assert_eq!(names[2], "é".repeat(MAX_INPUT_LINE / 2));
    }

    #[test]
    fn handles_many_lines() {
        let text: String = (0..100_000).map(|i| format!("file{i}\n")).collect();
        let names = texts(text.as_bytes());
        assert_eq!(names.len(), 100_000);
        assert_eq!(names[99_999], "file99999");
    }

    #[test]
    fn a_watch_takes_an_unfinished_last_line_only_once_it_stayed_the_same() {
        let t0 = Instant::now();
        let mut tail = None;
        let text = b"a.bin\nhttp://h/report";
        // Being appended: not yet.
        assert_eq!(taken_now(text, &mut tail, t0), (6, Some(t0 + TAIL_SETTLE)));
        let more = b"a.bin\nhttp://h/report.fin";
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(taken_now(more, &mut tail, t1), (6, Some(t1 + TAIL_SETTLE)));
        // The same for a while: taken.
        let t2 = t1 + TAIL_SETTLE;
        assert_eq!(taken_now(more, &mut tail, t2), (more.len(), None));
        // Finished lines are taken at once.
        assert_eq!(taken_now(b"a\nb\n", &mut tail, t2), (4, None));
        assert_eq!(taken_now(b"a\n  ", &mut tail, t2), (4, None));
    }

    #[test]
    fn missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_input(&dir.path().join("nope")).unwrap().is_none());
    }
}
