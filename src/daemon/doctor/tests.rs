//! Unit tests of `src/daemon/doctor.rs`.

use super::*;

fn ok(layer: &'static str, detail: &str) -> Check {
    check_result(layer, true, detail, "unused")
}

#[test]
fn report_lines_are_aligned_and_name_what_is_missing() {
    let report = Report::new(vec![
        ok(ROOT, "euid 0"),
        check_result(LANDLOCK, false, "ABI 3", "weaker children"),
        ok(UID_RANGE, "200000..=200004 unused"),
    ]);
    assert!(!report.full_isolation);
    assert_eq!(report.exit_code(), 1);
    let lines = summary_lines(&report);
    assert_eq!(
        lines,
        vec![
            "root       ok       euid 0",
            "landlock   MISSING  ABI 3; without it: weaker children",
            "uid range  ok       200000..=200004 unused",
            "full isolation: no",
        ]
    );
    assert_eq!(report.to_string(), lines.join("\n"));
}

#[test]
fn full_isolation_exits_zero() {
    let report = Report::new(vec![ok(ROOT, "euid 0"), ok(SECCOMP, "fine")]);
    assert!(report.full_isolation);
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        summary_lines(&report).last().map(String::as_str),
        Some("full isolation: yes")
    );
    assert_eq!(Report::new(Vec::new()).exit_code(), 0, "nothing missing");
}

#[test]
fn uid_range_conflicts_fail_and_subuid_overlaps_warn() {
    let accounts = HostAccounts {
        passwd: "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n".into(),
        group: "root:x:0:\nbuild:x:200003:\n".into(),
        subuid: "alice:199000:2000\nbob:300000:65536\n".into(),
        subgid: String::new(),
    };
    let clash = uid_range(200_000, 4, &accounts);
    assert!(!clash.available);
    assert!(
        clash.detail.contains("group build has id 200003"),
        "{}",
        clash.detail
    );
    assert!(clash
        .detail
        .contains("warning: overlaps alice's /etc/subuid range 199000..=200999"));
    assert!(!clash.detail.contains("bob"));

    let fine = uid_range(500_000, 4, &accounts);
    assert!(fine.available, "{}", fine.detail);
    assert_eq!(
        fine.detail,
        "500000..=500004 unused in /etc/passwd and /etc/group"
    );
}

#[test]
fn landlock_features_grow_with_the_abi() {
    assert_eq!(landlock_features(1), "filesystem");
    assert!(landlock_features(4).ends_with("TCP bind/connect"));
    assert!(landlock_features(6).contains("signal and abstract-socket scopes"));
}

#[test]
fn closed_ancestors_are_found() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed");
    std::fs::create_dir_all(closed.join("bin")).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let python = closed.join("bin/python3");
    assert_eq!(first_closed_ancestor(&python), Some(closed.clone()));
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).unwrap();
    // /tmp itself is world-traversable (1777).
    assert_eq!(first_closed_ancestor(&python), None);
}

#[test]
fn an_interpreter_that_is_not_there_is_missing() {
    let check = interpreter("p", "/nonexistent/python3");
    assert!(!check.available);
    assert!(check
        .detail
        .starts_with("profile p: /nonexistent/python3: cannot run it"));
}

/// This VM has every layer: landlock ABI 7, all namespaces, cgroup v1 with memory, pids and
/// cpuacct. Elsewhere (not root) it says SKIPPED, and fails under CI.
#[test]
fn doctor_host_reports_full_isolation() {
    if !nix::unistd::geteuid().is_root() {
        let reason = "needs root (namespaces, cgroups, the initial user namespace)";
        if std::env::var_os("CI").is_some() {
            panic!("doctor_host_reports_full_isolation: cannot run on CI: {reason}");
        }
        println!("SKIPPED: doctor_host_reports_full_isolation: {reason}");
        return;
    }
    let config = Config::default().validated().unwrap();
    let report = check(&config);
    println!("{report}");
    assert!(report.full_isolation, "{report}");
    for layer in LAYERS {
        assert!(
            report.checks.iter().any(|c| c.layer == *layer),
            "no {layer} line"
        );
    }
}
