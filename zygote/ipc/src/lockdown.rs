//! The two inputs of the child lockdown: [`InitConfig`] (once per zygote) and [`ChildParams`] (once per
//! child), as the JSON the Python zygote passes through the lockdown library's C ABI. Unknown
//! fields are rejected: a misspelled limit must fail loudly, not be ignored. The supervisor
//! writes `InitConfig` (in [`crate::zygote::ZygoteConfig`]) and the rlimits of `ChildParams` (in
//! [`crate::zygote::SpawnRequest`]); the zygote adds the descriptors and the work dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `sandfork_lockdown_init` receives: the filesystem view every child of this zygote gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// Read and execute: the interpreter's executable and its ELF loader (the only files a run of
    /// a profile with processes may execute).
    #[serde(default)]
    pub read_exec_paths: Vec<PathBuf>,
    /// Read only: everything else the jail binds (library directories, /etc/ld.so.cache) and
    /// devices such as /dev/urandom.
    #[serde(default)]
    pub read_paths: Vec<PathBuf>,
    /// Read and write, no creation: devices such as /dev/null.
    #[serde(default)]
    pub read_write_paths: Vec<PathBuf>,
    /// Parent of the per-child tmpfs mount point. The read/write/create rule goes here and not on
    /// the mount point itself, because landlock ignores a rule on a directory that is later
    /// mounted over (DESIGN §8).
    pub work_parent: PathBuf,
    /// Fail init when the kernel has no landlock, instead of running children without it.
    #[serde(default = "landlock_required_default")]
    pub landlock_required: bool,
    /// The profile lets a run start processes: children get the `child_processes` seccomp
    /// filter instead of `child` (clone without namespace flags, exec, wait). Landlock decides
    /// what may be executed: only files beneath `read_exec_paths`.
    #[serde(default)]
    pub processes: bool,
}

fn landlock_required_default() -> bool {
    true
}

/// What `sandfork_child_lockdown` receives: this run's fds, work dir, identity and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildParams {
    /// Fds that survive step 1 (stdin, stdout, stderr, the control socket, the run's memfds).
    pub keep_fds: Vec<i32>,
    /// Mount point of the run's tmpfs; must lie inside the init config's `work_parent`.
    pub work_dir: PathBuf,
    /// Size limit of the tmpfs (the run's only writable storage).
    pub tmpfs_bytes: u64,
    /// The slot's uid inside the zygote's user namespace; never 0 (but see `rootless`).
    pub uid: u32,
    /// The slot's gid inside the zygote's user namespace; never 0 (but see `rootless`).
    pub gid: u32,
    /// Rootless mode: the zygote's user namespace maps only the daemon's own ids (as 0), so
    /// `uid` and `gid` must be 0 and step 5 drops every capability instead of changing ids.
    #[serde(default)]
    pub rootless: bool,
    /// Step 4's limits.
    pub rlimits: RlimitParams,
    /// A profile with processes: step 2 also mounts a private tmpfs here (`tmpfs_bytes`,
    /// noexec), the target of the jail's `/dev/shm` link, for POSIX shared memory and
    /// semaphores (multiprocessing). Must lie inside `work_parent` and outside `work_dir`.
    #[serde(default)]
    pub shm_dir: Option<PathBuf>,
}

/// Resource limits applied in step 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlimitParams {
    /// RLIMIT_CPU soft limit; the hard limit is one second more so SIGXCPU (reported as
    /// `cpu_limit`) arrives before SIGKILL.
    pub cpu_seconds: u64,
    /// RLIMIT_FSIZE: largest file the run may write.
    pub fsize_bytes: u64,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_NPROC: threads count against it (new processes are refused by seccomp anyway).
    pub nproc: u64,
    /// RLIMIT_AS, only where no memory cgroup is available (it also counts untouched
    /// reservations, which numpy and thread stacks make large).
    #[serde(default)]
    pub as_bytes: Option<u64>,
}

/// A child parameter that cannot be honoured; reported as step 100.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// The JSON does not parse or does not match [`ChildParams`].
    #[error("bad params json: {0}")]
    Json(#[from] serde_json::Error),
    /// Running as uid/gid 0 of the zygote's namespace would keep every capability.
    #[error("uid {uid} / gid {gid}: the child must not stay root in its namespace")]
    Root { uid: u32, gid: u32 },
    /// Rootless children stay uid/gid 0: the namespace maps no other id.
    #[error(
        "uid {uid} / gid {gid}: a rootless child keeps uid/gid 0 (its namespace maps no other id)"
    )]
    RootlessIds { uid: u32, gid: u32 },
    /// A negative number in keep_fds.
    #[error("keep_fds contains {fd}, which is not an fd number")]
    NegativeFd { fd: i32 },
    /// The work dir is not below the directory the landlock rule covers, so the run could not
    /// write to its own tmpfs.
    #[error("work_dir {work_dir} is not inside work_parent {work_parent}")]
    WorkDirOutsideParent {
        work_dir: PathBuf,
        work_parent: PathBuf,
    },
    /// Relative paths would depend on the zygote's cwd.
    #[error("work_dir {work_dir} is not an absolute path")]
    RelativeWorkDir { work_dir: PathBuf },
    /// The shared-memory dir must be a place of its own below the landlock rule, not the work
    /// dir or anything in it (its files would come back as output files).
    #[error("shm_dir {shm_dir} must be inside work_parent {work_parent} and outside work_dir")]
    ShmDirPlacement {
        shm_dir: PathBuf,
        work_parent: PathBuf,
    },
}

