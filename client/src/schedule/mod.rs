//! What to download and when: the lines of input.txt (`input`), what one
//! line asks for (`item`: a name or a URL), one state per line and the
//! rules between states (`names`), and the loop that applies them
//! (`scheduler`).

pub mod input;
pub mod item;
pub mod names;
pub mod scheduler;
