//! sandfork-lockdown: the steps a freshly forked zygote child takes before it runs untrusted
//! Python, and the seccomp policy shared with the zygote and the supervisor.
//!
//! # Map
//! - [`config`]: the init config and the per-child params (the JSON of the C ABI).
//! - [`fds`], [`mounts`], [`session`], [`rlimits`], [`creds`], [`landlock_rules`], [`seccomp`]:
//!   one module per kernel mechanism, one error enum each.
//! - [`ffi`]: the C ABI the Python zygote loads with ctypes (panics caught, errors stored).
//! - [`serve`]: the zygote's fork loop, kept off the Python heap the children share.
//! - `sys`: the few raw syscalls nix and the landlock crate do not wrap.
//!
//! # One zygote, many children
//! Once per zygote, [`Lockdown::prepare`] compiles the child seccomp programs and builds the
//! landlock ruleset without enforcing it; forked children inherit both (memory and one fd). Then
//! in each child, [`Lockdown::enforce`] runs, in this order (DESIGN §3):
//! 1. close every fd but `keep_fds` (and the ruleset fd, until step 6) — [`fds`];
//! 2. unshare the mount namespace, mount the run's tmpfs (and, with processes, its private
//!    `/dev/shm` tmpfs), chdir into it — [`mounts`];
//! 3. setsid — [`session`];
//! 4. CPU, FSIZE, NOFILE, NPROC, CORE=0, AS if asked — [`rlimits`];
//! 5. setgroups([]), setresgid, setresuid (all capabilities gone), not dumpable — [`creds`];
//!    in rootless mode (`"rootless": true`, uid/gid 0: the namespace maps only the daemon's own
//!    ids) the child keeps uid 0 and drops every capability instead: locked securebits, empty
//!    bounding, ambient, effective, permitted and inheritable sets;
//! 6. landlock_restrict_self with the prebuilt ruleset, close its fd — [`landlock_rules`];
//! 7. install the child seccomp programs — [`seccomp`].
//!
//! Mounting needs the capabilities step 5 drops, and landlock forbids mounting, hence the order.
//! A failure stops at the failed step; [`LockdownError::step`] numbers it for the C ABI, and the
//! caller `_exit`s.
//!
//! zygote-init uses [`seccomp::zygote_filters`] and [`seccomp::apply`] directly; the supervisor
//! calls [`seccomp::child_filters`] at start-up to validate the policy.

use std::os::fd::RawFd;
use std::path::PathBuf;

use serde::Serialize;

pub use sandfork_ipc::lockdown as config;
pub mod creds;
pub mod fds;
pub mod ffi;
pub mod landlock_rules;
pub mod mounts;
pub mod rlimits;
pub mod seccomp;
pub mod serve;
pub mod session;
mod sys;

pub use config::{ChildParams, InitConfig, ParamsError, RlimitParams};
pub use creds::CredsError;
pub use fds::FdsError;
pub use landlock_rules::LandlockError;
pub use mounts::MountsError;
pub use rlimits::RlimitsError;
pub use seccomp::SeccompError;
pub use session::SessionError;

/// Preparing the lockdown at zygote start failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The landlock ruleset could not be built (or landlock is required and missing).
    #[error("landlock: {0}")]
    Landlock(#[from] LandlockError),
    /// The child seccomp policy does not compile for this architecture.
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
}

