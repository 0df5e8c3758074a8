//! A fake cgroupfs in a temp dir for the unit tests: plain files the tests read and write to
//! play the kernel (memory.events, memory.peak, memory.oom_control, …), plus the few kernel rules
//! the slot code depends on:
//! - `mkdir` fills in the control files of the hierarchy (v1) or of the controllers the parent
//!   enables (v2);
//! - `rmdir` fails with EBUSY while `cgroup.procs` lists a pid or child cgroups exist;
//! - a pid written to `cgroup.procs` leaves every other cgroup of the hierarchy;
//! - v2: `cgroup.subtree_control` only enables what `cgroup.controllers` lists, refuses (EBUSY)
//!   to enable in a non-root cgroup with processes or to disable what a child still enables,
//!   and a process cannot join a non-root cgroup that enables controllers;
//! - v1: `memory.limit_in_bytes` may not exceed `memory.memsw.limit_in_bytes` and vice versa;
//! - writes to `memory.peak` change nothing visible (its reset is per descriptor);
//! - any file name can be made to fail writes with an errno.
//!
//! Longer than the ~500 lines we aim for, on purpose: one fake cgroupfs for both hierarchies,
//! whose v1 and v2 behaviours are easiest to check against each other side by side.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::fs::{Access, CgroupFs, ControlFile};
use super::{CgroupVersion, Host};

/// The pid the fake host's daemon has.
pub const FAKE_PID: u32 = 4000;

const V1_UNLIMITED: &str = "9223372036854771712";

#[derive(Debug, Clone)]
pub struct FakeCgroupFs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: tempfile::TempDir,
    version: CgroupVersion,
    /// v1: memory cgroups get memory.memsw.*; v2: memory.swap.max.
    swap: bool,
    /// v2: memory cgroups get memory.peak.
    peak: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every successful write: (file name, value).
    writes: Vec<(String, String)>,
    /// File name → errno of every write to it.
    failures: HashMap<String, i32>,
}

