//! Privileged tests on this machine's real cgroups (v1 here, v2 on production hosts). Each test
//! creates its own `sandfork-test-<pid>-<name>` tree under this process's own cgroups, runs
//! throwaway processes in it, and removes it. A test that cannot run prints `SKIPPED: <reason>`;
//! with `CI` set it fails instead.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{detect, CgroupError, CgroupSlots, Detection, DEFAULT_FS_ROOT};

const MIB: u64 = 1 << 20;

/// The host's detection if slot cgroups can be created here; otherwise says why (or panics
/// under CI).
fn host_ready(test: &str) -> Option<Detection> {
    let reason = if !nix::unistd::geteuid().is_root() {
        "needs root (creates cgroups, moves processes)".to_string()
    } else {
        match detect(Path::new(DEFAULT_FS_ROOT)) {
            Ok(detection) if detection.usable() => return Some(detection),
            Ok(detection) => format!("no usable cgroups: {}", detection.summary()),
            Err(err) => err.to_string(),
        }
    };
    skip(test, &reason);
    None
}

/// Says out loud that `test` did not run; under CI nothing may skip, so it fails.
fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run on CI: {reason}");
    }
    println!("SKIPPED: {test}: {reason}");
}

/// Creates the test's slots; on a v2 host where this test process shares its cgroup with other
/// processes (a login session), slots cannot be delegated: that is a skip, not a failure.
fn create_or_skip(test: &str, name: &str, count: u32) -> Option<CgroupSlots> {
    match CgroupSlots::create(Path::new(DEFAULT_FS_ROOT), name, count) {
        Ok(slots) => Some(slots),
        Err(err @ CgroupError::InternalProcesses { .. }) => {
            skip(
                test,
                &format!("{err} (run the tests under `systemd-run --scope -p Delegate=yes`)"),
            );
            None
        }
        Err(err) => panic!("{test}: create: {err}"),
    }
}

fn instance(name: &str) -> String {
    format!("test-{}-{name}", std::process::id())
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// `python3 -c code` that blocks on one byte of stdin first, so it can be attached before it
/// allocates anything.
fn spawn_gated(code: &str) -> Child {
    Command::new(python())
        .args(["-I", "-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3")
}

fn release(child: &mut Child) {
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(b"g").expect("write the go byte");
}

/// Waits up to `limit`; kills (our own child, by its pid) and fails after that.
fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_tree_gone(detection: &Detection, instance: &str) {
    for hierarchy in &detection.hierarchies {
        let dir = hierarchy.base.join(format!("sandfork-{instance}"));
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn cgroup_host_memory_limit_oom_kills_and_is_reported() {
    let Some(detection) = host_ready("cgroup_host_memory_limit_oom_kills_and_is_reported") else {
        return;
    };
    let name = instance("oom");
    let test = "cgroup_host_memory_limit_oom_kills_and_is_reported";
    let Some(slots) = create_or_skip(test, &name, 2) else {
        return;
    };
    let slot = slots.slot(1);
    slot.prepare(64 * MIB, 64).expect("prepare");
    let mut child =
        spawn_gated("import sys\nsys.stdin.read(1)\nb = b'x' * (200 << 20)\nprint(len(b))");
    slot.attach(child.id() as i32).expect("attach");
    assert_eq!(slot.pids().unwrap(), vec![child.id() as i32]);
    release(&mut child);
    let status = wait(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let usage = slot.usage().expect("usage");
    println!("{}: after the OOM kill: {usage:?}", slots.describe());
    assert!(usage.oom_killed, "{usage:?}");
    if let Some(peak) = usage.peak_memory_bytes {
        assert!(
            (32 * MIB..=68 * MIB).contains(&peak),
            "peak {peak} not near the 64 MiB limit"
        );
    }
    assert!(slot.pids().unwrap().is_empty());
    // The other slot saw nothing.
    slots.slot(0).prepare(64 * MIB, 64).unwrap();
    assert!(!slots.slot(0).usage().unwrap().oom_killed);
    slots.remove().expect("remove");
    assert_tree_gone(&detection, &name);
}

#[test]
fn cgroup_host_pids_limit_cpu_time_and_a_clean_run() {
    let Some(detection) = host_ready("cgroup_host_pids_limit_cpu_time_and_a_clean_run") else {
        return;
    };
    let name = instance("pids");
    let test = "cgroup_host_pids_limit_cpu_time_and_a_clean_run";
    let Some(slots) = create_or_skip(test, &name, 1) else {
        return;
    };
    let slot = slots.slot(0);
    slot.prepare(256 * MIB, 8).expect("prepare");
    let mut child = spawn_gated(
        "import sys, threading, time\n\
         sys.stdin.read(1)\n\
         ev = threading.Event()\n\
         threads = []\n\
         for _ in range(32):\n\
         \x20   t = threading.Thread(target=ev.wait)\n\
         \x20   try:\n\
         \x20       t.start()\n\
         \x20   except RuntimeError:\n\
         \x20       break\n\
         \x20   threads.append(t)\n\
         ev.set()\n\
         for t in threads:\n\
         \x20   t.join()\n\
         end = time.process_time() + 0.3\n\
         while time.process_time() < end:\n\
         \x20   pass\n\
         print(len(threads))\n",
    );
    slot.attach(child.id() as i32).expect("attach");
    release(&mut child);
    let status = wait(&mut child, Duration::from_secs(60));
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{status:?}");
    let started: u32 = out.trim().parse().expect("thread count");
    // pids.max = 8 tasks: the main thread and at most seven more.
    assert!(
        (1..=7).contains(&started),
        "started {started} threads under pids.max 8"
    );
    let usage = slot.usage().expect("usage");
    println!("{started} threads started; {usage:?}");
    assert!(!usage.oom_killed, "{usage:?}");
    assert!(usage.cpu_ns >= 250_000_000, "{usage:?}");
    if let Some(peak) = usage.peak_memory_bytes {
        assert!(peak > 0 && peak < 256 * MIB, "{usage:?}");
    }
    slots.remove().expect("remove");
    assert_tree_gone(&detection, &name);
}

#[test]
fn cgroup_host_stale_tree_is_reused_unless_busy() {
    let Some(detection) = host_ready("cgroup_host_stale_tree_is_reused_unless_busy") else {
        return;
    };
    let name = instance("stale");
    let root = Path::new(DEFAULT_FS_ROOT);
    let Some(slots) = create_or_skip("cgroup_host_stale_tree_is_reused_unless_busy", &name, 2)
    else {
        return;
    };
    if slots.describe().contains("sandforkd in") {
        // v2, and this test process moved itself into the tree: a crash cannot be simulated
        // in-process (the "crashed" daemon would still be inside).
        skip(
            "cgroup_host_stale_tree_is_reused_unless_busy",
            "this process moved itself into the tree",
        );
        return;
    }
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    slots.slot(1).attach(sleeper.id() as i32).expect("attach");
    std::mem::forget(slots); // a crashed daemon: nothing removed

    let err = CgroupSlots::create(root, &name, 2).expect_err("a busy stale slot");
    match err {
        CgroupError::StaleBusy { pids, .. } => assert_eq!(pids, vec![sleeper.id() as i32]),
        other => panic!("{other}"),
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let slots = CgroupSlots::create(root, &name, 2).expect("create over the stale tree");
    slots.remove().expect("remove");
    assert_tree_gone(&detection, &name);
}
