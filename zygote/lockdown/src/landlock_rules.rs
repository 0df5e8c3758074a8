//! Step 6: landlock. The ruleset is built once per zygote ([`build`], at init) and enforced in
//! each child ([`restrict_self`]), which costs ~15 µs instead of ~250 µs for building it per
//! child (DESIGN §8).
//!
//! Rules (everything else the handled rights cover is denied):
//! - read + execute beneath `read_exec_paths` (the interpreter's executable and its ELF loader:
//!   what a profile with processes may execute; mapping libraries needs no execute right);
//! - read beneath `read_paths` (everything else the jail binds); read + write (no creation) on
//!   `read_write_paths`;
//! - every file right but execute beneath `work_parent`, the parent of the per-child tmpfs mount
//!   point (landlock ignores a rule on a directory that is later mounted over);
//! - TCP bind and connect handled with no port rule: all TCP denied (ABI ≥ 4);
//! - signals and abstract unix sockets scoped to the child's own domain (ABI ≥ 6).
//!
//! Older kernels get the best-effort subset and [`LandlockSummary`] says what that was.
//!
//! The inherited ruleset fd is a hazard: a child could add rules to it and every later child
//! would inherit them (DESIGN §8). Step 1 keeps it only for step 6, [`restrict_self`] closes it,
//! and the child seccomp filter denies the landlock syscalls.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    PathFdError, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, Scope, ABI,
};
use nix::errno::Errno;
use serde::Serialize;

use crate::config::InitConfig;
use crate::sys;

/// The newest landlock ABI this policy was written and tested against. Newer kernels get exactly
/// these rights (the landlock compatibility contract), older ones the supported subset.
pub const TARGET_ABI: ABI = ABI::V7;

/// `LANDLOCK_RESTRICT_SELF_LOG_SAME_EXEC_OFF` (ABI 7): untrusted code can trigger denials at
/// will, and every one would be an audit record (STYLE habit 10: logs a sandboxed program can
/// trigger must be bounded). Denials still fail with EACCES.
const LOG_SAME_EXEC_OFF: u32 = 1 << 0;

/// Building or enforcing the ruleset failed.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// `landlock_required` is set and the kernel has no landlock.
    #[error(
        "landlock is required but unavailable ({reason}); build the kernel with \
         CONFIG_SECURITY_LANDLOCK=y and list landlock in the lsm= boot parameter, \
         or set landlock_required=false"
    )]
    Unavailable { reason: String },
    /// A path of the config exists but cannot be opened as a rule anchor.
    #[error("opening {path} for a rule: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: PathFdError,
    },
    /// Without its work_parent no child could write to its own tmpfs.
    #[error("work_parent {path} does not exist")]
    WorkParentMissing { path: PathBuf },
    /// The landlock crate refused the ruleset or a rule.
    #[error("building the ruleset: {0}")]
    Ruleset(#[from] RulesetError),
    /// The ruleset fd was already consumed by an earlier enforcement in this process.
    #[error("restrict_self: the prebuilt ruleset was already consumed in this process")]
    Consumed,
    /// landlock_restrict_self needs no_new_privs (or CAP_SYS_ADMIN, gone after step 5).
    #[error("prctl(PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(#[source] Errno),
    /// The kernel refused to enforce the prebuilt ruleset.
    #[error("restrict_self: {0}")]
    RestrictSelf(#[source] Errno),
}

/// What init found and built; flattened into the library's report.
#[derive(Debug, Clone, Serialize)]
pub struct LandlockSummary {
    /// The kernel's landlock ABI version, 0 when it has none.
    pub landlock_abi: i32,
    /// Whether children will be restricted at all.
    pub landlock_enforced: bool,
    /// Why not, when they will not be.
    pub landlock_unavailable: Option<String>,
    /// The ABI the rules were written for ([`TARGET_ABI`]).
    pub landlock_target_abi: i32,
    /// Filesystem rights under landlock's control on this kernel (denied unless a rule grants them).
    pub landlock_handled_fs: Vec<String>,
    /// Network rights under control: with no port rules these are denied outright.
    pub landlock_handled_net: Vec<String>,
    /// IPC scopes enforced.
    pub landlock_scopes: Vec<String>,
    /// Flags passed to landlock_restrict_self: 1 = LOG_SAME_EXEC_OFF on ABI ≥ 7, so denials
    /// are not audit-logged.
    pub landlock_restrict_flags: u32,
    /// Configured paths that do not exist, so got no rule.
    pub skipped_paths: Vec<PathBuf>,
}

/// The ruleset as built at init.
#[derive(Debug)]
pub struct PreparedRuleset {
    /// The ruleset fd; `None` when landlock is unavailable and not required.
    pub fd: Option<OwnedFd>,
    /// Flags for landlock_restrict_self on this kernel.
    pub restrict_flags: u32,
    /// For the report.
    pub summary: LandlockSummary,
}

/// Read and execute: the interpreter's executable and its loader.
pub fn read_exec_rights() -> BitFlags<AccessFs> {
    AccessFs::from_read(TARGET_ABI)
}

/// Read only.
pub fn read_rights() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// Read and write existing files (O_TRUNC needs Truncate: `open("/dev/null", "w")`).
pub fn read_write_rights() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::WriteFile | AccessFs::Truncate
}

