//! The client's end-to-end tests, in one test binary (one link, shared
//! helpers): each module starts the real `fastdl-server` and
//! `fastdl-client` (or a fake server written for the case) on 127.0.0.1
//! in temporary folders and checks files by hash.

mod download;
mod endgame;
mod helpers;
mod hostile_server;
mod hostile_web;
mod http;
mod mirrors;
mod plan;
mod resume;
mod service;
mod stop;
mod tls;
mod watch;
