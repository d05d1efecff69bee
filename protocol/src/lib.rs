//! The fastdl wire protocol, shared by `fastdl-server` and `fastdl-client`.
//!
//! Everything here is pure: messages, their parsing and encoding over
//! `Read`/`Write`, the rules for file names, and the BLAKE3 piece tree used
//! to verify downloads. No sockets and no threads, so all of it is easy to
//! unit-test and to fuzz. PROTOCOL.md at the repository root is the
//! human-readable description of the same bytes.

pub mod digest;
pub mod error;
pub mod line;
pub mod listing;
pub mod message;
pub mod name;
pub mod plan;

pub use digest::{Digest, PieceTree};
pub use error::ProtocolError;
pub use listing::{Entry, Listing};
pub use message::{ErrorCode, Reply, Request};
pub use name::{validate_name, NameError};

/// The protocol version this build speaks. Version 2 runs over TLS 1.3 by
/// default (ALPN `fastdl/2`) and adds `AUTH`; version 1 was plain TCP.
pub const VERSION: u32 = 2;

/// The TCP port a server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 1337;

/// Size of one piece: the unit of ranged reads, per-piece digests and
/// verification. A power of two multiple of BLAKE3's 1 KiB chunk, so every
/// piece is a complete BLAKE3 subtree.
pub const PIECE_SIZE: u64 = 1 << 20;

/// Longest request line a server accepts (bytes, newline included).
pub const MAX_REQUEST_LINE: usize = 4096;

/// Longest reply line a client accepts (bytes, newline included).
pub const MAX_REPLY_LINE: usize = 8192;

/// Most entries a client accepts in one listing.
pub const MAX_LIST_ENTRIES: u64 = 1_000_000;

/// Most bytes of entry lines a client accepts in one listing.
pub const MAX_LIST_BYTES: usize = 128 << 20;
