//! Steps 5 and 6: build the new root on a tmpfs, then `pivot_root` into it.
//!
//! Step 5 (mounts) makes "/" recursively private, mounts a tmpfs on the scratch directory
//! [`SCRATCH`] (which only hides it in this private namespace; nothing is written to the host),
//! attaches the detached source trees from step 2 with `move_mount`, and creates the spec's dirs
//! and symlinks. Every path in the new root is walked one component at a time from a descriptor
//! of the new root with `O_NOFOLLOW`, so a symlink inside a bound host directory can never
//! redirect a mkdir or a mount point onto the host.
//!
//! Step 6 (pivot root) uses the `pivot_root(".", ".")` + `umount2(".", MNT_DETACH)` idiom, so no
//! put-old directory is needed, then remounts "/" read-only and enters the spec's cwd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, symlinkat};

use crate::sources::SourceTree;
use crate::sys;
use sandfork_ipc::jail::JailSpec;

/// Where the new root's tmpfs is mounted before `pivot_root`. It must exist on every host;
/// mounting over it in our private mount namespace hides nothing outside the jail.
pub const SCRATCH: &str = "/tmp";

/// Flags of the root tmpfs: it holds only directories, empty mount points and symlinks.
const ROOT_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Why building the new root failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("making / recursively private: {0}")]
    MakePrivate(Errno),
    #[error("mounting the root tmpfs on {SCRATCH}: {0}")]
    RootTmpfs(Errno),
    #[error("opening the new root: {0}")]
    OpenRoot(Errno),
    #[error("mkdir {path:?}: {errno}")]
    Mkdir { path: PathBuf, errno: Errno },
    #[error("opening directory {path:?} (no symlinks allowed): {errno}")]
    OpenDir { path: PathBuf, errno: Errno },
    #[error("creating mount point {path:?}: {errno}")]
    MountPoint { path: PathBuf, errno: Errno },
    #[error("mount point {path:?} is neither a directory nor a regular file")]
    MountPointKind { path: PathBuf },
    #[error("attaching {from:?} at {dest:?}: {errno}")]
    Attach {
        from: PathBuf,
        dest: PathBuf,
        errno: Errno,
    },
    #[error("symlink {path:?}: {errno}")]
    Symlink { path: PathBuf, errno: Errno },
}

impl MountError {
    /// A hint naming the missing kernel feature, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            MountError::RootTmpfs(Errno::ENODEV) => Some("the kernel lacks CONFIG_TMPFS"),
            MountError::Mkdir {
                errno: Errno::EROFS,
                ..
            } => Some("a path inside a read-only bind must already exist in its source"),
            _ => None,
        }
    }
}

/// Why `pivot_root` or the final remount failed.
#[derive(Debug, thiserror::Error)]
pub enum PivotError {
    #[error("chdir {path:?}: {errno}")]
    Chdir { path: PathBuf, errno: Errno },
    #[error("pivot_root(\".\", \".\"): {0}")]
    PivotRoot(Errno),
    #[error("detaching the old root: {0}")]
    DetachOldRoot(Errno),
    #[error("remounting / read-only: {0}")]
    RemountReadOnly(Errno),
}

impl PivotError {
    /// A hint, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            PivotError::Chdir {
                errno: Errno::ENOENT,
                ..
            } => Some("cwd must be one of the spec's dirs or inside a bind"),
            _ => None,
        }
    }
}

