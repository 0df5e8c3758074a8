//! `sandfork`, the command line: `run`, `repl`, `ping`, `keygen`, `bench`, `doctor` (the binary
//! in `src/bin/sandfork.rs` parses the arguments; the work is here and in the shared modules).
//!
//! - [`bench`]: `sandfork bench`, a bounded load generator with a fresh-interpreter baseline.
//! - [`repl`]: `sandfork repl`, an interactive prompt over one session.
//! - [`run`]: `sandfork run`, one program (script or function mode, files in and out).

pub mod bench;
pub mod repl;
pub mod run;
