//! Unit tests of `src/daemon/engine/pool.rs`.

use std::sync::atomic::Ordering;

use super::*;
use crate::daemon::zygotes::jail::ExecSpec;
use crate::daemon::zygotes::testing::{kill, FakeLauncher};

fn profile(zygotes: u32, max_forks: u64) -> Arc<Profile> {
    Arc::new(Profile {
        name: "test".into(),
        limits: Limits::default(),
        interpreter: Interpreter::default(),
        spec: JailSpec {
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            hostname: "t".into(),
            keep_fds: Vec::new(),
            root_size_bytes: 1,
            binds: Vec::new(),
            symlinks: Vec::new(),
            devices: Vec::new(),
            dirs: Vec::new(),
            cwd: PathBuf::from("/"),
            seccomp: false,
            exec: ExecSpec {
                path: PathBuf::from("/bin/true"),
                argv: vec!["true".into()],
                env: Vec::new(),
            },
        },
        zygotes,
        warm_children: 0,
        warm_idle: Duration::from_secs(1),
        recycle: RecyclePolicy {
            max_forks,
            max_rss_growth_kb: u64::MAX,
            max_age: Duration::from_secs(3600),
        },
        max_sessions: 0,
        processes: 0,
        longest_child: Duration::from_secs(15),
    })
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

fn start(
    zygotes: u32,
    max_forks: u64,
    launcher: &Arc<FakeLauncher>,
) -> (Pool, watch::Sender<bool>) {
    let (stop_tx, stop) = watch::channel(false);
    let pool = Pool::start(
        profile(zygotes, max_forks),
        Arc::clone(launcher) as Arc<dyn Launch>,
        stop,
    );
    (pool, stop_tx)
}

#[tokio::test]
async fn every_zygote_is_started_and_picked_in_turn() {
    let launcher = Arc::new(FakeLauncher::default());
    let (pool, stop) = start(2, u64::MAX, &launcher);
    eventually("both zygotes up", || pool.ready_count() == 2).await;
    assert_eq!(pool.wanted(), 2);
    let picks: Vec<String> = futures_names(&pool, 4).await;
    assert_ne!(picks[0], picks[1], "round-robin over both");
    assert_eq!(picks[0], picks[2]);
    assert_eq!(picks[1], picks[3]);
    stop.send_replace(true);
}

async fn futures_names(pool: &Pool, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let zygote = pool.pick(Duration::from_secs(1)).await.expect("a zygote");
        names.push(zygote.name.clone());
    }
    names
}

#[tokio::test]
async fn a_zygote_that_dies_is_replaced() {
    let launcher = Arc::new(FakeLauncher::default());
    let (pool, stop) = start(1, u64::MAX, &launcher);
    eventually("the zygote up", || pool.ready_count() == 1).await;
    let first = launcher.zygote(0);
    kill(launcher.pid(0));
    eventually("a second launch", || launcher.launches() == 2).await;
    eventually("the replacement up", || pool.ready_count() == 1).await;
    assert!(!first.is_alive(), "the dead one is not served");
    let picked = pool.pick(Duration::from_secs(1)).await.expect("a zygote");
    assert!(Arc::ptr_eq(&picked, &launcher.zygote(1)));
    stop.send_replace(true);
}

#[tokio::test]
async fn a_failed_start_is_retried_after_a_growing_pause() {
    let launcher = Arc::new(FakeLauncher::default());
    launcher.failures.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let (pool, stop) = start(1, u64::MAX, &launcher);
    eventually("up after two failures", || pool.ready_count() == 1).await;
    assert_eq!(launcher.launches(), 3);
    // Two pauses: BACKOFF_START, then twice that.
    assert!(
        started.elapsed() >= BACKOFF_START * 3,
        "{:?}",
        started.elapsed()
    );
    stop.send_replace(true);
}

#[tokio::test]
async fn pick_waits_for_a_zygote_to_come_up_and_no_longer() {
    let launcher = Arc::new(FakeLauncher::slow(Duration::from_millis(300)));
    let (pool, stop) = start(1, u64::MAX, &launcher);
    assert!(pool.pick(Duration::from_millis(10)).await.is_none());
    assert!(pool.pick(Duration::from_secs(5)).await.is_some());
    stop.send_replace(true);
}

#[tokio::test]
async fn a_zygote_due_for_recycling_is_replaced_first_then_stopped() {
    let launcher = Arc::new(FakeLauncher::default());
    // No fork allowed: due for recycling as soon as it is checked.
    let (pool, stop) = start(1, 0, &launcher);
    eventually("a replacement launched", || launcher.launches() >= 2).await;
    let old = launcher.zygote(0);
    eventually("the old one drained and stopped", || !old.is_alive()).await;
    let picked = pool.pick(Duration::from_secs(1)).await.expect("a zygote");
    assert!(
        !Arc::ptr_eq(&picked, &old),
        "the old one is no longer picked"
    );
    stop.send_replace(true);
}

#[tokio::test]
async fn stopping_the_pool_stops_its_zygotes() {
    let launcher = Arc::new(FakeLauncher::default());
    let (pool, stop) = start(2, u64::MAX, &launcher);
    eventually("both up", || pool.ready_count() == 2).await;
    stop.send_replace(true);
    eventually("both stopped", || {
        (0..2).all(|n| !launcher.zygote(n).is_alive())
    })
    .await;
    assert_eq!(pool.ready_count(), 0);
}
