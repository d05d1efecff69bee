//! `fastdl-server`: publishes a folder and serves it over the fastdl
//! protocol.
//!
//! The layers, from the disk to the wire:
//! - [`catalog`]: what is published: the folder scanned, each file's BLAKE3
//!   piece tree, the list file, the one safe way to open a file, and the
//!   watch that keeps it current (its own threads; hashing is CPU work).
//! - [`net`]: listeners, the connection table (limits and eviction), one
//!   task per connection reading request lines and answering them.
//! - [`transfer`]: every byte sent, held to the progress deadline:
//!   replies, file ranges with `sendfile`, the N-stream plans.
//! - [`http`]: the HTTP face (`--http-port`): the same files, limits and
//!   tokens over HTTP/1.1, for curl, browsers and aria2.
//! - [`status`]: counters and the periodic status line.
//!
//! [`app`] wires them: logging, the descriptor limit, the catalog, the
//! tokio runtime, the listeners, Ctrl-C.

pub mod app;
pub mod catalog;
pub mod cli;
pub mod http;
pub mod net;
pub mod status;
pub mod transfer;
