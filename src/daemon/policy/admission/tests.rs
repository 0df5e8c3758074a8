//! Unit tests of `src/daemon/policy/admission.rs`.

use super::*;
use crate::config::Config;
use crate::tenants::Tenants;

/// A tenant named `name` with `policy`, built through the config like the daemon's.
fn tenant(name: &str, policy: &str) -> Tenant {
    let text = format!("[[tenants]]\nname = \"{name}\"\n[tenants.policy]\n{policy}\n");
    let config: Config = toml::from_str(&text).unwrap();
    let tenants = Tenants::from_config(&config.validated().unwrap(), 0).unwrap();
    tenants.by_name(name).unwrap().clone()
}

fn admission(slots: u32, capacity: u32) -> Admission {
    Admission::with_queue_capacity(&["p".to_string()], slots, capacity)
}

/// Lets spawned tasks run until they are blocked.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn token_bucket_refills_at_the_rate_and_says_when() {
    let admission = admission(4, 16);
    let acme = tenant(
        "acme",
        "rate_per_sec = 10.0\nburst = 2\nmax_concurrent = 100",
    );
    drop(admission.admit(&acme, "p").await.unwrap());
    drop(admission.admit(&acme, "p").await.unwrap());
    assert_eq!(
        admission.admit(&acme, "p").await.unwrap_err(),
        Refusal::RateLimited {
            retry_after_ms: 100
        }
    );
    tokio::time::advance(Duration::from_millis(30)).await;
    assert_eq!(
        admission.admit(&acme, "p").await.unwrap_err(),
        Refusal::RateLimited { retry_after_ms: 70 }
    );
    tokio::time::advance(Duration::from_millis(70)).await;
    drop(admission.admit(&acme, "p").await.unwrap());
    // A long pause refills up to the burst, no further.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..2 {
        drop(admission.admit(&acme, "p").await.unwrap());
    }
    let refusal = admission.admit(&acme, "p").await.unwrap_err();
    assert_eq!(refusal.kind(), "rate_limited");
    assert_eq!(refusal.retry_after_ms(), Some(100));
    // Another tenant has its own bucket.
    let beta = tenant("beta", "rate_per_sec = 10.0\nburst = 1");
    drop(admission.admit(&beta, "p").await.unwrap());
}

#[tokio::test]
async fn concurrency_cap_is_busy_at_once() {
    let admission = admission(8, 32);
    let acme = tenant("acme", "max_concurrent = 2");
    let a = admission.admit(&acme, "p").await.unwrap();
    let _b = admission.admit(&acme, "p").await.unwrap();
    assert_eq!(admission.in_flight("acme"), 2);
    let refusal = admission.admit(&acme, "p").await.unwrap_err();
    assert!(
        matches!(&refusal, Refusal::Busy { reason, retry_after_ms } if reason.contains("max_concurrent") && *retry_after_ms > 0),
        "{refusal:?}"
    );
    // Another tenant is not affected; a finished run frees its tenant's unit.
    let beta = tenant("beta", "");
    drop(admission.admit(&beta, "p").await.unwrap());
    drop(a);
    assert_eq!(admission.in_flight("acme"), 1);
    admission.admit(&acme, "p").await.unwrap();
}

#[tokio::test]
async fn queue_full_is_busy_at_once_and_a_tenant_cannot_fill_it_alone() {
    let admission = admission(1, 4);
    let hog = tenant("hog", "max_concurrent = 100\nmax_queue_wait_ms = 60000");
    let other = tenant("other", "max_queue_wait_ms = 60000");
    let running = admission.admit(&hog, "p").await.unwrap();
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (admission, hog) = (admission.clone(), hog.clone());
        waiting.spawn(async move { admission.admit(&hog, "p").await.map(drop) });
    }
    settle().await;
    assert_eq!(admission.queued("p"), 3);
    // The hog holds three quarters of the queue: its next run is refused, another's is not.
    let refusal = admission.admit(&hog, "p").await.unwrap_err();
    assert!(
        matches!(&refusal, Refusal::Busy { reason, .. } if reason.contains("queue places")),
        "{refusal:?}"
    );
    let (a, o) = (admission.clone(), other.clone());
    waiting.spawn(async move { a.admit(&o, "p").await.map(drop) });
    settle().await;
    assert_eq!(admission.queued("p"), 4);
    let refusal = admission
        .admit(&tenant("third", ""), "p")
        .await
        .unwrap_err();
    assert!(
        matches!(&refusal, Refusal::Busy { reason, .. } if reason.contains("queue is full")),
        "{refusal:?}"
    );
    assert!(refusal.retry_after_ms().unwrap() > 0);
    // Everyone waiting gets served once the slot frees.
    drop(running);
    while let Some(result) = waiting.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(admission.queued("p"), 0);
    assert_eq!(admission.in_flight("hog"), 0);
}

