//! cgroup v1: one hierarchy per controller (or per co-mounted set, e.g. `cpu,cpuacct`).
//!
//! A slot is a cgroup in each of the `memory`, `pids` and `cpuacct` hierarchies, under this
//! process's own cgroup there. Semantics used (Documentation/admin-guide/cgroup-v1/memory.rst,
//! checked on Linux 6.18):
//! - limit: `memory.limit_in_bytes`; with swap accounting (`memory.memsw.*` present) also
//!   `memory.memsw.limit_in_bytes` = the same value, i.e. no swap. The kernel refuses (EINVAL) a
//!   memory limit above the memsw limit and a memsw limit below the memory limit, so raising
//!   writes memsw first and lowering writes it last. Without swap accounting,
//!   `memory.swappiness` = 0, which in limit reclaim really forbids swapping.
//! - peak: `memory.max_usage_in_bytes`; writing `0` resets it to the current usage.
//! - OOM: the `oom_kill` counter of `memory.oom_control` (Linux ≥ 4.13) counts processes of the
//!   cgroup killed by any OOM killer; it cannot be reset, so `prepare` records a baseline.
//!   `memory.failcnt` (times the limit was hit, reclaim included) is reset but is no OOM verdict.
//! - CPU: `cpuacct.usage` (ns), reset by writing `0`.
//! - `pids.max`: processes and threads.
//! - attach: writing a pid to `cgroup.procs` moves the whole thread group.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::fs::{Access, CgroupFs, ControlFile};
use super::{
    create_dir, io_err, parse_proc_self_cgroup, read_procs, remove_stale, remove_tree, under,
    CgroupError, CgroupVersion, Control, DetectedHierarchy, Detection, Host, SlotUsage,
};

/// The controllers a v1 slot needs, in attach order.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpuacct"];

/// Finds the `memory`, `pids` and `cpuacct` hierarchies and this process's cgroup in each.
pub(super) fn detect(host: &Host) -> Result<Detection, CgroupError> {
    let fs = host.fs.as_ref();
    let memberships = parse_proc_self_cgroup(&host.proc_self_cgroup);
    let mut hierarchies: Vec<(u32, DetectedHierarchy)> = Vec::new();
    let mut missing = Vec::new();
    for controller in CONTROLLERS {
        let Some(member) = memberships
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))
        else {
            missing.push((
                controller,
                "not mounted as a v1 hierarchy (absent from /proc/self/cgroup)".to_string(),
            ));
            continue;
        };
        if let Some((_, hierarchy)) = hierarchies.iter_mut().find(|(id, _)| *id == member.id) {
            hierarchy.controllers.push(controller);
            continue;
        }
        // Distributions mount each hierarchy at <root>/<controller list> and link every single
        // controller name to it (cpuacct -> cpu,cpuacct).
        let mount = [controller.to_string(), member.controllers.join(",")]
            .into_iter()
            .map(|name| host.fs_root.join(name))
            .find(|path| fs.exists(&path.join("cgroup.procs")));
        let Some(mount) = mount else {
            missing.push((
                controller,
                format!(
                    "no hierarchy mounted at {}",
                    host.fs_root.join(controller).display()
                ),
            ));
            continue;
        };
        let base = under(&mount, &member.path);
        if !fs.exists(&base.join("cgroup.procs")) {
            missing.push((
                controller,
                format!("own cgroup {} not found", base.display()),
            ));
            continue;
        }
        hierarchies.push((
            member.id,
            DetectedHierarchy {
                controllers: vec![controller],
                base,
            },
        ));
    }
    if hierarchies.is_empty() && !fs.exists(&host.fs_root) {
        return Err(CgroupError::NoHierarchy {
            fs_root: host.fs_root.clone(),
            reason: "the directory does not exist".into(),
        });
    }
    let hierarchies: Vec<DetectedHierarchy> = hierarchies.into_iter().map(|(_, h)| h).collect();
    let mut notes = Vec::new();
    if let Some(memory) = hierarchies
        .iter()
        .find(|h| h.controllers.contains(&"memory"))
    {
        notes.push(
            if fs.exists(&memory.base.join("memory.memsw.limit_in_bytes")) {
                "swap accounting on: memsw limit = memory limit"
            } else {
                "no swap accounting: swap kept out with memory.swappiness=0"
            }
            .to_string(),
        );
        let oom_control = fs
            .read(&memory.base.join("memory.oom_control"))
            .unwrap_or_default();
        if !oom_control.contains("oom_kill ") {
            missing.push((
                "memory",
                "memory.oom_control has no oom_kill counter (Linux < 4.13)".to_string(),
            ));
        }
    }
    Ok(Detection {
        version: CgroupVersion::V1,
        hierarchies,
        missing,
        notes,
    })
}

