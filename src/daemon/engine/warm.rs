//! Warm children (DESIGN §2): per profile, a few children forked and locked down *before* any
//! request needs them, so a request pays for neither the fork nor the lockdown.
//!
//! A request `take`s one (the one that has waited longest, so the one most likely done with its
//! warm-up rehearsal); a keeper task forks replacements in the background. The replacement is
//! asked for (`refill`) once the run that took the child has finished, or `REFILL_AFTER` into a
//! longer run: forking and locking down the next child while the request runs would compete
//! with it for the same cores. A request that finds no warm child while the keeper is preparing
//! one (`take_or_wait`) waits for that one rather than forking a second child beside it — each
//! preparation in progress can be claimed by one waiting request, so under load the rest fork
//! their own and throughput does not hinge on the keeper. A warm child still serves exactly one
//! request (`ReadyChild::run` consumes it).
//! Children whose zygote died, that died themselves, or that waited longer than the idle limit
//! are discarded (dropping a `ReadyChild` kills it and frees its slot once it is gone).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::daemon::child::ReadyChild;
use crate::daemon::engine::identities::Identities;
use crate::daemon::engine::pool::Pool;

/// A run that took a warm child asks for its replacement at the latest this long after it
/// started (short runs ask when they finish).
pub const REFILL_AFTER: Duration = Duration::from_millis(10);

/// How long the keeper waits after a failed fork before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// What the warm pool holds: in the daemon a [`ReadyChild`]; in the scheduling tests, a stand-in
/// that says whether it could still serve.
pub trait Warm: Send + 'static {
    /// Alive, its zygote accepting children, and idle for less than `idle_limit`.
    fn is_usable(&self, idle_limit: Duration) -> bool;
}

impl Warm for ReadyChild {
    fn is_usable(&self, idle_limit: Duration) -> bool {
        ReadyChild::is_usable(self, idle_limit)
    }
}

/// A waiting request's claim on a preparation under way; released when dropped.
struct Claim<'a, C: Warm>(&'a WarmPool<C>);

