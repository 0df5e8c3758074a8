//! Warm children: forked and locked down before requests arrive, each serving exactly one.
//! This binary's daemon has four profiles: `default` with 2 warm children and a 400 ms idle
//! limit, `cold` with none, and two with one warm child each and a warm-up of their own:
//! `rehearsed` (a warm-up that leaves a mark) and `brokenwarmup` (a warm-up that fails).

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{ok_stdout, privileged, spec, test_config};
use sandfork_protocol::client::Client;
use sandfork_protocol::{RunResult, RunSpec};

const IDLE_MS: u64 = 400;

/// The `rehearsed` profile's warm-up: output on both streams, a global, and a mark on `sys`
/// naming the process it last ran in (the zygote first, then each warm child).
const REHEARSAL: &str = "
import os, sys
MARKER = 'warm-up-marker'
print(MARKER)
print(MARKER, file=sys.stderr)
sys.rehearsed_in = os.getpid()
";

fn daemon() -> &'static common::Daemon {
    static DAEMON: OnceLock<common::Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        common::start_private_daemon("sandfork-warm-", |dir| {
            let profiles = format!(
                "[profiles.default]\nwarm_children = 2\nwarm_idle_ms = {IDLE_MS}\n\
                 [profiles.cold]\nwarm_children = 0\npreload = [\"json\"]\n\
                 [profiles.rehearsed]\nwarm_children = 1\npreload = [\"json\"]\n\
                 warmup = '''{REHEARSAL}'''\n\
                 [profiles.brokenwarmup]\nwarm_children = 1\npreload = [\"json\"]\n\
                 warmup = \"raise RuntimeError('broken warm-up')\"\n"
            );
            test_config(dir, &profiles)
        })
    })
}

fn socket() -> &'static PathBuf {
    &daemon().socket
}

async fn run(request: RunSpec) -> RunResult {
    let mut client = Client::connect(socket()).await.unwrap();
    client.run(request).await.unwrap()
}

/// Waits until the default profile has `n` warm children.
async fn warm_children_ready(n: u32) {
    profile_warm_children_ready("default", n).await;
}

/// Waits until `profile` has `n` warm children. The wait is generous: a refill
/// forks and locks down a child in the background, and under the software
/// emulation of `scripts/cgroup-v2` that alone can take seconds.
async fn profile_warm_children_ready(profile: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = Client::connect(socket()).await.unwrap();
        let status = client.ping().await.unwrap();
        let warm = status
            .profiles
            .iter()
            .find(|p| p.name == profile)
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

/// The memory limit of `pid`'s cgroup as the host sees it (v1 memory.limit_in_bytes or v2
/// memory.max), or None without a memory cgroup.
fn cgroup_memory_limit(pid: u32) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let candidates: Vec<String> = if controllers.split(',').any(|c| c == "memory") {
            vec![format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")]
        } else if controllers.is_empty() {
            vec![format!("/sys/fs/cgroup{path}/memory.max")]
        } else {
            continue;
        };
        for file in candidates {
            if let Ok(text) = std::fs::read_to_string(&file) {
                return text.trim().parse().ok();
            }
        }
    }
    None
}

// Multi-threaded: the child finder blocks its thread while the run proceeds on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limits_are_applied_to_a_warm_child() {
    if !privileged("request_limits_are_applied_to_a_warm_child") {
        return;
    }
    warm_children_ready(2).await;
    // The child marks itself so the host can find it and read its cgroup; it reports the CPU
    // rlimit (which the child lowered itself) and the address-space rlimit.
    let marker = format!("warm-limits-{}", std::process::id());
    let code = format!(
        "import resource, time\nopen('{marker}', 'w').close()\nprint(resource.getrlimit(resource.RLIMIT_CPU)[0], resource.getrlimit(resource.RLIMIT_AS)[0], flush=True)\ntime.sleep(1)\n"
    );
    let mut request = spec(&code);
    request.limits.memory_mb = Some(300);
    request.limits.timeout_ms = Some(2500);
    let runner = tokio::spawn(run(request));
    let child = common::find_marked_child(daemon().pid, &marker).expect("the marked child");
    let cgroup_limit = cgroup_memory_limit(child);
    let result = runner.await.unwrap();
    assert!(result.warm, "this check is about warm children");
    let stdout = ok_stdout(&result);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    // CPU: ceil(2.5 s) + 1, lowered by the child itself at "go".
    assert_eq!(fields[0], "4", "{stdout}");
    match cgroup_limit {
        // With cgroups, memory is the slot cgroup's limit, set by the supervisor before "go"
        // (and RLIMIT_AS stays unlimited: it counts address space, not memory).
        Some(limit) => {
            assert_eq!(
                limit,
                300 * 1024 * 1024,
                "the request's memory limit on the cgroup"
            );
            assert_eq!(fields[1], "-1", "{stdout}");
        }
        // Without, it is the address-space rlimit.
        None => assert_eq!(fields[1], (300u64 << 20).to_string(), "{stdout}"),
    }
}

#[tokio::test]
async fn a_warm_child_rehearses_without_leaving_output_or_globals() {
    if !privileged("a_warm_child_rehearses_without_leaving_output_or_globals") {
        return;
    }
    profile_warm_children_ready("rehearsed", 1).await;
    // The keeper asked the child to rehearse before it put it into the pool (no request was
    // waiting); the "go" queues behind that request on the child's channel.
    let code = "import os, sys\n\
                print('MARKER' in globals(), __name__, sys.stdin.read() == '')\n\
                print(getattr(sys, 'rehearsed_in', None) == os.getpid())\n";
    let result = run(RunSpec {
        profile: Some("rehearsed".into()),
        ..spec(code)
    })
    .await;
    assert!(result.warm, "served by a warm child: {result:?}");
    // The rehearsal ran in this very child (its mark names this pid), yet the program sees a
    // fresh __main__, an empty stdin, and none of the rehearsal's output on either stream.
    assert_eq!(ok_stdout(&result), "False __main__ True\nTrue\n");
    assert!(
        !String::from_utf8_lossy(&result.stderr).contains("warm-up-marker"),
        "stderr: {:?}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[tokio::test]
async fn a_failing_warm_up_costs_speed_not_runs() {
    if !privileged("a_failing_warm_up_costs_speed_not_runs") {
        return;
    }
    profile_warm_children_ready("brokenwarmup", 1).await;
    let result = run(RunSpec {
        profile: Some("brokenwarmup".into()),
        ..spec("print('still served')")
    })
    .await;
    assert_eq!(ok_stdout(&result), "still served\n");
    assert!(result.warm, "warm children are still kept: {result:?}");
    assert!(result.stderr.is_empty(), "{result:?}");
}
