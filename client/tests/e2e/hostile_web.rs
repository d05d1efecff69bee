//! The client against web servers that lie or stall, written for each
//! case (nginx keeps its promises, so these cannot be nginx): a server
//! that ignores `If-Range` while the file changes, one without validators
//! whose file changes between answers, one that stalls after its headers,
//! and a slow transfer the client holds back itself. Every file that
//! lands is one whole version, and every wait ends within its deadline.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastdl_testkit::{client, hash_file, pattern, run_with_deadline, DEADLINE};

const MIB: usize = 1 << 20;

/// A --server nobody listens on: URL-only runs must not need it.
const NO_SERVER: &str = "127.0.0.1:9";

/// One request as the fake server saw it.
struct Asked {
    /// Requests before this one, on every connection.
    seq: usize,
    /// The `Range: bytes=FIRST-LAST` asked for, if any.
    range: Option<(u64, u64)>,
}

/// Starts a web server on 127.0.0.1 that answers every request with
/// `answer` (which writes a whole response, or stalls); returns its base
/// URL. Connections are kept alive; the server lives until the test ends.
fn fake_web(answer: impl Fn(&Asked, &mut TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    let seq = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (answer, seq) = (Arc::clone(&answer), Arc::clone(&seq));
            std::thread::spawn(move || {
                while let Some(range) = read_request(&mut conn) {
                    let asked = Asked {
                        seq: seq.fetch_add(1, Ordering::SeqCst),
                        range,
                    };
                    answer(&asked, &mut conn);
                }
            });
        }
    });
    base
}

/// Reads one request's head; its `Range`, or `None` once the peer is gone.
fn read_request(conn: &mut TcpStream) -> Option<Option<(u64, u64)>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 || buf.len() > 64 << 10 {
            return None;
        }
        buf.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(&buf).ok()?;
    let range = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("range"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    Some(range)
}

/// Writes a `200` of all of `body`, or a `206` of `range` of it, with
/// `extra` header lines (each ending in CRLF).
fn send(conn: &mut TcpStream, body: &[u8], range: Option<(u64, u64)>, extra: &str) {
    let size = body.len() as u64;
    let head = match range {
        Some((first, last)) => {
            let last = last.min(size - 1);
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{size}\r\n\
                 Content-Length: {}\r\n{extra}\r\n",
                last - first + 1
            )
        }
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n{extra}\r\n"),
    };
    let part = match range {
        Some((first, last)) => &body[first as usize..=(last.min(size - 1)) as usize],
        None => body,
    };
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(part);
}

struct Run {
    _tmp: tempfile::TempDir,
    work: PathBuf,
}

impl Run {
    fn new(lines: &[u8]) -> Run {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().to_path_buf();
        std::fs::write(work.join("input.txt"), lines).unwrap();
        Run { _tmp: tmp, work }
    }

    fn once(&self, extra: &[&str]) -> Output {
        run_with_deadline(
            client(NO_SERVER, &self.work)
                .args(["--once", "--retry-wait", "1"])
                .args(extra),
            DEADLINE * 2,
        )
    }

