//! Step 1, sanitize: parse and validate the spec, keep only the descriptors it names, and shed
//! everything else inherited from the supervisor (environment, umask, signal state, cwd). Here
//! the mode is decided too: not root means rootless, whose spec must map exactly our own ids.

use std::ffi::OsString;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::stat::{umask, Mode};
use nix::unistd::{getegid, geteuid};

use crate::exec::Command;
use crate::sys;
use sandfork_ipc::jail::{JailSpec, SpecError};

/// What the later steps start from.
#[derive(Debug)]
pub struct Sanitized {
    /// The validated spec.
    pub spec: JailSpec,
    /// The final execve, converted up front so step 8 cannot fail on a bad string.
    pub command: Command,
    /// Not root (geteuid != 0): the jail is built without any host privilege. Step 3 writes a
    /// one-line map of our own ids itself, and step 2 runs after it (see `main.rs`).
    pub rootless: bool,
}

/// Why sanitizing failed.
#[derive(Debug, thiserror::Error)]
pub enum SanitizeError {
    #[error("usage: zygote-init <spec-json> (got {got} arguments)")]
    Usage { got: usize },
    #[error("the spec argument is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    JailSpec(#[from] SpecError),
    #[error("keep fd {fd} is not open: {errno}")]
    KeepFdClosed { fd: RawFd, errno: Errno },
    #[error("clearing close-on-exec on keep fd {fd}: {errno}")]
    KeepFdFlags { fd: RawFd, errno: Errno },
    #[error("close_range: {0}")]
    CloseRange(Errno),
    #[error("chdir /: {0}")]
    Chdir(Errno),
    #[error("resetting signal mask and dispositions: {0}")]
    Signals(Errno),
}

impl SanitizeError {
    /// A hint naming the missing kernel feature, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SanitizeError::CloseRange(Errno::ENOSYS) => Some("close_range needs Linux >= 5.9"),
            SanitizeError::KeepFdClosed { .. } => {
                Some("the supervisor must pass the control socket as fd 3")
            }
            _ => None,
        }
    }
}

/// Runs step 1 on the process arguments (program name first).
pub fn sanitize(args: impl IntoIterator<Item = OsString>) -> Result<Sanitized, SanitizeError> {
    let args: Vec<OsString> = args.into_iter().skip(1).collect();
    let [json] = args.as_slice() else {
        return Err(SanitizeError::Usage { got: args.len() });
    };
    let json = json.to_str().ok_or(SanitizeError::NotUtf8)?;
    let spec = JailSpec::parse(json)?;
    let rootless = !geteuid().is_root();
    if rootless {
        spec.validate_rootless(geteuid().as_raw(), getegid().as_raw())?;
    }
    let command = Command::prepare(&spec.exec)?;

    keep_only(&spec.keep_fds)?;
    for (name, _) in std::env::vars_os() {
        std::env::remove_var(name);
    }
    // Dirs created in the new root must be 0755 whatever the supervisor's umask is, or the
    // slot uids cannot traverse them.
    umask(Mode::from_bits_truncate(0o022));
    // No reference to the host's directory tree survives pivot_root through our cwd.
    nix::unistd::chdir("/").map_err(SanitizeError::Chdir)?;
    sys::reset_signals().map_err(SanitizeError::Signals)?;
    Ok(Sanitized {
        spec,
        command,
        rootless,
    })
}

/// Checks every keep fd is open (and inheritable), then closes every other descriptor >= 3.
fn keep_only(keep_fds: &[RawFd]) -> Result<(), SanitizeError> {
    for &fd in keep_fds {
        keep_inheritable(fd)?;
    }
    let mut keep: Vec<RawFd> = keep_fds.to_vec();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 3;
    for fd in keep {
        sys::close_range(next, fd - 1).map_err(SanitizeError::CloseRange)?;
        next = fd.saturating_add(1);
    }
    sys::close_range(next, RawFd::MAX).map_err(SanitizeError::CloseRange)
}

fn keep_inheritable(fd: RawFd) -> Result<(), SanitizeError> {
    sys::fd_is_open(fd).map_err(|errno| SanitizeError::KeepFdClosed { fd, errno })?;
    sys::clear_cloexec(fd).map_err(|errno| SanitizeError::KeepFdFlags { fd, errno })
}
