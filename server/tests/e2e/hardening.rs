//! Regressions of the second outside attack run (issue 15), against the
//! real server over raw sockets: a FIFO renamed over a listed file, a
//! symlink in the folder leading to the server's own log folder, half a
//! request line behind a whole one, and one address holding every plan
//! slot with streams it never reads. Each is bounded in time.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use fastdl_testkit::{client, hash_file, run_with_deadline, wait_until, write_file, Server};

/// A raw connection with a read deadline.
pub(super) struct Raw {
    pub(super) reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    pub(super) fn connect(addr: SocketAddr) -> Raw {
        Raw::connect_from(None, addr, None)
    }

    /// Connects from `source` (another loopback address) or any address,
    /// with a receive buffer of `rcvbuf` bytes or the system's.
    pub(super) fn connect_from(
        source: Option<IpAddr>,
        addr: SocketAddr,
        rcvbuf: Option<usize>,
    ) -> Raw {
        use rustix::net::{bind, connect, socket, sockopt, AddressFamily, SocketType};
        let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        if let Some(ip) = source {
            bind(&fd, &SocketAddr::new(ip, 0)).unwrap();
        }
        if let Some(size) = rcvbuf {
            sockopt::set_socket_recv_buffer_size(&fd, size).unwrap();
        }
        connect(&fd, &addr).unwrap();
        let stream = TcpStream::from(fd);
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub(super) fn hello(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send("FASTDL 2\n");
        assert_eq!(raw.line().as_deref(), Some("FASTDL 2"));
        raw
    }

    pub(super) fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// One line; `None` when the connection ended first. A read timeout
    /// fails the test.
    pub(super) fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match (&mut self.reader).take(8192).read_until(b'\n', &mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no line from the server in time")
            }
            _ => {}
        }
        if buf.pop() != Some(b'\n') {
            return None;
        }
        Some(String::from_utf8(buf).unwrap())
    }
}

pub(super) fn published(root: &Path) -> std::path::PathBuf {
    let res = root.join("res");
    fs::create_dir_all(&res).unwrap();
    res
}

/// Break 2: a FIFO renamed over a listed file must be refused at once
/// (a blocking open of it would hold the session, and its connection
/// slot, forever), and every connection slot must come back.
#[test]
fn a_fifo_renamed_over_a_listed_file_is_refused_and_frees_its_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    write_file(&res.join("f.bin"), 100_000, 1);
    let other = write_file(&res.join("g.bin"), 50_000, 2);
    let slots = 6;
    let server = Server::start(
        &res,
        &tmp.path().join("srv"),
        &[
            "--plaintext",
            "--max-connections",
            &slots.to_string(),
            "--max-per-client",
            &slots.to_string(),
        ],
    );
    // Every slot greeted and ready before the swap, so that each GET
    // arrives before any rescan can unlist the name.
    let mut conns: Vec<Raw> = (0..slots).map(|_| Raw::hello(server.addr)).collect();
    let fifo = res.join(".fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    fs::rename(&fifo, res.join("f.bin")).unwrap();
    for conn in &mut conns {
        conn.send("GET 0 10 f.bin\n");
    }
    let started = Instant::now();
    for conn in &mut conns {
        let reply = conn.line().expect("a reply, not a closed connection");
        assert!(
            reply.starts_with("ERROR CHANGED") || reply.starts_with("WRONG_INPUT"),
            "{reply:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(conns);
    // The slots are free again: a normal client is served.
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "g.bin\n").unwrap();
    let output = run_with_deadline(
        client(&server.url(), &work).args(["--once", "--plaintext"]),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(hash_file(&work.join("data/g.bin")), other);
}

/// Break 5: a symlink in the published folder leading to the folder that
/// holds the server's log must not make log writes trigger rescans that
/// log (an endless loop): with nothing happening, the log stays still.
#[test]
fn a_symlink_to_the_log_folder_does_not_feed_a_rescan_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("a.txt"), b"a").unwrap();
    let srv = tmp.path().join("srv");
    fs::create_dir_all(&srv).unwrap();
    std::os::unix::fs::symlink(&srv, res.join("logs")).unwrap();
    let server = Server::start(&res, &srv, &["--plaintext", "--rescan", "1"]);
    // Let start-up settle, then watch the log over several rescan periods.
    std::thread::sleep(Duration::from_secs(2));
    let before = fs::metadata(&server.log).unwrap().len();
    std::thread::sleep(Duration::from_secs(4));
    let grown = fs::metadata(&server.log).unwrap().len() - before;
    assert!(
        grown == 0,
        "the log grew by {grown} bytes in 4 idle seconds:\n{}",
        &server.log_text()[before as usize..]
    );
}

/// Break 6: half a request line sent in the same packet as a whole one
/// is held to the request-line deadline, not the idle timeout.
#[test]
fn half_a_line_behind_a_whole_one_meets_the_line_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("a.txt"), b"a").unwrap();
    let server = Server::start(
        &res,
        &tmp.path().join("srv"),
        &["--plaintext", "--request-timeout", "2"],
    );
    let mut raw = Raw::connect(server.addr);
    let started = Instant::now();
    raw.send("FASTDL 2\nLI");
    assert_eq!(raw.line().as_deref(), Some("FASTDL 2"));
    let reply = raw.line();
    let waited = started.elapsed();
    assert!(
        reply
            .as_deref()
            .is_some_and(|r| r.starts_with("ERROR TIMEOUT")),
        "{reply:?}"
    );
    assert!(waited < Duration::from_secs(8), "held for {waited:?}");
}

