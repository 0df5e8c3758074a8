//! The host's side: cgroups, the uid range against the account databases, and each profile's
//! interpreter.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::*;
use crate::daemon::cgroup;

pub(super) fn cgroups(fs_root: &Path) -> Check {
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
pub(super) fn interpreter(profile: &str, python: &str) -> Check {
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
pub(super) fn run_interpreter(python: &str) -> Result<(PathBuf, String), String> {
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
pub(super) fn first_closed_ancestor(path: &Path) -> Option<PathBuf> {
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
