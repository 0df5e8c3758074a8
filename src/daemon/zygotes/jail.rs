//! What goes into a zygote's jail: the interpreter probe and the root plan from which the
//! supervisor writes the [`JailSpec`] that `zygote-init` builds (the spec itself is defined once,
//! in `sandfork-ipc`).
//!
//! At start-up each profile's interpreter is probed once on the host (`zygote/probe.py`): its
//! real executable (shims resolved), prefixes, import path and every shared object it maps after
//! importing the preload list and the stdlib's extension modules. From that, `RootPlan` derives
//! the minimal read-only root: the directories to bind (at their host paths, so that
//! `sys.prefix` and venv `pyvenv.cfg` files stay true) and the symlink chains leading to them
//! (`/lib64 -> usr/lib64`, …). The same paths become the child's landlock read/execute rules.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

pub use sandfork_ipc::jail::{Bind, ExecSpec, IdMapping, JailSpec, Symlink};

/// Where, inside the jail, the runtime dir (zygote.py, the lockdown library) is mounted.
pub const JAIL_RUNTIME_DIR: &str = "/sandfork";
/// Parent of the per-child tmpfs mount point; landlock's read/write rule is put here (a rule on
/// the mount point itself would be hidden by the mount).
pub const JAIL_WORK_PARENT: &str = "/sandbox";
/// Each child's private tmpfs working directory.
pub const JAIL_WORK_DIR: &str = "/sandbox/work";
/// A profile with processes: each child's private shared-memory tmpfs, below the landlock rule
/// on [`JAIL_WORK_PARENT`]; the jail's `/dev/shm` is a link to it (glibc's `shm_open` and
/// `sem_open` use `/dev/shm`).
pub const JAIL_SHM_DIR: &str = "/sandbox/shm";
/// Device nodes every Python needs.
pub const JAIL_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];
/// Host files bound besides the interpreter: the dynamic loader's cache.
const EXTRA_FILES: &[&str] = &["/etc/ld.so.cache"];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot run interpreter {python}: {source}")]
    ProbeSpawn {
        python: String,
        source: std::io::Error,
    },
    #[error("interpreter {python} probe failed ({status}): {stderr}")]
    ProbeFailed {
        python: String,
        status: String,
        stderr: String,
    },
    #[error("interpreter {python} probe printed invalid JSON: {source}")]
    ProbeOutput {
        python: String,
        source: serde_json::Error,
    },
    #[error("cannot resolve {path}: {source}")]
    Resolve {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("symlink loop or too many links under {0}")]
    SymlinkLoop(PathBuf),
    /// A path of the zygote's config is not UTF-8 (JSON cannot carry it).
    #[error("cannot write the zygote's config: {0}")]
    ZygoteConfig(serde_json::Error),
}

/// What the probe reports about an interpreter.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Interpreter {
    /// The real executable, as the interpreter reports it (`sys.executable`).
    pub executable: PathBuf,
    pub version: String,
    pub prefix: PathBuf,
    pub base_prefix: PathBuf,
    pub exec_prefix: PathBuf,
    pub base_exec_prefix: PathBuf,
    /// `sys.path`, so that site-packages outside the prefixes are bound too.
    pub path: Vec<PathBuf>,
    /// Every file the probe had mapped: executable, libpython, extension modules, system libs.
    pub mapped: Vec<PathBuf>,
    /// Preload modules that failed to import on the host, with the reason.
    pub preload_failed: std::collections::BTreeMap<String, String>,
}

