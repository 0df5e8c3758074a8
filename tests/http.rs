//! The HTTP shim end to end: a real `sandforkd` (root) with declared tenants, and
//! `sandfork-http` running as uid 65534 (nobody, listed in `proxy_uids`) to prove it needs no
//! privilege, driven by a real HTTP client. Each endpoint's success path with real outputs,
//! every error code, tenant ceilings and profiles, files both ways, metrics that count the
//! runs, the audit trail in the daemon's log, the OpenAPI document, and snekbox's wire format.
//!
//! Longer than the ~500 lines we aim for, on purpose: one daemon and shim pair serves every HTTP
//! end-to-end test here; a file per endpoint would start a pair per file.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::http::{client, post, send, spawn_forever, Answer};
use common::{privileged, read_log, start_daemon_process, test_config, wait_ready};
use reqwest::StatusCode;
use sandfork::tenants::hash_key;
use serde_json::{json, Value};

/// The shim's uid: nobody, a proxy by `proxy_uids`, no tenant of its own.
const SHIM_UID: u32 = 65_534;
/// Tenant "alpha": profile `default` only, at most 2 s per run.
const ALPHA_KEY: &str = "sf_test_alpha_0123456789";
/// Tenant "beta": profile `other` only.
const BETA_KEY: &str = "sf_test_beta_0123456789";
/// Tenant "slowpoke": one request every two seconds.
const SLOWPOKE_KEY: &str = "sf_test_slowpoke_0123456789";
/// Tenant "single": one run at a time.
const SINGLE_KEY: &str = "sf_test_single_0123456789";
/// Tenant "counted": used by the metrics test alone, so its counters move only there.
const COUNTED_KEY: &str = "sf_test_counted_0123456789";
/// The shim's body cap in these tests.
const MAX_BODY: usize = 1024 * 1024;
/// The daemon's caps in these tests (`[limits]`).
const CODE_BYTES: usize = 64 * 1024;
const FILES_BYTES: usize = 256 * 1024;
const MAX_FILES: usize = 8;
/// The shim's header and body read timeouts in these tests.
const READ_TIMEOUT_MS: u64 = 1000;

struct Stack {
    /// `http://127.0.0.1:PORT` of the shim.
    base: String,
    /// The daemon's log (audit records).
    daemon_log: PathBuf,
    /// A second shim whose daemon socket does not exist.
    dead_base: OnceLock<String>,
    dir: PathBuf,
    config: PathBuf,
}

fn tenants_config() -> String {
    let tenant = |name: &str, key: &str, policy: &str| {
        format!(
            "[[tenants]]\nname = \"{name}\"\napi_key_sha256 = [\"{}\"]\n[tenants.policy]\n{policy}\n",
            hash_key(key)
        )
    };
    [
        format!("proxy_uids = [{SHIM_UID}]\n"),
        format!("[limits]\ncode_bytes = {CODE_BYTES}\nfiles_bytes = {FILES_BYTES}\nmax_files = {MAX_FILES}\n"),
        "[profiles.default]\nwarm_children = 1\n[profiles.other]\npreload = [\"json\"]\n".into(),
        tenant("alpha", ALPHA_KEY, "profiles = [\"default\"]\nmax_timeout_ms = 2000"),
        tenant("beta", BETA_KEY, "profiles = [\"other\"]"),
        tenant("slowpoke", SLOWPOKE_KEY, "rate_per_sec = 0.5\nburst = 1"),
        tenant("single", SINGLE_KEY, "max_concurrent = 1"),
        tenant("counted", COUNTED_KEY, ""),
    ]
    .join("\n")
}

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("sandfork-http-")
            .tempdir()
            .expect("tempdir")
            .keep();
        // nobody must reach the config and the socket inside.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, test_config(&dir, &tenants_config())).unwrap();
        let daemon_log = dir.join("daemon.log");
        let (config2, log2) = (config.clone(), daemon_log.clone());
        spawn_forever(move || start_daemon_process(&config2, &log2));
        wait_ready(
            &dir.join("sandfork.sock"),
            &daemon_log,
            Duration::from_secs(90),
        );
        let base = start_shim(&config, &[], &dir.join("shim.log"));
        Stack {
            base,
            daemon_log,
            dead_base: OnceLock::new(),
            dir,
            config,
        }
    })
}

