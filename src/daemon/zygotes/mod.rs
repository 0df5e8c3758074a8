//! Zygotes, seen from the supervisor.
//!
//! - [`jail`]: the interpreter probe and the minimal read-only root derived from it, from which
//!   the supervisor writes each zygote's `JailSpec`.
//! - [`handle`]: one running zygote (zygote-init → Python) and its control channel; the thread
//!   that spawns them.

pub mod handle;
pub mod jail;
#[cfg(test)]
pub mod testing;
