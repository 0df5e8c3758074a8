//! Rootless mode: zygote-init started by an unprivileged user (as `nobody` when the tests run as
//! root) maps only that user's ids, binds from inside its own namespaces, and otherwise builds
//! the same jail. Needs unprivileged user namespaces and /usr/bin/python3 (SKIPPED otherwise).

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{
    eof_within, finish, first_line, probe_script, processes_with, rootless_ids, rootless_spec,
    run_rootless, run_rootless_spec, skip_unless_rootless_works, spawn_jail_as, system_python,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use zygote_init::{Bind, EXIT_SANITIZE, EXIT_SOURCES};

#[test]
fn the_rootless_jail_looks_right_from_inside() {
    if skip_unless_rootless_works("the_rootless_jail_looks_right_from_inside") {
        return;
    }
    let (code, stdout, stderr) = run_rootless(&probe_script(system_python()));
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();

    assert_eq!(r["pid"], 1, "the zygote is PID 1 of its pid namespace");
    assert_eq!(
        r["ids"],
        serde_json::json!([0, 0, 0, 0]),
        "our ids map to 0"
    );
    assert_eq!(r["groups"], serde_json::json!([]), "spawned without groups");
    assert_eq!(r["hostname"], "sandfork");
    assert_eq!(r["fds"], serde_json::json!([3]), "only the control socket");
    for absent in ["/proc", "/sys", "/etc/passwd", "/tmp"] {
        assert_eq!(r["exists"][absent], false, "{absent} must not exist");
    }
    assert_eq!(r["cwd"], "/sandbox");
    for (path, error) in r["write"].as_object().unwrap() {
        if path != "/dev/null" {
            assert!(error.is_string(), "writing {path} must fail");
        }
    }
    assert_eq!(
        r["write"]["/dev/null"],
        Value::Null,
        "/dev/null is writable"
    );
    for (path, ro) in r["rdonly"].as_object().unwrap() {
        assert_eq!(ro, true, "{path} must be a read-only mount");
    }
    for (path, nosuid) in r["nosuid"].as_object().unwrap() {
        assert_eq!(nosuid, true, "{path} must be nosuid");
    }
    assert_eq!(r["urandom"], 16);
    assert_eq!(r["connect"], "ENETUNREACH");
    assert_eq!(r["no_new_privs"], 1);
    assert_eq!(r["seccomp_mode"], 2, "SECCOMP_MODE_FILTER");
    // setgroups is denied and no other id is mapped: the first call of the sibling fails.
    assert_eq!(
        r["sibling_uid"], 2,
        "only uid/gid 0 exist in a rootless jail"
    );
    assert_eq!(r["child_tmpfs"], 0, "a child can still mount its tmpfs");
}

#[test]
fn ptrace_is_killed_in_a_rootless_jail() {
    if skip_unless_rootless_works("ptrace_is_killed_in_a_rootless_jail") {
        return;
    }
    let script = "import ctypes\nctypes.CDLL(None).ptrace(0, 0, 0, 0)\nprint('survived')";
    let (code, stdout, _) = run_rootless(script);
    assert_eq!(code, 128 + libc::SIGSYS, "PID 1 killed by SIGSYS");
    assert!(!stdout.contains("survived"));
}

#[test]
fn the_rootless_zygote_exit_status_is_passed_on() {
    if skip_unless_rootless_works("the_rootless_zygote_exit_status_is_passed_on") {
        return;
    }
    let (code, stdout, stderr) = run_rootless("print('hi'); raise SystemExit(7)");
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (7, "hi\n", ""));
}

#[test]
fn a_rootless_spec_must_map_exactly_our_ids() {
    if skip_unless_rootless_works("a_rootless_spec_must_map_exactly_our_ids") {
        return;
    }
    let (run_as, uid, gid) = rootless_ids();
    // What a root daemon writes: the jail root and one id per slot.
    let mut spec = rootless_spec("print(1)", uid, gid);
    spec.uid_map[0].count = 33;
    let (code, stdout, stderr) = run_rootless_spec(&spec, run_as);
    assert_eq!(code, EXIT_SANITIZE, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with("zygote-init: sanitize: uid_map: rootless"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn an_unreadable_bind_source_names_rootless_mode() {
    if skip_unless_rootless_works("an_unreadable_bind_source_names_rootless_mode") {
        return;
    }
    let (run_as, uid, gid) = rootless_ids();
    // Like a pyenv under /root: a directory the daemon's user cannot traverse.
    if run_as.is_none() {
        // Unprivileged, a 0700 directory we could make is our own, hence traversable.
        println!("SKIPPED: an_unreadable_bind_source_names_rootless_mode: needs root to own it");
        return;
    }
    let dir = std::env::temp_dir().join(format!("zygote-init-private-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut spec = rootless_spec("print(1)", uid, gid);
    spec.binds.push(Bind {
        path: dir.join("lib"),
        dest: Some("/data".into()),
    });
    let (code, _, stderr) = run_rootless_spec(&spec, run_as);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, EXIT_SOURCES, "{stderr}");
    assert!(stderr.contains("EACCES"), "{stderr}");
    assert!(stderr.contains("hint: rootless mode"), "{stderr}");
}

#[test]
fn kill_9_of_a_rootless_zygote_init_takes_the_jail_down() {
    if skip_unless_rootless_works("kill_9_of_a_rootless_zygote_init_takes_the_jail_down") {
        return;
    }
    let (run_as, uid, gid) = rootless_ids();
    let token = format!("sandfork-rootless-kill-{}", std::process::id());
    let script = format!("import time\n# {token}\nprint('ready', flush=True)\ntime.sleep(600)");
    let mut jail = spawn_jail_as(&rootless_spec(&script, uid, gid), run_as);
    let (line, _stdout) = first_line(&mut jail.child);
    assert_eq!(line, "ready\n");
    assert_eq!(processes_with(&token).len(), 2, "monitor + PID 1 (python)");

    kill(Pid::from_raw(jail.child.id() as i32), Signal::SIGKILL).unwrap();
    assert!(
        eof_within(jail.control.as_fd(), Duration::from_secs(2)),
        "PID 1 still holds the control socket 2 s after kill -9 of its monitor"
    );
    let (code, _, _) = finish(jail.child);
    assert_eq!(code, 128 + libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_with(&token).is_empty() {
        assert!(Instant::now() < deadline, "jail processes survived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_spawning_thread_exiting_takes_a_rootless_jail_down() {
    if skip_unless_rootless_works("the_spawning_thread_exiting_takes_a_rootless_jail_down") {
        return;
    }
    let (run_as, uid, gid) = rootless_ids();
    let token = format!("sandfork-rootless-spawner-{}", std::process::id());
    let script = format!("import time\n# {token}\nprint('ready', flush=True)\ntime.sleep(600)");
    let spec = rootless_spec(&script, uid, gid);
    let (mut jail, stdout) = std::thread::spawn(move || {
        let mut jail = spawn_jail_as(&spec, run_as);
        let (line, stdout) = first_line(&mut jail.child);
        assert_eq!(line, "ready\n");
        (jail, stdout)
    })
    .join()
    .unwrap();
    let died = eof_within(jail.control.as_fd(), Duration::from_secs(2));
    if !died {
        let _ = jail.child.kill(); // leave nothing running, then fail
    }
    assert!(
        died,
        "the rootless jail outlived the thread that spawned it"
    );
    drop(stdout);
    assert!(!jail.child.wait().unwrap().success());
    assert!(processes_with(&token).is_empty());
}
