//! Step 8, exec: replace zygote-init (PID 1 of the jail) with the interpreter.

use std::ffi::CString;
use std::path::PathBuf;

use nix::errno::Errno;

use sandfork_ipc::jail::{ExecSpec, SpecError};

/// The final `execve`, with every string already converted (so it cannot fail on one).
#[derive(Debug)]
pub struct Command {
    /// Program path inside the new root.
    path: CString,
    /// argv, argv[0] included.
    argv: Vec<CString>,
    /// `NAME=value` strings: the whole environment.
    env: Vec<CString>,
}

/// `execve` returned.
#[derive(Debug, thiserror::Error)]
#[error("execve {path:?}: {errno}")]
pub struct ExecError {
    /// The program that could not be executed.
    pub path: PathBuf,
    /// Why.
    pub errno: Errno,
}

impl ExecError {
    /// What usually causes this errno inside the jail.
    pub fn hint(&self) -> Option<&'static str> {
        match self.errno {
            Errno::ENOENT => Some(
                "bind the interpreter's real prefix, the directories of its shared libraries, \
                 /etc/ld.so.cache and the ELF interpreter's symlink chain (/lib64 -> usr/lib64)",
            ),
            Errno::EACCES => Some(
                "host root is unmapped in the jail: the interpreter and its libraries must be \
                 world-executable, and not on a noexec mount",
            ),
            _ => None,
        }
    }
}

impl Command {
    /// Converts the validated exec spec for `execve`.
    pub fn prepare(spec: &ExecSpec) -> Result<Command, SpecError> {
        let nul = |field: &'static str, what: &str| SpecError::Nul {
            field,
            what: format!("{what:?}"),
        };
        let path = CString::new(spec.path.as_os_str().as_encoded_bytes())
            .map_err(|_| nul("exec.path", &spec.path.to_string_lossy()))?;
        let argv = spec
            .argv
            .iter()
            .map(|arg| CString::new(arg.as_str()).map_err(|_| nul("exec.argv", arg)))
            .collect::<Result<_, _>>()?;
        let env = spec
            .env
            .iter()
            .map(|(name, value)| {
                CString::new(format!("{name}={value}")).map_err(|_| nul("exec.env", name))
            })
            .collect::<Result<_, _>>()?;
        Ok(Command { path, argv, env })
    }

    /// `execve`s the program; returns only on failure.
    pub fn exec(&self) -> ExecError {
        let errno = match nix::unistd::execve(&self.path, &self.argv, &self.env) {
            Err(errno) => errno,
            Ok(never) => match never {},
        };
        ExecError {
            path: PathBuf::from(self.path.to_string_lossy().into_owned()),
            errno,
        }
    }
}
