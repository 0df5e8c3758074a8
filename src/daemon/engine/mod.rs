//! The run engine: from an admitted request to a child running it.
//!
//! - [`run`]: one run: limits, run permit, a warm child or a cold fork, the result.
//! - [`warm`]: per profile, children forked and locked down before requests arrive.
//! - [`pool`]: a profile (probed interpreter + jail spec) and the keeper tasks that hold its
//!   zygotes up, restarting them with backoff.
//! - [`identities`]: the identities live children hold (a uid each, and as root a cgroup: the
//!   "slot cgroups" of [`crate::daemon::cgroup`]). Not to be confused with admission's run
//!   slots, which bound how many runs execute at once.

pub mod identities;
pub mod pool;
pub mod run;
pub mod warm;
