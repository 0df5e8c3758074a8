//! Admission: whether a tenant's run may start now, may wait for a slot, or is refused at once.
//!
//! Path of one run through [`Admission::admit`]:
//! 1. Non-blocking checks, in this order, each refusing at once with a retry-after hint: the
//!    tenant's token bucket (`rate_per_sec`, `burst`) → [`Refusal::RateLimited`]; the tenant's
//!    runs admitted at once (`max_concurrent`, counting runs that wait *and* runs that hold a
//!    slot) → [`Refusal::Busy`]; the profile's queue (full, or this tenant already holds its
//!    largest share of it) → [`Refusal::Busy`].
//! 2. The run waits in its profile's queue for one of the daemon's slots, at most the tenant's
//!    `max_queue_wait_ms` → [`Refusal::QueueTimeout`]. Nothing waits unboundedly.
//! 3. It leaves with a [`Permit`]: one of the daemon's concurrent-run slots (`slots` in the
//!    config) and one unit of the tenant's `max_concurrent`, both given back when it drops.
//!
//! **Run slots.** Admission *owns* the daemon's concurrent-run semaphore (the `slots` count of
//! the config): a run runs only while it holds a [`Permit`], and nothing else may hand out run
//! slots, or the fairness below would be bypassed. The uids children run as
//! ([`crate::daemon::engine::identities::Identities`], which also cover warm children) are a separate matter, taken by the
//! run as before.
//!
//! **Fairness.** The order in which waiters get run slots is decided here, not by the
//! semaphore's FIFO. Exactly one waiter at a time — the *turn* — waits on the semaphore: the
//! oldest waiter of the tenant at the front of a round robin of the tenants that have waiters.
//! When it gets its slot, its tenant goes to the back of the round robin (if it still has
//! waiters) and the next tenant's oldest waiter takes the turn. So slots go round-robin by
//! tenant, FIFO within a tenant: a tenant with 20 runs queued and another with 2 alternate,
//! instead of the 2 waiting behind the 20. A waiter that times out or is dropped leaves the
//! queue (passing the turn on if it held it).
//!
//! **Queues.** One per profile, bounded at 4 × run slots by default ([`Admission::new`]) or as
//! set with [`Admission::with_queue_capacity`]: enough to absorb a burst for every slot, short
//! enough that a waiter is served well within a typical `max_queue_wait_ms`. One tenant may hold
//! at most three quarters of a queue's places, so a saturating tenant leaves room for others.
//! The queue only bounds and counts waiters; the grant order is the round robin above, across
//! profiles (run slots are shared by all profiles).
//!
//! Clock: `tokio::time`, so tests drive rates and deadlines with `tokio::time::pause`.
//!
//! Longer than the ~500 lines we aim for, on purpose: the turn, the queues and the permits are
//! one state machine under one lock, and its invariants read best in one place.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::debug;

use super::rate::TokenBucket;
use crate::tenants::{Tenant, MAX_QUEUE_WAIT};

/// Run length assumed for a profile before any of its runs has finished (for retry hints).
const INITIAL_RUN_ESTIMATE: Duration = Duration::from_millis(100);
/// Weight of the newest run in a profile's moving average run length.
const RUN_AVERAGE_WEIGHT: f64 = 0.125;
/// Queue places per slot when the capacity is not set explicitly.
const QUEUE_PLACES_PER_SLOT: u32 = 4;

/// Why a run is not admitted. Reported to the caller at once (or at the queue deadline), as a
/// `rejected` result whose kind is [`Refusal::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The tenant's request rate is over its `rate_per_sec`/`burst`.
    #[error("rate limited: over the tenant's request rate; retry in {retry_after_ms} ms")]
    RateLimited {
        /// When the tenant's bucket holds a token again.
        retry_after_ms: u64,
    },
    /// The tenant has `max_concurrent` runs admitted, or the profile's queue has no place.
    #[error("busy: {reason}; retry in {retry_after_ms} ms")]
    Busy {
        /// A guess at when a place frees: a run's average length (tenant at its cap), or that
        /// divided by the slots (queue full).
        retry_after_ms: u64,
        /// Which limit was hit, for the caller and the logs.
        reason: String,
    },
    /// No slot came free within the tenant's `max_queue_wait_ms`.
    #[error("no slot came free within the tenant's queue wait ({waited_ms} ms)")]
    QueueTimeout {
        /// How long the run waited.
        waited_ms: u64,
    },
}

