//! What to download and when: the names of input.txt (`input`), one state
//! per name and the rules between states (`names`), and the loop that
//! applies them (`scheduler`).

pub mod input;
pub mod names;
pub mod scheduler;
