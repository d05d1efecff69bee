//! A hostile battery against the real `fastdl-server`: random bytes, an
//! endless line, hundreds of idle and half-open connections, every path
//! trick in every request that takes a name, range tricks, junk on a
//! plan's data ports, and a reader that takes one byte a second, all at
//! once in background threads, while a normal `fastdl-client --once`
//! downloads a 30 MiB file again and again and must get it intact. Beside
//! it: files swapped for symlinks after listing, a request line trickled
//! one byte at a time, and a JOIN line trickled into a plan port.
//!
//! A secret file outside the published folder holds a unique marker; every
//! byte the attacks read, and every byte the client receives (through a
//! sniffing proxy), is scanned for it: it must never appear.
//!
//! No fixed sleep is used to synchronise: conditions are awaited with a
//! deadline. The only sleeps pace the trickling writers.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastdl_testkit::{client, hash_file, run_with_deadline, wait_until, write_file, Server};

/// Content marker of the secret file outside the published folder. It is
/// never part of a request, so it can only come back as file content.
const MARKER: &[u8] = b"c0ffee-OUTSIDE-SECRET-5e1d-never-to-be-served";

const BIG: &str = "big.bin";
const BIG_LEN: usize = 30 << 20;
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_CONNECTIONS: usize = 500;
/// How long a raw connection waits for a reply before the test fails.
const REPLY_DEADLINE: Duration = Duration::from_secs(15);

const SERVER_FLAGS: [&str; 9] = [
    "--plaintext",
    "--idle-timeout",
    "2",
    "--write-timeout",
    "2",
    "--max-connections",
    "600",
    "--max-per-client",
    "600",
];

// ---------------------------------------------------------------------------
// Sniffing: every byte read from the server is scanned for the marker.

#[derive(Default)]
struct Sniff {
    bytes: AtomicU64,
    leaks: Mutex<Vec<String>>,
}

impl Sniff {
    /// Scans `new`, continuing `tail` (the end of what came before on the
    /// same stream), so that a marker cut across reads is found too.
    fn scan(&self, who: &str, tail: &mut Vec<u8>, new: &[u8]) {
        self.bytes.fetch_add(new.len() as u64, Ordering::Relaxed);
        tail.extend_from_slice(new);
        if find(tail, MARKER).is_some() {
            self.leaks.lock().unwrap().push(who.to_owned());
        }
        let keep = MARKER.len() - 1;
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }

    fn assert_clean(&self) {
        let leaks = self.leaks.lock().unwrap();
        assert!(
            leaks.is_empty(),
            "bytes of the outside secret were served to: {leaks:?}"
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A raw connection whose every received byte is sniffed.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tail: Vec<u8>,
    sniff: Arc<Sniff>,
    who: String,
    deadline: Duration,
}

impl Conn {
    fn open(addr: SocketAddr, sniff: &Arc<Sniff>, who: &str) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{who}: connect: {e}"));
        stream.set_read_timeout(Some(REPLY_DEADLINE)).unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            tail: Vec::new(),
            sniff: Arc::clone(sniff),
            who: who.to_owned(),
            deadline: REPLY_DEADLINE,
        }
    }

    /// How long a read may wait before the test fails.
    fn set_deadline(&mut self, deadline: Duration) {
        self.writer.set_read_timeout(Some(deadline)).unwrap();
        self.deadline = deadline;
    }

    /// Opens a connection and does the version handshake.
    fn hello(addr: SocketAddr, sniff: &Arc<Sniff>, who: &str) -> Conn {
        let mut conn = Conn::open(addr, sniff, who);
        conn.send(b"FASTDL 2\n").unwrap();
        assert_eq!(conn.line().as_deref(), Some("FASTDL 2"), "{who}: handshake");
        conn
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    fn fail_on_timeout(&self, e: &std::io::Error) {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            panic!(
                "{}: no reply from the server within {:?}",
                self.who, self.deadline
            );
        }
    }

    /// One reply line without its newline; `None` if the server closed (or
    /// reset) the connection before a whole line came.
    fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let result = (&mut self.reader)
            .take(64 << 10)
            .read_until(b'\n', &mut buf);
        self.sniff.scan(&self.who, &mut self.tail, &buf);
        if let Err(e) = &result {
            self.fail_on_timeout(e);
        }
        if buf.last() != Some(&b'\n') {
            return None;
        }
        buf.pop();
        Some(
            String::from_utf8(buf).unwrap_or_else(|e| panic!("{}: reply not UTF-8: {e}", self.who)),
        )
    }

    /// Exactly `n` bytes (panics if the connection ends first).
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        let result = self.reader.read_exact(&mut buf);
        if let Err(e) = &result {
            self.fail_on_timeout(e);
            panic!("{}: connection ended inside {n} data bytes: {e}", self.who);
        }
        self.sniff.scan(&self.who, &mut self.tail, &buf);
        buf
    }

    /// Everything until the server closes (EOF or reset).
    fn rest(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 64 << 10];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => {
                    self.sniff.scan(&self.who, &mut self.tail, &buf[..n]);
                    all.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_on_timeout(&e);
                    return all;
                }
            }
        }
    }

    /// Reads a whole `LIST` reply; returns the entry lines.
    fn list(&mut self) -> Vec<String> {
        self.send(b"LIST\n").unwrap();
        let header = self.line().expect("LIST header");
        let count: usize = header
            .strip_prefix("LIST ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: LIST answered {header:?}", self.who));
        let entries: Vec<String> = (0..count)
            .map(|_| self.line().expect("list entry"))
            .collect();
        assert_eq!(self.line().as_deref(), Some("END"), "{}", self.who);
        entries
    }
}

