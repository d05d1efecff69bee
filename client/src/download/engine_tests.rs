//! The engine through its `Source` seam: sources held in memory (files as
//! byte vectors, answers in the order asked, as a real connection gives
//! them), with faults on demand. Whole downloads run here without a
//! server: many files at once over shared connections, corrupt pieces,
//! a source that keeps lying, a file that changed.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastdl_protocol::{Digest, Entry, PieceTree, ProtocolError};

use super::outcome::{FileError, Job, Outcome, Report};
use super::source::{Channel, Source, SourceError, Trouble};
use super::{Engine, Settings};
use crate::disk::outdir::OutDir;
use crate::progress::Progress;
use crate::shutdown::Shutdown;

/// What a memory source does wrong.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Flips a byte of every answer for this piece, this many times.
    Corrupt {
        piece: u64,
        times: u32,
    },
    /// Says every file changed.
    Changed,
}

struct Memory {
    name: String,
    files: HashMap<String, Vec<u8>>,
    fault: Fault,
    /// Corrupt answers sent so far.
    corrupted: Arc<AtomicU32>,
    /// Ranges asked for, by file.
    asked: Arc<Mutex<HashMap<String, u64>>>,
    /// Ranges asked for and not answered yet, by file, and the most files
    /// that had some at once.
    pending: Arc<Mutex<(HashMap<String, u64>, usize)>>,
}

impl Memory {
    fn new(name: &str, files: &[(&str, Vec<u8>)], fault: Fault) -> Arc<Memory> {
        Arc::new(Memory {
            name: name.into(),
            files: files
                .iter()
                .map(|(n, b)| (n.to_string(), b.clone()))
                .collect(),
            fault,
            corrupted: Arc::default(),
            asked: Arc::default(),
            pending: Arc::default(),
        })
    }
}

enum Asked {
    Range(String, u64, u64),
    Digests(String),
}

struct MemoryChannel {
    source: Arc<Memory>,
    asked: VecDeque<Asked>,
    body: std::io::Cursor<Vec<u8>>,
    /// A real socket pair, only so that the engine can cut the channel.
    socket: TcpStream,
    _peer: TcpStream,
}

fn broken(text: &str) -> SourceError {
    SourceError {
        trouble: Trouble::Broken,
        cause: Box::new(ProtocolError::Unexpected(text.into())),
    }
}

impl Source for Memory {
    fn name(&self) -> &str {
        &self.name
    }

    fn connect(&self) -> Result<Box<dyn Channel>, SourceError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| broken(&e.to_string()))?;
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        let me = Memory {
            name: self.name.clone(),
            files: self.files.clone(),
            fault: self.fault,
            corrupted: Arc::clone(&self.corrupted),
            asked: Arc::clone(&self.asked),
            pending: Arc::clone(&self.pending),
        };
        Ok(Box::new(MemoryChannel {
            source: Arc::new(me),
            asked: VecDeque::new(),
            body: std::io::Cursor::new(Vec::new()),
            socket,
            _peer: peer,
        }))
    }

    fn max_depth(&self) -> usize {
        4
    }

    fn note(&self, _e: &SourceError) {}

    fn fatal(&self) -> Option<String> {
        None
    }
}

impl Channel for MemoryChannel {
    fn ask_range(&mut self, file: &Job, offset: u64, length: u64) -> Result<(), SourceError> {
        let remote = file.remote.as_str();
        *self
            .source
            .asked
            .lock()
            .unwrap()
            .entry(remote.into())
            .or_default() += 1;
        let (pending, most) = &mut *self.source.pending.lock().unwrap();
        *pending.entry(remote.into()).or_default() += 1;
        *most = (*most).max(pending.values().filter(|&&n| n > 0).count());
        self.asked
            .push_back(Asked::Range(remote.into(), offset, length));
        Ok(())
    }

    fn ask_digests(&mut self, file: &Job) -> Result<(), SourceError> {
        self.asked.push_back(Asked::Digests(file.remote.clone()));
        Ok(())
    }

    fn await_range(&mut self, length: u64) -> Result<(), SourceError> {
        let Some(Asked::Range(remote, offset, len)) = self.asked.pop_front() else {
            return Err(broken("not a range next"));
        };
        // As if the bytes took a while to come.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(len, length);
        *self
            .source
            .pending
            .lock()
            .unwrap()
            .0
            .get_mut(&remote)
            .unwrap() -= 1;
        if self.source.fault == Fault::Changed {
            return Err(SourceError {
                trouble: Trouble::Changed,
                cause: Box::new(ProtocolError::Unexpected(format!("{remote} changed"))),
            });
        }
        let bytes = &self.source.files[&remote];
        let mut body = bytes[offset as usize..(offset + len) as usize].to_vec();
        if let Fault::Corrupt { piece, times } = self.source.fault {
            if offset / fastdl_protocol::PIECE_SIZE == piece
                && self.source.corrupted.fetch_add(1, Ordering::SeqCst) < times
            {
                body[0] ^= 0xff;
            }
        }
        self.body = std::io::Cursor::new(body);
        Ok(())
    }

    fn body(&mut self) -> &mut dyn Read {
        &mut self.body
    }

    fn read_digests(&mut self, file: &Job) -> Result<Vec<Digest>, SourceError> {
        let (remote, size) = (file.remote.as_str(), file.entry.size);
        let Some(Asked::Digests(asked)) = self.asked.pop_front() else {
            return Err(broken("not digests next"));
        };
        assert_eq!(asked, remote);
        let bytes = &self.source.files[remote];
        Ok(PieceTree::from_reader(&bytes[..], size).unwrap().pieces)
    }

