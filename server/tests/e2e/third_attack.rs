//! Regressions of the third outside attack run, against the real server:
//! idle connections that held a file each (and ran the server out of
//! descriptors below its connection limit), a begun request kept behind
//! every whole one to stay unclosable, the server's own key and tokens in
//! its folder, a revoked token still good on a signed-in connection, and
//! an HTTP answer cut by a reset when the client had sent more. Each is
//! bounded in time.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use fastdl_testkit::web::{free_port, wait_for_port};
use fastdl_testkit::{wait_until, write_file, Server, DEADLINE};

use super::hardening::{published, Raw};

/// Signs in, asks for one byte of `name` and reads the answer: the
/// connection then waits, as a client's kept-open connection does.
fn served_one_byte(raw: &mut Raw, name: &str) {
    raw.send(&format!("GET 0 1 {name}\n"));
    assert_eq!(raw.line().as_deref(), Some("DATA 1"));
    let mut byte = [0u8; 1];
    raw.reader.read_exact(&mut byte).unwrap();
}

/// 300 connections, each served and then idle, on a server allowed 256
/// descriptors (`--max-connections 300`, more than they serve): a waiting
/// connection holds no file, and when the descriptors run out the one
/// waiting longest is closed to accept a new client, which is served.
#[test]
fn idle_connections_hold_no_file_and_running_out_of_descriptors_makes_room() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("hello.txt"), b"hello").unwrap();
    let server = Server::start(
        &res,
        tmp.path(),
        &[
            "--plaintext",
            "--max-connections",
            "300",
            "--max-per-client",
            "1000",
        ],
    );
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    let limit = rustix::process::Rlimit {
        current: Some(256),
        maximum: Some(256),
    };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, limit).unwrap();
    // 200 served and idle: 200 sockets, no files, under the limit.
    let mut idle: Vec<Raw> = (0..200)
        .map(|_| {
            let mut raw = Raw::hello(server.addr);
            served_one_byte(&mut raw, "hello.txt");
            raw
        })
        .collect();
    let mut fresh = Raw::hello(server.addr);
    served_one_byte(&mut fresh, "hello.txt");
    // 100 more: now past the descriptors; the ones waiting longest make
    // room, every new connection is answered, and soon served again.
    for _ in 0..100 {
        idle.push(Raw::hello(server.addr));
    }
    wait_until(Duration::from_secs(10), "a new client to be served", || {
        let mut last = Raw::hello(server.addr);
        last.send("GET 0 1 hello.txt\n");
        last.line().as_deref() == Some("DATA 1")
    });
    drop(idle);
}

/// A connection that sends a whole request and the start of the next
/// still counts as waiting (since that start): with every connection an
/// address may have held that way, a new one from it is served and the
/// oldest is closed, instead of `ERROR BUSY`.
#[test]
fn a_begun_request_behind_a_whole_one_does_not_make_a_connection_unclosable() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("hello.txt"), b"hello").unwrap();
    let server = Server::start(&res, tmp.path(), &["--plaintext", "--max-per-client", "4"]);
    let mut held: Vec<Raw> = (0..4)
        .map(|_| {
            let mut raw = Raw::connect(server.addr);
            raw.send("FASTDL 2\nL");
            assert_eq!(raw.line().as_deref(), Some("FASTDL 2"));
            raw
        })
        .collect();
    let mut newcomer = Raw::connect(server.addr);
    newcomer.send("FASTDL 2\n");
    assert_eq!(newcomer.line().as_deref(), Some("FASTDL 2"));
    served_one_byte(&mut newcomer, "hello.txt");
    let first = held[0].line().unwrap_or_default();
    assert!(first.starts_with("ERROR TIMEOUT"), "{first}");
    held.clear();
}

/// `--dir` holding the server's own identity (its private key) and its
/// token file: neither is listed nor served.
#[test]
fn the_server_never_publishes_its_own_key_or_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("public.txt"), b"public").unwrap();
    fs::write(res.join("tokens.txt"), "a-token-of-enough-length-0123\n").unwrap();
    let identity = res.join("server-identity.pem");
    let tokens = res.join("tokens.txt");
    let server = Server::start(
        &res,
        tmp.path(),
        &[
            "--identity",
            identity.to_str().unwrap(),
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    );
    assert!(identity.exists(), "the identity is made in the folder");
    let list = fs::read_to_string(&server.list).unwrap();
    assert!(list.contains("public.txt"), "{list}");
    assert!(
        !list.contains("tokens.txt") && !list.contains("identity"),
        "{list}"
    );
}

