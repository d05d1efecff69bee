//! Shared set-up for the client's end-to-end tests: one temporary folder
//! per test holding the server's resources (`res/`), the server's own files
//! (`srv/`) and the client's work folder (`work/`: input.txt, client.log,
//! and the output folder `data/`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use fastdl_testkit::{client, hash_file, run_with_deadline, wait_until, Server, DEADLINE};
use tempfile::TempDir;

/// How long a watch-mode condition may take before the test fails.
pub const WATCH_DEADLINE: Duration = Duration::from_secs(30);

pub struct Env {
    pub tmp: TempDir,
    /// The folder the server publishes.
    pub res: PathBuf,
    /// Where the server keeps its list and log.
    pub srv: PathBuf,
    /// The client's work folder (input.txt, client.log, data/).
    pub work: PathBuf,
    /// The client's output folder, `work/data`.
    pub out: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp folder");
        let res = tmp.path().join("res");
        let srv = tmp.path().join("srv");
        let work = tmp.path().join("work");
        fs::create_dir_all(&res).unwrap();
        fs::create_dir_all(&srv).unwrap();
        fs::create_dir_all(&work).unwrap();
        let out = work.join("data");
        Env {
            tmp,
            res,
            srv,
            work,
            out,
        }
    }

    /// Starts a server publishing `res/`.
    pub fn server(&self, extra: &[&str]) -> Server {
        Server::start(&self.res, &self.srv, extra)
    }

    pub fn input_path(&self) -> PathBuf {
        self.work.join("input.txt")
    }

    /// Writes input.txt with one name per line.
    pub fn write_input(&self, names: &[&str]) {
        fs::write(self.input_path(), input_text(names)).unwrap();
    }

    /// Appends one name to input.txt (as `echo NAME >> input.txt` would).
    pub fn append_input(&self, name: &str) {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(self.input_path())
            .unwrap();
        file.write_all(format!("{name}\n").as_bytes()).unwrap();
    }

    /// Replaces input.txt the way editors do: a temporary file renamed over it.
    pub fn replace_input(&self, names: &[&str]) {
        let tmp = self.work.join(".input.txt.swp");
        fs::write(&tmp, input_text(names)).unwrap();
        fs::rename(&tmp, self.input_path()).unwrap();
    }

    /// Runs `fastdl-client --once` (plus `extra`) to completion and checks
    /// it left input.txt byte for byte as it was.
    pub fn once(&self, server: &str, extra: &[&str]) -> Output {
        let before = fs::read(self.input_path()).ok();
        let output = run_with_deadline(
            client(server, &self.work).arg("--once").args(extra),
            DEADLINE,
        );
        assert_eq!(
            fs::read(self.input_path()).ok(),
            before,
            "the client changed input.txt"
        );
        output
    }

    /// The client's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.work.join("client.log")).unwrap_or_default()
    }

    /// Where a name lands in the output folder.
    pub fn out_path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// Waits until `name` is in the output folder, then checks its digest.
    pub fn wait_for_download(&self, name: &str, digest: &str) {
        let path = self.out_path(name);
        wait_until(WATCH_DEADLINE, &format!("{name} to be downloaded"), || {
            path.exists()
        });
        assert_eq!(hash_file(&path), digest, "{name}: wrong bytes");
    }
}

pub fn input_text(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n}\n")).collect()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the client exited with `code`, showing its output if not.
pub fn assert_exit(output: &Output, code: i32, env: &Env) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "unexpected exit status {}\n--- stdout:\n{}\n--- stderr:\n{}\n--- log:\n{}",
        output.status,
        stdout(output),
        stderr(output),
        env.log()
    );
}

/// Every path under `dir` (hidden ones too), relative and sorted; folders end in `/`.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if entry.file_type().unwrap().is_dir() {
                found.push(format!("{rel}/"));
                walk(root, &path, found);
            } else {
                found.push(rel);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found.sort();
    found
}
