//! Several servers at once: the majority vote, a server lost
//! mid-file, no majority, and a name only one server holds.

use std::fs;
use std::path::Path;
use std::process::Command;

use fastdl_testkit::{
    client, hash_file, run_with_deadline, visible_files, wait_until, write_file, Server, DEADLINE,
};

const MIB: usize = 1 << 20;

fn with_servers(work: &Path, servers: &[&Server]) -> Command {
    let mut cmd = client(&servers[0].url(), work);
    for s in &servers[1..] {
        cmd.args(["--server", &s.url()]);
    }
    cmd
}

fn log(work: &Path) -> String {
    fs::read_to_string(work.join("client.log")).unwrap_or_default()
}

#[test]
fn the_majority_wins_and_the_dissenter_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let good = write_file(&t.join("a/f.bin"), 5 * MIB + 3, 1);
    write_file(&t.join("b/f.bin"), 5 * MIB + 3, 1);
    write_file(&t.join("c/f.bin"), 5 * MIB + 3, 2); // same size, other bytes
    let (a, b, c) = (
        Server::start(&t.join("a"), &t.join("sa"), &[]),
        Server::start(&t.join("b"), &t.join("sb"), &[]),
        Server::start(&t.join("c"), &t.join("sc"), &[]),
    );
    let work = t.join("w");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "f.bin\n").unwrap();
    let out = run_with_deadline(with_servers(&work, &[&a, &c, &b]).arg("--once"), DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_file(&work.join("data/f.bin")), good);
    let log = log(&work);
    let named = log
        .lines()
        .find(|l| l.contains("not using it for this file"))
        .unwrap_or_else(|| panic!("dissenter not named: {log}"));
    assert!(named.contains(&c.url()), "{named}");
    assert!(named.contains("2 of 3"), "{named}");
    // Pieces came from the two agreeing servers only.
    let split = log
        .lines()
        .find(|l| l.contains("f.bin: pieces by server:"))
        .unwrap_or_else(|| panic!("no split line: {log}"));
    assert!(
        split.contains(&a.url()) && split.contains(&b.url()),
        "{split}"
    );
    assert!(!split.contains(&c.url()), "{split}");
}

#[test]
fn a_server_killed_mid_file_is_dropped_and_the_others_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut want = String::new();
    for dir in ["a", "b", "c"] {
        want = write_file(&t.join(dir).join("g.bin"), 24 * MIB, 3);
    }
    let a = Server::start(&t.join("a"), &t.join("sa"), &[]);
    let mut b = Server::start(&t.join("b"), &t.join("sb"), &[]);
    let c = Server::start(&t.join("c"), &t.join("sc"), &[]);
    let work = t.join("w");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "g.bin\n").unwrap();
    let mut cmd = with_servers(&work, &[&a, &b, &c]);
    cmd.args(["--once", "--limit-rate", "6M", "--connections", "2"]);
    let child = std::thread::spawn(move || run_with_deadline(&mut cmd, DEADLINE));
    // Pieces are spread over the three servers from the start: once some
    // landed (the journal is written), b has been sending.
    let journal = work.join("data/.g.bin.fastdl-journal");
    wait_until(DEADLINE, "some pieces to land", || journal.exists());
    b.kill();
    let out = child.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_file(&work.join("data/g.bin")), want);
}

#[test]
fn two_servers_that_disagree_land_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write_file(&t.join("a/h.bin"), MIB, 4);
    write_file(&t.join("b/h.bin"), MIB, 5);
    let a = Server::start(&t.join("a"), &t.join("sa"), &[]);
    let b = Server::start(&t.join("b"), &t.join("sb"), &[]);
    let work = t.join("w");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "h.bin\n").unwrap();
    let out = run_with_deadline(with_servers(&work, &[&a, &b]).arg("--once"), DEADLINE);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("h.bin") && stderr.contains("no majority"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&a.url()) && stderr.contains(&b.url()),
        "who said what: {stderr}"
    );
    assert!(visible_files(&work.join("data")).is_empty());
    let hidden: Vec<_> = fs::read_dir(work.join("data")).unwrap().collect();
    assert!(hidden.is_empty(), "nothing at all in data/");
}

#[test]
fn a_name_only_one_server_holds_comes_from_it_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write_file(&t.join("a/common.bin"), 1000, 6);
    write_file(&t.join("b/common.bin"), 1000, 6);
    let only = write_file(&t.join("b/only.bin"), 3 * MIB + 1, 7);
    fs::create_dir_all(t.join("c")).unwrap();
    write_file(&t.join("c/common.bin"), 1000, 6);
    let a = Server::start(&t.join("a"), &t.join("sa"), &[]);
    let b = Server::start(&t.join("b"), &t.join("sb"), &[]);
    let c = Server::start(&t.join("c"), &t.join("sc"), &[]);
    let work = t.join("w");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("input.txt"), "only.bin\n").unwrap();
    let out = run_with_deadline(with_servers(&work, &[&a, &b, &c]).arg("--once"), DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_file(&work.join("data/only.bin")), only);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("only.bin") && stdout.contains("on 1 of 3 servers"),
        "{stdout}"
    );
    wait_until(DEADLINE, "server b to log what it served", || {
        b.log_text().contains("only.bin (")
    });
}
