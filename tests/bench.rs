//! `sandfork bench` end to end: the built CLI against this binary's daemon, with the baseline.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The CLI's own deadline; the test kills it (by pid) a little after that.
const BENCH_DEADLINE_S: u64 = 40;

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
    let daemon = common::daemon();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .arg("bench")
        .arg("--socket")
        .arg(&daemon.socket)
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
