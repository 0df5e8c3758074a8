//! sandfork: run untrusted Python fast, from pre-initialized zygotes, one locked-down child per
//! request.
//!
//! The crate is cut along its three processes; each binary uses its own part and the shared
//! pieces below:
//! - [`daemon`]: `sandforkd`, the privileged supervisor (the socket server, policy, the run
//!   engine, zygotes, children, cgroups, and all its `unsafe` in [`daemon::sys`]);
//! - [`http`]: `sandfork-http`, the unprivileged HTTP shim, a client of the daemon's socket;
//! - [`cli`]: `sandfork`, the command line (run, ping, keygen, bench, doctor).
//!
//! Shared by them: [`config`] (the one TOML file all three read), [`tenants`] (who a caller is:
//! names, uids, API key hashes, policies), [`output`] (the one JSON shape of a run's result, for
//! `sandfork run --json` and every HTTP endpoint), [`validate`] (the request rules every door
//! applies), [`service`] (logging, request ids and the stop
//! signal of the two long-running services).
//!
//! Outside this crate: `protocol/` (the wire format for clients, and the Rust client), `zygote/ipc`
//! (the one definition of everything that crosses into the jail: jail spec, lockdown parameters,
//! the zygote's and the child's messages, and the decoder that reads a child's reports as claims),
//! `zygote/zygote.py` (the Python zygote and child), `zygote/lockdown` (the child's lockdown,
//! loaded by the zygote through a C ABI), `zygote/init` (the single-threaded jail builder, and the
//! doctor's probe helper).

#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "http")]
pub mod http;
#[cfg(any(feature = "cli", feature = "http"))]
pub mod mcp;
pub mod output;
pub mod service;
pub mod tenants;
pub mod validate;
