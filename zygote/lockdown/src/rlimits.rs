//! Step 4: resource limits, set while the child can still raise hard limits (it is root in its
//! namespace until step 5); afterwards the run can only lower them.

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};

use crate::config::RlimitParams;

/// Step 4 failed.
#[derive(Debug, thiserror::Error)]
#[error("setrlimit({resource:?}, soft={soft}, hard={hard}): {source}")]
pub struct RlimitsError {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
    #[source]
    pub source: Errno,
}

/// The (resource, soft, hard) triples for a run, in the order they are applied.
pub fn limits(params: &RlimitParams) -> Vec<(Resource, u64, u64)> {
    let mut limits = vec![
        // The hard limit is one second above the soft one: SIGXCPU first (reported as
        // cpu_limit), SIGKILL only if the run ignores it.
        (
            Resource::RLIMIT_CPU,
            params.cpu_seconds,
            params.cpu_seconds.saturating_add(1),
        ),
        (
            Resource::RLIMIT_FSIZE,
            params.fsize_bytes,
            params.fsize_bytes,
        ),
        (Resource::RLIMIT_NOFILE, params.nofile, params.nofile),
        (Resource::RLIMIT_NPROC, params.nproc, params.nproc),
        (Resource::RLIMIT_CORE, 0, 0),
    ];
    if let Some(bytes) = params.as_bytes {
        limits.push((Resource::RLIMIT_AS, bytes, bytes));
    }
    limits
}

/// Apply every limit of `params`.
pub fn apply(params: &RlimitParams) -> Result<(), RlimitsError> {
    for (resource, soft, hard) in limits(params) {
        setrlimit(resource, soft, hard).map_err(|source| RlimitsError {
            resource,
            soft,
            hard,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_hard_limit_is_one_second_above_soft_and_as_is_optional() {
        let mut params = RlimitParams {
            cpu_seconds: 15,
            fsize_bytes: 1 << 26,
            nofile: 256,
            nproc: 64,
            as_bytes: None,
        };
        let limits = limits(&params);
        assert_eq!(limits[0], (Resource::RLIMIT_CPU, 15, 16));
        assert!(limits.contains(&(Resource::RLIMIT_CORE, 0, 0)));
        assert!(!limits.iter().any(|(r, _, _)| *r == Resource::RLIMIT_AS));
        params.as_bytes = Some(1 << 30);
        assert!(super::limits(&params).contains(&(Resource::RLIMIT_AS, 1 << 30, 1 << 30)));
    }
}