    /// Every entry of the output folder, hidden ones too, with the hash
    /// of each regular file.
    fn landed(&self) -> Vec<(String, Option<String>)> {
        let mut found: Vec<_> = std::fs::read_dir(self.work.join("data"))
            .map(|d| {
                d.map(|e| {
                    let e = e.unwrap();
                    let hash = e
                        .file_type()
                        .unwrap()
                        .is_file()
                        .then(|| hash_file(&e.path()));
                    (e.file_name().to_string_lossy().into_owned(), hash)
                })
                .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A server that ignores `If-Range` while its file changes: the first
/// piece of version A, every other range of version B, each answer with
/// its own ETag. Without a digest to check, the client must see the
/// versions differ and never land the mix: the file fails, or lands as
/// one whole version.
#[test]
fn ranges_of_another_version_never_land_even_when_if_range_is_ignored() {
    let a = pattern(3 * MIB + 5, 1);
    let b = pattern(3 * MIB + 5, 2);
    let (ha, hb) = (blake3_hex(&a), blake3_hex(&b));
    let base = fake_web(move |asked, conn| match asked.range {
        Some((0, last)) => send(conn, &a, Some((0, last)), "ETag: \"A\"\r\n"),
        range => send(conn, &b, range, "ETag: \"B\"\r\n"),
    });
    let run = Run::new(format!("{base}/m.bin\n").as_bytes());
    let out = run.once(&["--retries", "2"]);
    for (name, hash) in run.landed() {
        if name == "m.bin" {
            let hash = hash.unwrap();
            assert!(hash == ha || hash == hb, "a mixed file landed");
        }
    }
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!run.work.join("data/m.bin").exists());

    // The same, the other answers carrying no validator at all: not known
    // to be of the first one's version, so not taken either.
    let a = pattern(3 * MIB + 5, 1);
    let b = pattern(3 * MIB + 5, 2);
    let base = fake_web(move |asked, conn| match asked.range {
        Some((0, last)) => send(conn, &a, Some((0, last)), "ETag: \"A\"\r\n"),
        range => send(conn, &b, range, ""),
    });
    let run = Run::new(format!("{base}/m.bin\n").as_bytes());
    let out = run.once(&["--retries", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!run.work.join("data/m.bin").exists());
}

/// Without any validator (no ETag, no Last-Modified), nothing tells two
/// versions apart, so a file of several pieces comes in one answer: here
/// the file changes after the first answer, and what lands is all of the
/// version the one whole answer brought.
#[test]
fn a_file_without_validators_comes_in_one_answer() {
    let a = pattern(3 * MIB + 5, 3);
    let b = pattern(3 * MIB + 5, 4);
    let hb = blake3_hex(&b);
    let base = fake_web(move |asked, conn| {
        let body = if asked.seq == 0 { &a } else { &b };
        send(conn, body, asked.range, "");
    });
    let run = Run::new(format!("{base}/n.bin\n").as_bytes());
    let out = run.once(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(run.landed(), [("n.bin".to_owned(), Some(hb))]);
}

/// A server that sends its headers and then nothing is cut after one
/// progress window (`--speed-time`), not after the time the whole body
/// would take at `--speed-limit` (1 MiB at 1 KiB/s: 17 minutes).
#[test]
fn a_stall_after_the_headers_is_cut_within_the_window() {
    let base = fake_web(|_, conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1048575/3145728\r\n\
              Content-Length: 1048576\r\nETag: \"S\"\r\n\r\nfirst bytes",
        );
        std::thread::sleep(Duration::from_secs(120));
    });
    let run = Run::new(format!("{base}/s.bin\n").as_bytes());
    let started = Instant::now();
    let out = run.once(&["--speed-time", "2", "--retries", "2"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Two tries of about 2 s each and a 1 s wait; far less than a minute.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(run.landed().iter().all(|(name, _)| name != "s.bin"));
}

/// The time the client holds a transfer back (`--limit-rate`) is not the
/// server's: a 2.5 MiB file at 300 KiB/s, with a floor above that rate,
/// is never cut, and all of it is held to the limit. Also: a line that is not UTF-8 is refused (exit 1) and
/// named, not skipped.
#[test]
fn limit_rate_pauses_do_not_count_against_the_server_and_bad_lines_are_refused() {
    let body = pattern(5 * MIB / 2, 5);
    let hash = blake3_hex(&body);
    let base = fake_web(move |asked, conn| send(conn, &body, asked.range, "ETag: \"L\"\r\n"));
    let mut lines = format!("{base}/l.bin\n").into_bytes();
    lines.extend_from_slice(b"caf\xe9.txt\n");
    let run = Run::new(&lines);
    let started = Instant::now();
    let out = run.once(&[
        "--limit-rate",
        "300K",
        "--speed-limit",
        "600K",
        "--speed-time",
        "2",
        "--retries",
        "1",
    ]);
    assert_eq!(
        run.landed(),
        [("l.bin".to_owned(), Some(hash))],
        "{}",
        stderr(&out)
    );
    // The limit holds for every byte, the first piece (the URL's probe)
    // included: 2.5 MiB at 300 KiB/s is 8.5 s (with a burst's leeway).
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(7), "took {took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("caf\u{fffd}.txt"), "{}", stderr(&out));
}
