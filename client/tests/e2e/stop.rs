//! Ctrl-C ends the client within a second in every state it can be in:
//! fetching a list from a server that stopped answering (the first list,
//! or a refresh while names wait), in the middle of a TLS handshake that
//! never completes, in the middle of a download that stalled, waiting to
//! try a server again, and idle. A scripted server on 127.0.0.1 holds the
//! client in each state and says when it is there.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fastdl_testkit::{client, wait_until, Running};
use rustix::process::Signal;

/// The promise: a Ctrl-C ends the client within this.
const STOP_WITHIN: Duration = Duration::from_secs(1);
/// How long a test waits for the client to reach the state under test.
const REACH: Duration = Duration::from_secs(20);

/// What the scripted server does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Accepts connections and never sends a byte.
    Silent,
    /// Answers the first `LIST` (one file, f.bin); every later `LIST` is
    /// read and never answered.
    StallLaterLists,
    /// Lists f.bin; answers `GET` with its `DATA` line and a few bytes,
    /// then nothing.
    StallMidData,
}

/// A 3 MiB file, so that a download asks for several pieces.
const SIZE: usize = 3 << 20;

fn content() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| fastdl_testkit::pattern(SIZE, 5))
}

fn list_reply() -> String {
    format!(
        "LIST 1\n1) f.bin\t{SIZE}\t{}\nEND\n",
        blake3::hash(content()).to_hex()
    )
}

/// Starts the scripted server; the receiver gets one message each time
/// the client reaches the state the script holds it in.
fn scripted(script: Script) -> (String, Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (reached, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for conn in listener.incoming().flatten() {
            let (reached, lists) = (reached.clone(), lists.clone());
            std::thread::spawn(move || serve(conn, script, &reached, &lists));
        }
    });
    (addr, rx)
}

fn serve(
    conn: TcpStream,
    script: Script,
    reached: &Sender<()>,
    lists: &std::sync::atomic::AtomicUsize,
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    if script == Script::Silent {
        let _ = reached.send(());
        // Hold the connection until the client leaves.
        let _ = r.read_line(&mut String::new());
        let _ = std::io::copy(&mut r, &mut std::io::sink());
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let request = line.trim_end();
        let reply = if request.starts_with("FASTDL") {
            "FASTDL 2\n".to_owned()
        } else if request == "LIST" {
            let n = lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if script == Script::StallLaterLists && n > 0 {
                let _ = reached.send(());
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                return;
            }
            list_reply()
        } else if request.starts_with("GET ") && script == Script::StallMidData {
            let length: usize = request.split(' ').nth(2).unwrap().parse().unwrap();
            let _ = w.write_all(format!("DATA {length}\n").as_bytes());
            let _ = w.write_all(&content()[..1000]);
            let _ = reached.send(());
            let _ = std::io::copy(&mut r, &mut std::io::sink());
            return;
        } else {
            "ERROR IO not in this script\n".to_owned()
        };
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn work_with_input(tmp: &Path, names: &str) -> std::path::PathBuf {
    let work = tmp.join("w");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), names).unwrap();
    work
}

/// Sends Ctrl-C and returns the exit status, failing the test if the
/// client is still running [`STOP_WITHIN`] later.
fn ctrl_c(client: &mut Running, work: &Path) -> ExitStatus {
    let sent = Instant::now();
    client.signal(Signal::INT);
    let status = client.wait_exit(STOP_WITHIN * 5);
    let took = sent.elapsed();
    let log = fs::read_to_string(work.join("client.log")).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("still running 5 s after Ctrl-C; log:\n{log}"));
    assert!(
        took <= STOP_WITHIN,
        "stopped {took:?} after Ctrl-C (promise: {STOP_WITHIN:?}); log:\n{log}"
    );
    status
}

fn reach(state: &Receiver<()>, what: &str) {
    state
        .recv_timeout(REACH)
        .unwrap_or_else(|_| panic!("the client never reached {what}"));
}

#[test]
fn during_a_list_refresh_against_a_stalled_server() {
    let (server, state) = scripted(Script::StallLaterLists);
    let tmp = tempfile::tempdir().unwrap();
    // A name the server does not list: the client fetches the list again
    // every --poll second, and the second fetch hangs.
    let work = work_with_input(tmp.path(), "not-there.bin\n");
    let mut watcher = Running::spawn(client(&server, &work).args(["--plaintext", "--poll", "1"]));
    reach(&state, "a list refresh");
    assert!(ctrl_c(&mut watcher, &work).success());
}

#[test]
fn while_the_first_list_hangs_in_plain_text_and_in_a_tls_handshake() {
    for tls in [false, true] {
        let (server, state) = scripted(Script::Silent);
        let tmp = tempfile::tempdir().unwrap();
        let work = work_with_input(tmp.path(), "f.bin\n");
        let mut cmd = client(&server, &work);
        if !tls {
            cmd.arg("--plaintext");
        }
        let mut watcher = Running::spawn(&mut cmd);
        reach(&state, "a connection");
        assert!(ctrl_c(&mut watcher, &work).success(), "tls: {tls}");
    }
}

#[test]
fn in_the_middle_of_a_stalled_download() {
    for once in [false, true] {
        let (server, state) = scripted(Script::StallMidData);
        let tmp = tempfile::tempdir().unwrap();
        let work = work_with_input(tmp.path(), "f.bin\n");
        let mut cmd = client(&server, &work);
        cmd.arg("--plaintext");
        if once {
            cmd.arg("--once");
        }
        let mut running = Running::spawn(&mut cmd);
        reach(&state, "a download");
        let status = ctrl_c(&mut running, &work);
        // --once reports the interruption (128 + SIGINT); a watching
        // client was asked to stop, and did.
        assert_eq!(
            status.code(),
            Some(if once { 130 } else { 0 }),
            "once: {once}"
        );
        // The part file stays for the next run; nothing lands unverified.
        assert!(!work.join("data/f.bin").exists());
    }
}

#[test]
fn while_waiting_to_try_an_unreachable_server_again() {
    // A port that refuses connections: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let work = work_with_input(tmp.path(), "f.bin\n");
    let mut running = Running::spawn(client(&format!("127.0.0.1:{port}"), &work).args([
        "--plaintext",
        "--once",
        "--retries",
        "5",
        "--retry-wait",
        "60",
    ]));
    let log = work.join("client.log");
    wait_until(REACH, "the first failed list fetch", || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("retrying in"))
    });
    assert_eq!(ctrl_c(&mut running, &work).code(), Some(130));
}

#[test]
fn when_idle() {
    let env = crate::helpers::Env::new();
    let server = env.server(&[]);
    env.write_input(&[]);
    let mut watcher = Running::spawn(&mut client(&server.url(), &env.work));
    wait_until(REACH, "the client to pin the server", || {
        fs::read_to_string(env.work.join("known_servers")).is_ok_and(|k| !k.is_empty())
    });
    assert!(ctrl_c(&mut watcher, &env.work).success());
}
