//! The server's end-to-end tests, in one test binary: each module starts
//! the real `fastdl-server` on 127.0.0.1 in a temporary folder and talks
//! to it over raw sockets or through the real `fastdl-client`.

mod flood;
mod hardening;
mod hostile;
mod http;
mod protocol;
mod third_attack;
mod tls;
