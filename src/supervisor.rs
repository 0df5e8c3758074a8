//! The supervisor: prepares the runtime files, probes every profile, keeps the zygote pools and
//! slots, and runs requests. It never forks from its own (multi-threaded) process except through
//! `Command` on the dedicated spawner thread, and never runs user code.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_protocol::{ProfileStatus, RunResult, RunSpec, ServerStatus};
use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, DEFAULT_PROFILE};
use crate::pool::{Pool, Profile, LOCKDOWN_LIB, PROBE_SCRIPT, ZYGOTE_SCRIPT};
use crate::run;
use crate::slots::Slots;
use crate::zygote::Spawner;

const ZYGOTE_PY: &str = include_str!("../zygote/zygote.py");
const PROBE_PY: &str = include_str!("../zygote/probe.py");
/// The helper binary that builds a zygote's jail.
pub const ZYGOTE_INIT: &str = "zygote-init";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot find {name} next to {exe} (looked in {looked}); build the workspace with `cargo build --workspace` or set SANDFORK_LIBEXEC_DIR")]
    Missing {
        name: String,
        exe: PathBuf,
        looked: String,
    },
    #[error("cannot prepare runtime dir {path}: {source}")]
    Runtime {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {profile}: {source}")]
    Profile {
        profile: String,
        source: crate::jail::JailError,
    },
    #[error("profile {0}: a blocking task failed")]
    Join(String),
    #[error("seccomp policy does not compile: {0}")]
    Seccomp(String),
}

/// Where the supervisor's helper files are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// zygote-init, exec'd for every zygote.
    pub zygote_init: PathBuf,
    /// The lockdown cdylib the Python zygote loads (copied into the runtime dir).
    pub lockdown_lib: PathBuf,
    /// Files bind-mounted read-only into every jail at /sandfork.
    pub runtime_dir: PathBuf,
}

impl Paths {
    /// Finds the helpers: `$SANDFORK_LIBEXEC_DIR`, else next to the running executable (and its
    /// `deps/` subdirectory, where cargo puts a dependency's cdylib).
    pub fn discover(runtime_dir: PathBuf) -> Result<Paths, StartError> {
        let exe = std::env::current_exe().unwrap_or_default();
        let mut dirs = Vec::new();
        if let Some(dir) = std::env::var_os("SANDFORK_LIBEXEC_DIR") {
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
        let explicit = std::env::var_os("SANDFORK_LIBEXEC_DIR").is_some();
        let find = |name: &str| -> Result<PathBuf, StartError> {
            let mut found = dirs.iter().map(|d| d.join(name)).filter(|p| p.is_file());
            // An explicit directory wins; otherwise the newest copy, because `cargo test`
            // refreshes a cdylib only under deps/ and may leave an older one beside the exe.
            let chosen = if explicit {
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
        };
        Ok(Paths {
            zygote_init: find(ZYGOTE_INIT)?,
            lockdown_lib: find(LOCKDOWN_LIB)?,
            runtime_dir,
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
    fn install_runtime(&self) -> Result<(), StartError> {
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

/// The running supervisor.
#[derive(Debug)]
pub struct Supervisor {
    pools: BTreeMap<String, Pool>,
    slots: Slots,
    next_run_id: AtomicU64,
    /// Largest frame accepted or sent on the socket.
    pub max_frame_len: u32,
    /// In-flight runs get this long to finish after SIGTERM.
    pub shutdown_grace: Duration,
    stop: watch::Sender<bool>,
}

impl Supervisor {
    /// Prepares runtime files, probes every profile and starts its zygotes (without waiting
    /// for them; see `wait_ready`).
    pub async fn start(config: &Config, paths: Paths) -> Result<Arc<Supervisor>, StartError> {
        sandfork_lockdown::seccomp::child_filters()
            .map_err(|e| StartError::Seccomp(e.to_string()))?;
        sandfork_lockdown::seccomp::zygote_filters()
            .map_err(|e| StartError::Seccomp(e.to_string()))?;
        paths.install_runtime()?;
        let spawner = Spawner::start();
        let (stop, stop_rx) = watch::channel(false);
        let mut pools = BTreeMap::new();
        for (name, profile_config) in &config.profiles {
            let started = Instant::now();
            let (name_owned, profile_config, config_owned, runtime_dir) = (
                name.clone(),
                profile_config.clone(),
                config.clone(),
                paths.runtime_dir.clone(),
            );
            let profile = tokio::task::spawn_blocking(move || {
                Profile::prepare(&name_owned, &profile_config, &config_owned, &runtime_dir)
            })
            .await
            .map_err(|_| StartError::Join(name.clone()))?
            .map_err(|source| StartError::Profile {
                profile: name.clone(),
                source,
            })?;
            info!(
                profile = %name,
                python = %profile.interpreter.executable.display(),
                version = %profile.interpreter.version,
                binds = profile.spec.binds.len(),
                probe_ms = started.elapsed().as_millis() as u64,
                "profile prepared"
            );
            let pool = Pool::start(
                Arc::new(profile),
                spawner.clone(),
                paths.zygote_init.clone(),
                stop_rx.clone(),
            );
            pools.insert(name.clone(), pool);
        }
        Ok(Arc::new(Supervisor {
            pools,
            slots: Slots::new(config.slot_count()),
            next_run_id: AtomicU64::new(1),
            max_frame_len: config.max_frame_len,
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            stop,
        }))
    }

    /// True when every profile has at least one live zygote.
    pub fn is_ready(&self) -> bool {
        self.pools.values().all(|p| p.ready_count() > 0)
    }

    /// Waits until ready, or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_ready()
    }

    pub fn status(&self) -> ServerStatus {
        ServerStatus {
            ready: self.is_ready(),
            profiles: self
                .pools
                .iter()
                .map(|(name, pool)| ProfileStatus {
                    name: name.clone(),
                    zygotes_ready: pool.ready_count(),
                    zygotes_wanted: pool.wanted(),
                })
                .collect(),
        }
    }

    /// Runs one request to completion. Dropping the future kills the run's child.
    pub async fn execute(&self, spec: RunSpec, received: Instant) -> RunResult {
        let name = spec.profile.as_deref().unwrap_or(DEFAULT_PROFILE);
        let Some(pool) = self.pools.get(name) else {
            return run::rejected(format!("unknown profile {name:?}"));
        };
        let run_id = self.next_run_id.fetch_add(1, Ordering::Relaxed);
        run::execute(pool, &self.slots, run_id, spec, received).await
    }

    /// Stops the keepers and kills every zygote (and so every child: each zygote is PID 1 of
    /// its namespace).
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        for pool in self.pools.values() {
            for zygote in pool.zygotes() {
                zygote.stop().await;
            }
        }
    }

    /// zygote-init host pids of every live zygote, for tests and diagnostics.
    pub fn zygote_pids(&self) -> Vec<i32> {
        self.pools
            .values()
            .flat_map(|p| p.zygotes())
            .filter_map(|z| z.init_pid())
            .collect()
    }
}
