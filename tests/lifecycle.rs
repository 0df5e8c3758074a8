//! The daemon's own life: a zygote killed from outside is replaced, SIGTERM drains in-flight
//! runs and removes the socket, and nothing is left running afterwards. Each test starts its own
//! daemon, since these tests kill things.
//!
//! Longer than the ~500 lines we aim for, on purpose: the daemon's whole life (start-up,
//! stale state, zygote deaths, shutdown) is one story, each test starting its own daemon.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{
    descendants, ok_stdout, privileged, spec, start_daemon_process, test_config, wait_ready,
};
use sandfork_protocol::client::Client;
use sandfork_protocol::{Request, Response, RunResult, Status};

struct OwnDaemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
    child: Child,
}

impl OwnDaemon {
    fn start() -> OwnDaemon {
        OwnDaemon::start_with("")
    }

    fn start_with(extra_config: &str) -> OwnDaemon {
        OwnDaemon::start_with_slots(extra_config, 8)
    }

    fn start_with_slots(extra_config: &str, slots: u32) -> OwnDaemon {
        let dir = tempfile::Builder::new()
            .prefix("sandfork-lifecycle-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("config.toml");
        let text =
            test_config(dir.path(), extra_config).replace("slots = 8", &format!("slots = {slots}"));
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("daemon.log");
        let child = start_daemon_process(&config, &log);
        let socket = dir.path().join("sandfork.sock");
        wait_ready(&socket, &log, Duration::from_secs(90));
        OwnDaemon {
            _dir: dir,
            socket,
            log,
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Host pids of the Python zygotes: root of the jail (uid = uid_base), not zygote-init's
    /// monitor, which runs with the same uid.
    fn zygotes(&self) -> Vec<u32> {
        descendants(self.pid())
            .into_iter()
            .filter(|pid| host_uid(*pid) == Some(200_000))
            .filter(|pid| comm(*pid).is_some_and(|c| c != "zygote-init"))
            // Its parent is zygote-init's monitor (a child being forked is briefly uid 0 of the
            // jail too, but its parent is the zygote).
            .filter(|pid| {
                parent(*pid)
                    .and_then(comm)
                    .is_some_and(|c| c == "zygote-init")
            })
            .collect()
    }

    fn terminate_and_wait(&mut self, within: Duration) -> std::process::ExitStatus {
        terminate(&mut self.child, &self.log, within)
    }
}

impl Drop for OwnDaemon {
    /// A graceful stop, so the daemon removes its cgroups; SIGKILL only if it hangs.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn host_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// A run that outlasts any grace period, started and under way on `daemon`.
async fn start_long_run(
    daemon: &OwnDaemon,
) -> tokio::task::JoinHandle<Result<RunResult, sandfork_protocol::client::ClientError>> {
    let socket = daemon.socket.clone();
    let long_run = tokio::spawn(async move {
        let mut client = Client::connect(&socket).await.unwrap();
        client.run(spec("import time\ntime.sleep(60)")).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    long_run
}

/// Sends SIGTERM to a daemon and waits (at most `within`) for its exit status.
fn terminate(
    child: &mut Child,
    log: &std::path::Path,
    within: Duration,
) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within {within:?}; log:\n{}",
            common::read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of `pids` still alive after waiting up to `within` for all of them to go.
fn still_alive_after(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.iter().copied().filter(|&pid| alive(pid)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_zygote_fails_its_run_and_is_replaced() {
    if !privileged("a_killed_zygote_fails_its_run_and_is_replaced") {
        return;
    }
    let daemon = OwnDaemon::start();
    let mut client = Client::connect(&daemon.socket).await.unwrap();
    assert_eq!(
        ok_stdout(&client.run(spec("print(1)")).await.unwrap()),
        "1\n"
    );
    let zygotes = daemon.zygotes();
    assert_eq!(zygotes.len(), 1, "one zygote for the default profile");

    // A run in progress when its zygote is killed from outside.
    let socket = daemon.socket.clone();
    let in_flight = tokio::spawn(async move {
        let mut client = Client::connect(&socket).await.unwrap();
        client
            .run(spec(
                "import time\nprint('started', flush=True)\ntime.sleep(20)",
            ))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygotes[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the run must end promptly when its zygote dies")
        .unwrap();
    assert_eq!(result.status, Status::InternalError, "{:?}", result.message);
    assert!(result.message.unwrap().contains("zygote"));

    // The next request succeeds (on a new zygote).
    let result = client.run(spec("print('after respawn')")).await.unwrap();
    assert_eq!(ok_stdout(&result), "after respawn\n");
    let replaced = daemon.zygotes();
    assert_eq!(replaced.len(), 1);
    assert_ne!(replaced, zygotes);
    assert!(!alive(zygotes[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_runs_finish_then_cleans_up() {
    if !privileged("sigterm_lets_runs_finish_then_cleans_up") {
        return;
    }
    let mut daemon = OwnDaemon::start();
    let mut client = Client::connect(&daemon.socket).await.unwrap();
    client
        .send(&Request::Run {
            id: 1,
            spec: spec("import time\ntime.sleep(1)\nprint('finished')"),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let everything = descendants(daemon.pid());
    assert!(!everything.is_empty());
    let socket = daemon.socket.clone();

    let waiter = std::thread::spawn(move || daemon.terminate_and_wait(Duration::from_secs(10)));
    // New runs on the open connection are refused while draining.
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .send(&Request::Run {
            id: 2,
            spec: spec("print('late')"),
        })
        .await
        .unwrap();
    let mut finished = None;
    let mut refused = None;
    while finished.is_none() || refused.is_none() {
        match client.recv().await {
            Ok(Response::Result { id: 1, result }) => finished = Some(result),
            Ok(Response::Error { id: Some(2), error }) => refused = Some(error),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(err) => panic!("connection ended early: {err}"),
        }
    }
    assert_eq!(ok_stdout(&finished.unwrap()), "finished\n");
    assert_eq!(
        refused.unwrap().kind,
        sandfork_protocol::ErrorKind::ShuttingDown
    );
    drop(client);
    let status = waiter.join().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(!socket.exists(), "the socket is removed");
    let left = still_alive_after(&everything, Duration::from_secs(2));
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_kills_runs_that_outlast_the_grace_period() {
    if !privileged("sigterm_kills_runs_that_outlast_the_grace_period") {
        return;
    }
    let mut daemon = OwnDaemon::start();
    let long_run = start_long_run(&daemon).await;
    let everything = descendants(daemon.pid());
    let started = Instant::now();
    // Grace is 3 s in the test config.
    let status = daemon.terminate_and_wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // The client learns the run did not complete (its connection ends).
    let outcome = long_run.await.unwrap();
    assert!(
        outcome.is_err() || outcome.as_ref().unwrap().status != Status::Ok,
        "{outcome:?}"
    );
    let left = still_alive_after(&everything, Duration::from_secs(2));
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    if !privileged("a_stale_socket_is_replaced_and_a_live_one_is_not") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sandfork.sock");
    // A socket file nobody listens on, as a crash leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, test_config(dir.path(), "")).unwrap();
    let log = dir.path().join("daemon.log");
    let mut first = start_daemon_process(&config, &log);
    wait_ready(&socket, &log, Duration::from_secs(90));
    // A second daemon on the same socket must refuse to start, leaving the first alone.
    let log2 = dir.path().join("daemon2.log");
    let mut second = start_daemon_process(&config, &log2);
    let status = second.wait().unwrap();
    assert!(!status.success());
    assert!(
        common::read_log(&log2).contains("in use"),
        "{}",
        common::read_log(&log2)
    );
    let mut client = Client::connect(&socket).await.unwrap();
    assert_eq!(
        ok_stdout(&client.run(spec("print(2)")).await.unwrap()),
        "2\n"
    );
    // A clean stop, so the daemon removes its cgroups.
    assert!(terminate(&mut first, &log, Duration::from_secs(20)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zygotes_are_recycled_without_failing_runs() {
    if !privileged("zygotes_are_recycled_without_failing_runs") {
        return;
    }
    let daemon =
        OwnDaemon::start_with("[profiles.default]\nzygote_max_forks = 5\nwarm_children = 1\n");
    let first = daemon.zygotes();
    assert_eq!(first.len(), 1);
    // A run that spans at least one recycle must still finish normally.
    let socket = daemon.socket.clone();
    let long_run = tokio::spawn(async move {
        let mut client = Client::connect(&socket).await.unwrap();
        client
            .run(spec("import time\ntime.sleep(1.5)\nprint('long run done')"))
            .await
            .unwrap()
    });
    let mut client = Client::connect(&daemon.socket).await.unwrap();
    for n in 0..20 {
        let result = client.run(spec(&format!("print({n})"))).await.unwrap();
        assert_eq!(ok_stdout(&result), format!("{n}\n"), "run {n}");
    }
    assert_eq!(ok_stdout(&long_run.await.unwrap()), "long run done\n");
    // The first zygote was replaced (and, once drained, stopped). Starting its replacement takes
    // seconds under software emulation (scripts/cgroup-v2), so the wait is generous.
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(first[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(first[0]),
        "the first zygote is still running after 20+ forks"
    );
    assert_eq!(daemon.zygotes().len(), 1);
    assert!(common::read_log(&daemon.log).contains("recycling zygote"));
}

/// Every cgroup directory named like this daemon's tree (sandfork-<instance>) on the host.
fn sandfork_cgroups() -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if entry.file_name().to_string_lossy().starts_with("sandfork-") {
                    found.push(path.clone());
                }
                stack.push(path);
            }
        }
    }
    found
}

/// The cgroup trees of the daemon listening (or that listened) on `socket`.
fn instance_cgroups(socket: &std::path::Path) -> Vec<std::path::PathBuf> {
    let instance = format!(
        "sandfork-{}",
        sandfork::daemon::supervisor::instance_name(socket)
    );
    sandfork_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&instance))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_restarts_cleanly_and_sigterm_leaves_no_cgroups() {
    if !privileged("a_killed_daemon_restarts_cleanly_and_sigterm_leaves_no_cgroups") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, test_config(dir.path(), "")).unwrap();
    let socket = dir.path().join("sandfork.sock");
    let log = dir.path().join("daemon.log");
    let mut first = start_daemon_process(&config, &log);
    wait_ready(&socket, &log, Duration::from_secs(90));
    let mut client = Client::connect(&socket).await.unwrap();
    assert_eq!(
        ok_stdout(&client.run(spec("print(1)")).await.unwrap()),
        "1\n"
    );
    assert!(
        !instance_cgroups(&socket).is_empty(),
        "the daemon made slot cgroups"
    );
    let everything = descendants(first.id());
    // A crash: no clean-up at all.
    first.kill().unwrap();
    first.wait().unwrap();
    let left = still_alive_after(&everything, Duration::from_secs(5));
    assert!(left.is_empty(), "the jail died with its daemon: {left:?}");
    assert!(socket.exists(), "a crash leaves the socket behind");
    // Restart on the same socket: stale socket and cgroups are cleaned, runs work.
    let log2 = dir.path().join("daemon2.log");
    let mut second = start_daemon_process(&config, &log2);
    wait_ready(&socket, &log2, Duration::from_secs(90));
    let mut client = Client::connect(&socket).await.unwrap();
    assert_eq!(
        ok_stdout(&client.run(spec("print(2)")).await.unwrap()),
        "2\n"
    );
    drop(client);
    assert!(common::read_log(&log2).contains("removed a stale socket"));
    // A clean stop removes the daemon's cgroups.
    assert!(terminate(&mut second, &log2, Duration::from_secs(20)).success());
    let left = instance_cgroups(&socket);
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_from_outside_ends_its_run_and_frees_its_slot() {
    if !privileged("a_child_killed_from_outside_ends_its_run_and_frees_its_slot") {
        return;
    }
    // Two slots, so a leaked one would show at once.
    let daemon = OwnDaemon::start_with_slots("", 2);
    let marker = format!("killed-from-outside-{}", std::process::id());
    let socket = daemon.socket.clone();
    let code = format!("import time\nopen('{marker}', 'w').close()\ntime.sleep(30)\n");
    let victim = tokio::spawn(async move {
        let mut client = Client::connect(&socket).await.unwrap();
        client.run(spec(&code)).await.unwrap()
    });
    let pid = common::find_marked_child(daemon.pid(), &marker).expect("the child appeared");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), victim)
        .await
        .expect("the run ends promptly")
        .unwrap();
    assert_eq!(result.status, Status::Killed, "{:?}", result.message);
    assert_eq!(result.signal, Some(libc::SIGKILL));
    // Its slot is free again (the status frame counts busy slots).
    let mut client = Client::connect(&daemon.socket).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = client.ping().await.unwrap();
        assert_eq!(status.slots_total, 2);
        if status.slots_busy == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a slot stayed busy: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And both slots serve runs again.
    let mut tasks = Vec::new();
    for n in 0..6 {
        let socket = daemon.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&socket).await.unwrap();
            client
                .run(spec(&format!("import time\ntime.sleep(0.1)\nprint({n})")))
                .await
                .unwrap()
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        assert_eq!(ok_stdout(&task.await.unwrap()), format!("{n}\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_still_cleans_up() {
    if !privileged("sigterm_during_start_up_still_cleans_up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, test_config(dir.path(), "")).unwrap();
    let socket = dir.path().join("sandfork.sock");
    let log = dir.path().join("daemon.log");
    let mut daemon = start_daemon_process(&config, &log);
    // The socket is bound before the interpreter is probed and the zygotes start, so this
    // SIGTERM arrives while the daemon is still starting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(socket.exists(), "{}", common::read_log(&log));
    let status = terminate(&mut daemon, &log, Duration::from_secs(20));
    assert!(status.success(), "{status:?}: {}", common::read_log(&log));
    assert!(!socket.exists(), "the socket is removed");
    let left = instance_cgroups(&socket);
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// Issue 13, defect 4: a run stopped at the end of the shutdown grace still gets its result —
/// `killed`, saying why — before its connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_at_the_end_of_the_grace_gets_its_result() {
    if !privileged("a_run_killed_at_the_end_of_the_grace_gets_its_result") {
        return;
    }
    let mut daemon = OwnDaemon::start();
    let long_run = start_long_run(&daemon).await;
    let status = daemon.terminate_and_wait(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    let result = long_run
        .await
        .unwrap()
        .expect("a result, not a closed connection");
    assert_eq!(result.status, Status::Killed, "{:?}", result.message);
    let message = result.message.unwrap_or_default();
    assert!(message.contains("grace period"), "{message}");
}
