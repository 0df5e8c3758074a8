//! The live sessions: who owns which, how many each tenant and profile holds, and why the
//! ended ones ended.
//!
//! A session's id is 128 random bits from the kernel; it is looked up *with* its tenant, so
//! another tenant's id is indistinguishable from one that never existed. An ended session
//! leaves a tombstone (its owner, why it ended) for [`TOMBSTONE_TTL`], bounded in number, so
//! its owner learns `session_ended` with the reason rather than a bare "not found".
//!
//! The operations themselves (open, cell, interrupt, close, files) are the supervisor's
//! (`supervisor/sessions.rs`); this module holds the bookkeeping they share, and is tested on
//! its own.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sandfork_protocol::{ErrorKind, SessionInfo};
use tokio::sync::Notify;

use crate::config::Limits;
use crate::daemon::child::{SessionChild, Signaller};

/// How long an ended session's owner is told why it ended.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
/// Most tombstones kept (the oldest go first).
pub const MAX_TOMBSTONES: usize = 4096;

/// Why a session ended, as a metric label and for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Its owner closed it.
    Closed,
    /// No cell for its idle timeout.
    Idle,
    /// Its maximum lifetime ran out.
    Lifetime,
    /// Its child died, or a cell had to be killed (timeout, output, memory, a crash).
    Died,
    /// The sandbox failed it (a misused channel, an internal error).
    Failed,
    /// The daemon is shutting down.
    Shutdown,
}

impl SessionEnd {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::Closed => "closed",
            SessionEnd::Idle => "idle",
            SessionEnd::Lifetime => "lifetime",
            SessionEnd::Died => "died",
            SessionEnd::Failed => "failed",
            SessionEnd::Shutdown => "shutdown",
        }
    }
}

/// A refused session operation: the error frame's kind and message.
pub type Refusal = (ErrorKind, String);

/// One live session.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub tenant: String,
    pub profile: String,
    /// Per cell: timeout and output cap; per session: memory and pids.
    pub limits: Limits,
    pub idle_timeout: Duration,
    created_at_ms: u64,
    expires_at_ms: u64,
    pub expires: Instant,
    /// The child, between cells; a running cell holds the lock.
    pub child: tokio::sync::Mutex<Option<SessionChild>>,
    /// Interrupts and kills without the lock.
    pub signaller: Signaller,
    busy: AtomicBool,
    cells: AtomicU64,
    last_active: Mutex<Instant>,
    ended: Mutex<Option<(SessionEnd, String)>>,
    /// Wakes the session's reaper: activity, or the end.
    pub wake: Notify,
}

/// What a session is, besides its child.
#[derive(Debug)]
pub struct SessionParams {
    pub id: String,
    pub tenant: String,
    pub profile: String,
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
}

