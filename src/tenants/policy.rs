//! A tenant's policy: its ceilings on a run's limits, the profiles it may use, and the
//! admission numbers; and how a request's limits are decided from the profile, the ceilings and
//! the request.

use sandfork_protocol::LimitsRequest;
use serde::Deserialize;

use super::{Tenant, TenantError};

/// The longest any run waits in a queue, whatever its policy says (config validation refuses
/// more; admission caps at it).
pub const MAX_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);
use crate::config::Limits;

/// A tenant's policy (`[tenants.policy]`).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Ceiling on a run's wall-clock limit; `None`: the profile's limit is the ceiling.
    pub max_timeout_ms: Option<u64>,
    /// Ceiling on a run's memory limit (MiB); `None`: the profile's.
    pub max_memory_mb: Option<u64>,
    /// Ceiling on a run's per-stream output cap (bytes); `None`: the profile's.
    pub max_output_bytes: Option<u64>,
    /// Profiles the tenant may use; empty means all of them.
    pub profiles: Vec<String>,
    /// Runs the tenant may have admitted at once, waiting for a slot or running: one tenant
    /// cannot fill the daemon's queues on its own.
    pub max_concurrent: u32,
    /// Sustained requests per second (token bucket refill rate).
    pub rate_per_sec: f64,
    /// Requests allowed at once above the rate (token bucket size).
    pub burst: u32,
    /// Longest a run waits for a slot before it ends as a queue timeout.
    pub max_queue_wait_ms: u64,
    /// Sessions the tenant may hold open at once (each holds a uid and a cgroup of the daemon's
    /// while it lives, busy or idle); 0: none.
    pub max_sessions: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_timeout_ms: None,
            max_memory_mb: None,
            max_output_bytes: None,
            profiles: Vec::new(),
            max_concurrent: 64,
            rate_per_sec: 1000.0,
            burst: 2000,
            max_queue_wait_ms: 10_000,
            max_sessions: 8,
        }
    }
}

/// The least memory a request may ask for, in MiB. A child is attached to its slot's cgroup
/// before it locks down, and a session's memory limit applies from then on: below this, the
/// interpreter is killed while it starts, before the caller's code could run.
pub const MIN_MEMORY_MB: u64 = 16;

/// Why a request does not fit its tenant's policy (the run is `rejected` with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("tenant {tenant:?} may not use profile {profile:?}")]
    ProfileNotAllowed { tenant: String, profile: String },
    #[error("{limit} must be positive")]
    NotPositive { limit: &'static str },
    #[error(
        "{limit} {asked} is below the floor of {floor}: the interpreter needs that much to start"
    )]
    BelowFloor {
        limit: &'static str,
        asked: u64,
        floor: u64,
    },
    #[error("{limit} {asked} exceeds tenant {tenant:?}'s ceiling of {ceiling}")]
    OverTenantCeiling {
        tenant: String,
        limit: &'static str,
        asked: u64,
        ceiling: u64,
    },
    #[error("{limit} {asked} exceeds the profile's ceiling of {ceiling}")]
    OverProfileCeiling {
        limit: &'static str,
        asked: u64,
        ceiling: u64,
    },
}

impl Tenant {
    /// Whether the tenant may run code under `profile`.
    pub fn allows_profile(&self, profile: &str) -> bool {
        self.policy.profiles.is_empty() || self.policy.profiles.iter().any(|p| p == profile)
    }

    /// The limits of one run: the profile's `limits`, capped by the tenant's ceilings, then
    /// lowered by the request. A request above either ceiling, or for a profile the tenant may not
    /// use, is refused with the reason.
    pub fn effective_limits(
        &self,
        profile: &str,
        limits: &Limits,
        request: &LimitsRequest,
    ) -> Result<Limits, PolicyError> {
        if !self.allows_profile(profile) {
            return Err(PolicyError::ProfileNotAllowed {
                tenant: self.name.clone(),
                profile: profile.to_string(),
            });
        }
        let mut out = *limits;
        out.timeout_ms = self.lower(
            "timeout_ms",
            request.timeout_ms,
            1,
            limits.timeout_ms,
            self.policy.max_timeout_ms,
        )?;
        out.memory_mb = self.lower(
            "memory_mb",
            request.memory_mb,
            MIN_MEMORY_MB,
            limits.memory_mb,
            self.policy.max_memory_mb,
        )?;
        out.output_bytes = self.lower(
            "output_bytes",
            request.output_bytes,
            1,
            limits.output_bytes,
            self.policy.max_output_bytes,
        )?;
        // An unset `cpu_seconds` is derived from `timeout_ms`, so it follows a lowered timeout.
        Ok(out)
    }

    /// One limit: `asked` (if any) must be positive, at least `floor` and within both ceilings.
    fn lower(
        &self,
        limit: &'static str,
        asked: Option<u64>,
        floor: u64,
        profile_ceiling: u64,
        tenant_ceiling: Option<u64>,
    ) -> Result<u64, PolicyError> {
        let ceiling = tenant_ceiling.map_or(profile_ceiling, |t| t.min(profile_ceiling));
        match asked {
            None => Ok(ceiling),
            Some(0) => Err(PolicyError::NotPositive { limit }),
            Some(asked) if asked < floor => Err(PolicyError::BelowFloor {
                limit,
                asked,
                floor,
            }),
            Some(asked) if asked <= ceiling => Ok(asked),
            Some(asked) => match tenant_ceiling {
                Some(tenant_ceiling) if tenant_ceiling < profile_ceiling => {
                    Err(PolicyError::OverTenantCeiling {
                        tenant: self.name.clone(),
                        limit,
                        asked,
                        ceiling: tenant_ceiling,
                    })
                }
                _ => Err(PolicyError::OverProfileCeiling {
                    limit,
                    asked,
                    ceiling: profile_ceiling,
                }),
            },
        }
    }
}

pub(super) fn check_policy(
    tenant: &str,
    policy: &PolicyConfig,
    profiles: &[&str],
) -> Result<(), TenantError> {
    let bad = |reason: &str| TenantError::BadPolicy {
        tenant: tenant.to_string(),
        reason: reason.to_string(),
    };
    if policy.max_concurrent == 0 {
        return Err(bad("policy.max_concurrent must be at least 1"));
    }
    if !(policy.rate_per_sec.is_finite() && policy.rate_per_sec > 0.0) {
        return Err(bad("policy.rate_per_sec must be a positive number"));
    }
    if policy.burst == 0 {
        return Err(bad("policy.burst must be at least 1"));
    }
    if policy.max_queue_wait_ms > MAX_QUEUE_WAIT.as_millis() as u64 {
        return Err(bad(
            "policy.max_queue_wait_ms must be at most 3600000 (one hour)",
        ));
    }
    for (name, value) in [
        ("policy.max_timeout_ms", policy.max_timeout_ms),
        ("policy.max_memory_mb", policy.max_memory_mb),
        ("policy.max_output_bytes", policy.max_output_bytes),
    ] {
        if value == Some(0) {
            return Err(bad(&format!("{name} must be positive")));
        }
    }
    if let Some(profile) = policy
        .profiles
        .iter()
        .find(|p| !profiles.contains(&p.as_str()))
    {
        return Err(TenantError::UnknownProfile {
            tenant: tenant.to_string(),
            profile: profile.clone(),
        });
    }
    Ok(())
}
