//! Identity and policy on the socket, tested with real peers of different uids (the CLI run as
//! another user) against a daemon with declared tenants: who may run, on whose behalf, within
//! which ceilings, at which rate and concurrency — and that two tenants under load both progress.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{ok_stdout, privileged, spec, test_config, Daemon};
use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{ErrorKind, RejectKind, RunResult, RunSpec, Status};

/// uid of tenant "acme" (a listed, non-proxy peer).
const ACME_UID: u32 = 65_534;
/// A uid no tenant lists.
const STRANGER_UID: u32 = 65_533;

fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| {
        common::start_private_daemon("sandfork-tenants-", |dir| {
            // Other uids must reach the socket inside.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let tenants = format!(
                r#"
[profiles.default]
warm_children = 1
[profiles.other]
warm_children = 0
preload = ["json"]

[[tenants]]
name = "acme"
uids = [{ACME_UID}]
[tenants.policy]
profiles = ["default"]
max_timeout_ms = 2000
max_concurrent = 8

[[tenants]]
name = "slowpoke"
[tenants.policy]
rate_per_sec = 0.5
burst = 1

[[tenants]]
name = "single"
[tenants.policy]
max_concurrent = 1

[[tenants]]
name = "hog"
[tenants.policy]
max_concurrent = 64

[[tenants]]
name = "meek"
[tenants.policy]
max_concurrent = 64
"#
            );
            // Two slots, so the fairness test can fill them.
            test_config(dir, &tenants).replace("slots = 8", "slots = 2")
        })
    })
}