impl Session {
    pub fn new(params: SessionParams, child: SessionChild, signaller: Signaller) -> Session {
        let SessionParams {
            id,
            tenant,
            profile,
            limits,
            idle_timeout,
            lifetime,
        } = params;
        let now_ms = unix_ms(SystemTime::now());
        Session {
            id,
            tenant,
            profile,
            limits,
            idle_timeout,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(lifetime.as_millis() as u64),
            expires: Instant::now() + lifetime,
            child: tokio::sync::Mutex::new(Some(child)),
            signaller,
            busy: AtomicBool::new(false),
            cells: AtomicU64::new(0),
            last_active: Mutex::new(Instant::now()),
            ended: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            session_id: self.id.clone(),
            profile: self.profile.clone(),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            idle_timeout_s: self.idle_timeout.as_secs(),
            cells: self.cells.load(Ordering::Relaxed),
            busy: self.is_busy(),
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Claims the session for one cell or file request; `false` if one is in progress.
    pub fn try_claim(&self) -> bool {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Releases a claim; `cell` counts a cell. Restarts the idle clock.
    pub fn release(&self, cell: bool) {
        if cell {
            self.cells.fetch_add(1, Ordering::Relaxed);
        }
        *lock(&self.last_active) = Instant::now();
        self.busy.store(false, Ordering::Release);
        self.wake.notify_one();
    }

    /// When the session ends if nothing happens: idle, or its lifetime.
    pub fn next_deadline(&self) -> (Instant, SessionEnd) {
        let idle = *lock(&self.last_active) + self.idle_timeout;
        if idle < self.expires {
            (idle, SessionEnd::Idle)
        } else {
            (self.expires, SessionEnd::Lifetime)
        }
    }

    /// Why it ended, once it has.
    pub fn ended(&self) -> Option<(SessionEnd, String)> {
        lock(&self.ended).clone()
    }

    /// Why it ended, for people (also when it has not been marked yet: its child is gone).
    pub fn why_ended(&self) -> String {
        self.ended()
            .map_or_else(|| "the session has ended".to_string(), |(_, why)| why)
    }

    /// Marks the session ended (the first reason wins); true if this call ended it.
    pub fn mark_ended(&self, end: SessionEnd, why: String) -> bool {
        let mut ended = lock(&self.ended);
        if ended.is_some() {
            return false;
        }
        *ended = Some((end, why));
        true
    }
}

/// What the registry needs of a session (a trait so that its bookkeeping is tested without
/// children).
pub trait Entry: Send + Sync {
    fn id(&self) -> &str;
    fn tenant(&self) -> &str;
    fn profile(&self) -> &str;
    /// Why it ended, once it has.
    fn why_ended(&self) -> Option<String>;
}

impl Entry for Session {
    fn id(&self) -> &str {
        &self.id
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn profile(&self) -> &str {
        &self.profile
    }
    fn why_ended(&self) -> Option<String> {
        self.ended().map(|(_, why)| why)
    }
}

/// The registry of live sessions and the tombstones of ended ones.
#[derive(Debug)]
pub struct Registry<S: Entry = Session> {
    inner: Mutex<Inner<S>>,
}

impl<S: Entry> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                by_tenant: HashMap::new(),
                by_profile: HashMap::new(),
                tombstones: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    live: HashMap<String, Arc<S>>,
    /// Places taken by sessions being opened or alive, per tenant and per profile.
    by_tenant: HashMap<String, u32>,
    by_profile: HashMap<String, u32>,
    tombstones: HashMap<String, Tombstone>,
    /// Tombstone ids, oldest first.
    order: VecDeque<String>,
}

#[derive(Debug, Clone)]
struct Tombstone {
    tenant: String,
    why: String,
    at: Instant,
}

/// A place for one session, taken before its child is forked and given back when it ends (or
/// if the opening fails: dropping an unused place gives it back).
#[derive(Debug)]
pub struct Place<S: Entry = Session> {
    registry: Arc<Registry<S>>,
    tenant: String,
    profile: String,
    released: bool,
}

impl<S: Entry> Place<S> {
    /// The place is now `session`'s (live until `Registry::remove`).
    pub fn fill(mut self, session: Arc<S>) {
        self.released = true; // the session holds the count from now on
        lock(&self.registry.inner)
            .live
            .insert(session.id().to_string(), session);
    }
}

impl<S: Entry> Drop for Place<S> {
    fn drop(&mut self) {
        if !self.released {
            lock(&self.registry.inner).give_back(&self.tenant, &self.profile);
        }
    }
}

impl<S> Inner<S> {
    fn give_back(&mut self, tenant: &str, profile: &str) {
        for (map, key) in [
            (&mut self.by_tenant, tenant),
            (&mut self.by_profile, profile),
        ] {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl<S: Entry> Registry<S> {
    /// Takes a place for a session of `tenant` under `profile`, within both bounds.
    pub fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        tenant_max: u32,
        profile: &str,
        profile_max: u32,
    ) -> Result<Place<S>, Refusal> {
        let mut inner = lock(&self.inner);
        if profile_max == 0 {
            return Err((
                ErrorKind::NoSessionCapacity,
                format!("profile {profile:?} does not take sessions (its max_sessions is 0)"),
            ));
        }
        let held = inner.by_tenant.get(tenant).copied().unwrap_or(0);
        if held >= tenant_max {
            return Err((
                ErrorKind::TooManySessions,
                format!("tenant {tenant:?} holds {held} sessions; its policy allows {tenant_max}"),
            ));
        }
        let live = inner.by_profile.get(profile).copied().unwrap_or(0);
        if live >= profile_max {
            return Err((
                ErrorKind::NoSessionCapacity,
                format!(
                    "profile {profile:?} holds its maximum of {profile_max} sessions; retry later"
                ),
            ));
        }
        *inner.by_tenant.entry(tenant.to_string()).or_default() += 1;
        *inner.by_profile.entry(profile.to_string()).or_default() += 1;
        Ok(Place {
            registry: Arc::clone(self),
            tenant: tenant.to_string(),
            profile: profile.to_string(),
            released: false,
        })
    }

    /// The tenant's live session `id`; otherwise why not: ended (its owner only) or not found.
    pub fn find(&self, tenant: &str, id: &str) -> Result<Arc<S>, Refusal> {
        let inner = lock(&self.inner);
        if let Some(session) = inner.live.get(id).filter(|s| s.tenant() == tenant) {
            return Ok(Arc::clone(session));
        }
        match inner.tombstones.get(id).filter(|t| t.tenant == tenant) {
            Some(tomb) => Err((
                ErrorKind::SessionEnded,
                format!("session {id} has ended: {}", tomb.why),
            )),
            None => Err((ErrorKind::SessionNotFound, format!("no session {id}"))),
        }
    }

    /// Removes an ended session (marked with `Session::mark_ended` first), leaves its
    /// tombstone and gives its place back. Idempotent.
    pub fn remove(&self, session: &S) {
        let mut inner = lock(&self.inner);
        if inner.live.remove(session.id()).is_none() {
            return;
        }
        inner.give_back(session.tenant(), session.profile());
        let why = session
            .why_ended()
            .unwrap_or_else(|| "it ended".to_string());
        let now = Instant::now();
        while inner.order.len() >= MAX_TOMBSTONES
            || inner
                .order
                .front()
                .and_then(|id| inner.tombstones.get(id))
                .is_some_and(|t| now.duration_since(t.at) > TOMBSTONE_TTL)
        {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.tombstones.remove(&old);
        }
        inner.tombstones.insert(
            session.id().to_string(),
            Tombstone {
                tenant: session.tenant().to_string(),
                why,
                at: now,
            },
        );
        inner.order.push_back(session.id().to_string());
    }

    /// The tenant's live sessions.
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<S>> {
        let inner = lock(&self.inner);
        let mut sessions: Vec<_> = inner
            .live
            .values()
            .filter(|s| s.tenant() == tenant)
            .cloned()
            .collect();
        sessions.sort_by(|a, b| a.id().cmp(b.id()));
        sessions
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<S>> {
        lock(&self.inner).live.values().cloned().collect()
    }

    /// Places taken under `profile` (opening or alive).
    pub fn count(&self, profile: &str) -> u32 {
        lock(&self.inner)
            .by_profile
            .get(profile)
            .copied()
            .unwrap_or(0)
    }
}

/// A fresh session id: 128 bits from the kernel's generator, or nothing (never a weaker id).
/// With a node name (the `node` key) it is `s_<node>_<hex>`, for a load balancer to route on;
/// otherwise `s_<hex>`.
pub fn new_session_id(node: Option<&str>) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a session id: {e}"))?;
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(match node {
        Some(node) => format!("s_{node}_{hex}"),
        None => format!("s_{hex}"),
    })
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
