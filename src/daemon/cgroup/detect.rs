//! Which cgroup hierarchies the host has and where this process sits in them: read from
//! `/proc/self/cgroup` and the mount table through the injected [`Host`], so tests can fake it.

use super::*;

/// Everything the cgroup code learns about the host, injected so tests can fake it.
#[derive(Debug, Clone)]
pub struct Host {
    /// The cgroup file system (the real one, or the tests' fake).
    pub fs: Arc<dyn CgroupFs>,
    /// Where the hierarchies are mounted, normally [`DEFAULT_FS_ROOT`].
    pub fs_root: PathBuf,
    /// The content of `/proc/self/cgroup`: this process's cgroup in each hierarchy, under which
    /// the slots are created so nothing else on the host is touched.
    pub proc_self_cgroup: String,
    /// This process's pid: on v2 the daemon may have to move itself into a leaf (see [`v2`]).
    pub pid: u32,
}

impl Host {
    /// The running process on the real cgroupfs mounted at `fs_root`.
    pub fn current(fs_root: &Path) -> Result<Host, CgroupError> {
        let proc_self_cgroup =
            std::fs::read_to_string("/proc/self/cgroup").map_err(CgroupError::ProcSelf)?;
        Ok(Host {
            fs: Arc::new(HostFs),
            fs_root: fs_root.to_owned(),
            proc_self_cgroup,
            pid: std::process::id(),
        })
    }
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controller,list:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Membership {
    pub(super) id: u32,
    pub(super) controllers: Vec<String>,
    pub(super) path: String,
}

pub(super) fn parse_proc_self_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.parse().ok()?;
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let path = parts.next()?.to_string();
            Some(Membership {
                id,
                controllers,
                path,
            })
        })
        .collect()
}

/// `root` joined with a cgroup path as `/proc/self/cgroup` prints it (absolute, `/` = root).
pub(super) fn under(root: &Path, cgroup_path: &str) -> PathBuf {
    let relative = cgroup_path.trim_start_matches('/');
    if relative.is_empty() {
        root.to_owned()
    } else {
        root.join(relative)
    }
}

/// What a host offers, found without creating anything (for `sandfork doctor` and `create`).
#[derive(Debug, Clone)]
pub struct Detection {
    pub version: CgroupVersion,
    /// Where the slot tree would go: this process's own cgroup in each hierarchy used, with
    /// the controllers used there.
    pub hierarchies: Vec<DetectedHierarchy>,
    /// Each needed controller that is not usable, with the reason.
    pub missing: Vec<(&'static str, String)>,
    /// Facts worth reporting (swap accounting, peak reset, delegation).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedHierarchy {
    /// Controllers the slots use in this hierarchy (v1: `memory`, `pids`, `cpuacct`).
    pub controllers: Vec<&'static str>,
    /// This process's cgroup in the hierarchy: the instance directory is created inside.
    pub base: PathBuf,
}

impl Detection {
    /// Memory, pids and CPU accounting are all there.
    pub fn usable(&self) -> bool {
        self.missing.is_empty()
    }

    /// One line: version, where, and what is missing.
    pub fn summary(&self) -> String {
        let places = self
            .hierarchies
            .iter()
            .map(|h| format!("{} at {}", h.controllers.join("+"), h.base.display()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut line = format!("{}: {places}", self.version);
        for (controller, reason) in &self.missing {
            line.push_str(&format!("; {controller} missing: {reason}"));
        }
        line
    }
}

/// Finds the cgroup version and controllers of the running process, creating nothing.
pub fn detect(fs_root: &Path) -> Result<Detection, CgroupError> {
    detect_on(&Host::current(fs_root)?)
}

/// [`detect`] on an injected host.
pub fn detect_on(host: &Host) -> Result<Detection, CgroupError> {
    if host.fs.exists(&host.fs_root.join("cgroup.controllers")) {
        v2::detect(host)
    } else {
        v1::detect(host)
    }
}
