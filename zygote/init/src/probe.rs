//! `zygote-init probe <what> [arg]`: the host checks of `sandfork doctor` that make raw system
//! calls or change the calling process for good (unshare, seccomp). They run here, in a freshly
//! exec'd single-threaded helper, instead of in a fork of the multi-threaded daemon.
//!
//! Each probe answers with its exit status — 0 yes, otherwise the errno of the failed call (1 for
//! a plain no) — and a probe that reads values prints them on stdout, one `name=value` per line.
//!
//! | probe | what it does |
//! |---|---|
//! | `unshare FLAGS` | `unshare(FLAGS)` (decimal clone flags) |
//! | `seccomp-filter` | NO_NEW_PRIVS and an allow-all seccomp filter |
//! | `seccomp-mode` | prints `mode=N` (PR_GET_SECCOMP of this process, i.e. of its parent's filter) |
//! | `seccomp-action ACTION` | 0 if the kernel knows the filter return action (decimal) |
//! | `mount-api` | prints `open_tree=0/1`, `move_mount=0/1`, `mount_setattr=0/1` |

use nix::errno::Errno;

use crate::sys;

/// The exit status of an unknown probe or a malformed argument.
pub const EXIT_USAGE: i32 = 64;

/// Runs the probe `args` names (the arguments after `probe`); returns the exit status.
pub fn run(args: &[String]) -> i32 {
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<i64>().ok());
    match (args.first().map(String::as_str), number(1)) {
        (Some("unshare"), Some(flags)) => match i32::try_from(flags) {
            Ok(flags) => status(nix::sched::unshare(
                nix::sched::CloneFlags::from_bits_retain(flags),
            )),
            Err(_) => EXIT_USAGE,
        },
        (Some("seccomp-filter"), None) => match sys::install_allow_all_filter() {
            Ok(()) if sys::seccomp_mode() == Ok(2) => 0,
            Ok(()) => 1,
            Err(errno) => errno as i32,
        },
        (Some("seccomp-mode"), None) => match sys::seccomp_mode() {
            Ok(mode) => {
                println!("mode={mode}");
                0
            }
            Err(errno) => errno as i32,
        },
        (Some("seccomp-action"), Some(action)) => match u32::try_from(action) {
            Ok(action) => i32::from(!sys::seccomp_action_available(action)),
            Err(_) => EXIT_USAGE,
        },
        (Some("mount-api"), None) => {
            for (name, present) in sys::mount_api_calls() {
                println!("{name}={}", u8::from(present));
            }
            0
        }
        _ => {
            eprintln!("zygote-init: probe: unknown probe {args:?}");
            EXIT_USAGE
        }
    }
}

fn status(result: nix::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(Errno::UnknownErrno) => 1,
        Err(errno) => errno as i32,
    }
}