/// A TCP proxy that forwards to `target` and sniffs every byte the server
/// sends back; the normal client downloads through it.
fn sniffing_proxy(target: SocketAddr, sniff: &Arc<Sniff>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sniff = Arc::clone(sniff);
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(c2, s2, None));
            let sniff = Arc::clone(&sniff);
            std::thread::spawn(move || pipe(server, client, Some((sniff, format!("client #{n}")))));
        }
    });
    addr
}

fn pipe(mut from: TcpStream, mut to: TcpStream, sniff: Option<(Arc<Sniff>, String)>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut tail = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((sniff, who)) = &sniff {
            sniff.scan(who, &mut tail, &buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

// ---------------------------------------------------------------------------
// The scene: published files, an outside secret, symlinks leading out.

struct Scene {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    res: PathBuf,
    big_digest: String,
}

fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let res = root.join("res");
    let outside = root.join("outside");
    let big_digest = write_file(&res.join(BIG), BIG_LEN, 42);
    fs::write(res.join("small.txt"), b"small and public\n").unwrap();
    write_file(&res.join("sub/inner.bin"), 5000, 3);
    // The secret: the marker many times over, outside the folder.
    fs::create_dir_all(&outside).unwrap();
    let mut secret = Vec::new();
    while secret.len() < 64 << 10 {
        secret.extend_from_slice(MARKER);
        secret.push(b'\n');
    }
    fs::write(outside.join("secret.txt"), &secret).unwrap();
    // Symlinks leading out: to the file, and to its folder.
    std::os::unix::fs::symlink(outside.join("secret.txt"), res.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, res.join("linkdir")).unwrap();
    Scene {
        _tmp: tmp,
        root,
        res,
        big_digest,
    }
}

fn start_server(scene: &Scene, extra: &[&str]) -> Server {
    let mut flags: Vec<&str> = SERVER_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    Server::start(&scene.res, &scene.root.join("srv"), &flags)
}

fn is_refusal(reply: &str) -> bool {
    reply.starts_with("WRONG_INPUT") || reply.starts_with("ERROR ")
}

// ---------------------------------------------------------------------------
// The attacks. Each returns a one-line summary of what it got.

/// Random bytes, raw and after a handshake; only refusals may come back.
fn random_bytes(addr: SocketAddr, sniff: Arc<Sniff>) -> String {
    let mut replies = 0;
    let mut closed = 0;
    for seed in 0..8u64 {
        let who = format!("random bytes #{seed}");
        let mut conn = if seed % 2 == 0 {
            Conn::open(addr, &sniff, &who)
        } else {
            Conn::hello(addr, &sniff, &who)
        };
        let mut bytes = fastdl_testkit::pattern(64 << 10, 1000 + seed);
        if seed >= 4 {
            // Printable junk with short lines: many requests, all bad.
            for b in &mut bytes {
                *b = if *b % 23 == 0 { b'\n' } else { b' ' + *b % 95 };
            }
        }
        let mut writer = conn.writer.try_clone().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
            let _ = writer.shutdown(Shutdown::Write);
        });
        while let Some(reply) = conn.line() {
            assert!(is_refusal(&reply), "{who}: got {reply:?}");
            replies += 1;
        }
        closed += 1;
        feeder.join().unwrap();
    }
    format!(
        "8 connections: {replies} reply lines, all WRONG_INPUT/ERROR; \
         all {closed} closed by the server"
    )
}

