//! Tenants: who a caller is, and what its policy lets it do.
//!
//! A tenant is declared in the config (`[[tenants]]`) with the SHA-256 hashes of its API keys
//! (never the keys), the Unix uids that act as it on the socket, and a [`PolicyConfig`]: ceilings
//! on a request's limits, the profiles it may use, and the admission numbers that
//! [`crate::daemon::policy::admission`] enforces (concurrency, rate, queue wait).
//!
//! Identity on the socket is the peer's uid (SO_PEERCRED): [`Tenants::identify`] maps it to a
//! tenant. Only proxy uids — the daemon's own and `proxy_uids` (the HTTP shim's user) — may say
//! "on behalf of tenant X"; the shim authenticates its remote callers with
//! [`Tenants::by_api_key`]. The daemon's own uid, unless a tenant claims it, is the built-in
//! tenant [`LOCAL_TENANT`] with the default policy, so a config without tenants just works for
//! the daemon's own user; every other uid must be listed.
//!
//! `sandfork keygen` prints a fresh key ([`generate_key`]) and the TOML fragment declaring its
//! tenant ([`keygen_fragment`]).

mod keys;
mod policy;

use keys::{decode_digest, digest_key, digests_equal};
pub use keys::{generate_key, hash_key, keygen_fragment};
use policy::check_policy;
pub use policy::{PolicyConfig, PolicyError, MAX_QUEUE_WAIT, MIN_MEMORY_MB};
use std::collections::{BTreeSet, HashMap};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::warn;

use crate::config::{Config, DEFAULT_PROFILE};

/// Name of the built-in tenant the daemon's own uid is served as when no tenant claims it.
pub const LOCAL_TENANT: &str = "local";
/// Prefix of generated API keys, so a leaked key is recognizable (e.g. by secret scanners).
pub const KEY_PREFIX: &str = "sf_";
/// Random bytes in a generated key (256 bits).
const KEY_BYTES: usize = 32;
/// Longest tenant name: names appear in logs, metrics and the shim's requests.
const MAX_NAME_LEN: usize = 64;
/// Refused "on behalf of" attempts logged per minute; the rest are counted and summarized.
const NOT_A_PROXY_LOGS_PER_MINUTE: u32 = 10;

/// One `[[tenants]]` entry of the config.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's name: what logs, metrics and the shim's "on behalf of" use.
    pub name: String,
    /// SHA-256 of each API key, 64 hex digits (lowercase as `sandfork keygen` writes them); the
    /// keys themselves are never stored, so a leaked config leaks no key.
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// Local users (SO_PEERCRED uids) that act as this tenant on the socket.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// What the tenant may do.
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// A tenant, validated and ready to be looked up.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// The tenant's name (unique).
    pub name: String,
    /// What the tenant may do.
    pub policy: PolicyConfig,
    /// Decoded SHA-256 digests of its keys, compared in constant time by [`Tenants::by_api_key`].
    key_hashes: Vec<[u8; 32]>,
    /// True for the built-in `local` tenant (not declared in the config).
    builtin: bool,
}

/// Why a config's tenants are refused. Each names the tenant and the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error(
        "tenant name {name:?} is invalid: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"
    )]
    BadName { name: String },
    #[error("tenant {name:?} is declared twice")]
    DuplicateName { name: String },
    #[error("tenant {tenant:?}: api_key_sha256 entry {hash:?} is not 64 hex digits (run `sandfork keygen` to make a key and its hash)")]
    BadHash { tenant: String, hash: String },
    #[error("tenants {first:?} and {second:?} share an API key hash")]
    SharedHash { first: String, second: String },
    #[error("uid {uid} is claimed by tenants {first:?} and {second:?}; a uid acts as one tenant at most")]
    SharedUid {
        uid: u32,
        first: String,
        second: String,
    },
    #[error("tenant {tenant:?}: profile {profile:?} in policy.profiles is not configured")]
    UnknownProfile { tenant: String, profile: String },
    #[error("tenant {tenant:?}: {reason}")]
    BadPolicy { tenant: String, reason: String },
}

/// Why a socket peer is refused. Every variant is a permission error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("permission denied: uid {uid} is not a tenant of this daemon (list it in a [[tenants]] entry's uids)")]
    UnknownUid { uid: u32 },
    #[error("permission denied: uid {uid} may not act on behalf of tenant {tenant:?}: only the daemon's own uid and proxy_uids may")]
    NotAProxy { uid: u32, tenant: String },
    #[error(
        "permission denied: uid {uid} acts on behalf of tenant {tenant:?}, which is not configured"
    )]
    UnknownTenant { uid: u32, tenant: String },
    #[error("permission denied: uid {uid} is a proxy and no tenant itself: it must name the tenant it acts for")]
    ProxyNeedsTenant { uid: u32 },
}

