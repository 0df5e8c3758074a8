//! Streaming and sessions through the HTTP shim, end to end: a real `sandforkd` (root) and
//! `sandfork-http` as nobody, driven by a real HTTP client. The endpoints exactly as the README
//! spells them, server-sent events as they arrive, other tenants kept out, a client that goes
//! away stopping its run, and the session counts in /readyz and /metrics.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::http::{client, post, send, sse_events, Answer, Stack};
use common::{privileged, read_log};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ALPHA_KEY: &str = "sf_test_sessions_alpha_0123";
const BETA_KEY: &str = "sf_test_sessions_beta_0123";
/// Tenant "lonely": one session at a time.
const LONELY_KEY: &str = "sf_test_sessions_lonely_0123";
/// Tenant "narrow": one run (or running cell) at a time.
const NARROW_KEY: &str = "sf_test_sessions_narrow_0123";

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        Stack::start(
            "sandfork-http-sessions-",
            &[
                ("alpha", ALPHA_KEY, ""),
                ("beta", BETA_KEY, ""),
                ("lonely", LONELY_KEY, "max_sessions = 1"),
                ("narrow", NARROW_KEY, "max_concurrent = 1"),
            ],
        )
    })
}

fn url(path: &str) -> String {
    format!("{}{path}", stack().base)
}

async fn get(path: &str, key: &str) -> Answer {
    send(client().get(url(path)).bearer_auth(key)).await
}

async fn delete(path: &str, key: &str) -> Answer {
    send(client().delete(url(path)).bearer_auth(key)).await
}

