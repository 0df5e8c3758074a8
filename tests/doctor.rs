//! End-to-end tests of `sandfork doctor`: the built binary, its report and its exit codes.
//! The full-isolation test needs root on a host with every layer (this VM); elsewhere it says
//! SKIPPED, and with `CI` set it fails instead.

use std::path::Path;
use std::process::{Command, Output};

use sandfork::daemon::doctor::LAYERS;

#[path = "support/skip.rs"]
mod skip;

fn doctor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("run sandfork doctor")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn doctor_binary_reports_every_layer_and_exits_zero() {
    if !nix::unistd::geteuid().is_root() {
        skip::skip(
            "doctor_binary_reports_every_layer_and_exits_zero",
            "needs root (namespaces, cgroups, the initial user namespace)",
        );
        return;
    }
    let output = doctor(&[]);
    let text = stdout(&output);
    println!("{text}");
    assert_eq!(output.status.code(), Some(0), "{text}");
    for layer in LAYERS {
        assert!(
            text.lines()
                .any(|line| line.starts_with(&format!("{layer} "))),
            "no line for {layer}:\n{text}"
        );
    }
    assert!(!text.contains("MISSING"), "{text}");
    assert_eq!(text.lines().last(), Some("full isolation: yes"));
}

/// The cgroups line names the hierarchy this host mounts (v1 here, v2 under scripts/cgroup-v2)
/// and, on v2, says whether runs get their own peak memory (a resettable `memory.peak`, Linux
/// 6.12 on) or not: the degradation is reported, never silent.
#[test]
fn doctor_names_the_cgroup_hierarchy_the_host_mounts() {
    if !nix::unistd::geteuid().is_root() {
        skip::skip(
            "doctor_names_the_cgroup_hierarchy_the_host_mounts",
            "needs root (the cgroup probe creates a cgroup)",
        );
        return;
    }
    let text = stdout(&doctor(&[]));
    let line = text
        .lines()
        .find(|line| line.starts_with("cgroups "))
        .unwrap_or_else(|| panic!("no cgroups line:\n{text}"));
    let v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if v2 {
        assert!(line.contains(" ok ") && line.contains("v2:"), "{line}");
        assert!(
            line.contains("per-run peak memory: memory.peak reset per descriptor")
                || line.contains("no per-run peak memory"),
            "{line}"
        );
    } else {
        assert!(line.contains("v1:"), "{line}");
    }
}

#[test]
fn doctor_binary_exits_one_when_the_uid_range_belongs_to_an_account() {
    // A uid range starting at a real account's uid (any non-root entry of /etc/passwd).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some((name, uid)) = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let uid: u32 = fields.get(2)?.parse().ok()?;
        (uid > 0).then(|| (fields[0].to_string(), uid))
    }) else {
        println!("SKIPPED: doctor_binary_exits_one_when_the_uid_range_belongs_to_an_account: no account in /etc/passwd");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("uid_base = {uid}\nslots = 1\n")).unwrap();
    let output = doctor(&["--config", config.to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|line| line.starts_with("uid range "))
        .unwrap_or_else(|| panic!("no uid range line:\n{text}"));
    assert!(line.contains("MISSING"), "{line}");
    assert!(
        line.contains(&format!("user {name} has id {uid}")),
        "{line}"
    );
    assert!(line.contains("without it: "), "{line}");
    assert_eq!(text.lines().last(), Some("full isolation: no"));
}

#[test]
fn doctor_binary_exits_two_on_an_unreadable_config() {
    let output = doctor(&["--config", "/nonexistent/sandfork.toml"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            &Path::new("/nonexistent/sandfork.toml")
                .display()
                .to_string()
        ),
        "{stderr}"
    );
}

/// Each profile's interpreter line says what its `processes` setting lets a run do.
#[test]
fn doctor_reports_each_profile_processes_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[profiles.plain]\npython = \"python3\"\n[profiles.procs]\npython = \"python3\"\nprocesses = 12\n",
    )
    .unwrap();
    let text = stdout(&doctor(&["--config", config.to_str().unwrap()]));
    let line = |profile: &str| {
        text.lines()
            .find(|line| {
                line.starts_with("interpreter ") && line.contains(&format!("profile {profile}:"))
            })
            .unwrap_or_else(|| panic!("no interpreter line for {profile}:\n{text}"))
            .to_string()
    };
    assert!(
        line("plain").contains("processes: off (a run cannot start processes)"),
        "{}",
        line("plain")
    );
    let procs = line("procs");
    assert!(
        procs.contains("processes: up to 12 processes and threads per run (own pid namespace"),
        "{procs}"
    );
    // Rootless, the line says what caps them instead of a cgroup.
    assert_eq!(
        procs.contains("RLIMIT_NPROC"),
        !nix::unistd::geteuid().is_root(),
        "{procs}"
    );
}
