//! Helpers shared by the privileged integration tests: root detection that says SKIPPED out
//! loud, a throwaway forked child per check (STYLE habit 8), and a world-traversable work tree.
#![allow(dead_code)] // each test binary uses a different subset

#[path = "../../../../tests/support/skip.rs"]
mod skip;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use sandfork_lockdown::{ChildParams, InitConfig, RlimitParams};

/// The slot identity the tests drop to; unmapped on the host, which is fine for the kernel.
pub const UID: u32 = 31_000;
pub const GID: u32 = 31_001;

/// True when running as root; otherwise prints why the caller skips.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip::skip(
        test,
        "needs root (mount namespaces, setresuid, landlock as another uid)",
    );
    false
}

/// How a forked child ended.
#[derive(Debug)]
pub struct Outcome {
    /// The wait status.
    pub status: WaitStatus,
    /// What the child wrote to its report pipe (an error message, or "" on success).
    pub message: String,
}

impl Outcome {
    /// Panic with the child's message unless it exited 0.
    pub fn assert_ok(&self) {
        assert!(
            matches!(self.status, WaitStatus::Exited(_, 0)),
            "child failed: {:?}: {}",
            self.status,
            self.message
        );
    }

    /// The signal that killed the child, if any.
    pub fn signal(&self) -> Option<nix::sys::signal::Signal> {
        match self.status {
            WaitStatus::Signaled(_, signal, _) => Some(signal),
            _ => None,
        }
    }
}

/// Run `body` in a forked child and report how it ended. The child gets the write end of a pipe
/// (`report_fd`, to keep across the lockdown); `body` returns `Err(message)` to fail. After the
/// fork only the child path runs, and the child always leaves through `_exit`.
pub fn in_child(body: impl FnOnce(i32) -> Result<(), String>) -> Outcome {
    let (read_end, write_end): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only runs `body` and then `_exit`s; it never returns into the test
    // harness, whose other threads do not exist in the child.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read_end);
            let fd = write_end.as_raw_fd();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(fd)));
            let (code, message) = match result {
                Ok(Ok(())) => (0, String::new()),
                Ok(Err(message)) => (1, message),
                Err(_) => (2, "child panicked".to_owned()),
            };
            let mut file = fs::File::from(write_end);
            let _ = file.write_all(message.as_bytes());
            // SAFETY: _exit is async-signal-safe and skips the harness's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut message = String::new();
            let _ = fs::File::from(read_end).read_to_string(&mut message);
            let status = waitpid(child, None).expect("waitpid");
            Outcome { status, message }
        }
    }
}

/// A throwaway tree `<tmp>/sandbox/work` that the slot uid can traverse.
pub struct WorkTree {
    /// Removed on drop.
    pub root: tempfile::TempDir,
    /// The work_parent of the init config.
    pub work_parent: PathBuf,
    /// The per-child tmpfs mount point.
    pub work_dir: PathBuf,
}

impl WorkTree {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("sandfork-lockdown-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let work_parent = root.path().join("sandbox");
        let work_dir = work_parent.join("work");
        fs::create_dir_all(&work_dir).expect("mkdir work");
        fs::set_permissions(&work_parent, fs::Permissions::from_mode(0o755)).expect("chmod");
        WorkTree {
            root,
            work_parent,
            work_dir,
        }
    }

    /// An init config for a host (not jailed) child: system directories readable.
    pub fn config(&self) -> InitConfig {
        InitConfig {
            read_exec_paths: ["/usr", "/lib", "/lib64", "/bin"]
                .map(PathBuf::from)
                .to_vec(),
            read_paths: [
                "/etc/ld.so.cache",
                "/dev/urandom",
                "/dev/random",
                "/dev/zero",
            ]
            .map(PathBuf::from)
            .to_vec(),
            read_write_paths: vec![PathBuf::from("/dev/null")],
            work_parent: self.work_parent.clone(),
            landlock_required: true,
            processes: false,
        }
    }

    /// Rootless child params: uid/gid 0, capabilities dropped instead.
    pub fn rootless_params(&self, extra: &[i32]) -> ChildParams {
        ChildParams {
            uid: 0,
            gid: 0,
            rootless: true,
            ..self.params(extra)
        }
    }

    /// Child params keeping stdio and `extra` fds.
    pub fn params(&self, extra: &[i32]) -> ChildParams {
        let mut keep_fds = vec![0, 1, 2];
        keep_fds.extend_from_slice(extra);
        ChildParams {
            keep_fds,
            work_dir: self.work_dir.clone(),
            tmpfs_bytes: 1 << 20,
            uid: UID,
            gid: GID,
            rootless: false,
            rlimits: RlimitParams {
                cpu_seconds: 15,
                fsize_bytes: 64 << 20,
                nofile: 256,
                nproc: 64,
                as_bytes: None,
            },
            shm_dir: None,
        }
    }
}

/// The unprivileged host uid/gid a root test process becomes before it builds a rootless
/// namespace (`nobody` on Debian); an unprivileged test process keeps its own.
pub const ROOTLESS_HOST_ID: u32 = 65_534;

/// Whether rootless tests can run: unprivileged user namespaces must work. Probed in a forked
/// child (as the unprivileged id when we are root); prints SKIPPED, or panics under CI.
pub fn require_rootless(test: &str) -> bool {
    let probe = in_child(|_| enter_rootless_userns());
    if matches!(probe.status, WaitStatus::Exited(_, 0)) {
        return true;
    }
    let reason = format!(
        "unprivileged user namespaces do not work here ({}); check user.max_user_namespaces, \
         kernel.unprivileged_userns_clone and kernel.apparmor_restrict_unprivileged_userns",
        probe.message
    );
    skip::skip(test, &reason);
    false
}

/// In a forked child: what zygote-init does in rootless mode, minus the other namespaces.
/// As root, first become [`ROOTLESS_HOST_ID`] with no groups (what the test harness of the
/// daemon does); then `unshare(CLONE_NEWUSER)` and map uid/gid 0 to our own ids, with setgroups
/// denied. Afterwards the process is uid 0 with every capability of the new namespace, like a
/// rootless zygote.
pub fn enter_rootless_userns() -> Result<(), String> {
    use nix::unistd::{Gid, Uid};
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = (
            Uid::from_raw(ROOTLESS_HOST_ID),
            Gid::from_raw(ROOTLESS_HOST_ID),
        );
        nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
        // Leaving uid 0 made us non-dumpable, which hands /proc/self/*_map to root. (A process
        // exec'd as the unprivileged user, like the daemon, starts dumpable.)
        nix::sys::prctl::set_dumpable(true).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    }
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("unshare(CLONE_NEWUSER): {e}"))?;
    for (file, text) in [
        ("setgroups", "deny".to_owned()),
        ("uid_map", format!("0 {uid} 1")),
        ("gid_map", format!("0 {gid} 1")),
    ] {
        fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| format!("writing /proc/self/{file}: {e}"))?;
    }
    Ok(())
}

/// `Err` with context unless `cond`.
pub fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// The errno of a failed libc-style return value (`-1` + errno), or `Err` if it succeeded.
pub fn expect_errno(rc: libc::c_long, want: i32, what: &str) -> Result<(), String> {
    let errno = nix::errno::Errno::last_raw();
    if rc != -1 {
        return Err(format!("{what}: succeeded ({rc}), expected errno {want}"));
    }
    check(errno == want, || {
        format!(
            "{what}: errno {} ({}), expected {} ({})",
            errno,
            nix::errno::Errno::from_raw(errno),
            want,
            nix::errno::Errno::from_raw(want)
        )
    })
}
