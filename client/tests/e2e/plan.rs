//! `--plan` end to end: the N-stream plan at several N, the real table,
//! the plan ports' security, the busy limit, and a stream cut mid-plan.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use fastdl_testkit::{
    client, hash_file, run_with_deadline, wait_until, write_file, Server, DEADLINE,
};

const KB: usize = 1000;
const MB: usize = 1_000_000;

fn accepted_lines(work: &Path) -> Vec<String> {
    fs::read_to_string(work.join("client.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split(": ACCEPTED ")
                .nth(1)
                .map(|a| format!("ACCEPTED {a}"))
        })
        .collect()
}

fn streams_of(line: &str) -> usize {
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn plans_of_every_size_deliver_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (res, work) = (tmp.path().join("res"), tmp.path().join("w"));
    // With --plan-unit 10000 the table's "MB" is 10 KB: these sizes fall in
    // the 1, 2, 3, 5, 6, 7 and 8 stream rows.
    let sizes = [
        (0, "zero"),
        (1, "one"),
        (50 * KB, "n1"),
        (200 * KB, "n2"),
        (700 * KB, "n3"),
        (2 * MB, "n5"),
        (5 * MB, "n6"),
        (9 * MB, "n7"),
        (12 * MB, "n8"),
    ];
    let mut want = Vec::new();
    for (i, (size, name)) in sizes.iter().enumerate() {
        want.push(write_file(&res.join(name), *size, 100 + i as u64));
    }
    let server = Server::start(&res, &tmp.path().join("s"), &["--plan-unit", "10000"]);
    fs::create_dir_all(&work).unwrap();
    let names: String = sizes.iter().map(|(_, n)| format!("{n}\n")).collect();
    fs::write(work.join("input.txt"), names).unwrap();
    let out = run_with_deadline(
        client(&server.url(), &work).args(["--once", "--plan"]),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ((_, name), want) in sizes.iter().zip(&want) {
        assert_eq!(&hash_file(&work.join("data").join(name)), want, "{name}");
    }
    let mut streams: Vec<usize> = accepted_lines(&work)
        .iter()
        .map(|l| streams_of(l))
        .collect();
    streams.sort();
    streams.dedup();
    assert_eq!(
        streams,
        [1, 2, 3, 5, 6, 7, 8],
        "{:?}",
        accepted_lines(&work)
    );
    let server_log = server.log_text();
    assert!(
        server_log.contains(": ACCEPTED 8 12 "),
        "the server logs what it sent"
    );
}

#[test]
fn the_real_table_gives_a_60_mb_file_three_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let (res, work) = (tmp.path().join("res"), tmp.path().join("w"));
    let want = write_file(&res.join("sixty.bin"), 60 * MB, 5);
    let server = Server::start(&res, &tmp.path().join("s"), &[]);
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "sixty.bin\n").unwrap();
    let out = run_with_deadline(
        client(&server.url(), &work).args(["--once", "--plan"]),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_file(&work.join("data/sixty.bin")), want);
    let lines = accepted_lines(&work);
    assert_eq!(lines.len(), 1);
    assert_eq!(streams_of(&lines[0]), 3, "{lines:?}");
    assert!(lines[0].starts_with("ACCEPTED 3 58 "), "{lines:?}");
}

/// Speaks to the server by hand: handshake, then one request line.
fn raw(server: &Server) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    w.write_all(b"FASTDL 2\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "FASTDL 2\n");
    (r, w)
}