/// Everything on files and directories except execute. The tmpfs mounts are noexec, and
/// execve is refused by seccomp unless the profile allows processes, which may then execute
/// only beneath `read_exec_paths`: granting execute here would only weaken a layer.
pub fn work_rights() -> BitFlags<AccessFs> {
    AccessFs::from_all(TARGET_ABI) & !AccessFs::Execute
}

/// The kernel's ABI as the landlock crate's enum (0 = unsupported).
fn effective_abi(kernel_abi: i32) -> ABI {
    ABI::from(kernel_abi)
}

/// Build the ruleset for `config`. `kernel_abi` is the probe result ([`probe_abi`]), injected so
/// the availability decisions are testable on any kernel.
pub fn build(
    config: &InitConfig,
    kernel_abi: Result<i32, Errno>,
) -> Result<PreparedRuleset, LandlockError> {
    let abi = match kernel_abi {
        Ok(abi) if abi >= 1 => abi,
        Ok(abi) => return unavailable(config, format!("kernel reports landlock ABI {abi}")),
        Err(Errno::ENOSYS) => return unavailable(config, "kernel built without landlock".into()),
        Err(Errno::EOPNOTSUPP) => {
            return unavailable(config, "landlock disabled at boot (lsm=)".into())
        }
        Err(errno) => return unavailable(config, format!("landlock probe failed: {errno}")),
    };

    let fs = AccessFs::from_all(TARGET_ABI);
    let net = AccessNet::from_all(TARGET_ABI);
    let scopes = Scope::from_all(TARGET_ABI);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(fs)?
        .handle_access(net)?
        .scope(scopes)?
        .create()?;

    let mut skipped_paths = Vec::new();
    let groups: [(&[PathBuf], BitFlags<AccessFs>); 4] = [
        (&config.read_exec_paths, read_exec_rights()),
        (&config.read_paths, read_rights()),
        (&config.read_write_paths, read_write_rights()),
        (std::slice::from_ref(&config.work_parent), work_rights()),
    ];
    for (paths, rights) in groups {
        for path in paths {
            match anchor(path)? {
                Some(fd) => ruleset = ruleset.add_rule(PathBeneath::new(fd, rights))?,
                None if *path == config.work_parent => {
                    return Err(LandlockError::WorkParentMissing { path: path.clone() })
                }
                None => skipped_paths.push(path.clone()),
            }
        }
    }

    let effective = effective_abi(abi);
    let restrict_flags = if abi >= 7 { LOG_SAME_EXEC_OFF } else { 0 };
    let fd: Option<OwnedFd> = ruleset.into();
    let enforced = fd.is_some();
    if !enforced && config.landlock_required {
        return Err(LandlockError::Unavailable {
            reason: format!("ABI {abi} supports none of the requested rights"),
        });
    }
    Ok(PreparedRuleset {
        fd,
        restrict_flags,
        summary: LandlockSummary {
            landlock_abi: abi,
            landlock_enforced: enforced,
            landlock_unavailable: None,
            landlock_target_abi: TARGET_ABI as i32,
            landlock_handled_fs: (fs & AccessFs::from_all(effective))
                .iter()
                .map(|right| format!("{right:?}"))
                .collect(),
            landlock_handled_net: (net & AccessNet::from_all(effective))
                .iter()
                .map(|right| format!("{right:?}"))
                .collect(),
            landlock_scopes: (scopes & Scope::from_all(effective))
                .iter()
                .map(|scope| format!("{scope:?}"))
                .collect(),
            landlock_restrict_flags: restrict_flags,
            skipped_paths,
        },
    })
}

