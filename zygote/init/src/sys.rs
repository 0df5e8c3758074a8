//! The only `unsafe` in zygote-init: `fork`, signal dispositions, and the syscalls nix 0.30
//! does not wrap (`close_range`, `pidfd_open`, and the new mount API: `open_tree`,
//! `mount_setattr`, `move_mount`). Each wrapper returns `nix::Result` and owns what it opens.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{ForkResult, Pid};
use nix::NixPath;

/// `fork()` for a process that is known to be single-threaded.
pub fn fork() -> nix::Result<ForkResult> {
    // SAFETY: zygote-init never starts a thread (no runtime, no thread pool, no library that
    // spawns one), so the child is a full copy of a single-threaded process and may call anything,
    // not only async-signal-safe functions.
    unsafe { nix::unistd::fork() }
}

/// Closes every descriptor in `first..=last` (the kernel skips the ones that are not open).
pub fn close_range(first: RawFd, last: RawFd) -> nix::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range takes two integers and a flag word and touches no memory of ours. The
    // caller owns the range: no `OwnedFd` of this process lives in it (the only callers run
    // before anything is opened, or in a process that is about to use no descriptor but stdio).
    let res = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    Errno::result(res).map(drop)
}

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no pointers.
    let res = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0 as libc::c_uint) };
    let fd = Errno::result(res)?;
    // SAFETY: on success the kernel returned a fresh descriptor (O_CLOEXEC is implied for
    // pidfds) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`: a detached
/// copy of the mount (tree) at `path`, held by the returned descriptor.
pub fn open_tree_clone(path: &Path, recursive: bool) -> nix::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let res = path.with_nix_path(|cpath| {
        // SAFETY: `cpath` is a NUL-terminated string that lives for the whole call; the kernel
        // only reads it.
        unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, cpath.as_ptr(), flags) }
    })?;
    let fd = Errno::result(res)?;
    // SAFETY: on success open_tree returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, attr)`: sets `attr_set` (and the
/// propagation) on every mount of the tree `tree` refers to, leaving every other flag as it is.
pub fn mount_setattr_recursive(tree: BorrowedFd<'_>, attr: &libc::mount_attr) -> nix::Result<()> {
    let flags = (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint;
    // SAFETY: the path is a static empty C string, `attr` points to a live, initialized
    // `mount_attr` whose size we pass; the kernel only reads both.
    let res = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(res).map(drop)
}

/// `move_mount(tree, "", target, "", F_EMPTY_PATH | T_EMPTY_PATH)`: attaches the detached tree
/// on top of the file or directory `target` refers to.
pub fn move_mount(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both paths are static empty C strings; the descriptors are borrowed, so they stay
    // open for the call; the kernel only reads its arguments.
    let res = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    Errno::result(res).map(drop)
}

/// Unblocks every signal and puts every catchable signal back to its default action, so the
/// zygote does not inherit an ignored SIGCHLD or a blocked SIGTERM from whoever spawned us.
pub fn reset_signals() -> nix::Result<()> {
    SigSet::empty().thread_set_mask()?;
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context, so none of
        // sigaction's handler-safety requirements apply.
        unsafe { signal::sigaction(sig, &default) }?;
    }
    Ok(())
}

/// `fcntl(fd, F_GETFD)`: Ok when `fd` is an open descriptor.
pub fn fd_is_open(fd: RawFd) -> nix::Result<()> {
    // SAFETY: F_GETFD on an integer only reads the descriptor table; no memory is passed.
    let res = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    Errno::result(res).map(drop)
}

/// `fcntl(fd, F_SETFD, 0)`: the descriptor survives `execve`.
pub fn clear_cloexec(fd: RawFd) -> nix::Result<()> {
    // SAFETY: F_SETFD only changes the close-on-exec flag of `fd`; no memory is passed.
    let res = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    Errno::result(res).map(drop)
}

/// `_exit(code)`: ends a forked helper without running exit handlers inherited from the parent.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit takes an integer, never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// NO_NEW_PRIVS, then a one-instruction "allow everything" seccomp filter: whether filters
/// install here at all (`zygote-init probe seccomp-filter`).
pub fn install_allow_all_filter() -> nix::Result<()> {
    nix::sys::prctl::set_no_new_privs()?;
    let mut program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive on this stack for the call; the kernel
    // copies the program.
    let res = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    Errno::result(res).map(drop)
}

/// `PR_GET_SECCOMP`: 0 (no filter) or 2 (filtered) for this process.
pub fn seccomp_mode() -> nix::Result<i32> {
    // SAFETY: prctl with integer arguments; reading the mode changes nothing.
    let res = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    Errno::result(res)
}

/// `seccomp(SECCOMP_GET_ACTION_AVAIL)`: whether the kernel knows a filter return action.
pub fn seccomp_action_available(action: u32) -> bool {
    // SAFETY: the kernel reads one u32 from the pointer, which points at a live local.
    let res = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    res == 0
}

/// Whether the kernel has `open_tree`, `move_mount` and `mount_setattr`: each is called so that
/// it fails harmlessly (no clone, bad descriptors, a zero-sized attribute) unless it is absent
/// (ENOSYS).
pub fn mount_api_calls() -> [(&'static str, bool); 3] {
    let exists = |res: libc::c_long| res >= 0 || Errno::last() != Errno::ENOSYS;
    // SAFETY: the path is a NUL-terminated literal; the flags ask for no clone.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let open_tree = exists(tree);
    if tree >= 0 {
        // SAFETY: a descriptor the kernel just gave us and nothing else holds.
        drop(unsafe { OwnedFd::from_raw_fd(tree as RawFd) });
    }
    // SAFETY: empty NUL-terminated literals; with invalid descriptors nothing is moved.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            -1,
            c"".as_ptr(),
            -1,
            c"".as_ptr(),
            0 as libc::c_uint,
        )
    };
    let move_mount = exists(moved);
    // SAFETY: an empty literal path, a null attribute pointer with size 0: the kernel rejects
    // the size before reading anything.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0 as libc::c_uint,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    [
        ("open_tree", open_tree),
        ("move_mount", move_mount),
        ("mount_setattr", exists(set)),
    ]
}
