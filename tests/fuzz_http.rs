//! The HTTP API fuzzed from its own OpenAPI document with schemathesis (from PyPI, through
//! scripts/tools-venv), for a bounded time against a live daemon and shim: no answer is a 5xx,
//! and every answer — status, content type, headers, body, each server-sent event — matches the
//! document; requests without a key get 401; then the daemon still serves runs.
//!
//! Left out: schemathesis's `positive_data_acceptance` (every schema-valid request must get a
//! 2xx). Some requests the document cannot tell apart are refused by design: the seed API's
//! `/execute` answers 400 when a valid script fails, and profiles, limit ceilings, base64, file
//! paths and `args` naming a file are checked against the config and each other, which a JSON
//! Schema does not express. Those refusals are 400s with the error shape the document gives.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::http::{post, Stack};
use serde_json::json;

const KEY: &str = "sk-fuzz-test-key";

/// Seconds of fuzzing (all phases together); SANDFORK_FUZZ_SECONDS overrides.
const DEFAULT_SECONDS: u64 = 120;

#[test]
fn the_http_api_survives_fuzzing_and_matches_its_document() {
    let test = "the_http_api_survives_fuzzing_and_matches_its_document";
    if !common::privileged(test) {
        return;
    }
    let Some(python) = common::tools_python(test) else {
        return;
    };
    let seconds: u64 = std::env::var("SANDFORK_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    // The tenant may hold fewer sessions than the profile: the fuzzer opens many and closes few,
    // and meets the tenant's quota (429) before the machine's capacity (503, a 5xx by design).
    let stack = Stack::start("sandfork-fuzz-", &[("acme", KEY, "max_sessions = 2")]);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 1_000_000;
    let reports = stack.socket.parent().unwrap().join("schemathesis");
    println!(
        "schemathesis against {} for {seconds} s, seed {seed} (SANDFORK_FUZZ_SECONDS)",
        stack.base
    );
    let output = Command::new("timeout")
        .arg("--kill-after=10")
        .arg((seconds + 120).to_string())
        .arg(python.parent().unwrap().join("st"))
        .args(["run", &format!("{}/openapi.json", stack.base)])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args(["--max-examples", "25", "--max-time", &seconds.to_string()])
        .args([
            "--request-timeout",
            "30",
            "--seed",
            &seed.to_string(),
            "--no-color",
        ])
        // Nothing kept between runs (no example database in the tree).
        .args(["--generation-database", "none"])
        .arg("--report-dir")
        .arg(&reports)
        .output()
        .expect("schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found failures (seed {seed}; reproduce with --seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation of the document was tested ("Selected: N/N" and "Tested: N").
    let count = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.split('/').next().unwrap_or("").trim().to_string())
    };
    let selected = count("Selected:").expect("schemathesis names the operations it selected");
    assert_eq!(
        count("Tested:"),
        Some(selected.clone()),
        "not every operation was tested:\n{report}"
    );
    assert!(
        report.contains(&format!("Selected: {selected}/{selected}")),
        "{report}"
    );
    // Still serving, and nothing panicked.
    let runtime = common::runtime();
    let answer = runtime.block_on(post(
        &stack.base,
        "/v1/execute",
        Some(KEY),
        json!({"code": "print(6 * 7)"}),
    ));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["stdout"], "42\n");
    let log = common::read_log(&stack.daemon_log);
    assert!(!log.contains("panicked"), "{log}");
}