async fn open(key: &str, body: Value) -> String {
    let answer = post(&stack().base, "/v1/sessions", Some(key), body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["session_id"].as_str().unwrap().to_string()
}

async fn cell(key: &str, id: &str, body: Value) -> Answer {
    post(
        &stack().base,
        &format!("/v1/sessions/{id}/execute"),
        Some(key),
        body,
    )
    .await
}

#[tokio::test]
async fn execute_streams_server_sent_events_as_the_program_writes() {
    if !privileged("execute_streams_server_sent_events_as_the_program_writes") {
        return;
    }
    let started = Instant::now();
    let response = client()
        .post(url("/v1/execute"))
        .bearer_auth(ALPHA_KEY)
        .json(&json!({
            "code": "import sys, time\nprint('héllo', flush=True)\nsys.stdout.buffer.write(b'\\xff\\n'); sys.stdout.flush()\ntime.sleep(0.5)\nprint('bye', file=sys.stderr)",
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut response = response;
    let first = response.chunk().await.unwrap().expect("a first event");
    let first_at = started.elapsed();
    let mut body = first.to_vec();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    assert!(
        total - first_at >= Duration::from_millis(400),
        "not streamed: first {first_at:?}, end {total:?}"
    );
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"result"), "{names:?}");
    let stdout: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "héllo\n\u{fffd}\n");
    let stderr: String = events
        .iter()
        .filter(|(n, _)| n == "stderr")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(stderr, "bye\n");
    let result = &events.last().unwrap().1;
    assert_eq!(result["status"], "ok");
    assert_eq!(result["stdout"], "", "streamed output is not repeated");
    assert_eq!(result["stdout_streamed"], 9);
    assert_eq!(result["stderr_streamed"], 4);
    assert!(result["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));

    // The Accept header asks for the same; a refusal is still an HTTP error.
    let answer = send(
        client()
            .post(url("/v1/execute"))
            .bearer_auth(ALPHA_KEY)
            .header("accept", "text/event-stream")
            .json(&json!({"code": "print(2)"})),
    )
    .await;
    let events = sse_events(&answer.bytes);
    assert_eq!(events[0], ("stdout".to_string(), json!({"text": "2\n"})));
    let answer = post(
        &stack().base,
        "/v1/execute",
        Some(ALPHA_KEY),
        json!({"code": "print(1)", "stream": true, "profile": "gpu"}),
    )
    .await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::BAD_REQUEST, "unknown_profile")
    );
}

#[tokio::test]
async fn a_streaming_client_that_goes_away_stops_its_run() {
    if !privileged("a_streaming_client_that_goes_away_stops_its_run") {
        return;
    }
    let request_id = format!("gone-{}", std::process::id());
    let mut response = client()
        .post(url("/v1/execute"))
        .bearer_auth(ALPHA_KEY)
        .header("x-request-id", &request_id)
        .json(&json!({"code": "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)", "stream": true}))
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = read_log(&stack().daemon_log);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(&request_id) && l.contains("run"))
        {
            assert!(
                line.contains("status=\"killed\"") || line.contains("status=killed"),
                "{line}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the run was not stopped:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sessions_work_exactly_as_spelled() {
    if !privileged("sessions_work_exactly_as_spelled") {
        return;
    }
    let answer = post(
        &stack().base,
        "/v1/sessions",
        Some(ALPHA_KEY),
        json!({"idle_timeout_s": 120}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    for key in ["session_id", "profile", "expires_at"] {
        assert!(answer.body.get(key).is_some(), "{key}: {}", answer.body);
    }
    assert_eq!(answer.body["profile"], "default");
    assert_eq!(answer.body["idle_timeout_s"], 120);
    assert!(answer.body["expires_at"].as_str().unwrap().ends_with('Z'));
    let id = answer.body["session_id"].as_str().unwrap().to_string();

    let answer = cell(ALPHA_KEY, &id, json!({"code": "x = 20\nprint('set')"})).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        (answer.body["status"].clone(), answer.body["stdout"].clone()),
        (json!("ok"), json!("set\n"))
    );
    assert!(answer.body["value"].is_null());
    let answer = cell(
        ALPHA_KEY,
        &id,
        json!({"code": "x * 2 + int(input())", "stdin": "2\n"}),
    )
    .await;
    assert_eq!(answer.body["value"], "42", "{}", answer.body);
    assert_eq!(answer.body["session_ended"], false);

    // Files in, files listed and fetched.
    let answer = cell(
        ALPHA_KEY,
        &id,
        json!({
            "code": "open('out.txt', 'w').write(open('in.txt').read()[::-1])",
            "files": [{"path": "in.txt", "content_b64": "YWJj"}],
        }),
    )
    .await;
    assert_eq!(answer.body["status"], "ok", "{}", answer.body);
    let answer = get(&format!("/v1/sessions/{id}/files"), ALPHA_KEY).await;
    assert_eq!(
        answer.body,
        json!({"files": [{"path": "in.txt", "size": 3}, {"path": "out.txt", "size": 3}], "truncated": false})
    );
    let answer = get(&format!("/v1/sessions/{id}/files/out.txt"), ALPHA_KEY).await;
    assert_eq!(
        (answer.status, answer.bytes.as_slice()),
        (StatusCode::OK, b"cba".as_slice())
    );
    assert_eq!(answer.headers["content-type"], "application/octet-stream");
    let answer = get(&format!("/v1/sessions/{id}/files/nope.txt"), ALPHA_KEY).await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::NOT_FOUND, "file_not_found")
    );
    let answer = get(
        &format!("/v1/sessions/{id}/files/..%2Fetc%2Fpasswd"),
        ALPHA_KEY,
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);

    // Listed for its owner only; another tenant cannot touch it, nor tell it from nothing.
    let answer = get("/v1/sessions", ALPHA_KEY).await;
    assert!(answer.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["session_id"] == id.as_str()));
    let answer = get("/v1/sessions", BETA_KEY).await;
    assert!(answer.body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["session_id"] != id.as_str()));
    let missing = "s_00000000000000000000000000000000";
    for target in [id.as_str(), missing] {
        let answer = cell(BETA_KEY, target, json!({"code": "x"})).await;
        assert_eq!(
            (answer.status, answer.kind()),
            (StatusCode::NOT_FOUND, "session_not_found"),
            "{target}"
        );
        let answer = get(&format!("/v1/sessions/{target}/files/out.txt"), BETA_KEY).await;
        assert_eq!(
            (answer.status, answer.kind()),
            (StatusCode::NOT_FOUND, "session_not_found")
        );
        let answer = post(
            &stack().base,
            &format!("/v1/sessions/{target}/interrupt"),
            Some(BETA_KEY),
            json!({}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        let answer = delete(&format!("/v1/sessions/{target}"), BETA_KEY).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }
    let answer = cell(ALPHA_KEY, &id, json!({"code": "x"})).await;
    assert_eq!(
        answer.body["value"], "20",
        "beta's attempts changed nothing"
    );

    let answer = post(
        &stack().base,
        &format!("/v1/sessions/{id}/interrupt"),
        Some(ALPHA_KEY),
        json!({}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let answer = delete(&format!("/v1/sessions/{id}"), ALPHA_KEY).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let answer = cell(ALPHA_KEY, &id, json!({"code": "x"})).await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::NOT_FOUND, "session_ended")
    );
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("closed by its owner"));
    let answer = delete(&format!("/v1/sessions/{id}"), ALPHA_KEY).await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::NOT_FOUND, "session_ended")
    );

    let log = read_log(&stack().daemon_log);
    for event in ["session_open", "cell", "session_close"] {
        assert!(
            log.lines().any(|l| l.contains(&id) && l.contains(event)),
            "no {event} record for {id}"
        );
    }
}

