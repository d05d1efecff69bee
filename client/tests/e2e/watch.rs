//! The real `fastdl-client` in watch mode against the real `fastdl-server`:
//! names appended to input.txt, input.txt replaced by rename, names the
//! server lists only later, and Ctrl-C in the middle of a download.

use std::fs;
use std::time::{Duration, Instant};

use crate::helpers::{assert_exit, tree, Env, WATCH_DEADLINE};
use fastdl_testkit::{client, hash_file, visible_files, wait_until, write_file, Running};
use rustix::process::Signal;

/// How long a watch-mode client may take to stop after Ctrl-C.
const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// Sends Ctrl-C and checks the client stops promptly with status 0.
fn stop(client: &mut Running, env: &Env) {
    client.signal(Signal::INT);
    let status = client.wait_exit(STOP_DEADLINE);
    assert!(
        status.is_some(),
        "the client did not stop within {STOP_DEADLINE:?} of Ctrl-C; log:\n{}",
        env.log()
    );
    assert!(status.unwrap().success(), "exit status {status:?}");
}

#[test]
fn names_appended_to_input_are_downloaded() {
    let env = Env::new();
    let a = write_file(&env.res.join("a.bin"), 500_000, 1);
    let b = write_file(&env.res.join("b c.bin"), 1_300_000, 2);
    let server = env.server(&[]);
    // A long --poll: input.txt must be noticed through file-system events.
    let mut watcher = Running::spawn(client(&server.url(), &env.work).args(["--poll", "60"]));

    // input.txt does not exist yet: it is waited for.
    wait_until(
        WATCH_DEADLINE,
        "the missing input.txt to be reported",
        || env.log().contains("does not exist (yet)"),
    );
    env.write_input(&["a.bin"]);
    env.wait_for_download("a.bin", &a);
    env.append_input("b c.bin");
    env.wait_for_download("b c.bin", &b);
    let text = fs::read(env.input_path()).unwrap();
    stop(&mut watcher, &env);
    assert_eq!(
        fs::read(env.input_path()).unwrap(),
        text,
        "input.txt changed"
    );
    assert_eq!(text, b"a.bin\nb c.bin\n");
    assert_eq!(visible_files(&env.out), ["a.bin", "b c.bin"]);
}

#[test]
fn input_replaced_by_rename_is_picked_up() {
    let env = Env::new();
    let a = write_file(&env.res.join("a.bin"), 200_000, 3);
    let b = write_file(&env.res.join("b.bin"), 200_000, 4);
    let c = write_file(&env.res.join("sub/c.bin"), 200_000, 5);
    let server = env.server(&[]);
    env.write_input(&["a.bin"]);
    let mut watcher = Running::spawn(client(&server.url(), &env.work).args(["--poll", "60"]));

    env.wait_for_download("a.bin", &a);
    env.replace_input(&["a.bin", "b.bin"]);
    env.wait_for_download("b.bin", &b);
    // Still watched after the first rename replaced the file.
    env.replace_input(&["a.bin", "b.bin", "sub/c.bin"]);
    env.wait_for_download("sub/c.bin", &c);
    stop(&mut watcher, &env);
    assert_eq!(
        fs::read_to_string(env.input_path()).unwrap(),
        "a.bin\nb.bin\nsub/c.bin\n"
    );
    assert_eq!(visible_files(&env.out), ["a.bin", "b.bin", "sub"]);
}

#[test]
fn a_name_the_server_lists_later_is_downloaded_then() {
    let env = Env::new();
    let early = write_file(&env.res.join("early.bin"), 1000, 6);
    let server = env.server(&["--rescan", "1"]);
    env.write_input(&["late.bin", "early.bin"]);
    let mut watcher = Running::spawn(client(&server.url(), &env.work).args(["--poll", "1"]));

    env.wait_for_download("early.bin", &early);
    wait_until(
        WATCH_DEADLINE,
        "late.bin to be reported as unlisted",
        || env.log().contains("late.bin: not listed by the server"),
    );
    assert!(!env.out_path("late.bin").exists());

    // Put it in place whole (a hidden temporary, then a rename), as the
    // server would otherwise list a half-written file.
    let hidden = env.res.join(".late.bin.tmp");
    let late = write_file(&hidden, 700_000, 7);
    fs::rename(&hidden, env.res.join("late.bin")).unwrap();
    env.wait_for_download("late.bin", &late);
    stop(&mut watcher, &env);

    let reports = env
        .log()
        .lines()
        .filter(|l| l.contains("late.bin: not listed by the server"))
        .count();
    assert_eq!(reports, 1, "reported more than once:\n{}", env.log());
    assert_eq!(visible_files(&env.out), ["early.bin", "late.bin"]);
}

