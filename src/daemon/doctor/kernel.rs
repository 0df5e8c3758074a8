//! The kernel's layers: root, user and other namespaces, seccomp, landlock and the new mount
//! API, each probed by using it in `zygote-init probe …` (an exec'd single-threaded helper).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::*;

pub(super) fn root() -> Check {
    let euid = nix::unistd::geteuid();
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let initial = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    let detail = match (euid.is_root(), initial) {
        (true, true) => "euid 0 in the initial user namespace".to_string(),
        (true, false) => format!(
            "euid 0 but inside a user namespace (uid_map {:?})",
            uid_map.trim()
        ),
        (false, _) => format!("running as uid {euid}"),
    };
    let without = if euid.is_root() {
        "sandforkd does not start: it maps a host uid range into each zygote and mounts its jail"
            .to_string()
    } else {
        format!(
            "sandforkd runs rootless: {}",
            crate::daemon::rootless::rootless_losses().join("; ")
        )
    };
    check_result(ROOT, euid.is_root() && initial, detail, &without)
}

pub(super) fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub(super) fn user_namespaces(probe: &Probe) -> Check {
    let mut notes = Vec::new();
    let max = read_sysctl("/proc/sys/user/max_user_namespaces");
    if let Some(max) = &max {
        notes.push(format!("max_user_namespaces {max}"));
    }
    for (path, name) in [
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "unprivileged_userns_clone",
        ),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "apparmor_restrict_unprivileged_userns",
        ),
    ] {
        if let Some(value) = read_sysctl(path) {
            notes.push(format!(
                "{name} {value} (unprivileged use only; sandforkd is root)"
            ));
        }
    }
    let (available, what) = match probe.unshare(libc::CLONE_NEWUSER) {
        Ok(End::Exited(0)) => (max.as_deref() != Some("0"), "unshare(CLONE_NEWUSER) works"),
        Ok(end) => {
            notes.insert(
                0,
                format!("unshare(CLONE_NEWUSER) failed: {}", end.describe()),
            );
            (false, "")
        }
        Err(err) => {
            notes.insert(0, err);
            (false, "")
        }
    };
    let mut detail = what.to_string();
    for note in notes {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&note);
    }
    check_result(
        USER_NAMESPACES,
        available,
        detail,
        "no zygote starts: zygote-init needs a user namespace holding the slot uid range",
    )
}

pub(super) fn namespaces(probe: &Probe) -> Check {
    let kinds = [
        ("pid", libc::CLONE_NEWPID),
        ("mount", libc::CLONE_NEWNS),
        ("net", libc::CLONE_NEWNET),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("cgroup", libc::CLONE_NEWCGROUP),
    ];
    let mut failed = Vec::new();
    // Rootless, every namespace is made inside a new user namespace (below); alone, without
    // one, they need root.
    let alone: &[(&str, i32)] = if nix::unistd::geteuid().is_root() {
        &kinds
    } else {
        &[]
    };
    for &(name, flag) in alone {
        match probe.unshare(flag) {
            Ok(End::Exited(0)) => {}
            Ok(end) => failed.push(format!("{name}: {}", end.describe())),
            Err(err) => failed.push(format!("{name}: {err}")),
        }
    }
    // All at once, with a user namespace, as zygote-init does.
    let all = kinds
        .iter()
        .fold(libc::CLONE_NEWUSER, |acc, (_, f)| acc | f);
    match probe.unshare(all) {
        Ok(End::Exited(0)) => {}
        Ok(end) => failed.push(format!("all together with user: {}", end.describe())),
        Err(err) => failed.push(err),
    }
    let names = kinds.map(|(n, _)| n).join(", ");
    let detail = if failed.is_empty() && alone.is_empty() {
        format!("{names}: unshare works all together inside a new user namespace (rootless)")
    } else if failed.is_empty() {
        format!("{names}: unshare works, also all together with a user namespace")
    } else {
        format!("unshare failed for {}", failed.join("; "))
    };
    check_result(
        NAMESPACES,
        failed.is_empty(),
        detail,
        "no zygote starts: zygote-init unshares them all in one call",
    )
}

pub(super) fn seccomp(probe: &Probe) -> Check {
    let mut problems = Vec::new();
    let mut facts = Vec::new();
    // The helper inherits this process's filter, so its mode is ours.
    match probe.run(&["seccomp-mode"]) {
        Ok((End::Exited(0), out)) => match value(&out, "mode").as_deref() {
            Some("0") => facts.push("PR_GET_SECCOMP 0".to_string()),
            Some(mode) => facts.push(format!(
                "PR_GET_SECCOMP {mode} (this process is already filtered)"
            )),
            None => problems.push(format!("PR_GET_SECCOMP: unreadable answer {out:?}")),
        },
        Ok((end, _)) => problems.push(format!("PR_GET_SECCOMP: {}", end.describe())),
        Err(err) => problems.push(err),
    }
    match probe.run(&["seccomp-filter"]) {
        Ok((End::Exited(0), _)) => facts.push("a filter installs in a probe process".into()),
        Ok((end, _)) => problems.push(format!("installing a filter: {}", end.describe())),
        Err(err) => problems.push(err),
    }
    for (name, action) in [
        ("KILL_PROCESS", libc::SECCOMP_RET_KILL_PROCESS),
        ("ERRNO", libc::SECCOMP_RET_ERRNO),
    ] {
        let available = matches!(
            probe.run(&["seccomp-action", &action.to_string()]),
            Ok((End::Exited(0), _))
        );
        if !available {
            problems.push(format!("action {name} unavailable"));
        }
    }
    match (
        sandfork_lockdown::seccomp::zygote_filters(),
        sandfork_lockdown::seccomp::child_filters(false),
        sandfork_lockdown::seccomp::child_filters(true),
    ) {
        (Ok(zygote), Ok(child), Ok(_)) => facts.push(format!(
            "zygote and child policies compile ({} + {} programs; with processes too)",
            zygote.len(),
            child.len()
        )),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
            problems.push(format!("policy: {err}"))
        }
    }
    let available = problems.is_empty();
    let detail = if available {
        facts.join("; ")
    } else {
        problems.join("; ")
    };
    check_result(
        SECCOMP,
        available,
        detail,
        "no zygote starts: zygote-init installs the zygote filter and every child its own",
    )
}