/// Open `path` as a rule anchor, or `None` when it does not exist.
fn anchor(path: &Path) -> Result<Option<PathFd>, LandlockError> {
    match PathFd::new(path) {
        Ok(fd) => Ok(Some(fd)),
        Err(PathFdError::OpenCall { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(source) => Err(LandlockError::Path {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn unavailable(config: &InitConfig, reason: String) -> Result<PreparedRuleset, LandlockError> {
    if config.landlock_required {
        return Err(LandlockError::Unavailable { reason });
    }
    Ok(PreparedRuleset {
        fd: None,
        restrict_flags: 0,
        summary: LandlockSummary {
            landlock_abi: 0,
            landlock_enforced: false,
            landlock_unavailable: Some(reason),
            landlock_target_abi: TARGET_ABI as i32,
            landlock_handled_fs: Vec::new(),
            landlock_handled_net: Vec::new(),
            landlock_scopes: Vec::new(),
            landlock_restrict_flags: 0,
            skipped_paths: Vec::new(),
        },
    })
}

/// Ask the running kernel for its landlock ABI.
pub fn probe_abi() -> Result<i32, Errno> {
    sys::landlock_abi_version()
}

/// Enforce the prebuilt ruleset on the calling (single-threaded) child and close its fd.
pub fn restrict_self(ruleset: OwnedFd, flags: u32) -> Result<(), LandlockError> {
    // Needed without CAP_SYS_ADMIN (gone since step 5); already set in a real zygote.
    nix::sys::prctl::set_no_new_privs().map_err(LandlockError::NoNewPrivs)?;
    sys::landlock_restrict_self(ruleset.as_fd(), flags).map_err(LandlockError::RestrictSelf)?;
    drop(ruleset);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(required: bool) -> InitConfig {
        InitConfig {
            read_exec_paths: vec!["/usr".into(), "/does/not/exist".into()],
            read_paths: vec![],
            read_write_paths: vec!["/dev/null".into()],
            work_parent: "/tmp".into(),
            landlock_required: required,
            processes: false,
        }
    }

    #[test]
    fn missing_landlock_fails_only_when_required() {
        let err = build(&config(true), Err(Errno::ENOSYS)).unwrap_err();
        assert!(matches!(err, LandlockError::Unavailable { .. }), "{err}");
        let prepared = build(&config(false), Err(Errno::EOPNOTSUPP)).unwrap();
        assert!(prepared.fd.is_none());
        assert!(!prepared.summary.landlock_enforced);
        assert!(prepared.summary.landlock_unavailable.is_some());
    }

    #[test]
    fn a_missing_work_parent_is_an_error_not_a_skipped_path() {
        let Ok(abi) = probe_abi() else {
            println!("SKIPPED: a_missing_work_parent_is_an_error: no landlock here");
            return;
        };
        let mut config = config(true);
        config.work_parent = "/does/not/exist/sandbox".into();
        let err = build(&config, Ok(abi)).unwrap_err();
        assert!(
            matches!(err, LandlockError::WorkParentMissing { .. }),
            "{err}"
        );
    }

    #[test]
    fn rights_never_grant_execute_in_the_work_dir() {
        assert!(!work_rights().contains(AccessFs::Execute));
        assert!(work_rights().contains(AccessFs::MakeReg | AccessFs::RemoveFile));
        assert!(read_exec_rights().contains(AccessFs::Execute));
        assert!(!read_write_rights().contains(AccessFs::MakeReg));
    }

    #[test]
    fn builds_on_this_kernel_and_reports_skipped_paths() {
        let abi = match probe_abi() {
            Ok(abi) => abi,
            Err(errno) => {
                println!("SKIPPED: this kernel has no landlock ({errno})");
                return;
            }
        };
        let prepared = build(&config(true), Ok(abi)).unwrap();
        assert!(prepared.fd.is_some());
        assert_eq!(prepared.summary.landlock_abi, abi);
        assert_eq!(
            prepared.summary.skipped_paths,
            [PathBuf::from("/does/not/exist")]
        );
        if abi >= 4 {
            assert_eq!(prepared.summary.landlock_handled_net.len(), 2);
        }
    }
}
