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
use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ProfileConfig, DEFAULT_PROFILE};
use crate::daemon::cgroup;

mod host;
mod kernel;

use host::*;
pub use host::{uid_range, HostAccounts};
use kernel::*;

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
    let rootless = !nix::unistd::geteuid().is_root();
    for (name, profile) in profiles {
        let mut check = interpreter(name, &profile.python);
        check.detail.push_str(&format!(
            "; {}",
            crate::daemon::rootless::processes_setting(profile.processes, rootless)
        ));
        checks.push(check);
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

#[cfg(test)]
mod tests;