/// The second shim, pointed at a socket nobody listens on.
fn dead_base() -> &'static str {
    let stack = stack();
    stack.dead_base.get_or_init(|| {
        let missing = stack.dir.join("no-daemon-here.sock");
        start_shim(
            &stack.config,
            &["--socket", missing.to_str().unwrap()],
            &stack.dir.join("dead-shim.log"),
        )
    })
}

/// Starts `sandfork-http` as nobody with these tests' caps and timeouts, and `extra` flags.
fn start_shim(config: &Path, extra: &[&str], log: &Path) -> String {
    let (body, timeout) = (MAX_BODY.to_string(), READ_TIMEOUT_MS.to_string());
    let mut args = vec![
        "--max-body-bytes",
        &body,
        "--header-read-timeout-ms",
        &timeout,
        "--body-read-timeout-ms",
        &timeout,
    ];
    args.extend(extra);
    common::http::start_shim(config, &args, log, SHIM_UID)
}

async fn execute(key: &str, body: Value) -> Answer {
    post(&stack().base, "/v1/execute", Some(key), body).await
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(text: &Value) -> Vec<u8> {
    STANDARD
        .decode(text.as_str().expect("a base64 string"))
        .expect("base64")
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn execute_runs_code_and_answers_the_cli_fields() {
    if !privileged("execute_runs_code_and_answers_the_cli_fields") {
        return;
    }
    let code = "import sys\nprint(6 * 7, sys.argv[1:], sys.stdin.read())";
    let request = client()
        .post(format!("{}/v1/execute", stack().base))
        .header("X-Request-Id", "test-execute-1")
        .bearer_auth(ALPHA_KEY)
        .json(&json!({"code": code, "args": ["a", "b"], "stdin": "in"}));
    let answer = send(request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let body = &answer.body;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["exit_code"], 0);
    assert_eq!(body["stdout"], "42 ['a', 'b'] in\n");
    assert_eq!(body["request_id"], "test-execute-1");
    assert_eq!(answer.headers["x-request-id"], "test-execute-1");
    let expected: BTreeSet<&str> = [
        "status",
        "exit_code",
        "signal",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
        "usage",
        "timings",
        "message",
        "warm",
        "request_id",
        "files",
        "files_truncated",
    ]
    .into();
    assert_eq!(keys(body), expected, "no `result` in script mode");
    assert!(
        body["warm"].is_boolean(),
        "every result says whether a warm child served it"
    );
    assert!(body["timings"]["total_ms"].as_f64().unwrap() > 0.0);
    assert!(body["usage"]["max_rss_kb"].as_u64().unwrap() > 0);

    // X-API-Key works as well; an insane request id is replaced by a fresh one.
    let request = client()
        .post(format!("{}/v1/execute", stack().base))
        .header("X-API-Key", ALPHA_KEY)
        .header("X-Request-Id", "not sane; at all")
        .json(&json!({"code": "import sys\nsys.exit(3)"}));
    let answer = send(request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "error");
    assert_eq!(answer.body["exit_code"], 3);
    let id = answer.body["request_id"].as_str().unwrap();
    assert!(id.starts_with("h-"), "{id}");
    assert_eq!(answer.headers["x-request-id"], id);
}

#[tokio::test]
async fn function_mode_returns_the_value_or_says_why() {
    if !privileged("function_mode_returns_the_value_or_says_why") {
        return;
    }
    let ok = execute(
        ALPHA_KEY,
        json!({"mode": "function", "code": "def main():\n    print('side')\n    return {'sum': 1 + 2, 'big': 2 ** 70}"}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["status"], "ok");
    assert_eq!(ok.body["result"]["sum"], 3, "a JSON value, not a string");
    assert_eq!(ok.body["stdout"], "side\n");

    let missing = execute(ALPHA_KEY, json!({"mode": "function", "code": "x = 1"})).await;
    assert_eq!(missing.status, StatusCode::OK);
    assert_eq!(missing.body["status"], "error");
    assert!(missing.body["result"].is_null());
    let stderr = missing.body["stderr"].as_str().unwrap();
    assert!(stderr.contains("must define a function main()"), "{stderr}");

    let unencodable = execute(
        ALPHA_KEY,
        json!({"mode": "function", "code": "def main():\n    return {1, 2}"}),
    )
    .await;
    assert_eq!(unencodable.body["status"], "error");
    let stderr = unencodable.body["stderr"].as_str().unwrap();
    assert!(stderr.contains("not JSON-serializable"), "{stderr}");
}

#[tokio::test]
async fn files_go_in_and_come_back_and_symlinks_are_not_followed() {
    if !privileged("files_go_in_and_come_back_and_symlinks_are_not_followed") {
        return;
    }
    let code = r#"
import csv, os
with open("data/in.csv") as f:
    total = sum(int(row["n"]) for row in csv.DictReader(f))
with open("out.txt", "w") as f:
    f.write(f"total={total}\n")
os.symlink("/etc/passwd", "passwd_link")
print("link:", os.path.islink("passwd_link"))
"#;
    let answer = execute(
        ALPHA_KEY,
        json!({"code": code, "files": [{"path": "data/in.csv", "content_b64": b64(b"n\n1\n2\n39\n")}]}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["status"], "ok", "{}", answer.body);
    assert_eq!(
        answer.body["stdout"], "link: True\n",
        "the symlink was made"
    );
    let files = answer.body["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["out.txt"],
        "unchanged inputs and symlinks are not returned"
    );
    assert_eq!(unb64(&files[0]["content_b64"]), b"total=42\n");
    assert_eq!(files[0]["size"], 9);
    assert_eq!(answer.body["files_truncated"], false);
    assert!(!answer.body.to_string().contains("root:x:0:0"));
}

#[tokio::test]
async fn bad_files_are_refused() {
    if !privileged("bad_files_are_refused") {
        return;
    }
    let file = |path: &str, content: &str| json!({"path": path, "content_b64": content});
    let cases = [
        (vec![file("in.txt", "not base64!")], 400, "invalid_files"),
        (vec![file("../escape.txt", "aGk=")], 400, "invalid_files"),
        (vec![file("/etc/evil", "aGk=")], 400, "invalid_files"),
        (
            vec![file("twice.txt", "aGk="), file("twice.txt", "aGk=")],
            400,
            "invalid_files",
        ),
        (
            (0..=MAX_FILES)
                .map(|i| file(&format!("f{i}"), "aGk="))
                .collect(),
            400,
            "invalid_files",
        ),
        (
            vec![file("big.bin", &b64(&vec![7u8; FILES_BYTES + 1]))],
            413,
            "too_large",
        ),
    ];
    for (files, status, kind) in cases {
        let answer = execute(ALPHA_KEY, json!({"code": "print(1)", "files": files})).await;
        assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
        assert_eq!(answer.kind(), kind, "{}", answer.body);
        assert!(answer.body["error"]["message"].as_str().unwrap().len() > 5);
    }
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401() {
    if !privileged("a_missing_or_wrong_key_is_401") {
        return;
    }
    for path in ["/v1/execute", "/eval", "/execute"] {
        let body = json!({"code": "print(1)", "input": "print(1)", "script": "print(1)"});
        let none = post(&stack().base, path, None, body.clone()).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(none.kind(), "unauthorized");
        assert_eq!(none.headers["www-authenticate"], "Bearer");
        let wrong = post(&stack().base, path, Some("sf_not_a_key"), body).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(wrong.kind(), "unauthorized");
    }
}

#[tokio::test]
async fn tenants_keep_to_their_ceilings_and_profiles() {
    if !privileged("tenants_keep_to_their_ceilings_and_profiles") {
        return;
    }
    let over = execute(
        ALPHA_KEY,
        json!({"code": "print(1)", "limits": {"timeout_ms": 3000}}),
    )
    .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST, "{}", over.body);
    assert_eq!(over.kind(), "limit_above_ceiling");
    let within = execute(
        ALPHA_KEY,
        json!({"code": "print(1)", "limits": {"timeout_ms": 1500}}),
    )
    .await;
    assert_eq!(within.status, StatusCode::OK, "{}", within.body);
    let zero = execute(
        ALPHA_KEY,
        json!({"code": "print(1)", "limits": {"memory_mb": 0}}),
    )
    .await;
    assert_eq!((zero.status.as_u16(), zero.kind()), (400, "invalid_limits"));

    // alpha may not use beta's profile, nor beta alpha's.
    let other = json!({"code": "print('other')", "profile": "other"});
    let forbidden = execute(ALPHA_KEY, other.clone()).await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "{}",
        forbidden.body
    );
    assert_eq!(forbidden.kind(), "profile_not_allowed");
    let allowed = execute(BETA_KEY, other).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.body);
    assert_eq!(allowed.body["stdout"], "other\n");
    let forbidden = execute(BETA_KEY, json!({"code": "print(1)"})).await;
    assert_eq!(
        forbidden.status,
        StatusCode::FORBIDDEN,
        "{}",
        forbidden.body
    );

    let unknown = execute(ALPHA_KEY, json!({"code": "print(1)", "profile": "nope"})).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.kind()),
        (400, "unknown_profile")
    );
}

