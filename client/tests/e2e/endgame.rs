//! The end game against the real server: one connection that stalls in
//! the middle of a file (still open, but nothing more arrives on it) does
//! not hold the download up until the read timeout. Once the other
//! connections run out of pieces, they ask for its pieces again, the file
//! lands verified, and the stuck connection is cut.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::helpers::{assert_exit, Env};
use fastdl_testkit::{client, hash_file, run_with_deadline, write_file, StallProxy};

const MIB: usize = 1 << 20;

/// Well below the client's 30 s read timeout, which would otherwise be what
/// frees the stalled connection's pieces.
const WELL_BEFORE_THE_READ_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn a_stalled_connection_does_not_hold_up_the_file() {
    let env = Env::new();
    let want = write_file(&env.res.join("big.bin"), 24 * MIB, 7);
    let server = env.server(&[]);
    // One connection stops in the middle of its second piece.
    let proxy = StallProxy::start(server.addr, (3 * MIB / 2) as u64);
    env.write_input(&["big.bin"]);
    let output = run_with_deadline(
        client(&proxy.addr.to_string(), &env.work).args(["--once", "-v"]),
        WELL_BEFORE_THE_READ_TIMEOUT,
    );
    assert_exit(&output, 0, &env);
    assert!(
        proxy.stalled.load(Ordering::SeqCst),
        "no connection stalled"
    );
    assert_eq!(hash_file(&env.out_path("big.bin")), want);
    let log = env.log();
    assert!(
        log.contains("big.bin: end game: pieces held up on a slow connection were asked for twice"),
        "{log}"
    );
    assert!(
        // (What was fetched may exceed 24 MiB by the part of the copies
        // that arrived before the first copy landed.)
        log.contains("big.bin: done, 24.0 MiB verified, "),
        "{log}"
    );
}