impl Refusal {
    /// The refusal's kind as the protocol and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::Busy { .. } => "busy",
            Refusal::QueueTimeout { .. } => "queue_timeout",
        }
    }

    /// The retry-after hint, for the refusals that have one.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after_ms } | Refusal::Busy { retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            Refusal::QueueTimeout { .. } => None,
        }
    }
}

/// The daemon's admission control. Clones are handles on the same state.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The daemon's concurrent runs; only the waiter holding the turn waits on it.
    run_slots: Arc<Semaphore>,
    /// Permits of `run_slots`.
    run_slot_count: u32,
    /// Places in each profile's queue.
    queue_capacity: u32,
    /// Places in a profile's queue one tenant may hold.
    tenant_queue_share: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per tenant, by name; created on a tenant's first request (names come from the config).
    tenants: HashMap<Arc<str>, TenantState>,
    /// Per profile, by name; fixed at construction so clients cannot grow it.
    profiles: HashMap<String, ProfileState>,
    /// Tenants that have waiters, in the order they get slots; the front one is next.
    round_robin: VecDeque<Arc<str>>,
    /// Every waiter, by id.
    waiters: HashMap<u64, Waiter>,
    /// The waiter entitled to the next free slot: the front tenant's oldest waiter.
    turn: Option<u64>,
    next_id: u64,
}

#[derive(Debug)]
struct TenantState {
    bucket: TokenBucket,
    /// Runs admitted (waiting or holding a slot); at most `max_concurrent`.
    in_flight: u32,
    /// This tenant's waiters, oldest first (across profiles).
    waiting: VecDeque<u64>,
}

#[derive(Debug)]
struct ProfileState {
    /// Waiters in this profile's queue.
    queued: u32,
    /// Moving average of how long a run holds its permit, for retry hints.
    average_run: Duration,
}

#[derive(Debug)]
struct Waiter {
    tenant: Arc<str>,
    profile: String,
    /// Woken when this waiter takes the turn.
    wake: Arc<Notify>,
}

/// An admitted run: holds one of the daemon's run slots and one unit of its tenant's
/// `max_concurrent` until it drops.
#[derive(Debug)]
pub struct Permit {
    /// The run slot; released after the tenant's unit (fields drop after `Drop::drop`).
    _run_slot: OwnedSemaphorePermit,
    tenant: Arc<str>,
    profile: String,
    /// Time spent in admission, arrival to grant.
    waited: Duration,
    granted: Instant,
    inner: Arc<Inner>,
}

impl Permit {
    /// The tenant the run was admitted for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The profile whose queue the run went through.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// How long the run waited in admission (its `queue_ms`).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let ran = self.granted.elapsed();
        let mut state = self.inner.lock();
        if let Some(tenant) = state.tenants.get_mut(&self.tenant) {
            tenant.in_flight = tenant.in_flight.saturating_sub(1);
        }
        if let Some(profile) = state.profiles.get_mut(&self.profile) {
            let average = profile.average_run.as_secs_f64();
            profile.average_run = Duration::from_secs_f64(
                average + RUN_AVERAGE_WEIGHT * (ran.as_secs_f64() - average),
            );
        }
    }
}

/// Removes its waiter from the queue if the wait ends without a grant (deadline, or the
/// caller's future dropped), giving back the concurrency unit and passing the turn on.
struct WaiterGuard<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if state.waiters.contains_key(&self.id) {
            state.remove_waiter(self.id, false);
        }
    }
}

impl Admission {
    /// Admission for `profiles` with `run_slots` concurrent runs (the config's `slots`); each
    /// profile's queue holds 4 × `run_slots`.
    pub fn new(profiles: &[String], run_slots: u32) -> Admission {
        let capacity = run_slots.saturating_mul(QUEUE_PLACES_PER_SLOT);
        Admission::with_queue_capacity(profiles, run_slots, capacity)
    }

    /// As [`Admission::new`], with `queue_capacity` places per profile queue (at least 1).
    pub fn with_queue_capacity(
        profiles: &[String],
        run_slots: u32,
        queue_capacity: u32,
    ) -> Admission {
        let run_slots = run_slots.max(1);
        let queue_capacity = queue_capacity.max(1);
        let state = State {
            profiles: profiles
                .iter()
                .map(|name| {
                    let profile = ProfileState {
                        queued: 0,
                        average_run: INITIAL_RUN_ESTIMATE,
                    };
                    (name.clone(), profile)
                })
                .collect(),
            ..State::default()
        };
        Admission {
            inner: Arc::new(Inner {
                run_slots: Arc::new(Semaphore::new(run_slots as usize)),
                run_slot_count: run_slots,
                queue_capacity,
                tenant_queue_share: (queue_capacity - queue_capacity / 4).max(1),
                state: Mutex::new(state),
            }),
        }
    }

