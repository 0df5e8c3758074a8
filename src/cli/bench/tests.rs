//! Unit tests of `src/cli/bench.rs`.

use super::*;

/// A histogram holding `values` (µs).
fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
    let mut h = latency_histogram();
    for v in values {
        h.record(v).unwrap();
    }
    h
}

fn ok(stdout: &[u8]) -> RunResult {
    let mut result = RunResult::new(Status::Ok);
    result.exit_code = Some(0);
    result.stdout = stdout.to_vec();
    result
}

fn sample(outcome: Result<RunResult, ClientError>) -> Sample {
    Sample {
        latency: Duration::from_micros(1500),
        outcome: outcome.map_err(|err| err.to_string()),
    }
}

#[test]
fn summary_line_has_the_exact_format() {
    let summary = Summary {
        p50_ms: 2.0,
        p90_ms: 3.25,
        p99_ms: 10.0,
        rps: 123.4567,
        errors: 0,
        baseline_p50_ms: None,
        socket_p50_ms: None,
        shim_cpu_per_run_ms: None,
        floor: None,
    };
    assert_eq!(
        summary.to_string(),
        "p50_ms=2.000 p90_ms=3.250 p99_ms=10.000 rps=123.457 errors=0"
    );
    assert_eq!(summary.ratio(), None);
    let with_baseline = Summary {
        baseline_p50_ms: Some(17.0),
        errors: 3,
        ..summary
    };
    assert_eq!(with_baseline.ratio(), Some(8.5));
    assert_eq!(
        with_baseline.to_string(),
        "p50_ms=2.000 p90_ms=3.250 p99_ms=10.000 rps=123.457 errors=3 \
         baseline_p50_ms=17.000 ratio=8.500"
    );
}

#[test]
fn percentiles_rps_and_ratio_from_histograms() {
    // 1000 round trips of 1..=1000 µs in 2 s; the baseline's interpreters take 2 ms. (A
    // 3-digit histogram holds every µs exactly below 2048 µs; above, it reports the highest
    // value of a 0.1 % bucket.)
    let latency = histogram(1..=1000);
    let baseline = histogram([2000; 10]);
    let summary = Summary::new(&latency, 1000, Duration::from_secs(2), 0, Some(&baseline));
    assert_eq!(summary.p50_ms, 0.5);
    assert_eq!(summary.p90_ms, 0.9);
    assert_eq!(summary.p99_ms, 0.99);
    assert_eq!(summary.rps, 500.0);
    assert_eq!(summary.baseline_p50_ms, Some(2.0));
    assert_eq!(summary.ratio(), Some(4.0));
    assert_eq!(
        summary.to_string(),
        "p50_ms=0.500 p90_ms=0.900 p99_ms=0.990 rps=500.000 errors=0 \
         baseline_p50_ms=2.000 ratio=4.000"
    );
}

#[test]
fn large_latencies_keep_three_significant_digits() {
    // 40 ms … 60 ms: above 2 ms the histogram's buckets are 0.1 % wide.
    let latency = histogram((40_000..=60_000).step_by(100));
    let p50 = percentile_ms(&latency, 0.5);
    assert!((p50 - 50.0).abs() / 50.0 < 0.001, "p50 {p50}");
}

#[test]
fn nothing_recorded_gives_zeros_not_nan() {
    let empty = latency_histogram();
    let summary = Summary::new(&empty, 0, Duration::ZERO, 7, Some(&histogram([1900])));
    assert_eq!(
        summary.to_string(),
        "p50_ms=0.000 p90_ms=0.000 p99_ms=0.000 rps=0.000 errors=7 \
         baseline_p50_ms=1.900 ratio=0.000"
    );
}

#[test]
fn clamps_instead_of_failing() {
    let mut h = latency_histogram();
    record(&mut h, Duration::ZERO);
    record(&mut h, Duration::from_secs(7200));
    assert_eq!(h.len(), 2);
    assert_eq!(h.min(), 1);
}

#[test]
fn first_ok_result_sets_the_expected_stdout() {
    let mut tally = Tally::new(None);
    tally.add(sample(Ok(ok(b"1\n"))));
    tally.add(sample(Ok(ok(b"1\n"))));
    tally.add(sample(Ok(ok(b"2\n"))));
    let mut failed = RunResult::new(Status::Timeout).with_message("wall clock");
    failed.timings.spawn_ms = 4.0;
    tally.add(sample(Ok(failed)));
    tally.add(sample(Err(ClientError::Closed)));
    let report = tally.into_report(6, 2, Duration::from_secs(1), false);
    assert_eq!(report.results, 4);
    assert_eq!(report.good, 2);
    // 4 bad (differing stdout, timeout, closed connection, one never answered).
    assert_eq!(report.errors(), 4);
    assert_eq!(report.latency.len(), 4);
    assert_eq!(report.phases.spawn_ms, 1.0);
    assert_eq!(report.error_examples.len(), 3);
    assert!(report.error_examples[0].contains("stdout differs"));
    assert!(report.error_examples[1].contains("status timeout: wall clock"));
    assert_eq!(report.summary().errors, 4);
}

