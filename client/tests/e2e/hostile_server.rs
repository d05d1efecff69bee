//! The client against a broken or hostile server: garbage, an endless
//! line, a length that lies, a digest that never matches, a path trick in
//! the list. Each gets a clear error, bounded memory, nothing outside the
//! output folder and no unverified file under a final name.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use fastdl_protocol::digest::PieceTree;
use fastdl_protocol::listing::write_pieces;
use fastdl_protocol::Digest;
use fastdl_testkit::{client, hash_file, run_measuring_memory, run_with_deadline, DEADLINE};

/// What the fake server does after the handshake.
#[derive(Clone, Copy)]
enum Misbehaviour {
    GarbageList,
    EndlessLine,
    LyingLength,
    WrongBytes,
    PathTrickInList,
    /// A multi-piece file whose per-piece digests come late (the client
    /// asks for pieces meanwhile and must hold them until they come).
    SlowDigests,
    /// The same, but the digests that finally come do not add up to the
    /// listed file digest.
    DigestsThatDoNotAddUp,
    /// Lists the multi-piece big.bin and answers `PIECES` for it with a
    /// count that cannot fit the file and digest lines without end (issue
    /// 15, break 1).
    EndlessPieces,
    /// Lists a file of nearly 2^64 bytes and answers `PIECES` for it with
    /// the matching count and digest lines without end.
    HugeListedSize,
    /// Answers `GET` with its `DATA` line, then one byte every 2 s.
    TrickledData,
    /// Answers `GET` with its `DATA` line and half the bytes, then nothing
    /// (the connection stays open).
    StallAfterShortData,
}

/// Writes digest-shaped lines until the peer goes away.
fn endless_digests(w: &mut TcpStream) {
    let line = format!("{}\n", Digest([0xab; 32]));
    let block = line.repeat(1 << 12);
    while w.write_all(block.as_bytes()).is_ok() {}
}

/// The multi-piece file of the slow-digest cases: 3 MiB and 5 bytes.
fn big() -> &'static [u8] {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BIG.get_or_init(|| fastdl_testkit::pattern(3 * (1 << 20) + 5, 42))
}

const CONTENT: &[u8] = b"the real bytes of the file";

/// The one-piece f.txt a fake server lists: long enough, in the slow
/// cases, that a trickle of it would take hours.
fn content(how: Misbehaviour) -> &'static [u8] {
    static SLOW: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    match how {
        Misbehaviour::TrickledData | Misbehaviour::StallAfterShortData => {
            SLOW.get_or_init(|| fastdl_testkit::pattern(100_000, 9))
        }
        _ => CONTENT,
    }
}

fn entry_line(name: &str, content: &[u8]) -> String {
    format!(
        "1) {name}\t{}\t{}",
        content.len(),
        blake3::hash(content).to_hex()
    )
}

