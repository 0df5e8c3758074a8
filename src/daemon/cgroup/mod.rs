//! Identity cgroups: one cgroup per concurrent-run slot, created once at start-up and reused, so a
//! run's memory (no swap), process count and CPU time are limited and measured by the kernel
//! (DESIGN §3, "Supervisor-side limits").
//!
//! Map:
//! - [`CgroupSlots::create`] finds this process's own cgroup in each hierarchy it needs
//!   (`/proc/self/cgroup`), removes a stale tree a crashed daemon left there, and creates
//!   `<own>/sandfork-<instance>/slot-<i>`. Each slot's `cgroup.procs` is opened then, so
//!   [`SlotCgroup::attach`] is a single `write(2)` on the request path.
//! - Per run: [`SlotCgroup::prepare`] (limits, counters reset) → [`SlotCgroup::attach`] (the
//!   child's host pid) → the run → [`SlotCgroup::usage`] (peak memory, CPU, OOM kill).
//! - [`CgroupSlots::remove`] (or dropping it) removes the whole tree at shutdown.
//! - [`v2`] is the unified hierarchy (production), [`v1`] the per-controller hierarchies (this
//!   development VM); both behind the same types. [`fs`] is the seam to the kernel: the unit tests
//!   run the same code against a fake cgroupfs in a temp dir.
//!
//! Where neither version is usable, `create` fails with the reason and the daemon falls back to
//! rlimits (RLIMIT_AS, RLIMIT_NPROC); [`detect`] tells `sandfork doctor` the same without
//! creating anything.

mod detect;
pub mod fs;
pub mod v1;
pub mod v2;

use detect::*;
pub use detect::{detect, detect_on, DetectedHierarchy, Detection, Host};

#[cfg(test)]
mod fake;
#[cfg(test)]
mod host_tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::fs::{CgroupFs, HostFs};

/// Where cgroup file systems are mounted on every distribution we know.
pub const DEFAULT_FS_ROOT: &str = "/sys/fs/cgroup";

/// Prefix of the instance directory, so a reader of the cgroup tree knows whose it is.
const INSTANCE_PREFIX: &str = "sandfork-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Separate hierarchies per controller (`/sys/fs/cgroup/memory`, `…/pids`, `…/cpuacct`).
    V1,
    /// The unified hierarchy (`/sys/fs/cgroup/cgroup.controllers` exists).
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/cgroup: {0}")]
    ProcSelf(#[source] io::Error),
    #[error("no cgroup hierarchy under {fs_root}: {reason}")]
    NoHierarchy { fs_root: PathBuf, reason: String },
    #[error("cgroup controller {controller} is unavailable: {reason}")]
    ControllerMissing {
        controller: &'static str,
        reason: String,
    },
    #[error(
        "invalid cgroup instance name {0:?}: use letters, digits, '-', '_' and '.', at most 64"
    )]
    InvalidInstance(String),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "stale cgroup {path} left by an earlier sandforkd still holds processes {pids:?}; \
         kill them and start again"
    )]
    StaleBusy { path: PathBuf, pids: Vec<i32> },
    #[error(
        "cannot delegate memory and pids below {path}: it holds processes {pids:?} besides \
         sandforkd, and cgroup v2 keeps processes in leaves only; start sandforkd in a cgroup of \
         its own (systemd: Delegate=yes)"
    )]
    InternalProcesses { path: PathBuf, pids: Vec<i32> },
    #[error("cgroup {path} still holds processes {pids:?}")]
    Busy { path: PathBuf, pids: Vec<i32> },
    #[error("unexpected content in {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
}

/// Maps an io::Error of `op` on `path` into [`CgroupError::Io`].
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Peak memory, CPU time and OOM verdict of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotUsage {
    /// Highest memory use of the slot since `prepare` (bytes), as the memory controller counts
    /// it (anonymous memory, page cache, kernel memory charged to the slot). `None` where the
    /// kernel cannot reset the peak (v2 before Linux 6.12) or has none (v2 before 5.19).
    pub peak_memory_bytes: Option<u64>,
    /// CPU time of the slot's processes since `prepare`, user + system (nanoseconds).
    pub cpu_ns: u64,
    /// The OOM killer killed a process of this slot since `prepare`.
    pub oom_killed: bool,
}

