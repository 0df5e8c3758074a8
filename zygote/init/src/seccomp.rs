//! Step 7, seccomp: `PR_SET_NO_NEW_PRIVS`, then the zygote's seccomp programs (compiled by
//! `sandfork-lockdown`), installed in order. Filters survive `execve` and `fork`, so they confine
//! the zygote and every child it forks.

use nix::errno::Errno;
use nix::sys::prctl;

use sandfork_lockdown::seccomp as lockdown;

/// Why locking down failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(Errno),
    #[error("building the zygote filters: {0}")]
    Build(#[source] lockdown::SeccompError),
    #[error("installing zygote filter {index}: {source}")]
    Install {
        index: usize,
        #[source]
        source: lockdown::SeccompError,
    },
}

impl SeccompError {
    /// A hint naming the missing kernel feature, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SeccompError::Install { .. } => {
                Some("seccomp filters need CONFIG_SECCOMP_FILTER (and NO_NEW_PRIVS set first)")
            }
            _ => None,
        }
    }
}

/// Runs step 7. With `install_filters` false only NO_NEW_PRIVS is set (debugging a filter).
pub fn lock(install_filters: bool) -> Result<(), SeccompError> {
    prctl::set_no_new_privs().map_err(SeccompError::NoNewPrivs)?;
    if !install_filters {
        return Ok(());
    }
    let programs = lockdown::zygote_filters().map_err(SeccompError::Build)?;
    for (index, program) in programs.iter().enumerate() {
        lockdown::apply(program).map_err(|source| SeccompError::Install { index, source })?;
    }
    Ok(())
}
