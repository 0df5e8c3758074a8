//! Step 4, pid namespace: fork the process that becomes PID 1 of the new pid namespace (and
//! later the zygote); the parent stays behind as a tiny monitor.
//!
//! The monitor is what the supervisor spawned and watches: it waits for PID 1 and exits with
//! PID 1's status (128 + signal if it was killed). PID 1 has `PR_SET_PDEATHSIG(SIGKILL)` tied to
//! the monitor, so killing the monitor kills PID 1, and with it every process of the namespace.

use std::os::fd::{AsFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{getpid, ForkResult, Pid};

use crate::sys;

/// Which side of the fork this process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The original process: must call [`monitor`] with PID 1's host pid.
    Monitor(Pid),
    /// PID 1 of the new pid namespace: goes on building the jail.
    Pid1,
}

/// Why forking PID 1 failed.
#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    #[error("pidfd_open(self): {0}")]
    PidfdOpen(Errno),
    #[error("fork: {0}")]
    Fork(Errno),
    #[error("PR_SET_PDEATHSIG: {0}")]
    Pdeathsig(Errno),
    #[error("polling the monitor's pidfd: {0}")]
    Poll(Errno),
    #[error("the monitor exited before PID 1 was tied to it")]
    MonitorGone,
}

impl PidNsError {
    /// A hint naming the missing kernel feature, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            PidNsError::PidfdOpen(Errno::ENOSYS) => Some("pidfd_open needs Linux >= 5.3"),
            PidNsError::Fork(Errno::ENOMEM) => {
                Some("the pid namespace's init died or its pid allocation failed")
            }
            _ => None,
        }
    }
}

/// Why the monitor could not wait for PID 1.
#[derive(Debug, thiserror::Error)]
#[error("waitpid {pid}: {errno}")]
pub struct MonitorError {
    /// PID 1's pid in the monitor's namespace.
    pub pid: Pid,
    /// Why.
    pub errno: Errno,
}

/// Runs step 4: forks; returns the role of the calling process.
pub fn fork_pid1() -> Result<Role, PidNsError> {
    // PID 1 cannot see its parent (getppid() is 0 across a pid namespace), so it checks the
    // monitor through a pidfd opened here, before the fork.
    let monitor = sys::pidfd_open(getpid()).map_err(PidNsError::PidfdOpen)?;
    match sys::fork().map_err(PidNsError::Fork)? {
        ForkResult::Parent { child } => Ok(Role::Monitor(child)),
        ForkResult::Child => {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(PidNsError::Pdeathsig)?;
            // If the monitor died before the line above, no signal will ever come: check.
            let mut fds = [PollFd::new(monitor.as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::ZERO).map_err(PidNsError::Poll)?;
            if ready != 0 {
                return Err(PidNsError::MonitorGone);
            }
            Ok(Role::Pid1)
        }
    }
}

/// The monitor: closes the keep fds (only PID 1 holds the control socket, so the supervisor sees
/// EOF when PID 1 dies), waits for PID 1 and returns the exit code to pass on.
pub fn monitor(pid1: Pid, keep_fds: &[RawFd]) -> Result<i32, MonitorError> {
    for &fd in keep_fds {
        let _ = sys::close_range(fd, fd);
    }
    let status = wait_for_exit(pid1).map_err(|errno| MonitorError { pid: pid1, errno })?;
    Ok(exit_code(status))
}

/// The shell convention: the exit status, or 128 + the signal that killed the process.
pub fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 128,
    }
}

/// Waits until `pid` has exited or was killed (not merely stopped), retrying on EINTR.
pub fn wait_for_exit(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(status),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

/// "exited with 3", "killed by SIGKILL", for error messages.
pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let pid = Pid::from_raw(7);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), 3);
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            137
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGSYS, true)),
            159
        );
        assert_eq!(describe(WaitStatus::Exited(pid, 1)), "exited with 1");
    }
}