fn serve(conn: TcpStream, how: Misbehaviour) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let req = line.trim_end().to_owned();
        let reply: Vec<u8> = if req.starts_with("FASTDL") {
            b"FASTDL 2\n".to_vec()
        } else if req == "LIST" {
            match how {
                Misbehaviour::GarbageList => b"\x00\xffWHAT IS THIS\n".to_vec(),
                Misbehaviour::EndlessLine => {
                    let _ = w.write_all(b"LIST 1\n1) ");
                    let chunk = vec![b'a'; 1 << 20];
                    for _ in 0..10 {
                        if w.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                    return;
                }
                Misbehaviour::PathTrickInList => {
                    format!("LIST 1\n{}\nEND\n", entry_line("../evil.txt", CONTENT)).into_bytes()
                }
                Misbehaviour::SlowDigests
                | Misbehaviour::DigestsThatDoNotAddUp
                | Misbehaviour::EndlessPieces => {
                    format!("LIST 1\n{}\nEND\n", entry_line("big.bin", big())).into_bytes()
                }
                Misbehaviour::HugeListedSize => format!(
                    "LIST 1\n1) f.txt\t{}\t{}\nEND\n",
                    u64::MAX - 5,
                    Digest([1; 32])
                )
                .into_bytes(),
                _ => format!("LIST 1\n{}\nEND\n", entry_line("f.txt", content(how))).into_bytes(),
            }
        } else if req.starts_with("PIECES ")
            && matches!(
                how,
                Misbehaviour::EndlessPieces | Misbehaviour::HugeListedSize
            )
        {
            let header = match how {
                Misbehaviour::EndlessPieces => format!("PIECES 26 1048576 {}\n", u64::MAX >> 20),
                _ => format!("PIECES {} 1048576 {}\n", u64::MAX - 5, (u64::MAX - 5) >> 20),
            };
            if w.write_all(header.as_bytes()).is_ok() {
                endless_digests(&mut w);
            }
            return;
        } else if req.starts_with("PIECES ") {
            // Late enough for the first pieces to arrive before their digests.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let size = big().len() as u64;
            let mut pieces = PieceTree::from_reader(big(), size).unwrap().pieces;
            if matches!(how, Misbehaviour::DigestsThatDoNotAddUp) {
                pieces.iter_mut().for_each(|d| *d = Digest([7; 32]));
            }
            let mut reply = Vec::new();
            write_pieces(&mut reply, size, &pieces).unwrap();
            reply
        } else if let Some(rest) = req.strip_prefix("GET ") {
            let mut words = rest.split(' ');
            let offset: usize = words.next().unwrap().parse().unwrap();
            let length: usize = words.next().unwrap().parse().unwrap();
            match how {
                Misbehaviour::SlowDigests
                | Misbehaviour::DigestsThatDoNotAddUp
                | Misbehaviour::EndlessPieces => {
                    let mut reply = format!("DATA {length}\n").into_bytes();
                    reply.extend_from_slice(&big()[offset..offset + length]);
                    reply
                }
                Misbehaviour::LyingLength => format!("DATA {}\n", length * 1000).into_bytes(),
                _ if offset + length > content(how).len() => {
                    format!("WRONG_INPUT range {offset}+{length} is outside f.txt\n").into_bytes()
                }
                Misbehaviour::TrickledData => {
                    let _ = w.write_all(format!("DATA {length}\n").as_bytes());
                    for &byte in &content(how)[offset..offset + length] {
                        std::thread::sleep(std::time::Duration::from_secs(2));
                        if w.write_all(&[byte]).is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Misbehaviour::StallAfterShortData => {
                    let _ = w.write_all(format!("DATA {length}\n").as_bytes());
                    let _ = w.write_all(&content(how)[offset..offset + length / 2]);
                    // Stay connected and silent until the client leaves.
                    let _ = r.read_line(&mut line);
                    return;
                }

                _ => {
                    let mut reply = format!("DATA {length}\n").into_bytes();
                    reply.extend(std::iter::repeat_n(b'X', length));
                    reply
                }
            }
        } else {
            b"ERROR IO unexpected\n".to_vec()
        };
        if w.write_all(&reply).is_err() {
            return;
        }
    }
}

fn fake_server(how: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn, how));
        }
    });
    addr
}

fn run(how: Misbehaviour, name: &str) -> (tempfile::TempDir, Output) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), format!("{name}\n")).unwrap();
    let out = run_with_deadline(
        client(&fake_server(how), &work).args([
            "--once",
            "--plaintext",
            "--retries",
            "2",
            "--retry-wait",
            "1",
        ]),
        DEADLINE,
    );
    (tmp, out)
}

/// Runs `fastdl-client --once` for the file the fake server lists (big.bin
/// or f.txt) with `args`, within `deadline`, killing it past `max_kib` of
/// memory; returns its output and peak memory (KiB).
fn run_bounded(
    how: Misbehaviour,
    args: &[&str],
    deadline: Duration,
    max_kib: u64,
) -> (tempfile::TempDir, Output, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    fs::create_dir_all(&work).unwrap();
    let name = match how {
        Misbehaviour::EndlessPieces => "big.bin",
        _ => "f.txt",
    };
    fs::write(work.join("input.txt"), format!("{name}\n")).unwrap();
    let (out, peak) = run_measuring_memory(
        client(&fake_server(how), &work)
            .args(["--once", "--plaintext"])
            .args(args),
        deadline,
        max_kib,
    );
    (tmp, out, peak)
}

/// Client memory never allowed in these cases.
const MAX_KIB: u64 = 64 << 10;

/// Break 1: a `PIECES` answer whose count cannot fit the file, followed
/// by digest lines without end, is refused at its header: the file fails
/// (its pieces can never be judged), nothing lands, and memory stays
/// bounded, with one connection or four.
#[test]
fn an_endless_pieces_answer_costs_no_memory() {
    for connections in ["1", "4"] {
        let (tmp, out, peak) = run_bounded(
            Misbehaviour::EndlessPieces,
            &["--connections", connections, "--retries", "1"],
            Duration::from_secs(60),
            MAX_KIB,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("failed: big.bin"), "{stderr}");
        assert_nothing_landed(tmp.path());
        assert!(peak < MAX_KIB, "peak {peak} KiB");
    }
}

