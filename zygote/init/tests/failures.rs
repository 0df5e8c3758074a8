//! Failure paths: each step's exit code and its single stderr line.

mod common;

use common::{finish, python_spec, run, seqpacket_pair, skip_unless_root, spawn_raw};
use zygote_init::{Bind, EXIT_EXEC, EXIT_MOUNTS, EXIT_SANITIZE, EXIT_SOURCES};

fn assert_one_line(stderr: &str, prefix: &str) {
    assert_eq!(stderr.lines().count(), 1, "exactly one line: {stderr:?}");
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    assert!(
        stderr.starts_with(prefix),
        "{stderr:?} should start with {prefix:?}"
    );
}

#[test]
fn bad_json_is_a_sanitize_error() {
    let (_, theirs) = seqpacket_pair();
    let child = spawn_raw(&["{not json".into()], vec![(theirs, 3)]);
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, EXIT_SANITIZE);
    assert_eq!(stdout, "");
    assert_one_line(&stderr, "zygote-init: sanitize: spec is not valid JSON");
}

#[test]
fn missing_argument_is_a_sanitize_error() {
    let (code, _, stderr) = finish(spawn_raw(&[], Vec::new()));
    assert_eq!(code, EXIT_SANITIZE);
    assert_one_line(&stderr, "zygote-init: sanitize: usage:");
}

#[test]
fn invalid_spec_is_a_sanitize_error() {
    let mut spec = python_spec("print(1)");
    spec.dirs.push("/sandbox/../etc".into());
    let (code, _, stderr) = run(&spec);
    assert_eq!(code, EXIT_SANITIZE);
    assert_one_line(&stderr, "zygote-init: sanitize: dirs: path");
}

#[test]
fn closed_control_socket_is_a_sanitize_error() {
    let spec = python_spec("print(1)");
    let child = spawn_raw(&[serde_json::to_string(&spec).unwrap()], Vec::new());
    let (code, _, stderr) = finish(child);
    assert_eq!(code, EXIT_SANITIZE);
    assert_one_line(&stderr, "zygote-init: sanitize: keep fd 3 is not open");
}

#[test]
fn missing_bind_source_is_a_sources_error() {
    if skip_unless_root() {
        return;
    }
    let mut spec = python_spec("print(1)");
    spec.binds.push(Bind {
        path: "/nonexistent/sandfork-test".into(),
        dest: None,
    });
    let (code, stdout, stderr) = run(&spec);
    assert_eq!(code, EXIT_SOURCES);
    assert_eq!(stdout, "");
    assert_one_line(
        &stderr,
        "zygote-init: sources: open_tree \"/nonexistent/sandfork-test\": ENOENT",
    );
}

#[test]
fn a_regular_file_is_not_a_device() {
    if skip_unless_root() {
        return;
    }
    let mut spec = python_spec("print(1)");
    spec.devices.push("/etc/ld.so.cache".into());
    let (code, _, stderr) = run(&spec);
    assert_eq!(code, EXIT_SOURCES);
    assert_one_line(
        &stderr,
        "zygote-init: sources: \"/etc/ld.so.cache\" is not a character device",
    );
}

#[test]
fn missing_interpreter_is_an_exec_error_from_pid_1() {
    if skip_unless_root() {
        return;
    }
    // Fails inside PID 1; the monitor passes the step's code on.
    let mut spec = python_spec("print(1)");
    spec.exec.path = "/usr/bin/no-such-python".into();
    let (code, _, stderr) = run(&spec);
    assert_eq!(code, EXIT_EXEC);
    assert_one_line(
        &stderr,
        "zygote-init: exec: execve \"/usr/bin/no-such-python\": ENOENT",
    );
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn a_symlink_in_a_bind_cannot_redirect_a_mkdir_to_the_host() {
    if skip_unless_root() {
        return;
    }
    let base = std::env::temp_dir().join(format!("zygote-init-escape-{}", std::process::id()));
    let bound = base.join("bound");
    let outside = base.join("outside");
    std::fs::create_dir_all(&bound).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, bound.join("esc")).unwrap();

    let mut spec = python_spec("print(1)");
    spec.binds.push(Bind {
        path: bound.clone(),
        dest: Some("/data".into()),
    });
    spec.dirs.push("/data/esc/created".into());
    let (code, _, stderr) = run(&spec);
    let escaped = outside.join("created").exists();
    std::fs::remove_dir_all(&base).unwrap();
    assert_eq!(code, EXIT_MOUNTS, "{stderr}");
    assert_one_line(
        &stderr,
        "zygote-init: mounts: opening directory \"/data/esc\"",
    );
    assert!(!escaped, "mkdir followed a symlink onto the host");
}
