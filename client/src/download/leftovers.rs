//! Connections left receiving answers nobody needs at the end of an
//! attempt.
//!
//! In the end game (see `pieces`) two connections may ask for the same
//! piece. Once every piece has landed, whatever a connection still waits
//! for is a copy nobody needs, and the server sends it anyway; once an
//! attempt stopped (a source too slow, a piece that keeps failing), the
//! same holds for everything still asked for it, and on a stalled server
//! waiting for it would hold the attempt's verdict for a whole progress
//! window. Such a connection is cut at once, rather than drained, and is
//! not reused. A connection signs up here while it waits for answers of
//! the attempt, and signs off when its last one is in.

use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;

use super::pieces::Taker;

/// The connections of one file still waiting for answers with nothing
/// left to take.
#[derive(Default)]
pub struct Leftovers {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Every piece has landed.
    done: bool,
    /// Takers still waiting for answers, with their connection.
    waiting: HashMap<Taker, TcpStream>,
    /// Takers whose connection was cut.
    cut: HashSet<Taker>,
}

impl Leftovers {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taker `by` waits for answers on `stream` with nothing left to take.
    /// If every piece has landed already, the connection is cut now.
    pub fn waiting(&self, by: Taker, stream: &TcpStream) {
        let mut state = self.lock();
        if state.done {
            let _ = stream.shutdown(Shutdown::Both);
            state.cut.insert(by);
        } else if let Ok(clone) = stream.try_clone() {
            state.waiting.insert(by, clone);
        }
    }

    /// Taker `by` has every answer it asked for. Returns whether its
    /// connection was cut (and so cannot be reused).
    pub fn answered(&self, by: Taker) -> bool {
        let mut state = self.lock();
        state.waiting.remove(&by);
        state.cut.contains(&by)
    }

    /// Whether taker `by`'s connection was cut.
    pub fn was_cut(&self, by: Taker) -> bool {
        self.lock().cut.contains(&by)
    }

    /// The attempt is over (every piece landed, or it stopped): cuts every
    /// connection still waiting for its answers.
    pub fn end(&self) {
        let mut state = self.lock();
        state.done = true;
        let waiting = std::mem::take(&mut state.waiting);
        for (by, stream) in waiting {
            let _ = stream.shutdown(Shutdown::Both);
            state.cut.insert(by);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_waiting_connection_is_cut_when_all_landed_and_a_finished_one_is_not() {
        let left = Leftovers::default();
        let (mut waiting, _server_a) = pair();
        let (_finished, _server_b) = pair();
        left.waiting(Taker(0), &waiting);
        left.waiting(Taker(1), &_finished);
        assert!(
            !left.answered(Taker(1)),
            "signed off before the end: untouched"
        );
        let reader = std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            waiting.read(&mut byte).map(|n| n == 0)
        });
        left.end();
        assert!(
            reader.join().unwrap().unwrap_or(true),
            "the blocked read ends"
        );
        assert!(left.was_cut(Taker(0)));
        assert!(left.answered(Taker(0)));
        assert!(!left.was_cut(Taker(1)));
    }

    #[test]
    fn signing_up_after_the_end_cuts_at_once() {
        let left = Leftovers::default();
        left.end();
        let (mut late, _server) = pair();
        left.waiting(Taker(7), &late);
        let mut byte = [0u8; 1];
        assert!(matches!(late.read(&mut byte), Ok(0) | Err(_)));
        assert!(left.answered(Taker(7)));
    }
}