    /// Admits a run of `tenant` under `profile`, or says why not.
    ///
    /// Refuses at once when the tenant is over its rate, at its `max_concurrent`, or the
    /// profile's queue has no place for it; otherwise waits for a slot, in round-robin order by
    /// tenant, at most the tenant's `max_queue_wait_ms`. Cancel-safe: dropping the future leaves
    /// the queue. `profile` must be one given to [`Admission::new`] (the caller checks it exists
    /// and that the tenant may use it); another is refused as `Busy`.
    ///
    /// Every call for a known profile takes a token, whatever the outcome, so a client retrying
    /// `busy` in a tight loop ends up `rate_limited`.
    pub async fn admit(&self, tenant: &Tenant, profile: &str) -> Result<Permit, Refusal> {
        let arrived = Instant::now();
        let (id, wake) = self.enqueue(tenant, profile, arrived).inspect_err(|refusal| {
            debug!(tenant = %tenant.name, profile, kind = refusal.kind(), %refusal, "run refused");
        })?;
        let guard = WaiterGuard {
            inner: &self.inner,
            id,
        };
        let wait = Duration::from_millis(tenant.policy.max_queue_wait_ms).min(MAX_QUEUE_WAIT);
        let deadline = arrived + wait;
        let Ok(run_slot) = tokio::time::timeout_at(deadline, self.take_slot(id, &wake)).await
        else {
            drop(guard);
            let waited_ms = arrived.elapsed().as_millis() as u64;
            debug!(tenant = %tenant.name, profile, waited_ms, "run refused: queue wait over");
            return Err(Refusal::QueueTimeout { waited_ms });
        };
        drop(guard); // the grant already removed the waiter; this is a no-op
        let tenant_key = self.inner.lock().tenant_key(&tenant.name);
        let granted = Instant::now();
        Ok(Permit {
            _run_slot: run_slot,
            tenant: tenant_key,
            profile: profile.to_string(),
            waited: granted - arrived,
            granted,
            inner: Arc::clone(&self.inner),
        })
    }

    /// Runs waiting for a slot in `profile`'s queue.
    pub fn queued(&self, profile: &str) -> u32 {
        self.inner
            .lock()
            .profiles
            .get(profile)
            .map_or(0, |p| p.queued)
    }

    /// Runs of `tenant` admitted now (waiting or holding a slot).
    pub fn in_flight(&self, tenant: &str) -> u32 {
        self.inner
            .lock()
            .tenants
            .get(tenant)
            .map_or(0, |t| t.in_flight)
    }

    /// Places in each profile's queue.
    pub fn queue_capacity(&self) -> u32 {
        self.inner.queue_capacity
    }

    /// The daemon's concurrent runs (run slots).
    pub fn run_slots(&self) -> u32 {
        self.inner.run_slot_count
    }

    /// Run slots held now (by admitted runs).
    pub fn running(&self) -> u32 {
        self.inner.run_slot_count - self.inner.run_slots.available_permits() as u32
    }

