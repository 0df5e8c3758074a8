//! Step 3, user namespace: unshare the user namespace together with every other namespace, and
//! write its uid/gid maps.
//!
//! As root, the map is a *range* (jail root and one id per slot). Mapping more than our own id
//! needs CAP_SETUID/CAP_SETGID in the parent user namespace, which the process inside the new
//! namespace no longer has. So before unsharing we fork a "mapper" that stays root in the host
//! namespaces; the parent unshares, tells the mapper over a pipe, the mapper writes
//! `/proc/<parent>/{uid,gid}_map` and exits, and the parent checks its status. Then the parent
//! becomes uid/gid 0 inside, with no supplementary groups.
//!
//! Rootless (not root), there is no one to fork with more privilege than ourselves, and nothing
//! to map but our own ids: after unsharing, the process writes `deny` to
//! `/proc/self/setgroups` (the kernel's condition for an unprivileged gid map) and the one-line
//! maps `0 <euid> 1` / `0 <egid> 1` itself. Supplementary groups cannot be dropped then
//! (setgroups is denied); they show up as the overflow gid inside.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::wait::WaitStatus;
use nix::unistd::{getpid, getppid, pipe2, setgroups, setresgid, setresuid, ForkResult};
use nix::unistd::{Gid, Pid, Uid};

use crate::pidns::{describe, wait_for_exit};
use crate::sys;
use sandfork_ipc::jail::{IdMapping, JailSpec};

/// Every namespace the jail gets, created in one `unshare` so all are owned by the new user
/// namespace.
pub const NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWCGROUP);

/// Mapper exit status: maps written.
const MAPPER_OK: i32 = 0;
/// Mapper exit status: a map write failed (the reason went to the status pipe).
const MAPPER_FAILED: i32 = 1;
/// Mapper exit status: the parent closed the pipe without asking (its unshare failed).
const MAPPER_CANCELLED: i32 = 2;

/// Why entering the user namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum UserNsError {
    #[error("reading the parent-death signal: {0}")]
    GetPdeathsig(Errno),
    #[error("pipe: {0}")]
    Pipe(Errno),
    #[error("fork mapper: {0}")]
    ForkMapper(Errno),
    #[error("unshare(CLONE_NEWUSER|NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS|NEWCGROUP): {0}")]
    Unshare(Errno),
    #[error("signalling the mapper: {0}")]
    SignalMapper(std::io::Error),
    #[error("waiting for the mapper: {0}")]
    WaitMapper(Errno),
    #[error("mapper {status}: {message}")]
    Mapper { status: String, message: String },
    #[error("writing /proc/self/{file}: {source}")]
    OwnMap {
        file: &'static str,
        source: std::io::Error,
    },
    #[error("setgroups([]): {0}")]
    SetGroups(Errno),
    #[error("setresgid(0): {0}")]
    SetResGid(Errno),
    #[error("setresuid(0): {0}")]
    SetResUid(Errno),
    #[error("restoring the parent-death signal: {0}")]
    SetPdeathsig(Errno),
    #[error("the supervisor exited while the jail was being built")]
    SupervisorGone,
}

impl UserNsError {
    /// A hint naming the missing kernel feature, bubblewrap style.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            UserNsError::Unshare(Errno::EPERM) => Some(
                "creating namespaces was refused: run zygote-init as root, or (rootless) enable \
                 unprivileged user namespaces; check user.max_user_namespaces, \
                 kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns \
                 and any LSM or container seccomp policy that blocks unshare",
            ),
            UserNsError::Unshare(Errno::EINVAL) => Some(
                "the kernel lacks one of CONFIG_USER_NS, CONFIG_PID_NS, CONFIG_NET_NS, \
                 CONFIG_IPC_NS, CONFIG_UTS_NS, CONFIG_CGROUPS, or the process has threads",
            ),
            UserNsError::Unshare(Errno::ENOSPC) => {
                Some("a namespace limit was reached: see /proc/sys/user/max_*_namespaces")
            }
            UserNsError::OwnMap { .. } => Some(
                "rootless, a process may write its own maps once, mapping only its effective \
                 uid and gid, after \"deny\" in setgroups; an LSM (AppArmor's \
                 kernel.apparmor_restrict_unprivileged_userns) can refuse even that",
            ),
            UserNsError::Mapper { .. } => Some(
                "the mapper needs CAP_SETUID and CAP_SETGID over the outside ids: run \
                 zygote-init as root in the namespace that owns those ids",
            ),
            _ => None,
        }
    }
}

