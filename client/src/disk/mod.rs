//! The output folder: where files land and how, never through a link,
//! never over an existing file, never before they are verified and
//! durable.
//!
//! Submodules: `outdir` (everything under `--out` reached by descriptor),
//! `store` (where a name lands, part files, the existing-file rules, the
//! rename), `journal` (what a part file holds, for resuming),
//! `piece_writer` (verified pieces at their offsets, direct I/O for big
//! files), `lander` (flush and rename in batches).

pub mod journal;
pub mod lander;
pub mod outdir;
pub mod piece_writer;
pub mod store;