/// A plan's `ACCEPTED` line: its ports and token.
fn accepted(reply: &str) -> (Vec<u16>, String) {
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(fields.first(), Some(&"ACCEPTED"), "{reply:?}");
    let n: usize = fields[1].parse().unwrap();
    let ports = fields[3..3 + n]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    (ports, fields[3 + n].to_owned())
}

/// Break 7: one address cannot hold every plan slot (joining every stream
/// and never reading): past its own limit it is refused, and another
/// address still gets a plan. A stream read at 1 byte/s is cut within
/// seconds.
#[test]
fn one_address_cannot_hold_every_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    // One stream per plan (the table's megabyte made 10 MB), and far more
    // than the socket buffers hold.
    write_file(&res.join("big.bin"), 48 << 20, 3);
    let server = Server::start(
        &res,
        &tmp.path().join("srv"),
        &["--plaintext", "--plan-unit", "10000000"],
    );
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..16 {
        let mut control = Raw::connect_from(Some(attacker), server.addr, None);
        control.send("FASTDL 2\nPLAN big.bin\n");
        assert_eq!(control.line().as_deref(), Some("FASTDL 2"));
        let reply = control.line().unwrap();
        if reply.starts_with("ERROR BUSY") {
            refused = Some(held.len());
            break;
        }
        let (ports, token) = accepted(&reply);
        for port in ports {
            let port = SocketAddr::new(server.addr.ip(), port);
            let mut stream = Raw::connect_from(Some(attacker), port, Some(4096));
            stream.send(&format!("JOIN {token}\n"));
            held.push(stream);
        }
        held.push(control);
    }
    assert!(refused.is_some(), "one address held all 16 plans");
    // Another address is still served.
    let mut other = Raw::hello(server.addr);
    other.send("PLAN big.bin\n");
    let reply = other.line().unwrap();
    let (ports, token) = accepted(&reply);
    // Its first stream is read at 1 byte/s: the server cuts it within
    // seconds (what it had already put in the socket buffers drains at
    // full speed afterwards, then the stream ends short of its length).
    let port = SocketAddr::new(server.addr.ip(), ports[0]);
    let mut slow = Raw::connect_from(None, port, Some(4096));
    slow.send(&format!("JOIN {token}\n"));
    let header = slow.line().unwrap();
    let chunks: u64 = header.rsplit(' ').next().unwrap().parse().unwrap();
    let full = chunks * ((1 << 20) + 12);
    let mut got = 0u64;
    let mut byte = [0u8; 1];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
        if slow.reader.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        got += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut rest = Vec::new();
    slow.writer
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let drained = slow.reader.read_to_end(&mut rest);
    got += rest.len() as u64;
    assert!(
        drained.is_ok() || rest.len() as u64 + got < full,
        "the slow stream was never cut: {drained:?}"
    );
    assert!(got < full, "the whole stream arrived at 1 byte/s");
    drop(held);
    wait_until(Duration::from_secs(5), "the server to stay up", || {
        TcpStream::connect(server.addr).is_ok()
    });
}

/// Every refused request counts towards the 32 in a row that close a
/// connection: malformed lines, requests before the version exchange, and
/// well-formed requests for names that are not listed alike.
#[test]
fn every_refusal_counts_towards_closing_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("a.txt"), b"a").unwrap();
    let server = Server::start(&res, &tmp.path().join("srv"), &["--plaintext"]);
    let mut raw = Raw::connect(server.addr);
    let mut requests = String::new();
    for i in 0..51 {
        requests.push_str(match i {
            0..=9 => "LIST\n",               // before the version exchange
            10 => "FASTDL 2\n",              // accepted: the count starts again
            11..=20 => "GET 0 1 nope.bin\n", // not listed
            _ => "PIECES nope.bin\n",
        });
    }
    raw.send(&requests);
    let mut replies = Vec::new();
    while let Some(line) = raw.line() {
        replies.push(line);
    }
    // 10 refusals, the handshake, then 32 refusals and the close.
    assert_eq!(replies.len(), 10 + 1 + 32, "{replies:#?}");
}

/// A server that cannot take a client says why (`ERROR BUSY`), and the
/// client reports that, not the broken pipe its pipelined requests met.
#[test]
fn a_busy_server_is_reported_as_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    write_file(&res.join("big.bin"), 40 << 20, 8);
    let server = Server::start(
        &res,
        &tmp.path().join("srv"),
        &["--plaintext", "--max-per-client", "1", "--speed-time", "60"],
    );
    // The one connection allowed from 127.0.0.1 is busy: a range its
    // reader does not read.
    let mut holder = Raw::connect_from(None, server.addr, Some(4096));
    holder.send(&format!("FASTDL 2\nGET 0 {} big.bin\n", 40 << 20));
    assert_eq!(holder.line().as_deref(), Some("FASTDL 2"));
    assert_eq!(holder.line(), Some(format!("DATA {}", 40 << 20)));
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "big.bin\n").unwrap();
    let output = run_with_deadline(
        client(&server.url(), &work).args(["--once", "--plaintext", "--retries", "1"]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("BUSY"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
