//! The server's TLS port against clients that do not complete TLS: a
//! plain-text client is told, in plain text, and a handshake that stalls
//! is held to the request-line deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fastdl_testkit::Server;

fn server(tmp: &std::path::Path) -> Server {
    let res = tmp.join("res");
    std::fs::create_dir_all(&res).unwrap();
    std::fs::write(res.join("a.txt"), b"a").unwrap();
    Server::start(&res, &tmp.join("srv"), &["--request-timeout", "2"])
}

fn read_all(mut stream: TcpStream, deadline: Duration) -> (Vec<u8>, Duration) {
    stream.set_read_timeout(Some(deadline)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    (got, started.elapsed())
}

#[test]
fn a_plain_text_client_is_told_tls_is_required() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(tmp.path());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"FASTDL 2\nLIST\n").unwrap();
    let (got, _) = read_all(stream, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("ERROR TLS_REQUIRED "), "{text:?}");
    assert_eq!(
        text.lines().count(),
        1,
        "one line, then the close: {text:?}"
    );
}

#[test]
fn a_stalled_handshake_is_closed_at_the_request_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(tmp.path());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    // The start of a TLS record, and no more.
    stream.write_all(&[0x16, 0x03, 0x01, 0x02]).unwrap();
    let (got, waited) = read_all(stream, Duration::from_secs(20));
    assert!(got.is_empty(), "{got:?}");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(8),
        "held for {waited:?}"
    );
}