#[tokio::test(start_paused = true)]
async fn queue_wait_has_a_deadline() {
    let admission = admission(1, 8);
    let acme = tenant("acme", "max_queue_wait_ms = 300");
    let running = admission.admit(&acme, "p").await.unwrap();
    let started = Instant::now();
    assert_eq!(
        admission.admit(&acme, "p").await.unwrap_err(),
        Refusal::QueueTimeout { waited_ms: 300 }
    );
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(admission.queued("p"), 0);
    assert_eq!(
        admission.in_flight("acme"),
        1,
        "the timed-out run gave its unit back"
    );
    // A zero wait means: a slot now, or not at all.
    let impatient = tenant("impatient", "max_queue_wait_ms = 0");
    assert!(matches!(
        admission.admit(&impatient, "p").await,
        Err(Refusal::QueueTimeout { .. })
    ));
    drop(running);
    admission.admit(&impatient, "p").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_leaves_passes_the_turn_on() {
    let admission = admission(1, 8);
    let quick = tenant("quick", "max_queue_wait_ms = 100");
    let patient = tenant("patient", "max_queue_wait_ms = 10000");
    let running = admission.admit(&patient, "p").await.unwrap();
    let (a, q) = (admission.clone(), quick.clone());
    let first = tokio::spawn(async move { a.admit(&q, "p").await.map(drop) });
    settle().await;
    let (a, p) = (admission.clone(), patient.clone());
    let second = tokio::spawn(async move { a.admit(&p, "p").await.map(|permit| permit.waited()) });
    // The first waiter (holding the turn) times out; the second must still get the slot.
    assert!(matches!(
        first.await.unwrap(),
        Err(Refusal::QueueTimeout { .. })
    ));
    tokio::time::advance(Duration::from_millis(400)).await;
    drop(running);
    let waited = second.await.unwrap().unwrap();
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    // A dropped admit future leaves the queue too.
    let held = admission.admit(&patient, "p").await.unwrap();
    let pending = tokio::time::timeout(Duration::from_millis(10), admission.admit(&patient, "p"));
    assert!(pending.await.is_err());
    assert_eq!(admission.queued("p"), 0);
    assert_eq!(admission.in_flight("patient"), 1);
    drop(held);
}

#[tokio::test]
async fn slots_go_round_robin_by_tenant() {
    let admission = admission(1, 64);
    let a = tenant("a", "max_concurrent = 100\nmax_queue_wait_ms = 60000");
    let b = tenant("b", "max_concurrent = 100\nmax_queue_wait_ms = 60000");
    let blocker = admission.admit(&a, "p").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut runs = tokio::task::JoinSet::new();
    let mut queue = |t: &Tenant, count: usize| {
        for _ in 0..count {
            let (admission, t, order) = (admission.clone(), t.clone(), Arc::clone(&order));
            runs.spawn(async move {
                let permit = admission.admit(&t, "p").await.unwrap();
                order.lock().unwrap().push(permit.tenant().to_string());
                tokio::task::yield_now().await; // "run", then give the slot back
            });
        }
    };
    queue(&a, 20);
    settle().await;
    queue(&b, 2);
    settle().await;
    assert_eq!(admission.queued("p"), 22);
    drop(blocker);
    while let Some(run) = runs.join_next().await {
        run.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 22);
    let b_grants: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, t)| *t == "b")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(b_grants, vec![1, 3], "grant order: {order:?}");
}

#[tokio::test]
async fn unknown_profiles_are_refused() {
    let admission = admission(1, 4);
    let refusal = admission.admit(&tenant("a", ""), "nope").await.unwrap_err();
    assert_eq!(refusal.kind(), "busy");
    assert_eq!(admission.in_flight("a"), 0);
}

#[tokio::test]
async fn permits_hold_a_run_slot() {
    let admission = Admission::new(&["p".to_string()], 2);
    assert_eq!((admission.run_slots(), admission.queue_capacity()), (2, 8));
    let a = tenant("a", "");
    let permit = admission.admit(&a, "p").await.unwrap();
    assert_eq!(admission.running(), 1);
    assert_eq!((permit.tenant(), permit.profile()), ("a", "p"));
    assert_eq!(permit.to_string(), "run of a on p");
    drop(permit);
    assert_eq!(admission.running(), 0);
    assert_eq!(admission.in_flight("a"), 0);
}
