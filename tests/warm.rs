//! Warm children: forked and locked down before requests arrive, each serving exactly one.
//! This binary's daemon has two profiles: `default` with 2 warm children and a 400 ms idle
//! limit, and `cold` with none.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{ok_stdout, privileged, spec, start_daemon_process, test_config, wait_ready};
use sandfork::client::Client;
use sandfork_protocol::{RunResult, RunSpec};

const IDLE_MS: u64 = 400;

fn socket() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("sandfork-warm-")
            .tempdir()
            .unwrap()
            .keep();
        let config = dir.join("config.toml");
        let profiles = format!(
            "[profiles.default]\nwarm_children = 2\nwarm_idle_ms = {IDLE_MS}\n\
             [profiles.cold]\nwarm_children = 0\npreload = [\"json\"]\n"
        );
        std::fs::write(&config, test_config(&dir, &profiles)).unwrap();
        let log = dir.join("daemon.log");
        let (tx, rx) = std::sync::mpsc::channel();
        let (config2, log2) = (config.clone(), log.clone());
        // The daemon's parent thread must outlive it (PDEATHSIG follows the forking thread).
        std::thread::spawn(move || {
            let child = start_daemon_process(&config2, &log2);
            tx.send(()).unwrap();
            let _keep = child;
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
        let socket = dir.join("sandfork.sock");
        wait_ready(&socket, &log, Duration::from_secs(90));
        socket
    })
}

async fn run(request: RunSpec) -> RunResult {
    let mut client = Client::connect(socket()).await.unwrap();
    client.run(request).await.unwrap()
}

/// Waits until the default profile has `n` warm children.
async fn warm_children_ready(n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = Client::connect(socket()).await.unwrap();
        let status = client.ping().await.unwrap();
        let warm = status
            .profiles
            .iter()
            .find(|p| p.name == "default")
            .map_or(0, |p| p.warm_children);
        if warm >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "warm pool never filled: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pid_of(result: &RunResult) -> u32 {
    ok_stdout(result).trim().parse().expect("a pid")
}

#[tokio::test]
async fn a_warm_child_serves_a_request() {
    if !privileged("a_warm_child_serves_a_request") {
        return;
    }
    warm_children_ready(2).await;
    let result = run(spec("print('warm')")).await;
    assert_eq!(ok_stdout(&result), "warm\n");
    assert!(result.warm, "served by a pre-forked child");
    let cold = run(RunSpec {
        profile: Some("cold".into()),
        ..spec("print('cold')")
    })
    .await;
    assert_eq!(ok_stdout(&cold), "cold\n");
    assert!(!cold.warm, "the cold profile forks per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_child_never_serves_two_requests() {
    if !privileged("a_warm_child_never_serves_two_requests") {
        return;
    }
    warm_children_ready(2).await;
    let code = "import os\nprint(os.getpid())";
    let mut pids = Vec::new();
    let mut warm_served = 0;
    for _ in 0..15 {
        let result = run(spec(code)).await;
        warm_served += usize::from(result.warm);
        pids.push(pid_of(&result));
    }
    let concurrent: Vec<_> = (0..10).map(|_| tokio::spawn(run(spec(code)))).collect();
    for task in concurrent {
        let result = task.await.unwrap();
        warm_served += usize::from(result.warm);
        pids.push(pid_of(&result));
    }
    let mut unique = pids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), pids.len(), "a child served twice: {pids:?}");
    assert!(warm_served > 0, "no run was served warm");
}

#[tokio::test]
async fn idle_warm_children_are_discarded() {
    if !privileged("idle_warm_children_are_discarded") {
        return;
    }
    warm_children_ready(2).await;
    let code = "import os\nprint(os.getpid())";
    let before = pid_of(&run(spec(code)).await);
    // Longer than the idle limit: every child that was warm at `before` must have been replaced
    // (pids in the zygote's namespace grow with each fork).
    tokio::time::sleep(Duration::from_millis(IDLE_MS * 3)).await;
    warm_children_ready(1).await;
    let after = run(spec(code)).await;
    assert!(after.warm);
    let after = pid_of(&after);
    assert!(
        after > before + 3,
        "the child that served after the idle period (pid {after}) was forked before it \
         (the child before it had pid {before})"
    );
}

#[tokio::test]
async fn request_limits_are_applied_to_a_warm_child() {
    if !privileged("request_limits_are_applied_to_a_warm_child") {
        return;
    }
    warm_children_ready(2).await;
    let code = "import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20, resource.getrlimit(resource.RLIMIT_CPU)[0])";
    let mut request = spec(code);
    request.limits.memory_mb = Some(300);
    request.limits.timeout_ms = Some(2500);
    let result = run(request).await;
    assert!(result.warm, "this check is about warm children");
    // memory 300 MiB; CPU = ceil(2.5 s) + 1
    assert_eq!(ok_stdout(&result), "300 4\n");
    // And the profile's ceilings when the request names none.
    warm_children_ready(1).await;
    let result = run(spec(code)).await;
    assert!(result.warm);
    assert_eq!(ok_stdout(&result), "700 16\n");
}
