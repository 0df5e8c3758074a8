//! `sandfork bench` end to end: the built CLI against this binary's daemon, with the baseline.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The CLI's own deadline; the test kills it (by pid) a little after that.
const BENCH_DEADLINE_S: u64 = 40;

/// `--floor` counts the machine's CPU: while its test runs, no other test of this file loads the
/// machine (it takes this lock to write, every other test to read).
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Parses `key=value` pairs of the summary line, checking the exact key order and that every
/// float has three decimals.
fn parse_summary(line: &str) -> Vec<(String, f64)> {
    let keys = [
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "rps",
        "errors",
        "baseline_p50_ms",
        "ratio",
    ];
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), keys.len(), "summary line {line:?}");
    fields
        .iter()
        .zip(keys)
        .map(|(field, key)| {
            let (name, value) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("{field:?} in {line:?}"));
            assert_eq!(name, key, "summary line {line:?}");
            if key == "errors" {
                assert!(value.bytes().all(|b| b.is_ascii_digit()), "{line:?}");
            } else {
                let decimals = value.split_once('.').map(|(_, d)| d.len());
                assert_eq!(decimals, Some(3), "{key} in {line:?}");
            }
            let number = value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{key} in {line:?}"));
            (key.to_string(), number)
        })
        .collect()
}

/// Runs the built `sandfork bench` against this binary's daemon with `args`; returns its exit
/// status and stdout (stdout and stderr are printed for the test log).
fn bench(args: &[&str]) -> (std::process::ExitStatus, String) {
    let socket = common::daemon().socket.display().to_string();
    let mut all = vec!["--socket", socket.as_str()];
    all.extend_from_slice(args);
    bench_command(&all)
}