impl ChildParams {
    /// Parse the JSON the zygote passes to `sandfork_child_lockdown`.
    pub fn from_json(json: &str) -> Result<Self, ParamsError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Check what can be checked before anything irreversible happens.
    pub fn validate(&self, work_parent: &Path) -> Result<(), ParamsError> {
        if self.rootless {
            if self.uid != 0 || self.gid != 0 {
                return Err(ParamsError::RootlessIds {
                    uid: self.uid,
                    gid: self.gid,
                });
            }
        } else if self.uid == 0 || self.gid == 0 {
            return Err(ParamsError::Root {
                uid: self.uid,
                gid: self.gid,
            });
        }
        if let Some(&fd) = self.keep_fds.iter().find(|fd| **fd < 0) {
            return Err(ParamsError::NegativeFd { fd });
        }
        if !self.work_dir.is_absolute() {
            return Err(ParamsError::RelativeWorkDir {
                work_dir: self.work_dir.clone(),
            });
        }
        if self.work_dir == work_parent || !self.work_dir.starts_with(work_parent) {
            return Err(ParamsError::WorkDirOutsideParent {
                work_dir: self.work_dir.clone(),
                work_parent: work_parent.to_path_buf(),
            });
        }
        if let Some(shm_dir) = &self.shm_dir {
            let placed = shm_dir.is_absolute()
                && shm_dir != work_parent
                && shm_dir.starts_with(work_parent)
                && !shm_dir.starts_with(&self.work_dir)
                && !self.work_dir.starts_with(shm_dir);
            if !placed {
                return Err(ParamsError::ShmDirPlacement {
                    shm_dir: shm_dir.clone(),
                    work_parent: work_parent.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: &str = r#"{"keep_fds": [0,1,2,3], "work_dir": "/sandbox/work",
        "tmpfs_bytes": 67108864, "uid": 5, "gid": 5,
        "rlimits": {"cpu_seconds": 15, "fsize_bytes": 67108864, "nofile": 256, "nproc": 64,
                    "as_bytes": null}}"#;

    #[test]
    fn parses_the_documented_params() {
        let params = ChildParams::from_json(PARAMS).unwrap();
        assert_eq!(params.keep_fds, [0, 1, 2, 3]);
        assert_eq!(params.rlimits.as_bytes, None);
        params.validate(Path::new("/sandbox")).unwrap();
    }

    #[test]
    fn parses_the_documented_config() {
        let config: InitConfig = serde_json::from_str(
            r#"{"read_exec_paths": ["/root/.pyenv/versions/3.11.7", "/usr/lib/x86_64-linux-gnu"],
                "read_paths": ["/etc/ld.so.cache"], "read_write_paths": ["/dev/null"],
                "work_parent": "/sandbox", "landlock_required": true}"#,
        )
        .unwrap();
        assert!(config.landlock_required);
        assert_eq!(config.work_parent, Path::new("/sandbox"));
    }

    #[test]
    fn rejects_unknown_fields_and_root() {
        let typo = PARAMS.replace("nofile", "no_file");
        assert!(matches!(
            ChildParams::from_json(&typo),
            Err(ParamsError::Json(_))
        ));
        let root = ChildParams::from_json(&PARAMS.replace("\"uid\": 5", "\"uid\": 0")).unwrap();
        assert!(matches!(
            root.validate(Path::new("/sandbox")),
            Err(ParamsError::Root { uid: 0, .. })
        ));
    }

    #[test]
    fn rootless_children_keep_uid_0_and_only_they() {
        let rootless = PARAMS.replace(
            "\"uid\": 5, \"gid\": 5",
            "\"uid\": 0, \"gid\": 0, \"rootless\": true",
        );
        let params = ChildParams::from_json(&rootless).unwrap();
        assert!(params.rootless);
        params.validate(Path::new("/sandbox")).unwrap();
        let slot =
            ChildParams::from_json(&PARAMS.replace("\"gid\": 5", "\"gid\": 5, \"rootless\": true"))
                .unwrap();
        assert!(matches!(
            slot.validate(Path::new("/sandbox")),
            Err(ParamsError::RootlessIds { uid: 5, gid: 5 })
        ));
        assert!(
            !ChildParams::from_json(PARAMS).unwrap().rootless,
            "off by default"
        );
    }

    #[test]
    fn the_shm_dir_is_its_own_place_below_work_parent() {
        let with = |dir: &str| {
            let json = PARAMS.replace("\"uid\": 5", &format!("\"shm_dir\": \"{dir}\", \"uid\": 5"));
            ChildParams::from_json(&json).unwrap()
        };
        with("/sandbox/shm")
            .validate(Path::new("/sandbox"))
            .unwrap();
        for bad in [
            "/sandbox/work/shm",
            "/sandbox",
            "/dev/shm",
            "/sandbox/work",
            "shm",
        ] {
            assert!(
                matches!(
                    with(bad).validate(Path::new("/sandbox")),
                    Err(ParamsError::ShmDirPlacement { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(ChildParams::from_json(PARAMS).unwrap().shm_dir, None);
    }

    #[test]
    fn work_dir_must_be_below_work_parent() {
        let params = ChildParams::from_json(PARAMS).unwrap();
        assert!(matches!(
            params.validate(Path::new("/elsewhere")),
            Err(ParamsError::WorkDirOutsideParent { .. })
        ));
        assert!(matches!(
            params.validate(Path::new("/sandbox/work")),
            Err(ParamsError::WorkDirOutsideParent { .. })
        ));
    }
}
