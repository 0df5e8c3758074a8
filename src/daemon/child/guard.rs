//! The supervisor's hold on a live child: its pidfd and its identity (slot).

use tracing::warn;

use super::REAP_TIMEOUT;
use crate::daemon::cgroup::SlotCgroup;
use crate::daemon::engine::identities::Identity;
use crate::daemon::sys::PidFd;

/// Owns a live child: kills it when dropped unless it has exited, and holds the slot until the
/// process is really gone, so its uid is never shared with the next run.
#[derive(Debug)]
pub(super) struct ChildGuard {
    pidfd: Option<PidFd>,
    slot: Option<Identity>,
}

impl ChildGuard {
    pub(super) fn new(pidfd: PidFd, slot: Identity) -> Self {
        ChildGuard {
            pidfd: Some(pidfd),
            slot: Some(slot),
        }
    }

    pub(super) fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            kill_child(pidfd);
        }
    }

    pub(super) fn cgroup(&self) -> Option<&SlotCgroup> {
        self.slot.as_ref().and_then(|s| s.cgroup())
    }

    pub(super) fn host_pid(&self) -> Option<i32> {
        self.pidfd
            .as_ref()
            .and_then(PidFd::host_pid)
            .filter(|&pid| pid > 0)
    }

    /// Whether the slot's cgroup has no task charged but the child itself: for a child that is
    /// PID 1 of its own pid namespace and seen exiting, every process it started is then gone,
    /// reaped and freed (a task is uncharged only then). False when unknown (no cgroup, an
    /// unreadable count).
    pub(super) fn alone_in_cgroup(&self) -> bool {
        self.cgroup()
            .is_some_and(|cgroup| cgroup.tasks().is_ok_and(|tasks| tasks <= 1))
    }

    pub(super) fn has_exited(&self) -> bool {
        self.pidfd.as_ref().is_none_or(PidFd::has_exited)
    }

    /// A second handle on the child's pidfd, to signal it from elsewhere (None once exited).
    pub(super) fn duplicate_pidfd(&self) -> Option<PidFd> {
        self.pidfd.as_ref().and_then(|p| p.duplicate().ok())
    }

    /// The zygote reported the exit: nothing left to kill.
    pub(super) fn exited(&mut self) {
        self.pidfd = None;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let slot = self.slot.take();
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        kill_child(&pidfd);
        // Keep the slot until the process has exited; then both go.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = tokio::time::timeout(REAP_TIMEOUT, pidfd.exited()).await;
                drop(slot);
            });
        }
    }
}

fn kill_child(pidfd: &PidFd) {
    if let Err(err) = pidfd.signal(libc::SIGKILL) {
        warn!(cause = %err, "killing a child failed");
    }
}