impl Interpreter {
    /// Runs the probe with `python` (a command on PATH or a path) in isolated mode.
    pub fn probe(python: &str, probe_script: &Path, preload: &[String]) -> Result<Self, JailError> {
        let preload_json = serde_json::to_string(preload).unwrap_or_else(|_| "[]".into());
        let output = Command::new(python)
            .arg("-I")
            .arg(probe_script)
            .arg(preload_json)
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .output()
            .map_err(|source| JailError::ProbeSpawn {
                python: python.to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(JailError::ProbeFailed {
                python: python.to_string(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        serde_json::from_slice(&output.stdout).map_err(|source| JailError::ProbeOutput {
            python: python.to_string(),
            source,
        })
    }

    /// The ELF interpreter (`PT_INTERP`) the executable asks for, e.g. /lib64/ld-linux-x86-64.so.2.
    /// What a child may execute (landlock's execute right): the interpreter's own executable
    /// and its ELF loader, which the kernel opens for execution with every program — nothing
    /// else, not even the rest of the prefix: with a system Python the prefix is `/usr`, whose
    /// `bin` holds every program of the host (the cgroup v2 guest showed `/usr/bin/env` run).
    /// Shared libraries need no execute right (the kernel checks it on `execve` only).
    pub fn exec_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.executable.clone()];
        paths.extend(self.elf_interpreter());
        paths
    }

    pub fn elf_interpreter(&self) -> Option<PathBuf> {
        let data = std::fs::read(&self.executable).ok()?;
        elf_interp(&data).map(PathBuf::from)
    }
}

/// Reads PT_INTERP from a 64-bit little-endian ELF image.
fn elf_interp(data: &[u8]) -> Option<String> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    if data.get(0..4)? != b"\x7fELF" || *data.get(4)? != 2 || *data.get(5)? != 1 {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? == 3 {
            let off = usize::try_from(u64_at(ph + 8)?).ok()?;
            let size = usize::try_from(u64_at(ph + 32)?).ok()?;
            let raw = data.get(off..off.checked_add(size)?)?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            return String::from_utf8(raw[..end].to_vec()).ok();
        }
    }
    None
}

/// The minimal root: which host paths are bound read-only and which symlinks lead to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootPlan {
    binds: BTreeSet<PathBuf>,
    symlinks: BTreeSet<Symlink>,
}

impl RootPlan {
    /// The plan for an interpreter: its prefixes, import path, mapped libraries (their
    /// directories) and the dynamic loader with its symlink chain.
    pub fn for_interpreter(interp: &Interpreter) -> Result<RootPlan, JailError> {
        let mut plan = RootPlan::default();
        for prefix in [
            &interp.prefix,
            &interp.base_prefix,
            &interp.exec_prefix,
            &interp.base_exec_prefix,
        ] {
            plan.expose(prefix)?;
        }
        plan.expose(&interp.executable)?;
        for entry in &interp.path {
            if entry.exists() {
                plan.expose(entry)?;
            }
        }
        for lib in &interp.mapped {
            let dir = lib.parent().unwrap_or(lib);
            if dir.exists() {
                plan.expose(dir)?;
            }
        }
        if let Some(loader) = interp.elf_interpreter() {
            plan.expose(&loader)?;
        }
        for file in EXTRA_FILES {
            let path = Path::new(file);
            if path.exists() {
                plan.expose(path)?;
            }
        }
        Ok(plan)
    }

    /// Makes `path` reachable in the jail exactly as on the host: every symlink on the way is
    /// recreated, and the real file or directory at the end is bound.
    pub fn expose(&mut self, path: &Path) -> Result<(), JailError> {
        let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
        let mut hops = 0;
        while let Some(path) = pending.pop() {
            let mut current = PathBuf::from("/");
            let mut components = path.components().peekable();
            let mut redirected = false;
            while let Some(component) = components.next() {
                match component {
                    Component::RootDir | Component::CurDir => continue,
                    Component::ParentDir => {
                        current.pop();
                        continue;
                    }
                    Component::Prefix(_) => continue,
                    Component::Normal(name) => current.push(name),
                }
                let meta =
                    std::fs::symlink_metadata(&current).map_err(|source| JailError::Resolve {
                        path: current.clone(),
                        source,
                    })?;
                if meta.file_type().is_symlink() {
                    hops += 1;
                    if hops > 40 {
                        return Err(JailError::SymlinkLoop(path.clone()));
                    }
                    let target =
                        std::fs::read_link(&current).map_err(|source| JailError::Resolve {
                            path: current.clone(),
                            source,
                        })?;
                    self.symlinks.insert(Symlink {
                        path: current.clone(),
                        target: target.clone(),
                    });
                    let mut next = current.parent().unwrap_or(Path::new("/")).join(&target);
                    for rest in components.by_ref() {
                        next.push(rest);
                    }
                    pending.push(next);
                    redirected = true;
                    break;
                }
            }
            if !redirected {
                self.binds.insert(current);
            }
        }
        Ok(())
    }