/// Runs the built `sandfork bench` with exactly `args` (and the deadline).
fn bench_command(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .arg("bench")
        .args(args)
        .args(["--deadline-s", &BENCH_DEADLINE_S.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandfork bench");
    let limit = Instant::now() + Duration::from_secs(BENCH_DEADLINE_S + 10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for sandfork bench") {
            break status;
        }
        if Instant::now() > limit {
            // Child::kill signals this child's own pid.
            let _ = child.kill();
            let _ = child.wait();
            panic!("sandfork bench did not finish by its own deadline");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    println!("{stdout}{stderr}");
    (status, stdout)
}

#[test]
fn bench_reports_the_summary_line_with_a_baseline() {
    if !common::privileged("bench_reports_the_summary_line_with_a_baseline") {
        return;
    }
    let _quiet = QUIET.blocking_read();
    let (status, stdout) = bench(&["--requests", "50", "--concurrency", "4", "--baseline"]);
    assert!(status.success(), "{status}: {stdout}");

    let last = stdout.lines().last().expect("a last line");
    let values = parse_summary(last);
    let value = |key: &str| values.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    assert_eq!(value("errors"), Some(0.0), "{last}");
    let (p50, p90, p99) = (value("p50_ms"), value("p90_ms"), value("p99_ms"));
    assert!(p50 > Some(0.0) && p50 <= p90 && p90 <= p99, "{last}");
    assert!(value("rps") > Some(0.0), "{last}");
    assert!(value("baseline_p50_ms") > Some(0.0), "{last}");
    assert!(value("ratio") > Some(0.0), "{last}");
    assert!(
        stdout.contains("server phases, mean ms: queue"),
        "per-phase means: {stdout}"
    );
    assert!(
        stdout.contains("round trip p50 ms: warm "),
        "warm and cold medians: {stdout}"
    );
}

#[test]
fn bench_measures_cells_beside_runs_in_session_mode() {
    if !common::privileged("bench_measures_cells_beside_runs_in_session_mode") {
        return;
    }
    let _quiet = QUIET.blocking_read();
    let (status, stdout) = bench(&["--session", "--requests", "40", "--concurrency", "2"]);
    assert!(status.success(), "{status}: {stdout}");
    assert!(
        stdout.contains("one cell of its own live session in flight"),
        "{stdout}"
    );
    for line in [
        "fork per run, same load: round trip ms p50 ",
        "session open ms: p50 ",
        "first streamed byte, ms after the child wrote it: p50 ",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(
        stdout.contains("(n=10)"),
        "every first-byte probe answered: {stdout}"
    );
    let last = stdout.lines().last().expect("a last line");
    assert!(last.ends_with("errors=0"), "{last}");
}

#[test]
fn bench_paces_an_open_loop_at_the_given_rate() {
    if !common::privileged("bench_paces_an_open_loop_at_the_given_rate") {
        return;
    }
    let _quiet = QUIET.blocking_read();
    // 20 runs at 40/s: the last is due 0.475 s after the start, so the load phase cannot be
    // shorter than that, and the measured rate cannot exceed the asked one by much.
    let started = Instant::now();
    let (status, stdout) = bench(&["--requests", "20", "--concurrency", "2", "--rate", "40"]);
    assert!(status.success(), "{status}: {stdout}");
    assert!(started.elapsed() >= Duration::from_millis(475));
    let last = stdout.lines().last().expect("a last line");
    let rps: f64 = last
        .split(' ')
        .find_map(|f| f.strip_prefix("rps="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("rps in {last:?}"));
    assert!(
        rps > 0.0 && rps <= 42.2,
        "paced at 40/s, measured {rps}: {last}"
    );
    assert!(last.ends_with("errors=0"), "{last}");
}

#[test]
fn bench_refuses_a_rate_that_is_not_positive() {
    for rate in ["0", "-5", "nan", "fast"] {
        let output = Command::new(env!("CARGO_BIN_EXE_sandfork"))
            .args([
                "bench",
                "--socket",
                "/nonexistent.sock",
                &format!("--rate={rate}"),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run sandfork bench");
        assert_eq!(output.status.code(), Some(2), "--rate {rate}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is not a rate"), "--rate {rate}: {stderr}");
    }
}

/// The summary line's fields, checked to be exactly `keys` in that order.
fn fields_named(stdout: &str, keys: &[&str]) -> Vec<(String, f64)> {
    let last = fields(stdout.lines().last().expect("a last line"));
    let names: Vec<&str> = last.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, keys, "{stdout}");
    last
}

/// The `key=value` fields of a summary line, in order.
fn fields(line: &str) -> Vec<(String, f64)> {
    line.split(' ')
        .map(|field| {
            let (name, value) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("{field:?} in {line:?}"));
            let number = value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{name} in {line:?}"));
            (name.to_string(), number)
        })
        .collect()
}

#[test]
fn bench_over_http_reports_the_shim_overhead_and_its_cpu() {
    if !common::privileged("bench_over_http_reports_the_shim_overhead_and_its_cpu") {
        return;
    }
    let _quiet = QUIET.blocking_read();
    const KEY: &str = "bench-http-key";
    let stack = common::http::Stack::start("sandfork-bench-http-", &[("bencher", KEY, "")]);
    let socket = stack.socket.display().to_string();
    let http = ["--url", stack.base.as_str(), "--api-key", KEY];

    // Keep-alive, with the socket in the same invocation: the summary line is today's, then the
    // socket's p50, the difference, and the shim's CPU per run.
    let mut args = vec![
        "--socket",
        socket.as_str(),
        "--requests",
        "30",
        "--concurrency",
        "2",
    ];
    args.extend(http);
    let (status, stdout) = bench_command(&args);
    assert!(status.success(), "{status}: {stdout}");
    assert!(
        stdout.contains("one kept-alive HTTP/1.1 connection per worker"),
        "{stdout}"
    );
    let last = fields_named(
        &stdout,
        &[
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "rps",
            "errors",
            "socket_p50_ms",
            "http_overhead_p50_ms",
            "shim_cpu_per_run_ms",
        ],
    );
    let value = |key: &str| {
        last.iter()
            .find(|(k, _)| k == key)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    assert_eq!(value("errors"), 0.0);
    assert!(value("socket_p50_ms") > 0.0);
    assert!(
        (value("http_overhead_p50_ms") - (value("p50_ms") - value("socket_p50_ms"))).abs() < 0.002
    );
    assert!(
        value("shim_cpu_per_run_ms") > 0.0,
        "the shim spends CPU on each run"
    );

    // A connection per run, HTTP only.
    let mut args = vec!["--new-connection", "--requests", "10"];
    args.extend(http);
    let (status, stdout) = bench_command(&args);
    assert!(status.success(), "{status}: {stdout}");
    assert!(stdout.contains("a new TCP connection per run"), "{stdout}");
    let last = stdout.lines().last().expect("a last line");
    assert!(
        last.contains("errors=0 shim_cpu_per_run_ms=") && !last.contains("socket_p50_ms"),
        "{last}"
    );

    // A key the shim does not know: every run fails, and the bench says why.
    let (status, stdout) = bench_command(&[
        "--url",
        stack.base.as_str(),
        "--api-key",
        "not-a-key",
        "--requests",
        "3",
    ]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().last().unwrap_or("").contains("errors=3"),
        "{stdout}"
    );
}

#[test]
fn bench_measures_the_floor_and_cpu_per_run_in_the_same_invocation() {
    if !common::privileged("bench_measures_the_floor_and_cpu_per_run_in_the_same_invocation") {
        return;
    }
    let _quiet = QUIET.blocking_write();
    let (status, stdout) = bench(&["--requests", "40", "--concurrency", "2", "--floor"]);
    assert!(status.success(), "{status}: {stdout}");
    assert!(
        stdout.contains("floor (the zygote forks a child that exits at once, same channels)"),
        "{stdout}"
    );
    let last = fields_named(
        &stdout,
        &[
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "rps",
            "errors",
            "floor_p50_ms",
            "cpu_per_run_ms",
            "floor_cpu_ms",
        ],
    );
    let value = |key: &str| {
        last.iter()
            .find(|(k, _)| k == key)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    assert_eq!(value("errors"), 0.0);
    for key in ["floor_p50_ms", "cpu_per_run_ms", "floor_cpu_ms"] {
        assert!(value(key) > 0.0, "{key} measured: {last:?}");
    }
}

/// A floor run over the protocol: `ok`, its spawn-to-reap time and the child's CPU; code is
/// refused with it.
#[tokio::test]
async fn a_floor_run_forks_a_child_that_runs_nothing() {
    if !common::privileged("a_floor_run_forks_a_child_that_runs_nothing") {
        return;
    }
    let _quiet = QUIET.read().await;
    use sandfork_protocol::client::{Client, ClientError};
    use sandfork_protocol::{ErrorKind, Mode, RunSpec, Status};
    let mut client = Client::connect(&common::daemon().socket).await.unwrap();
    let floor = RunSpec {
        mode: Mode::Floor,
        ..RunSpec::default()
    };
    let result = client.run(floor.clone()).await.unwrap();
    assert_eq!(result.status, Status::Ok, "{:?}", result.message);
    assert_eq!(result.exit_code, Some(0));
    assert!(result.stdout.is_empty() && result.stderr.is_empty());
    assert!(result.timings.run_ms > 0.0 && result.timings.run_ms >= result.timings.spawn_ms);
    let with_code = RunSpec {
        code: b"print('escaped')".to_vec(),
        ..floor
    };
    match client.run(with_code).await {
        Err(ClientError::Server(frame)) => assert_eq!(frame.kind, ErrorKind::InvalidRequest),
        other => panic!("a floor run with code: {other:?}"),
    }
}