fn request(r: &mut BufReader<TcpStream>, w: &mut TcpStream, req: &str) -> String {
    w.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn plan_ports_want_the_token_once_and_plans_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("res");
    write_file(&res.join("f.bin"), 3 * MB, 1);
    let server = Server::start(
        &res,
        &tmp.path().join("s"),
        &["--plaintext", "--max-plans", "1", "--plan-unit", "20000"],
    );
    let (mut r, mut w) = raw(&server);
    let accepted = request(&mut r, &mut w, "PLAN f.bin");
    let fields: Vec<&str> = accepted.split(' ').collect();
    assert_eq!(fields[..3], ["ACCEPTED", "5", "3"], "{accepted}");
    let ports: Vec<u16> = fields[3..8].iter().map(|p| p.parse().unwrap()).collect();
    let token = fields[8];

    // The ports are open before ACCEPTED arrives.
    // A wrong token is refused and the port stays for the right one.
    let mut bad = TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    bad.write_all(b"JOIN 00000000000000000000000000000000\n")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(&bad).read_line(&mut reply).unwrap();
    assert!(reply.starts_with("WRONG_INPUT"), "{reply}");

    // The right token from another address (127.0.0.2) is refused too.
    let other = from_other_address(ports[1]);
    let mut other_w = other.try_clone().unwrap();
    other_w
        .write_all(format!("JOIN {token}\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 64];
    let got = (&other).read(&mut buf).unwrap_or(0);
    assert_eq!(
        got,
        0,
        "a foreign address got {:?}",
        String::from_utf8_lossy(&buf[..got])
    );

    // Too many open plans: the second gets a clear busy error.
    let busy = request(&mut r, &mut w, "PLAN f.bin");
    assert!(
        busy.starts_with("ERROR BUSY") && busy.contains("plans"),
        "{busy}"
    );

    // The right token joins stream 0 and gets its chunks (0 and 5.. none: 3 chunks over 5 streams).
    let mut good = TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    good.write_all(format!("JOIN {token}\n").as_bytes())
        .unwrap();
    let mut good_r = BufReader::new(good.try_clone().unwrap());
    let mut header = String::new();
    good_r.read_line(&mut header).unwrap();
    assert_eq!(header, "STREAM 0 1\n");
    let mut frame = [0u8; 12];
    good_r.read_exact(&mut frame).unwrap();
    assert_eq!(u64::from_be_bytes(frame[..8].try_into().unwrap()), 0);
    assert_eq!(u32::from_be_bytes(frame[8..].try_into().unwrap()), 1 << 20);

    // A second connection for the joined stream finds its port closed.
    wait_until(DEADLINE, "the joined stream's port to close", || {
        match TcpStream::connect(("127.0.0.1", ports[0])) {
            Err(_) => true,
            Ok(mut again) => {
                // Accepted by a backlog race: it must still be refused.
                let _ = again.write_all(format!("JOIN {token}\n").as_bytes());
                let mut buf = [0u8; 1];
                matches!(again.read(&mut buf), Ok(0) | Err(_))
            }
        }
    });
}

#[test]
fn a_stream_cut_mid_plan_still_ends_in_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (res, work) = (tmp.path().join("res"), tmp.path().join("w"));
    let want = write_file(&res.join("cut.bin"), 12 * MB, 77);
    let server = Server::start(&res, &tmp.path().join("s"), &["--plan-unit", "1000000"]);
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "cut.bin\n").unwrap();
    let mut cmd = client(&server.url(), &work);
    cmd.args(["--once", "--plan", "--limit-rate", "3M"]);
    let child = std::thread::spawn(move || run_with_deadline(&mut cmd, DEADLINE));
    wait_until(DEADLINE, "the plan to be accepted", || {
        !accepted_lines(&work).is_empty()
    });
    let line = accepted_lines(&work).remove(0);
    let port: u16 = line.split(' ').nth(3).unwrap().parse().unwrap();
    // Cut stream 0 from outside, as a broken network would.
    wait_until(DEADLINE, "stream 0 to be cut", || {
        let out = std::process::Command::new("ss")
            .args(["-K", "dst", "127.0.0.1", "dport", "=", &port.to_string()])
            .output()
            .expect("ss (iproute2) is needed for this test");
        String::from_utf8_lossy(&out.stdout).contains(&format!(":{port}"))
    });
    let out = child.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_file(&work.join("data/cut.bin")), want);
    let log = fs::read_to_string(work.join("client.log")).unwrap();
    assert!(log.contains("plan stream 0"), "{log}");
    assert!(log.contains("fetching them with ranged reads"), "{log}");
}

/// A TCP connection to 127.0.0.1:`port` made from source address 127.0.0.2.
fn from_other_address(port: u16) -> TcpStream {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap()).unwrap();
    connect(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}