/// `sandfork run` as another uid, code on stdin.
fn cli_as(uid: u32, extra: &[&str], code: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .arg("run")
        .arg("--socket")
        .arg(&daemon().socket)
        .args(extra)
        .arg("-")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandfork as another uid");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), code.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A run on behalf of `tenant` through the daemon's own uid (a proxy, like the HTTP shim).
async fn run_as(tenant: &str, request: RunSpec) -> Result<RunResult, ClientError> {
    let mut client = Client::connect(&daemon().socket).await?;
    client
        .run(RunSpec {
            tenant: Some(tenant.into()),
            ..request
        })
        .await
}

fn rejection(result: &RunResult) -> RejectKind {
    assert_eq!(result.status, Status::Rejected, "{:?}", result.message);
    result.rejection.as_ref().expect("a rejection kind").kind
}

#[test]
fn a_listed_uid_runs_as_its_tenant() {
    if !privileged("a_listed_uid_runs_as_its_tenant") {
        return;
    }
    let output = cli_as(ACME_UID, &[], "print('hello from acme')");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello from acme\n");
    // Its ceiling applies: 2000 ms.
    let output = cli_as(ACME_UID, &["--timeout-ms", "3000"], "print(1)");
    assert_eq!(output.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("acme"),
        "{output:?}"
    );
}

#[test]
fn an_unknown_uid_is_refused() {
    if !privileged("an_unknown_uid_is_refused") {
        return;
    }
    let output = cli_as(STRANGER_UID, &[], "print('should not run')");
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("permission"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn a_non_proxy_cannot_act_for_another_tenant() {
    if !privileged("a_non_proxy_cannot_act_for_another_tenant") {
        return;
    }
    let output = cli_as(ACME_UID, &["--tenant", "hog"], "print('should not run')");
    assert_eq!(output.status.code(), Some(125), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("permission"));
    assert!(
        common::read_log(&daemon().log).contains("permission denied"),
        "the refusal is logged"
    );
}

#[tokio::test]
async fn a_proxy_acts_for_tenants_within_their_policy() {
    if !privileged("a_proxy_acts_for_tenants_within_their_policy") {
        return;
    }
    let result = run_as("acme", spec("print('proxied')")).await.unwrap();
    assert_eq!(ok_stdout(&result), "proxied\n");
    // Ceilings are the tenant's.
    let mut request = spec("print(1)");
    request.limits.timeout_ms = Some(2001);
    let result = run_as("acme", request).await.unwrap();
    assert_eq!(rejection(&result), RejectKind::LimitAboveCeiling);
    // Profiles are the tenant's.
    let other = RunSpec {
        profile: Some("other".into()),
        ..spec("print(1)")
    };
    let result = run_as("acme", other.clone()).await.unwrap();
    assert_eq!(rejection(&result), RejectKind::ProfileNotAllowed);
    assert_eq!(ok_stdout(&run_as("hog", other).await.unwrap()), "1\n");
    // An unknown tenant name is refused outright.
    match run_as("nobody", spec("print(1)")).await {
        Err(ClientError::Server(frame)) => assert_eq!(frame.kind, ErrorKind::PermissionDenied),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn over_rate_is_refused_at_once_with_retry_after() {
    if !privileged("over_rate_is_refused_at_once_with_retry_after") {
        return;
    }
    let first = run_as("slowpoke", spec("print(1)")).await.unwrap();
    assert_eq!(ok_stdout(&first), "1\n");
    let started = Instant::now();
    let second = run_as("slowpoke", spec("print(2)")).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered at once"
    );
    assert_eq!(rejection(&second), RejectKind::RateLimited);
    let retry = second
        .rejection
        .unwrap()
        .retry_after_ms
        .expect("a retry hint");
    assert!(retry > 0 && retry <= 2000, "{retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_concurrency_is_refused_at_once_with_retry_after() {
    if !privileged("over_concurrency_is_refused_at_once_with_retry_after") {
        return;
    }
    let long = tokio::spawn(run_as(
        "single",
        spec("import time\ntime.sleep(1.5)\nprint('long')"),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let second = run_as("single", spec("print(2)")).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered at once"
    );
    assert_eq!(rejection(&second), RejectKind::Busy);
    assert!(second.rejection.unwrap().retry_after_ms.is_some());
    assert_eq!(ok_stdout(&long.await.unwrap().unwrap()), "long\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturating_tenant_does_not_starve_another() {
    if !privileged("a_saturating_tenant_does_not_starve_another") {
        return;
    }
    // Two slots. "hog" queues 16 runs of 0.2 s; then "meek" asks for 2. With round-robin grants
    // meek's runs start within a few grants; FIFO would put them behind all 16 (~1.6 s).
    let code = "import time\ntime.sleep(0.2)\nprint('done')";
    let started = Instant::now();
    let hog: Vec<_> = (0..16)
        .map(|_| tokio::spawn(run_as("hog", spec(code))))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let meek: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run_as("meek", spec(code))))
        .collect();
    let mut meek_done = Vec::new();
    for task in meek {
        let result = task.await.unwrap().unwrap();
        assert_eq!(ok_stdout(&result), "done\n");
        meek_done.push(started.elapsed());
    }
    let mut hog_done = Vec::new();
    for task in hog {
        let result = task.await.unwrap().unwrap();
        assert_eq!(ok_stdout(&result), "done\n", "every hog run completes too");
        hog_done.push(started.elapsed());
    }
    hog_done.sort();
    let last_meek = *meek_done.iter().max().unwrap();
    // Both of meek's runs finished before the hog's 12th.
    assert!(
        last_meek < hog_done[11],
        "meek finished at {last_meek:?}; hog's runs finished at {hog_done:?}"
    );
}

#[tokio::test]
async fn metrics_count_runs_by_tenant_and_audit_records_hold_no_code() {
    if !privileged("metrics_count_runs_by_tenant_and_audit_records_hold_no_code") {
        return;
    }
    let secret = format!("AUDITSECRET{}", std::process::id());
    for _ in 0..3 {
        let code = format!("x = '{secret}'\nprint(len(x))");
        let mut request = spec(&code);
        request.request_id = Some(format!("req-{secret}"));
        let result = run_as("meek", request).await.unwrap();
        assert_eq!(result.request_id, format!("req-{secret}"));
        assert_eq!(result.status, Status::Ok);
    }
    let mut client = Client::connect(&daemon().socket).await.unwrap();
    let id = client.next_id();
    client
        .send(&sandfork_protocol::Request::Metrics { id })
        .await
        .unwrap();
    let text = match client.recv().await.unwrap() {
        sandfork_protocol::Response::Metrics { text, .. } => text,
        other => panic!("{other:?}"),
    };
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("sandfork_runs_total{tenant=\"meek\",profile=\"default\",status=\"ok\"}")
        })
        .unwrap_or_else(|| panic!("no meek/ok counter in:\n{text}"));
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3, "{line}");
    // The audit trail: one record per run, with the code's hash but not its text.
    let log = common::read_log(&daemon().log);
    let records: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sandfork::audit") && l.contains(&format!("req-{secret}")))
        .collect();
    assert_eq!(records.len(), 3, "{log}");
    for record in records {
        assert!(
            record.contains("tenant=\"meek\"") || record.contains("tenant=meek"),
            "{record}"
        );
        assert!(record.contains("code_sha256="), "{record}");
        assert!(
            record.contains("status=\"ok\"") || record.contains("status=ok"),
            "{record}"
        );
        assert!(
            !record.contains(&format!("x = '{secret}'")),
            "code text leaked: {record}"
        );
    }
}