/// A 10 MB line with no newline, before and after the handshake.
fn endless_line(addr: SocketAddr, sniff: Arc<Sniff>) -> String {
    let mut sent = Vec::new();
    for greet in [false, true] {
        let who = format!("10 MB line (handshake first: {greet})");
        let mut conn = if greet {
            Conn::hello(addr, &sniff, &who)
        } else {
            Conn::open(addr, &sniff, &who)
        };
        let mut writer = conn.writer.try_clone().unwrap();
        let feeder = std::thread::spawn(move || {
            let chunk = vec![b'A'; 1 << 20];
            let mut written = 0usize;
            for _ in 0..10 {
                match writer.write_all(&chunk) {
                    Ok(()) => written += chunk.len(),
                    Err(_) => break,
                }
            }
            written
        });
        let reply = conn.line();
        assert!(
            reply
                .as_deref()
                .is_some_and(|r| r.starts_with("ERROR TOO_LONG ")),
            "{who}: got {reply:?}"
        );
        let after = conn.rest();
        assert!(
            after.is_empty(),
            "{who}: more after TOO_LONG: {:?}",
            String::from_utf8_lossy(&after)
        );
        sent.push(feeder.join().unwrap());
    }
    // The limit is exact and counts the text: 4096 bytes and a line
    // ending is a request, one more byte is not.
    let who = "line at the 4096-byte limit";
    let mut conn = Conn::hello(addr, &sniff, who);
    let fill = |text: usize, ending: &str| {
        format!("GET 0 1 {}{ending}", "n".repeat(text - "GET 0 1 ".len()))
    };
    for ending in ["\n", "\r\n"] {
        conn.send(fill(4096, ending).as_bytes()).unwrap();
        let reply = conn.line().unwrap();
        assert!(reply.starts_with("WRONG_INPUT"), "{who}: {reply:?}");
    }
    assert_eq!(
        conn.list().len(),
        3,
        "{who}: connection unusable after a full-length line"
    );
    conn.send(fill(4097, "\n").as_bytes()).unwrap();
    let reply = conn.line().unwrap();
    assert!(reply.starts_with("ERROR TOO_LONG "), "{who}: {reply:?}");
    assert!(conn.rest().is_empty());
    format!(
        "2 connections: one `ERROR TOO_LONG` line each, then closed (the sender wrote {sent:?} \
         bytes of 10 MiB before the reset); a line of 4096 bytes (LF or CRLF after it) gets \
         WRONG_INPUT and the connection goes on, 4097 gets TOO_LONG and the close"
    )
}

/// Hundreds of idle connections: the server keeps serving, then times
/// each of them out with one `ERROR TIMEOUT` line.
fn idle_connections(addr: SocketAddr, sniff: Arc<Sniff>) -> String {
    let opened = Instant::now();
    let mut idle: Vec<(Conn, Instant)> = (0..IDLE_CONNECTIONS)
        .map(|i| {
            let who = format!("idle #{i}");
            // Every other one greets first, which also paces the connects
            // to the server's accept loop.
            let conn = if i % 2 == 0 {
                Conn::hello(addr, &sniff, &who)
            } else {
                Conn::open(addr, &sniff, &who)
            };
            (conn, Instant::now())
        })
        .collect();
    let all_open = opened.elapsed();

    // Still served while they are all held.
    let mut fresh = Conn::hello(addr, &sniff, "fresh connection beside the idle ones");
    assert_eq!(fresh.list().len(), 3);
    fresh.send(b"GET 0 5 small.txt\n").unwrap();
    assert_eq!(fresh.line().as_deref(), Some("DATA 5"));
    assert_eq!(fresh.bytes(5), b"small");
    // ...and all of them were still open (nothing received, not closed)
    // when that check was done.
    let mut still_open = 0;
    for (conn, _) in &idle {
        conn.writer.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match conn.writer.peek(&mut byte) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => still_open += 1,
            other => panic!(
                "{}: closed or answered before the idle timeout ({other:?}) \
                 after {:?}; opening all took {all_open:?}",
                conn.who,
                opened.elapsed()
            ),
        }
        conn.writer.set_nonblocking(false).unwrap();
    }
    assert_eq!(still_open, IDLE_CONNECTIONS);
    let served_after = opened.elapsed();

    // Then each gets one ERROR TIMEOUT line, no sooner than the timeout, and EOF.
    let mut shortest = Duration::MAX;
    for (conn, since) in &mut idle {
        let reply = conn.line();
        let waited = since.elapsed();
        assert!(
            reply
                .as_deref()
                .is_some_and(|r| r.starts_with("ERROR TIMEOUT ")),
            "{}: {reply:?}",
            conn.who
        );
        assert!(conn.rest().is_empty(), "{}", conn.who);
        shortest = shortest.min(waited);
    }
    assert!(
        shortest + Duration::from_millis(300) >= IDLE_TIMEOUT,
        "an idle connection was timed out after only {shortest:?}"
    );
    format!(
        "{IDLE_CONNECTIONS} held open (in {all_open:?}); a fresh connection got LIST and DATA \
         while all were open ({served_after:?}); each then got one `ERROR TIMEOUT ...` line + EOF \
         (earliest {shortest:?} after its last request)"
    )
}

