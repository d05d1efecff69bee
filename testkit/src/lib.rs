//! Helpers for fastdl's end-to-end tests: start the real `fastdl-server`
//! and `fastdl-client` binaries on 127.0.0.1 in temporary folders, wait on
//! conditions with a deadline (never a fixed sleep), and make and hash
//! test files.
//!
//! The binaries are found beside the test executable's target folder
//! (`target/<profile>/`); `cargo test --workspace` builds them first.

pub mod web;

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Default deadline for conditions in tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Path of a workspace binary (`fastdl-server` or `fastdl-client`).
/// A command for one of our binaries, without any `FASTDL_*` variable of
/// the environment the tests run in (each option can come from one).
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FASTDL_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target folder");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Raises this process's soft limit of open files to `want` (or the hard
/// limit, if lower), for tests that hold thousands of connections.
pub fn raise_fd_limit(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.map_or(want, |max| max.min(want));
    if limit.current.is_some_and(|current| current < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: limit.maximum,
            },
        );
    }
}

/// A TCP connection to `addr` from the loopback address `source` (any of
/// 127.0.0.0/8): many clients, as far as the server can tell, from one
/// test.
pub fn connect_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    bind(&fd, &SocketAddr::new(source, 0))?;
    connect(&fd, &addr)?;
    Ok(std::net::TcpStream::from(fd))
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` pattern bytes to `path` (creating folders); returns their BLAKE3 hex.
pub fn write_file(path: &Path, len: usize, seed: u64) -> String {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create folders");
    }
    let mut file = fs::File::create(path).expect("create file");
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    let mut block = 0u64;
    while left > 0 {
        let n = left.min(8 << 20);
        let bytes = pattern(n, seed.wrapping_add(block));
        hasher.update(&bytes);
        file.write_all(&bytes).expect("write file");
        left -= n;
        block += 1;
    }
    hasher.finalize().to_hex().to_string()
}

/// BLAKE3 hex of a file's content.
pub fn hash_file(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap(path)
        .unwrap_or_else(|e| panic!("hash {}: {e}", path.display()));
    hasher.finalize().to_hex().to_string()
}

/// Names of the non-hidden entries of a folder, sorted.
pub fn visible_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A running `fastdl-server`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub list: PathBuf,
}

impl Server {
    /// Starts a server on 127.0.0.1 with a free port, serving `resources`,
    /// keeping its list and log in `work`. Waits until it listens.
    pub fn start(resources: &Path, work: &Path, extra: &[&str]) -> Server {
        Server::start_on(resources, work, 0, extra)
    }

    /// Like [`Server::start`] on a given port (0: a free one). The
    /// server's identity is kept in `work/identity.pem` unless `extra`
    /// names another (`--identity`) or turns TLS off (`--plaintext`).
    pub fn start_on(resources: &Path, work: &Path, port: u16, extra: &[&str]) -> Server {
        fs::create_dir_all(work).expect("work folder");
        let log = work.join(format!("server-{}.log", unique()));
        let list = work.join("text.txt");
        let mut cmd = command("fastdl-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(resources)
            .arg("--list")
            .arg(&list)
            .arg("--log")
            .arg(&log);
        if !extra
            .iter()
            .any(|a| *a == "--identity" || *a == "--plaintext")
        {
            cmd.arg("--identity").arg(work.join("identity.pem"));
        }
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fastdl-server");
        let mut server = Server {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
            list,
        };
        let mut found = None;
        wait_until(DEADLINE, "the server to listen", || {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "fastdl-server exited early ({status}); log:\n{}",
                    server.log_text()
                );
            }
            found = server
                .log_text()
                .lines()
                .find_map(|l| l.split("listening on ").nth(1).map(|a| a.trim().to_owned()));
            found.is_some()
        });
        server.addr = found.unwrap().parse().expect("listen address in log");
        server
    }

    /// `127.0.0.1:PORT` for `--server`.
    pub fn url(&self) -> String {
        self.addr.to_string()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal (for example `rustix::process::Signal::INT`).
    pub fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Waits for the server to exit, up to `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// kill -9, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `fastdl-client` command preset for a test: `--server`, `--out`,
/// `--input`, `--log` and `--known-servers` in `work`, no progress bars,
/// no option (such as an access token) from the environment.
pub fn client(server: &str, work: &Path) -> Command {
    let mut cmd = command("fastdl-client");
    cmd.args(["--server", server])
        .arg("--input")
        .arg(work.join("input.txt"))
        .arg("--out")
        .arg(work.join("data"))
        .arg("--log")
        .arg(work.join("client.log"))
        .arg("--known-servers")
        .arg(work.join("known_servers"))
        .stdin(Stdio::null());
    cmd
}

/// Runs a client command to completion with a deadline; returns its output.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fastdl-client");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(output) => output.expect("client output"),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("fastdl-client did not finish within {deadline:?}");
        }
    }
}