impl IdentityError {
    /// A short machine-readable name for the error, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            IdentityError::UnknownUid { .. } => "unknown_uid",
            IdentityError::NotAProxy { .. } => "not_a_proxy",
            IdentityError::UnknownTenant { .. } => "unknown_tenant",
            IdentityError::ProxyNeedsTenant { .. } => "proxy_needs_tenant",
        }
    }
}

impl Tenant {
    /// The built-in tenant for the daemon's own uid.
    fn local() -> Tenant {
        Tenant {
            name: LOCAL_TENANT.to_string(),
            policy: PolicyConfig::default(),
            key_hashes: Vec::new(),
            builtin: true,
        }
    }

    /// True for the built-in `local` tenant, which the config does not declare.
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }
}

/// Every tenant of a daemon (or of the shim), and the uid and key lookups.
#[derive(Debug)]
pub struct Tenants {
    /// Declared tenants, plus the built-in `local` when it is served.
    tenants: Vec<Arc<Tenant>>,
    /// Listed uid → index in `tenants`.
    by_uid: HashMap<u32, usize>,
    /// The daemon's own uid: always a proxy, and `local` unless a tenant claims it.
    daemon_uid: u32,
    /// Index of the tenant the daemon's own uid acts as.
    daemon_tenant: usize,
    /// Uids that may act on behalf of a tenant: the daemon's own and `proxy_uids`.
    proxies: BTreeSet<u32>,
    /// Keeps "not a proxy" warnings calm when a local user hammers the socket.
    not_a_proxy_log: Mutex<LogBudget>,
}

impl Tenants {
    /// Validates the config's tenants and builds the lookups. `daemon_uid` is the uid the
    /// daemon (or the shim, for its own lookups) runs as.
    ///
    /// Refused: invalid or duplicate names, hashes that are not 64 hex digits, a hash or a uid
    /// shared by two tenants, unknown profiles, impossible policy numbers. `local` is the
    /// built-in tenant's name unless the config declares a tenant of that name itself.
    pub fn from_config(config: &Config, daemon_uid: u32) -> Result<Tenants, TenantError> {
        let profiles: Vec<&str> = if config.profiles.is_empty() {
            vec![DEFAULT_PROFILE]
        } else {
            config.profiles.keys().map(String::as_str).collect()
        };
        let mut tenants = Vec::with_capacity(config.tenants.len() + 1);
        let mut by_uid = HashMap::new();
        let mut owner_of_hash: HashMap<[u8; 32], usize> = HashMap::new();
        for (index, declared) in config.tenants.iter().enumerate() {
            check_name(&declared.name)?;
            if tenants
                .iter()
                .any(|t: &Arc<Tenant>| t.name == declared.name)
            {
                return Err(TenantError::DuplicateName {
                    name: declared.name.clone(),
                });
            }
            check_policy(&declared.name, &declared.policy, &profiles)?;
            let mut key_hashes = Vec::with_capacity(declared.api_key_sha256.len());
            for hash in &declared.api_key_sha256 {
                let digest = decode_digest(hash).ok_or_else(|| TenantError::BadHash {
                    tenant: declared.name.clone(),
                    hash: hash.clone(),
                })?;
                match owner_of_hash.insert(digest, index) {
                    Some(other) if other != index => {
                        return Err(TenantError::SharedHash {
                            first: config.tenants[other].name.clone(),
                            second: declared.name.clone(),
                        })
                    }
                    _ => {}
                }
                key_hashes.push(digest);
            }
            for &uid in &declared.uids {
                match by_uid.insert(uid, index) {
                    Some(other) if other != index => {
                        return Err(TenantError::SharedUid {
                            uid,
                            first: config.tenants[other].name.clone(),
                            second: declared.name.clone(),
                        })
                    }
                    _ => {}
                }
            }
            tenants.push(Arc::new(Tenant {
                name: declared.name.clone(),
                policy: declared.policy.clone(),
                key_hashes,
                builtin: false,
            }));
        }
        let daemon_tenant = match by_uid.get(&daemon_uid) {
            Some(&index) => index,
            None => match tenants.iter().position(|t| t.name == LOCAL_TENANT) {
                Some(index) => index,
                None => {
                    tenants.push(Arc::new(Tenant::local()));
                    tenants.len() - 1
                }
            },
        };
        let mut proxies: BTreeSet<u32> = config.proxy_uids.iter().copied().collect();
        proxies.insert(daemon_uid);
        Ok(Tenants {
            tenants,
            by_uid,
            daemon_uid,
            daemon_tenant,
            proxies,
            not_a_proxy_log: Mutex::new(LogBudget::default()),
        })
    }