/// What removal needs: the instance directory in each hierarchy.
#[derive(Debug)]
pub(super) struct Tree {
    fs: Arc<dyn CgroupFs>,
    instance_dirs: Vec<PathBuf>,
}

/// A slot's cgroups.
#[derive(Debug)]
pub(super) struct Identity {
    fs: Arc<dyn CgroupFs>,
    /// Identity directory in each hierarchy (same order as the detection's hierarchies).
    dirs: Vec<PathBuf>,
    memory: PathBuf,
    /// `cgroup.procs` of each hierarchy, opened at creation: attaching is one write per
    /// hierarchy and no path lookup.
    procs: Vec<Box<dyn ControlFile>>,
    /// The files every run writes or reads, opened at creation.
    files: Files,
    state: Mutex<State>,
}

/// A v1 slot's per-run control files. The `memsw` ones exist with swap accounting only; swap
/// is then limited through them.
#[derive(Debug)]
struct Files {
    limit: Control,
    memsw_limit: Option<Control>,
    max_usage: Control,
    memsw_max_usage: Option<Control>,
    failcnt: Control,
    oom_control: Control,
    pids_max: Control,
    /// Tasks charged to the slot (uncharged when the kernel frees a task, after its reaping).
    pids_current: Control,
    cpu_usage: Control,
}

impl Files {
    fn open(
        fs: &dyn CgroupFs,
        memory: &Path,
        pids: &Path,
        cpuacct: &Path,
    ) -> Result<Self, CgroupError> {
        let memsw = |name: &str, access| -> Result<Option<Control>, CgroupError> {
            Control::open_if_exists(fs, memory.join(name), access)
        };
        Ok(Files {
            limit: Control::open(fs, memory.join("memory.limit_in_bytes"), Access::Write)?,
            memsw_limit: memsw("memory.memsw.limit_in_bytes", Access::Write)?,
            max_usage: Control::open(
                fs,
                memory.join("memory.max_usage_in_bytes"),
                Access::ReadWrite,
            )?,
            memsw_max_usage: memsw("memory.memsw.max_usage_in_bytes", Access::Write)?,
            failcnt: Control::open(fs, memory.join("memory.failcnt"), Access::Write)?,
            oom_control: Control::open(fs, memory.join("memory.oom_control"), Access::Read)?,
            pids_max: Control::open(fs, pids.join("pids.max"), Access::Write)?,
            pids_current: Control::open(fs, pids.join("pids.current"), Access::Read)?,
            cpu_usage: Control::open(fs, cpuacct.join("cpuacct.usage"), Access::ReadWrite)?,
        })
    }
}

/// What `prepare` remembers for `usage` and for skipping unchanged writes.
#[derive(Debug, Default)]
struct State {
    /// `oom_kill` of `memory.oom_control` at `prepare` (the counter cannot be reset).
    oom_kill_baseline: u64,
    /// Limits in force, so a run with the same limits as the last one writes nothing.
    memory_limit: Option<u64>,
    pids_limit: Option<u64>,
}

pub(super) fn create(
    host: &Host,
    detection: &Detection,
    dir_name: &str,
    count: u32,
) -> Result<(Tree, Vec<Identity>), CgroupError> {
    let fs = &host.fs;
    let instance_dirs: Vec<PathBuf> = detection
        .hierarchies
        .iter()
        .map(|h| h.base.join(dir_name))
        .collect();
    for dir in &instance_dirs {
        remove_stale(fs.as_ref(), dir)?;
    }
    // From here on the tree is ours: dropping `tree` on an error removes what was made.
    let mut tree = Tree {
        fs: Arc::clone(fs),
        instance_dirs: Vec::new(),
    };
    for dir in &instance_dirs {
        create_dir(fs.as_ref(), dir)?;
        tree.instance_dirs.push(dir.clone());
    }
    let dir_of = |controller: &str| -> PathBuf {
        let index = detection
            .hierarchies
            .iter()
            .position(|h| h.controllers.contains(&controller))
            .unwrap_or(0);
        instance_dirs[index].clone()
    };
    let memory_instance = dir_of("memory");
    let memsw = fs.exists(&memory_instance.join("memory.memsw.limit_in_bytes"));
    let mut slots = Vec::with_capacity(count as usize);
    for index in 0..count {
        let name = format!("slot-{index}");
        let mut procs = Vec::new();
        for dir in &instance_dirs {
            let slot_dir = dir.join(&name);
            create_dir(fs.as_ref(), &slot_dir)?;
            let procs_path = slot_dir.join("cgroup.procs");
            procs.push(
                fs.open(&procs_path, Access::Write)
                    .map_err(io_err("open", &procs_path))?,
            );
        }
        let memory = dir_of("memory").join(&name);
        if !memsw {
            let swappiness = memory.join("memory.swappiness");
            fs.write(&swappiness, "0")
                .map_err(io_err("write", &swappiness))?;
        }
        let files = Files::open(
            fs.as_ref(),
            &memory,
            &dir_of("pids").join(&name),
            &dir_of("cpuacct").join(&name),
        )?;
        slots.push(Identity {
            fs: Arc::clone(fs),
            dirs: instance_dirs.iter().map(|d| d.join(&name)).collect(),
            memory,
            procs,
            files,
            state: Mutex::new(State::default()),
        });
    }
    Ok((tree, slots))
}