/// Break 1, the other way: a listed size near 2^64 with a `PIECES` count
/// to match. The file cannot fit: it fails at once, within bounded memory.
#[test]
fn a_file_listed_near_2_64_bytes_fails_within_bounded_memory() {
    for connections in ["1", "4"] {
        let (tmp, out, peak) = run_bounded(
            Misbehaviour::HugeListedSize,
            &["--connections", connections, "--retries", "1"],
            Duration::from_secs(60),
            MAX_KIB,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("f.txt"), "{stderr}");
        assert_nothing_landed(tmp.path());
        assert!(peak < MAX_KIB, "peak {peak} KiB");
    }
}

/// Break 4: a server that trickles a `DATA` body (1 byte every 2 s), or
/// stalls after half of it, fails the file within 3 minutes with default
/// flags (exit 1, nothing landed), instead of holding the client forever.
/// Both cases run at once (each takes about one progress window per
/// attempt).
#[test]
fn a_trickled_or_stalled_body_fails_the_file_in_bounded_time() {
    let cases = [
        Misbehaviour::TrickledData,
        Misbehaviour::StallAfterShortData,
    ];
    let runs: Vec<_> = cases
        .into_iter()
        .map(|how| {
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let (tmp, out, _) = run_bounded(how, &[], Duration::from_secs(180), MAX_KIB);
                (tmp, out, started.elapsed())
            })
        })
        .collect();
    for run in runs {
        let (tmp, out, took) = run.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("failed: f.txt"), "{stderr}");
        assert_nothing_landed(tmp.path());
        eprintln!("failed after {took:?}: {stderr}");
    }
}

/// Every file under `dir`, hidden ones too.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn assert_nothing_landed(tmp: &Path) {
    let data = tmp.join("w/data");
    let landed: Vec<String> = files_under(&data)
        .into_iter()
        .filter(|p| {
            !Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    assert!(landed.is_empty(), "unverified files landed: {landed:?}");
    let outside: Vec<String> = files_under(tmp)
        .into_iter()
        .filter(|p| !p.starts_with(&*data.to_string_lossy()))
        .filter(|p| !p.ends_with("input.txt") && !p.ends_with("client.log"))
        .collect();
    assert!(
        outside.is_empty(),
        "written outside the output folder: {outside:?}"
    );
}

#[test]
fn garbage_instead_of_a_list() {
    let (tmp, out) = run(Misbehaviour::GarbageList, "f.txt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot get the list"), "{stderr}");
    assert_nothing_landed(tmp.path());
}

#[test]
fn an_endless_line() {
    let (tmp, out) = run(Misbehaviour::EndlessLine, "f.txt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line longer than"), "{stderr}");
    assert_nothing_landed(tmp.path());
}

#[test]
fn a_length_that_lies() {
    let (tmp, out) = run(Misbehaviour::LyingLength, "f.txt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("f.txt") && stderr.contains("bytes were asked for"),
        "{stderr}"
    );
    assert_nothing_landed(tmp.path());
}

#[test]
fn a_digest_that_never_matches() {
    let (tmp, out) = run(Misbehaviour::WrongBytes, "f.txt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("f.txt") && stderr.contains("failed verification"),
        "{stderr}"
    );
    assert_nothing_landed(tmp.path());
}

#[test]
fn a_path_trick_in_the_list() {
    let (tmp, out) = run(Misbehaviour::PathTrickInList, "../evil.txt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot get the list") || stderr.contains("not a valid name"),
        "{stderr}"
    );
    assert_nothing_landed(tmp.path());
    assert!(!tmp.path().join("evil.txt").exists());
}

#[test]
fn pieces_that_arrive_before_their_digests_wait_for_them() {
    let (tmp, out) = run(Misbehaviour::SlowDigests, "big.bin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        hash_file(&tmp.path().join("w/data/big.bin")),
        blake3::hash(big()).to_hex().to_string()
    );
}

#[test]
fn late_digests_that_do_not_add_up() {
    let (tmp, out) = run(Misbehaviour::DigestsThatDoNotAddUp, "big.bin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("big.bin") && stderr.contains("do not add up to the listed digest"),
        "{stderr}"
    );
    assert_nothing_landed(tmp.path());
}
