//! Warm children (DESIGN §2): per profile, a few children forked and locked down *before* any
//! request needs them, so a request pays for neither the fork nor the lockdown.
//!
//! A request `take`s one (the freshest usable child); a keeper task forks replacements in the
//! background. A warm child still serves exactly one request (`ReadyChild::run` consumes it).
//! Children whose zygote died, that died themselves, or that waited longer than the idle limit
//! are discarded (dropping a `ReadyChild` kills it and frees its slot once it is gone).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::child::ReadyChild;
use crate::pool::Pool;
use crate::slots::Slots;

/// How long the keeper waits after a failed fork before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// The warm children of one profile.
#[derive(Debug)]
pub struct WarmPool {
    children: Mutex<VecDeque<ReadyChild>>,
    /// How many the keeper keeps ready.
    target: u32,
    /// A warm child older than this is discarded instead of used.
    idle_limit: Duration,
    /// Wakes the keeper: a child was taken, or a zygote came back.
    wake: Notify,
}

impl WarmPool {
    pub fn new(target: u32, idle_limit: Duration) -> WarmPool {
        WarmPool {
            children: Mutex::new(VecDeque::new()),
            target,
            idle_limit,
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ReadyChild>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A usable warm child, if there is one; unusable ones met on the way are discarded.
    pub fn take(&self) -> Option<ReadyChild> {
        let taken = {
            let mut children = self.lock();
            let mut discarded = Vec::new();
            let mut found = None;
            // Newest last: take from the back, so the freshest child serves first and old ones
            // age out at the front.
            while let Some(child) = children.pop_back() {
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
        self.wake.notify_one();
        taken
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
        let stale: Vec<ReadyChild> = {
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
        let all: Vec<ReadyChild> = self.lock().drain(..).collect();
        drop(all);
    }

    /// Keeps the pool filled until `stop`. Runs as one task per profile.
    pub async fn keep_filled(
        self: Arc<Self>,
        pool: Arc<Pool>,
        slots: Arc<Slots>,
        child_ids: Arc<AtomicU64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let check_every =
            (self.idle_limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if *stop.borrow() {
                break;
            }
            let mut failed = false;
            while self.prune() < self.target {
                let Some(zygote) = pool.pick(Duration::from_millis(50)).await else {
                    break;
                };
                let Some(slot) = slots.try_acquire() else {
                    break;
                };
                let id = child_ids.fetch_add(1, Ordering::Relaxed);
                match ReadyChild::fork(zygote, slot, id, &pool.profile.limits).await {
                    Ok(child) => self.lock().push_back(child),
                    Err(err) => {
                        warn!(profile = %pool.profile.name, cause = %err, "forking a warm child failed");
                        failed = true;
                        break;
                    }
                }
                if *stop.borrow() {
                    break;
                }
            }
            let pause = if failed {
                RETRY_AFTER_FAILURE
            } else {
                check_every
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = pool.changed() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
        self.clear();
    }
}
