//! Running as a service: options from the environment, a stop by SIGTERM
//! without a terminal (as systemd stops a unit), the log file reopened on
//! SIGHUP (logrotate), and the completions and man page generated from
//! the options.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{assert_exit, Env, WATCH_DEADLINE};
use fastdl_testkit::{command, hash_file, run_with_deadline, wait_until, write_file, Running};
use rustix::process::Signal;

const MIB: usize = 1 << 20;

/// A systemd-like start: no terminal anywhere, options from the
/// environment only.
fn supervised(env: &Env, server: &str) -> Command {
    let mut cmd = command("fastdl-client");
    cmd.current_dir(&env.work)
        .env("FASTDL_SERVER", server)
        .env("FASTDL_INPUT", env.input_path())
        .env("FASTDL_OUT", &env.out)
        .env("FASTDL_LOG", env.work.join("client.log"))
        .env("FASTDL_KNOWN_SERVERS", env.work.join("known_servers"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn every_option_can_come_from_the_environment() {
    let env = Env::new();
    let want = write_file(&env.res.join("e.bin"), 3 * MIB, 1);
    let server = env.server(&[]);
    env.write_input(&["e.bin"]);
    let out = run_with_deadline(
        supervised(&env, &server.url())
            .env("FASTDL_ONCE", "1")
            .env("FASTDL_CONNECTIONS", "2"),
        Duration::from_secs(30),
    );
    assert_exit(&out, 0, &env);
    assert_eq!(hash_file(&env.out.join("e.bin")), want);
    // A bad value is refused by name, as on the command line.
    let out = run_with_deadline(
        supervised(&env, &server.url()).env("FASTDL_CONNECTIONS", "0"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connections"));
}

#[test]
fn sigterm_without_a_terminal_stops_cleanly_and_keeps_the_part_file() {
    let env = Env::new();
    write_file(&env.res.join("slow.bin"), 16 * MIB, 2);
    let server = env.server(&[]);
    env.write_input(&["slow.bin"]);
    // Its stderr is kept (a few lines: the pipe cannot fill).
    let child = supervised(&env, &server.url())
        .args(["--limit-rate", "2M"])
        .spawn()
        .expect("start fastdl-client");
    let mut running = Running { child };
    let journal = env.out.join(".slow.bin.fastdl-journal");
    wait_until(WATCH_DEADLINE, "some pieces journaled", || journal.exists());
    running.signal(Signal::TERM);
    let status = running
        .wait_exit(Duration::from_secs(2))
        .expect("the client stops within 2 s of SIGTERM");
    // Watch mode: a requested stop is a clean exit.
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        env.out.join(".slow.bin.fastdl-part").exists(),
        "part file kept"
    );
    assert!(journal.exists(), "journal kept");
    assert!(!env.out.join("slow.bin").exists());
    // No progress bars without a terminal: stderr holds log lines only.
    let mut stderr = String::new();
    use std::io::Read;
    running
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !stderr.contains('\r') && !stderr.contains("\x1b["),
        "{stderr:?}"
    );
}

#[test]
fn sighup_reopens_the_log_file() {
    let env = Env::new();
    write_file(&env.res.join("a.bin"), 1000, 3);
    write_file(&env.res.join("b.bin"), 1000, 4);
    let server = env.server(&[]);
    env.write_input(&["a.bin"]);
    let mut running = Running::spawn(&mut supervised(&env, &server.url()));
    let log = env.work.join("client.log");
    let rotated = env.work.join("client.log.1");
    wait_until(WATCH_DEADLINE, "a.bin to land", || {
        env.out.join("a.bin").exists()
    });
    // What logrotate does: move the file away, then SIGHUP.
    fs::rename(&log, &rotated).unwrap();
    running.signal(Signal::HUP);
    wait_until(WATCH_DEADLINE, "a new log file", || log.exists());
    env.write_input(&["a.bin", "b.bin"]);
    wait_until(WATCH_DEADLINE, "b.bin to land", || {
        env.out.join("b.bin").exists()
    });
    wait_until(WATCH_DEADLINE, "b.bin's line in the new log", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("b.bin: done")
    });
    let old = fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("a.bin: done") && !old.contains("b.bin"),
        "{old}"
    );
    // SIGHUP did not stop it.
    assert!(running.child.try_wait().unwrap().is_none(), "still running");
    running.signal(Signal::TERM);
    running.wait_exit(Duration::from_secs(2)).expect("stops");
}

/// The completion function a bash completion script registers for `name`.
fn completion_reply(script: &std::path::Path, name: &str, partial: &str) -> String {
    let program = format!(
        "source {script}\n\
         function=$(complete -p {name} | sed -E 's/.* -F ([^ ]+) .*/\\1/')\n\
         COMP_WORDS=({name} {partial}); COMP_CWORD=1\n\
         COMP_LINE=\"{name} {partial}\"; COMP_POINT=${{#COMP_LINE}}\n\
         \"$function\" {name} {partial} {name}\n\
         echo \"${{COMPREPLY[@]}}\"",
        script = script.display()
    );
    let out = Command::new("bash")
        .args(["-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn completions_parse_and_complete_a_flag_and_man_pages_render() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, partial, want) in [
        ("fastdl-client", "--conn", "--connections"),
        ("fastdl-server", "--http-p", "--http-port"),
    ] {
        let bash = run_with_deadline(
            command(name).args(["--completions", "bash"]),
            Duration::from_secs(10),
        );
        assert!(bash.status.success());
        let script = tmp.path().join(format!("{name}.bash"));
        fs::write(&script, &bash.stdout).unwrap();
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        assert!(syntax.success(), "bash -n {name}.bash");
        assert_eq!(completion_reply(&script, name, partial), want);
        for shell in ["zsh", "fish"] {
            let out = run_with_deadline(
                command(name).args(["--completions", shell]),
                Duration::from_secs(10),
            );
            assert!(
                out.status.success() && out.stdout.len() > 500,
                "{name} {shell}"
            );
        }

        let man = run_with_deadline(command(name).arg("--man"), Duration::from_secs(10));
        assert!(man.status.success());
        let page = tmp.path().join(format!("{name}.1"));
        fs::write(&page, &man.stdout).unwrap();
        let rendered = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man (apt-get install man-db)");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        assert!(text.contains("NAME") && text.contains("--log"), "{text}");
    }
}

#[test]
fn json_events_describe_a_small_run_line_by_line() {
    let env = Env::new();
    let big = write_file(&env.res.join("big.bin"), 3 * MIB, 5);
    let small = write_file(&env.res.join("small.bin"), 1000, 6);
    let server = env.server(&[]);
    env.write_input(&["big.bin", "small.bin", "missing.bin"]);
    // Slow enough for progress events (one a second).
    let out = run_with_deadline(
        supervised(&env, &server.url()).args(["--once", "--json", "--limit-rate", "1500K"]),
        Duration::from_secs(30),
    );
    assert_exit(&out, 1, &env);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let of = |kind: &str, line: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["event"] == kind && (e["line"] == line || e["name"] == line))
            .collect()
    };
    for name in ["big.bin", "small.bin", "missing.bin"] {
        assert_eq!(of("queued", name).len(), 1, "{name}: {stdout}");
        assert_eq!(of("queued", name)[0]["kind"], "name");
    }
    for (name, digest, size) in [("big.bin", &big, 3 * MIB), ("small.bin", &small, 1000)] {
        assert_eq!(of("started", name).len(), 1, "{name}: {stdout}");
        let done = of("done", name);
        assert_eq!(done.len(), 1, "{name}: {stdout}");
        assert_eq!(done[0]["size"], size as u64);
        assert_eq!(done[0]["digest"]["algo"], "blake3");
        assert_eq!(done[0]["digest"]["hex"], digest.as_str());
        assert_eq!(done[0]["already"], false);
        let path = done[0]["path"].as_str().unwrap();
        assert_eq!(&hash_file(std::path::Path::new(path)), digest);
    }
    let progress = of("progress", "big.bin");
    assert!(!progress.is_empty(), "{stdout}");
    for p in &progress {
        assert!(p["bytes"].as_u64().unwrap() <= 3 * MIB as u64);
        assert_eq!(p["size"], 3 * MIB as u64);
    }
    let failed = of("failed", "missing.bin");
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(failed[0]["retry_in"].is_null());
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("not"),
        "{stdout}"
    );
    // Every event has a time, and they come in order.
    let times: Vec<f64> = events.iter().map(|e| e["time"].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The server's list went to stderr, not into the events.
    assert!(String::from_utf8_lossy(&out.stderr).contains("files on the server"));
}
