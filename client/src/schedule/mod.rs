//! What to download and when: the lines of input.txt (`input`), what one
//! line asks for (`item`: a name or a URL), one state per line and the
//! rules between states (`names`), the lines with their states and the
//! indexes over them (`board`), how many URLs may be on their way
//! (`web_slots`), and the loop that applies them (`scheduler`).

pub mod board;
pub mod input;
pub mod item;
pub mod names;
pub mod scheduler;
pub mod web_slots;
