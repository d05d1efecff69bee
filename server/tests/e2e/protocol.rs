//! The real `fastdl-server` spoken to over raw TCP, as a person with `nc`
//! or a hostile peer would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use fastdl_testkit::{write_file, Server};

fn connect(server: &Server) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim_end_matches('\n').to_owned()
}

#[test]
fn handshake_list_and_ranged_read() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    write_file(&res.join("a b.txt"), 1000, 1);
    std::fs::write(res.join("ü.txt"), b"hello world").unwrap();
    let server = Server::start(&res, tmp.path(), &["--plaintext"]);
    let (mut r, mut w) = connect(&server);
    w.write_all(b"LIST\n").unwrap();
    assert!(line(&mut r).starts_with("ERROR HANDSHAKE"));
    w.write_all(b"FASTDL 2\nLIST\n").unwrap();
    assert_eq!(line(&mut r), "FASTDL 2");
    assert_eq!(line(&mut r), "LIST 2");
    assert!(line(&mut r).starts_with("1) a b.txt\t1000\t"));
    assert!(line(&mut r).starts_with("2) ü.txt\t11\t"));
    assert_eq!(line(&mut r), "END");
    w.write_all("GET 6 5 ü.txt\n".as_bytes()).unwrap();
    assert_eq!(line(&mut r), "DATA 5");
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    let text = std::fs::read_to_string(&server.list).unwrap();
    assert!(text.starts_with("1) a b.txt\t1000\t"), "{text}");
}

#[test]
fn path_tricks_are_refused_without_a_byte_of_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    std::fs::create_dir_all(&res).unwrap();
    std::fs::write(tmp.path().join("secret"), b"SECRET").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret"), res.join("link")).unwrap();
    std::fs::write(res.join("ok"), b"ok").unwrap();
    let server = Server::start(&res, tmp.path(), &["--plaintext"]);
    let (mut r, mut w) = connect(&server);
    w.write_all(b"FASTDL 2\n").unwrap();
    assert_eq!(line(&mut r), "FASTDL 2");
    for name in [
        "../secret",
        "/etc/hostname",
        "link",
        "ok/../../secret",
        "..\\secret",
        "./ok",
        "ok/",
    ] {
        w.write_all(format!("GET 0 1 {name}\n").as_bytes()).unwrap();
        let reply = line(&mut r);
        assert!(reply.starts_with("WRONG_INPUT"), "{name}: {reply}");
        w.write_all(format!("PIECES {name}\n").as_bytes()).unwrap();
        let reply = line(&mut r);
        assert!(reply.starts_with("WRONG_INPUT"), "{name}: {reply}");
    }
    w.write_all(b"GET 0 2 ok\n").unwrap();
    assert_eq!(line(&mut r), "DATA 2");
}

#[test]
fn ctrl_c_ends_sessions_and_exits_0_within_2_s() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    write_file(&res.join("big.bin"), 32 << 20, 3);
    let mut server = Server::start(&res, tmp.path(), &["--plaintext"]);
    // A client in the middle of a large transfer that it does not read.
    let (mut r, mut w) = connect(&server);
    w.write_all(b"FASTDL 2\nGET 0 33554432 big.bin\n").unwrap();
    assert_eq!(line(&mut r), "FASTDL 2");
    assert_eq!(line(&mut r), "DATA 33554432");
    let idle = TcpStream::connect(server.addr).unwrap();
    let started = std::time::Instant::now();
    server.signal(rustix::process::Signal::INT);
    let status = server
        .wait_exit(Duration::from_secs(2))
        .expect("exited within 2 s");
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);
}

#[test]
fn several_ports_and_a_status_line_for_each() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    std::fs::create_dir_all(&res).unwrap();
    std::fs::write(res.join("x"), b"x").unwrap();
    let server = Server::start(
        &res,
        tmp.path(),
        &["--plaintext", "--port", "0", "--status-interval", "1"],
    );
    let text = server.log_text();
    let ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.split("listening on 127.0.0.1:").nth(1))
        .map(|p| p.trim().parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 2, "{text}");
    for port in &ports {
        let stream = TcpStream::connect(("127.0.0.1", *port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        w.write_all(b"FASTDL 2\nGET 0 1 x\n").unwrap();
        assert_eq!(line(&mut r), "FASTDL 2");
        assert_eq!(line(&mut r), "DATA 1");
    }
    fastdl_testkit::wait_until(
        fastdl_testkit::DEADLINE,
        "a status line naming both ports",
        || {
            let log = server.log_text();
            log.lines().any(|l| {
                l.contains("status:") && ports.iter().all(|p| l.contains(&format!("port {p}: ")))
            })
        },
    );
}

#[test]
fn watch_announces_list_changes_and_beats_while_quiet() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    write_file(&res.join("a.bin"), 1000, 1);
    let server = Server::start(&res, tmp.path(), &["--plaintext"]);
    let (mut r, mut w) = connect(&server);
    w.write_all(b"FASTDL 2\nWATCH\n").unwrap();
    assert_eq!(line(&mut r), "FASTDL 2");
    let first = line(&mut r);
    let generation = |l: &str| -> u64 {
        l.strip_prefix("LISTED ")
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("not a LISTED line: {l:?}"))
    };
    let before = generation(&first);
    // Nothing changes: the same generation again, as a heartbeat.
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(generation(&line(&mut r)), before);
    // A new file: announced at once (well before the 5 s rescan and the
    // 15 s heartbeat), with a new generation.
    let started = std::time::Instant::now();
    write_file(&res.join("b.bin"), 1000, 2);
    assert_ne!(generation(&line(&mut r)), before);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sighup_reopens_the_log_file_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    write_file(&res.join("a.bin"), 1000, 1);
    let server = Server::start(&res, tmp.path(), &["--plaintext"]);
    let rotated = server.log.with_extension("log.1");
    // What logrotate does: move the file away, then SIGHUP.
    std::fs::rename(&server.log, &rotated).unwrap();
    server.signal(rustix::process::Signal::HUP);
    fastdl_testkit::wait_until(Duration::from_secs(10), "a new log file", || {
        server.log.exists()
    });
    // Still serving, and the session goes into the new file.
    let (mut r, mut w) = connect(&server);
    w.write_all(b"FASTDL 2\nLIST\n").unwrap();
    assert_eq!(line(&mut r), "FASTDL 2");
    assert_eq!(line(&mut r), "LIST 1");
    drop((r, w));
    fastdl_testkit::wait_until(
        Duration::from_secs(10),
        "the session in the new log",
        || server.log_text().contains("127.0.0.1"),
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("listening on"), "{old}");
}
