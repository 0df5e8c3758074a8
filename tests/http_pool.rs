//! The shim's pool of daemon connections, end to end (a root `sandforkd`, `sandfork-http` as
//! nobody): requests reuse greeted connections instead of opening one each; a connection never
//! carries one tenant's identity into another's request; a client that goes away still cancels
//! its run, and its connection is not reused; a daemon that restarted under the shim is reached
//! again without a failed request.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::http::{client, post, send, Answer, Stack};
use common::privileged;
use reqwest::StatusCode;
use serde_json::json;

const ALPHA_KEY: &str = "sf_test_pool_alpha_0123456789";
const BETA_KEY: &str = "sf_test_pool_beta_0123456789";

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        Stack::start_with(
            "sandfork-http-pool-",
            &[
                ("alpha", ALPHA_KEY, ""),
                ("beta", BETA_KEY, "profiles = [\"other\"]"),
            ],
            "[profiles.default]\nwarm_children = 1\n[profiles.other]\npreload = [\"json\"]\n",
        )
    })
}

/// The tests share one stack, and the restart test must not pull the daemon from under the
/// others, nor the counting tests count each other's connections: each takes this lock.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(key: &str, body: serde_json::Value) -> Answer {
    post(&stack().base, "/v1/execute", Some(key), body).await
}

/// The sum of the samples of `name` on the shim's /metrics page (the daemon's part included)
/// whose labels contain every one of `labels`; 0 when there are none.
async fn metric(name: &str, labels: &[&str]) -> f64 {
    let page = send(client().get(format!("{}/metrics", stack().base))).await;
    assert_eq!(page.status, StatusCode::OK);
    String::from_utf8_lossy(&page.bytes)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

async fn opened() -> f64 {
    metric("sandfork_http_daemon_connections_total", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_and_concurrent_requests_reuse_daemon_connections() {
    if !privileged("sequential_and_concurrent_requests_reuse_daemon_connections") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let before = opened().await;
    for i in 0..20 {
        let answer = run(ALPHA_KEY, json!({"code": format!("print({i})")})).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["stdout"], format!("{i}\n"));
    }
    let after = opened().await;
    // The scrapes and the 20 runs went over the pooled connection(s): at most one new one (a
    // connection the first scrape found closed), never one per request as before the pool.
    assert!(after - before <= 1.0, "{before} -> {after}");

    // Eight at once: at most eight connections, all of them kept for the next burst.
    let burst = || async {
        let tasks: Vec<_> = (0..8)
            .map(|i| tokio::spawn(run(ALPHA_KEY, json!({"code": format!("print({i})")}))))
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let answer = task.await.unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            assert_eq!(answer.body["stdout"], format!("{i}\n"));
        }
    };
    burst().await;
    let after_first = opened().await;
    assert!(after_first - after <= 8.0, "{after} -> {after_first}");
    burst().await;
    let after_second = opened().await;
    assert!(
        after_second - after_first <= 1.0,
        "{after_first} -> {after_second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_carries_each_request_as_its_own_tenant() {
    if !privileged("a_pooled_connection_carries_each_request_as_its_own_tenant") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let runs = |tenant: &'static str| async move {
        let tenant = format!("tenant=\"{tenant}\"");
        metric("sandfork_runs_total", &[&tenant, "status=\"ok\""]).await
    };
    let (alpha_before, beta_before) = (runs("alpha").await, runs("beta").await);
    // One after the other, so each request takes the connection the previous one gave back.
    for _ in 0..3 {
        let alpha = run(ALPHA_KEY, json!({"code": "print('a')"})).await;
        assert_eq!(alpha.status, StatusCode::OK, "{}", alpha.body);
        let beta = run(BETA_KEY, json!({"code": "print('b')", "profile": "other"})).await;
        assert_eq!(beta.status, StatusCode::OK, "{}", beta.body);
        // beta may not use alpha's profile, whichever connection alpha's run left behind.
        let refused = run(
            BETA_KEY,
            json!({"code": "print('x')", "profile": "default"}),
        )
        .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    }
    assert_eq!(runs("alpha").await - alpha_before, 3.0);
    assert_eq!(runs("beta").await - beta_before, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_run_and_the_pool_stays_usable() {
    if !privileged("a_client_that_goes_away_cancels_its_run_and_the_pool_stays_usable") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let stack = stack();
    let mut daemon = sandfork_protocol::client::Client::connect(&stack.socket)
        .await
        .expect("the daemon answers");
    let busy = |status: sandfork_protocol::ServerStatus| status.slots_busy;
    // The previous test's runs have answered; their slots may take a moment to be free.
    let deadline = Instant::now() + Duration::from_secs(10);
    while busy(daemon.ping().await.unwrap()) != 0 {
        assert!(
            Instant::now() < deadline,
            "a slot stayed busy with nothing running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // It would run into the profile's 15 s timeout; the client leaves well before.
    let body = json!({"code": "import time\ntime.sleep(60)"}).to_string();
    let addr = stack.base.trim_start_matches("http://").to_string();
    let mut tcp = TcpStream::connect(&addr).expect("connect to the shim");
    write!(
        tcp,
        "POST /v1/execute HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALPHA_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while busy(daemon.ping().await.unwrap()) == 0 {
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tcp);
    let gone = Instant::now();
    while busy(daemon.ping().await.unwrap()) != 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "the run outlived its HTTP client by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cancelled run's connection was closed, not pooled: the next runs are answered.
    for _ in 0..3 {
        let answer = run(ALPHA_KEY, json!({"code": "print(2)"})).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["stdout"], "2\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_is_reached_again_without_a_failed_request() {
    if !privileged("a_restarted_daemon_is_reached_again_without_a_failed_request") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    // Fill the pool with a few connections to the daemon that is about to go.
    for _ in 0..3 {
        let answer = run(ALPHA_KEY, json!({"code": "print(1)"})).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let before = opened().await;
    let restart = std::thread::spawn(|| stack().restart_daemon());
    restart.join().expect("the daemon restarted");
    // Every pooled connection is dead now; none of them may fail a request.
    for i in 0..5 {
        let answer = run(ALPHA_KEY, json!({"code": format!("print({i})")})).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.body
        );
        assert_eq!(answer.body["stdout"], format!("{i}\n"));
    }
    let after = opened().await;
    assert!(
        after > before,
        "no new connection after a restart: {before} -> {after}"
    );
    assert!(after - before <= 2.0, "{before} -> {after}");
}
