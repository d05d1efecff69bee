//! `fastdl-client`: shows a fastdl server's list, then downloads the names
//! written to input.txt, verified, into the output folder. Everything is
//! in the library; see `lib.rs`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    fastdl_client::app::main(fastdl_client::cli::Args::parse())
}
