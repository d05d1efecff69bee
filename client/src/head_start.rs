//! `--once`'s head start: the first name's per-piece digests and first
//! pieces are asked for while the list is still on its way (the list's
//! connection asks for the digests and piece 0 right after `LIST`, each
//! other warmed connection for one more piece with its handshake), so the
//! data starts flowing one round trip earlier. Each connection carries one
//! piece, enough to keep it busy until its ordinary requests follow a
//! round trip later. A wrong guess costs little: if the name is not
//! listed, the file is shorter, or it is not downloaded fresh, the answers
//! are refusals or bytes that are read and dropped.

use fastdl_protocol::name::validate_name;
use fastdl_protocol::PIECE_SIZE;

use crate::connection::Ahead;
use crate::outdir::{Found, OutDir};
use crate::store::Spot;

pub struct HeadStart {
    name: String,
}

impl HeadStart {
    /// The head start for a `--once` run over `names`, when one can help:
    /// one server, no plan, and a first name that is valid and neither
    /// begun (a part file to resume) nor present in `out`.
    pub fn plan(names: &[String], out: &OutDir, servers: usize, plan: bool) -> Option<HeadStart> {
        let name = names.first()?;
        if servers != 1 || plan || validate_name(name).is_err() {
            return None;
        }
        let fresh = match Spot::find(out, name) {
            Ok(None) => true,
            Ok(Some(spot)) => [spot.leaf.clone(), spot.part()]
                .iter()
                .all(|leaf| matches!(spot.folder.look(leaf), Ok(Found::Nothing))),
            Err(_) => false,
        };
        fresh.then(|| HeadStart { name: name.clone() })
    }

    /// What the list's connection asks for right after `LIST`.
    pub fn with_list(&self) -> Vec<Ahead> {
        vec![
            Ahead::Pieces {
                name: self.name.clone(),
            },
            self.piece(0),
        ]
    }

    /// What the `i`-th warmed connection asks for with its handshake.
    pub fn with_warm(&self, i: usize) -> Vec<Ahead> {
        vec![self.piece(i as u64 + 1)]
    }

    fn piece(&self, piece: u64) -> Ahead {
        Ahead::Get {
            name: self.name.clone(),
            offset: piece * PIECE_SIZE,
            length: PIECE_SIZE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_first_name_on_one_server_gets_a_head_start() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::open(tmp.path()).unwrap();
        let names = vec!["big.bin".to_owned(), "other".to_owned()];
        let plan = |names: &[String], servers, plan| HeadStart::plan(names, &out, servers, plan);
        let start = plan(&names, 1, false).expect("a head start");
        assert_eq!(
            start.with_list()[0],
            Ahead::Pieces {
                name: "big.bin".into()
            }
        );
        assert_eq!(
            start.with_warm(2),
            vec![Ahead::Get {
                name: "big.bin".into(),
                offset: 3 * PIECE_SIZE,
                length: PIECE_SIZE
            }]
        );
        assert!(plan(&names, 2, false).is_none(), "mirrors vote first");
        assert!(
            plan(&names, 1, true).is_none(),
            "a plan pushes its own chunks"
        );
        assert!(plan(&[], 1, false).is_none());
        assert!(plan(&["../escape".to_owned()], 1, false).is_none());
        std::fs::write(tmp.path().join(".big.bin.fastdl-part"), b"x").unwrap();
        assert!(plan(&names, 1, false).is_none(), "a part file is resumed");
    }
}
