//! Rootless mode: `sandforkd` run by an ordinary user, on a kernel that lets unprivileged users
//! create user namespaces.
//!
//! The mode is the effective uid, not a config key: root gets the full sandbox, anyone else this
//! one. What changes, and where:
//! - the jail (`pool::Profile::prepare`): each zygote's user namespace maps only the daemon's
//!   own uid and gid, as 0 ([`own_id_maps`]); zygote-init writes that map itself and binds the
//!   interpreter from inside its new namespaces (see zygote/init, "Rootless");
//! - the children (`zygote.py` → the lockdown's `"rootless": true`): every child stays uid 0 of
//!   its zygote's namespace and drops every capability instead of becoming its slot's uid
//!   (locked securebits; empty bounding, ambient, effective, permitted and inheritable sets).
//!   Identities still bound how many runs execute at once;
//! - the limits: no cgroups (nothing may try them: `Supervisor::is_rootless`); memory is
//!   RLIMIT_AS, processes and threads RLIMIT_NPROC, sized by [`nproc_limit`];
//! - the paths: the runtime dir and the socket live under `$XDG_RUNTIME_DIR` (else /tmp).
//!
//! At start-up [`check_user_namespaces`] fails with the sysctls to look at when unprivileged user
//! namespaces do not work, and each of [`rootless_losses`] is logged as a warning; `sandfork
//! doctor` prints the same list.

use std::ffi::CString;
use std::io;
use std::process::{Command, Stdio};

use nix::unistd::{getegid, geteuid, getgroups};

use crate::daemon::sys;
use crate::daemon::zygotes::jail::IdMapping;

/// The sysctls that decide whether an unprivileged user may create a user namespace.
const USERNS_SYSCTLS: &[(&str, &str)] = &[
    (
        "user.max_user_namespaces",
        "/proc/sys/user/max_user_namespaces",
    ),
    (
        "kernel.unprivileged_userns_clone",
        "/proc/sys/kernel/unprivileged_userns_clone",
    ),
    (
        "kernel.apparmor_restrict_unprivileged_userns",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ),
];

/// A program that does nothing, run inside the probe namespace (coreutils is essential on every
/// distribution sandforkd supports).
const TRUE_PROGRAMS: &[&str] = &["/bin/true", "/usr/bin/true"];

/// Rootless mode cannot work on this host.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error(
        "not root, so rootless mode, which needs unprivileged user namespaces: {step} failed: \
         {source}; enable them ({sysctls}) or run sandforkd as root"
    )]
    UserNamespaces {
        step: &'static str,
        source: io::Error,
        sysctls: String,
    },
    #[error("cannot probe user namespaces: no {0} to run")]
    NoProbeProgram(String),
    #[error("probing user namespaces: {program} exited with {status}")]
    ProbeFailed { program: String, status: String },
}

/// True when the daemon runs rootless: its effective uid is not 0.
pub fn is_rootless() -> bool {
    !geteuid().is_root()
}

/// A rootless zygote's uid and gid maps: the daemon's own ids, as 0, and nothing else (all an
/// unprivileged process may map).
pub fn own_id_maps() -> (Vec<IdMapping>, Vec<IdMapping>) {
    let own = |id| {
        vec![IdMapping {
            inside: 0,
            outside: id,
            count: 1,
        }]
    };
    (own(geteuid().as_raw()), own(getegid().as_raw()))
}

/// RLIMIT_NPROC of a rootless child. The kernel counts it per user namespace and uid, and in a
/// rootless zygote's namespace the zygote and every one of its children are uid 0: the limit
/// covers all of them at once. One zygote may hold every identity (each concurrent run and warm
/// child), so a child gets `pids` for each of them, plus one for the zygote; a single run can
/// then use what the others leave, which is the price of a single uid.
pub fn nproc_limit(pids: u64, identities: u32) -> u64 {
    pids.saturating_mul(u64::from(identities.max(1)))
        .saturating_add(1)
}

/// The protections rootless mode gives up on this host, one sentence each (no "rootless:"
/// prefix): logged as warnings at start-up and printed by `sandfork doctor`.
pub fn rootless_losses() -> Vec<String> {
    let uid = geteuid().as_raw();
    let scoping = match sandfork_lockdown::landlock_rules::probe_abi() {
        Ok(abi) if abi >= 6 => format!("this kernel's ABI {abi} has it"),
        Ok(abi) => format!("this kernel's ABI {abi} does NOT have it"),
        Err(errno) => format!("this kernel has no landlock ({errno})"),
    };
    let mut losses = vec![
        format!(
            "all runs share one uid (the daemon's own, {uid}): a run could signal or ptrace \
             another if landlock signal scoping were absent — it is on with ABI ≥ 6, and \
             {scoping}; ptrace and process_vm_* are killed by seccomp either way"
        ),
        "no cgroups: memory is RLIMIT_AS, pids RLIMIT_NPROC (counted over every run of a \
         zygote, so sized pids × identities), no OOM accounting or kernel-measured peak memory \
         (memory_limit is inferred from MemoryError)"
            .to_string(),
        format!(
            "no separate host identity: zygotes and runs are uid {uid}, the daemon's own, not \
             an unused uid range; a run that got past every other layer would act as the \
             daemon's user, with its files and its socket"
        ),
    ];
    let groups: Vec<u32> = getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .filter(|&g| g != getegid().as_raw())
        .collect();
    if !groups.is_empty() {
        losses.push(format!(
            "supplementary groups {groups:?} stay in effect in the jail: an unprivileged user \
             namespace denies setgroups; run sandforkd as a user without extra groups"
        ));
    }
    losses
}

