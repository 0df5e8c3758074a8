//! What a run is charged is its own: the peak memory and CPU time a result reports are the run's,
//! never what an earlier run in the same slot used. On cgroup v1 the slot's counters are reset
//! per run; on v2 `memory.peak` is reset per run where the kernel allows it (Linux ≥ 6.12) and
//! the child's own rusage stands in where it does not; CPU time is the difference of `cpu.stat`.
//! scripts/cgroup-v2 runs this binary on real v2 kernels of both kinds.

mod common;

use common::{ok_stdout, privileged, start_private_daemon, test_config};
use sandfork_protocol::client::Client;
use sandfork_protocol::{RunResult, RunSpec};

/// A daemon with one slot and no warm child, so every run uses the same slot cgroup in turn.
fn one_slot_daemon() -> common::Daemon {
    start_private_daemon("sandfork-accounting-", |dir| {
        test_config(dir, "[profiles.default]\nwarm_children = 0\n")
            .replace("slots = 8", "slots = 1")
    })
}

async fn run(client: &mut Client, code: &str, memory_mb: u64) -> RunResult {
    let mut spec = RunSpec {
        code: code.as_bytes().to_vec(),
        ..RunSpec::default()
    };
    spec.limits.memory_mb = Some(memory_mb);
    spec.limits.timeout_ms = Some(15_000);
    client.run(spec).await.expect("run")
}

#[test]
fn peak_memory_and_cpu_time_are_each_runs_own() {
    if !privileged("peak_memory_and_cpu_time_are_each_runs_own") {
        return;
    }
    let daemon = one_slot_daemon();
    common::runtime().block_on(async {
        let mut client = Client::connect(&daemon.socket).await.unwrap();
        // Touch every page of 300 MiB, and burn CPU for a while.
        let big = run(
            &mut client,
            "b = bytearray(300 * 2**20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\nn = 0\nfor i in range(3_000_000):\n    n += i\nprint('big')",
            512,
        )
        .await;
        assert_eq!(ok_stdout(&big), "big\n");
        assert!(
            big.usage.max_rss_kb >= 280 * 1024,
            "the big run's peak: {:?}",
            big.usage
        );
        let small = run(&mut client, "print('small')", 512).await;
        assert_eq!(ok_stdout(&small), "small\n");
        assert!(
            small.usage.max_rss_kb < big.usage.max_rss_kb / 2,
            "the small run is charged the big run's peak: small {:?}, big {:?}",
            small.usage,
            big.usage
        );
        assert!(
            small.usage.cpu_ms * 2.0 < big.usage.cpu_ms.max(1.0),
            "the small run is charged the big run's CPU time: small {:?}, big {:?}",
            small.usage,
            big.usage
        );
    });
}
