//! The HTTP face (`--http-port`) against the tools people point at file
//! servers: curl (whole files and `-r` ranges, over http and over https
//! pinned to the server identity) and aria2c with four connections, which
//! must get identical bytes; raw requests with path tricks, which must get
//! 4xx and nothing outside the folder; tokens as bearer headers.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fastdl_testkit::web::free_port;
use fastdl_testkit::{hash_file, write_file, Server};

const MIB: usize = 1 << 20;

struct Face {
    _tmp: tempfile::TempDir,
    res: std::path::PathBuf,
    work: std::path::PathBuf,
    server: Server,
    port: u16,
}

impl Face {
    fn start(extra: &[&str]) -> Face {
        let tmp = tempfile::tempdir().unwrap();
        let res = tmp.path().join("res");
        let work = tmp.path().join("work");
        fs::create_dir_all(&res).unwrap();
        write_file(&res.join("big file.bin"), 9 * MIB + 7, 1);
        write_file(&res.join("sub/small.bin"), 70_000, 2);
        // Beside the folder: must never be served.
        fs::write(tmp.path().join("secret.txt"), "TOP SECRET").unwrap();
        let port = free_port();
        let port_text = port.to_string();
        let mut args = vec!["--http-port", port_text.as_str()];
        args.extend_from_slice(extra);
        let server = Server::start(&res, &work, &args);
        assert!(fastdl_testkit::web::wait_for_port(
            port,
            Duration::from_secs(10)
        ));
        Face {
            _tmp: tmp,
            res,
            work,
            server,
            port,
        }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// The server identity's fingerprint, as curl pins it.
    fn pin(&self) -> String {
        let (identity, _) =
            fastdl_tls::identity::Identity::load_or_create(&self.work.join("identity.pem"))
                .unwrap();
        identity.fingerprint.to_string()
    }
}

fn curl(args: &[&str], out: &Path) -> std::process::ExitStatus {
    Command::new("curl")
        .args(["-s", "-S", "-f", "-o"])
        .arg(out)
        .args(args)
        .status()
        .expect("curl (apt-get install curl)")
}

/// One raw request; the whole answer (the server closes after it).
fn raw(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn curl_and_aria2c_get_identical_bytes_over_http() {
    let face = Face::start(&["--plaintext"]);
    let dir = face.work.join("got");
    fs::create_dir_all(&dir).unwrap();
    let want = hash_file(&face.res.join("big file.bin"));
    let whole = dir.join("whole.bin");
    assert!(curl(&[&face.url("http", "/big%20file.bin")], &whole).success());
    assert_eq!(hash_file(&whole), want);
    // Ranges: a middle, an open end, a suffix; each exactly those bytes.
    let bytes = fs::read(face.res.join("big file.bin")).unwrap();
    for (range, expect) in [
        ("1000-1999", &bytes[1000..2000]),
        ("9437000-", &bytes[9_437_000..]),
        ("-300", &bytes[bytes.len() - 300..]),
    ] {
        let part = dir.join("part.bin");
        assert!(curl(&["-r", range, &face.url("http", "/big%20file.bin")], &part).success());
        assert_eq!(fs::read(&part).unwrap(), expect, "range {range}");
    }
    let small = dir.join("small.bin");
    assert!(curl(&[&face.url("http", "/sub/small.bin")], &small).success());
    assert_eq!(
        hash_file(&small),
        hash_file(&face.res.join("sub/small.bin"))
    );
    let aria = Command::new("aria2c")
        .args(["-q", "-x4", "-s4", "--allow-overwrite=true", "-d"])
        .arg(&dir)
        .args(["-o", "aria.bin", &face.url("http", "/big%20file.bin")])
        .status()
        .expect("aria2c (apt-get install aria2)");
    assert!(aria.success());
    assert_eq!(hash_file(&dir.join("aria.bin")), want);
    // The answers say what the file is.
    let head = raw(
        face.port,
        "HEAD /big%20file.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&head), 200, "{head}");
    assert!(head.contains(&format!("ETag: \"{want}\"")), "{head}");
    assert!(head.contains("Accept-Ranges: bytes") && head.contains("Repr-Digest: blake3=:"));
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body");
    let outside = raw(
        face.port,
        "GET /big%20file.bin HTTP/1.1\r\nRange: bytes=99999999-\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&outside), 416, "{outside}");
    assert!(
        outside.contains("Content-Range: bytes */9437191"),
        "{outside}"
    );
}

#[test]
fn curl_over_https_pinned_to_the_server_identity() {
    let face = Face::start(&[]);
    let out = face.work.join("s.bin");
    let pin = face.pin();
    // Self-signed, so -k; the pin is what makes it safe.
    assert!(curl(
        &[
            "-k",
            "--pinnedpubkey",
            &pin,
            &face.url("https", "/sub/small.bin")
        ],
        &out
    )
    .success());
    assert_eq!(hash_file(&out), hash_file(&face.res.join("sub/small.bin")));
    let wrong_pin = format!("sha256//{}", "A".repeat(43) + "=");
    assert!(!curl(
        &[
            "-k",
            "--pinnedpubkey",
            &wrong_pin,
            &face.url("https", "/sub/small.bin")
        ],
        &face.work.join("no.bin")
    )
    .success());
    // Plain HTTP to the TLS port is told, not served.
    let plain = raw(face.port, "GET /sub/small.bin HTTP/1.1\r\n\r\n");
    assert_eq!(status(&plain), 400, "{plain}");
    assert!(!plain.contains("\r\n\r\n\0"), "no file bytes");
}

#[test]
fn path_tricks_get_4xx_and_nothing_outside_the_folder() {
    let face = Face::start(&["--plaintext"]);
    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "//secret.txt",
        "/%2Fetc%2Fpasswd",
        "/etc/passwd",
        &face
            .res
            .join("big file.bin")
            .display()
            .to_string()
            .replace(' ', "%20"),
        "http://127.0.0.1/../secret.txt",
        "/sub/./small.bin",
        "/text.txt",
        "/server.log",
    ] {
        let answer = raw(
            face.port,
            &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        let code = status(&answer);
        assert!((400..500).contains(&code), "{target}: {answer}");
        assert!(
            !answer.contains("TOP SECRET") && !answer.contains("root:"),
            "{target}"
        );
    }
    let post = raw(
        face.port,
        "POST /sub/small.bin HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status(&post), 405, "{post}");
    let garbage = raw(face.port, "\x16\x03\x01 not http at all\r\n\r\n");
    assert!(garbage.is_empty() || status(&garbage) == 400, "{garbage}");
    // The server is still there for a real request.
    let ok = raw(face.port, "GET /sub/small.bin HTTP/1.0\r\n\r\n");
    assert_eq!(status(&ok), 200, "{}", face.server.log_text());
}

#[test]
fn tokens_are_bearer_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    fs::write(&tokens, "right-token-123 alice\n").unwrap();
    let tokens = tokens.display().to_string();
    let face = Face::start(&["--plaintext", "--token-file", &tokens]);
    let denied = raw(
        face.port,
        "GET /sub/small.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&denied), 401, "{denied}");
    assert!(denied.contains("WWW-Authenticate: Bearer"), "{denied}");
    let wrong = raw(
        face.port,
        "GET / HTTP/1.1\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&wrong), 401, "{wrong}");
    assert!(!wrong.contains("small.bin"), "the index is not shown");
    let out = face.work.join("t.bin");
    assert!(curl(
        &[
            "-H",
            "Authorization: Bearer right-token-123",
            &face.url("http", "/sub/small.bin")
        ],
        &out
    )
    .success());
    assert_eq!(hash_file(&out), hash_file(&face.res.join("sub/small.bin")));
}
