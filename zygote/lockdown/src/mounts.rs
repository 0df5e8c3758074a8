//! Step 2: a private mount namespace with a size-limited tmpfs as the working directory.
//!
//! The tmpfs is the run's only writable place; input files are written into it and output files
//! collected from it. It is mounted before the uid change (mounting needs CAP_SYS_ADMIN in the
//! zygote's user namespace) and before landlock (which forbids mount changes).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Step 2 failed.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    /// The child could not get its own mount namespace.
    #[error("unshare(CLONE_NEWNS): {0}")]
    Unshare(#[source] Errno),
    /// Mount events would otherwise propagate between the child and the zygote.
    #[error("making / recursively private: {0}")]
    MakePrivate(#[source] Errno),
    /// The tmpfs mount itself failed (missing mount point, bad size, no capability).
    #[error("mounting tmpfs on {path} ({data}): {source}")]
    Tmpfs {
        path: PathBuf,
        data: String,
        #[source]
        source: Errno,
    },
    /// The mount point exists but cannot become the cwd.
    #[error("chdir {path}: {source}")]
    Chdir {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// Flags of the per-run tmpfs.
///
/// MS_NOEXEC stays: ctypes callbacks do not need an executable file mapping. On this libffi
/// (Debian 12, 3.4.4) closures come from an anonymous read/write/exec mapping, and libffi's
/// temp-file fallback looks in TMPDIR, /tmp, /var/tmp, /dev/shm and $HOME, never the cwd. The
/// Python harness test runs `ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)()` under this flag.
pub const TMPFS_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The tmpfs option string for a run.
pub fn tmpfs_data(bytes: u64, uid: u32, gid: u32) -> String {
    format!("size={bytes},mode=0700,uid={uid},gid={gid}")
}

/// A profile with processes: mount the run's private shared-memory tmpfs on `shm_dir` (the
/// jail's `/dev/shm` links there), with the work dir's size and flags. Called after
/// [`mount_work_dir`], in the mount namespace it made. Its own mount, not a directory of the
/// work dir: shared-memory objects are no output files. Its pages are charged to the run's
/// memory cgroup like the work dir's.
pub fn mount_shm(shm_dir: &Path, bytes: u64, uid: u32, gid: u32) -> Result<(), MountsError> {
    mount_tmpfs(shm_dir, bytes, uid, gid)
}

/// Unshare the mount namespace, mount the run's tmpfs on `work_dir` and make it the cwd.
pub fn mount_work_dir(work_dir: &Path, bytes: u64, uid: u32, gid: u32) -> Result<(), MountsError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(MountsError::Unshare)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(MountsError::MakePrivate)?;
    mount_tmpfs(work_dir, bytes, uid, gid)?;
    nix::unistd::chdir(work_dir).map_err(|source| MountsError::Chdir {
        path: work_dir.to_path_buf(),
        source,
    })
}

/// One of the run's tmpfs mounts: `bytes` large, owned by the run, [`TMPFS_FLAGS`].
fn mount_tmpfs(path: &Path, bytes: u64, uid: u32, gid: u32) -> Result<(), MountsError> {
    let data = tmpfs_data(bytes, uid, gid);
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        TMPFS_FLAGS,
        Some(data.as_str()),
    )
    .map_err(|source| MountsError::Tmpfs {
        path: path.to_path_buf(),
        data,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_options_carry_size_mode_and_owner() {
        assert_eq!(
            tmpfs_data(67108864, 5, 6),
            "size=67108864,mode=0700,uid=5,gid=6"
        );
        assert!(TMPFS_FLAGS.contains(MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    }
}
