//! Shell completions and man pages, generated from a binary's clap
//! definition (clap_complete, clap_mangen), so that they always match its
//! options: `fastdl-client --completions bash`, `fastdl-server --man`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Command;
pub use clap_complete::Shell;

/// Writes the completion script of `command` for `shell` to `out`.
pub fn completions(mut command: Command, shell: Shell, out: &mut dyn Write) {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, out);
}

/// Writes the man page (roff) of `command` to `out`.
pub fn man(command: Command, out: &mut dyn Write) -> Result<()> {
    clap_mangen::Man::new(command)
        .render(out)
        .context("cannot write the man page")
}

/// `--completions SHELL` or `--man`: prints what was asked for on stdout
/// and gives the exit code; `None` when neither was asked for (a normal
/// run).
pub fn asked_for(command: Command, shell: Option<Shell>, man_page: bool) -> Option<ExitCode> {
    let mut out = std::io::stdout().lock();
    if let Some(shell) = shell {
        completions(command, shell, &mut out);
        return Some(ExitCode::SUCCESS);
    }
    if !man_page {
        return None;
    }
    Some(match man(command, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    })
}

/// The options of `command` that cannot come from an environment variable
/// starting with `prefix` (every option should; `--help`, `--version`,
/// `--completions` and `--man` are asked for by hand, so they have none).
pub fn options_without_env(command: &Command, prefix: &str) -> Vec<String> {
    command
        .get_arguments()
        .filter(|arg| {
            let id = arg.get_id().as_str();
            !matches!(id, "help" | "version" | "completions" | "man")
        })
        .filter(|arg| {
            !arg.get_env()
                .is_some_and(|e| e.to_string_lossy().starts_with(prefix))
        })
        .map(|arg| format!("--{}", arg.get_id()))
        .collect()
}
