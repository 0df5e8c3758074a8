//! Step 5: become the slot's uid and gid. Changing every uid away from 0 clears the permitted
//! and effective capability sets, so nothing after this step is privileged.

use nix::errno::Errno;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

/// Step 5 failed.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// Fails with EPERM when the zygote's user namespace was set up with setgroups "deny".
    #[error("setgroups([]): {0}")]
    Setgroups(#[source] Errno),
    /// The gid is not mapped in the zygote's user namespace.
    #[error("setresgid({gid}): {source}")]
    Setresgid {
        gid: u32,
        #[source]
        source: Errno,
    },
    /// The uid is not mapped in the zygote's user namespace.
    #[error("setresuid({uid}): {source}")]
    Setresuid {
        uid: u32,
        #[source]
        source: Errno,
    },
    /// Could not mark the process non-dumpable.
    #[error("prctl(PR_SET_DUMPABLE, 0): {0}")]
    Dumpable(#[source] Errno),
}

/// Drop supplementary groups, then gid, then uid (the gid change needs the capabilities the uid
/// change removes), then forbid core dumps and ptrace-style access by the same uid.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), CredsError> {
    setgroups(&[]).map_err(CredsError::Setgroups)?;
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(|source| CredsError::Setresgid { gid, source })?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(|source| CredsError::Setresuid { uid, source })?;
    nix::sys::prctl::set_dumpable(false).map_err(CredsError::Dumpable)
}
