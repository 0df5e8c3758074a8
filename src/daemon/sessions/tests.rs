//! Unit tests of `src/daemon/sessions.rs`: the bookkeeping, without children.

use std::sync::Arc;

use super::*;

#[derive(Debug)]
struct Fake {
    id: String,
    tenant: String,
    profile: String,
    why: Mutex<Option<String>>,
}

impl Entry for Fake {
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
        lock(&self.why).clone()
    }
}

fn open(registry: &Arc<Registry<Fake>>, tenant: &str, profile: &str) -> Result<Arc<Fake>, Refusal> {
    let place = registry.reserve(tenant, 2, profile, 3)?;
    let session = Arc::new(Fake {
        id: new_session_id(None).unwrap(),
        tenant: tenant.into(),
        profile: profile.into(),
        why: Mutex::new(None),
    });
    place.fill(Arc::clone(&session));
    Ok(session)
}

#[test]
fn ids_are_128_random_bits() {
    let a = new_session_id(None).unwrap();
    let b = new_session_id(None).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), 2 + 32);
    assert!(a.starts_with("s_") && a[2..].chars().all(|c| c.is_ascii_hexdigit()));
    // With a node name, the id carries it where a load balancer's pattern finds it.
    let c = new_session_id(Some("node-2")).unwrap();
    let hex = c.strip_prefix("s_node-2_").expect("s_<node>_<hex>");
    assert!(hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn another_tenants_session_is_not_found_and_an_ended_one_says_why_to_its_owner_only() {
    let registry = Arc::new(Registry::<Fake>::default());
    let mine = open(&registry, "acme", "default").unwrap();
    assert_eq!(registry.find("acme", &mine.id).unwrap().id, mine.id);
    let (kind, _) = registry.find("evil", &mine.id).unwrap_err();
    assert_eq!(kind, ErrorKind::SessionNotFound);
    let (kind, _) = registry.find("acme", "s_0000").unwrap_err();
    assert_eq!(kind, ErrorKind::SessionNotFound);

    *lock(&mine.why) = Some("idle for 600 s".into());
    registry.remove(&mine);
    registry.remove(&mine); // idempotent
    let (kind, message) = registry.find("acme", &mine.id).unwrap_err();
    assert_eq!(kind, ErrorKind::SessionEnded);
    assert!(message.contains("idle for 600 s"), "{message}");
    let (kind, _) = registry.find("evil", &mine.id).unwrap_err();
    assert_eq!(
        kind,
        ErrorKind::SessionNotFound,
        "a tombstone is its owner's only"
    );
    assert!(registry.of_tenant("acme").is_empty());
}

#[test]
fn tenant_and_profile_bounds_hold_and_places_come_back() {
    let registry = Arc::new(Registry::<Fake>::default());
    let a = open(&registry, "acme", "default").unwrap();
    let _b = open(&registry, "acme", "default").unwrap();
    assert_eq!(
        open(&registry, "acme", "default").unwrap_err().0,
        ErrorKind::TooManySessions
    );
    let _c = open(&registry, "other", "default").unwrap();
    assert_eq!(registry.count("default"), 3);
    assert_eq!(
        open(&registry, "third", "default").unwrap_err().0,
        ErrorKind::NoSessionCapacity
    );
    // A place reserved and never filled (the fork failed) comes back when dropped.
    registry.remove(&a);
    drop(registry.reserve("third", 2, "default", 3).unwrap());
    assert_eq!(registry.count("default"), 2);
    assert!(open(&registry, "third", "default").is_ok());
    assert_eq!(registry.of_tenant("acme").len(), 1);
    assert_eq!(registry.all().len(), 3);
}

#[test]
fn tombstones_are_bounded() {
    let registry = Arc::new(Registry::<Fake>::default());
    let first = open(&registry, "acme", "p").unwrap();
    registry.remove(&first);
    for _ in 0..MAX_TOMBSTONES {
        let s = open(&registry, "acme", "p").unwrap();
        registry.remove(&s);
    }
    assert_eq!(lock(&registry.inner).tombstones.len(), MAX_TOMBSTONES);
    assert_eq!(
        registry.find("acme", &first.id).unwrap_err().0,
        ErrorKind::SessionNotFound
    );
}
