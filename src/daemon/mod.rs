//! `sandforkd`, the privileged supervisor. It never runs user code; it keeps zygotes, forks a
//! child per run through them, and answers on the Unix socket.
//!
//! Map (the path of one request, top to bottom):
//! - [`server`]: the Unix-socket server; frames (from the `sandfork-protocol` crate) become
//!   requests; Hello (protocol version 1 or 2), then Run / StreamRun / Session / Cancel / Ping /
//!   Status / Metrics, several in flight per connection; streamed output forwarded in order.
//! - [`supervisor`]: owns the profiles' pools, the identities and admission; `execute` runs one
//!   request, `session_op` one session operation (open, cell, interrupt, close, files); start-up
//!   and shutdown.
//! - [`sessions`]: the live sessions' bookkeeping: ownership, bounds per tenant and profile,
//!   tombstones of ended ones.
//! - [`policy`]: what a request may do: request validation, then admission (the tenant's rate
//!   and concurrency, the fair per-profile queue, run slots).
//! - [`engine`]: one run ([`engine::run`]: limits, a warm child or a cold fork), the warm pool,
//!   the profile pools of zygotes, and the identities (uid + cgroup) children hold.
//! - [`zygotes`]: one zygote process seen from the supervisor ([`zygotes::handle`]), the thread
//!   that spawns them, and the interpreter probe and root plan their jails are built from.
//! - [`child`]: a child from fork to exit: lockdown handshake, "go", output capture (kept or
//!   streamed), the child's reports (claims, bounded), the kernel's exit status, one status per
//!   run; a session's child and its cells (`child::session`).
//! - [`cgroup`]: v1 and v2 slot cgroups behind one interface.
//! - [`rootless`]: the mode of a daemon that is not root: one uid, no cgroups, what is lost.
//! - [`doctor`]: which isolation layers this host offers (start-up summary, `sandfork doctor`).
//! - [`metrics`]: Prometheus counters, histograms and gauges, rendered on request.
//! - [`paths`]: the helpers the daemon execs or installs, and its runtime dir.
//! - [`sys`]: SEQPACKET + SCM_RIGHTS, pidfds, sealed memfds, pipes, spawning helpers: every
//!   `unsafe` block of the daemon is here.

pub mod cgroup;
pub mod child;
pub mod doctor;
pub mod engine;
pub mod metrics;
pub mod paths;
pub mod policy;
pub mod rootless;
pub mod server;
pub mod sessions;
pub mod supervisor;
pub mod sys;
pub mod zygotes;