#[tokio::test]
async fn a_session_cell_streams_and_an_interrupt_reaches_it() {
    if !privileged("a_session_cell_streams_and_an_interrupt_reaches_it") {
        return;
    }
    let id = open(ALPHA_KEY, json!({})).await;
    let interrupter = {
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            post(
                &stack().base,
                &format!("/v1/sessions/{id}/interrupt"),
                Some(ALPHA_KEY),
                json!({}),
            )
            .await
        })
    };
    let answer = cell(ALPHA_KEY, &id, json!({
        "code": "import time\nfor i in range(100):\n    print(i, flush=True)\n    time.sleep(0.1)",
        "stream": true,
    }))
    .await;
    assert_eq!(interrupter.await.unwrap().status, StatusCode::ACCEPTED);
    let events = sse_events(&answer.bytes);
    let (last, result) = events.last().unwrap();
    assert_eq!(last, "result");
    assert_eq!(result["status"], "error");
    let stderr: String = events
        .iter()
        .filter(|(n, _)| n == "stderr")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert!(stderr.contains("KeyboardInterrupt"), "{stderr}");
    assert!(events.iter().filter(|(n, _)| n == "stdout").count() >= 3);
    let answer = cell(ALPHA_KEY, &id, json!({"code": "i"})).await;
    assert_eq!(
        answer.body["status"], "ok",
        "the session survived: {}",
        answer.body
    );
    delete(&format!("/v1/sessions/{id}"), ALPHA_KEY).await;
}

#[tokio::test]
async fn session_bounds_are_enforced_and_visible() {
    if !privileged("session_bounds_are_enforced_and_visible") {
        return;
    }
    let id = open(LONELY_KEY, json!({})).await;
    let answer = post(&stack().base, "/v1/sessions", Some(LONELY_KEY), json!({})).await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions")
    );

    let answer = send(client().get(url("/readyz"))).await;
    let profile = &answer.body["profiles"][0];
    assert!(
        profile["sessions_live"].as_u64().unwrap() >= 1,
        "{}",
        answer.body
    );
    assert_eq!(profile["sessions_max"], 4);
    let answer = send(client().get(url("/metrics"))).await;
    let text = String::from_utf8_lossy(&answer.bytes);
    assert!(
        text.contains("sandfork_sessions_max{profile=\"default\"} 4"),
        "{text}"
    );
    assert!(text.contains("sandfork_sessions_live{profile=\"default\"}"));
    assert!(text.contains("sandfork_sessions_opened_total{tenant=\"lonely\",profile=\"default\"}"));

    delete(&format!("/v1/sessions/{id}"), LONELY_KEY).await;
    let answer = post(
        &stack().base,
        "/v1/sessions",
        Some(LONELY_KEY),
        json!({"idle_timeout_s": 999_999}),
    )
    .await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::BAD_REQUEST, "limit_above_ceiling")
    );
    let answer = post(
        &stack().base,
        "/v1/sessions",
        Some(LONELY_KEY),
        json!({"profile": "gpu"}),
    )
    .await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::BAD_REQUEST, "unknown_profile")
    );
    let answer = post(
        &stack().base,
        "/v1/sessions",
        Some(LONELY_KEY),
        json!({"limits": {"memory_mb": 999_999}}),
    )
    .await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::BAD_REQUEST, "limit_above_ceiling")
    );
    // Less memory than an interpreter needs to start: a clear refusal, not a child killed
    // while it locks down (found by fuzzing: it was a 502).
    for memory_mb in [1, 15] {
        let answer = post(
            &stack().base,
            "/v1/sessions",
            Some(LONELY_KEY),
            json!({"limits": {"memory_mb": memory_mb}}),
        )
        .await;
        assert_eq!(
            (answer.status, answer.kind()),
            (StatusCode::BAD_REQUEST, "invalid_limits"),
            "{}",
            answer.body
        );
    }
    let answer = post(&stack().base, "/v1/sessions", None, json!({})).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // An empty body opens with the defaults.
    let answer = send(client().post(url("/v1/sessions")).bearer_auth(LONELY_KEY)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let id = answer.body["session_id"].as_str().unwrap().to_string();
    delete(&format!("/v1/sessions/{id}"), LONELY_KEY).await;
}

#[tokio::test]
async fn a_running_cell_counts_against_the_tenants_concurrency() {
    if !privileged("a_running_cell_counts_against_the_tenants_concurrency") {
        return;
    }
    let id = open(NARROW_KEY, json!({})).await;
    // An idle session holds no run slot: a run goes through.
    let answer = post(
        &stack().base,
        "/v1/execute",
        Some(NARROW_KEY),
        json!({"code": "print(1)"}),
    )
    .await;
    assert_eq!(answer.body["status"], "ok", "{}", answer.body);
    let busy_cell = {
        let id = id.clone();
        tokio::spawn(async move {
            cell(
                NARROW_KEY,
                &id,
                json!({"code": "import time\ntime.sleep(1.5)"}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = post(
        &stack().base,
        "/v1/execute",
        Some(NARROW_KEY),
        json!({"code": "print(1)"}),
    )
    .await;
    assert_eq!(
        (answer.status, answer.kind()),
        (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        "{}",
        answer.body
    );
    assert_eq!(busy_cell.await.unwrap().body["status"], "ok");
    let answer = post(
        &stack().base,
        "/v1/execute",
        Some(NARROW_KEY),
        json!({"code": "print(1)"}),
    )
    .await;
    assert_eq!(
        answer.body["status"], "ok",
        "the slot came back: {}",
        answer.body
    );
    delete(&format!("/v1/sessions/{id}"), NARROW_KEY).await;
}
