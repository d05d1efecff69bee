//! URLs in input.txt, fetched from a real nginx over http and https (a
//! private CA): names from the URL, digests from the line, errors, a
//! redirect, a server without ranges, a file that changes on the server
//! mid-download, and kill -9 then resume. No fastdl server runs in these
//! tests: a list of URLs needs none.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use fastdl_testkit::web::Nginx;
use fastdl_testkit::{
    client, hash_file, run_with_deadline, wait_until, write_file, Running, DEADLINE,
};
use rustix::process::Signal;

const MIB: usize = 1 << 20;

/// A --server nobody listens on: URL-only runs must not need it.
const NO_SERVER: &str = "127.0.0.1:9";

struct Web {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    nginx: Nginx,
}

impl Web {
    fn new() -> Web {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("www");
        let work = tmp.path().join("work");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&work).unwrap();
        let nginx = Nginx::start(&root, &tmp.path().join("nginx"));
        Web {
            _tmp: tmp,
            root,
            work,
            nginx,
        }
    }

    fn input(&self, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        fs::write(self.work.join("input.txt"), text).unwrap();
    }

    fn once(&self, extra: &[&str]) -> Output {
        run_with_deadline(
            client(NO_SERVER, &self.work)
                .args(["--once", "--retry-wait", "1"])
                .args(extra),
            DEADLINE,
        )
    }

    fn out(&self, name: &str) -> PathBuf {
        self.work.join("data").join(name)
    }

    /// Every file under `data/`, hidden ones included.
    fn landed(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.work.join("data"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_space_a_redirect_and_a_server_without_ranges() {
    let web = Web::new();
    let spaced = write_file(&web.root.join("a b.bin"), 3 * MIB + 5, 1);
    let small = write_file(&web.root.join("small.bin"), 100_000, 2);
    let whole = write_file(&web.root.join("c.bin"), 5 * MIB / 2, 3);
    let empty = write_file(&web.root.join("empty.bin"), 0, 4);
    let base = &web.nginx.http;
    web.input(&[
        format!("{base}/a%20b.bin"),
        format!("{base}/moved/small.bin"),
        format!("{base}/norange/c.bin"),
        format!("{base}/empty.bin"),
    ]);
    let out = web.once(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(hash_file(&web.out("a b.bin")), spaced);
    assert_eq!(hash_file(&web.out("small.bin")), small);
    assert_eq!(hash_file(&web.out("c.bin")), whole);
    assert_eq!(hash_file(&web.out("empty.bin")), empty);
    assert_eq!(web.landed(), ["a b.bin", "c.bin", "empty.bin", "small.bin"]);
    // The file without ranges came in one request (and its probe).
    let norange: Vec<_> = web
        .nginx
        .requests()
        .into_iter()
        .filter(|(_, _, r)| r.contains("/norange/"))
        .collect();
    assert!(norange.len() <= 2, "{norange:?}");
    // The large file came in ranges, over kept-alive connections.
    let ranged = web
        .nginx
        .requests()
        .iter()
        .filter(|(status, _, r)| *status == 206 && r.contains("a%20b.bin"))
        .count();
    assert_eq!(ranged, 4, "one range per piece");
}

#[test]
fn digests_on_the_line_are_checked_and_a_wrong_one_lands_nothing() {
    let web = Web::new();
    write_file(&web.root.join("good.bin"), 2 * MIB + 1, 5);
    write_file(&web.root.join("bad.bin"), MIB / 2, 6);
    write_file(&web.root.join("b3.bin"), 3 * MIB, 7);
    let good_sha = sha256_hex(&web.root.join("good.bin"));
    let b3 = hash_file(&web.root.join("b3.bin"));
    let base = &web.nginx.http;
    web.input(&[
        format!("{base}/good.bin sha256={good_sha}"),
        format!("{base}/bad.bin sha256={}", "00".repeat(32)),
        format!("{base}/b3.bin blake3={b3}"),
    ]);
    let out = web.once(&["--retries", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed: ") && err.contains("bad.bin"), "{err}");
    assert!(err.contains("sha256"), "{err}");
    assert_eq!(sha256_hex(&web.out("good.bin")), good_sha);
    assert_eq!(hash_file(&web.out("b3.bin")), b3);
    // Nothing of bad.bin: no file, no part file, no journal.
    assert_eq!(web.landed(), ["b3.bin", "good.bin"]);
}

#[test]
fn a_404_is_reported_once_and_fails_the_run_while_the_rest_lands() {
    let web = Web::new();
    let here = write_file(&web.root.join("here.bin"), 10_000, 8);
    let base = &web.nginx.http;
    web.input(&[format!("{base}/missing.bin"), format!("{base}/here.bin")]);
    let out = web.once(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing.bin") && err.contains("404"), "{err}");
    assert_eq!(hash_file(&web.out("here.bin")), here);
    let asked = web
        .nginx
        .requests()
        .iter()
        .filter(|(_, _, r)| r.contains("missing.bin"))
        .count();
    assert_eq!(asked, 1, "a 404 is not retried in --once");
}

#[test]
fn https_with_a_private_ca_given_by_cacert_and_refused_without() {
    let web = Web::new();
    let want = write_file(&web.root.join("s p.bin"), 3 * MIB, 9);
    let sha = sha256_hex(&web.root.join("s p.bin"));
    let base = &web.nginx.https;
    web.input(&[format!("{base}/s%20p.bin sha256={sha}")]);
    let refused = web.once(&["--retries", "1"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(!web.out("s p.bin").exists());
    let ca = web.nginx.pki.ca.display().to_string();
    let out = web.once(&["--cacert", &ca]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(hash_file(&web.out("s p.bin")), want);

    // Over https too, a wrong digest lands nothing.
    write_file(&web.root.join("t.bin"), MIB + 1, 10);
    web.input(&[format!("{base}/t.bin sha256={}", "0".repeat(64))]);
    let out = web.once(&["--cacert", &ca, "--retries", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(web.landed(), ["s p.bin"]);

    // A redirect from https to plain http is refused: the user chose TLS.
    // The same file by its http URL, given in the input, lands.
    let small = write_file(&web.root.join("u.bin"), 1000, 11);
    web.input(&[format!("{base}/tohttp/u.bin")]);
    let out = web.once(&["--cacert", &ca]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(web.landed(), ["s p.bin"]);
    web.input(&[format!("{}/tohttp/u.bin", web.nginx.http)]);
    let out = web.once(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(hash_file(&web.out("u.bin")), small);
}

#[test]
fn a_file_changed_on_the_server_mid_download_starts_over_and_is_never_mixed() {
    let web = Web::new();
    let path = web.root.join("moving.bin");
    write_file(&path, 12 * MIB, 10);
    web.input(&[format!("{}/moving.bin", web.nginx.http)]);
    let mut running = Running::spawn(client(NO_SERVER, &web.work).args([
        "--once",
        "--limit-rate",
        "4M",
        "--retry-wait",
        "1",
    ]));
    // Some pieces of the first version have landed.
    let journal = web.work.join("data/.moving.bin.fastdl-journal");
    wait_until(
        Duration::from_secs(30),
        "a journal of the first version",
        || journal.exists(),
    );
    // A new version, put in place as an editor or a deploy would.
    let staged = web.root.join(".moving.tmp");
    let newer = write_file(&staged, 12 * MIB, 11);
    fs::rename(&staged, &path).unwrap();
    let status = running
        .wait_exit(Duration::from_secs(60))
        .expect("the client finishes");
    assert!(status.success(), "exit {status:?}");
    assert_eq!(
        hash_file(&web.out("moving.bin")),
        newer,
        "the new version, whole"
    );
    assert_eq!(web.landed(), ["moving.bin"]);
    // The change was seen mid-download: a range asked with If-Range was
    // answered with the whole new file (200) and dropped.
    let refused_range = web
        .nginx
        .requests()
        .iter()
        .any(|(status, _, r)| *status == 200 && r.starts_with("\"bytes="));
    assert!(refused_range, "{:?}", web.nginx.requests());
}

#[test]
fn kill_9_then_resume_fetches_only_what_is_missing() {
    let web = Web::new();
    let want = write_file(&web.root.join("r.bin"), 24 * MIB, 12);
    web.input(&[format!("{}/r.bin", web.nginx.http)]);
    let mut first =
        Running::spawn(client(NO_SERVER, &web.work).args(["--once", "--limit-rate", "4M"]));
    let journal = web.work.join("data/.r.bin.fastdl-journal");
    // At least 6 pieces recorded as complete.
    wait_until(Duration::from_secs(30), "six pieces in the journal", || {
        fs::read_to_string(&journal)
            .ok()
            .and_then(|j| {
                j.lines()
                    .find_map(|l| l.strip_prefix("kept ").map(|k| k.split(',').count()))
            })
            .is_some_and(|kept| kept >= 6)
    });
    first.signal(Signal::KILL);
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    let before: u64 = web.nginx.requests().iter().map(|(_, b, _)| b).sum();
    let out = web.once(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(hash_file(&web.out("r.bin")), want);
    let after: u64 = web.nginx.requests().iter().map(|(_, b, _)| b).sum();
    let second = after - before;
    // The second run fetched the missing pieces and its probe (one piece),
    // not the whole file again.
    assert!(
        second <= (24 - 6 + 1) as u64 * MIB as u64,
        "the second run fetched {second} bytes"
    );
    assert_eq!(web.landed(), ["r.bin"]);
}

#[test]
fn connections_are_kept_alive_across_files_and_pieces() {
    let web = Web::new();
    let base = &web.nginx.http;
    let mut lines = Vec::new();
    let mut want = Vec::new();
    for i in 0..40 {
        let name = format!("f{i:02}.bin");
        want.push((
            name.clone(),
            write_file(&web.root.join(&name), 50_000 + i, i as u64),
        ));
        lines.push(format!("{base}/{name}"));
    }
    let big = write_file(&web.root.join("big.bin"), 8 * MIB, 99);
    lines.push(format!("{base}/big.bin"));
    web.input(&lines);
    let out = web.once(&["--jobs", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (name, hash) in &want {
        assert_eq!(&hash_file(&web.out(name)), hash, "{name}");
    }
    assert_eq!(hash_file(&web.out("big.bin")), big);
    // 49 requests (41 probes, 8 more pieces) over at most one connection
    // per probe thread (--jobs) and one per download connection: every
    // answer read to its end gives its connection back for the next.
    let requests = web.nginx.requests().len();
    assert!(requests >= 48, "{requests} requests");
    let connections = web.nginx.connections();
    assert!(
        connections <= 4 + 4,
        "{connections} connections for {requests} requests"
    );
}
