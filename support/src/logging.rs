//! Logging to the terminal (stderr) and to a log file, through `log`
//! (`simplelog` writes the lines).
//!
//! A binary that draws progress bars wraps the logger [`build`] makes in
//! `indicatif-log-bridge`, so that log lines are printed above the bars
//! instead of through them; the others call [`init`].
//!
//! The log file is reopened by name after [`reopen`] (called on SIGHUP,
//! see `signals`): logrotate's convention, so that a rotated log is let go
//! and a new one started without a restart. The reopen happens at the next
//! line, which [`reopen`] writes at once.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, Config, ConfigBuilder, SharedLogger, TermLogger, TerminalMode,
    WriteLogger,
};

fn config() -> Config {
    ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .add_filter_allow_str("fastdl")
        .build()
}

/// The terminal level for `-q` and `-v` counts: warn, info, debug, trace.
pub fn level(quiet: bool, verbose: u8) -> LevelFilter {
    match (quiet, verbose) {
        (true, _) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Starts logging at `level` to the terminal and, appending, to `file`
/// (which always gets at least info).
pub fn init(level: LevelFilter, file: &Path) -> Result<()> {
    let (logger, max) = build(level, file)?;
    log::set_boxed_logger(logger).context("cannot start logging")?;
    log::set_max_level(max);
    Ok(())
}

/// Set by [`reopen`]; the log file's writer reopens its file at its next
/// write.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks for the log file to be reopened by its name (after logrotate moved
/// it away), and logs a line so that it happens now.
pub fn reopen() {
    REOPEN.store(true, Ordering::SeqCst);
    log::info!("log file reopened (SIGHUP)");
}

/// The log file, reopened by name when [`reopen`] asked for it. simplelog
/// writes a record in several pieces; they are gathered here and the
/// record goes out in one write at its newline (one syscall per line, and
/// the logger's lock held that long: with thousands of files a line is
/// logged from several threads at once; `LineWriter` made it two writes).
struct LogFile {
    path: PathBuf,
    file: File,
    /// The record being gathered. The file is switched only between
    /// records, when this is empty.
    line: Vec<u8>,
}

/// A record longer than this goes out without waiting for its newline.
const MAX_GATHERED: usize = 64 * 1024;

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.line.is_empty() && REOPEN.swap(false, Ordering::SeqCst) {
            match open_log(&self.path) {
                Ok(file) => self.file = file,
                // Keep writing where we did: losing the log is worse.
                Err(e) => eprintln!("cannot reopen log file {}: {e}", self.path.display()),
            }
        }
        self.line.extend_from_slice(buf);
        if buf.ends_with(b"\n") || self.line.len() > MAX_GATHERED {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            let written = self.file.write_all(&self.line);
            self.line.clear();
            written?;
        }
        Ok(())
    }
}

/// The logger [`init`] installs, not installed yet, and the most detailed
/// level it logs (for `log::set_max_level`).
pub fn build(level: LevelFilter, file: &Path) -> Result<(Box<dyn log::Log>, LevelFilter)> {
    let log_file =
        open_log(file).with_context(|| format!("cannot open log file {}", file.display()))?;
    // termcolor's Auto looks only at TERM, so ask whether stderr is a terminal.
    let colors = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let term: Box<dyn SharedLogger> =
        TermLogger::new(level, config(), TerminalMode::Stderr, colors);
    let combined = CombinedLogger::new(vec![
        term,
        // One write per record (see LogFile).
        WriteLogger::new(
            level.max(LevelFilter::Info),
            config(),
            LogFile {
                path: file.to_path_buf(),
                file: log_file,
                line: Vec::new(),
            },
        ),
    ]);
    let max = combined.level();
    Ok((combined, max))
}
