//! The MCP server, driven by a real MCP client — the official Python SDK (`mcp` from PyPI, in
//! the venv of `scripts/clients-venv`) — over both transports: `sandfork mcp` over stdio, and
//! `POST /mcp` on `sandfork-http` (as nobody, in front of a root daemon of its own) with a
//! tenant's API key. The client (tests/mcp/client.py) initializes, lists the tools, runs code,
//! opens a session, runs two cells that share a variable, and closes it; this test checks what
//! it saw. Also: no key, a wrong key → 401 before MCP is spoken; a tool call with hostile
//! arguments is a tool error, and the server goes on.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::http::{client, Stack};
use common::{clients_python, privileged};
use reqwest::StatusCode;
use serde_json::{json, Value};

const KEY: &str = "sf_test_mcp_agent_0123456789";
const OTHER_KEY: &str = "sf_test_mcp_other_0123456789";

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        Stack::start(
            "sandfork-mcp-",
            &[("agent", KEY, ""), ("other", OTHER_KEY, "")],
        )
    })
}

/// Runs tests/mcp/client.py with `args`; returns its JSON report.
fn drive(python: &Path, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");
    let output = Command::new("timeout")
        .arg("120")
        .arg(python)
        .arg(script)
        .args(args)
        .output()
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the MCP client failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("report {stdout:?}: {e}"))
}

/// What every transport must show.
fn check(report: &Value) {
    assert_eq!(report["server"], "sandfork", "{report}");
    assert_eq!(
        report["tools"],
        json!([
            "list_profiles",
            "run_python",
            "session_close",
            "session_execute",
            "session_open"
        ])
    );
    assert_eq!(
        report["schemas"]["run_python"],
        json!(["code", "files", "profile", "stdin", "timeout_ms"])
    );
    assert_eq!(
        report["schemas"]["session_execute"],
        json!(["code", "session_id", "stdin"])
    );
    assert_eq!(
        report["described"], true,
        "every tool and argument has a description"
    );

    assert_eq!(report["run"]["error"], false, "{report}");
    assert_eq!(report["run"]["status"], "ok");
    assert_eq!(report["run"]["text"], "abab\n");
    // A failing program and a limit above the ceiling are tool errors with the reason.
    assert_eq!(report["run_error"]["error"], true);
    let text = report["run_error"]["text"].as_str().unwrap();
    assert!(
        text.contains("ZeroDivisionError") && text.contains("[status] error"),
        "{text}"
    );
    assert_eq!(report["run_limit"]["error"], true);
    assert!(
        report["run_limit"]["text"]
            .as_str()
            .unwrap()
            .contains("limit_above_ceiling"),
        "{report}"
    );

    assert_eq!(report["open"]["error"], false, "{report}");
    assert!(report["open"]["session_id"]
        .as_str()
        .unwrap()
        .starts_with("s_"));
    assert_eq!(report["cells"][0]["error"], false);
    assert_eq!(report["cells"][1]["value"], "42", "{report}");
    assert!(report["cells"][1]["text"]
        .as_str()
        .unwrap()
        .contains("twice"));
    // A failing cell is a tool error; the session goes on.
    assert_eq!(report["after_error"]["bad_error"], true);
    assert_eq!(report["after_error"]["value"], "20");
    assert_eq!(report["close"]["error"], false);
    assert_eq!(report["close"]["gone_error"], true);
    assert!(
        report["close"]["gone"]
            .as_str()
            .unwrap()
            .contains("session_ended"),
        "{report}"
    );
    assert!(report["profiles"]
        .as_array()
        .unwrap()
        .contains(&json!("default")));
}

#[test]
fn the_official_mcp_client_completes_the_flow_over_stdio() {
    const TEST: &str = "the_official_mcp_client_completes_the_flow_over_stdio";
    if !privileged(TEST) {
        return;
    }
    let Some(python) = clients_python(TEST) else {
        return;
    };
    let socket = stack().socket.to_str().unwrap().to_string();
    let report = drive(&python, &["stdio", env!("CARGO_BIN_EXE_sandfork"), &socket]);
    check(&report);
}

