//! The server on an open network (issue 16): thousands of idle or
//! trickling connections from many addresses, and hundreds from the
//! client's own address, must neither lock a normal client out nor slow
//! it down much, nor cost the server much memory.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastdl_testkit::{
    client, connect_from, hash_file, peak_rss_kib, raise_fd_limit, run_with_deadline, write_file,
    Server,
};

/// A fresh `--once` download of `name` into its own folder; its time.
fn download(server: &Server, root: &Path, tag: &str, name: &str, digest: &str) -> Duration {
    download_with(server, root, tag, name, digest, &[])
}

fn download_with(
    server: &Server,
    root: &Path,
    tag: &str,
    name: &str,
    digest: &str,
    extra: &[&str],
) -> Duration {
    let work = root.join(tag);
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input.txt"), format!("{name}\n")).unwrap();
    let started = Instant::now();
    let output = run_with_deadline(
        client(&server.url(), &work).arg("--once").args(extra),
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "{tag}: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(work.join("client.log")).unwrap_or_default()
    );
    assert_eq!(hash_file(&work.join("data").join(name)), digest, "{tag}");
    took
}

/// `count` connections from the loopback addresses `127.0.<third>.<n>`,
/// `per_addr` from each address, starting at `127.0.<third>.1`.
fn open_from_many(addr: SocketAddr, third: u8, count: usize, per_addr: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let host = i / per_addr;
            let ip = IpAddr::from([127, third, (host / 250) as u8, (host % 250 + 1) as u8]);
            connect_from(ip, addr).unwrap_or_else(|e| panic!("connect from {ip}: {e}"))
        })
        .collect()
}

#[test]
fn thousands_of_idle_and_trickling_connections_do_not_lock_a_client_out() {
    raise_fd_limit(16_000);
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    let digest = write_file(&res.join("fifty.bin"), 50_000_000, 16);
    let server = Server::start(&res, &tmp.path().join("srv"), &[]);
    let addr = server.addr;

    let unflooded = download(&server, tmp.path(), "unflooded", "fifty.bin", &digest);

    // 4,000 idle connections from 200 addresses, 1,000 more that trickle
    // a request line, and 300 idle ones from the client's own address.
    let idle = open_from_many(addr, 1, 4000, 20);
    let trickling = open_from_many(addr, 5, 1000, 20);
    let own: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = std::thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let mut trickling = trickling;
            while !stop.load(Ordering::SeqCst) {
                // A byte per connection per round, never a newline.
                trickling.retain_mut(|conn| conn.write_all(b"G").is_ok());
                std::thread::sleep(Duration::from_millis(500));
            }
            trickling.len()
        }
    });

    let flooded = download(&server, tmp.path(), "flooded", "fifty.bin", &digest);
    stop.store(true, Ordering::SeqCst);
    let still_trickling = trickler.join().unwrap();
    let rss = peak_rss_kib(server.pid()).unwrap();
    eprintln!(
        "50 MB: {unflooded:?} unflooded, {flooded:?} among 5,300 connections \
         ({still_trickling} still trickling at the end); server peak RSS {rss} KiB"
    );
    assert!(
        flooded <= unflooded * 3 + Duration::from_secs(1),
        "flooded {flooded:?} against {unflooded:?} unflooded"
    );
    assert!(rss <= 64 << 10, "server peak RSS {rss} KiB");
    // The client's address was at its limit: its own idle connections
    // went first (closed without a word: they never began TLS).
    let mut closed = 0;
    for mut conn in own {
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut reply = [0u8; 64];
        closed += usize::from(match conn.read(&mut reply) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        });
    }
    assert!(
        closed >= 4,
        "only {closed} of the idle connections were closed to make room"
    );
    drop(idle);
}

/// Past `--max-connections`, the connection waiting longest makes room.
#[test]
fn a_full_server_closes_the_longest_idle_connection_for_a_new_client() {
    raise_fd_limit(4096);
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    let digest = write_file(&res.join("f.bin"), 3_000_000, 17);
    let server = Server::start(
        &res,
        &tmp.path().join("srv"),
        &["--plaintext", "--max-connections", "100"],
    );
    let mut idle = open_from_many(server.addr, 9, 150, 10);
    // Plain text, so that the connections closed to make room are told why.
    download_with(
        &server,
        tmp.path(),
        "full",
        "f.bin",
        &digest,
        &["--plaintext"],
    );
    // The oldest ones were told why they were closed.
    let first = &mut idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = String::new();
    let _ = first.read_to_string(&mut reply);
    assert!(reply.starts_with("ERROR TIMEOUT"), "{reply:?}");
}
