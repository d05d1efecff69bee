//! Talking to fastdl servers: the transport (TLS with the server's
//! identity pinned, or plain TCP), the progress deadline on every read,
//! and one connection's requests and replies.

pub mod connection;
pub mod pace;
pub mod transport;
