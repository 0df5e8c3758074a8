//! zygote-init builds one zygote's jail and execs the Python zygote inside it.
//!
//! The supervisor spawns `zygote-init <spec-json>` (stdin /dev/null, stdout/stderr to a pipe, the
//! zygote's control socket as fd 3). The binary (`main.rs`) is the policy: it calls the steps
//! below in one linear, fail-fast order, the way Firecracker's jailer and bubblewrap do. This
//! library holds the steps, the [`JailSpec`] the supervisor serializes, and the exit codes it maps.
//!
//! | step | module | what happens | exit code |
//! |------|--------|--------------|-----------|
//! | 1 | [`sanitize`], [`spec`] | parse + validate the spec, check keep fds, close every other fd >= 3, clear env, umask 022, cwd /, reset signals | [`EXIT_SANITIZE`] 101 |
//! | 2 | [`sources`] | clone each bind source / device as a detached read-only mount tree (`open_tree`, `mount_setattr`) while host paths are reachable | [`EXIT_SOURCES`] 102 |
//! | 3 | [`userns`] | fork a mapper; `unshare` user+mnt+pid+net+ipc+uts+cgroup; mapper writes the uid/gid range maps; become 0:0, no groups; restore the parent-death signal | [`EXIT_USER_NAMESPACE`] 103 |
//! | 4 | [`pidns`] | fork PID 1 (pdeathsig SIGKILL tied to us); this process becomes the monitor | [`EXIT_PID_NAMESPACE`] 104 |
//! | 5 | [`rootfs`], [`uts`] | "/" rprivate, tmpfs root on /tmp, attach trees, dirs, symlinks; hostname | [`EXIT_MOUNTS`] 105, [`EXIT_HOSTNAME`] 106 |
//! | 6 | [`rootfs`] | `pivot_root(".", ".")`, detach the old root, remount "/" read-only, chdir cwd | [`EXIT_PIVOT_ROOT`] 107 |
//! | 7 | [`seccomp`] | NO_NEW_PRIVS, then the zygote seccomp filters | [`EXIT_SECCOMP`] 108 |
//! | 8 | [`exec`] | `execve` the interpreter | [`EXIT_EXEC`] 109 |
//! | - | [`pidns::monitor`] | waitpid on PID 1 failed | [`EXIT_MONITOR`] 110 |
//!
//! Otherwise zygote-init's exit status is PID 1's: the zygote's own exit code, or 128 + the
//! signal that killed it (e.g. 159 for a seccomp SIGSYS). A failing step prints exactly one line,
//! `zygote-init: <step>: <error>[ (hint: ...)]`, to stderr.
//!
//! Rootless mode (zygote-init not running as root) changes steps 1–3 only: the spec's maps
//! must be exactly `0 <euid> 1` and `0 <egid> 1` ([`JailSpec::validate_rootless`], 101); there is
//! no mapper, the process writes "deny" to setgroups and its own maps (103) and keeps its
//! supplementary groups; and step 2 runs after step 3, inside the new user and mount
//! namespaces, because cloning mounts needs CAP_SYS_ADMIN over the caller's mount namespace
//! (still 102). Bind sources are then reached with the daemon user's own permissions.
//!
//! `zygote-init probe <what>` ([`probe`]) is a second, tiny mode: the host checks of `sandfork
//! doctor` that make raw system calls or change the calling process, run in this exec'd helper
//! rather than in a fork of the daemon.
//!
//! Unsafe code lives only in the private `sys` module.

pub mod error;
pub mod exec;
pub mod pidns;
pub mod probe;
pub mod rootfs;
pub mod sanitize;
pub mod seccomp;
pub mod sources;
pub use sandfork_ipc::jail as spec;
mod sys;
pub mod userns;
pub mod uts;

pub use error::{
    StepError, EXIT_EXEC, EXIT_HOSTNAME, EXIT_MONITOR, EXIT_MOUNTS, EXIT_PID_NAMESPACE,
    EXIT_PIVOT_ROOT, EXIT_SANITIZE, EXIT_SECCOMP, EXIT_SOURCES, EXIT_USER_NAMESPACE,
};
pub use spec::{Bind, ExecSpec, IdMapping, JailSpec, Symlink};