#[tokio::test]
async fn malformed_requests_are_400() {
    if !privileged("malformed_requests_are_400") {
        return;
    }
    let raw = |text: &'static str| {
        client()
            .post(format!("{}/v1/execute", stack().base))
            .bearer_auth(ALPHA_KEY)
            .body(text)
    };
    for text in [
        "{not json",
        "[]",
        "{}",
        "{\"code\": 1}",
        "{\"code\": \"print(1)\", \"typo\": 1}",
    ] {
        let answer = send(raw(text)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{text}: {}",
            answer.body
        );
        assert_eq!(answer.kind(), "malformed", "{text}");
    }
    let cases = [
        (json!({"code": ""}), "invalid_code"),
        (json!({"code": "print(1)\u{0}"}), "invalid_code"),
        (
            json!({"code": "print(1)", "limits": {"timeout_ms": -1}}),
            "malformed",
        ),
        (json!({"code": "print(1)", "mode": "lambda"}), "malformed"),
    ];
    for (body, kind) in cases {
        let answer = execute(ALPHA_KEY, body.clone()).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.body
        );
        assert_eq!(answer.kind(), kind, "{body}");
    }
}

#[tokio::test]
async fn oversize_bodies_and_code_are_413() {
    if !privileged("oversize_bodies_and_code_are_413") {
        return;
    }
    let huge = format!("# {}\nprint(1)", "x".repeat(MAX_BODY));
    let answer = execute(ALPHA_KEY, json!({"code": huge})).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    assert_eq!(answer.kind(), "too_large");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("body"));

    let long = format!("# {}\nprint(1)", "x".repeat(CODE_BYTES));
    let answer = execute(ALPHA_KEY, json!({"code": long})).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    assert_eq!(answer.kind(), "too_large");
}

