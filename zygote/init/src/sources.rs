//! Step 2, sources: clone every bind source and device as a detached, read-only mount tree
//! while zygote-init is still root in the host's user and mount namespaces.
//!
//! Rootless, `open_tree(OPEN_TREE_CLONE)` needs CAP_SYS_ADMIN over the caller's mount namespace,
//! which an unprivileged process lacks on the host's. So `main` runs this step right after step
//! 3 instead, as root of the new user namespace that owns the new mount namespace (a copy of
//! the host's, so the same paths resolve). The kernel then checks host permissions as the
//! daemon's own user: every source must be reachable by it (an interpreter under /root, such as
//! a pyenv there, is not).
//!
//! Why clones and not `O_PATH` descriptors: a bind mount's source must belong to the caller's
//! mount namespace (the kernel's `check_mnt`), and a descriptor opened before
//! `unshare(CLONE_NEWNS)` points into the host's namespace, so `mount("/proc/self/fd/N", ..,
//! MS_BIND)` fails with EINVAL in the jail. A tree cloned with `open_tree(OPEN_TREE_CLONE)` lives
//! in an anonymous namespace, may be attached anywhere with `move_mount`, and is reached without
//! any path lookup, so host paths under /root (0700, host root unmapped in the jail) work.
//!
//! The flags are set here, on the detached tree and recursively, with `mount_setattr`: it only
//! adds flags, so whatever the source mount already had (noexec, nosuid, an atime mode) stays,
//! and nothing ever needs a remount that could trip over locked flags.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{fstat, SFlag};

use crate::sys;
use sandfork_ipc::jail::JailSpec;

/// Flags of a bind: read-only, no set-uid, no devices.
const BIND_ATTRS: u64 = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
/// Flags of a device bind: read-only inode (writing to the device still works), no set-uid, no
/// exec; not nodev, or the device could not be opened.
const DEVICE_ATTRS: u64 =
    libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC;

/// A detached mount tree waiting for its place in the new root.
#[derive(Debug)]
pub struct SourceTree {
    /// Host path it was cloned from (for error messages).
    pub source: PathBuf,
    /// Where it goes inside the new root.
    pub dest: PathBuf,
    /// The detached tree; attaching consumes it.
    pub tree: OwnedFd,
    /// Directory trees need a directory mount point, everything else an empty file.
    pub is_dir: bool,
}

/// Why a source could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("open_tree {path:?}: {errno}")]
    Clone { path: PathBuf, errno: Errno },
    #[error("fstat {path:?}: {errno}")]
    Stat { path: PathBuf, errno: Errno },
    #[error("{path:?} is not a character device")]
    NotADevice { path: PathBuf },
    #[error("mount_setattr {path:?}: {errno}")]
    SetAttr { path: PathBuf, errno: Errno },
}

impl SourceError {
    /// A hint naming the missing kernel feature, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SourceError::Clone {
                errno: Errno::ENOSYS,
                ..
            } => Some("open_tree/move_mount need Linux >= 5.2"),
            SourceError::SetAttr {
                errno: Errno::ENOSYS,
                ..
            } => Some("mount_setattr needs Linux >= 5.12"),
            SourceError::Clone {
                errno: Errno::EPERM,
                ..
            } => Some("cloning mounts needs CAP_SYS_ADMIN: run zygote-init as root"),
            // Root passes every permission check, so this is rootless mode.
            SourceError::Clone {
                errno: Errno::EACCES,
                ..
            } => Some(
                "rootless mode binds host paths as the daemon's own user: the interpreter, its \
                 libraries and the runtime dir must be readable by it (an interpreter under \
                 /root, e.g. pyenv's, is not; use one such as /usr/bin/python3)",
            ),
            _ => None,
        }
    }
}

/// Clones all binds (recursively) and devices of the spec, in spec order.
pub fn clone_all(spec: &JailSpec) -> Result<Vec<SourceTree>, SourceError> {
    let binds = spec
        .binds
        .iter()
        .map(|bind| clone_one(&bind.path, bind.dest(), true, BIND_ATTRS));
    let devices = spec
        .devices
        .iter()
        .map(|device| clone_one(device, device, false, DEVICE_ATTRS));
    binds.chain(devices).collect()
}

fn clone_one(
    source: &Path,
    dest: &Path,
    recursive: bool,
    attrs: u64,
) -> Result<SourceTree, SourceError> {
    let tree = sys::open_tree_clone(source, recursive).map_err(|errno| SourceError::Clone {
        path: source.to_owned(),
        errno,
    })?;
    let stat = fstat(tree.as_fd()).map_err(|errno| SourceError::Stat {
        path: source.to_owned(),
        errno,
    })?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if !recursive && kind != SFlag::S_IFCHR {
        return Err(SourceError::NotADevice {
            path: source.to_owned(),
        });
    }
    let attr = libc::mount_attr {
        attr_set: attrs,
        attr_clr: 0,
        // Private: no mount event crosses between the jail and the host in either direction.
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    sys::mount_setattr_recursive(tree.as_fd(), &attr).map_err(|errno| SourceError::SetAttr {
        path: source.to_owned(),
        errno,
    })?;
    Ok(SourceTree {
        source: source.to_owned(),
        dest: dest.to_owned(),
        tree,
        is_dir: kind == SFlag::S_IFDIR,
    })
}