    /// Binds with nested ones dropped (a bound directory already shows what lies below it).
    pub fn binds(&self) -> Vec<PathBuf> {
        let mut kept: Vec<PathBuf> = Vec::new();
        for path in &self.binds {
            if !kept.iter().any(|outer| path.starts_with(outer)) {
                kept.push(path.clone());
            }
        }
        kept
    }

    /// Symlinks that do not lie inside a bound directory (those exist there already).
    pub fn symlinks(&self) -> Vec<Symlink> {
        let binds = self.binds();
        self.symlinks
            .iter()
            .filter(|link| !binds.iter().any(|b| link.path.starts_with(b)))
            .cloned()
            .collect()
    }

    /// Paths the child may read (landlock), the same set the jail binds.
    pub fn read_paths(&self) -> Vec<PathBuf> {
        self.binds()
    }
}

/// Environment every zygote starts with: no host variables leak in; BLAS pools stay at one
/// thread so the zygote is single-threaded when it forks (DESIGN §2, §8).
pub fn zygote_env() -> Vec<(String, String)> {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("TZ", "UTC"),
        ("HOME", JAIL_WORK_DIR),
        ("TMPDIR", JAIL_WORK_DIR),
        ("OPENBLAS_NUM_THREADS", "1"),
        ("OMP_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "1"),
        ("NUMEXPR_NUM_THREADS", "1"),
        ("VECLIB_MAXIMUM_THREADS", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// True if `uid` (and the range above it) looks unused on this host: no passwd entry and no
/// file owner we can cheaply see. Used by start-up checks.
pub fn uid_in_passwd(uid: u32) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|text| {
            text.lines()
                .filter_map(|line| line.split(':').nth(2))
                .any(|field| field.parse::<u32>() == Ok(uid))
        })
        .unwrap_or(false)
}

/// Owner uid of a path, for diagnostics.
pub fn owner_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_follows_symlink_chains() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib/real")).unwrap();
        std::fs::write(root.join("usr/lib/real/ld.so"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("real/ld.so", root.join("usr/lib/ld-link")).unwrap();
        let mut plan = RootPlan::default();
        plan.expose(&root.join("lib/ld-link")).unwrap();
        assert_eq!(plan.binds(), vec![root.join("usr/lib/real/ld.so")]);
        let links: Vec<_> = plan.symlinks().into_iter().map(|l| l.path).collect();
        assert_eq!(links, vec![root.join("lib"), root.join("usr/lib/ld-link")]);
    }

    #[test]
    fn nested_binds_and_inner_symlinks_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/link")).unwrap();
        let mut plan = RootPlan::default();
        plan.expose(&root.join("a/b")).unwrap();
        plan.expose(&root.join("a/link")).unwrap();
        plan.expose(&root.join("a")).unwrap();
        assert_eq!(plan.binds(), vec![root.join("a")]);
        assert!(plan.symlinks().is_empty());
    }

    #[test]
    fn symlink_loops_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("y", dir.path().join("x")).unwrap();
        std::os::unix::fs::symlink("x", dir.path().join("y")).unwrap();
        let mut plan = RootPlan::default();
        assert!(matches!(
            plan.expose(&dir.path().join("x")),
            Err(JailError::SymlinkLoop(_))
        ));
    }

    #[test]
    fn reads_pt_interp_of_this_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(exe).unwrap();
        let interp = elf_interp(&data).expect("a dynamically linked test binary has PT_INTERP");
        assert!(interp.starts_with('/'), "{interp}");
        assert!(elf_interp(b"not an elf").is_none());
    }
}