/// Connections that close their sending side: the server answers what was
/// asked in full, then closes, without waiting for the idle timeout.
fn half_open(addr: SocketAddr, sniff: Arc<Sniff>, big: Vec<u8>) -> String {
    // Many at once that send nothing at all.
    let conns: Vec<Conn> = (0..40)
        .map(|i| {
            let conn = Conn::open(addr, &sniff, &format!("half-open #{i}"));
            conn.writer.shutdown(Shutdown::Write).unwrap();
            conn
        })
        .collect();
    for mut conn in conns {
        let started = Instant::now();
        let got = conn.rest();
        assert!(
            got.is_empty(),
            "{}: {:?}",
            conn.who,
            String::from_utf8_lossy(&got)
        );
        assert!(
            started.elapsed() < REPLY_DEADLINE,
            "{}: not closed",
            conn.who
        );
    }

    // Requests, then the write side closed: all answered, then EOF.
    let who = "half-open after requests";
    let mut conn = Conn::open(addr, &sniff, who);
    conn.send(b"FASTDL 2\nLIST\nGET 0 1048576 big.bin\nPIECES small.txt\n")
        .unwrap();
    conn.writer.shutdown(Shutdown::Write).unwrap();
    assert_eq!(conn.line().as_deref(), Some("FASTDL 2"));
    assert_eq!(conn.line().as_deref(), Some("LIST 3"));
    for _ in 0..3 {
        conn.line().unwrap();
    }
    assert_eq!(conn.line().as_deref(), Some("END"));
    assert_eq!(conn.line().as_deref(), Some("DATA 1048576"));
    assert!(conn.bytes(1 << 20) == big[..1 << 20], "{who}: wrong data");
    assert_eq!(conn.line().as_deref(), Some("PIECES 17 1048576 1"));
    conn.line().unwrap();
    assert_eq!(conn.line().as_deref(), Some("END"));
    assert!(conn.rest().is_empty());

    // Half a request, then the write side closed: nothing, EOF.
    let who = "half-open inside a request";
    let mut conn = Conn::hello(addr, &sniff, who);
    conn.send(b"GET 0 5 small").unwrap();
    conn.writer.shutdown(Shutdown::Write).unwrap();
    let got = conn.rest();
    assert!(got.is_empty(), "{who}: {:?}", String::from_utf8_lossy(&got));
    "40 silent half-open connections closed at once with no bytes; requests before the \
     shutdown answered in full (1 MiB of correct data) then EOF; a half request gets EOF"
        .into()
}

