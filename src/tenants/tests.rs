//! Unit tests of `src/tenants/`.

use std::cell::Cell;

use sandfork_protocol::LimitsRequest;

use super::*;
use crate::config::Limits;

thread_local! {
    /// Calls of `digests_equal` on this thread.
    pub(crate) static COMPARISONS: Cell<usize> = const { Cell::new(0) };
}

const DAEMON: u32 = 0;

fn config(text: &str) -> Config {
    let config: Config = toml::from_str(text).unwrap();
    config.validated().unwrap()
}

fn tenants(text: &str) -> Tenants {
    Tenants::from_config(&config(text), DAEMON).unwrap()
}

fn refused(text: &str) -> TenantError {
    let config: Config = toml::from_str(text).unwrap();
    Tenants::from_config(&config, DAEMON).unwrap_err()
}

#[test]
fn key_hash_is_sha256_hex() {
    assert_eq!(
        hash_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hash_key(""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn generated_keys_are_fresh_and_well_formed() {
    let (a, b) = (generate_key(), generate_key());
    assert_ne!(a, b);
    assert!(a.starts_with(KEY_PREFIX));
    assert_eq!(a.len(), KEY_PREFIX.len() + 64);
    assert!(a[KEY_PREFIX.len()..]
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
}

#[test]
fn keygen_fragment_appended_to_an_empty_config_loads_and_authenticates() {
    let key = generate_key();
    let fragment = keygen_fragment("acme", &key);
    assert!(
        !fragment.contains(&key),
        "the plain key must not be in the fragment"
    );
    assert!(!fragment.contains(&key[KEY_PREFIX.len()..]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandfork.toml");
    std::fs::write(&path, "").unwrap();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, fragment.as_bytes()).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.tenants.len(), 1);
    assert_eq!(config.tenants[0].policy, PolicyConfig::default());
    let tenants = Tenants::from_config(&config, 1000).unwrap();
    assert_eq!(tenants.by_api_key(&key).unwrap().name, "acme");
    assert!(tenants.by_api_key(&generate_key()).is_none());
    // The daemon's own uid still works, as `local`.
    assert_eq!(tenants.identify(1000, None).unwrap().name, LOCAL_TENANT);
    // Two fragments append to one config.
    let second = generate_key();
    std::io::Write::write_all(&mut file, keygen_fragment("beta", &second).as_bytes()).unwrap();
    let tenants = Tenants::from_config(&Config::load(&path).unwrap(), 1000).unwrap();
    assert_eq!(tenants.by_api_key(&second).unwrap().name, "beta");
    assert_eq!(tenants.by_api_key(&key).unwrap().name, "acme");
}

#[test]
fn api_keys_are_compared_in_constant_time_against_every_hash() {
    let keys = ["k1", "k2", "k3"];
    let t = tenants(&format!(
        "[[tenants]]\nname = \"a\"\napi_key_sha256 = [\"{}\", \"{}\"]\n\
         [[tenants]]\nname = \"b\"\napi_key_sha256 = [\"{}\"]\n",
        hash_key(keys[0]),
        hash_key(keys[1]),
        hash_key(keys[2]).to_uppercase(),
    ));
    for (key, owner) in [("k1", Some("a")), ("k3", Some("b")), ("nope", None)] {
        COMPARISONS.with(|c| c.set(0));
        assert_eq!(t.by_api_key(key).map(|t| t.name.as_str()), owner);
        // A match on the first hash still compares the rest: no early exit.
        assert_eq!(COMPARISONS.with(Cell::get), 3, "key {key}");
    }
}

#[test]
fn identify_maps_uids_and_proxies() {
    let t = tenants(
        "proxy_uids = [900]\n\
         [[tenants]]\nname = \"acme\"\nuids = [1001, 1002]\n\
         [[tenants]]\nname = \"beta\"\nuids = [1003]\n",
    );
    assert_eq!(t.identify(1001, None).unwrap().name, "acme");
    assert_eq!(t.identify(1003, None).unwrap().name, "beta");
    let err = t.identify(4242, None).unwrap_err();
    assert_eq!(err, IdentityError::UnknownUid { uid: 4242 });
    assert!(err.to_string().contains("permission denied"));
    // The daemon's own uid is `local` with the default policy.
    let local = t.identify(DAEMON, None).unwrap();
    assert_eq!(local.name, LOCAL_TENANT);
    assert!(local.is_builtin());
    assert_eq!(local.policy, PolicyConfig::default());
    // Proxies: the shim's uid and the daemon's own.
    assert!(t.is_proxy(900) && t.is_proxy(DAEMON) && !t.is_proxy(1001));
    assert_eq!(t.identify(900, Some("beta")).unwrap().name, "beta");
    assert_eq!(t.identify(DAEMON, Some("acme")).unwrap().name, "acme");
    assert_eq!(
        t.identify(900, None).unwrap_err(),
        IdentityError::ProxyNeedsTenant { uid: 900 }
    );
    assert_eq!(
        t.identify(900, Some("ghost")).unwrap_err(),
        IdentityError::UnknownTenant {
            uid: 900,
            tenant: "ghost".into()
        }
    );
    // Non-proxies may not say "on behalf of", not even for their own tenant.
    for name in ["beta", "acme"] {
        let err = t.identify(1001, Some(name)).unwrap_err();
        assert_eq!(err.kind(), "not_a_proxy");
    }
    assert_eq!(
        t.identify(4242, Some("acme")).unwrap_err().kind(),
        "not_a_proxy"
    );
}

#[test]
fn a_tenant_claiming_the_daemon_uid_wins_over_local() {
    let t = tenants("[[tenants]]\nname = \"ops\"\nuids = [0]\n");
    assert_eq!(t.identify(DAEMON, None).unwrap().name, "ops");
    assert!(
        t.by_name(LOCAL_TENANT).is_none(),
        "local is not served then"
    );
    assert!(t.identify(DAEMON, Some(LOCAL_TENANT)).is_err());
    // A declared `local` replaces the built-in one and serves the daemon's uid.
    let t = tenants("[[tenants]]\nname = \"local\"\n[tenants.policy]\nmax_concurrent = 9\n");
    let local = t.identify(DAEMON, None).unwrap();
    assert!(!local.is_builtin());
    assert_eq!(local.policy.max_concurrent, 9);
    assert_eq!(t.iter().count(), 1);
}

#[test]
fn no_config_serves_the_daemon_uid_only() {
    let t = Tenants::from_config(&Config::default(), 1234).unwrap();
    assert_eq!(t.identify(1234, None).unwrap().name, LOCAL_TENANT);
    assert!(t.identify(1235, None).is_err());
    assert!(t.by_api_key("").is_none());
}

#[test]
fn bad_tenant_configs_are_refused() {
    let hash = hash_key("k");
    assert!(matches!(
        refused("[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"a\"\n"),
        TenantError::DuplicateName { .. }
    ));
    assert!(matches!(
        refused("[[tenants]]\nname = \"a b\"\n"),
        TenantError::BadName { .. }
    ));
    assert!(matches!(
        refused("[[tenants]]\nname = \"a\"\napi_key_sha256 = [\"abc\"]\n"),
        TenantError::BadHash { .. }
    ));
    let not_hex = format!(
        "[[tenants]]\nname = \"a\"\napi_key_sha256 = [\"{}\"]\n",
        "g".repeat(64)
    );
    assert!(matches!(refused(&not_hex), TenantError::BadHash { .. }));
    let shared = format!(
        "[[tenants]]\nname = \"a\"\napi_key_sha256 = [\"{hash}\"]\n\
         [[tenants]]\nname = \"b\"\napi_key_sha256 = [\"{hash}\"]\n"
    );
    assert!(matches!(refused(&shared), TenantError::SharedHash { .. }));
    assert_eq!(
        refused("[[tenants]]\nname = \"a\"\nuids = [7]\n[[tenants]]\nname = \"b\"\nuids = [7]\n"),
        TenantError::SharedUid {
            uid: 7,
            first: "a".into(),
            second: "b".into()
        }
    );
    assert!(matches!(
        refused("[[tenants]]\nname = \"a\"\n[tenants.policy]\nprofiles = [\"gpu\"]\n"),
        TenantError::UnknownProfile { .. }
    ));
    for policy in [
        "max_concurrent = 0",
        "rate_per_sec = 0.0",
        "rate_per_sec = nan",
        "burst = 0",
        "max_memory_mb = 0",
        "max_queue_wait_ms = 3600001",
    ] {
        let text = format!("[[tenants]]\nname = \"a\"\n[tenants.policy]\n{policy}\n");
        assert!(
            matches!(refused(&text), TenantError::BadPolicy { .. }),
            "{policy}"
        );
    }
    // Unknown keys are typos, not silently ignored.
    assert!(toml::from_str::<Config>("[[tenants]]\nname = \"a\"\napi_key = \"x\"\n").is_err());
    assert!(
        toml::from_str::<Config>("[[tenants]]\nname = \"a\"\n[tenants.policy]\nrate = 1\n")
            .is_err()
    );
    // And `Config::load`/`validated` refuse them too.
    let config: Config = toml::from_str(
        "[[tenants]]\nname = \"a\"\nuids = [1]\n[[tenants]]\nname = \"b\"\nuids = [1]\n",
    )
    .unwrap();
    assert!(config.validated().is_err());
}

#[test]
fn requests_may_lower_limits_but_not_exceed_the_tenants_ceilings() {
    let t = tenants(
        "[profiles.default]\n[profiles.big]\n\
         [[tenants]]\nname = \"acme\"\nuids = [5]\n\
         [tenants.policy]\nmax_timeout_ms = 2000\nprofiles = [\"default\"]\n",
    );
    let acme = t.identify(5, None).unwrap();
    let profile = Limits::default();
    let none = LimitsRequest::default();
    let limits = acme.effective_limits("default", &profile, &none).unwrap();
    assert_eq!(
        limits.timeout_ms, 2000,
        "the tenant's ceiling caps the profile's"
    );
    assert_eq!(limits.cpu_seconds(), 3);
    assert_eq!(limits.memory_mb, profile.memory_mb);
    let lower = LimitsRequest {
        timeout_ms: Some(500),
        memory_mb: Some(100),
        output_bytes: Some(10),
    };
    let limits = acme.effective_limits("default", &profile, &lower).unwrap();
    assert_eq!(
        (limits.timeout_ms, limits.memory_mb, limits.output_bytes),
        (500, 100, 10)
    );
    let over = LimitsRequest {
        timeout_ms: Some(3000),
        ..LimitsRequest::default()
    };
    let err = acme
        .effective_limits("default", &profile, &over)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "timeout_ms 3000 exceeds tenant \"acme\"'s ceiling of 2000"
    );
    let over_profile = LimitsRequest {
        memory_mb: Some(profile.memory_mb + 1),
        ..LimitsRequest::default()
    };
    assert!(matches!(
        acme.effective_limits("default", &profile, &over_profile),
        Err(PolicyError::OverProfileCeiling { .. })
    ));
    let zero = LimitsRequest {
        output_bytes: Some(0),
        ..LimitsRequest::default()
    };
    assert!(acme.effective_limits("default", &profile, &zero).is_err());
    // Less memory than the interpreter needs to start is refused, the floor itself is not.
    let tiny = |memory_mb| LimitsRequest {
        memory_mb: Some(memory_mb),
        ..LimitsRequest::default()
    };
    assert_eq!(
        acme.effective_limits("default", &profile, &tiny(MIN_MEMORY_MB - 1))
            .unwrap_err()
            .to_string(),
        format!(
            "memory_mb {} is below the floor of {MIN_MEMORY_MB}: the interpreter needs that much to start",
            MIN_MEMORY_MB - 1
        )
    );
    let at_floor = acme
        .effective_limits("default", &profile, &tiny(MIN_MEMORY_MB))
        .unwrap();
    assert_eq!(at_floor.memory_mb, MIN_MEMORY_MB);
    assert_eq!(
        acme.effective_limits("big", &profile, &none).unwrap_err(),
        PolicyError::ProfileNotAllowed {
            tenant: "acme".into(),
            profile: "big".into()
        }
    );
}

#[test]
fn not_a_proxy_logging_is_budgeted() {
    let mut budget = LogBudget::default();
    let start = Instant::now();
    for _ in 0..NOT_A_PROXY_LOGS_PER_MINUTE {
        assert_eq!(budget.take(start), Some(0));
    }
    assert_eq!(budget.take(start), None);
    assert_eq!(budget.take(start), None);
    assert_eq!(budget.take(start + Duration::from_secs(61)), Some(2));
}
