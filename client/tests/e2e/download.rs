//! The real `fastdl-client` in `--once` mode against the real
//! `fastdl-server`: sizes and names, exit codes, the existing-file rules,
//! path tricks, several clients at once, `--limit-rate`, and a dead server.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime};

use crate::helpers::{assert_exit, stderr, stdout, tree, Env};
use fastdl_testkit::{
    client, hash_file, run_with_deadline, visible_files, wait_until, write_file, DEADLINE,
};

#[test]
fn odd_sizes_and_names_arrive_intact() {
    let env = Env::new();
    // A name as long as a file name may be: its part file needs a shortened name.
    let long = format!("{}.bin", "l".repeat(251));
    let files: [(&str, usize); 7] = [
        ("empty.bin", 0),
        ("one.bin", 1),
        ("odd size.bin", 1_234_567),
        ("with spaces in the name.txt", 4096),
        ("ünïcødé 文件.bin", 70_001),
        ("sub/deeper/x.bin", 300_000),
        (&long, 2_100_000),
    ];
    let digests: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, (name, len))| write_file(&env.res.join(name), *len, i as u64 + 1))
        .collect();
    let server = env.server(&[]);
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    env.write_input(&names);

    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 0, &env);

    for ((name, len), digest) in files.iter().zip(&digests) {
        let path = env.out_path(name);
        assert_eq!(fs::metadata(&path).unwrap().len(), *len as u64, "{name}");
        assert_eq!(&hash_file(&path), digest, "{name}: wrong bytes");
    }
    // The server's list is printed as "N) name  size" lines.
    let listed = stdout(&output);
    for name in &names {
        assert!(
            listed.lines().any(|l| l.contains(&format!(") {name}  "))),
            "{name} missing from the printed list:\n{listed}"
        );
    }
    // Nothing but the downloads (no part files, no numbered copies).
    let mut want: Vec<String> = vec![
        "empty.bin".into(),
        long.clone(),
        "odd size.bin".into(),
        "one.bin".into(),
        "sub/".into(),
        "sub/deeper/".into(),
        "sub/deeper/x.bin".into(),
        "with spaces in the name.txt".into(),
        "ünïcødé 文件.bin".into(),
    ];
    want.sort();
    assert_eq!(tree(&env.out), want);
}

#[test]
fn a_100_mib_file_arrives_intact() {
    let env = Env::new();
    let digest = write_file(&env.res.join("big.bin"), 100 << 20, 7);
    let server = env.server(&[]);
    env.write_input(&["big.bin"]);

    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("big.bin")), digest);
    assert_eq!(tree(&env.out), ["big.bin"]);
}

#[test]
fn once_exits_1_naming_unlisted_names_and_still_downloads_the_rest() {
    let env = Env::new();
    let a = write_file(&env.res.join("a.bin"), 10_000, 1);
    let b = write_file(&env.res.join("b.bin"), 2_000_000, 2);
    let server = env.server(&[]);

    // Everything listed: 0.
    env.write_input(&["a.bin"]);
    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 0, &env);
    assert!(!stderr(&output).contains("failed:"), "{}", stderr(&output));

    // One name the server does not list: 1, that name on stderr, the others done.
    env.write_input(&["# a comment", "", "a.bin", "missing.bin", "b.bin"]);
    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 1, &env);
    let err = stderr(&output);
    assert!(
        err.lines().any(|l| l.starts_with("failed: missing.bin: ")),
        "stderr should name missing.bin:\n{err}"
    );
    assert!(!err.contains("failed: a.bin"), "{err}");
    assert!(!err.contains("failed: b.bin"), "{err}");
    assert_eq!(hash_file(&env.out_path("a.bin")), a);
    assert_eq!(hash_file(&env.out_path("b.bin")), b);
    assert_eq!(tree(&env.out), ["a.bin", "b.bin"]);
}