impl<C: Warm> Drop for Claim<'_, C> {
    fn drop(&mut self) {
        self.0.claimed.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A fork the keeper has under way. When it ends — the child in the pool, the fork failed, or
/// the keeper stopped — waiting requests look again.
struct Preparation<C: Warm>(Arc<WarmPool<C>>);

impl<C: Warm> Preparation<C> {
    fn start(pool: Arc<WarmPool<C>>) -> Self {
        pool.preparing.fetch_add(1, Ordering::AcqRel);
        Preparation(pool)
    }

    /// Whether a waiting request has claimed a preparation (then a child goes to it at once).
    fn claimed(&self) -> bool {
        self.0.claimed.load(Ordering::Acquire) > 0
    }

    /// The prepared child joins the pool; waiting requests look again.
    fn finish(self, child: C) {
        self.0.lock().push_back(child);
    }
}

impl<C: Warm> Drop for Preparation<C> {
    fn drop(&mut self) {
        self.0.preparing.fetch_sub(1, Ordering::AcqRel);
        self.0.prepared.notify_waiters();
    }
}

/// The warm children of one profile.
#[derive(Debug)]
pub struct WarmPool<C: Warm = ReadyChild> {
    children: Mutex<VecDeque<C>>,
    /// How many the keeper keeps ready.
    target: u32,
    /// A warm child older than this is discarded instead of used.
    idle_limit: Duration,
    /// Wakes the keeper: a taken child wants replacing (`refill`).
    wake: Notify,
    /// Forks the keeper has under way …
    preparing: AtomicU32,
    /// … and how many of them waiting requests have claimed.
    claimed: AtomicU32,
    /// Wakes requests waiting for a claimed child: one was added, or a preparation ended.
    prepared: Notify,
}

impl<C: Warm> WarmPool<C> {
    pub fn new(target: u32, idle_limit: Duration) -> WarmPool<C> {
        WarmPool {
            children: Mutex::new(VecDeque::new()),
            target,
            idle_limit,
            wake: Notify::new(),
            preparing: AtomicU32::new(0),
            claimed: AtomicU32::new(0),
            prepared: Notify::new(),
        }
    }

    /// A warm child now; or, when none is ready but the keeper is preparing one that no other
    /// request has claimed, that one as soon as it is ready (at most `patience`). `None`: fork a
    /// cold child.
    pub async fn take_or_wait(&self, patience: Duration) -> Option<C> {
        if let Some(child) = self.take() {
            return Some(child);
        }
        let claim = self.claim()?;
        let deadline = tokio::time::Instant::now() + patience;
        let taken = loop {
            let prepared = self.prepared.notified();
            tokio::pin!(prepared);
            prepared.as_mut().enable();
            if let Some(child) = self.take() {
                break Some(child);
            }
            if self.preparing() == 0 {
                break None;
            }
            if tokio::time::timeout_at(deadline, prepared).await.is_err() {
                break None;
            }
        };
        drop(claim);
        taken
    }

    /// Claims one of the preparations under way, if one is unclaimed.
    fn claim(&self) -> Option<Claim<'_, C>> {
        let mut claimed = self.claimed.load(Ordering::Acquire);
        loop {
            if claimed >= self.preparing() {
                return None;
            }
            match self.claimed.compare_exchange_weak(
                claimed,
                claimed + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Claim(self)),
                Err(now) => claimed = now,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<C>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A usable warm child, if there is one; unusable ones met on the way are discarded. The
    /// caller asks for its replacement with `refill`.
    pub fn take(&self) -> Option<C> {
        let taken = {
            let mut children = self.lock();
            let mut discarded = Vec::new();
            let mut found = None;
            // Oldest first: a child joins the pool as its rehearsal starts, so the one that has
            // waited longest is the one most likely done with it (a request that takes a child
            // mid-rehearsal waits for the rest).
            while let Some(child) = children.pop_front() {
                if child.is_usable(self.idle_limit) {
                    found = Some(child);
                    break;
                }
                discarded.push(child);
            }
            drop(children);
            drop(discarded); // kills them, outside the lock
            found
        };
        if taken.is_none() {
            self.refill(); // the discarded ones want replacing
        }
        taken
    }

    /// Wakes the keeper to fork replacements up to the target.
    pub fn refill(&self) {
        self.wake.notify_one();
    }

    /// Preparations under way.
    fn preparing(&self) -> u32 {
        self.preparing.load(Ordering::Acquire)
    }

    /// Warm children ready right now.
    pub fn count(&self) -> u32 {
        self.lock().len() as u32
    }

    pub fn target(&self) -> u32 {
        self.target
    }

    /// Drops children that are no longer usable; returns how many are left.
    fn prune(&self) -> u32 {
        let stale: Vec<C> = {
            let mut children = self.lock();
            let (keep, stale): (Vec<_>, Vec<_>) = children
                .drain(..)
                .partition(|c| c.is_usable(self.idle_limit));
            children.extend(keep);
            stale
        };
        if !stale.is_empty() {
            debug!(
                discarded = stale.len(),
                "discarding idle or dead warm children"
            );
        }
        drop(stale);
        self.count()
    }

    /// Discards every warm child (shutdown, or their zygote is being recycled).
    pub fn clear(&self) {
        let all: Vec<C> = self.lock().drain(..).collect();
        drop(all);
    }
}

impl WarmPool<ReadyChild> {
    /// Keeps the pool filled until `stop`. Runs as one task per profile; the children it
    /// prepares are forked one after the other by the zygote but lock down side by side, so up
    /// to `target` preparations are under way at once. A child that goes into the pool with no
    /// request waiting for it is asked to rehearse the warm-up.
    pub async fn keep_filled(
        self: Arc<Self>,
        pool: Arc<Pool>,
        slots: Arc<Identities>,
        child_ids: Arc<AtomicU64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let check_every =
            (self.idle_limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut preparations: JoinSet<bool> = JoinSet::new();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let backing_off = retry_at.is_some_and(|at| tokio::time::Instant::now() < at);
            while !backing_off && self.prune() + self.preparing() < self.target {
                let Some(zygote) = pool.pick(Duration::from_millis(50)).await else {
                    break;
                };
                let Some(slot) = slots.try_acquire() else {
                    break;
                };
                let id = child_ids.fetch_add(1, Ordering::Relaxed);
                let preparation = Preparation::start(Arc::clone(&self));
                let limits = pool.profile.limits;
                let own_pid_namespace = pool.profile.own_pid_namespace();
                let profile = pool.profile.name.clone();
                preparations.spawn(async move {
                    match ReadyChild::fork(zygote, slot, id, &limits, own_pid_namespace).await {
                        Ok(child) => {
                            // A request waiting for a preparation takes this child at once:
                            // a rehearsal would only delay it and spend CPU the next requests
                            // need (under load, every child).
                            if !preparation.claimed() {
                                child.rehearse().await;
                            }
                            preparation.finish(child);
                            true
                        }
                        Err(err) => {
                            warn!(profile = %profile, cause = %err, "forking a warm child failed");
                            false
                        }
                    }
                });
            }
            let pause = match retry_at {
                Some(at) => at.saturating_duration_since(tokio::time::Instant::now()),
                None => check_every,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = pool.changed() => {}
                _ = tokio::time::sleep(pause) => {}
                Some(done) = preparations.join_next() => {
                    retry_at = match done {
                        Ok(true) => None,
                        _ => Some(tokio::time::Instant::now() + RETRY_AFTER_FAILURE),
                    };
                }
                _ = stop.changed() => break,
            }
            if retry_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                retry_at = None;
            }
        }
        preparations.shutdown().await;
        self.clear();
    }
}

#[cfg(test)]
mod tests;
