//! `fastdl-client` as a library: the binary is [`app::run`] over parsed
//! options, and every layer below can be driven on its own in tests.
//!
//! The layers, from the user's file to the bytes on disk (ARCHITECTURE.md
//! follows one byte through them):
//! - [`schedule`]: the names of input.txt, one state per name, retries;
//! - [`lists`]: the servers' lists and the majority vote between mirrors;
//! - [`download`]: the engine, where connections take pieces of every file
//!   in progress and each piece is verified before it is written;
//! - [`sources`]: where bytes come from (a fastdl server), behind the
//!   engine's `Source` seam;
//! - [`net`]: transport (TLS with pinned identities), the progress
//!   deadline, one connection's requests and replies;
//! - [`disk`]: the output folder, part files, journals, landing.
//!
//! Beside them: [`shutdown`] (Ctrl-C wakes every wait), [`retry`] (one
//! backoff), [`progress`] (bars and totals), [`cli`] (options).

pub mod app;
pub mod cli;
pub mod disk;
pub mod download;
pub mod events;
pub mod lists;
pub mod net;
pub mod progress;
pub mod retry;
pub mod schedule;
pub mod shutdown;
pub mod sources;
