//! sandfork: run untrusted Python fast, from pre-initialized zygotes, one locked-down child per
//! request.
//!
//! Map of the crate (the path of one request, top to bottom):
//! - [`server`]: the Unix-socket server; frames (from the `sandfork-protocol` crate) become
//!   requests; Hello, then Run / Cancel / Ping, several in flight per connection.
//! - [`supervisor`]: owns the profiles' pools and the slots; `execute` runs one request.
//! - [`run`]: one run: limits, slot, zygote, spawn, "go" with the code memfd, output capture,
//!   deadline, classification into exactly one status.
//! - [`pool`]: a profile (probed interpreter + jail spec) and the keeper tasks that hold its
//!   zygotes up, restarting them with backoff.
//! - [`zygote`]: one zygote process (zygote-init → Python) and its control channel.
//! - [`slots`]: concurrent-run slots, one uid each.
//! - [`jail`]: the interpreter probe and the minimal read-only root derived from it.
//! - [`sys`]: SEQPACKET + SCM_RIGHTS, pidfds, sealed memfds, pipes (all `unsafe` is here).
//! - [`config`]: the TOML configuration and its defaults.
//! - [`client`]: the client side, for the CLI, tests and benchmarks.
//!
//! Outside this crate: `protocol/` (the wire format), `zygote/zygote.py` (the Python zygote and
//! child), `zygote/lockdown` (the child's lockdown, loaded by the zygote through a C ABI),
//! `zygote/init` (the single-threaded jail builder).

pub mod client;
pub mod config;
pub mod jail;
pub mod pool;
pub mod run;
pub mod server;
pub mod slots;
pub mod supervisor;
pub mod sys;
pub mod zygote;