/// A child lockdown step failed; [`LockdownError::step`] is the C ABI's return code.
#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    /// Step 1.
    #[error("fds: {0}")]
    Fds(#[from] FdsError),
    /// Step 2.
    #[error("mounts: {0}")]
    Mounts(#[from] MountsError),
    /// Step 3.
    #[error("session: {0}")]
    Session(#[from] SessionError),
    /// Step 4.
    #[error("rlimits: {0}")]
    Rlimits(#[from] RlimitsError),
    /// Step 5.
    #[error("credentials: {0}")]
    Creds(#[from] CredsError),
    /// Step 6.
    #[error("landlock: {0}")]
    Landlock(#[from] LandlockError),
    /// Step 7.
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    /// Rejected before step 1 (nothing was changed).
    #[error("params: {0}")]
    Params(#[from] ParamsError),
}

impl LockdownError {
    /// The step that failed: 1–7 as in the crate map, 100 for bad params.
    pub fn step(&self) -> i32 {
        match self {
            LockdownError::Fds(_) => 1,
            LockdownError::Mounts(_) => 2,
            LockdownError::Session(_) => 3,
            LockdownError::Rlimits(_) => 4,
            LockdownError::Creds(_) => 5,
            LockdownError::Landlock(_) => 6,
            LockdownError::Seccomp(_) => 7,
            LockdownError::Params(_) => 100,
        }
    }
}

/// What [`Lockdown::prepare`] found, as `sandfork_lockdown_report()` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always true; the C ABI reports `{"initialized": false}` before init.
    pub initialized: bool,
    /// Kernel support and what children will get.
    #[serde(flatten)]
    pub landlock: landlock_rules::LandlockSummary,
    /// Architecture this library was built for.
    pub seccomp_arch: &'static str,
    /// The policy file the child programs were compiled from.
    pub seccomp_policy: &'static str,
    /// Number of child programs installed in step 7.
    pub seccomp_child_filters: usize,
    /// Instruction count of each, in installation order.
    pub seccomp_child_instructions: Vec<usize>,
}

/// The per-zygote lockdown state: built once, inherited by every forked child.
#[derive(Debug)]
pub struct Lockdown {
    /// Child seccomp programs in installation order, compiled once so a child only pays for
    /// installing them.
    child_filters: Vec<seccomp::BpfProgram>,
    /// The prebuilt landlock ruleset fd; empty when landlock is off or once step 6 consumed it.
    /// Closed on drop (in the zygote that is never).
    ruleset_fd: sys::AtomicOwnedFd,
    /// Whether step 6 has a ruleset to enforce; tells "landlock off" from "already consumed".
    landlock_enforced: bool,
    /// Flags for landlock_restrict_self on this kernel.
    restrict_flags: u32,
    /// Children's work dirs must lie below it (the landlock rule is on it).
    work_parent: PathBuf,
    /// What init found, for the C ABI report.
    report: Report,
}

impl Lockdown {
    /// Compile the child seccomp programs and build (not enforce) the landlock ruleset.
    pub fn prepare(config: &InitConfig) -> Result<Self, InitError> {
        let child_filters = seccomp::child_filters(config.processes)?;
        let ruleset = landlock_rules::build(config, landlock_rules::probe_abi())?;
        let report = Report {
            initialized: true,
            landlock: ruleset.summary,
            seccomp_arch: std::env::consts::ARCH,
            seccomp_policy: seccomp::host_policy()?.file,
            seccomp_child_filters: child_filters.len(),
            seccomp_child_instructions: child_filters.iter().map(Vec::len).collect(),
        };
        Ok(Lockdown {
            child_filters,
            landlock_enforced: ruleset.fd.is_some(),
            ruleset_fd: sys::AtomicOwnedFd::new(ruleset.fd),
            restrict_flags: ruleset.restrict_flags,
            work_parent: config.work_parent.clone(),
            report,
        })
    }

    /// What init found.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The prebuilt ruleset's fd number while this process still holds it.
    pub fn ruleset_fd(&self) -> Option<RawFd> {
        self.ruleset_fd.peek()
    }

    /// Run steps 1–7 in the calling process, which must be a freshly forked, single-threaded
    /// child. On error the process is half locked down and must `_exit`.
    pub fn enforce(&self, params: &ChildParams) -> Result<(), LockdownError> {
        params.validate(&self.work_parent)?;
        fds::close_all_except(&params.keep_fds, self.ruleset_fd())?;
        mounts::mount_work_dir(&params.work_dir, params.tmpfs_bytes, params.uid, params.gid)?;
        if let Some(shm_dir) = &params.shm_dir {
            mounts::mount_shm(shm_dir, params.tmpfs_bytes, params.uid, params.gid)?;
        }
        session::new_session()?;
        rlimits::apply(&params.rlimits)?;
        if params.rootless {
            creds::drop_capabilities()?;
        } else {
            creds::drop_to(params.uid, params.gid)?;
        }
        if self.landlock_enforced {
            let ruleset = self.ruleset_fd.take().ok_or(LandlockError::Consumed)?;
            landlock_rules::restrict_self(ruleset, self.restrict_flags)?;
        }
        for program in &self.child_filters {
            seccomp::apply(program)?;
        }
        Ok(())
    }
}