/// Every path trick in every request that takes a name (GET, PIECES,
/// PLAN): a refusal each time, never data, digests or a plan.
fn path_tricks(addr: SocketAddr, sniff: Arc<Sniff>) -> String {
    let mut names: Vec<Vec<u8>> = [
        "../x",
        "../outside/secret.txt",
        "../../../../../../etc/hostname",
        "/etc/hostname",
        "/etc/passwd",
        "/proc/self/environ",
        "a/../../x",
        "sub/../../outside/secret.txt",
        "sub/../small.txt",
        "..\\x",
        "..\\outside\\secret.txt",
        "sub\\inner.bin",
        "a//b",
        "sub//inner.bin",
        "./small.txt",
        "sub/./inner.bin",
        "small.txt/",
        "small.txt/.",
        ".",
        "..",
        " small.txt",
        "small.txt ",
        "link.txt",
        "linkdir/secret.txt",
        "linkdir/../small.txt",
        "%2e%2e/outside/secret.txt",
        "..%2foutside%2fsecret.txt",
        "\u{ff0e}\u{ff0e}/outside/secret.txt",
        "\u{2024}\u{2024}/outside/secret.txt",
        "~/.bashrc",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    names.extend([
        b"small.txt\0".to_vec(),
        b"sm\0all.txt".to_vec(),
        b"\0".to_vec(),
        b"sm\rall.txt".to_vec(),
        b"\rsmall.txt".to_vec(),
        b"small.txt\t".to_vec(),
        b"sub\x1binner.bin".to_vec(),
        b"small.txt\x7f".to_vec(),
        b"\xc0\xae\xc0\xae/outside/secret.txt".to_vec(), // overlong UTF-8 dots
        b"\xff\xfe".to_vec(),
        "a".repeat(1025).into_bytes(),
        "a".repeat(256).into_bytes(),
        format!("sub/{}", "b".repeat(5000)).into_bytes(),
        "../".repeat(1700).into_bytes(),
    ]);
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for (i, name) in names.iter().enumerate() {
        let who = format!(
            "path trick {:?}",
            String::from_utf8_lossy(&name[..name.len().min(40)])
        );
        let mut conn = Conn::hello(addr, &sniff, &who);
        for verb in [&b"GET 0 1 "[..], &b"PIECES "[..], &b"PLAN "[..]] {
            let mut request = verb.to_vec();
            request.extend_from_slice(name);
            request.push(b'\n');
            if conn.send(&request).is_err() {
                break;
            }
            let Some(reply) = conn.line() else {
                break;
            };
            assert!(is_refusal(&reply), "{who} ({i}): got {reply:?}");
            let kind: String = reply.chars().take_while(|c| *c != ':').take(40).collect();
            *tally.entry(kind).or_default() += 1;
            if reply.starts_with("ERROR TOO_LONG") {
                assert!(conn.rest().is_empty());
                break;
            }
        }
    }
    // The real names still work on a fresh connection.
    let mut conn = Conn::hello(addr, &sniff, "after the path tricks");
    conn.send(b"GET 0 5 sub/inner.bin\n").unwrap();
    assert_eq!(conn.line().as_deref(), Some("DATA 5"));
    conn.bytes(5);
    format!(
        "{} names x GET/PIECES/PLAN: never DATA/PIECES/ACCEPTED; replies: {tally:?}",
        names.len()
    )
}

/// Numbers at and past every edge in GET.
fn range_tricks(addr: SocketAddr, sniff: Arc<Sniff>) -> String {
    let size = BIG_LEN;
    let refused = [
        "GET 18446744073709551615 1 big.bin".to_owned(),
        "GET 1 18446744073709551615 big.bin".into(),
        "GET 18446744073709551615 18446744073709551615 big.bin".into(),
        "GET 18446744073709551616 1 big.bin".into(),
        "GET 99999999999999999999999 1 big.bin".into(),
        format!("GET {size} 1 big.bin"),
        format!("GET 0 {} big.bin", size + 1),
        format!("GET {} 2 big.bin", size - 1),
        "GET -1 1 big.bin".into(),
        "GET +1 1 big.bin".into(),
        "GET 0x10 1 big.bin".into(),
        "GET 1e3 1 big.bin".into(),
        "GET \u{ff10} 1 big.bin".into(),
        "GET  0 1 big.bin".into(),
        "GET 0 1  big.bin".into(),
        "GET 0 1".into(),
        "GET".into(),
        "PIECES".into(),
        "PIECES ".into(),
        "LIST now".into(),
        "FASTDL 2 2".into(),
        "DATA 5".into(),
        "JOIN 0123456789abcdef0123456789abcdef".into(),
        "JOIN ../x".into(),
    ];
    let mut conn = Conn::hello(addr, &sniff, "range tricks");
    for request in &refused {
        conn.send(format!("{request}\n").as_bytes()).unwrap();
        let reply = conn.line().unwrap();
        assert!(reply.starts_with("WRONG_INPUT"), "{request:?}: {reply:?}");
    }
    // The edges that are allowed.
    conn.send(format!("GET {size} 0 big.bin\nGET {} 1 big.bin\n", size - 1).as_bytes())
        .unwrap();
    assert_eq!(conn.line().as_deref(), Some("DATA 0"));
    assert_eq!(conn.line().as_deref(), Some("DATA 1"));
    conn.bytes(1);
    // Another handshake for a version nobody speaks closes the connection.
    conn.send(b"FASTDL 4294967295\n").unwrap();
    let reply = conn.line().unwrap();
    assert_eq!(
        reply, "FASTDL 2",
        "a repeated handshake is answered with ours"
    );
    format!(
        "{} malformed or out-of-file ranges (u64 overflow, offset+length wrap, sign, hex, \
         fullwidth digits, double spaces): WRONG_INPUT each; `GET size 0` -> DATA 0",
        refused.len()
    )
}

/// A plan's `ACCEPTED` line: (chunks, ports, token).
fn accepted(reply: &str) -> (u64, Vec<u16>, String) {
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(fields.first(), Some(&"ACCEPTED"), "{reply:?}");
    let n: usize = fields[1].parse().unwrap();
    assert_eq!(fields.len(), n + 4, "{reply:?}");
    let ports = fields[3..3 + n]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    (fields[2].parse().unwrap(), ports, fields[3 + n].to_owned())
}

/// Joins stream `index` of a plan and checks every chunk it carries
/// against the file; returns the chunk ordinals received.
fn join_stream(
    addr: SocketAddr,
    sniff: &Arc<Sniff>,
    port: u16,
    token: &str,
    index: usize,
    big: &[u8],
) -> Vec<u64> {
    let who = format!("plan stream {index}");
    let mut conn = Conn::open(SocketAddr::new(addr.ip(), port), sniff, &who);
    conn.send(format!("JOIN {token}\n").as_bytes()).unwrap();
    let header = conn
        .line()
        .unwrap_or_else(|| panic!("{who}: no STREAM line"));
    let count: u64 = header
        .strip_prefix(&format!("STREAM {index} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{who}: {header:?}"));
    let mut got = Vec::new();
    for _ in 0..count {
        let frame = conn.bytes(12);
        let chunk = u64::from_be_bytes(frame[..8].try_into().unwrap());
        let length = u32::from_be_bytes(frame[8..].try_into().unwrap()) as usize;
        let offset = chunk as usize * (1 << 20);
        assert!(offset + length <= big.len(), "{who}: chunk {chunk}");
        assert!(
            conn.bytes(length) == big[offset..offset + length],
            "{who}: chunk {chunk} has wrong bytes"
        );
        got.push(chunk);
    }
    assert!(conn.rest().is_empty(), "{who}: bytes after the last chunk");
    got
}

/// Garbage on a plan's data ports: each bad joiner gets one refusal and
/// is closed; the plan still delivers the whole file to the right joiners.
fn plan_ports(addr: SocketAddr, sniff: Arc<Sniff>, big: Vec<u8>) -> String {
    let mut control = Conn::hello(addr, &sniff, "plan control");
    control.send(b"PLAN big.bin\n").unwrap();
    let reply = control.line().unwrap();
    let (chunks, ports, token) = accepted(&reply);
    assert_eq!(chunks, BIG_LEN.div_ceil(1 << 20) as u64);
    let mut wrong = token.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let junk: Vec<Vec<u8>> = vec![
        format!("JOIN {wrong}\n").into_bytes(),
        format!("JOIN {token} \n").into_bytes(),
        format!("JOIN {token}0\n").into_bytes(),
        format!("JOIN ../{token}\n").into_bytes(),
        format!("GET 0 10 {BIG}\n").into_bytes(),
        format!("PLAN {BIG}\n").into_bytes(),
        vec![b'J'; 10_000],
        fastdl_testkit::pattern(4096, 77),
        Vec::new(), // half-open: nothing, then EOF
    ];
    for (i, bytes) in junk.iter().enumerate() {
        for &port in &ports {
            let who = format!("plan port junk #{i}");
            let mut conn = Conn::open(SocketAddr::new(addr.ip(), port), &sniff, &who);
            let _ = conn.send(bytes);
            let _ = conn.writer.shutdown(Shutdown::Write);
            let reply = conn.line();
            assert_eq!(
                reply.as_deref(),
                Some("WRONG_INPUT bad plan token"),
                "{who} on port {port}"
            );
            assert!(conn.rest().is_empty(), "{who}");
        }
    }
    // The real joiners still get every chunk, each from the file.
    let mut all: Vec<u64> = std::thread::scope(|scope| {
        let joins: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(index, &port)| {
                let (sniff, token, big) = (&sniff, &token, &big);
                scope.spawn(move || join_stream(addr, sniff, port, token, index, big))
            })
            .collect();
        joins.into_iter().flat_map(|j| j.join().unwrap()).collect()
    });
    all.sort_unstable();
    assert_eq!(all, (0..chunks).collect::<Vec<_>>());
    // A joined port is closed: no second stream.
    for &port in &ports {
        if let Ok(stream) = TcpStream::connect(SocketAddr::new(addr.ip(), port)) {
            let mut conn = Conn {
                reader: BufReader::new(stream.try_clone().unwrap()),
                writer: stream,
                tail: Vec::new(),
                sniff: Arc::clone(&sniff),
                who: "second join".into(),
                deadline: REPLY_DEADLINE,
            };
            let _ = conn.send(format!("JOIN {token}\n").as_bytes());
            let got = conn.rest();
            assert!(got.is_empty(), "a joined port served again: {got:?}");
        }
    }
    format!(
        "{} kinds of junk x {} ports (wrong/extended/path tokens, other requests, 10 KB line, \
         random bytes, half-open): `WRONG_INPUT bad plan token` + close each; then the right \
         JOINs got all {chunks} chunks intact; joined ports refuse a second connection",
        junk.len(),
        ports.len()
    )
}

