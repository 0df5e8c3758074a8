//! `zygote-init probe <what> [arg]`: one host check for `sandfork doctor` (see the library's
//! `probe` module), and nothing else.
//!
//! `zygote-init <spec-json>`: builds one zygote's jail, then execs the Python zygote as PID 1 of
//! a new pid namespace. Single-threaded, linear, fail-fast.
//!
//! Steps, and the exit code when one fails (each prints one line
//! `zygote-init: <step>: <error>` to stderr):
//!
//! 1. sanitize — parse/validate the spec, keep only its fds, clear the environment ....... 101
//! 2. sources — clone bind sources and devices as detached read-only mount trees ........ 102
//! 3. user namespace — unshare all namespaces; a mapper writes the uid/gid range maps .... 103
//! 4. pid namespace — fork PID 1; this process stays as its monitor ...................... 104
//! 5. mounts — tmpfs root, attach the trees, dirs, symlinks (106: hostname) .............. 105
//! 6. pivot root — pivot_root, detach the old root, "/" read-only, chdir cwd ............. 107
//! 7. seccomp — NO_NEW_PRIVS and the zygote filters ...................................... 108
//! 8. exec — execve the interpreter ...................................................... 109
//!
//! Rootless (not run as root; the mode is geteuid != 0): step 1 requires the spec's maps to be
//! exactly `0 <euid> 1` / `0 <egid> 1`; step 3 has no mapper: it writes "deny" to setgroups and
//! those maps itself, and keeps its supplementary groups (setgroups is denied); step 2 runs
//! right after step 3, as root of the new user and mount namespaces, since cloning mounts needs
//! CAP_SYS_ADMIN over the caller's mount namespace (its failures still exit 102). Everything
//! from step 4 on is the same.
//!
//! The monitor exits with PID 1's status (128 + signal if killed), or 110 if it cannot wait.
//! Details and the `pub` constants: the `zygote_init` library.

use zygote_init::pidns::{self, Role};
use zygote_init::sanitize::{self, Sanitized};
use zygote_init::{rootfs, seccomp, sources, userns, uts, StepError};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        std::process::exit(zygote_init::probe::run(&args[2..]));
    }
    let code = match build_jail() {
        Ok(pid1_status) => pid1_status,
        Err(err) => {
            err.report();
            err.exit_code()
        }
    };
    std::process::exit(code)
}

/// The policy. Returns only in the monitor (PID 1's exit status) or on failure; PID 1 leaves
/// through `execve`.
fn build_jail() -> Result<i32, StepError> {
    // 1. Nothing inherited survives but stdio and the spec's fds. Not root: rootless mode.
    let Sanitized {
        spec,
        command,
        rootless,
    } = sanitize::sanitize(std::env::args_os())?;

    // 2. Host paths are reachable only now, as real root in the host namespaces (rootless:
    //    after step 3, as root of our own user and mount namespaces).
    let mut trees = if rootless {
        Vec::new()
    } else {
        sources::clone_all(&spec)?
    };

    // 3. All namespaces at once, owned by a user namespace mapping 0..K to host ids (rootless:
    //    mapping 0 to our own ids, written by ourselves).
    userns::enter(&spec, rootless)?;
    if rootless {
        trees = sources::clone_all(&spec)?;
    }

    // 4. The child is PID 1 of the new pid namespace; we wait for it, so killing us kills it.
    if let Role::Monitor(pid1) = pidns::fork_pid1()? {
        drop(trees);
        return Ok(pidns::monitor(pid1, &spec.keep_fds)?);
    }

    // 5. PID 1 builds the new root: read-only binds, devices, dirs, symlinks; then the hostname.
    rootfs::build(&spec, trees)?;
    uts::set_hostname(&spec.hostname)?;

    // 6. The new root becomes "/", read-only; nothing of the host's tree stays reachable.
    rootfs::pivot(&spec.cwd)?;

    // 7. No privilege gain through exec, and the zygote's seccomp filters.
    seccomp::lock(spec.seccomp)?;

    // 8. Become the zygote.
    Err(command.exec().into())
}