impl Tree {
    pub(super) fn describe(&self) -> String {
        format!(
            "cgroup v1: {}",
            self.instance_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Removes the slots, then the instance directories; reports the first failure after
    /// trying everything.
    pub(super) fn remove(
        &mut self,
        slots: impl Iterator<Item = Identity>,
    ) -> Result<(), CgroupError> {
        let fs = self.fs.as_ref();
        let mut first_error = None;
        for slot in slots {
            let dirs = slot.dirs.clone();
            drop(slot); // close the pre-opened descriptors first
            for dir in dirs {
                if let Err(err) = remove_dir(fs, &dir) {
                    first_error.get_or_insert(err);
                }
            }
        }
        for dir in std::mem::take(&mut self.instance_dirs) {
            if let Err(err) = remove_dir(fs, &dir) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Tree {
    /// Only reached with directories left when `create` failed half-way.
    fn drop(&mut self) {
        for dir in std::mem::take(&mut self.instance_dirs) {
            let _ = remove_tree(self.fs.as_ref(), &dir);
        }
    }
}

/// rmdir of one cgroup; a busy one is reported with its pids.
fn remove_dir(fs: &dyn CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    let busy = remove_tree(fs, dir)?;
    match busy.into_iter().next() {
        Some((path, pids)) => Err(CgroupError::Busy { path, pids }),
        None => Ok(()),
    }
}

impl Identity {
    pub(super) fn prepare(&self, memory_bytes: u64, pids: u64) -> Result<(), CgroupError> {
        let files = &self.files;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.memory_limit != Some(memory_bytes) {
            state.memory_limit = None;
            self.set_memory_limit(memory_bytes)?;
            state.memory_limit = Some(memory_bytes);
        }
        if state.pids_limit != Some(pids) {
            state.pids_limit = None;
            files.pids_max.write(&pids.to_string())?;
            state.pids_limit = Some(pids);
        }
        files.max_usage.write("0")?;
        if let Some(memsw_max_usage) = &files.memsw_max_usage {
            memsw_max_usage.write("0")?;
        }
        files.failcnt.write("0")?;
        files.cpu_usage.write("0")?;
        state.oom_kill_baseline = self.oom_kills()?;
        Ok(())
    }

    /// Memory limit with no swap, in the order the kernel accepts (see the module docs).
    fn set_memory_limit(&self, bytes: u64) -> Result<(), CgroupError> {
        let value = bytes.to_string();
        let limit = &self.files.limit;
        let Some(memsw) = &self.files.memsw_limit else {
            return limit.write(&value);
        };
        match limit.file.write(&value) {
            Ok(()) => memsw.write(&value),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                // Raising above the current memsw limit: memsw first.
                memsw.write(&value)?;
                limit.write(&value)
            }
            Err(err) => Err(io_err("write", &limit.path)(err)),
        }
    }

    pub(super) fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        let value = pid.to_string();
        for (file, dir) in self.procs.iter().zip(&self.dirs) {
            file.write(&value)
                .map_err(io_err("attach a process to", &dir.join("cgroup.procs")))?;
        }
        Ok(())
    }

    pub(super) fn usage(&self) -> Result<SlotUsage, CgroupError> {
        let baseline = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .oom_kill_baseline;
        Ok(SlotUsage {
            peak_memory_bytes: Some(self.files.max_usage.read_u64()?),
            cpu_ns: self.files.cpu_usage.read_u64()?,
            oom_killed: self.oom_kills()? > baseline,
        })
    }

    pub(super) fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_procs(self.fs.as_ref(), &self.memory)
    }

    pub(super) fn tasks(&self) -> Result<u64, CgroupError> {
        self.files.pids_current.read_u64()
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        self.files.oom_control.read_flat_key("oom_kill")
    }
}

#[cfg(test)]
mod tests;
