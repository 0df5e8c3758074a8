//! One error variant per step, its exit code, and the single line printed on failure.

use std::io::Write;

use crate::exec::ExecError;
use crate::pidns::{MonitorError, PidNsError};
use crate::rootfs::{MountError, PivotError};
use crate::sanitize::SanitizeError;
use crate::seccomp::SeccompError;
use crate::sources::SourceError;
use crate::userns::UserNsError;
use crate::uts::HostnameError;

/// Step 1 failed: arguments, spec JSON or validation, keep fds, process state.
pub const EXIT_SANITIZE: i32 = 101;
/// Step 2 failed: a bind source or device could not be cloned (missing, wrong type, old kernel).
pub const EXIT_SOURCES: i32 = 102;
/// Step 3 failed: unshare, the uid/gid map, or becoming root inside.
pub const EXIT_USER_NAMESPACE: i32 = 103;
/// Step 4 failed: forking PID 1 or tying it to the monitor.
pub const EXIT_PID_NAMESPACE: i32 = 104;
/// Step 5 failed: building the new root.
pub const EXIT_MOUNTS: i32 = 105;
/// Step 5 failed at its end: sethostname.
pub const EXIT_HOSTNAME: i32 = 106;
/// Step 6 failed: pivot_root, detaching the old root, read-only remount or cwd.
pub const EXIT_PIVOT_ROOT: i32 = 107;
/// Step 7 failed: NO_NEW_PRIVS or a seccomp filter.
pub const EXIT_SECCOMP: i32 = 108;
/// Step 8 failed: execve.
pub const EXIT_EXEC: i32 = 109;
/// The monitor could not wait for PID 1.
pub const EXIT_MONITOR: i32 = 110;

/// A failed step. `Display` is `"<step>: <error>"`.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("sanitize: {0}")]
    Sanitize(#[from] SanitizeError),
    #[error("sources: {0}")]
    Sources(#[from] SourceError),
    #[error("user namespace: {0}")]
    UserNamespace(#[from] UserNsError),
    #[error("pid namespace: {0}")]
    PidNamespace(#[from] PidNsError),
    #[error("mounts: {0}")]
    Mounts(#[from] MountError),
    #[error("hostname: {0}")]
    Hostname(#[from] HostnameError),
    #[error("pivot root: {0}")]
    PivotRoot(#[from] PivotError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("exec: {0}")]
    Exec(#[from] ExecError),
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
}

impl StepError {
    /// The documented exit code of the failed step.
    pub fn exit_code(&self) -> i32 {
        match self {
            StepError::Sanitize(_) => EXIT_SANITIZE,
            StepError::Sources(_) => EXIT_SOURCES,
            StepError::UserNamespace(_) => EXIT_USER_NAMESPACE,
            StepError::PidNamespace(_) => EXIT_PID_NAMESPACE,
            StepError::Mounts(_) => EXIT_MOUNTS,
            StepError::Hostname(_) => EXIT_HOSTNAME,
            StepError::PivotRoot(_) => EXIT_PIVOT_ROOT,
            StepError::Seccomp(_) => EXIT_SECCOMP,
            StepError::Exec(_) => EXIT_EXEC,
            StepError::Monitor(_) => EXIT_MONITOR,
        }
    }

    /// What to check, when the errno points at a missing kernel feature or a setup mistake.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StepError::Sanitize(e) => e.hint(),
            StepError::Sources(e) => e.hint(),
            StepError::UserNamespace(e) => e.hint(),
            StepError::PidNamespace(e) => e.hint(),
            StepError::Mounts(e) => e.hint(),
            StepError::PivotRoot(e) => e.hint(),
            StepError::Seccomp(e) => e.hint(),
            StepError::Exec(e) => e.hint(),
            StepError::Hostname(_) | StepError::Monitor(_) => None,
        }
    }

    /// The one line printed on failure: `zygote-init: <step>: <error>[ (hint: ...)]`.
    pub fn line(&self) -> String {
        let text = match self.hint() {
            Some(hint) => format!("zygote-init: {self} (hint: {hint})"),
            None => format!("zygote-init: {self}"),
        };
        // Exactly one line, whatever an error message contains.
        format!("{}\n", text.replace('\n', " "))
    }

    /// Writes [`StepError::line`] to stderr in one write(2), so it never interleaves.
    pub fn report(&self) {
        let _ = std::io::stderr().write_all(self.line().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::*;

    #[test]
    fn lines_carry_the_step_and_a_kernel_hint() {
        let err = StepError::from(UserNsError::Unshare(Errno::EPERM));
        assert_eq!(err.exit_code(), EXIT_USER_NAMESPACE);
        let line = err.line();
        assert!(
            line.starts_with("zygote-init: user namespace: unshare("),
            "{line}"
        );
        assert!(line.contains("EPERM"), "{line}");
        assert!(
            line.contains("hint: creating namespaces was refused"),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn exit_codes_are_distinct() {
        let mut codes = [
            EXIT_SANITIZE,
            EXIT_SOURCES,
            EXIT_USER_NAMESPACE,
            EXIT_PID_NAMESPACE,
            EXIT_MOUNTS,
            EXIT_HOSTNAME,
            EXIT_PIVOT_ROOT,
            EXIT_SECCOMP,
            EXIT_EXEC,
            EXIT_MONITOR,
        ];
        codes.sort_unstable();
        let len = codes.len();
        let mut unique = codes.to_vec();
        unique.dedup();
        assert_eq!(unique.len(), len);
        // Never confused with "killed by a signal" (128 + n) as reported by the monitor.
        assert!(codes.iter().all(|&c| c > 2 && c < 128));
    }
}