    /// The tenant holding `key`, if any. The key is hashed and the digest compared in constant
    /// time against every configured hash (no early exit), so timing tells nothing about which
    /// hash, or how much of one, matched.
    pub fn by_api_key(&self, key: &str) -> Option<&Tenant> {
        let digest = digest_key(key);
        let mut found = None;
        for tenant in self.tenants.iter().map(|t| &**t) {
            for hash in &tenant.key_hashes {
                if bool::from(digests_equal(&digest, hash)) {
                    found = Some(tenant);
                }
            }
        }
        found
    }

    /// The tenant called `name`, if it is configured (or is the built-in `local` being served).
    pub fn by_name(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().map(|t| &**t).find(|t| t.name == name)
    }

    /// Who a socket peer is.
    ///
    /// Without `on_behalf_of`: the tenant listing `peer_uid`, or for the daemon's own uid the
    /// tenant claiming it, else `local`. With it: the named tenant, but only for a proxy uid (the
    /// daemon's own or `proxy_uids`); any other peer saying it is refused (and logged), even if
    /// it names its own tenant, so a misconfigured client is noticed rather than half-trusted.
    pub fn identify(
        &self,
        peer_uid: u32,
        on_behalf_of: Option<&str>,
    ) -> Result<Arc<Tenant>, IdentityError> {
        match on_behalf_of {
            Some(name) if !self.is_proxy(peer_uid) => {
                self.log_not_a_proxy(peer_uid, name);
                Err(IdentityError::NotAProxy {
                    uid: peer_uid,
                    tenant: name.to_string(),
                })
            }
            Some(name) => self
                .tenants
                .iter()
                .find(|t| t.name == name)
                .cloned()
                .ok_or_else(|| IdentityError::UnknownTenant {
                    uid: peer_uid,
                    tenant: name.to_string(),
                }),
            None => {
                if let Some(&index) = self.by_uid.get(&peer_uid) {
                    Ok(Arc::clone(&self.tenants[index]))
                } else if peer_uid == self.daemon_uid {
                    Ok(Arc::clone(&self.tenants[self.daemon_tenant]))
                } else if self.is_proxy(peer_uid) {
                    Err(IdentityError::ProxyNeedsTenant { uid: peer_uid })
                } else {
                    Err(IdentityError::UnknownUid { uid: peer_uid })
                }
            }
        }
    }

    /// Whether `uid` may act on behalf of a tenant: the daemon's own uid or one of `proxy_uids`.
    pub fn is_proxy(&self, uid: u32) -> bool {
        self.proxies.contains(&uid)
    }

    /// Every tenant (the built-in `local` included when it is served), for metrics and admission.
    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter().map(|t| &**t)
    }

    fn log_not_a_proxy(&self, uid: u32, tenant: &str) {
        let mut budget = self
            .not_a_proxy_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = budget.take(Instant::now()) {
            warn!(
                peer_uid = uid,
                tenant,
                suppressed,
                "refused: a peer that is not a proxy tried to act on behalf of a tenant"
            );
        }
    }
}

/// A per-minute budget of log lines; the lines over budget are counted and reported with the
/// next line logged.
#[derive(Debug, Default)]
struct LogBudget {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    /// `Some(lines suppressed since the last logged one)` when this line may be logged.
    fn take(&mut self, now: Instant) -> Option<u64> {
        let new_window = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(60));
        if new_window {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged >= NOT_A_PROXY_LOGS_PER_MINUTE {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Checks config tenants without building the lookups (for `Config::validated`, so that both
/// the daemon and the shim refuse a bad config at load).
pub fn validate(config: &Config) -> Result<(), TenantError> {
    // Which uid the daemon runs as changes no verdict.
    Tenants::from_config(config, 0).map(drop)
}

/// Checks a tenant name: 1 to 64 ASCII letters, digits, `.`, `_` or `-` (names go into logs
/// and the shim's requests unescaped).
pub fn check_name(name: &str) -> Result<(), TenantError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(TenantError::BadName {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