    /// The non-blocking checks; on success the run is a waiter in its queue.
    fn enqueue(
        &self,
        tenant: &Tenant,
        profile: &str,
        now: Instant,
    ) -> Result<(u64, Arc<Notify>), Refusal> {
        let inner = &*self.inner;
        let slot_count = inner.run_slot_count;
        let mut state = inner.lock();
        let Some(profile_state) = state.profiles.get(profile) else {
            return Err(Refusal::Busy {
                retry_after_ms: 0,
                reason: format!("profile {profile:?} has no queue"),
            });
        };
        let average_run_ms = (profile_state.average_run.as_millis() as u64).max(1);
        let queued = profile_state.queued;
        let key = state.tenant_key(&tenant.name);
        let policy = &tenant.policy;
        let tenant_state = state
            .tenants
            .entry(Arc::clone(&key))
            .or_insert_with(|| TenantState {
                bucket: TokenBucket::full(policy, now),
                in_flight: 0,
                waiting: VecDeque::new(),
            });
        if let Err(retry_after_ms) = tenant_state.bucket.take(policy, now) {
            return Err(Refusal::RateLimited { retry_after_ms });
        }
        if tenant_state.in_flight >= policy.max_concurrent {
            return Err(Refusal::Busy {
                retry_after_ms: average_run_ms,
                reason: format!(
                    "tenant {:?} has {} runs admitted, its max_concurrent",
                    tenant.name, tenant_state.in_flight
                ),
            });
        }
        let queue_full_retry = (average_run_ms / u64::from(slot_count)).max(1);
        if queued >= inner.queue_capacity {
            return Err(Refusal::Busy {
                retry_after_ms: queue_full_retry,
                reason: format!("profile {profile:?}'s queue is full ({queued} waiting)"),
            });
        }
        let held = {
            let waiters = &state.waiters;
            let tenant_state = &state.tenants[&key];
            tenant_state
                .waiting
                .iter()
                .filter(|id| waiters.get(id).is_some_and(|w| w.profile == profile))
                .count() as u32
        };
        if held >= inner.tenant_queue_share {
            return Err(Refusal::Busy {
                retry_after_ms: queue_full_retry,
                reason: format!(
                    "tenant {:?} holds {held} of profile {profile:?}'s {} queue places, the most one tenant may",
                    tenant.name, inner.queue_capacity
                ),
            });
        }
        // Admitted to the queue.
        let id = state.next_id;
        state.next_id += 1;
        let wake = Arc::new(Notify::new());
        state.waiters.insert(
            id,
            Waiter {
                tenant: Arc::clone(&key),
                profile: profile.to_string(),
                wake: Arc::clone(&wake),
            },
        );
        if let Some(p) = state.profiles.get_mut(profile) {
            p.queued += 1;
        }
        let tenant_state = state
            .tenants
            .get_mut(&key)
            .expect("the tenant's state was created above");
        tenant_state.in_flight += 1;
        tenant_state.waiting.push_back(id);
        if tenant_state.waiting.len() == 1 {
            state.round_robin.push_back(key);
        }
        state.pass_turn();
        Ok((id, wake))
    }

    /// Waits for this waiter's turn, then for a run slot; on getting one, leaves the queue and
    /// passes the turn on. Cancel-safe: until the slot is taken, dropping this future takes
    /// nothing (the `WaiterGuard` cleans up), and after it nothing awaits.
    async fn take_slot(&self, id: u64, wake: &Notify) -> OwnedSemaphorePermit {
        while self.inner.lock().turn != Some(id) {
            wake.notified().await;
        }
        let run_slot = Arc::clone(&self.inner.run_slots)
            .acquire_owned()
            .await
            .expect("the run-slot semaphore is never closed");
        self.inner.lock().remove_waiter(id, true);
        run_slot
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// The shared name of `tenant` (one allocation per tenant, however many runs).
    fn tenant_key(&self, tenant: &str) -> Arc<str> {
        self.tenants
            .get_key_value(tenant)
            .map_or_else(|| Arc::from(tenant), |(key, _)| Arc::clone(key))
    }

    /// Takes waiter `id` out of its queue: `granted` when it got a slot (its tenant goes to
    /// the back of the round robin and keeps its concurrency unit, now the permit's), else it
    /// gave up (the unit is returned). Then the turn moves to the new head.
    fn remove_waiter(&mut self, id: u64, granted: bool) {
        let Some(waiter) = self.waiters.remove(&id) else {
            return;
        };
        if let Some(profile) = self.profiles.get_mut(&waiter.profile) {
            profile.queued = profile.queued.saturating_sub(1);
        }
        if let Some(tenant) = self.tenants.get_mut(&waiter.tenant) {
            tenant.waiting.retain(|&w| w != id);
            if !granted {
                tenant.in_flight = tenant.in_flight.saturating_sub(1);
            }
            let still_waiting = !tenant.waiting.is_empty();
            if let Some(at) = self.round_robin.iter().position(|t| *t == waiter.tenant) {
                let key = self.round_robin.remove(at);
                if let Some(key) = key.filter(|_| still_waiting) {
                    if granted {
                        self.round_robin.push_back(key);
                    } else {
                        self.round_robin.insert(at, key);
                    }
                }
            }
        }
        if self.turn == Some(id) {
            self.turn = None;
        }
        self.pass_turn();
    }

    /// Gives the turn to the front tenant's oldest waiter, waking it, if it has not got it.
    fn pass_turn(&mut self) {
        let head = self
            .round_robin
            .front()
            .and_then(|t| self.tenants.get(t))
            .and_then(|t| t.waiting.front().copied());
        if head == self.turn {
            return;
        }
        self.turn = head;
        if let Some(waiter) = head.and_then(|id| self.waiters.get(&id)) {
            waiter.wake.notify_one();
        }
    }
}

impl fmt::Display for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run of {} on {}", self.tenant, self.profile)
    }
}

#[cfg(test)]
mod tests;
