//! cgroup v2: the unified hierarchy. Semantics used (Documentation/admin-guide/cgroup-v2.rst):
//! - controllers reach a cgroup only if its parent lists them in `cgroup.subtree_control`, and
//!   a non-root cgroup with controllers enabled there may hold no processes ("no internal
//!   process" rule: enabling fails with EBUSY). The slots need `memory` and `pids` in the
//!   daemon's own cgroup's subtree_control and in the instance directory's. If the daemon's own
//!   cgroup holds only the daemon (systemd `Delegate=yes` gives it one), the daemon moves itself
//!   into the leaf `sandfork-<instance>/supervisor` and enables them; with other processes there
//!   `create` fails ([`CgroupError::InternalProcesses`]). `remove` undoes both.
//! - limit: `memory.max`; `memory.swap.max` = 0 (absent without swap accounting: nothing to do).
//! - peak: `memory.peak` (Linux ≥ 5.19); since 6.12 writing to it resets the peak *for the
//!   writing file descriptor*, so each slot keeps one descriptor open, resets through it in
//!   `prepare` and reads through it in `usage`. Where the write fails, the peak since creation
//!   says nothing about one run: `usage` reports none.
//! - OOM: `oom_kill` of `memory.events` (processes of the cgroup killed by any OOM killer),
//!   cumulative: `prepare` records a baseline.
//! - CPU: `usage_usec` of `cpu.stat`, present without the cpu controller; baseline as well.
//! - `pids.max`: processes and threads. Attach: a pid written to `cgroup.procs` moves the whole
//!   process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::fs::{Access, CgroupFs, ControlFile};
use super::{
    create_dir, io_err, kernel_at_least, parse_proc_self_cgroup, parse_u64, procs, read_procs,
    remove_stale, remove_tree, under, write, CgroupError, CgroupVersion, Control,
    DetectedHierarchy, Detection, Host, SlotUsage,
};

/// Controllers the slots need enabled; CPU time comes from `cpu.stat` without one.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];
/// The leaf the daemon moves into when its own cgroup must delegate controllers.
const SUPERVISOR_LEAF: &str = "supervisor";

pub(super) fn detect(host: &Host) -> Result<Detection, CgroupError> {
    let fs = host.fs.as_ref();
    let member = parse_proc_self_cgroup(&host.proc_self_cgroup)
        .into_iter()
        .find(|m| m.id == 0 && m.controllers.is_empty())
        .ok_or_else(|| CgroupError::NoHierarchy {
            fs_root: host.fs_root.clone(),
            reason: "cgroup2 is mounted but /proc/self/cgroup has no 0:: line".into(),
        })?;
    let base = under(&host.fs_root, &member.path);
    let mut missing = Vec::new();
    let mut notes = Vec::new();
    if !fs.exists(&base.join("cgroup.procs")) {
        for controller in CONTROLLERS {
            missing.push((
                controller,
                format!("own cgroup {} not found", base.display()),
            ));
        }
    } else {
        let available = words(fs, &base.join("cgroup.controllers"));
        for controller in CONTROLLERS {
            if !available.iter().any(|c| c == controller) {
                missing.push((
                    controller,
                    format!(
                        "not delegated to {} (its cgroup.controllers: {:?})",
                        base.display(),
                        available.join(" ")
                    ),
                ));
            }
        }
        let enabled = words(fs, &base.join("cgroup.subtree_control"));
        let pids = procs(fs, &base);
        if CONTROLLERS.iter().all(|c| enabled.iter().any(|e| e == c)) {
            notes.push("memory and pids already enabled for sub-cgroups".into());
        } else if base == host.fs_root || pids.is_empty() {
            notes.push("memory and pids will be enabled for sub-cgroups".into());
        } else if pids == [host.pid as i32] {
            notes.push(format!(
                "sandforkd moves itself into a leaf ({SUPERVISOR_LEAF}) to delegate memory and pids"
            ));
        } else {
            notes.push(format!(
                "{} holds {} processes: sandforkd needs a cgroup of its own there \
                 (systemd: Delegate=yes)",
                base.display(),
                pids.len()
            ));
        }
    }
    notes.push("cpu time from cpu.stat".into());
    notes.push(
        match kernel_at_least(6, 12) {
            Some(true) => "per-run peak memory: memory.peak reset per descriptor",
            Some(false) => "no per-run peak memory (memory.peak is resettable from Linux 6.12)",
            None => "per-run peak memory if memory.peak is resettable (Linux >= 6.12)",
        }
        .into(),
    );
    Ok(Detection {
        version: CgroupVersion::V2,
        hierarchies: vec![DetectedHierarchy {
            controllers: vec!["memory", "pids", "cpu.stat"],
            base,
        }],
        missing,
        notes,
    })
}

