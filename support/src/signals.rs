//! The signals a service gets: SIGINT (Ctrl-C) and SIGTERM (systemd's
//! stop, `kill`) stop the binary as Ctrl-C always did; SIGHUP reopens the
//! log file (logrotate's `postrotate` convention) instead of stopping,
//! unless the binary runs in a terminal: there SIGHUP means the terminal
//! went away, and it stops as for Ctrl-C.
//! One thread waits for them (signal-hook's iterator), so the handlers run
//! as ordinary code, not in a signal context.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Calls `stop` on every SIGINT and SIGTERM, and reopens the log file on
/// SIGHUP, from a thread of its own, for the life of the process.
pub fn handle(stop: impl Fn() + Send + 'static) -> Result<()> {
    let in_terminal = std::io::stdin().is_terminal() || std::io::stderr().is_terminal();
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install the signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP && !in_terminal {
                    crate::logging::reopen();
                } else {
                    stop();
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
