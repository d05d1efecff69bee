//! `fastdl-server`: publishes a folder and serves it to fastdl clients.
//! Everything is in the library (`lib.rs`); this is its command line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    fastdl_server::app::main(fastdl_server::cli::Args::parse())
}