#[test]
fn same_content_already_in_out_is_left_alone() {
    let env = Env::new();
    let digest = write_file(&env.res.join("f.bin"), 1_500_000, 3);
    let server = env.server(&[]);
    env.write_input(&["f.bin"]);

    // The same bytes are already there, with an old mtime.
    let existing = env.out_path("f.bin");
    assert_eq!(write_file(&existing, 1_500_000, 3), digest);
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&existing)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let inode = fs::metadata(&existing).unwrap().ino();

    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 0, &env);
    let meta = fs::metadata(&existing).unwrap();
    assert_eq!(meta.modified().unwrap(), old, "the file was rewritten");
    assert_eq!(meta.ino(), inode, "the file was replaced");
    assert_eq!(hash_file(&existing), digest);
    assert_eq!(tree(&env.out), ["f.bin"], "no numbered copy, no part file");
    assert!(env.log().contains("already in place"), "{}", env.log());
}

#[test]
fn different_content_in_out_is_kept_and_the_download_numbered() {
    let env = Env::new();
    let served = write_file(&env.res.join("f.bin"), 1_500_000, 4);
    let server = env.server(&[]);
    env.write_input(&["f.bin"]);
    let mine = write_file(&env.out_path("f.bin"), 1_500_000, 99);
    assert_ne!(mine, served);

    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("f.bin")), mine, "original touched");
    assert_eq!(hash_file(&env.out_path("f (1).bin")), served);
    assert_eq!(tree(&env.out), ["f (1).bin", "f.bin"]);
    assert!(
        env.log().contains("kept the new download as"),
        "{}",
        env.log()
    );

    // Again: the numbered copy counts as the download; no "(2)".
    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("f.bin")), mine);
    assert_eq!(hash_file(&env.out_path("f (1).bin")), served);
    assert_eq!(tree(&env.out), ["f (1).bin", "f.bin"]);
}

#[test]
fn path_tricks_are_refused_and_nothing_lands_outside_out() {
    let env = Env::new();
    // Something the tricks could resolve to, were they followed.
    write_file(&env.res.join("x"), 1000, 5);
    let ok = write_file(&env.res.join("ok.bin"), 1000, 6);
    let server = env.server(&[]);
    let tricks = ["../x", "/etc/hostname", "a/../../x", "./x", "a\\..\\x"];
    let mut names = tricks.to_vec();
    names.push("ok.bin");
    env.write_input(&names);
    let hostname = fs::read("/etc/hostname").ok();
    let top_before = tree(env.tmp.path());

    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 1, &env);
    let err = stderr(&output);
    for trick in tricks {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("failed: {trick}: "))),
            "{trick} should be reported as failed:\n{err}"
        );
    }
    assert_eq!(hash_file(&env.out_path("ok.bin")), ok);
    assert_eq!(fs::read("/etc/hostname").ok(), hostname);
    // Only the download, the log, and nothing else was added anywhere.
    let mut want = top_before;
    want.extend(
        [
            "work/client.log",
            "work/data/",
            "work/data/ok.bin",
            "work/known_servers",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    want.sort();
    want.dedup();
    assert_eq!(tree(env.tmp.path()), want);
}

#[test]
fn five_clients_at_once_get_identical_files() {
    let env = Env::new();
    let digest = write_file(&env.res.join("shared.bin"), 20 << 20, 8);
    let server = env.server(&[]);
    let works: Vec<_> = (0..5)
        .map(|i| {
            let work = env.tmp.path().join(format!("client{i}"));
            fs::create_dir_all(&work).unwrap();
            fs::write(work.join("input.txt"), "shared.bin\n").unwrap();
            work
        })
        .collect();
    let url = server.url();
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = works
            .iter()
            .map(|work| {
                let url = &url;
                s.spawn(move || run_with_deadline(client(url, work).arg("--once"), DEADLINE))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (work, output) in works.iter().zip(&outputs) {
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}\n{}",
            work.display(),
            stderr(output),
            fs::read_to_string(work.join("client.log")).unwrap_or_default()
        );
        assert_eq!(hash_file(&work.join("data/shared.bin")), digest);
        assert_eq!(visible_files(&work.join("data")), ["shared.bin"]);
        assert_eq!(fs::read(work.join("input.txt")).unwrap(), b"shared.bin\n");
    }
}

#[test]
fn limit_rate_holds_for_the_whole_client() {
    let env = Env::new();
    // Two files downloaded side by side share one limit.
    let one = write_file(&env.res.join("one.bin"), 3 << 19, 9);
    let two = write_file(&env.res.join("two.bin"), 3 << 19, 10);
    let server = env.server(&[]);
    env.write_input(&["one.bin", "two.bin"]);

    let start = Instant::now();
    let output = env.once(&server.url(), &["--limit-rate", "1M", "--jobs", "2"]);
    let took = start.elapsed();
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("one.bin")), one);
    assert_eq!(hash_file(&env.out_path("two.bin")), two);
    // 3 MiB in all at 1 MiB/s, less one small free burst: well over 2 s.
    // (A lower bound only: a slow machine may take longer.)
    assert!(
        took >= Duration::from_secs(2),
        "3 MiB at --limit-rate 1M took only {took:?}"
    );
}

