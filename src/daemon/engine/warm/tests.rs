//! Unit tests of `src/daemon/engine/warm.rs`.

use std::sync::atomic::AtomicUsize;

use super::*;

/// A stand-in child: a number, whether it could still serve, and a count of the ones dropped
/// (a dropped `ReadyChild` is killed).
#[derive(Debug)]
struct Fake {
    n: u32,
    usable: bool,
    dropped: Arc<AtomicUsize>,
}

impl Warm for Fake {
    fn is_usable(&self, _idle_limit: Duration) -> bool {
        self.usable
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn pool() -> (Arc<WarmPool<Fake>>, Arc<AtomicUsize>) {
    (
        Arc::new(WarmPool::new(2, Duration::from_secs(60))),
        Arc::new(AtomicUsize::new(0)),
    )
}

fn fake(n: u32, usable: bool, dropped: &Arc<AtomicUsize>) -> Fake {
    Fake {
        n,
        usable,
        dropped: Arc::clone(dropped),
    }
}

#[test]
fn the_child_that_waited_longest_is_taken_and_stale_ones_are_discarded() {
    let (pool, dropped) = pool();
    for (n, usable) in [(1, false), (2, true), (3, true)] {
        Preparation::start(Arc::clone(&pool)).finish(fake(n, usable, &dropped));
    }
    assert_eq!(pool.count(), 3);
    let taken = pool.take().expect("a usable child");
    assert_eq!(taken.n, 2, "oldest usable first");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the stale one was discarded"
    );
    assert_eq!(pool.take().map(|c| c.n), Some(3));
    assert!(pool.take().is_none());
}

#[test]
fn prune_and_clear_drop_what_they_remove() {
    let (pool, dropped) = pool();
    for (n, usable) in [(1, true), (2, false), (3, true)] {
        Preparation::start(Arc::clone(&pool)).finish(fake(n, usable, &dropped));
    }
    assert_eq!(pool.prune(), 2);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    pool.clear();
    assert_eq!(pool.count(), 0);
    assert_eq!(dropped.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn with_nothing_being_prepared_a_request_does_not_wait() {
    let (pool, _) = pool();
    let started = tokio::time::Instant::now();
    assert!(pool.take_or_wait(Duration::from_secs(5)).await.is_none());
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// A request waiting (up to 10 s) for a warm child; resolves to the child's number, once the
/// returned preparation has been claimed by it.
async fn waiting_request(
    pool: &Arc<WarmPool<Fake>>,
) -> (Preparation<Fake>, tokio::task::JoinHandle<Option<u32>>) {
    let preparation = Preparation::start(Arc::clone(pool));
    let waiter = tokio::spawn({
        let pool = Arc::clone(pool);
        async move {
            pool.take_or_wait(Duration::from_secs(10))
                .await
                .map(|c| c.n)
        }
    });
    while !preparation.claimed() {
        tokio::task::yield_now().await;
    }
    (preparation, waiter)
}

#[tokio::test]
async fn a_request_waits_for_the_preparation_it_claimed() {
    let (pool, dropped) = pool();
    // Only once the request has claimed it does the keeper finish it.
    let (preparation, waiter) = waiting_request(&pool).await;
    preparation.finish(fake(7, true, &dropped));
    assert_eq!(waiter.await.unwrap(), Some(7));
}

#[tokio::test]
async fn one_preparation_serves_one_waiting_request_the_others_fork_their_own() {
    let (pool, dropped) = pool();
    let (preparation, first) = waiting_request(&pool).await;
    // The only preparation is claimed: a second request does not wait for it.
    assert!(pool.take_or_wait(Duration::from_secs(10)).await.is_none());
    preparation.finish(fake(1, true, &dropped));
    assert_eq!(first.await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_failed_preparation_releases_its_waiter() {
    let (pool, _) = pool();
    let (preparation, waiter) = waiting_request(&pool).await;
    drop(preparation); // the fork failed
    let released = tokio::time::timeout(Duration::from_secs(2), waiter).await;
    assert_eq!(released.expect("released at once").unwrap(), None);
}

#[tokio::test]
async fn patience_runs_out() {
    let (pool, _) = pool();
    let _preparation = Preparation::start(Arc::clone(&pool));
    let started = tokio::time::Instant::now();
    assert!(pool.take_or_wait(Duration::from_millis(50)).await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(50));
}
