//! Host checks: which isolation layers this machine offers, and what sandforkd does without
//! each one (`sandfork doctor`, and the summary the daemon logs at start-up).
//!
//! Every kernel feature is probed by using it, never by version numbers alone: namespaces are
//! unshared, a seccomp filter is installed and the new mount API calls are made (with arguments
//! the kernel rejects before doing anything) in `zygote-init probe …`, an exec'd single-threaded
//! helper — never in the caller, which may be the multi-threaded daemon, and never in a fork of
//! it; landlock is asked for its ABI; cgroups are detected without creating anything; each
//! profile's interpreter is run once. This module has no `unsafe`.
//!
//! [`check`] is synchronous and takes up to a few hundred milliseconds (one interpreter start
//! per profile): call it from a blocking context.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Config, ProfileConfig, DEFAULT_PROFILE};
use crate::daemon::cgroup;

/// Layer names, in report order (an `interpreter` line per profile).
pub const LAYERS: &[&str] = &[
    ROOT,
    USER_NAMESPACES,
    NAMESPACES,
    SECCOMP,
    LANDLOCK,
    MOUNT_API,
    CGROUPS,
    UID_RANGE,
    INTERPRETER,
];
const ROOT: &str = "root";
const USER_NAMESPACES: &str = "user namespaces";
const NAMESPACES: &str = "namespaces";
const SECCOMP: &str = "seccomp";
const LANDLOCK: &str = "landlock";
const MOUNT_API: &str = "mount API";
const CGROUPS: &str = "cgroups";
const UID_RANGE: &str = "uid range";
const INTERPRETER: &str = "interpreter";

/// Landlock ABI with signal and abstract-socket scoping, the newest rights the child uses.
const LANDLOCK_FULL_ABI: i32 = 6;
/// How long one interpreter may take to say where it is.
const INTERPRETER_TIMEOUT: Duration = Duration::from_secs(20);

/// One layer's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub layer: &'static str,
    pub available: bool,
    /// What was found (versions, paths, the failing call and its errno), and warnings.
    pub detail: String,
    /// What the daemon does, or cannot do, without this layer.
    pub without_it: String,
}

/// All checks, and whether every layer is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
    pub full_isolation: bool,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        let full_isolation = checks.iter().all(|c| c.available);
        Report {
            checks,
            full_isolation,
        }
    }

    /// `sandfork doctor`'s exit code: 0 with full isolation, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.full_isolation {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&summary_lines(self).join("\n"))
    }
}

/// The report as lines: one per layer (`ok` or `MISSING`, the detail, and for a missing layer
/// what the daemon does without it), aligned, then `full isolation: yes|no`. The daemon logs
/// these at start-up.
pub fn summary_lines(report: &Report) -> Vec<String> {
    let width = report
        .checks
        .iter()
        .map(|c| c.layer.len())
        .max()
        .unwrap_or(0);
    let mut lines: Vec<String> = report
        .checks
        .iter()
        .map(|c| {
            if c.available {
                format!("{:<width$}  ok       {}", c.layer, c.detail)
            } else {
                format!(
                    "{:<width$}  MISSING  {}; without it: {}",
                    c.layer, c.detail, c.without_it
                )
            }
        })
        .collect();
    lines.push(format!(
        "full isolation: {}",
        if report.full_isolation { "yes" } else { "no" }
    ));
    lines
}

/// Checks every layer on this host for `config` (its uid range and profiles).
pub fn check(config: &Config) -> Report {
    let probe = Probe::find();
    let mut checks = vec![
        root(),
        user_namespaces(&probe),
        namespaces(&probe),
        seccomp(&probe),
        landlock(),
        mount_api(&probe),
    ];
    if nix::unistd::geteuid().is_root() {
        checks.push(cgroups(Path::new(cgroup::DEFAULT_FS_ROOT)));
        checks.push(uid_range(
            config.uid_base,
            config.identity_count(),
            &HostAccounts::read(),
        ));
    } else {
        // Rootless mode uses neither: the root layer's line says what that costs.
        checks.push(Check {
            layer: "cgroups",
            available: false,
            detail: "not used in rootless mode".into(),
            without_it: "memory is RLIMIT_AS, pids RLIMIT_NPROC; no peak-memory or OOM accounting"
                .into(),
        });
    }
    let default_profile = [(DEFAULT_PROFILE.to_string(), ProfileConfig::default())];
    let profiles: Vec<(&String, &ProfileConfig)> = if config.profiles.is_empty() {
        default_profile.iter().map(|(n, p)| (n, p)).collect()
    } else {
        config.profiles.iter().collect()
    };
    for (name, profile) in profiles {
        checks.push(interpreter(name, &profile.python));
    }
    Report::new(checks)
}