/// The daemon's slot cgroups. Dropping it removes the tree too (best effort, errors logged);
/// [`CgroupSlots::remove`] does the same and reports errors.
#[derive(Debug)]
pub struct CgroupSlots {
    version: CgroupVersion,
    slots: Vec<SlotCgroup>,
    tree: Tree,
    /// Set once the tree is gone, so `Drop` does not try again.
    removed: bool,
}

/// What removal needs besides the slots, per version.
#[derive(Debug)]
enum Tree {
    V1(v1::Tree),
    V2(v2::Tree),
}

/// One slot's cgroup (in v1: its cgroup in each hierarchy).
#[derive(Debug)]
pub struct SlotCgroup {
    index: u32,
    inner: SlotInner,
}

#[derive(Debug)]
enum SlotInner {
    V1(v1::Identity),
    V2(v2::Identity),
}

impl CgroupSlots {
    /// Detects v2 or v1 under `fs_root`, removes a stale `sandfork-<instance>` tree a crashed
    /// daemon left (empty cgroups are removed; if one still holds processes, this fails with
    /// [`CgroupError::StaleBusy`] after removing the others), and creates
    /// `<own cgroup>/sandfork-<instance>/slot-0..slots` with memory (no swap), pids and CPU
    /// accounting.
    ///
    /// Call it early at start-up, before zygotes are spawned: on v2 the daemon may have to move
    /// itself into a leaf `sandfork-<instance>/supervisor` (cgroup v2 allows processes only in
    /// leaves of a delegated tree), and its later children start there.
    pub fn create(fs_root: &Path, instance: &str, slots: u32) -> Result<CgroupSlots, CgroupError> {
        CgroupSlots::create_on(&Host::current(fs_root)?, instance, slots)
    }

    /// [`CgroupSlots::create`] on an injected host.
    pub fn create_on(host: &Host, instance: &str, slots: u32) -> Result<CgroupSlots, CgroupError> {
        check_instance(instance)?;
        let detection = detect_on(host)?;
        if let Some((controller, reason)) = detection.missing.first() {
            return Err(CgroupError::ControllerMissing {
                controller,
                reason: reason.clone(),
            });
        }
        let dir_name = format!("{INSTANCE_PREFIX}{instance}");
        let (tree, inner) = match detection.version {
            CgroupVersion::V1 => {
                let (tree, slots) = v1::create(host, &detection, &dir_name, slots)?;
                (
                    Tree::V1(tree),
                    slots.into_iter().map(SlotInner::V1).collect::<Vec<_>>(),
                )
            }
            CgroupVersion::V2 => {
                let (tree, slots) = v2::create(host, &detection, &dir_name, slots)?;
                (
                    Tree::V2(tree),
                    slots.into_iter().map(SlotInner::V2).collect::<Vec<_>>(),
                )
            }
        };
        Ok(CgroupSlots {
            version: detection.version,
            slots: inner
                .into_iter()
                .zip(0..)
                .map(|(inner, index)| SlotCgroup { index, inner })
                .collect(),
            tree,
            removed: false,
        })
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Number of slots.
    pub fn len(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Identity `index`'s cgroup. Panics if `index >= len()` (slot indexes come from
    /// [`crate::daemon::engine::identities::Identities`], created with the same count).
    pub fn slot(&self, index: u32) -> &SlotCgroup {
        &self.slots[index as usize]
    }

    /// One line for the start-up log: version and where the tree is.
    pub fn describe(&self) -> String {
        match &self.tree {
            Tree::V1(tree) => tree.describe(),
            Tree::V2(tree) => tree.describe(),
        }
    }

    /// Removes every slot cgroup (they must be empty: every child has exited) and the instance
    /// directory; on v2 moves the daemon back to where it started if it had moved itself.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.remove_tree()
    }

    fn remove_tree(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let slots = std::mem::take(&mut self.slots);
        match &mut self.tree {
            Tree::V1(tree) => tree.remove(slots.into_iter().filter_map(|s| match s.inner {
                SlotInner::V1(slot) => Some(slot),
                SlotInner::V2(_) => None,
            })),
            Tree::V2(tree) => tree.remove(slots.into_iter().filter_map(|s| match s.inner {
                SlotInner::V2(slot) => Some(slot),
                SlotInner::V1(_) => None,
            })),
        }
    }
}

impl Drop for CgroupSlots {
    fn drop(&mut self) {
        if let Err(err) = self.remove_tree() {
            tracing::warn!(cause = %err, "slot cgroups not fully removed");
        }
    }
}

impl SlotCgroup {
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Before a run: sets the memory limit (bytes; swap 0), the pids limit (processes and
    /// threads), and restarts the peak, CPU and OOM counters, so [`SlotCgroup::usage`] covers
    /// this run only. May be called before or after `attach`. Lowering the memory limit below
    /// what processes already in the slot use makes the kernel reclaim, and fail (v1) or OOM-kill
    /// (v2) if it cannot.
    pub fn prepare(&self, memory_bytes: u64, pids: u64) -> Result<(), CgroupError> {
        match &self.inner {
            SlotInner::V1(slot) => slot.prepare(memory_bytes, pids),
            SlotInner::V2(slot) => slot.prepare(memory_bytes, pids),
        }
    }

    /// Moves a process (a host pid, with all its threads) into the slot, through the
    /// `cgroup.procs` descriptors opened at `create`. Memory the process touched before keeps
    /// being charged where it was; do this before the child runs user code.
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        match &self.inner {
            SlotInner::V1(slot) => slot.attach(pid),
            SlotInner::V2(slot) => slot.attach(pid),
        }
    }

