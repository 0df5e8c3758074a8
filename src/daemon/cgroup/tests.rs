//! Unit tests of `src/daemon/cgroup/mod.rs`.

use super::*;

#[test]
fn parses_proc_self_cgroup_of_v1_hybrid_and_v2() {
    let lines = parse_proc_self_cgroup(
        "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x:y\n0::/\n",
    );
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1].controllers, vec!["memory"]);
    assert_eq!(lines[1].path, "/process_api/abc");
    assert_eq!(lines[2].controllers, vec!["cpu", "cpuacct"]);
    assert_eq!(lines[2].path, "/x:y", "a colon in the path survives");
    assert_eq!(lines[3].id, 0);
    assert!(lines[3].controllers.is_empty());
}

#[test]
fn joins_cgroup_paths_under_a_root() {
    let root = Path::new("/sys/fs/cgroup/memory");
    assert_eq!(under(root, "/"), root);
    assert_eq!(under(root, "/a/b"), root.join("a/b"));
}

#[test]
fn flat_keys_and_numbers_parse() {
    let path = Path::new("memory.events");
    let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
    assert_eq!(flat_key(path, text, "oom_kill").unwrap(), 1);
    assert_eq!(flat_key(path, text, "oom").unwrap(), 2);
    assert!(flat_key(path, text, "missing").is_err());
    assert_eq!(parse_u64(path, "max\n").unwrap(), u64::MAX);
    assert_eq!(parse_u64(path, "4096\n").unwrap(), 4096);
    assert!(parse_u64(path, "lots").is_err());
}

#[test]
fn instance_names_are_one_safe_component() {
    for good in ["default", "a-b_c.1", "x"] {
        assert!(check_instance(good).is_ok(), "{good}");
    }
    for bad in ["", ".", "..", "a/b", ".hidden", "sp ace", &"x".repeat(65)] {
        assert!(check_instance(bad).is_err(), "{bad}");
    }
}