/// Like [`run_with_deadline`], and also the client's peak resident memory
/// (VmHWM, KiB), sampled every 10 ms while it runs. A client still running
/// at `deadline`, or whose peak passes `kill_above_kib`, is killed and the
/// test fails, naming which limit it passed.
pub fn run_measuring_memory(
    cmd: &mut Command,
    deadline: Duration,
    kill_above_kib: u64,
) -> (Output, u64) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fastdl-client");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let end = Instant::now() + deadline;
    let mut peak = 0u64;
    let kill = || {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    };
    loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(output) => return (output.expect("client output"), peak),
            Err(_) if peak > kill_above_kib => {
                kill();
                panic!("fastdl-client grew to {peak} KiB (limit {kill_above_kib} KiB); killed");
            }
            Err(_) if Instant::now() >= end => {
                kill();
                panic!("fastdl-client did not finish within {deadline:?}");
            }
            Err(_) => {}
        }
    }
}

/// Peak resident memory (VmHWM) of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A running watch-mode client, killed when dropped.
pub struct Running {
    pub child: Child,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fastdl-client");
        Running { child }
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP proxy on 127.0.0.1 that forwards to `target` and, once in its
/// whole life, flips one byte of the server-to-client stream of a
/// connection at stream offset `flip_at` (counted per connection). Used to
/// show that a corrupted piece is caught and fetched again.
pub struct FlipProxy {
    pub addr: SocketAddr,
    pub flipped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlipProxy {
    pub fn start(target: SocketAddr, flip_at: u64) -> FlipProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let flipped = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&flipped);
        let addr = start_proxy(target, move |_| {
            let flag = std::sync::Arc::clone(&flag);
            Box::new(move |pos: u64, buf: &mut [u8]| {
                let end = pos + buf.len() as u64;
                if flip_at >= pos && flip_at < end && !flag.swap(true, Ordering::SeqCst) {
                    buf[(flip_at - pos) as usize] ^= 0x55;
                }
                buf.len()
            })
        });
        FlipProxy { addr, flipped }
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to `target`, except that the
/// first connection to carry `after` bytes from the server (whichever
/// that is: a download connection, not the one a list came over) stops
/// passing them on there: the connection stays open, but nothing more
/// arrives on it (what the server sends is read and dropped). Used to
/// show that one stuck connection does not hold up a download.
pub struct StallProxy {
    pub addr: SocketAddr,
    /// Set once the stalled connection has stopped passing bytes on.
    pub stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallProxy {
    pub fn start(target: SocketAddr, after: u64) -> StallProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stalled = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stalled);
        let addr = start_proxy(target, move |_| {
            let flag = std::sync::Arc::clone(&flag);
            let mut mine = false;
            Box::new(move |pos: u64, buf: &mut [u8]| {
                let end = pos + buf.len() as u64;
                if !mine && end > after && !flag.swap(true, Ordering::SeqCst) {
                    mine = true;
                }
                if !mine {
                    return buf.len();
                }
                (after.saturating_sub(pos) as usize).min(buf.len())
            })
        });
        StallProxy { addr, stalled }
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to `target` untouched and keeps
/// a copy of every byte that passes, both ways: what someone on the path
/// would see.
pub struct TapProxy {
    pub addr: SocketAddr,
    /// Everything that passed, both directions, in arrival order.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl TapProxy {
    pub fn start(target: SocketAddr) -> TapProxy {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let tap = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                for (from, to) in [(c2, s2), (server, client)] {
                    let tap = std::sync::Arc::clone(&tap);
                    let record: Tamper = Box::new(move |_, buf: &mut [u8]| {
                        tap.lock().unwrap().extend_from_slice(buf);
                        buf.len()
                    });
                    std::thread::spawn(move || pipe(from, to, Some(record)));
                }
            }
        });
        TapProxy { addr, seen }
    }

    /// Whether `needle` appears anywhere in what passed.
    pub fn saw(&self, needle: &[u8]) -> bool {
        let seen = self.seen.lock().unwrap();
        !needle.is_empty() && seen.windows(needle.len()).any(|w| w == needle)
    }
}

/// Looks at (and may change) the server's bytes at stream offset `pos`,
/// and says how many of them to pass on.
type Tamper = Box<dyn FnMut(u64, &mut [u8]) -> usize + Send>;

/// Starts a proxy on 127.0.0.1 forwarding to `target`: the client's bytes
/// pass untouched, the server's through `tamper(index)` for the index-th
/// connection accepted. Returns the proxy's address.
fn start_proxy(
    target: SocketAddr,
    tamper: impl Fn(usize) -> Tamper + Send + 'static,
) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
    let addr = listener.local_addr().expect("proxy addr");
    std::thread::spawn(move || {
        for (index, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let Ok(server) = std::net::TcpStream::connect(target) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(c2, s2, None));
            let tamper = tamper(index);
            std::thread::spawn(move || pipe(server, client, Some(tamper)));
        }
    });
    addr
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, mut tamper: Option<Tamper>) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let pass = match tamper.as_mut() {
            Some(t) => t(pos, &mut buf[..n]),
            None => n,
        };
        pos += n as u64;
        if to.write_all(&buf[..pass]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}
