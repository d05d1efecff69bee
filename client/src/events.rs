//! `--json`: the run as a stream of events for scripts, one JSON object
//! per line on stdout (log lines stay on stderr and in `--log`). Every
//! object has `"event"` and `"time"` (seconds since the Unix epoch, with
//! fractions); the rest depends on the event:
//!
//! | event | when | fields |
//! | --- | --- | --- |
//! | `queued` | a new line of the input file is taken | `line`, `kind` (`name` or `url`) |
//! | `started` | an attempt at it begins | `line`, `name` (the file's name), `size`, `attempt` |
//! | `progress` | every second, per file in progress | `name`, `bytes` (present so far), `size` |
//! | `done` | it landed verified, or an identical file was there | `line`, `name`, `path`, `size`, `digest` (`{"algo", "hex"}`, or null when none was given or announced: see the HTTP section of the README), `already` |
//! | `failed` | an attempt failed | `line`, `reason`, `retry_in` (seconds; null: given up) |
//!
//! Lines are written whole (one write each) and flushed at once, so a
//! reader sees each event as it happens. A closed stdout is not an error
//! (a script that stopped reading does not stop the downloads).

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::download::outcome::{hex, Check};

/// Where events go: stdout with `--json`, nowhere otherwise.
#[derive(Debug)]
pub struct Events {
    on: bool,
}

impl Events {
    pub fn new(on: bool) -> Events {
        Events { on }
    }

    /// Whether events are written (`--json`).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Where text for the user goes (the server's list at start): stdout,
    /// or stderr when stdout carries events.
    pub fn text_out(&self) -> Box<dyn Write> {
        if self.on {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        }
    }

    fn emit(&self, event: &str, mut fields: Value) {
        if !self.on {
            return;
        }
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if let Value::Object(map) = &mut fields {
            map.insert("event".into(), event.into());
            map.insert("time".into(), json!((time * 1000.0).round() / 1000.0));
        }
        let mut line = fields.to_string();
        line.push('\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }

    pub fn queued(&self, line: &str, is_url: bool) {
        let kind = if is_url { "url" } else { "name" };
        self.emit("queued", json!({ "line": line, "kind": kind }));
    }

    pub fn started(&self, line: &str, name: &str, size: u64, attempt: u32) {
        self.emit(
            "started",
            json!({ "line": line, "name": name, "size": size, "attempt": attempt }),
        );
    }

    pub fn progress(&self, name: &str, bytes: u64, size: u64) {
        self.emit(
            "progress",
            json!({ "name": name, "bytes": bytes, "size": size }),
        );
    }

    /// `check`: what the file was verified against (none: size and
    /// validators only).
    pub fn done(
        &self,
        line: &str,
        name: &str,
        path: &Path,
        size: u64,
        check: Option<&Check>,
        already: bool,
    ) {
        let digest = check.map(|c| json!({ "algo": c.algo.as_str(), "hex": hex(&c.want) }));
        self.emit(
            "done",
            json!({
                "line": line,
                "name": name,
                "path": path.to_string_lossy(),
                "size": size,
                "digest": digest,
                "already": already,
            }),
        );
    }

    /// `retry_in`: seconds until the next attempt; `None`: given up.
    pub fn failed(&self, line: &str, reason: &str, retry_in: Option<f64>) {
        self.emit(
            "failed",
            json!({ "line": line, "reason": reason, "retry_in": retry_in }),
        );
    }
}
