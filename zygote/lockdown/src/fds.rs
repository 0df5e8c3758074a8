//! Step 1: close every fd the run was not given.
//!
//! The zygote's own fds (its control socket, files its imports left open) must not leak into
//! untrusted code. The prebuilt landlock ruleset fd is the one exception: step 6 consumes it and
//! closes it before user code runs.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, Resource};

use crate::sys;

/// Step 1 failed.
#[derive(Debug, thiserror::Error)]
pub enum FdsError {
    /// close_range failed for a reason other than an old kernel.
    #[error("close_range({first}, {last}): {source}")]
    CloseRange {
        first: u32,
        last: u32,
        #[source]
        source: Errno,
    },
    /// The NOFILE limit, needed for the fallback loop on kernels without close_range, is unreadable.
    #[error("getrlimit(NOFILE) for the close fallback: {0}")]
    NofileLimit(#[source] Errno),
}

/// The inclusive fd ranges to close so that exactly `keep` (plus `extra`) stays open.
pub fn gaps(keep: &[RawFd], extra: Option<RawFd>) -> Vec<(u32, u32)> {
    let mut kept: Vec<u32> = keep
        .iter()
        .copied()
        .chain(extra)
        .filter_map(|fd| u32::try_from(fd).ok())
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut ranges = Vec::with_capacity(kept.len() + 1);
    let mut next = 0u32;
    for fd in kept {
        if fd > next {
            ranges.push((next, fd - 1));
        }
        next = fd.saturating_add(1);
        if fd == u32::MAX {
            return ranges;
        }
    }
    ranges.push((next, u32::MAX));
    ranges
}

/// Close every fd except `keep` and `ruleset_fd`.
pub fn close_all_except(keep: &[RawFd], ruleset_fd: Option<RawFd>) -> Result<(), FdsError> {
    for (first, last) in gaps(keep, ruleset_fd) {
        match sys::close_range(first, last) {
            Ok(()) => {}
            // Kernels before 5.9: close one by one up to the hard NOFILE limit.
            Err(Errno::ENOSYS) => close_each(first, last)?,
            Err(source) => {
                return Err(FdsError::CloseRange {
                    first,
                    last,
                    source,
                })
            }
        }
    }
    Ok(())
}

fn close_each(first: u32, last: u32) -> Result<(), FdsError> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(FdsError::NofileLimit)?;
    let end = u64::from(last).min(hard.saturating_sub(1));
    for fd in u64::from(first)..=end {
        if let Ok(fd) = RawFd::try_from(fd) {
            // EBADF for fds that were never open is the common case and means nothing.
            let _ = nix::unistd::close(fd);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_cover_everything_but_the_kept_fds() {
        assert_eq!(
            gaps(&[0, 1, 2, 3], Some(7)),
            [(4, 6), (8, u32::MAX)].to_vec()
        );
        assert_eq!(gaps(&[], None), [(0, u32::MAX)].to_vec());
        assert_eq!(gaps(&[2, 2, 0], None), [(1, 1), (3, u32::MAX)].to_vec());
        assert_eq!(gaps(&[5, -1], Some(5)), [(0, 4), (6, u32::MAX)].to_vec());
    }
}