/// A reader taking one byte a second of a 30 MiB range: the server cuts it
/// off after --write-timeout, having sent only what fits in the buffers.
fn slow_reader(addr: SocketAddr, sniff: Arc<Sniff>, server: Arc<Server>, big: Vec<u8>) -> String {
    let who = "slow reader";
    let mut conn = Conn::hello(addr, &sniff, who);
    let peer = conn.writer.local_addr().unwrap();
    conn.send(format!("GET 0 {BIG_LEN} {BIG}\n").as_bytes())
        .unwrap();
    assert_eq!(
        conn.line().as_deref(),
        Some(format!("DATA {BIG_LEN}").as_str())
    );
    let cut = format!("{peer}: {BIG}: transfer of 0+{BIG_LEN} cut");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut last_read: Option<Instant> = None;
    // One byte a second until the server says it gave up on us.
    wait_until(
        Duration::from_secs(20),
        "the slow reader to be cut off",
        || {
            if last_read.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                got.extend(conn.bytes(1));
                last_read = Some(Instant::now());
            }
            server.log_text().contains(&cut)
        },
    );
    let cut_after = started.elapsed();
    // What was already in the socket buffers still arrives, then EOF.
    got.extend(conn.rest());
    assert!(
        got.len() < BIG_LEN,
        "{who}: the whole range arrived ({} bytes)",
        got.len()
    );
    assert!(got == big[..got.len()], "{who}: wrong bytes");
    format!(
        "1 byte/s of a {BIG_LEN}-byte range: cut off after {cut_after:?} \
         (server log: \"transfer ... cut: peer stopped reading\"); {} bytes (buffers) then EOF",
        got.len()
    )
}

