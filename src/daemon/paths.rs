//! Where the daemon's files are: the helpers it execs or hands to zygotes (`zygote-init`, the
//! lockdown library), found next to its executable, and the runtime dir it writes zygote.py,
//! probe.py and the library into for the jails to bind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::daemon::engine::pool::{LOCKDOWN_LIB, PROBE_SCRIPT, ZYGOTE_SCRIPT};
use crate::daemon::supervisor::StartError;

pub(crate) const ZYGOTE_PY: &str = include_str!("../../zygote/zygote.py");
pub(crate) const PROBE_PY: &str = include_str!("../../zygote/probe.py");
/// The helper binary that builds a zygote's jail.
pub const ZYGOTE_INIT: &str = "zygote-init";

/// Where the supervisor's helper files are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// zygote-init, exec'd for every zygote.
    pub zygote_init: PathBuf,
    /// The lockdown cdylib the Python zygote loads (copied into the runtime dir).
    pub lockdown_lib: PathBuf,
    /// Files bind-mounted read-only into every jail at /sandfork.
    pub runtime_dir: PathBuf,
    /// Not root: rootless mode (one uid, no cgroups; see `crate::daemon::rootless`). From the euid.
    pub rootless: bool,
    /// Names this daemon's cgroup tree (`sandfork-<instance>`): stable across restarts so a
    /// crashed daemon's leftovers are found and removed, distinct between daemons.
    pub instance: String,
}

/// Finds a helper (`zygote-init`, the lockdown library): `$SANDFORK_LIBEXEC_DIR`, else next to
/// the running executable (and its `deps/` subdirectory, where cargo puts a dependency's cdylib).
pub fn find_helper(name: &str) -> Result<PathBuf, StartError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dirs = Vec::new();
    let explicit = std::env::var_os("SANDFORK_LIBEXEC_DIR");
    if let Some(dir) = &explicit {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_owned());
        dirs.push(dir.join("deps"));
        if let Some(parent) = dir.parent() {
            // tests run from target/<profile>/deps
            dirs.push(parent.to_owned());
        }
    }
    let mut found = dirs.iter().map(|d| d.join(name)).filter(|p| p.is_file());
    // An explicit directory wins; otherwise the newest copy, because `cargo test` refreshes a
    // cdylib only under deps/ and may leave an older one beside the exe.
    let chosen = if explicit.is_some() {
        found.next()
    } else {
        found.max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    chosen.ok_or_else(|| StartError::Missing {
        name: name.to_string(),
        exe: exe.clone(),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

impl Paths {
    /// Finds the helpers ([`find_helper`]).
    pub fn discover(runtime_dir: PathBuf) -> Result<Paths, StartError> {
        Ok(Paths {
            zygote_init: find_helper(ZYGOTE_INIT)?,
            lockdown_lib: find_helper(LOCKDOWN_LIB)?,
            runtime_dir,
            rootless: crate::daemon::rootless::is_rootless(),
            instance: "default".into(),
        })
    }

    /// The default runtime dir: /run/sandfork/runtime as root, else under XDG_RUNTIME_DIR.
    pub fn default_runtime_dir() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            PathBuf::from("/run/sandfork/runtime")
        } else {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join(format!("sandfork-runtime-{}", nix::unistd::getuid()))
        }
    }

    /// Writes zygote.py, probe.py and the lockdown library into the runtime dir, world-readable
    /// (the jail's uids are unprivileged host uids).
    pub(crate) fn install_runtime(&self) -> Result<(), StartError> {
        let dir = &self.runtime_dir;
        let err = |source| StartError::Runtime {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        write_atomic(&dir.join(ZYGOTE_SCRIPT), ZYGOTE_PY.as_bytes()).map_err(err)?;
        write_atomic(&dir.join(PROBE_SCRIPT), PROBE_PY.as_bytes()).map_err(err)?;
        let lib = std::fs::read(&self.lockdown_lib).map_err(err)?;
        write_atomic(&dir.join(LOCKDOWN_LIB), &lib).map_err(err)?;
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}