/// `sandfork doctor [--config PATH]`: prints the report; returns the exit code (0: full
/// isolation, 1: a layer is missing, 2: the config cannot be read).
pub fn cli(config_path: Option<&Path>) -> u8 {
    let config = match config_path {
        Some(path) => Config::load(path),
        None => Config::default().validated(),
    };
    match config {
        Ok(config) => {
            let report = check(&config);
            println!("{report}");
            report.exit_code()
        }
        Err(err) => {
            eprintln!("sandfork: doctor: {err}");
            2
        }
    }
}

fn check_result(
    layer: &'static str,
    available: bool,
    detail: impl Into<String>,
    without_it: &str,
) -> Check {
    Check {
        layer,
        available,
        detail: detail.into(),
        without_it: without_it.to_string(),
    }
}

fn errno_name(code: i32) -> String {
    format!("{}", nix::errno::Errno::from_raw(code))
}

fn root() -> Check {
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

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn user_namespaces(probe: &Probe) -> Check {
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

fn namespaces(probe: &Probe) -> Check {
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

fn seccomp(probe: &Probe) -> Check {
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
        sandfork_lockdown::seccomp::child_filters(),
    ) {
        (Ok(zygote), Ok(child)) => facts.push(format!(
            "zygote and child policies compile ({} + {} programs)",
            zygote.len(),
            child.len()
        )),
        (Err(err), _) | (_, Err(err)) => problems.push(format!("policy: {err}")),
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
fn landlock_features(abi: i32) -> String {
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

fn landlock() -> Check {
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

fn mount_api(probe: &Probe) -> Check {
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

fn cgroups(fs_root: &Path) -> Check {
    let without = "memory is limited by RLIMIT_AS and processes by RLIMIT_NPROC only; no per-run \
                   peak memory, no OOM verdict (status memory_limit)";
    match cgroup::detect(fs_root) {
        Ok(detection) => {
            let mut detail = detection.summary();
            for note in &detection.notes {
                detail.push_str("; ");
                detail.push_str(note);
            }
            check_result(CGROUPS, detection.usable(), detail, without)
        }
        Err(err) => check_result(CGROUPS, false, err.to_string(), without),
    }
}

/// The account databases the uid range is checked against.
#[derive(Debug, Clone, Default)]
pub struct HostAccounts {
    pub passwd: String,
    pub group: String,
    pub subuid: String,
    pub subgid: String,
}

impl HostAccounts {
    pub fn read() -> HostAccounts {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        HostAccounts {
            passwd: read("/etc/passwd"),
            group: read("/etc/group"),
            subuid: read("/etc/subuid"),
            subgid: read("/etc/subgid"),
        }
    }
}

/// The host ids `uid_base ..= uid_base + identities` (the jails' root, then one per slot and
/// warm child) must belong to no account or group; overlapping another user's subordinate
/// range is a warning (that user's containers could share ids with sandboxed code).
pub fn uid_range(uid_base: u32, identities: u32, accounts: &HostAccounts) -> Check {
    let last = uid_base.saturating_add(identities);
    let in_range = |id: u32| (uid_base..=last).contains(&id);
    let mut conflicts = Vec::new();
    for (what, text) in [("user", &accounts.passwd), ("group", &accounts.group)] {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let (Some(name), Some(Ok(id))) = (fields.first(), fields.get(2).map(|f| f.parse())) {
                if in_range(id) {
                    conflicts.push(format!("{what} {name} has id {id}"));
                }
            }
        }
    }
    let mut warnings = Vec::new();
    for (file, text) in [("subuid", &accounts.subuid), ("subgid", &accounts.subgid)] {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(Ok(start)), Some(Ok(count))) = (
                fields.first(),
                fields.get(1).map(|f| f.parse::<u32>()),
                fields.get(2).map(|f| f.parse::<u32>()),
            ) else {
                continue;
            };
            let end = start.saturating_add(count.saturating_sub(1));
            if count > 0 && start <= last && end >= uid_base {
                warnings.push(format!(
                    "warning: overlaps {name}'s /etc/{file} range {start}..={end}"
                ));
            }
        }
    }
    let mut detail = if conflicts.is_empty() {
        format!("{uid_base}..={last} unused in /etc/passwd and /etc/group")
    } else {
        format!("{uid_base}..={last}: {}", conflicts.join(", "))
    };
    for warning in warnings {
        detail.push_str("; ");
        detail.push_str(&warning);
    }
    check_result(
        UID_RANGE,
        conflicts.is_empty(),
        detail,
        "sandboxed code would run under a real account's or group's id and could reach its \
         processes and files: choose another uid_base",
    )
}

/// Runs the profile's interpreter once and reports where it really is.
fn interpreter(profile: &str, python: &str) -> Check {
    let without = format!("sandforkd does not start (profile {profile} cannot be probed)");
    match run_interpreter(python) {
        Ok((executable, version)) => {
            let resolved = std::fs::canonicalize(&executable).unwrap_or(executable.clone());
            let mut detail = format!(
                "profile {profile}: {python} is Python {version} at {}",
                resolved.display()
            );
            if let Some(closed) = first_closed_ancestor(&resolved) {
                detail.push_str(&format!(
                    " (under {}, not world-traversable: fine, the jail binds it)",
                    closed.display()
                ));
            }
            check_result(INTERPRETER, true, detail, &without)
        }
        Err(reason) => check_result(
            INTERPRETER,
            false,
            format!("profile {profile}: {python}: {reason}"),
            &without,
        ),
    }
}

/// `python -I -c …`: its `sys.executable` and version, within [`INTERPRETER_TIMEOUT`].
fn run_interpreter(python: &str) -> Result<(PathBuf, String), String> {
    let mut child = Command::new(python)
        .args([
            "-I",
            "-c",
            "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run it: {err}"))?;
    let deadline = Instant::now() + INTERPRETER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {INTERPRETER_TIMEOUT:?}"));
            }
            Err(err) => return Err(format!("wait: {err}")),
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    if !status.success() {
        return Err(format!("exited with {status}: {}", stderr.trim()));
    }
    let mut lines = stdout.lines();
    match (lines.next(), lines.next()) {
        (Some(executable), Some(version)) if !executable.is_empty() => {
            Ok((PathBuf::from(executable), version.trim().to_string()))
        }
        _ => Err(format!("unexpected output {stdout:?}")),
    }
}

/// The outermost ancestor directory of `path` that others cannot traverse (no `o+x`).
fn first_closed_ancestor(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find_map(|dir| {
            let mode = std::fs::metadata(dir).ok()?.permissions().mode();
            (mode & 0o001 == 0).then(|| dir.to_owned())
        })
}

/// How a probe helper ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Exit status: 0 for success, otherwise the errno of the failed call.
    Exited(i32),
    Signaled(i32),
}

impl End {
    fn describe(&self) -> String {
        match *self {
            End::Exited(code) => errno_name(code),
            End::Signaled(signal) => format!("killed by signal {signal}"),
        }
    }
}

/// Runs `zygote-init probe …`: each kernel probe in a fresh, exec'd, single-threaded process.
struct Probe {
    /// The helper, or why it could not be found.
    helper: Result<PathBuf, String>,
}

impl Probe {
    fn find() -> Probe {
        Probe {
            helper: crate::daemon::supervisor::find_helper(crate::daemon::supervisor::ZYGOTE_INIT)
                .map_err(|err| format!("no probe helper: {err}")),
        }
    }

    /// Runs one probe; its end and its stdout.
    fn run(&self, args: &[&str]) -> Result<(End, String), String> {
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

    fn unshare(&self, flags: i32) -> Result<End, String> {
        self.run(&["unshare", &flags.to_string()])
            .map(|(end, _)| end)
    }
}

/// The value of `name=value` in a probe's output.
fn value(output: &str, name: &str) -> Option<String> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests;