/// A token removed from the token file ends the connections signed in
/// with it at their next request (the file is looked at once a second);
/// a token file that is gone accepts no token.
#[test]
fn a_revoked_token_ends_a_signed_in_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("hello.txt"), b"hello").unwrap();
    let tokens = tmp.path().join("tokens.txt");
    fs::write(&tokens, "kept-token-0123456789\nrevoked-token-0123456789\n").unwrap();
    let server = Server::start(
        &res,
        tmp.path(),
        &["--plaintext", "--token-file", tokens.to_str().unwrap()],
    );
    let signed_in = |token: &str| {
        let mut raw = Raw::hello(server.addr);
        raw.send(&format!("AUTH {token}\n"));
        let reply = raw.line().unwrap_or_default();
        (raw, reply)
    };
    let (mut kept, reply) = signed_in("kept-token-0123456789");
    assert_eq!(reply, "AUTH OK");
    let (mut revoked, reply) = signed_in("revoked-token-0123456789");
    assert_eq!(reply, "AUTH OK");
    served_one_byte(&mut revoked, "hello.txt");
    let new = tmp.path().join("tokens.new");
    fs::write(&new, "kept-token-0123456789\n").unwrap();
    fs::rename(&new, &tokens).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the revoked connection to end",
        || {
            revoked.send("GET 0 1 hello.txt\n");
            match revoked.line() {
                Some(line) if line == "DATA 1" => {
                    let mut byte = [0u8; 1];
                    revoked.reader.read_exact(&mut byte).unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    false
                }
                Some(line) => line.starts_with("ERROR AUTH"),
                None => true,
            }
        },
    );
    served_one_byte(&mut kept, "hello.txt");
    fs::remove_file(&tokens).unwrap();
    let (_, reply) = signed_in("kept-token-0123456789");
    assert!(reply.starts_with("ERROR AUTH"), "{reply}");
}

/// `Connection: close` with more requests pipelined behind it: the whole
/// answer arrives (the server reads and drops the rest before closing,
/// instead of resetting the connection over the end of the answer).
#[test]
fn an_http_answer_before_a_close_is_not_cut_by_unread_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    let size = 3_000_000;
    write_file(&res.join("big.bin"), size, 1);
    let port = free_port();
    let _server = Server::start(
        &res,
        tmp.path(),
        &["--plaintext", "--http-port", &port.to_string()],
    );
    assert!(wait_for_port(port, DEADLINE));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request = b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..200 {
        request.extend_from_slice(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    stream.write_all(&request).unwrap();
    // A slow reader: the answer is still in the server's buffers when it
    // has finished sending and closes.
    std::thread::sleep(Duration::from_millis(500));
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let body_at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head")
        + 4;
    assert_eq!(answer.len() - body_at, size, "the whole body");
}

/// The HTTP face at its limits: a client refused because every
/// connection is busy gets `503` with `Retry-After` (not a bare close),
/// and a request head over 16 KiB gets `431` even when it arrives whole.
#[test]
fn http_refusals_are_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    write_file(&res.join("big.bin"), 64 << 20, 2);
    let port = free_port();
    let _server = Server::start(
        &res,
        tmp.path(),
        &[
            "--plaintext",
            "--http-port",
            &port.to_string(),
            "--max-connections",
            "1",
        ],
    );
    assert!(wait_for_port(port, DEADLINE));
    let ask = |request: &[u8]| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(18 << 10, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let answer = ask(&head);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    // The one connection allowed, busy sending to a reader that does not
    // read (once the slot of the connection above is free).
    let mut busy = None;
    wait_until(DEADLINE, "the big file to be sent", || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 12];
        let sending = stream.read_exact(&mut first).is_ok() && &first == b"HTTP/1.1 200";
        busy = sending.then_some(stream);
        sending
    });
    let answer = ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:.80}");
    assert!(answer.contains("Retry-After: 1"), "{answer:.200}");
    drop(busy);
}

/// A file written to without pause (a copy, a log) must not hold off
/// every other change: a file added meanwhile is listed within the rescan
/// period (here 2 s), not once the writing stops.
#[test]
fn a_file_written_without_pause_does_not_hold_off_the_list() {
    let tmp = tempfile::tempdir().unwrap();
    let res = published(tmp.path());
    fs::write(res.join("growing.log"), b"").unwrap();
    let server = Server::start(&res, tmp.path(), &["--plaintext", "--rescan", "2"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (std::sync::Arc::clone(&stop), res.join("growing.log"));
        std::thread::spawn(move || {
            let mut file = fs::OpenOptions::new().append(true).open(log).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                file.write_all(b"a line\n").unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    fs::write(res.join("new_file.txt"), b"new").unwrap();
    wait_until(Duration::from_secs(8), "the new file to be listed", || {
        fs::read_to_string(&server.list).is_ok_and(|list| list.contains("new_file.txt"))
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
}