/// CPU seconds (user + system, all threads) a child used, read from
/// /proc while it is a zombie, just before it is reaped.
fn cpu_seconds_at_exit(child: &mut std::process::Child) -> f64 {
    let stat_path = format!("/proc/{}/stat", child.id());
    let mut ticks = 0u64;
    wait_until(DEADLINE, "the client to exit", || {
        let Ok(stat) = fs::read_to_string(&stat_path) else {
            return false;
        };
        // Fields after the ")" that closes the command name: state is the
        // 1st, utime the 12th, stime the 13th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        fields[0] == "Z"
    });
    child.wait().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

#[test]
fn a_client_waiting_on_the_network_stays_idle() {
    // A --once client whose input is read and whose download is slow must
    // sleep while it waits: a scheduler loop spinning on the closed input
    // channel once burned a whole core for the length of every download.
    let env = Env::new();
    let digest = write_file(&env.res.join("slow.bin"), 3 << 19, 11);
    let server = env.server(&[]);
    env.write_input(&["slow.bin"]);
    let start = Instant::now();
    let mut child = client(&server.url(), &env.work)
        .args(["--once", "--limit-rate", "1M"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cpu = cpu_seconds_at_exit(&mut child);
    let took = start.elapsed();
    assert_eq!(hash_file(&env.out_path("slow.bin")), digest);
    assert!(took >= Duration::from_secs(1), "took only {took:?}");
    assert!(
        cpu < 0.5,
        "the client used {cpu:.2} s of CPU in {took:?} while mostly waiting"
    );
}

#[test]
fn unreachable_server_fails_once_with_a_clear_message() {
    let env = Env::new();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    env.write_input(&["a.bin"]);

    let output = env.once(&dead, &["--retries", "1"]);
    assert_exit(&output, 1, &env);
    let err = stderr(&output);
    assert!(
        err.contains("cannot get the list from server") && err.contains(&dead),
        "unclear message:\n{err}"
    );
    assert!(visible_files(&env.out).is_empty());
}

#[test]
fn missing_input_file_fails_once_with_a_clear_message() {
    let env = Env::new();
    write_file(&env.res.join("a.bin"), 10, 1);
    let server = env.server(&[]);

    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 1, &env);
    let err = stderr(&output);
    assert!(
        err.contains("input.txt") && err.contains("does not exist"),
        "unclear message:\n{err}"
    );
    assert!(!env.input_path().exists(), "the client created input.txt");
}

/// src bug: the numbered name of a long name is not shortened, so it fails
/// with ENAMETOOLONG and the download never lands (see the report).
#[test]

fn different_content_under_a_long_name_is_kept_and_the_download_numbered() {
    let env = Env::new();
    let name = format!("{}.bin", "n".repeat(249));
    let served = write_file(&env.res.join(&name), 5000, 11);
    let server = env.server(&[]);
    env.write_input(&[&name]);
    let mine = write_file(&env.out_path(&name), 5000, 12);

    let output = env.once(&server.url(), &["--retries", "1"]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path(&name)), mine, "original touched");
    let files = visible_files(&env.out);
    assert_eq!(files.len(), 2, "{files:?}");
    let numbered = files.iter().find(|f| **f != name).unwrap();
    assert_eq!(hash_file(&env.out.join(numbered)), served);
}

/// src bug: the part file is opened following symlinks, so a symlink
/// planted at `.NAME.fastdl-part` makes the client overwrite a file outside
/// the output folder and land a symlink under NAME (see the report).
#[test]

fn a_symlink_planted_at_the_part_path_is_not_written_through() {
    let env = Env::new();
    let served = write_file(&env.res.join("f.bin"), 5000, 13);
    let server = env.server(&[]);
    env.write_input(&["f.bin"]);
    let victim = env.tmp.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    fs::create_dir_all(&env.out).unwrap();
    std::os::unix::fs::symlink(&victim, env.out.join(".f.bin.fastdl-part")).unwrap();

    let _ = env.once(&server.url(), &["--retries", "1"]);
    assert_eq!(fs::read(&victim).unwrap(), b"precious", "written through");
    let landed = env.out_path("f.bin");
    if let Ok(meta) = fs::symlink_metadata(&landed) {
        assert!(meta.is_file(), "a symlink landed as f.bin");
        assert_eq!(hash_file(&landed), served);
    }
}

/// Issue 15, break 3: `out/sub` is a symlink to a folder outside the
/// output folder. The file `sub/x.bin`, its part file and its journal must
/// not be written through it: the file fails, clearly, and the folder the
/// link leads to stays empty.
#[test]
fn a_symlinked_folder_inside_out_is_not_written_through() {
    let env = Env::new();
    write_file(&env.res.join("sub/x.bin"), 3_000_000, 21);
    let server = env.server(&[]);
    env.write_input(&["sub/x.bin"]);
    let elsewhere = env.tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(&env.out).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.out.join("sub")).unwrap();

    let output = env.once(&server.url(), &["--retries", "1"]);
    assert_exit(&output, 1, &env);
    assert!(
        stderr(&output).contains("failed: sub/x.bin"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        tree(&elsewhere),
        Vec::<String>::new(),
        "written through the link"
    );
    assert!(fs::symlink_metadata(env.out.join("sub"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Issue 15, break 4's other side: a transfer that is slow because the
/// client itself limits it (`--limit-rate 50K`, a 1 MB file) is steady,
/// and the progress deadline never cuts it.
#[test]
fn a_slow_but_steady_transfer_is_never_cut() {
    let env = Env::new();
    let digest = write_file(&env.res.join("slow.bin"), 1_000_000, 22);
    let server = env.server(&[]);
    env.write_input(&["slow.bin"]);
    let output = env.once(&server.url(), &["--limit-rate", "50K"]);
    assert_exit(&output, 0, &env);
    assert_eq!(hash_file(&env.out_path("slow.bin")), digest);
}

/// Issue 15: a 50 MB line in input.txt, or input.txt linked to
/// /dev/zero, costs a bounded line in the log and on stderr (it is not a
/// name: `--once` fails it), not hundreds of megabytes.
#[test]
fn a_huge_input_line_is_reported_bounded() {
    let env = Env::new();
    let digest = write_file(&env.res.join("ok.bin"), 1000, 30);
    let server = env.server(&[]);
    let mut input = vec![b'x'; 50 << 20];
    input.extend_from_slice(b"\nok.bin\n");
    fs::write(env.input_path(), &input).unwrap();
    let output = env.once(&server.url(), &[]);
    assert_exit(&output, 1, &env);
    assert_eq!(hash_file(&env.out_path("ok.bin")), digest);
    assert!(
        output.stderr.len() < 16 << 10,
        "{} bytes on stderr",
        output.stderr.len()
    );
    assert!(
        env.log().len() < 64 << 10,
        "{} bytes of log",
        env.log().len()
    );

    fs::remove_file(env.input_path()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", env.input_path()).unwrap();
    let output = run_with_deadline(client(&server.url(), &env.work).arg("--once"), DEADLINE);
    assert_exit(&output, 1, &env);
    assert!(
        output.stderr.len() < 16 << 10,
        "{} bytes on stderr",
        output.stderr.len()
    );
    assert!(
        env.log().len() < 64 << 10,
        "{} bytes of log",
        env.log().len()
    );
}
