//! sandfork: run untrusted Python fast, from pre-initialized zygotes, one locked-down child per
//! request.
//!
//! Map of the crate (the path of one request, top to bottom):
//! - [`server`]: the Unix-socket server; frames (from the `sandfork-protocol` crate) become
//!   requests; Hello, then Run / Cancel / Ping, several in flight per connection.
//! - [`supervisor`]: owns the profiles' pools and the slots; `execute` runs one request.
//! - [`run`]: one run: limits, run permit, a warm child or a cold fork.
//! - [`child`]: a child from fork to exit: lockdown handshake, "go" with the code memfd, output
//!   capture, deadline, the child's reports (claims, bounded), the kernel's exit status,
//!   classification into exactly one status.
//! - [`warm`]: per profile, children forked and locked down before requests arrive.
//! - [`pool`]: a profile (probed interpreter + jail spec) and the keeper tasks that hold its
//!   zygotes up, restarting them with backoff.
//! - [`zygote`]: one zygote process (zygote-init → Python) and its control channel.
//! - [`slots`]: concurrent-run slots, one uid each.
//! - [`jail`]: the interpreter probe and the minimal read-only root derived from it.
//! - [`rootless`]: the mode of a daemon that is not root: one uid, no cgroups, what is lost.
//! - [`sys`]: SEQPACKET + SCM_RIGHTS, pidfds, sealed memfds, pipes (all `unsafe` is here).
//! - [`metrics`]: Prometheus counters, histograms and gauges, rendered on request.
//! - [`tenants`]: who a caller is (SO_PEERCRED uid, or an API key via the shim) and its policy.
//! - [`admission`]: per-tenant rate and concurrency, bounded per-profile queues, fair run slots.
//! - [`config`]: the TOML configuration and its defaults; [`logs`]: the binaries' log set-up.
//! - [`client`]: the client side, for the CLI, tests and benchmarks.
//! - [`http`]: `sandfork-http`, the HTTP shim: API keys → tenants, runs forwarded as a proxy.
//! - [`bench`]: `sandfork bench`, a bounded load generator with a fresh-interpreter baseline.
//!
//! Outside this crate: `protocol/` (the wire format for clients), `zygote/ipc` (the one
//! definition of everything that crosses into the jail: jail spec, lockdown parameters, the
//! zygote's and the child's messages, and the decoder that reads a child's reports as claims),
//! `zygote/zygote.py` (the Python zygote and child), `zygote/lockdown` (the child's lockdown,
//! loaded by the zygote through a C ABI), `zygote/init` (the single-threaded jail builder).

pub mod admission;
pub mod bench;
pub mod cgroup;
pub mod child;
pub mod client;
pub mod config;
pub mod doctor;
pub mod http;
pub mod jail;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod rootless;
pub mod run;
pub mod server;
pub mod slots;
pub mod supervisor;
pub mod sys;
pub mod tenants;
pub mod warm;
pub mod zygote;
