//! Several servers (mirrors): merging their lists and the
//! majority vote on what a file is.
//!
//! For each name, only the servers that list it have a say. The
//! (size, digest) claimed by a strict majority of them wins; the others are
//! dissenters, named in the log and never used for that file. Without a
//! strict majority (one against one, say) the file is not downloaded at all.

use std::collections::BTreeMap;

use fastdl_protocol::{Digest, Entry, Listing};

/// What the servers agree a name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// A strict majority of the servers listing the name agree.
    Agreed {
        entry: Entry,
        /// Indices of the servers that agree.
        servers: Vec<usize>,
        /// Servers that list the name with other contents, and what they claim.
        dissenters: Vec<(usize, u64, Digest)>,
    },
    /// The servers listing the name disagree with no strict majority.
    NoMajority(Vec<(usize, u64, Digest)>),
    /// No server lists the name.
    NotListed,
}

/// Votes on `name` given each server's list (`None`: server not reachable).
pub fn vote(name: &str, lists: &[Option<Listing>]) -> Vote {
    let claims: Vec<(usize, &Entry)> = lists
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.as_ref().and_then(|l| l.get(name)).map(|e| (i, e)))
        .collect();
    if claims.is_empty() {
        return Vote::NotListed;
    }
    let mut groups: BTreeMap<(u64, [u8; 32]), Vec<usize>> = BTreeMap::new();
    for (i, e) in &claims {
        groups.entry((e.size, e.digest.0)).or_default().push(*i);
    }
    let winner = groups
        .iter()
        .find(|(_, servers)| servers.len() * 2 > claims.len());
    let all: Vec<(usize, u64, Digest)> =
        claims.iter().map(|(i, e)| (*i, e.size, e.digest)).collect();
    match winner {
        Some((&(size, digest), servers)) => Vote::Agreed {
            entry: Entry {
                name: name.to_owned(),
                size,
                digest: Digest(digest),
            },
            servers: servers.clone(),
            dissenters: all
                .into_iter()
                .filter(|(i, _, _)| !servers.contains(i))
                .collect(),
        },
        None => Vote::NoMajority(all),
    }
}

/// One line of the merged list shown at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedEntry {
    pub name: String,
    pub size: u64,
    /// Servers listing the name (with any content).
    pub held_by: usize,
    /// Whether those servers disagree on the content.
    pub conflict: bool,
}

/// All names of all reachable servers, in name order.
pub fn merge(lists: &[Option<Listing>]) -> Vec<MergedEntry> {
    let mut by_name: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for list in lists.iter().flatten() {
        for e in list.entries() {
            by_name.entry(&e.name).or_default().push(e);
        }
    }
    by_name
        .into_iter()
        .map(|(name, entries)| MergedEntry {
            name: name.to_owned(),
            size: entries[0].size,
            held_by: entries.len(),
            conflict: entries
                .iter()
                .any(|e| e.size != entries[0].size || e.digest != entries[0].digest),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, &[u8])]) -> Option<Listing> {
        Some(Listing::new(
            entries
                .iter()
                .map(|(n, c)| Entry {
                    name: n.to_string(),
                    size: c.len() as u64,
                    digest: Digest::of(c),
                })
                .collect(),
        ))
    }

    #[test]
    fn two_against_one_wins_and_names_the_dissenter() {
        let lists = [
            list(&[("f", b"good")]),
            list(&[("f", b"evil")]),
            list(&[("f", b"good")]),
        ];
        match vote("f", &lists) {
            Vote::Agreed {
                entry,
                servers,
                dissenters,
            } => {
                assert_eq!(entry.digest, Digest::of(b"good"));
                assert_eq!(servers, [0, 2]);
                assert_eq!(dissenters, [(1, 4, Digest::of(b"evil"))]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_against_one_has_no_majority() {
        let lists = [list(&[("f", b"a")]), list(&[("f", b"b")])];
        assert!(matches!(vote("f", &lists), Vote::NoMajority(claims) if claims.len() == 2));
        let three_ways = [
            list(&[("f", b"a")]),
            list(&[("f", b"b")]),
            list(&[("f", b"c")]),
        ];
        assert!(matches!(vote("f", &three_ways), Vote::NoMajority(_)));
    }

    #[test]
    fn only_servers_listing_the_name_vote() {
        let lists = [list(&[("f", b"a")]), list(&[]), None];
        match vote("f", &lists) {
            Vote::Agreed {
                servers,
                dissenters,
                ..
            } => {
                assert_eq!(servers, [0]);
                assert!(dissenters.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(vote("g", &lists), Vote::NotListed);
        // Two of four listing it with two opinions: no strict majority.
        let lists = [
            list(&[("f", b"a")]),
            list(&[("f", b"a")]),
            list(&[("f", b"b")]),
            list(&[("f", b"b")]),
        ];
        assert!(matches!(vote("f", &lists), Vote::NoMajority(_)));
    }

    #[test]
    fn merged_list_marks_partial_and_conflicting_names() {
        let lists = [
            list(&[("a", b"1"), ("b", b"2")]),
            list(&[("a", b"1"), ("b", b"3")]),
            list(&[("a", b"1")]),
        ];
        let merged = merge(&lists);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].held_by, merged[0].conflict), (3, false));
        assert_eq!((merged[1].held_by, merged[1].conflict), (2, true));
    }
}
