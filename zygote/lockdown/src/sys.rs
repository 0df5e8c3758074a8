//! The few raw system calls that neither nix nor the landlock crate expose in the form the
//! lockdown needs. Every `unsafe` block of the library lives here (and in the C ABI edge, `ffi`).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;

/// `LANDLOCK_CREATE_RULESET_VERSION`: ask the kernel for its landlock ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1 << 0;

/// `close_range(first, last, 0)`: close every open fd in `first..=last`.
///
/// nix 0.30 has no wrapper, and calling the raw syscall (rather than glibc's 2.34+ symbol) keeps
/// the cdylib loadable by interpreters linked against older glibc.
pub fn close_range(first: u32, last: u32) -> Result<(), Errno> {
    // SAFETY: close_range only takes integers and touches no memory of ours; closing fds the
    // caller chose is the purpose of the call (the caller guarantees nothing still uses them).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::from(first),
            libc::c_uint::from(last),
            0 as libc::c_uint,
        )
    };
    Errno::result(rc).map(drop)
}

/// The landlock ABI version of the running kernel (`landlock_create_ruleset(NULL, 0, VERSION)`),
/// or the errno: ENOSYS when the kernel is built without landlock, EOPNOTSUPP when it is
/// disabled at boot.
///
/// The landlock crate keeps its own probe private, and the report must name the number.
pub fn landlock_abi_version() -> Result<i32, Errno> {
    // SAFETY: with a NULL attribute pointer, size 0 and the VERSION flag the kernel reads no
    // memory and creates no fd; it only returns the ABI number.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    Errno::result(rc).map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

/// `landlock_restrict_self(ruleset, flags)`: enforce a prebuilt ruleset on the calling thread.
///
/// The landlock crate's `RulesetCreated::restrict_self` cannot be used on a ruleset built in the
/// zygote and inherited across fork without also hiding the fd number that step 1 must keep open,
/// so the child enforces the inherited fd directly.
pub fn landlock_restrict_self(ruleset: BorrowedFd<'_>, flags: u32) -> Result<(), Errno> {
    // SAFETY: the call takes an fd we borrow for its duration and integer flags; it reads no
    // memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            ruleset.as_raw_fd(),
            libc::c_uint::from(flags),
        )
    };
    Errno::result(rc).map(drop)
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (capabilities 0–31, 32–63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `capset` with empty effective, permitted and inheritable sets for the calling thread.
///
/// nix has no capability calls; the `caps` crate would be a dependency for one syscall.
pub fn capset_empty() -> Result<(), Errno> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: a valid version-3 header and the two-element data array capset(2) reads for that
    // version; both outlive the call and the kernel only reads `data` (it may write the header's
    // version on a mismatch, which is why `header` is mutable).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::addr_of_mut!(header),
            data.as_ptr(),
        )
    };
    Errno::result(rc).map(drop)
}

/// `prctl(PR_SET_SECUREBITS, bits)`.
pub fn set_securebits(bits: libc::c_int) -> Result<(), Errno> {
    // SAFETY: PR_SET_SECUREBITS takes an integer and no pointer; the trailing zeros are unused.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// `prctl(PR_CAPBSET_DROP, cap)`: EINVAL once `cap` is past the kernel's last capability.
pub fn capbset_drop(cap: u32) -> Result<(), Errno> {
    // SAFETY: PR_CAPBSET_DROP takes an integer and no pointer.
    let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
pub fn ambient_clear_all() -> Result<(), Errno> {
    // SAFETY: integers only; the kernel requires the unused arguments to be zero.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// An fd owned through an atomic integer, so that a forked child can take it through `&self`
/// (the lockdown state lives in a global) without a lock: a lock that another thread held at
/// fork time would never be released in the child.
#[derive(Debug)]
pub struct AtomicOwnedFd(AtomicI32);

impl AtomicOwnedFd {
    /// Hold `fd` (or nothing).
    pub fn new(fd: Option<OwnedFd>) -> Self {
        AtomicOwnedFd(AtomicI32::new(fd.map_or(-1, IntoRawFd::into_raw_fd)))
    }

    /// The fd number while it is still held.
    pub fn peek(&self) -> Option<RawFd> {
        Some(self.0.load(Ordering::SeqCst)).filter(|fd| *fd >= 0)
    }

    /// Take the fd out; `None` if it was never there or was already taken.
    pub fn take(&self) -> Option<OwnedFd> {
        let fd = self.0.swap(-1, Ordering::SeqCst);
        // SAFETY: a non-negative value can only come from the OwnedFd given to `new` (its
        // ownership was released with into_raw_fd), and the swap leaves -1 behind, so exactly
        // one caller gets to own it.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl Drop for AtomicOwnedFd {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// Takes ownership of descriptors SCM_RIGHTS just installed in this process.
pub fn received_fds(raw: Vec<RawFd>) -> Vec<OwnedFd> {
    raw.into_iter()
        // SAFETY: the kernel just installed these descriptors for us; nothing else owns them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// `fork()` in the zygote's serving loop.
///
/// # Caller's promise
/// The process is single-threaded (zygote.py checks before it serves), so the child may run
/// anything; it returns to Python, which runs `PyOS_AfterFork_Child` first.
pub fn fork_zygote() -> Result<libc::pid_t, Errno> {
    // SAFETY: single-threaded by the caller's promise above; no Python lock can be held (the
    // loop runs no Python).
    let pid = unsafe { libc::fork() };
    Errno::result(pid)
}

/// `_exit(code)`: ends a freshly forked child at once, running no at-exit handler and no
/// destructor of the zygote's (a floor child, `SpawnRequest::floor`).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns; nothing is left half-done in a child that
    // has not run anything since its fork.
    unsafe { libc::_exit(code) }
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    Errno::result(fd)?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `wait4(pid, WNOHANG)`: the wait status and resource usage of an exited child, or None if it
/// has not exited.
pub fn reap_child(pid: libc::pid_t) -> Result<Option<(libc::c_int, libc::rusage)>, Errno> {
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    match Errno::result(reaped)? {
        0 => Ok(None),
        _ => Ok(Some((status, usage))),
    }
}

/// This process's peak RSS in KiB (getrusage(RUSAGE_SELF)).
pub fn max_rss_kb() -> u64 {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    u64::try_from(usage.ru_maxrss).unwrap_or(0)
}