/// The normal client, through the sniffing proxy: must get the file intact.
fn download(proxy: SocketAddr, work: &Path, digest: &str) -> Duration {
    let started = Instant::now();
    fs::create_dir_all(work).unwrap();
    fs::write(work.join("input.txt"), format!("{BIG}\n")).unwrap();
    // Rate-limited so that the downloads span the attacks.
    let output = run_with_deadline(
        client(&proxy.to_string(), work).args(["--once", "--plaintext", "--limit-rate", "12M"]),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "client failed ({}):\n{}\n{}\nlog:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        fs::read_to_string(work.join("client.log")).unwrap_or_default()
    );
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(!listed.contains("link"), "symlink out listed:\n{listed}");
    assert_eq!(hash_file(&work.join("data").join(BIG)), digest);
    started.elapsed()
}

fn spawn<F>(name: &'static str, f: F) -> (&'static str, JoinHandle<String>)
where
    F: FnOnce() -> String + Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap();
    (name, handle)
}

/// Room for the idle connections (two descriptors each here, one in the
/// server, which inherits the limit) where the soft limit is the usual 1024.
#[test]
fn hostile_battery_while_a_client_downloads() {
    fastdl_testkit::raise_fd_limit(8192);
    let scene = scene();
    let server = Arc::new(start_server(&scene, &[]));
    let addr = server.addr;
    let sniff = Arc::new(Sniff::default());
    let big = fs::read(scene.res.join(BIG)).unwrap();

    // Only the real files are listed: the symlinks leading out are not.
    let mut conn = Conn::hello(addr, &sniff, "first look");
    let names: Vec<String> = conn
        .list()
        .iter()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["1) big.bin", "2) small.txt", "3) sub/inner.bin"]);
    drop(conn);

    let attacks = vec![
        spawn("random bytes", {
            let sniff = Arc::clone(&sniff);
            move || random_bytes(addr, sniff)
        }),
        spawn("10 MB line", {
            let sniff = Arc::clone(&sniff);
            move || endless_line(addr, sniff)
        }),
        spawn("500 idle connections", {
            let sniff = Arc::clone(&sniff);
            move || idle_connections(addr, sniff)
        }),
        spawn("half-open connections", {
            let (sniff, big) = (Arc::clone(&sniff), big.clone());
            move || half_open(addr, sniff, big)
        }),
        spawn("path tricks", {
            let sniff = Arc::clone(&sniff);
            move || path_tricks(addr, sniff)
        }),
        spawn("range tricks", {
            let sniff = Arc::clone(&sniff);
            move || range_tricks(addr, sniff)
        }),
        spawn("plan ports", {
            let (sniff, big) = (Arc::clone(&sniff), big.clone());
            move || plan_ports(addr, sniff, big)
        }),
        spawn("slow reader", {
            let (sniff, server, big) = (Arc::clone(&sniff), Arc::clone(&server), big.clone());
            move || slow_reader(addr, sniff, server, big)
        }),
    ];

    // Meanwhile the normal client downloads, again and again, until the
    // attacks are over (at least twice, at most 8 times, ~2.5 s each).
    let proxy = sniffing_proxy(addr, &sniff);
    let mut downloads = Vec::new();
    loop {
        let work = scene.root.join(format!("client-{}", downloads.len()));
        downloads.push(download(proxy, &work, &scene.big_digest));
        let done = attacks.iter().all(|(_, h)| h.is_finished());
        if downloads.len() >= 8 || (done && downloads.len() >= 2) {
            break;
        }
    }

    let mut failures = Vec::new();
    for (name, handle) in attacks {
        match handle.join() {
            Ok(summary) => eprintln!("{name}: {summary}"),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    eprintln!(
        "normal client: {} downloads of the 30 MiB file, all intact ({downloads:?})",
        downloads.len()
    );
    assert!(
        failures.is_empty(),
        "attacks failed:\n{}",
        failures.join("\n")
    );

    // The server is still up and serving.
    let mut conn = Conn::hello(addr, &sniff, "last look");
    assert_eq!(conn.list().len(), 3);
    conn.send(b"QUIT\n").unwrap();
    assert_eq!(conn.line().as_deref(), Some("BYE"));

    sniff.assert_clean();
    let sniffed = sniff.bytes.load(Ordering::Relaxed);
    assert!(
        sniffed > (downloads.len() * BIG_LEN) as u64,
        "only {sniffed} bytes sniffed"
    );
    eprintln!("sniffed {sniffed} bytes from the server: the outside marker never appeared");
    let log = server.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// A file swapped for a symlink (or its folder for a symlinked folder)
/// after it was listed is refused, never served.
#[test]
fn files_swapped_for_symlinks_after_listing_are_not_served() {
    let scene = scene();
    let res = &scene.res;
    let outside = scene.root.join("outside");
    let secret_len = fs::metadata(outside.join("secret.txt")).unwrap().len() as usize;
    // Decoys of the secret's size, listed before the swap.
    write_file(&res.join("swap.txt"), secret_len, 5);
    write_file(&res.join("swapdir/secret.txt"), secret_len, 6);
    // Long rescan period: the swap is seen at request time, not by a scan
    // (a scan that comes first only makes the names unlisted: fine too).
    let server = start_server(&scene, &["--rescan", "3600"]);
    let sniff = Arc::new(Sniff::default());
    let mut conn = Conn::hello(server.addr, &sniff, "swap");
    assert_eq!(conn.list().len(), 5);

    fs::remove_file(res.join("swap.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), res.join("swap.txt")).unwrap();
    fs::rename(res.join("swapdir"), scene.root.join("swapdir.moved")).unwrap();
    std::os::unix::fs::symlink(&outside, res.join("swapdir")).unwrap();

    for name in ["swap.txt", "swapdir/secret.txt"] {
        for attempt in 0..3 {
            conn.send(format!("GET 0 {secret_len} {name}\n").as_bytes())
                .unwrap();
            let reply = conn.line().unwrap();
            assert!(
                reply.starts_with("WRONG_INPUT") || reply.starts_with("ERROR CHANGED"),
                "{name} (attempt {attempt}): {reply:?}"
            );
        }
    }
    sniff.assert_clean();
}

/// A client that trickles a request one byte at a time never completes
/// a request, so it must be timed out too, not held for as long as it
/// keeps trickling: `--request-timeout` (default 10 s) bounds a begun
/// request line, whatever the idle timeout.
#[test]
fn a_trickled_request_is_timed_out() {
    let scene = scene();
    let server = start_server(&scene, &[]);
    let sniff = Arc::new(Sniff::default());
    let mut conn = Conn::hello(server.addr, &sniff, "slowloris");
    conn.writer
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let started = Instant::now();
    let limit = Duration::from_secs(14);
    let mut writer = conn.writer.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        // One byte every 500 ms (well inside the idle timeout) for up to
        // 20 s; never a newline.
        for byte in b"GET 0 1 small.txt".iter().cycle().take(40) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let reply = conn.line();
    let waited = started.elapsed();
    assert!(
        reply
            .as_deref()
            .is_some_and(|r| r.starts_with("ERROR TIMEOUT ")),
        "{reply:?}"
    );
    assert!(
        waited <= limit,
        "a trickled request held the connection for {waited:?} (idle timeout {IDLE_TIMEOUT:?})"
    );
    trickle.join().unwrap();
}

/// Length of the accept queue of the listening socket on 127.0.0.1:`port`
/// (from /proc/net/tcp), `None` if no such listener.
fn accept_queue(port: u16) -> Option<u32> {
    let table = fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        u32::from_str_radix(rx, 16).ok()
    })
}

/// A joiner that trickles its `JOIN` line into one plan port must not
/// hold up the plan's other ports: the right joiner of another stream
/// gets its `STREAM` line at once.
#[test]
fn a_trickling_joiner_does_not_stall_the_other_streams_of_a_plan() {
    let scene = scene();
    let server = start_server(&scene, &[]);
    let sniff = Arc::new(Sniff::default());
    let mut control = Conn::hello(server.addr, &sniff, "plan control");
    control.send(b"PLAN big.bin\n").unwrap();
    let (_, ports, token) = accepted(&control.line().unwrap());
    assert!(ports.len() >= 2, "a 30 MiB file gets at least 2 streams");
    let ip = server.addr.ip();

    // Port 0: one byte a second, each inside the 2 s JOIN line timeout.
    let mut trickler = TcpStream::connect(SocketAddr::new(ip, ports[0])).unwrap();
    trickler.write_all(b"J").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the plan to accept the trickler",
        || accept_queue(ports[0]) == Some(0),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let started = Instant::now();
            for byte in b"OIN 0000000000" {
                if stop.load(Ordering::SeqCst) || trickler.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            started.elapsed()
        }
    });

    // Port 1: the right token, at once.
    let started = Instant::now();
    let mut joiner = Conn::open(SocketAddr::new(ip, ports[1]), &sniff, "right joiner");
    joiner.set_deadline(Duration::from_secs(16));
    joiner.send(format!("JOIN {token}\n").as_bytes()).unwrap();
    let reply = joiner.line();
    let waited = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let trickled = trickle.join().unwrap();
    assert!(
        reply.as_deref().is_some_and(|r| r.starts_with("STREAM 1 "))
            && waited < Duration::from_secs(4),
        "the right joiner of stream 1 got {reply:?} after {waited:?} while another \
         connection trickled a JOIN line into stream 0's port for {trickled:?}"
    );
}

#[test]
fn the_sniffer_finds_a_marker_cut_across_reads() {
    let sniff = Sniff::default();
    let mut tail = Vec::new();
    let mut stream = b"xxxx".to_vec();
    stream.extend_from_slice(MARKER);
    stream.extend_from_slice(b"yyyy");
    for chunk in stream.chunks(7) {
        sniff.scan("control", &mut tail, chunk);
    }
    assert_eq!(sniff.leaks.lock().unwrap().as_slice(), ["control"]);
    assert_eq!(sniff.bytes.load(Ordering::Relaxed), stream.len() as u64);
}
