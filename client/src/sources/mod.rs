//! The kinds of [`crate::download::source::Source`]: where files come
//! from. `fastdl`: a fastdl server (and `fastdl_plan`, its N-stream plan).

pub mod fastdl;
pub mod fastdl_plan;
pub mod http;
