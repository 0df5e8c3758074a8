//! End-to-end: the real interpreter, started by the built zygote-init, probes its jail from
//! inside and prints JSON. Needs root in the initial user namespace (SKIPPED otherwise).

mod common;

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{
    eof_within, finish, first_line, probe_script, processes_with, python, python_spec, run,
    skip_unless_root, spawn,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn probe() -> Value {
    let (code, stdout, stderr) = run(&python_spec(&probe_script(python())));
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?} {stderr:?}"))
}

#[test]
fn the_jail_looks_right_from_inside() {
    if skip_unless_root() {
        return;
    }
    let r = probe();
    let py = python();
    let prefix = py.prefix.to_str().unwrap();

    assert_eq!(r["pid"], 1, "the zygote is PID 1 of its pid namespace");
    assert_eq!(r["ids"], serde_json::json!([0, 0, 0, 0]));
    assert_eq!(r["groups"], serde_json::json!([]));
    assert_eq!(r["hostname"], "sandfork");
    assert_eq!(r["fds"], serde_json::json!([3]), "only the control socket");
    for absent in ["/proc", "/sys", "/etc/passwd", "/tmp"] {
        assert_eq!(r["exists"][absent], false, "{absent} must not exist");
    }
    assert_eq!(r["exists"]["/sandbox/work"], true);
    assert_eq!(r["cwd"], "/sandbox");
    assert_eq!(
        r["env"],
        serde_json::json!({"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"}),
        "exactly the spec's environment"
    );

    // Writes fail everywhere but /dev/null; the root and every bind are read-only mounts.
    assert_eq!(r["write"]["/probe"], "EROFS");
    assert_eq!(r["write"]["/sandbox/probe"], "EROFS");
    assert!(r["write"][format!("{prefix}/probe")].is_string());
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

    // A socket can be made, but there is no interface up to reach anything.
    assert_eq!(r["connect"], "ENETUNREACH");

    assert_eq!(r["no_new_privs"], 1);
    assert_eq!(r["seccomp_mode"], 2, "SECCOMP_MODE_FILTER");
    assert_eq!(r["sibling_uid"], 0, "uid/gid 1 are mapped");
    assert_eq!(r["child_tmpfs"], 0, "a child can mount its tmpfs");
}

#[test]
fn ptrace_is_killed_by_the_zygote_filter() {
    if skip_unless_root() {
        return;
    }
    let script = "import ctypes\nctypes.CDLL(None).ptrace(0, 0, 0, 0)\nprint('survived')";
    let (code, stdout, _) = run(&python_spec(script));
    assert_eq!(code, 128 + libc::SIGSYS, "PID 1 killed by SIGSYS");
    assert!(!stdout.contains("survived"));
}

#[test]
fn the_zygote_exit_status_is_passed_on() {
    if skip_unless_root() {
        return;
    }
    let (code, stdout, stderr) = run(&python_spec("print('hi'); raise SystemExit(7)"));
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (7, "hi\n", ""));
}

#[test]
fn seccomp_false_skips_the_filters_but_not_no_new_privs() {
    if skip_unless_root() {
        return;
    }
    let mut spec = python_spec(
        "import ctypes\nl = ctypes.CDLL(None)\nprint(l.prctl(39, 0, 0, 0, 0), l.prctl(21, 0, 0, 0, 0))",
    );
    spec.seccomp = false;
    let (code, stdout, stderr) = run(&spec);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "1 0\n");
}

#[test]
fn kill_9_of_zygote_init_takes_the_jail_down() {
    if skip_unless_root() {
        return;
    }
    let token = format!("sandfork-pdeathsig-{}", std::process::id());
    let script = format!("import time\n# {token}\nprint('ready', flush=True)\ntime.sleep(600)");
    let mut jail = spawn(&python_spec(&script), Vec::new());
    let (line, _stdout) = first_line(&mut jail.child);
    assert_eq!(line, "ready\n");
    assert_eq!(processes_with(&token).len(), 2, "monitor + PID 1 (python)");

    kill(Pid::from_raw(jail.child.id() as i32), Signal::SIGKILL).unwrap();
    // Only PID 1 holds the control socket: EOF means it is gone.
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
fn the_spawning_thread_exiting_takes_the_jail_down() {
    if skip_unless_root() {
        return;
    }
    // The supervisor's parent-death signal is cleared by the uid change inside the user
    // namespace; zygote-init must restore it or an exiting spawner thread leaks the jail.
    let token = format!("sandfork-spawner-{}", std::process::id());
    let script = format!("import time\n# {token}\nprint('ready', flush=True)\ntime.sleep(600)");
    let spec = python_spec(&script);
    let (mut jail, stdout) = std::thread::spawn(move || {
        let mut jail = spawn(&spec, Vec::new());
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
    assert!(died, "the jail outlived the thread that spawned it");
    drop(stdout);
    let status = jail.child.wait().unwrap();
    assert!(!status.success());
    assert!(processes_with(&token).is_empty());
}

#[test]
fn start_time_spawn_to_first_line() {
    if skip_unless_root() {
        return;
    }
    let py = python();
    let mut jailed = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let mut jail = spawn(&python_spec("print(1)"), Vec::new());
        let (line, mut rest) = first_line(&mut jail.child);
        jailed.push(start.elapsed());
        assert_eq!(line, "1\n");
        let mut tail = String::new();
        rest.read_to_string(&mut tail).unwrap();
        assert_eq!(jail.child.wait().unwrap().code(), Some(0));

        // The same interpreter and flags without the jail.
        let start = Instant::now();
        let mut child = std::process::Command::new(&py.executable)
            .args(["-I", "-X", "utf8", "-c", "print(1)"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (line, _) = first_line(&mut child);
        bare.push(start.elapsed());
        assert_eq!(line, "1\n");
        child.wait().unwrap();
    }
    jailed.sort();
    bare.sort();
    println!(
        "spawn -> first line, median of 10: jailed {:?}, bare interpreter {:?} (min {:?} / {:?})",
        jailed[5], bare[5], jailed[0], bare[0]
    );
    assert!(jailed[5] < Duration::from_secs(2));
}

#[test]
fn binds_keep_the_source_mounts_restrictions() {
    if skip_unless_root() {
        return;
    }
    // zygote-init only adds flags to a bind (read-only, nosuid, nodev): a noexec source stays
    // noexec inside. The noexec tmpfs lives in a private mount namespace made by unshare(1), so
    // the host's mount table is never touched.
    let dir = std::env::temp_dir().join(format!("zygote-init-noexec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = python_spec(
        "import os\nf = os.statvfs('/data').f_flag\nprint(bool(f & os.ST_NOEXEC), bool(f & os.ST_RDONLY))",
    );
    spec.keep_fds.clear();
    spec.binds.push(zygote_init::Bind {
        path: dir.clone(),
        dest: Some("/data".into()),
    });
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o noexec,nosuid,nodev,size=1m tmpfs "$0" && exec "$1" "$2""#)
        .arg(&dir)
        .arg(env!("CARGO_BIN_EXE_zygote-init"))
        .arg(serde_json::to_string(&spec).unwrap())
        .output()
        .unwrap();
    std::fs::remove_dir(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True True\n");
}
