//! The servers' lists: fetched from every server at once, kept per
//! server, merged for the display at start, and voted on per name when
//! several servers are given (`vote`).

pub mod vote;
pub mod watch;

use std::sync::Arc;

use crossbeam_channel::select;
use fastdl_protocol::{Listing, ProtocolError};
use fastdl_support::human_bytes;
use log::{info, warn};

use crate::net::connection::RequestError;
use crate::shutdown::Shutdown;
use crate::sources::fastdl::Server;

/// Every server's last list (`None`: not reachable at the last fetch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lists {
    pub by_server: Vec<Option<Listing>>,
}

impl Lists {
    /// Takes in a fetch of every server's list, logging what changed:
    /// a server lost or back, a list that changed.
    pub fn update(&mut self, servers: &[Arc<Server>], fetched: Vec<Result<Listing, RequestError>>) {
        if self.by_server.len() != servers.len() {
            self.by_server = vec![None; servers.len()];
        }
        for ((slot, server), result) in self.by_server.iter_mut().zip(servers).zip(fetched) {
            let addr = server.addr();
            match result {
                Ok(listing) => {
                    match slot {
                        None => info!("server {addr}: {} files listed", listing.len()),
                        Some(old) if *old != listing => {
                            info!("server {addr}: the list changed: {} files", listing.len())
                        }
                        Some(_) => {}
                    }
                    *slot = Some(listing);
                }
                Err(e) => {
                    if slot.is_some() {
                        warn!("cannot fetch the list from {addr} ({e}); will keep trying");
                    }
                    *slot = None;
                }
            }
        }
    }

    /// No list of any of `servers` servers known yet.
    pub fn empty(servers: usize) -> Lists {
        Lists {
            by_server: vec![None; servers],
        }
    }

    /// Whether any server answered.
    pub fn any(&self) -> bool {
        self.by_server.iter().any(Option::is_some)
    }
}

/// Fetches the list from every server at once, each on a thread of its
/// own; `None` if shutdown was signalled first (the caller never waits
/// for a server that stopped answering: its connection is cut, and its
/// thread ends on its own).
pub fn fetch_all(
    servers: &[Arc<Server>],
    shutdown: &Shutdown,
) -> Option<Vec<Result<Listing, RequestError>>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for (index, server) in servers.iter().enumerate() {
        let (server, sender) = (Arc::clone(server), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("list {index}"))
            .spawn(move || {
                let _ = sender.send((index, server.list()));
            });
        if let Err(e) = spawned {
            let _ = tx.send((index, Err(RequestError::from(e))));
        }
    }
    drop(tx);
    let mut results: Vec<Option<Result<Listing, RequestError>>> =
        servers.iter().map(|_| None).collect();
    for _ in servers {
        select! {
            recv(rx) -> fetched => match fetched {
                Ok((index, result)) => results[index] = Some(result),
                Err(_) => break,
            },
            recv(shutdown.signal()) -> _ => return None,
        }
    }
    let lost = || {
        Err(RequestError::Connection(ProtocolError::Unexpected(
            "the list fetch ended without an answer".into(),
        )))
    };
    Some(
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(lost))
            .collect(),
    )
}

/// Prints the list (merged over all servers, marking names not every server
/// holds and names the servers disagree on) to `out`.
pub fn print(lists: &[Option<Listing>], out: &mut dyn std::io::Write) {
    let merged = vote::merge(lists);
    let reachable = lists.iter().filter(|l| l.is_some()).count();
    // A closed stdout does not stop the client.
    let _ = if lists.len() == 1 {
        writeln!(out, "{} files on the server:", merged.len())
    } else {
        writeln!(
            out,
            "{} files on {reachable} of {} servers:",
            merged.len(),
            lists.len()
        )
    };
    for (i, entry) in merged.iter().enumerate() {
        let mut marks = Vec::new();
        if lists.len() > 1 && entry.held_by < lists.len() {
            marks.push(format!("on {} of {} servers", entry.held_by, lists.len()));
        }
        if entry.conflict {
            marks.push("servers disagree on its content".to_owned());
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  [{}]", marks.join("; "))
        };
        let _ = writeln!(
            out,
            "{}) {}  {}{marks}",
            i + 1,
            entry.name,
            human_bytes(entry.size)
        );
    }
}