/// The server tells watching clients when its list changes: a name that
/// waits for its file lands as soon as the server lists it, long before
/// the next poll.
#[test]
fn a_name_the_server_lists_later_lands_before_the_next_poll() {
    let env = Env::new();
    let server = env.server(&[]);
    env.write_input(&["later.bin"]);
    let mut watcher = Running::spawn(client(&server.url(), &env.work).args(["--poll", "60"]));
    wait_until(
        WATCH_DEADLINE,
        "later.bin to be reported as unlisted",
        || env.log().contains("later.bin: not listed by the server"),
    );
    let hidden = env.res.join(".later.bin.tmp");
    let want = write_file(&hidden, 300_000, 8);
    let published = Instant::now();
    fs::rename(&hidden, env.res.join("later.bin")).unwrap();
    // The poll is 60 s away; the server sees the file at once (file-system
    // events) and tells the client.
    wait_until(Duration::from_secs(15), "later.bin to land", || {
        env.out_path("later.bin").exists()
    });
    let took = published.elapsed();
    assert_eq!(hash_file(&env.out_path("later.bin")), want);
    stop(&mut watcher, &env);
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn ctrl_c_during_a_slow_download_stops_promptly_and_keeps_the_part_file() {
    let env = Env::new();
    let digest = write_file(&env.res.join("slow.bin"), 20 << 20, 8);
    let server = env.server(&[]);
    env.write_input(&["slow.bin"]);
    let mut watcher = Running::spawn(client(&server.url(), &env.work).args(["--limit-rate", "1M"]));

    let part = env.out.join(".slow.bin.fastdl-part");
    // The part file exists from the moment the download starts.
    wait_until(WATCH_DEADLINE, "the download to start", || part.exists());
    let start = Instant::now();
    stop(&mut watcher, &env);
    let took = start.elapsed();
    assert!(took <= STOP_DEADLINE, "took {took:?}");
    assert!(part.exists(), "the part file is gone");
    assert!(!env.out_path("slow.bin").exists(), "unverified file landed");
    assert!(visible_files(&env.out).is_empty());

    // The next run finishes it and leaves no hidden file behind.
    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("slow.bin")), digest);
    assert_eq!(tree(&env.out), ["slow.bin"]);
}

#[test]
fn a_messy_input_file_truncated_deleted_and_recreated() {
    let env = Env::new();
    let one = write_file(&env.res.join("one.bin"), 10_000, 11);
    let two = write_file(&env.res.join("two words.bin"), 20_000, 12);
    let three = write_file(&env.res.join("three.bin"), 30_000, 13);
    let four = write_file(&env.res.join("four.bin"), 40_000, 14);
    let server = env.server(&[]);
    // BOM, CRLF, comments, blank lines, trailing spaces, duplicates, binary
    // garbage and 100,000 unknown names around the one real name.
    let mut messy = b"\xef\xbb\xbf# comment\r\n\r\n   one.bin   \r\none.bin\n".to_vec();
    messy.extend_from_slice(b"\x00\xff\xfe garbage \x01\x02\n");
    for i in 0..100_000 {
        messy.extend_from_slice(format!("no-such-file-{i}\n").as_bytes());
    }
    fs::write(env.input_path(), &messy).unwrap();
    let mut watcher = Running::spawn(client(&server.url(), &env.work).args(["--poll", "1"]));
    env.wait_for_download("one.bin", &one);
    assert_eq!(
        fs::read(env.input_path()).unwrap(),
        messy,
        "input.txt changed"
    );

    // Truncated and rewritten in place.
    fs::write(env.input_path(), "two words.bin\n").unwrap();
    env.wait_for_download("two words.bin", &two);
    // Deleted, then created again.
    fs::remove_file(env.input_path()).unwrap();
    fs::write(env.input_path(), "three.bin\n").unwrap();
    env.wait_for_download("three.bin", &three);
    // Deleted and created again after a while.
    fs::remove_file(env.input_path()).unwrap();
    wait_until(
        WATCH_DEADLINE,
        "the missing input.txt to be reported",
        || env.log().contains("does not exist (yet)"),
    );
    fs::write(env.input_path(), "four.bin\n").unwrap();
    env.wait_for_download("four.bin", &four);
    stop(&mut watcher, &env);
    assert_eq!(fs::read(env.input_path()).unwrap(), b"four.bin\n");
    assert_eq!(
        visible_files(&env.out),
        ["four.bin", "one.bin", "three.bin", "two words.bin"]
    );
}