/// A profile's `processes` setting in words, for the doctor's interpreter line and the
/// start-up log: what a run may do, and in rootless mode what caps it instead of a cgroup.
pub fn processes_setting(processes: u64, rootless: bool) -> String {
    if processes == 0 {
        return "processes: off (a run cannot start processes)".into();
    }
    let mut text = format!(
        "processes: up to {processes} processes and threads per run (own pid namespace, \
         private /dev/shm, exec only of the interpreter)"
    );
    if rootless {
        text.push_str(
            "; rootless, so no cgroup counts a run's processes: RLIMIT_NPROC caps them (shared \
             by every run of a zygote), and RLIMIT_AS caps each process's memory on its own, so \
             a run of N processes may use N × memory_mb",
        );
    }
    text
}

/// Fails, naming the sysctls to check, unless this user can create a user namespace and map
/// its own ids in it (what zygote-init does for every rootless zygote). Runs two throwaway
/// processes; nothing in this process changes.
pub fn check_user_namespaces() -> Result<(), RootlessError> {
    let program = TRUE_PROGRAMS
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or_else(|| RootlessError::NoProbeProgram(TRUE_PROGRAMS.join(" or ")))?;
    probe(program, "unshare(CLONE_NEWUSER)", false)?;
    probe(
        program,
        "writing the uid/gid map of a new user namespace",
        true,
    )
}

/// Runs `program` in a new user namespace (and, with `map`, with our ids mapped to 0).
fn probe(program: &str, step: &'static str, map: bool) -> Result<(), RootlessError> {
    let maps: Vec<(CString, Vec<u8>)> = if map {
        vec![
            (c"/proc/self/setgroups".into(), b"deny".to_vec()),
            (
                c"/proc/self/uid_map".into(),
                format!("0 {} 1", geteuid()).into_bytes(),
            ),
            (
                c"/proc/self/gid_map".into(),
                format!("0 {} 1", getegid()).into_bytes(),
            ),
        ]
    } else {
        Vec::new()
    };
    let mut command = Command::new(program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::enter_user_namespace(&mut command, maps);
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(RootlessError::ProbeFailed {
            program: program.to_string(),
            status: status.to_string(),
        }),
        Err(source) => Err(RootlessError::UserNamespaces {
            step,
            source,
            sysctls: describe_sysctls(),
        }),
    }
}

/// "user.max_user_namespaces > 0 (now 0), …" for the sysctls this kernel has.
fn describe_sysctls() -> String {
    let wanted = |name: &str| match name {
        "user.max_user_namespaces" => "> 0",
        "kernel.unprivileged_userns_clone" => "= 1",
        _ => "= 0",
    };
    let present: Vec<String> = USERNS_SYSCTLS
        .iter()
        .filter_map(|(name, path)| {
            let now = std::fs::read_to_string(path).ok()?;
            Some(format!(
                "sysctl {name} {} (now {})",
                wanted(name),
                now.trim()
            ))
        })
        .collect();
    if present.is_empty() {
        "check user.max_user_namespaces and any LSM or container policy that blocks unshare"
            .to_string()
    } else {
        format!(
            "{}; or an LSM or container policy blocks unshare",
            present.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nproc_covers_every_identity_and_the_zygote() {
        assert_eq!(nproc_limit(64, 10), 641);
        assert_eq!(nproc_limit(64, 0), 65, "never below one run's share");
        assert_eq!(nproc_limit(u64::MAX, 3), u64::MAX);
    }

    #[test]
    fn own_maps_are_one_line_of_our_ids() {
        let (uid_map, gid_map) = own_id_maps();
        assert_eq!(uid_map.len(), 1);
        assert_eq!(
            (uid_map[0].inside, uid_map[0].outside, uid_map[0].count),
            (0, geteuid().as_raw(), 1)
        );
        assert_eq!(gid_map[0].outside, getegid().as_raw());
    }

    #[test]
    fn losses_name_the_shared_uid_and_the_missing_cgroups() {
        let losses = rootless_losses();
        assert!(
            losses[0].starts_with("all runs share one uid"),
            "{losses:?}"
        );
        assert!(losses[0].contains("ABI ≥ 6"), "{losses:?}");
        assert!(losses[1].starts_with("no cgroups: memory is RLIMIT_AS"));
        assert!(losses.iter().all(|l| !l.contains('\n')));
    }

    #[test]
    fn the_error_names_the_sysctls() {
        let err = RootlessError::UserNamespaces {
            step: "unshare(CLONE_NEWUSER)",
            source: io::Error::from_raw_os_error(libc::EPERM),
            sysctls: describe_sysctls(),
        };
        let text = err.to_string();
        assert!(text.contains("unshare(CLONE_NEWUSER) failed"), "{text}");
        assert!(text.contains("max_user_namespaces"), "{text}");
        assert!(text.contains("run sandforkd as root"), "{text}");
    }

    #[test]
    fn this_host_allows_rootless_mode_or_says_why() {
        match check_user_namespaces() {
            Ok(()) => {}
            Err(err) => println!("SKIPPED: rootless mode unavailable here: {err}"),
        }
    }
}
