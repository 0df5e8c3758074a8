//! What a caller can put into the daemon's records: metric labels come only from the config, and
//! an audit record says "no exit code" by leaving the field out (issue 13, defects 3 and 6).

mod common;

use common::{privileged, read_log, start_private_daemon, test_config, Daemon};
use sandfork_protocol::client::Client;
use sandfork_protocol::{RejectKind, Request, Response, RunResult, RunSpec, Status};

fn daemon() -> &'static Daemon {
    static DAEMON: std::sync::OnceLock<Daemon> = std::sync::OnceLock::new();
    DAEMON.get_or_init(|| start_private_daemon("sandfork-audit-", |dir| test_config(dir, "")))
}

async fn run(spec: RunSpec) -> RunResult {
    let mut client = Client::connect(&daemon().socket).await.expect("connect");
    client.run(spec).await.expect("run")
}

async fn metrics() -> String {
    let mut client = Client::connect(&daemon().socket).await.expect("connect");
    let id = client.next_id();
    client.send(&Request::Metrics { id }).await.expect("send");
    match client.recv().await.expect("recv") {
        Response::Metrics { text, .. } => text,
        other => panic!("{other:?}"),
    }
}

/// The audit records whose request id is `id`.
fn records(id: &str) -> Vec<String> {
    read_log(&daemon().log)
        .lines()
        .filter(|l| l.contains("sandfork::audit") && l.contains(id))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn profile_names_a_caller_makes_up_create_no_metric_series() {
    if !privileged("profile_names_a_caller_makes_up_create_no_metric_series") {
        return;
    }
    let reject = |n: usize| async move {
        let made_up = format!("made-up-profile-{n}-{}", std::process::id());
        let result = run(RunSpec {
            profile: Some(made_up),
            ..common::spec("print(1)")
        })
        .await;
        assert_eq!(result.status, Status::Rejected);
        assert_eq!(
            result.rejection.map(|r| r.kind),
            Some(RejectKind::UnknownProfile)
        );
    };
    for n in 0..5 {
        reject(n).await;
    }
    let after_five = metrics().await.lines().count();
    for n in 5..30 {
        reject(n).await;
    }
    let text = metrics().await;
    assert!(
        !text.contains("made-up-profile"),
        "a caller's profile name became a label:\n{text}"
    );
    assert!(
        text.contains("profile=\"(unknown)\",status=\"rejected\""),
        "the rejections are still counted:\n{text}"
    );
    // 25 more names, not one more series.
    assert_eq!(text.lines().count(), after_five, "{text}");
}

#[tokio::test]
async fn an_audit_record_leaves_out_what_a_run_does_not_have() {
    if !privileged("an_audit_record_leaves_out_what_a_run_does_not_have") {
        return;
    }
    let tag = format!("audit-{}", std::process::id());
    // Rejected: no exit code, no signal; the rejection kind has a field of its own.
    let rejected = run(RunSpec {
        profile: Some("no-such-profile".into()),
        request_id: Some(format!("{tag}-rejected")),
        ..common::spec("print(1)")
    })
    .await;
    assert_eq!(rejected.status, Status::Rejected);
    // Timed out: killed by a signal, so no exit code.
    let timeout = run(RunSpec {
        request_id: Some(format!("{tag}-timeout")),
        limits: sandfork_protocol::LimitsRequest {
            timeout_ms: Some(300),
            ..Default::default()
        },
        ..common::spec("while True: pass")
    })
    .await;
    assert_eq!(timeout.status, Status::Timeout);
    // Exited: the code is there.
    let exited = run(RunSpec {
        request_id: Some(format!("{tag}-exited")),
        ..common::spec("raise SystemExit(3)")
    })
    .await;
    assert_eq!(exited.exit_code, Some(3));

    let one = |id: &str| {
        let lines = records(id);
        assert_eq!(lines.len(), 1, "one record for {id}: {lines:?}");
        lines[0].clone()
    };
    for id in ["rejected", "timeout", "exited"] {
        let record = one(&format!("{tag}-{id}"));
        assert!(!record.contains("exit_code=-1"), "{record}");
        assert!(!record.contains("signal=0"), "{record}");
    }
    let record = one(&format!("{tag}-rejected"));
    assert!(
        record.contains("rejection=") && record.contains("unknown_profile"),
        "{record}"
    );
    assert!(!record.contains("exit_code="), "{record}");
    assert!(record.contains("requested_profile="), "{record}");
    let record = one(&format!("{tag}-timeout"));
    assert!(!record.contains("exit_code="), "{record}");
    assert!(record.contains("signal=9"), "{record}");
    assert!(!record.contains("rejection="), "{record}");
    let record = one(&format!("{tag}-exited"));
    assert!(record.contains("exit_code=3"), "{record}");
}
