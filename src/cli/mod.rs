//! `sandfork`, the command line: `run`, `ping`, `keygen`, `bench`, `doctor` (the binary in
//! `src/bin/sandfork.rs` parses the arguments; the work is here and in the shared modules).
//!
//! - [`bench`]: `sandfork bench`, a bounded load generator with a fresh-interpreter baseline.

pub mod bench;