/// Runs step 3. Returns in the new namespaces as uid 0 / gid 0, with no supplementary groups
/// unless `rootless` (see the module docs).
pub fn enter(spec: &JailSpec, rootless: bool) -> Result<(), UserNsError> {
    // Changing credentials clears the parent-death signal the supervisor set for us: remember it.
    let parent_death = prctl::get_pdeathsig().map_err(UserNsError::GetPdeathsig)?;
    let supervisor = getppid();
    if rootless {
        unshare(NAMESPACES).map_err(UserNsError::Unshare)?;
        write_own_maps(spec)?;
    } else {
        unshare_with_mapper(spec)?;
        setgroups(&[]).map_err(UserNsError::SetGroups)?;
    }

    let root_gid = Gid::from_raw(0);
    setresgid(root_gid, root_gid, root_gid).map_err(UserNsError::SetResGid)?;
    let root_uid = Uid::from_raw(0);
    setresuid(root_uid, root_uid, root_uid).map_err(UserNsError::SetResUid)?;

    if let Some(signal) = parent_death {
        prctl::set_pdeathsig(signal).map_err(UserNsError::SetPdeathsig)?;
        // The supervisor may have died while the signal was cleared: then nobody will send it.
        if getppid() != supervisor {
            return Err(UserNsError::SupervisorGone);
        }
    }
    Ok(())
}

/// Rootless: `deny` in setgroups, then the one-line maps of our own ids (validated in step 1).
fn write_own_maps(spec: &JailSpec) -> Result<(), UserNsError> {
    let uid_map = render(&spec.uid_map);
    let gid_map = render(&spec.gid_map);
    for (file, text) in [
        ("setgroups", "deny"),
        ("uid_map", uid_map.as_str()),
        ("gid_map", gid_map.as_str()),
    ] {
        // One write(2) each, as the kernel requires for a map.
        File::options()
            .write(true)
            .open(format!("/proc/self/{file}"))
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|source| UserNsError::OwnMap { file, source })?;
    }
    Ok(())
}

/// As root: fork the mapper, unshare, have the mapper write the range maps.
fn unshare_with_mapper(spec: &JailSpec) -> Result<(), UserNsError> {
    let me = getpid();
    let uid_map = render(&spec.uid_map);
    let gid_map = render(&spec.gid_map);

    let (go_read, go_write) = pipe2(OFlag::O_CLOEXEC).map_err(UserNsError::Pipe)?;
    let (status_read, status_write) = pipe2(OFlag::O_CLOEXEC).map_err(UserNsError::Pipe)?;
    let mapper = match sys::fork().map_err(UserNsError::ForkMapper)? {
        ForkResult::Child => {
            drop(go_write);
            drop(status_read);
            run_mapper(
                me,
                go_read,
                status_write,
                &uid_map,
                &gid_map,
                &spec.keep_fds,
            )
        }
        ForkResult::Parent { child } => child,
    };
    drop(go_read);
    drop(status_write);

    if let Err(errno) = unshare(NAMESPACES) {
        drop(go_write); // EOF: the mapper exits without writing anything
        let _ = wait_for_exit(mapper);
        return Err(UserNsError::Unshare(errno));
    }
    File::from(go_write)
        .write_all(b"1")
        .map_err(UserNsError::SignalMapper)?;
    let mut message = String::new();
    // Read errors leave `message` empty; the exit status below still tells success from failure.
    let _ = File::from(status_read).read_to_string(&mut message);
    let status = wait_for_exit(mapper).map_err(UserNsError::WaitMapper)?;
    if status != WaitStatus::Exited(mapper, MAPPER_OK) {
        return Err(UserNsError::Mapper {
            status: describe(status),
            message,
        });
    }
    Ok(())
}

/// The `/proc/<pid>/uid_map` text: one "inside outside count" line per mapping.
pub fn render(map: &[IdMapping]) -> String {
    map.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

/// The mapper child: waits for the parent's unshare, writes both maps, exits.
fn run_mapper(
    parent: Pid,
    go: OwnedFd,
    status: OwnedFd,
    uid_map: &str,
    gid_map: &str,
    keep_fds: &[RawFd],
) -> ! {
    // The control socket is PID 1's alone: the supervisor must see EOF when PID 1 dies.
    for &fd in keep_fds {
        let _ = sys::close_range(fd, fd);
    }
    let mut byte = [0u8; 1];
    let code = match File::from(go).read(&mut byte) {
        Ok(1) => match write_maps(parent, uid_map, gid_map) {
            Ok(()) => MAPPER_OK,
            Err(message) => {
                let _ = File::from(status).write_all(message.as_bytes());
                MAPPER_FAILED
            }
        },
        _ => MAPPER_CANCELLED,
    };
    sys::exit_immediately(code)
}

fn write_maps(parent: Pid, uid_map: &str, gid_map: &str) -> Result<(), String> {
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = format!("/proc/{parent}/{file}");
        // The kernel takes a map in exactly one write(2); write_all issues one for this size.
        File::options()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(map.as_bytes()))
            .map_err(|err| format!("writing {path}: {err}"))?;
    }
    Ok(())
}
