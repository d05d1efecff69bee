//! The per-piece digests a file's pieces are judged against, and the
//! request that fetches them.
//!
//! A fresh download does not wait for them: its first pieces are asked
//! for in the same round trip as the digests, and a piece that arrives
//! first waits here for its digest. Waiting is safe only for the request
//! that was already out when the piece was asked for: each piece carries
//! the [`Ticket`] of the digests request made before it, and waits only
//! while that very request is in flight. So every wait is for something
//! asked earlier, and no two connections can end up waiting for each
//! other (a request lost with its connection and asked again later
//! releases the pieces asked for before it; they are fetched again).

use std::sync::{Condvar, Mutex};

use fastdl_protocol::Digest;

/// Where the digests are.
#[derive(Debug)]
enum State {
    /// Not here yet; `asked`: the number of the request in flight, if any.
    Pending {
        asked: Option<u64>,
    },
    Known(Vec<Digest>),
    /// There are none (a source without per-piece digests): every piece
    /// is taken as it comes, and the file is judged whole at the end.
    Unverified,
    /// They will not come (the attempt stopped).
    Failed,
}

/// Which digests request a piece may wait for: the one in flight when it
/// was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// What a piece is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// The digest its bytes must have.
    Against(Digest),
    /// Taken as it comes: there is nothing to judge a piece against.
    Accept,
    /// The digests will not come: the attempt stopped.
    Never,
    /// Not known, and the request this piece may wait for is not in
    /// flight: the piece is fetched again.
    NotYet,
}

/// Per-piece digests, known now or later.
pub struct Expected {
    /// The digests, and the number of requests made so far (the last
    /// one's number).
    state: Mutex<(State, u64)>,
    arrived: Condvar,
    /// The whole-file digest: a one-piece file's only piece digest.
    file: Digest,
}

impl Expected {
    /// Digests known up front (empty for a one-piece file).
    pub fn known(pieces: Vec<Digest>, file: Digest) -> Expected {
        Expected::with(State::Known(pieces), file)
    }

    /// No per-piece digests at all (an HTTP source).
    pub fn unverified() -> Expected {
        Expected::with(State::Unverified, Digest([0; 32]))
    }

    /// Digests to be asked for.
    pub fn pending(file: Digest) -> Expected {
        Expected::with(State::Pending { asked: None }, file)
    }

    fn with(state: State, file: Digest) -> Expected {
        Expected {
            state: Mutex::new((state, 0)),
            arrived: Condvar::new(),
            file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request should be made now; if so it counts as made (the
    /// caller makes it).
    pub fn take_request(&self) -> bool {
        let (state, requests) = &mut *self.lock();
        if let State::Pending {
            asked: asked @ None,
        } = state
        {
            *requests += 1;
            *asked = Some(*requests);
            return true;
        }
        false
    }

    /// The request in flight will not be answered (its connection broke):
    /// it is wanted again, and the pieces waiting for it are released.
    pub fn lost(&self) {
        if let State::Pending { asked } = &mut self.lock().0 {
            *asked = None;
        }
        self.arrived.notify_all();
    }

    /// The ticket of a piece asked for now.
    pub fn ticket(&self) -> Ticket {
        match &self.lock().0 {
            State::Pending { asked: Some(n) } => Ticket(*n),
            // Nothing to wait for (0 is never a request's number).
            _ => Ticket(0),
        }
    }

    pub fn arrive(&self, pieces: Vec<Digest>) {
        let state = &mut self.lock().0;
        if matches!(state, State::Pending { .. }) {
            *state = State::Known(pieces);
        }
        self.arrived.notify_all();
    }

    /// No digests will come: every waiting piece is released unjudged.
    pub fn fail(&self) {
        let state = &mut self.lock().0;
        if matches!(state, State::Pending { .. }) {
            *state = State::Failed;
        }
        self.arrived.notify_all();
    }

    /// Whether the digests are here (or there are none to wait for).
    pub fn is_known(&self) -> bool {
        matches!(self.lock().0, State::Known(_) | State::Unverified)
    }

    /// What piece `piece`, asked for with `ticket`, is judged against;
    /// waits while the request of its ticket is in flight.
    pub fn piece(&self, piece: u64, ticket: Ticket) -> Judge {
        let mut state = self.lock();
        loop {
            match &state.0 {
                State::Known(pieces) => {
                    return Judge::Against(pieces.get(piece as usize).copied().unwrap_or(self.file))
                }
                State::Unverified => return Judge::Accept,
                State::Failed => return Judge::Never,
                State::Pending { asked: Some(n) } if Ticket(*n) == ticket => {
                    state = self.arrived.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                State::Pending { .. } => return Judge::NotYet,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn d(byte: u8) -> Digest {
        Digest([byte; 32])
    }

    #[test]
    fn known_digests_answer_at_once() {
        let e = Expected::known(vec![d(1), d(2)], d(9));
        assert!(!e.take_request(), "nothing to ask for");
        assert_eq!(e.piece(1, e.ticket()), Judge::Against(d(2)));
        // A one-piece file has no list: its piece digest is the file digest.
        let one = Expected::known(Vec::new(), d(9));
        assert_eq!(one.piece(0, one.ticket()), Judge::Against(d(9)));
    }

    #[test]
    fn a_piece_asked_after_the_request_waits_for_its_answer() {
        let e = Expected::pending(d(9));
        assert!(e.take_request());
        assert!(!e.take_request(), "asked once");
        let ticket = e.ticket();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| e.piece(0, ticket));
            std::thread::sleep(Duration::from_millis(20));
            e.arrive(vec![d(3), d(4)]);
            assert_eq!(waiter.join().unwrap(), Judge::Against(d(3)));
        });
    }

    #[test]
    fn a_lost_request_releases_its_waiters_and_a_new_one_does_not_hold_older_pieces() {
        let e = Expected::pending(d(9));
        assert_eq!(e.piece(0, e.ticket()), Judge::NotYet, "nothing asked yet");
        e.take_request();
        let before = e.ticket();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| e.piece(0, before));
            std::thread::sleep(Duration::from_millis(20));
            e.lost();
            assert_eq!(waiter.join().unwrap(), Judge::NotYet);
        });
        assert!(e.take_request(), "wanted again");
        // A piece asked before the new request does not wait for it ...
        assert_eq!(e.piece(0, before), Judge::NotYet);
        // ... one asked after it does.
        let after = e.ticket();
        e.arrive(vec![d(5)]);
        assert_eq!(e.piece(0, after), Judge::Against(d(5)));
    }

    #[test]
    fn a_failure_releases_waiters_and_arrived_digests_stay() {
        let e = Expected::pending(d(9));
        e.take_request();
        let ticket = e.ticket();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| e.piece(0, ticket));
            e.fail();
            assert_eq!(waiter.join().unwrap(), Judge::Never);
        });
        let e = Expected::pending(d(9));
        e.arrive(vec![d(5)]);
        e.fail();
        assert!(e.is_known());
        assert_eq!(e.piece(0, e.ticket()), Judge::Against(d(5)));
    }
}
