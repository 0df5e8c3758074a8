//! Step 5: give up every privilege of the zygote.
//!
//! Normally ([`drop_to`]) the child becomes its slot's uid and gid: changing every uid away from
//! 0 clears the permitted and effective capability sets, so nothing after this step is
//! privileged.
//!
//! In rootless mode ([`drop_capabilities`]) the zygote's user namespace maps only the daemon's
//! own uid and gid (as 0), so there is no other id to become. The child stays uid/gid 0 of the
//! namespace and clears the capabilities themselves instead: securebits first (locked, so
//! neither exec as uid 0 nor a uid change can hand capabilities back), then the bounding and
//! ambient sets, then the effective, permitted and inheritable sets. Supplementary groups stay:
//! an unprivileged user namespace has setgroups denied.

use nix::errno::Errno;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::sys;

/// Securebits of a rootless child, each with its lock bit so nothing can clear it again:
/// NOROOT (uid 0 gets no capabilities from exec), NO_SETUID_FIXUP (uid changes do not adjust
/// capabilities), KEEP_CAPS off, NO_CAP_AMBIENT_RAISE.
pub const ROOTLESS_SECUREBITS: libc::c_int = libc::SECBIT_NOROOT
    | libc::SECBIT_NOROOT_LOCKED
    | libc::SECBIT_NO_SETUID_FIXUP
    | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
    | libc::SECBIT_KEEP_CAPS_LOCKED
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

/// Capability numbers are below 64 (two 32-bit words); the kernel's last one is lower.
const CAP_NUMBERS: u32 = 64;

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
    /// Rootless: the securebits could not be set (needs CAP_SETPCAP, which the zygote has).
    #[error("prctl(PR_SET_SECUREBITS, {bits:#x}): {source}")]
    Securebits {
        bits: libc::c_int,
        #[source]
        source: Errno,
    },
    /// Rootless: a capability could not be removed from the bounding set.
    #[error("prctl(PR_CAPBSET_DROP, {cap}): {source}")]
    BoundingSet {
        cap: u32,
        #[source]
        source: Errno,
    },
    /// Rootless: the ambient set could not be cleared.
    #[error("prctl(PR_CAP_AMBIENT_CLEAR_ALL): {0}")]
    Ambient(#[source] Errno),
    /// Rootless: the effective, permitted and inheritable sets could not be emptied.
    #[error("capset(empty): {0}")]
    Capset(#[source] Errno),
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

/// Rootless step 5: stay uid/gid 0 of the namespace but hold no capability, now or ever after.
/// The order matters: securebits and the bounding set need CAP_SETPCAP, which `capset` removes.
pub fn drop_capabilities() -> Result<(), CredsError> {
    sys::set_securebits(ROOTLESS_SECUREBITS).map_err(|source| CredsError::Securebits {
        bits: ROOTLESS_SECUREBITS,
        source,
    })?;
    for cap in 0..CAP_NUMBERS {
        match sys::capbset_drop(cap) {
            Ok(()) => {}
            // Past the kernel's last capability (it has no /proc here to ask).
            Err(Errno::EINVAL) if cap > 0 => break,
            Err(source) => return Err(CredsError::BoundingSet { cap, source }),
        }
    }
    sys::ambient_clear_all().map_err(CredsError::Ambient)?;
    sys::capset_empty().map_err(CredsError::Capset)?;
    nix::sys::prctl::set_dumpable(false).map_err(CredsError::Dumpable)
}