impl FakeCgroupFs {
    fn new(version: CgroupVersion, swap: bool, peak: bool) -> FakeCgroupFs {
        let dir = tempfile::Builder::new()
            .prefix("fake-cgroupfs-")
            .tempdir()
            .expect("tempdir");
        FakeCgroupFs {
            inner: Arc::new(Inner {
                dir,
                version,
                swap,
                peak,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// v1 with one hierarchy per name (`"cpu,cpuacct"` is one co-mounted hierarchy).
    pub fn v1(hierarchies: &[&str], memsw: bool) -> FakeCgroupFs {
        let fake = FakeCgroupFs::new(CgroupVersion::V1, memsw, false);
        for name in hierarchies {
            let root = fake.root().join(name);
            std::fs::create_dir(&root).expect("mkdir hierarchy");
            fake.populate_v1(&root);
        }
        fake
    }

    /// v2 whose root offers memory, pids, cpu and io.
    pub fn v2(swap: bool, peak: bool) -> FakeCgroupFs {
        let fake = FakeCgroupFs::new(CgroupVersion::V2, swap, peak);
        let root = fake.root().to_owned();
        for (file, content) in [
            ("cgroup.controllers", "cpu io memory pids"),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
        ] {
            std::fs::write(root.join(file), content).expect("write");
        }
        fake
    }

    pub fn root(&self) -> &Path {
        self.inner.dir.path()
    }

    /// A host on this fake with the given `/proc/self/cgroup`.
    pub fn host(&self, proc_self_cgroup: &str) -> Host {
        Host {
            fs: Arc::new(self.clone()),
            fs_root: self.root().to_owned(),
            proc_self_cgroup: proc_self_cgroup.to_string(),
            pid: FAKE_PID,
        }
    }

    /// A v2 cgroup at `rel` (parents created as needed) whose parent enables `controllers`.
    pub fn v2_cgroup(&self, rel: &str, controllers: &[&str]) {
        let mut path = self.root().to_owned();
        for part in Path::new(rel).components() {
            let parent = path.clone();
            path.push(part);
            if !path.exists() {
                std::fs::write(parent.join("cgroup.subtree_control"), controllers.join(" "))
                    .expect("write");
                self.create_dir(&path).expect("mkdir");
            }
        }
    }

    /// v1 cgroups along `rel` (first component: the hierarchy).
    pub fn mkdir_p(&self, rel: &str) {
        let mut path = self.root().to_owned();
        for part in Path::new(rel).components() {
            path.push(part);
            if !path.exists() {
                self.create_dir(&path).expect("mkdir");
            }
        }
    }

    pub fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root())
            .expect("under the fake root")
            .display()
            .to_string()
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.root().join(rel).exists()
    }

    pub fn get(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Plays the kernel: sets a file's content.
    pub fn set(&self, rel: &str, content: &str) {
        std::fs::write(self.root().join(rel), content).unwrap_or_else(|e| panic!("{rel}: {e}"));
    }

    /// Plays the kernel: every process of the cgroup `rel` exited.
    pub fn clear_procs(&self, rel: &str) {
        self.set(&format!("{rel}/cgroup.procs"), "");
    }

    /// Makes every write to files named `name` fail with `errno`.
    pub fn fail_writes(&self, name: &str, errno: i32) {
        self.state().failures.insert(name.to_string(), errno);
    }

    /// Successful writes so far to files named `name`.
    pub fn writes_to(&self, name: &str) -> usize {
        self.state()
            .writes
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The v1 hierarchy directory a path belongs to.
    fn hierarchy_of(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix(self.root()).unwrap_or(path);
        let first = rel.components().next().map(|c| c.as_os_str().to_owned());
        self.root().join(first.unwrap_or_default())
    }

    fn populate_v1(&self, dir: &Path) {
        let hierarchy = self.hierarchy_of(dir);
        let name = hierarchy
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = vec![("cgroup.procs", String::new()), ("tasks", String::new())];
        for controller in name.split(',') {
            match controller {
                "memory" => {
                    files.extend([
                        ("memory.limit_in_bytes", V1_UNLIMITED.to_string()),
                        ("memory.max_usage_in_bytes", "0".into()),
                        ("memory.usage_in_bytes", "0".into()),
                        ("memory.failcnt", "0".into()),
                        ("memory.swappiness", "60".into()),
                        (
                            "memory.oom_control",
                            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n".into(),
                        ),
                    ]);
                    if self.inner.swap {
                        files.extend([
                            ("memory.memsw.limit_in_bytes", V1_UNLIMITED.to_string()),
                            ("memory.memsw.max_usage_in_bytes", "0".into()),
                        ]);
                    }
                }
                "pids" => files.extend([("pids.max", "max".into()), ("pids.current", "0".into())]),
                "cpuacct" => files.push(("cpuacct.usage", "0".into())),
                "cpu" => files.push(("cpu.shares", "1024".into())),
                _ => {}
            }
        }
        for (file, content) in files {
            std::fs::write(dir.join(file), content).expect("populate");
        }
    }

    fn controller_files_v2(&self, controller: &str) -> Vec<(&'static str, String)> {
        match controller {
            "memory" => {
                let mut files = vec![
                    ("memory.max", "max".to_string()),
                    ("memory.current", "0".into()),
                    (
                        "memory.events",
                        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n".into(),
                    ),
                ];
                if self.inner.swap {
                    files.push(("memory.swap.max", "max".into()));
                }
                if self.inner.peak {
                    files.push(("memory.peak", "0".into()));
                }
                files
            }
            "pids" => vec![("pids.max", "max".into()), ("pids.current", "0".into())],
            _ => Vec::new(),
        }
    }

    fn populate_v2(&self, dir: &Path) -> io::Result<()> {
        let parent = dir.parent().unwrap_or(dir);
        let delegated = std::fs::read_to_string(parent.join("cgroup.subtree_control"))?;
        for (file, content) in [
            ("cgroup.controllers", delegated.trim().to_string()),
            ("cgroup.subtree_control", String::new()),
            ("cgroup.procs", String::new()),
            ("cgroup.events", "populated 0\nfrozen 0\n".into()),
            (
                "cpu.stat",
                "usage_usec 0\nuser_usec 0\nsystem_usec 0\n".into(),
            ),
        ] {
            std::fs::write(dir.join(file), content)?;
        }
        for controller in delegated.split_whitespace() {
            for (file, content) in self.controller_files_v2(controller) {
                std::fs::write(dir.join(file), content)?;
            }
        }
        Ok(())
    }

    /// Every cgroup directory of the tree containing `dir` (v1: its hierarchy).
    fn all_cgroups(&self, dir: &Path) -> Vec<PathBuf> {
        let top = match self.inner.version {
            CgroupVersion::V1 => self.hierarchy_of(dir),
            CgroupVersion::V2 => self.root().to_owned(),
        };
        let mut out = vec![top.clone()];
        let mut i = 0;
        while i < out.len() {
            if let Ok(entries) = std::fs::read_dir(&out[i]) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() {
                        out.push(entry.path());
                    }
                }
            }
            i += 1;
        }
        out
    }

    fn move_process(&self, dest: &Path, value: &str) -> io::Result<()> {
        let pid: i32 = value
            .trim()
            .parse()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if self.inner.version == CgroupVersion::V2
            && dest != self.root()
            && !read(&dest.join("cgroup.subtree_control"))?
                .trim()
                .is_empty()
        {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        for cgroup in self.all_cgroups(dest) {
            let file = cgroup.join("cgroup.procs");
            let left: Vec<String> = read(&file)?
                .split_whitespace()
                .filter(|p| p.parse::<i32>() != Ok(pid))
                .map(|p| format!("{p}\n"))
                .collect();
            std::fs::write(&file, left.concat())?;
        }
        let file = dest.join("cgroup.procs");
        let mut content = read(&file)?;
        content.push_str(&format!("{pid}\n"));
        std::fs::write(file, content)
    }

    fn subtree_control(&self, dir: &Path, value: &str) -> io::Result<()> {
        let available = read(&dir.join("cgroup.controllers"))?;
        let mut enabled: Vec<String> = read(&dir.join("cgroup.subtree_control"))?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let children: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        for token in value.split_whitespace() {
            let (op, name) = token.split_at(1);
            match op {
                "+" => {
                    if !available.split_whitespace().any(|c| c == name) {
                        return Err(io::Error::from_raw_os_error(libc::ENOENT));
                    }
                    if dir != self.root() && !read(&dir.join("cgroup.procs"))?.trim().is_empty() {
                        return Err(io::Error::from_raw_os_error(libc::EBUSY));
                    }
                    if !enabled.iter().any(|c| c == name) {
                        enabled.push(name.to_string());
                    }
                }
                "-" => {
                    for child in &children {
                        let theirs = read(&child.join("cgroup.subtree_control"))?;
                        if theirs.split_whitespace().any(|c| c == name) {
                            return Err(io::Error::from_raw_os_error(libc::EBUSY));
                        }
                    }
                    enabled.retain(|c| c != name);
                }
                _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
        // Keep the kernel's order (the order of cgroup.controllers).
        let ordered: Vec<&str> = ["cpu", "io", "memory", "pids"]
            .into_iter()
            .filter(|c| enabled.iter().any(|e| e == c))
            .collect();
        std::fs::write(dir.join("cgroup.subtree_control"), ordered.join(" "))?;
        for child in children {
            std::fs::write(child.join("cgroup.controllers"), ordered.join(" "))?;
            for controller in ["memory", "pids"] {
                let on = ordered.contains(&controller);
                for (file, content) in self.controller_files_v2(controller) {
                    let path = child.join(file);
                    if on && !path.exists() {
                        std::fs::write(path, content)?;
                    } else if !on && path.exists() {
                        std::fs::remove_file(path)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn memory_limit_v1(&self, path: &Path, value: &str) -> io::Result<()> {
        let dir = path.parent().unwrap_or(path);
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        let new: u64 = value
            .trim()
            .parse()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let number = |p: &Path| -> io::Result<u64> {
            read(p)?
                .trim()
                .parse()
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if memsw.exists() {
            let refused = match name {
                "memory.limit_in_bytes" => new > number(&memsw)?,
                _ => new < number(&dir.join("memory.limit_in_bytes"))?,
            };
            if refused {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        std::fs::write(path, value)
    }
}

fn read(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path)
}

impl CgroupFs for FakeCgroupFs {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        read(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if let Some(&errno) = self.state().failures.get(&name) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if !path.is_file() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let dir = path.parent().unwrap_or(path);
        match name.as_str() {
            "cgroup.procs" => self.move_process(dir, value)?,
            "cgroup.subtree_control" => self.subtree_control(dir, value)?,
            "memory.limit_in_bytes" | "memory.memsw.limit_in_bytes" => {
                self.memory_limit_v1(path, value)?
            }
            "memory.peak" => {}
            _ => std::fs::write(path, value)?,
        }
        self.state().writes.push((name, value.to_string()));
        Ok(())
    }

    fn open(&self, path: &Path, access: Access) -> io::Result<Box<dyn ControlFile>> {
        if !path.is_file() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(Box::new(FakeFile {
            fs: self.clone(),
            path: path.to_owned(),
            access,
        }))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        match self.inner.version {
            CgroupVersion::V1 => {
                self.populate_v1(path);
                Ok(())
            }
            CgroupVersion::V2 => self.populate_v2(path),
        }
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        if !path.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if !read(&path.join("cgroup.procs"))?.trim().is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        if !self.child_dirs(path)?.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        std::fs::remove_dir_all(path)
    }

    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        Ok(dirs)
    }
}

/// A "pre-opened" fake control file: the same rules as path writes.
#[derive(Debug)]
struct FakeFile {
    fs: FakeCgroupFs,
    path: PathBuf,
    /// As the kernel does, a descriptor only reads or writes if it was opened to.
    access: Access,
}

impl ControlFile for FakeFile {
    fn write(&self, value: &str) -> io::Result<()> {
        if self.access == Access::Read {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        CgroupFs::write(&self.fs, &self.path, value)
    }

    fn read(&self) -> io::Result<String> {
        if self.access == Access::Write {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        read(&self.path)
    }
}
