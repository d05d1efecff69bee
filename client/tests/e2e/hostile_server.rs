//! The client against a broken or hostile server: garbage, an endless
//! line, a length that lies, a digest that never matches, a path trick in
//! the list. Each gets a clear error, bounded memory, nothing outside the
//! output folder and no unverified file under a final name.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;

use fastdl_protocol::digest::PieceTree;
use fastdl_protocol::listing::write_pieces;
use fastdl_protocol::Digest;
use fastdl_testkit::{client, hash_file, run_with_deadline, DEADLINE};

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
}

/// The multi-piece file of the slow-digest cases: 3 MiB and 5 bytes.
fn big() -> &'static [u8] {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BIG.get_or_init(|| fastdl_testkit::pattern(3 * (1 << 20) + 5, 42))
}

const CONTENT: &[u8] = b"the real bytes of the file";

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
            b"FASTDL 1\n".to_vec()
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
                Misbehaviour::SlowDigests | Misbehaviour::DigestsThatDoNotAddUp => {
                    format!("LIST 1\n{}\nEND\n", entry_line("big.bin", big())).into_bytes()
                }
                _ => format!("LIST 1\n{}\nEND\n", entry_line("f.txt", CONTENT)).into_bytes(),
            }
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
                Misbehaviour::SlowDigests | Misbehaviour::DigestsThatDoNotAddUp => {
                    let mut reply = format!("DATA {length}\n").into_bytes();
                    reply.extend_from_slice(&big()[offset..offset + length]);
                    reply
                }
                Misbehaviour::LyingLength => format!("DATA {}\n", length * 1000).into_bytes(),
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
        client(&fake_server(how), &work).args(["--once", "--retries", "2", "--retry-wait", "1"]),
        DEADLINE,
    );
    (tmp, out)
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