    fn rtt(&self) -> Duration {
        Duration::from_micros(50)
    }

    fn socket(&self) -> Option<&TcpStream> {
        Some(&self.socket)
    }
}

/// An engine over `sources`, its lander running; returns what comes out
/// for `jobs`, in the order it came.
fn run(
    sources: Vec<Arc<Memory>>,
    jobs: Vec<Job>,
    max_files: usize,
) -> (tempfile::TempDir, Vec<Report>) {
    let tmp = tempfile::tempdir().unwrap();
    let (outcomes_tx, outcomes_rx) = crossbeam_channel::unbounded();
    let (verified_tx, verified_rx) = crossbeam_channel::unbounded();
    let shutdown = Arc::new(Shutdown::default());
    let engine = Engine::start(
        sources.into_iter().map(|s| s as Arc<dyn Source>).collect(),
        Settings {
            connections: 2,
            max_files,
            plan: false,
            limit: None,
            connect_early: false,
        },
        OutDir::open(tmp.path()).unwrap(),
        Arc::new(Progress::new(false, false)),
        Arc::clone(&shutdown),
        outcomes_tx.clone(),
        verified_tx,
    );
    std::thread::spawn(move || crate::disk::lander::run(verified_rx, outcomes_tx));
    let count = jobs.len();
    for job in jobs {
        engine.submit(job);
    }
    let reports = (0..count)
        .map(|_| {
            outcomes_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("an outcome for every job")
        })
        .collect();
    shutdown.trigger();
    (tmp, reports)
}

fn file(len: usize, seed: u64) -> Vec<u8> {
    fastdl_testkit::pattern(len, seed)
}

fn job(name: &str, bytes: &[u8], sources: &[usize]) -> Job {
    let entry = Entry {
        name: name.into(),
        size: bytes.len() as u64,
        digest: Digest::of(bytes),
    };
    Job::listed(entry, sources.to_vec())
}

#[test]
fn many_small_files_and_a_big_one_land_verified_from_two_sources() {
    let mut files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| (format!("small/{i}.bin"), file(100 * 1024 + i, i as u64)))
        .collect();
    files.push(("big.bin".into(), file(5 * (1 << 20) + 17, 99)));
    files.push(("empty".into(), Vec::new()));
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let sources = vec![
        Memory::new("a", &named, Fault::None),
        Memory::new("b", &named, Fault::None),
    ];
    let asked = [Arc::clone(&sources[0].asked), Arc::clone(&sources[1].asked)];
    let pending = Arc::clone(&sources[0].pending);
    let jobs = files.iter().map(|(n, b)| job(n, b, &[0, 1])).collect();
    let (tmp, reports) = run(sources, jobs, 8);
    for (job, outcome) in &reports {
        assert!(
            matches!(outcome, Outcome::Landed(_)),
            "{}: {outcome:?}",
            job.entry.name
        );
    }
    for (name, bytes) in &files {
        assert_eq!(
            &std::fs::read(tmp.path().join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    // Connections take pieces, not files: the four connections had pieces
    // of several small files out at once.
    let most = pending.lock().unwrap().1;
    assert!(most >= 3, "at most {most} files in flight at once");
    // The big file's pieces came from both sources.
    for a in &asked {
        assert!(a.lock().unwrap().get("big.bin").copied().unwrap_or(0) > 0);
    }
}

#[test]
fn a_corrupt_piece_is_fetched_again_and_the_file_lands_right() {
    let bytes = file(3 * (1 << 20), 4);
    let source = Memory::new(
        "a",
        &[("f.bin", bytes.clone())],
        Fault::Corrupt { piece: 1, times: 2 },
    );
    let (tmp, reports) = run(vec![source], vec![job("f.bin", &bytes, &[0])], 4);
    assert!(
        matches!(reports[0].1, Outcome::Landed(_)),
        "{:?}",
        reports[0].1
    );
    assert_eq!(std::fs::read(tmp.path().join("f.bin")).unwrap(), bytes);
}

#[test]
fn a_piece_that_never_verifies_fails_the_file_and_says_it_was_checked_here() {
    let bytes = file(2 * (1 << 20) + 5, 5);
    let source = Memory::new(
        "a",
        &[("f.bin", bytes.clone())],
        Fault::Corrupt {
            piece: 0,
            times: u32::MAX,
        },
    );
    let (tmp, reports) = run(vec![source], vec![job("f.bin", &bytes, &[0])], 4);
    match &reports[0].1 {
        Outcome::Failed(e @ FileError::BadPiece { piece: 0, .. }) => {
            assert!(e.to_string().contains("checked here"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!tmp.path().join("f.bin").exists(), "nothing lands");
}

#[test]
fn a_file_its_source_says_changed_comes_back_as_changed() {
    let bytes = file(1000, 6);
    let source = Memory::new("a", &[("f.bin", bytes.clone())], Fault::Changed);
    let (tmp, reports) = run(vec![source], vec![job("f.bin", &bytes, &[0])], 4);
    assert!(
        matches!(&reports[0].1, Outcome::Changed(e) if e.trouble == Trouble::Changed),
        "{:?}",
        reports[0].1
    );
    assert!(!tmp.path().join("f.bin").exists());
}