#[test]
fn the_baseline_stdout_wins_and_its_failures_count() {
    let mut tally = Tally::new(Some(b"1\n".to_vec()));
    tally.add(sample(Ok(ok(b"one\n"))));
    tally.add(sample(Ok(ok(b"1\n"))));
    let baseline = Baseline {
        python: PathBuf::from("/usr/bin/python3"),
        runs: 2,
        failures: 1,
        latency: histogram([1_200]),
        stdout: Some(b"1\n".to_vec()),
        error_examples: vec!["baseline: exit status: 1".into()],
    };
    let mut report = tally.into_report(2, 1, Duration::from_secs(1), false);
    report.baseline = Some(baseline);
    assert_eq!(report.good, 1);
    assert_eq!(report.errors(), 2);
    assert_eq!(report.error_examples().count(), 2);
    let line = report.summary().to_string();
    // Both daemon runs took 1.5 ms.
    assert!(
        line.ends_with("errors=2 baseline_p50_ms=1.200 ratio=0.800"),
        "{line}"
    );
}

#[test]
fn quote_escapes_and_shortens() {
    assert_eq!(quote(b"1\n"), "\"1\\n\"");
    assert!(quote(&[b'x'; 100]).ends_with("\"…"));
}

#[test]
fn http_fields_extend_the_summary_line_after_the_baseline() {
    let summary = Summary {
        p50_ms: 2.5,
        p90_ms: 3.0,
        p99_ms: 4.0,
        rps: 100.0,
        errors: 0,
        baseline_p50_ms: None,
        socket_p50_ms: Some(2.25),
        shim_cpu_per_run_ms: Some(0.4567),
        floor: None,
    };
    assert_eq!(
        summary.to_string(),
        "p50_ms=2.500 p90_ms=3.000 p99_ms=4.000 rps=100.000 errors=0 socket_p50_ms=2.250 \
         http_overhead_p50_ms=0.250 shim_cpu_per_run_ms=0.457"
    );
    let with_floor = Summary {
        floor: Some(report::FloorFigures {
            floor_p50_ms: 1.25,
            cpu_per_run_ms: 4.0,
            floor_cpu_ms: f64::NAN,
        }),
        ..summary
    };
    assert!(
        with_floor.to_string().ends_with(
            "shim_cpu_per_run_ms=0.457 floor_p50_ms=1.250 cpu_per_run_ms=4.000 floor_cpu_ms=NaN"
        ),
        "{with_floor}"
    );
}

#[test]
fn an_http_answer_becomes_a_run_result_and_the_shim_cpu_is_read_from_metrics() {
    let answer = serde_json::json!({
        "status": "ok", "exit_code": 0, "stdout": "1\n", "stderr": "", "warm": true,
        "timings": {"queue_ms": 0.1, "spawn_ms": 0.2, "run_ms": 1.5, "total_ms": 1.8},
        "usage": {"wall_ms": 1.5, "cpu_ms": 0.9, "max_rss_kb": 1024}, "message": null,
    });
    let result = super::http::run_result(&answer).unwrap();
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.stdout, b"1\n");
    assert!(result.warm);
    assert_eq!(result.timings.total_ms, 1.8);
    assert_eq!(result.usage.max_rss_kb, 1024);
    assert!(super::http::run_result(&serde_json::json!({"status": "bogus"})).is_err());
    let page = "# HELP sandfork_http_cpu_seconds CPU\n# TYPE sandfork_http_cpu_seconds gauge\n\
                sandfork_http_cpu_seconds 12.5\n# EOF\n";
    assert_eq!(super::http::cpu_seconds_in(page), Some(12.5));
    assert_eq!(super::http::cpu_seconds_in("# EOF\n"), None);
}

#[test]
fn the_busy_ticks_of_proc_stat_are_user_nice_system_irq_and_softirq() {
    // cpu user nice system idle iowait irq softirq steal guest guest_nice
    let text = "cpu  100 2 30 9000 50 4 5 700 0 0\ncpu0 50 1 15 4500 25 2 2 350 0 0\n";
    assert_eq!(super::floor::busy_ticks(text), Some(141));
    assert_eq!(super::floor::busy_ticks("cpu0 1 2 3 4 5 6 7\n"), None);
    assert_eq!(super::floor::busy_ticks("cpu  1 2 3\n"), None);
    assert_eq!(super::floor::busy_ticks("cpu  1 2 x 4 5 6 7\n"), None);
    // This machine's own counters read, and only grow.
    let first = super::floor::Snapshot::take().expect("/proc/stat and getrusage");
    let spin = std::time::Instant::now();
    while spin.elapsed() < std::time::Duration::from_millis(30) {
        std::hint::black_box(spin.elapsed());
    }
    let second = super::floor::Snapshot::take().expect("/proc/stat and getrusage");
    // The 30 ms this thread spun are its own, not the machine's "other" work; whatever else
    // ran meanwhile is at least not negative beyond the tick's rounding (10 ms at 100 Hz, twice).
    assert!(first.cpu_until(&second, 0.0) > -25.0);
}

#[test]
fn a_background_that_moved_by_half_or_30_ms_per_s_is_a_changed_one() {
    use super::floor::background_changed;
    // /proc/stat's 10 ms ticks: 0, 10 and 20 ms/s are one quiet machine.
    assert!(!background_changed(0.0, 19.7), "within 30 ms/s");
    assert!(!background_changed(19.7, 0.0));
    assert!(background_changed(0.0, 40.0));
    assert!(!background_changed(100.0, 60.0), "within half");
    assert!(background_changed(100.0, 40.0));
    assert!(background_changed(40.0, 100.0));
}