#[test]
fn the_official_mcp_client_completes_the_flow_over_http() {
    const TEST: &str = "the_official_mcp_client_completes_the_flow_over_http";
    if !privileged(TEST) {
        return;
    }
    let Some(python) = clients_python(TEST) else {
        return;
    };
    let url = format!("{}/mcp", stack().base);
    let report = drive(&python, &["http", &url, KEY]);
    check(&report);
}

#[test]
fn a_stdio_server_without_a_daemon_answers_with_tool_errors() {
    const TEST: &str = "a_stdio_server_without_a_daemon_answers_with_tool_errors";
    let Some(python) = clients_python(TEST) else {
        return;
    };
    let report = drive(
        &python,
        &[
            "stdio-nodaemon",
            env!("CARGO_BIN_EXE_sandfork"),
            "/nonexistent/sandfork.sock",
        ],
    );
    assert_eq!(report["error"], true, "{report}");
    assert!(
        report["text"].as_str().unwrap().contains("unavailable"),
        "{report}"
    );
}

/// The MCP endpoint is behind the API key like every other: no key or a wrong one is 401 before
/// any MCP is spoken (an `initialize` without a key gets no session).
#[tokio::test]
async fn mcp_over_http_needs_a_key() {
    if !privileged("mcp_over_http_needs_a_key") {
        return;
    }
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                   "clientInfo": {"name": "hostile", "version": "0"}}
    });
    let url = format!("{}/mcp", stack().base);
    for key in [None, Some("sf_wrong_key_0123456789")] {
        let mut request = client()
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "key {key:?}");
        assert!(response.headers().get("mcp-session-id").is_none());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["kind"], "unauthorized");
    }
    // With the key, the same request opens an MCP session.
    let response = client()
        .post(&url)
        .bearer_auth(KEY)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("mcp-session-id").is_some());
}

/// Hostile tool calls over HTTP: arguments of the wrong shape, an unknown tool, a session id of
/// another shape, a huge timeout. Each is an error the agent can read; the server goes on.
#[test]
fn hostile_tool_calls_are_errors_and_the_server_goes_on() {
    const TEST: &str = "hostile_tool_calls_are_errors_and_the_server_goes_on";
    if !privileged(TEST) {
        return;
    }
    let Some(python) = clients_python(TEST) else {
        return;
    };
    let url = format!("{}/mcp", stack().base);
    let report = drive(&python, &["hostile", &url, KEY]);
    for case in report["cases"].as_array().unwrap() {
        assert_eq!(case["refused"], true, "{case}");
    }
    assert_eq!(report["cases"].as_array().unwrap().len(), 5);
    assert_eq!(report["after"], "ok", "{report}");
}

/// Another tenant's agent knows a session's id: it can neither run in it, read it, nor close it
/// (the same `session_not_found` as for an id that never existed), and its code cannot reach
/// the shim from inside the sandbox.
#[test]
fn another_tenants_agent_cannot_use_a_session() {
    const TEST: &str = "another_tenants_agent_cannot_use_a_session";
    if !privileged(TEST) {
        return;
    }
    let Some(python) = clients_python(TEST) else {
        return;
    };
    let url = format!("{}/mcp", stack().base);
    let report = drive(&python, &["steal", &url, KEY, OTHER_KEY]);
    assert_eq!(report["read"]["error"], true, "{report}");
    assert!(
        report["read"]["text"]
            .as_str()
            .unwrap()
            .starts_with("session_not_found"),
        "{report}"
    );
    assert!(!report["read"]["text"].as_str().unwrap().contains("a-only"));
    assert_eq!(report["close"]["error"], true, "{report}");
    assert_eq!(
        report["still"], "'a-only'",
        "the owner's session survived: {report}"
    );
    assert!(
        report["reach"].as_str().unwrap().starts_with("blocked"),
        "{report}"
    );
}