/// Runs step 5 (without the hostname).
pub fn build(spec: &JailSpec, sources: Vec<SourceTree>) -> Result<(), MountError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(MountError::MakePrivate)?;
    let options = format!("size={},mode=0755", spec.root_size_bytes);
    mount(
        Some("tmpfs"),
        SCRATCH,
        Some("tmpfs"),
        ROOT_FLAGS,
        Some(options.as_str()),
    )
    .map_err(MountError::RootTmpfs)?;
    let root = nix::fcntl::open(
        SCRATCH,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(MountError::OpenRoot)?;

    for source in sources {
        attach(root.as_fd(), source)?;
    }
    for dir in &spec.dirs {
        make_dirs(root.as_fd(), dir)?;
    }
    for link in &spec.symlinks {
        let (parent, name) = open_parent(root.as_fd(), &link.path)?;
        symlinkat(&link.target, parent.as_fd(), name).map_err(|errno| MountError::Symlink {
            path: link.path.clone(),
            errno,
        })?;
    }
    Ok(())
}

/// Runs step 6: the new root becomes "/", the old one is detached, "/" is made read-only.
pub fn pivot(cwd: &Path) -> Result<(), PivotError> {
    let chdir_to = |path: &Path| {
        chdir(path).map_err(|errno| PivotError::Chdir {
            path: path.to_owned(),
            errno,
        })
    };
    chdir_to(Path::new(SCRATCH))?;
    pivot_root(".", ".").map_err(PivotError::PivotRoot)?;
    // The old root now sits on top of the new one, at "."; detach it with everything below.
    umount2(".", MntFlags::MNT_DETACH).map_err(PivotError::DetachOldRoot)?;
    chdir_to(Path::new("/"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | ROOT_FLAGS,
        None::<&str>,
    )
    .map_err(PivotError::RemountReadOnly)?;
    chdir_to(cwd)
}

/// Creates the mount point for `source` (a directory or an empty file, parents 0755) and
/// attaches the tree there.
fn attach(root: BorrowedFd<'_>, source: SourceTree) -> Result<(), MountError> {
    let target = if source.is_dir {
        make_dirs(root, &source.dest)?
    } else {
        let (parent, name) = open_parent(root, &source.dest)?;
        make_file(parent.as_fd(), name, &source.dest)?
    };
    sys::move_mount(source.tree.as_fd(), target.as_fd()).map_err(|errno| MountError::Attach {
        from: source.source.clone(),
        dest: source.dest.clone(),
        errno,
    })
}

/// `mkdir -p` inside the new root without following symlinks; returns an `O_PATH` descriptor
/// of the last directory.
fn make_dirs(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, MountError> {
    let mut current = reopen(root, Path::new("/"))?;
    let mut walked = PathBuf::from("/");
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue; // RootDir; validation rejected ".." and relative paths
        };
        walked.push(name);
        match mkdirat(current.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => {
                return Err(MountError::Mkdir {
                    path: walked,
                    errno,
                })
            }
        }
        current = open_dir(current.as_fd(), name, &walked)?;
    }
    Ok(current)
}

/// The parent directory of `path` (created as needed) and the final component.
fn open_parent<'p>(
    root: BorrowedFd<'_>,
    path: &'p Path,
) -> Result<(OwnedFd, &'p OsStr), MountError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    // Validation guarantees a final component (the path is not "/").
    let name = path.file_name().unwrap_or(OsStr::new("."));
    Ok((make_dirs(root, parent)?, name))
}

/// An empty file to mount a non-directory on; an existing regular file is reused.
fn make_file(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<OwnedFd, MountError> {
    let create = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW;
    match openat(
        parent,
        name,
        create | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o444),
    ) {
        Ok(_) | Err(Errno::EEXIST) => {}
        Err(errno) => {
            return Err(MountError::MountPoint {
                path: path.to_owned(),
                errno,
            })
        }
    }
    let file = openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| MountError::MountPoint {
        path: path.to_owned(),
        errno,
    })?;
    let stat = fstat(file.as_fd()).map_err(|errno| MountError::MountPoint {
        path: path.to_owned(),
        errno,
    })?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(MountError::MountPointKind {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

fn open_dir(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<OwnedFd, MountError> {
    openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| MountError::OpenDir {
        path: path.to_owned(),
        errno,
    })
}

fn reopen(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, MountError> {
    open_dir(root, OsStr::new("."), path)
}