    /// After the run: peak memory, CPU time, and whether the OOM killer fired in this slot
    /// since `prepare`. The kernel counts an OOM kill before it delivers the SIGKILL, so the
    /// verdict is final once the child's exit is seen.
    pub fn usage(&self) -> Result<SlotUsage, CgroupError> {
        match &self.inner {
            SlotInner::V1(slot) => slot.usage(),
            SlotInner::V2(slot) => slot.usage(),
        }
    }

    /// Tasks (threads) charged to the slot right now: `pids.current`. A task stays charged
    /// until the kernel frees it, after it has been reaped.
    pub fn tasks(&self) -> Result<u64, CgroupError> {
        match &self.inner {
            SlotInner::V1(slot) => slot.tasks(),
            SlotInner::V2(slot) => slot.tasks(),
        }
    }

    /// Processes in the slot right now (pids in the daemon's pid namespace).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        match &self.inner {
            SlotInner::V1(slot) => slot.pids(),
            SlotInner::V2(slot) => slot.pids(),
        }
    }
}

/// Instance names become a directory name: one safe path component.
fn check_instance(instance: &str) -> Result<(), CgroupError> {
    let ok = !instance.is_empty()
        && instance.len() <= 64
        && !instance.starts_with('.')
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidInstance(instance.to_string()))
    }
}

/// A control file a slot uses on every run, opened when the slot is created: a run then costs
/// one read or write per file, with no path lookup and no open/close pair (those pairs were a
/// fifth of the supervisor's CPU per run). The path is kept for error messages.
#[derive(Debug)]
struct Control {
    path: PathBuf,
    file: Box<dyn fs::ControlFile>,
}

impl Control {
    fn open(fs: &dyn CgroupFs, path: PathBuf, access: fs::Access) -> Result<Self, CgroupError> {
        let file = fs.open(&path, access).map_err(io_err("open", &path))?;
        Ok(Control { path, file })
    }

    /// Opens the file only if the kernel has it.
    fn open_if_exists(
        fs: &dyn CgroupFs,
        path: PathBuf,
        access: fs::Access,
    ) -> Result<Option<Self>, CgroupError> {
        if fs.exists(&path) {
            Self::open(fs, path, access).map(Some)
        } else {
            Ok(None)
        }
    }

    fn write(&self, value: &str) -> Result<(), CgroupError> {
        self.file.write(value).map_err(io_err("write", &self.path))
    }