#[tokio::test]
async fn over_the_rate_is_429_with_retry_after() {
    if !privileged("over_the_rate_is_429_with_retry_after") {
        return;
    }
    let first = execute(SLOWPOKE_KEY, json!({"code": "print(1)"})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let second = execute(SLOWPOKE_KEY, json!({"code": "print(2)"})).await;
    assert_eq!(
        second.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        second.body
    );
    assert_eq!(second.kind(), "rate_limited");
    let retry = second.retry_after();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_concurrency_is_503_with_retry_after() {
    if !privileged("over_concurrency_is_503_with_retry_after") {
        return;
    }
    let long = tokio::spawn(execute(
        SINGLE_KEY,
        json!({"code": "import time\ntime.sleep(2)\nprint('long')"}),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = execute(SINGLE_KEY, json!({"code": "print(2)"})).await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.body
    );
    assert_eq!(second.kind(), "busy");
    assert!(second.retry_after() >= 1);
    let long = long.await.unwrap();
    assert_eq!(long.status, StatusCode::OK, "{}", long.body);
    assert_eq!(long.body["stdout"], "long\n");
}

#[tokio::test]
async fn an_unreachable_daemon_is_503() {
    if !privileged("an_unreachable_daemon_is_503") {
        return;
    }
    let base = dead_base();
    let answer = post(
        base,
        "/v1/execute",
        Some(ALPHA_KEY),
        json!({"code": "print(1)"}),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert_eq!(answer.kind(), "daemon_unavailable");
    assert!(answer.retry_after() >= 1);
    let ready = send(client().get(format!("{base}/readyz"))).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.retry_after() >= 1);
    let health = send(client().get(format!("{base}/healthz"))).await;
    assert_eq!(health.status, StatusCode::OK);
    // The key is still checked first: no key, no information.
    let anonymous = post(base, "/v1/execute", None, json!({"code": "print(1)"})).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// Sum of the `sandfork_runs_total` counters of `tenant`.
fn runs_of(metrics: &str, tenant: &str) -> u64 {
    let label = format!("tenant=\"{tenant}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("sandfork_runs_total{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

async fn scrape() -> (String, String) {
    let response = client()
        .get(format!("{}/metrics", stack().base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_exactly_the_runs_made() {
    if !privileged("metrics_count_exactly_the_runs_made") {
        return;
    }
    let (_, before) = scrape().await;
    let runs = 3;
    for i in 0..runs {
        let code = if i == 0 {
            "raise SystemExit(1)"
        } else {
            "print(1)"
        };
        let answer = execute(COUNTED_KEY, json!({"code": code})).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let (content_type, after) = scrape().await;
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(
        runs_of(&after, "counted") - runs_of(&before, "counted"),
        runs,
        "{after}"
    );
    assert!(after.contains(
        "sandfork_runs_total{tenant=\"counted\",profile=\"default\",status=\"error\"} 1"
    ));
    // The daemon's gauges and histograms, then the shim's counters; one EOF.
    for name in [
        "sandfork_slots_busy",
        "sandfork_queued_runs{",
        "sandfork_warm_children{",
        "sandfork_run_total_seconds_bucket{",
        "sandfork_http_requests_total{endpoint=\"/v1/execute\",code=\"200\"}",
        "sandfork_http_request_seconds_bucket{",
        "sandfork_http_daemon_up 1",
        "sandfork_http_cpu_seconds ",
    ] {
        assert!(after.contains(name), "no {name} in:\n{after}");
    }
    assert_eq!(after.matches("# EOF").count(), 1);
    assert!(after.ends_with("# EOF\n"));
}

#[tokio::test]
async fn every_run_is_audited_by_the_daemon_without_key_or_code() {
    if !privileged("every_run_is_audited_by_the_daemon_without_key_or_code") {
        return;
    }
    let marker = format!("CODEMARKER{}", std::process::id());
    let mut ids = Vec::new();
    for (i, path) in ["/v1/execute", "/eval", "/execute"].iter().enumerate() {
        let id = format!("audit-{}-{i}", std::process::id());
        let code = format!("def main():\n    return '{marker}'\nprint('{marker}')");
        let body = match *path {
            "/v1/execute" => json!({"code": code}),
            "/eval" => json!({"input": code}),
            _ => json!({"script": code}),
        };
        let request = client()
            .post(format!("{}{path}", stack().base))
            .header("X-Request-Id", &id)
            .header("X-API-Key", ALPHA_KEY)
            .json(&body);
        let answer = send(request).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        assert_eq!(answer.headers["x-request-id"], id.as_str());
        ids.push(id);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = read_log(&stack().daemon_log);
        let records: Vec<&str> = ids
            .iter()
            .filter_map(|id| {
                log.lines().find(|l| {
                    l.contains("sandfork::audit") && l.contains(&format!("request_id={id}"))
                })
            })
            .collect();
        if records.len() == ids.len() {
            for record in records {
                assert!(record.contains("tenant=\"alpha\""), "{record}");
                assert!(record.contains("client_addr=\"127.0.0.1:"), "{record}");
                assert!(record.contains("code_sha256="), "{record}");
                assert!(
                    !record.contains(&marker),
                    "code text in the audit record: {record}"
                );
                assert!(
                    !record.contains(ALPHA_KEY),
                    "the key in the audit record: {record}"
                );
            }
            assert!(
                !log.contains(ALPHA_KEY),
                "the key is nowhere in the daemon's log"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit records missing for {ids:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shim_log = read_log(&stack().dir.join("shim.log"));
    assert!(!shim_log.contains(ALPHA_KEY) && !shim_log.contains(&marker));
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    if !privileged("the_openapi_document_lists_every_endpoint") {
        return;
    }
    let answer = send(client().get(format!("{}/openapi.json", stack().base))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let doc = answer.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = keys(&doc["paths"]);
    for path in [
        "/v1/execute",
        "/eval",
        "/execute",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains(path), "{path} missing from {paths:?}");
    }
    let schemas = keys(&doc["components"]["schemas"]);
    for schema in [
        "ExecuteRequest",
        "RunOutput",
        "ErrorBody",
        "EvalRequest",
        "EvalResponse",
    ] {
        assert!(
            schemas.contains(schema),
            "{schema} missing from {schemas:?}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn eval_speaks_snekbox() {
    if !privileged("eval_speaks_snekbox") {
        return;
    }
    let base = &stack().base;
    // What python-discord's bot sends: {"input": code}.
    let answer = post(
        base,
        "/eval",
        Some(ALPHA_KEY),
        json!({"input": "import sys\nprint('hi')\nprint('oops', file=sys.stderr)"}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"stdout": "hi\noops\n", "returncode": 0, "files": []})
    );

    // args naming an uploaded file, with arguments; the program writes a file back.
    let main =
        "import sys\nopen('out.txt', 'w').write(' '.join(sys.argv[1:]))\nraise SystemExit(3)";
    let answer = post(
        base,
        "/eval",
        Some(ALPHA_KEY),
        json!({
            "args": ["main.py", "x", "y"],
            "files": [{"path": "main.py", "content": b64(main.as_bytes())}, {"path": "empty"}],
        }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(keys(&answer.body), ["files", "returncode", "stdout"].into());
    assert_eq!(answer.body["returncode"], 3);
    let files = answer.body["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(keys(&files[0]), ["content", "path", "size"].into());
    assert_eq!(files[0]["path"], "out.txt");
    assert_eq!(files[0]["size"], 3);
    assert_eq!(unb64(&files[0]["content"]), b"x y");

    // ["-c", code] with sys.argv, and a signal death as 128 + N.
    let answer = post(
        base,
        "/eval",
        Some(ALPHA_KEY),
        json!({"args": ["-c", "import os, signal, sys\nprint(sys.argv[1:], flush=True)\nos.kill(os.getpid(), signal.SIGTERM)", "z"]}),
    )
    .await;
    assert_eq!(answer.body["stdout"], "['z']\n", "{}", answer.body);
    assert_eq!(answer.body["returncode"], 128 + 15);

    // Neither input nor args, or a Python flag sandfork does not run: 400.
    let answer = post(base, "/eval", Some(ALPHA_KEY), json!({"files": []})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = post(
        base,
        "/eval",
        Some(ALPHA_KEY),
        json!({"args": ["-u", "-c", "print(1)"]}),
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.kind()),
        (400, "invalid_args")
    );
}

#[tokio::test]
async fn execute_speaks_the_python_sandbox_api_style() {
    if !privileged("execute_speaks_the_python_sandbox_api_style") {
        return;
    }
    let base = &stack().base;
    let answer = post(
        base,
        "/execute",
        Some(ALPHA_KEY),
        json!({"script": "def main():\n    print('working')\n    return {'name': 'mark', 'n': [1, 2]}"}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"result": {"name": "mark", "n": [1, 2]}, "stdout": "working\n"})
    );
    let cases = [
        ("x = 1", "the script must define a function main()"),
        (
            "def main():\n    return 1 / 0",
            "ZeroDivisionError: division by zero",
        ),
        ("def main():\n    return object()", "not JSON-serializable"),
    ];
    for (script, says) in cases {
        let answer = post(base, "/execute", Some(ALPHA_KEY), json!({"script": script})).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        let error = answer.body["error"]
            .as_str()
            .expect("error is a string here");
        assert!(error.contains(says), "{error}");
    }
}

#[tokio::test]
async fn health_and_readiness() {
    if !privileged("health_and_readiness") {
        return;
    }
    let health = send(client().get(format!("{}/healthz", stack().base))).await;
    assert_eq!(
        (health.status, &health.body),
        (StatusCode::OK, &json!({"status": "ok"}))
    );
    let ready = send(client().get(format!("{}/readyz", stack().base))).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["ready"], true);
    let profiles = ready.body["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2);
    assert!(profiles
        .iter()
        .all(|p| p["zygotes_ready"].as_u64() >= Some(1)));
    let missing = send(client().get(format!("{}/nope", stack().base))).await;
    assert_eq!(
        (missing.status.as_u16(), missing.kind()),
        (404, "not_found")
    );
}

#[test]
fn slow_clients_are_cut_off() {
    if !privileged("slow_clients_are_cut_off") {
        return;
    }
    let addr = stack().base.trim_start_matches("http://").to_string();
    let wait = Duration::from_millis(READ_TIMEOUT_MS + 1500);

    // Headers that never end: the connection is closed without an answer.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(wait + Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"POST /v1/execute HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    assert!(
        started.elapsed() < wait,
        "closed after {:?}",
        started.elapsed()
    );

    // A body that never arrives: 408.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(wait + Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "POST /v1/execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA_KEY}\r\nContent-Length: 100\r\n\r\n{{\"code\""
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}