/// What each landlock ABI added that the child's rules use.
pub(super) fn landlock_features(abi: i32) -> String {
    let mut features = vec!["filesystem"];
    if abi >= 2 {
        features.push("refer");
    }
    if abi >= 3 {
        features.push("truncate");
    }
    if abi >= 4 {
        features.push("TCP bind/connect");
    }
    if abi >= 5 {
        features.push("device ioctl");
    }
    if abi >= LANDLOCK_FULL_ABI {
        features.push("signal and abstract-socket scopes");
    }
    if abi >= 7 {
        features.push("logging flags");
    }
    features.join(", ")
}

pub(super) fn landlock() -> Check {
    match sandfork_lockdown::landlock_rules::probe_abi() {
        Ok(abi) if abi >= LANDLOCK_FULL_ABI => check_result(
            LANDLOCK,
            true,
            format!("ABI {abi}: {}", landlock_features(abi)),
            "",
        ),
        Ok(abi) => check_result(
            LANDLOCK,
            false,
            format!(
                "ABI {abi}: {} (ABI {LANDLOCK_FULL_ABI} scopes signals and abstract sockets{})",
                landlock_features(abi),
                if abi < 4 { ", ABI 4 restricts TCP" } else { "" }
            ),
            "children get the rights this ABI has; signals and abstract unix sockets are then \
             fenced by uids, setsid and the seccomp filter alone",
        ),
        Err(errno) => check_result(
            LANDLOCK,
            false,
            match errno {
                nix::errno::Errno::ENOSYS => "not built into this kernel (ENOSYS)".to_string(),
                nix::errno::Errno::EOPNOTSUPP => {
                    "built in but disabled (EOPNOTSUPP): add landlock to the lsm= boot parameter"
                        .to_string()
                }
                other => format!("landlock_create_ruleset: {other}"),
            },
            "children have no filesystem or network rules of their own: the read-only jail, \
             uids and seccomp remain",
        ),
    }
}

pub(super) fn mount_api(probe: &Probe) -> Check {
    let answer = match probe.run(&["mount-api"]) {
        Ok((End::Exited(0), out)) => out,
        Ok((end, _)) => format!("probe: {}", end.describe()),
        Err(err) => err,
    };
    let missing: Vec<&str> = ["open_tree", "move_mount", "mount_setattr"]
        .into_iter()
        .filter(|name| value(&answer, name).as_deref() != Some("1"))
        .collect();
    let release = read_sysctl("/proc/sys/kernel/osrelease").unwrap_or_else(|| "?".into());
    let detail = if missing.is_empty() {
        format!("open_tree, move_mount, mount_setattr (Linux {release})")
    } else {
        format!(
            "{} missing (ENOSYS; Linux {release}, needs 5.12)",
            missing.join(", ")
        )
    };
    check_result(
        MOUNT_API,
        missing.is_empty(),
        detail,
        "no zygote starts: zygote-init binds the interpreter into the jail with open_tree, \
         mount_setattr and move_mount",
    )
}

/// How a probe helper ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Exit status: 0 for success, otherwise the errno of the failed call.
    Exited(i32),
    Signaled(i32),
}

impl End {
    pub(super) fn describe(&self) -> String {
        match *self {
            End::Exited(code) => errno_name(code),
            End::Signaled(signal) => format!("killed by signal {signal}"),
        }
    }
}

/// Runs `zygote-init probe …`: each kernel probe in a fresh, exec'd, single-threaded process.
pub(super) struct Probe {
    /// The helper, or why it could not be found.
    helper: Result<PathBuf, String>,
}

impl Probe {
    pub(super) fn find() -> Probe {
        Probe {
            helper: crate::daemon::paths::find_helper(crate::daemon::paths::ZYGOTE_INIT)
                .map_err(|err| format!("no probe helper: {err}")),
        }
    }

    /// Runs one probe; its end and its stdout.
    pub(super) fn run(&self, args: &[&str]) -> Result<(End, String), String> {
        use std::os::unix::process::ExitStatusExt;
        let helper = self.helper.as_ref().map_err(Clone::clone)?;
        let output = Command::new(helper)
            .arg("probe")
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", helper.display()))?;
        let end = match (output.status.code(), output.status.signal()) {
            (Some(code), _) => End::Exited(code),
            (None, Some(signal)) => End::Signaled(signal),
            (None, None) => End::Exited(255),
        };
        Ok((end, String::from_utf8_lossy(&output.stdout).into_owned()))
    }

    pub(super) fn unshare(&self, flags: i32) -> Result<End, String> {
        self.run(&["unshare", &flags.to_string()])
            .map(|(end, _)| end)
    }
}

/// The value of `name=value` in a probe's output.
pub(super) fn value(output: &str, name: &str) -> Option<String> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
}