/// Whitespace-separated words of a control file (empty if unreadable).
fn words(fs: &dyn CgroupFs, path: &Path) -> Vec<String> {
    fs.read(path)
        .map(|text| text.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// What creation changed outside the slots, so removal can undo exactly that.
#[derive(Debug)]
pub(super) struct Tree {
    fs: Arc<dyn CgroupFs>,
    /// The daemon's own cgroup.
    base: PathBuf,
    /// `base/sandfork-<instance>`, once created.
    instance: Option<PathBuf>,
    /// Controllers this daemon enabled in `base/cgroup.subtree_control` (to disable on removal).
    enabled_in_base: Vec<&'static str>,
    /// The leaf the daemon moved itself into, if it had to.
    supervisor: Option<PathBuf>,
    /// The daemon's pid, moved back to `base` on removal.
    pid: u32,
    /// Whether `memory.peak` can be reset (probed at creation).
    peak_resettable: bool,
}

/// One slot's cgroup.
#[derive(Debug)]
pub(super) struct Identity {
    fs: Arc<dyn CgroupFs>,
    dir: PathBuf,
    /// `cgroup.procs`, opened at creation.
    procs: Box<dyn ControlFile>,
    /// `memory.peak`, opened read-write at creation: its resets apply to this descriptor only.
    /// `None` where the kernel cannot reset it.
    peak: Option<Box<dyn ControlFile>>,
    /// The other files every run writes or reads, opened at creation.
    files: Files,
    state: Mutex<State>,
}

/// A v2 slot's per-run control files besides `memory.peak`.
#[derive(Debug)]
struct Files {
    memory_max: Control,
    pids_max: Control,
    /// Tasks charged to the slot (uncharged when the kernel frees a task, after its reaping).
    pids_current: Control,
    events: Control,
    cpu_stat: Control,
}

impl Files {
    fn open(fs: &dyn CgroupFs, dir: &Path) -> Result<Self, CgroupError> {
        Ok(Files {
            memory_max: Control::open(fs, dir.join("memory.max"), Access::Write)?,
            pids_max: Control::open(fs, dir.join("pids.max"), Access::Write)?,
            pids_current: Control::open(fs, dir.join("pids.current"), Access::Read)?,
            events: Control::open(fs, dir.join("memory.events"), Access::Read)?,
            cpu_stat: Control::open(fs, dir.join("cpu.stat"), Access::Read)?,
        })
    }
}

#[derive(Debug, Default)]
struct State {
    /// `oom_kill` of `memory.events` at `prepare`.
    oom_kill_baseline: u64,
    /// `usage_usec` of `cpu.stat` at `prepare`.
    cpu_usec_baseline: u64,
    /// Limits in force, so an unchanged limit is not written again.
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
    let base = detection.hierarchies[0].base.clone();
    let instance = base.join(dir_name);
    remove_stale(fs.as_ref(), &instance)?;
    // From here on `tree` owns what exists: dropping it on an error undoes it.
    let mut tree = Tree {
        fs: Arc::clone(fs),
        base: base.clone(),
        instance: None,
        enabled_in_base: Vec::new(),
        supervisor: None,
        pid: host.pid,
        peak_resettable: false,
    };
    create_dir(fs.as_ref(), &instance)?;
    tree.instance = Some(instance.clone());
    tree.delegate()?;
    write(
        fs.as_ref(),
        &instance.join("cgroup.subtree_control"),
        &enable(&CONTROLLERS),
    )?;
    let mut slots = Vec::with_capacity(count as usize);
    for index in 0..count {
        let dir = instance.join(format!("slot-{index}"));
        create_dir(fs.as_ref(), &dir)?;
        let swap_max = dir.join("memory.swap.max");
        if fs.exists(&swap_max) {
            write(fs.as_ref(), &swap_max, "0")?;
        }
        let procs_path = dir.join("cgroup.procs");
        let procs = fs
            .open(&procs_path, Access::Write)
            .map_err(io_err("open", &procs_path))?;
        let peak_path = dir.join("memory.peak");
        let peak = if index == 0 || tree.peak_resettable {
            open_resettable_peak(fs.as_ref(), &peak_path)
        } else {
            None
        };
        if index == 0 {
            tree.peak_resettable = peak.is_some();
        }
        let files = Files::open(fs.as_ref(), &dir)?;
        slots.push(Identity {
            fs: Arc::clone(fs),
            dir,
            procs,
            peak,
            files,
            state: Mutex::new(State::default()),
        });
    }
    Ok((tree, slots))
}

/// Opens `memory.peak` read-write and resets it once: a kernel without per-descriptor reset
/// (before 6.12) refuses the write, a kernel before 5.19 has no file.
fn open_resettable_peak(fs: &dyn CgroupFs, path: &Path) -> Option<Box<dyn ControlFile>> {
    if !fs.exists(path) {
        return None;
    }
    let file = fs.open(path, Access::ReadWrite).ok()?;
    match file.write("reset") {
        Ok(()) => Some(file),
        Err(err) => {
            tracing::info!(path = %path.display(), cause = %err,
                "memory.peak cannot be reset: no per-run peak memory");
            None
        }
    }
}

/// `+a +b` for cgroup.subtree_control.
fn enable(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn disable(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("-{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Tree {
    /// Makes sure `base` hands memory and pids down, moving the daemon into a leaf first if
    /// the no-internal-process rule requires it.
    fn delegate(&mut self) -> Result<(), CgroupError> {
        let fs = Arc::clone(&self.fs);
        let fs = fs.as_ref();
        let control = self.base.join("cgroup.subtree_control");
        let enabled = words(fs, &control);
        let wanted: Vec<&'static str> = CONTROLLERS
            .into_iter()
            .filter(|c| !enabled.iter().any(|e| e == c))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        match fs.write(&control, &enable(&wanted)) {
            Ok(()) => {
                self.enabled_in_base = wanted;
                return Ok(());
            }
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
            Err(err) => return Err(io_err("write", &control)(err)),
        }
        let others: Vec<i32> = procs(fs, &self.base)
            .into_iter()
            .filter(|&p| p != self.pid as i32)
            .collect();
        if !others.is_empty() {
            return Err(CgroupError::InternalProcesses {
                path: self.base.clone(),
                pids: others,
            });
        }
        let Some(instance) = self.instance.clone() else {
            return Ok(());
        };
        let leaf = instance.join(SUPERVISOR_LEAF);
        create_dir(fs, &leaf)?;
        self.supervisor = Some(leaf.clone());
        write(fs, &leaf.join("cgroup.procs"), &self.pid.to_string())?;
        tracing::info!(leaf = %leaf.display(), "sandforkd moved into a leaf cgroup to delegate memory and pids");
        write(fs, &control, &enable(&wanted))?;
        self.enabled_in_base = wanted;
        Ok(())
    }

    pub(super) fn describe(&self) -> String {
        let mut line = format!(
            "cgroup v2: {}",
            self.instance.as_deref().unwrap_or(&self.base).display()
        );
        if let Some(leaf) = &self.supervisor {
            line.push_str(&format!(" (sandforkd in {})", leaf.display()));
        }
        if !self.peak_resettable {
            line.push_str("; no per-run peak memory (memory.peak not resettable)");
        }
        line
    }

    /// Removes the slots, moves the daemon back where it was, restores `base`'s
    /// subtree_control, removes the instance directory; reports the first failure after trying
    /// everything.
    pub(super) fn remove(
        &mut self,
        slots: impl Iterator<Item = Identity>,
    ) -> Result<(), CgroupError> {
        let fs = Arc::clone(&self.fs);
        let fs = fs.as_ref();
        let mut first_error = None;
        let mut note = |result: Result<(), CgroupError>| {
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        };
        for slot in slots {
            let dir = slot.dir.clone();
            drop(slot); // close the pre-opened descriptors first
            note(remove_dir(fs, &dir));
        }
        let Some(instance) = self.instance.take() else {
            return first_error.map_or(Ok(()), Err);
        };
        let base_control = self.base.join("cgroup.subtree_control");
        if let Some(leaf) = self.supervisor.take() {
            // Back into `base`, which must first stop delegating (processes only in leaves),
            // which its child, the instance directory, must do before it.
            note(write(
                fs,
                &instance.join("cgroup.subtree_control"),
                &disable(&CONTROLLERS),
            ));
            if !self.enabled_in_base.is_empty() {
                note(write(fs, &base_control, &disable(&self.enabled_in_base)));
                self.enabled_in_base.clear();
            }
            note(write(
                fs,
                &self.base.join("cgroup.procs"),
                &self.pid.to_string(),
            ));
            note(remove_dir(fs, &leaf));
        }
        note(remove_dir(fs, &instance));
        if !self.enabled_in_base.is_empty() {
            // Best effort: a sibling created since may use them, which is fine to leave.
            let _ = fs.write(&base_control, &disable(&self.enabled_in_base));
            self.enabled_in_base.clear();
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Tree {
    /// Only does work when `create` failed half-way (`remove` empties the fields).
    fn drop(&mut self) {
        if self.instance.is_some() {
            if let Err(err) = self.remove(std::iter::empty()) {
                tracing::warn!(cause = %err, "cleaning up a half-created cgroup tree");
            }
        }
    }
}

/// rmdir of one cgroup (and anything below it); a busy one is reported with its pids.
fn remove_dir(fs: &dyn CgroupFs, dir: &Path) -> Result<(), CgroupError> {
    let busy = remove_tree(fs, dir)?;
    match busy.into_iter().next() {
        Some((path, pids)) => Err(CgroupError::Busy { path, pids }),
        None => Ok(()),
    }
}

impl Identity {
    pub(super) fn prepare(&self, memory_bytes: u64, pids: u64) -> Result<(), CgroupError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.memory_limit != Some(memory_bytes) {
            state.memory_limit = None;
            self.files.memory_max.write(&memory_bytes.to_string())?;
            state.memory_limit = Some(memory_bytes);
        }
        if state.pids_limit != Some(pids) {
            state.pids_limit = None;
            self.files.pids_max.write(&pids.to_string())?;
            state.pids_limit = Some(pids);
        }
        if let Some(peak) = &self.peak {
            peak.write("reset")
                .map_err(io_err("reset", &self.dir.join("memory.peak")))?;
        }
        state.oom_kill_baseline = self.oom_kills()?;
        state.cpu_usec_baseline = self.cpu_usec()?;
        Ok(())
    }

    pub(super) fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        self.procs.write(&pid.to_string()).map_err(io_err(
            "attach a process to",
            &self.dir.join("cgroup.procs"),
        ))
    }

    pub(super) fn usage(&self) -> Result<SlotUsage, CgroupError> {
        let (oom_baseline, cpu_baseline) = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (state.oom_kill_baseline, state.cpu_usec_baseline)
        };
        let peak_memory_bytes = match &self.peak {
            Some(peak) => {
                let path = self.dir.join("memory.peak");
                let text = peak.read().map_err(io_err("read", &path))?;
                Some(parse_u64(&path, &text)?)
            }
            None => None,
        };
        Ok(SlotUsage {
            peak_memory_bytes,
            cpu_ns: self
                .cpu_usec()?
                .saturating_sub(cpu_baseline)
                .saturating_mul(1000),
            oom_killed: self.oom_kills()? > oom_baseline,
        })
    }

    pub(super) fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_procs(self.fs.as_ref(), &self.dir)
    }

    pub(super) fn tasks(&self) -> Result<u64, CgroupError> {
        self.files.pids_current.read_u64()
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        self.files.events.read_flat_key("oom_kill")
    }

    fn cpu_usec(&self) -> Result<u64, CgroupError> {
        self.files.cpu_stat.read_flat_key("usage_usec")
    }
}

#[cfg(test)]
mod tests;
