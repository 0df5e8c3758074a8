//! Identities: what a live child runs as. Each identity owns one uid inside every zygote's user
//! namespace (mapped to one host uid), and as root one cgroup (the cgroup code calls them slot
//! cgroups), so no two live children ever share a uid: a child cannot signal, ptrace or read
//! /proc of another run's process even if every other layer failed. Every live child holds one —
//! running, or waiting warm — so there are `slots` (the config's concurrent runs) plus the warm
//! children of every profile; how many runs execute at once is admission's run-slot semaphore,
//! a separate matter.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::daemon::cgroup::{CgroupSlots, SlotCgroup};

/// The pool of identities.
#[derive(Debug)]
pub struct Identities {
    /// One cgroup per slot (memory, pids, CPU accounting), when the host has usable cgroups.
    cgroups: Option<Arc<CgroupSlots>>,
    permits: Arc<Semaphore>,
    /// Free slot indexes; a permit always finds one here.
    free: Arc<Mutex<Vec<u32>>>,
    count: u32,
}

/// A held slot; the slot returns to the pool when this is dropped.
#[derive(Debug)]
pub struct Identity {
    index: u32,
    cgroups: Option<Arc<CgroupSlots>>,
    free: Arc<Mutex<Vec<u32>>>,
    _permit: OwnedSemaphorePermit,
}

impl Identities {
    pub fn new(count: u32) -> Identities {
        Identities::with_cgroups(count, None)
    }

    /// Identities whose cgroups are `cgroups.slot(index)` (which must have at least `count`).
    pub fn with_cgroups(count: u32, cgroups: Option<Arc<CgroupSlots>>) -> Identities {
        Identities {
            cgroups,
            permits: Arc::new(Semaphore::new(count as usize)),
            free: Arc::new(Mutex::new((0..count).rev().collect())),
            count,
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Identities in use right now.
    pub fn busy(&self) -> u32 {
        self.count - self.permits.available_permits() as u32
    }

    /// A free slot now, or None.
    pub fn try_acquire(&self) -> Option<Identity> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let index = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .expect("a permit guarantees a free slot");
        Some(Identity {
            index,
            cgroups: self.cgroups.clone(),
            free: Arc::clone(&self.free),
            _permit: permit,
        })
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Identity {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        let index = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .expect("a permit guarantees a free slot");
        Identity {
            index,
            cgroups: self.cgroups.clone(),
            free: Arc::clone(&self.free),
            _permit: permit,
        }
    }
}

impl Identity {
    /// The slot's uid (and gid) inside a zygote's user namespace: 1..=count (0 is the zygote).
    pub fn inner_uid(&self) -> u32 {
        self.index + 1
    }

    /// The slot's cgroup, if the host has usable cgroups.
    pub fn cgroup(&self) -> Option<&SlotCgroup> {
        self.cgroups.as_ref().map(|c| c.slot(self.index))
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        // Runs before the permit is released (fields drop after this), so the index is back
        // before anyone else can acquire.
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_unique_while_held_and_reused_after() {
        let slots = Identities::new(3);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        let c = slots.acquire().await;
        let mut uids = vec![a.inner_uid(), b.inner_uid(), c.inner_uid()];
        uids.sort();
        assert_eq!(uids, vec![1, 2, 3]);
        assert_eq!(slots.busy(), 3);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire());
        assert!(waiting.await.is_err(), "a fourth slot must wait");
        let freed = b.inner_uid();
        drop(b);
        assert_eq!(slots.acquire().await.inner_uid(), freed);
    }
}