    fn read_u64(&self) -> Result<u64, CgroupError> {
        let text = self.file.read().map_err(io_err("read", &self.path))?;
        parse_u64(&self.path, &text)
    }

    fn read_flat_key(&self, key: &str) -> Result<u64, CgroupError> {
        let text = self.file.read().map_err(io_err("read", &self.path))?;
        flat_key(&self.path, &text, key)
    }
}

fn write(fs: &dyn CgroupFs, path: &Path, value: &str) -> Result<(), CgroupError> {
    fs.write(path, value).map_err(io_err("write", path))
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    let value = text.trim();
    if value == "max" {
        return Ok(u64::MAX);
    }
    value.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        content: text.to_string(),
    })
}

/// A key of a flat-keyed file (`key value` lines: memory.events, cpu.stat, memory.oom_control).
fn flat_key(path: &Path, text: &str, key: &str) -> Result<u64, CgroupError> {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| CgroupError::Parse {
            path: path.to_owned(),
            content: format!("no numeric {key} in {text:?}"),
        })
}

/// The pids in a `cgroup.procs` file (empty if it cannot be read).
/// The pids in the cgroup at `dir`.
fn read_procs(fs: &dyn CgroupFs, dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let text = fs.read(&path).map_err(io_err("read", &path))?;
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// As [`read_procs`], with an unreadable file counting as empty (for best-effort clean-up).
fn procs(fs: &dyn CgroupFs, dir: &Path) -> Vec<i32> {
    read_procs(fs, dir).unwrap_or_default()
}

/// Removes `dir` and every cgroup below it, leaves first. Cgroups that still hold processes
/// stay; they are returned with their pids (after everything else removable is gone).
fn remove_tree(fs: &dyn CgroupFs, dir: &Path) -> Result<Vec<(PathBuf, Vec<i32>)>, CgroupError> {
    let mut busy = Vec::new();
    remove_tree_into(fs, dir, &mut busy)?;
    Ok(busy)
}

fn remove_tree_into(
    fs: &dyn CgroupFs,
    dir: &Path,
    busy: &mut Vec<(PathBuf, Vec<i32>)>,
) -> Result<(), CgroupError> {
    for child in fs.child_dirs(dir).map_err(io_err("list", dir))? {
        remove_tree_into(fs, &child, busy)?;
    }
    match fs.remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if is_busy(&err) => {
            busy.push((dir.to_owned(), procs(fs, dir)));
            Ok(())
        }
        Err(err) => Err(io_err("remove", dir)(err)),
    }
}

/// rmdir of a cgroup with processes is EBUSY; with child cgroups left, ENOTEMPTY (or EBUSY).
fn is_busy(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EBUSY) | Some(libc::ENOTEMPTY)
    )
}

/// Removes a stale instance tree, failing if part of it still holds processes.
fn remove_stale(fs: &dyn CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    if !fs.exists(dir) {
        return Ok(());
    }
    tracing::warn!(path = %dir.display(), "removing stale slot cgroups of an earlier sandforkd");
    let busy = remove_tree(fs, dir)?;
    match busy.into_iter().find(|(_, pids)| !pids.is_empty()) {
        Some((path, pids)) => Err(CgroupError::StaleBusy { path, pids }),
        None if fs.exists(dir) => Err(CgroupError::StaleBusy {
            path: dir.to_owned(),
            pids: Vec::new(),
        }),
        None => Ok(()),
    }
}

/// Creates a cgroup directory; one that already exists is an error (the caller removed stale
/// trees first, so it would belong to someone else).
fn create_dir(fs: &dyn CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    fs.create_dir(dir).map_err(io_err("create", dir))
}

/// The kernel release is at least `major.minor` (for notes only: behaviour is probed).
fn kernel_at_least(major: u32, minor: u32) -> Option<bool> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    let have_major: u32 = parts.next()?.parse().ok()?;
    let have_minor: u32 = parts.next()?.parse().ok()?;
    Some((have_major, have_minor) >= (major, minor))
}

#[cfg(test)]
mod tests;
