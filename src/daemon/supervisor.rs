//! The supervisor: prepares the runtime files, probes every profile, keeps the zygote pools and
//! slots, and runs requests. It never forks from its own (multi-threaded) process except through
//! `Command` on the dedicated spawner thread, and never runs user code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_protocol::{ProfileStatus, RejectKind, RunExtra, RunResult, RunSpec, ServerStatus};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Config, SessionsConfig, DEFAULT_PROFILE};
use crate::daemon::engine::identities::Identities;
use crate::daemon::engine::pool::{JailLauncher, Pool, Profile};
use crate::daemon::engine::run::{self, RunContext, Streaming};
use crate::daemon::engine::warm::WarmPool;
use crate::daemon::metrics::Metrics;
use crate::daemon::paths::Paths;
use crate::daemon::policy::admission::Admission;
use crate::daemon::sessions::Registry;
use crate::daemon::zygotes::handle::Spawner;
use crate::tenants::{IdentityError, Tenant, Tenants};

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
        source: crate::daemon::zygotes::jail::JailError,
    },
    #[error("profile {0}: a blocking task failed")]
    Join(String),
    #[error("seccomp policy does not compile: {0}")]
    Seccomp(String),
    #[error("tenants: {0}")]
    Tenants(String),
}

/// The profile label (metrics, audit) of a run that asked for a profile the config does not
/// have. Parenthesized, so it cannot be mistaken for a profile name in the usual forms.
pub const UNKNOWN_PROFILE_LABEL: &str = "(unknown)";

/// The running supervisor.
#[derive(Debug)]
pub struct Supervisor {
    profiles: BTreeMap<String, ProfileRuntime>,
    /// Identities (uids): one per concurrent run plus one per warm child.
    slots: Arc<Identities>,
    /// The slots' cgroups (None: rlimits only). Removed when the last reference goes, which
    /// `shutdown` makes sure happens only once they are empty.
    cgroups: Option<Arc<crate::daemon::cgroup::CgroupSlots>>,
    /// Who may run code, with which policy.
    tenants: Tenants,
    /// Rate, concurrency and the fair queue in front of the run slots.
    admission: Admission,
    slot_count: u32,
    /// Log each run's code text in its audit record (off: only its SHA-256).
    audit_code: bool,
    /// Ids for children, unique per daemon (the zygotes route events by them).
    child_ids: Arc<AtomicU64>,
    /// Largest frame accepted or sent on the socket.
    pub max_frame_len: u32,
    /// In-flight runs get this long to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Rootless mode: one uid for every run, and no cgroups may be tried (`crate::daemon::rootless`).
    rootless: bool,
    stop: watch::Sender<bool>,
    metrics: Metrics,
    /// Live sessions (see `sessions.rs` here for their operations).
    sessions: Arc<Registry>,
    sessions_config: SessionsConfig,
    /// This machine's name among several (the `node` key), carried in session ids.
    node: Option<String>,
}

/// A profile's zygote pool and warm children.
#[derive(Debug)]
struct ProfileRuntime {
    pool: Arc<Pool>,
    warm: Arc<WarmPool>,
}

impl Supervisor {
    /// Prepares runtime files, probes every profile and starts its zygotes (without waiting
    /// for them; see `wait_ready`).
    pub async fn start(config: &Config, paths: Paths) -> Result<Arc<Supervisor>, StartError> {
        for processes in [false, true] {
            sandfork_lockdown::seccomp::child_filters(processes)
                .map_err(|e| StartError::Seccomp(e.to_string()))?;
        }
        sandfork_lockdown::seccomp::zygote_filters()
            .map_err(|e| StartError::Seccomp(e.to_string()))?;
        paths.install_runtime()?;
        let tenants = Tenants::from_config(config, nix::unistd::geteuid().as_raw())
            .map_err(|e| StartError::Tenants(e.to_string()))?;
        let profile_names: Vec<String> = config.profiles.keys().cloned().collect();
        let spawner = Spawner::start();
        let (stop, stop_rx) = watch::channel(false);
        let cgroups = if paths.rootless {
            None
        } else {
            create_cgroups(&paths.instance, config.identity_count())
        };
        let slots = Arc::new(Identities::with_cgroups(
            config.identity_count(),
            cgroups.clone(),
        ));
        let child_ids = Arc::new(AtomicU64::new(1));
        let mut profiles = BTreeMap::new();
        for (name, profile_config) in &config.profiles {
            let started = Instant::now();
            let (name_owned, profile_config, config_owned, runtime_dir, rootless) = (
                name.clone(),
                profile_config.clone(),
                config.clone(),
                paths.runtime_dir.clone(),
                paths.rootless,
            );
            let profile = tokio::task::spawn_blocking(move || {
                Profile::prepare(
                    &name_owned,
                    &profile_config,
                    &config_owned,
                    &runtime_dir,
                    rootless,
                )
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
                processes = profile.processes,
                probe_ms = started.elapsed().as_millis() as u64,
                "profile prepared"
            );
            let profile = Arc::new(profile);
            let launcher = Arc::new(JailLauncher {
                profile: Arc::clone(&profile),
                spawner: spawner.clone(),
                init_path: paths.zygote_init.clone(),
            });
            let pool = Arc::new(Pool::start(Arc::clone(&profile), launcher, stop_rx.clone()));
            let warm = Arc::new(WarmPool::new(profile.warm_children, profile.warm_idle));
            if profile.warm_children > 0 {
                tokio::spawn(Arc::clone(&warm).keep_filled(
                    Arc::clone(&pool),
                    Arc::clone(&slots),
                    Arc::clone(&child_ids),
                    stop_rx.clone(),
                ));
            }
            profiles.insert(name.clone(), ProfileRuntime { pool, warm });
        }
        Ok(Arc::new(Supervisor {
            profiles,
            slots,
            cgroups,
            tenants,
            admission: Admission::with_queue_capacity(
                &profile_names,
                config.slot_count(),
                config.queue_per_profile,
            ),
            slot_count: config.slot_count(),
            audit_code: config.audit_code,
            child_ids,
            metrics: Metrics::new(),
            max_frame_len: config.max_frame_len,
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            rootless: paths.rootless,
            stop,
            sessions: Arc::new(Registry::default()),
            sessions_config: config.sessions,
            node: config.node.clone(),
        }))
    }

    /// Rootless mode: every run has the daemon's uid, and cgroups must not be used.
    pub fn is_rootless(&self) -> bool {
        self.rootless
    }

    /// True when every profile has at least one live zygote.
    pub fn is_ready(&self) -> bool {
        self.profiles.values().all(|p| p.pool.ready_count() > 0)
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
                .profiles
                .iter()
                .map(|(name, profile)| ProfileStatus {
                    name: name.clone(),
                    zygotes_ready: profile.pool.ready_count(),
                    zygotes_wanted: profile.pool.wanted(),
                    warm_children: profile.warm.count(),
                    queued: self.admission.queued(name),
                })
                .collect(),
            slots_total: self.slot_count,
            slots_busy: self.admission.running(),
        }
    }

    /// The tenant a socket peer acts as: its own (by uid), or — for proxy peers only — the one
    /// it names. Resolved once per request; the handle goes with the run.
    pub fn identify(
        &self,
        peer_uid: u32,
        on_behalf_of: Option<&str>,
    ) -> Result<Arc<Tenant>, IdentityError> {
        self.tenants.identify(peer_uid, on_behalf_of)
    }

    /// Runs one request of `tenant` (as returned by `identify`) to completion. Dropping the
    /// future kills the run's child.
    pub async fn execute(&self, tenant: &Tenant, spec: RunSpec, received: Instant) -> RunResult {
        self.execute_streamed(tenant, spec, received, None).await.0
    }

    /// [`Supervisor::execute`], with the output streamed to `streaming`'s sink when given.
    pub async fn execute_streamed(
        &self,
        tenant: &Tenant,
        spec: RunSpec,
        received: Instant,
        streaming: Option<Streaming>,
    ) -> (RunResult, RunExtra) {
        let profile_name = spec
            .profile
            .clone()
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string());
        // Written when the run ends — or, if this future is dropped (client gone, cancel,
        // shutdown), by its Drop: every run leaves exactly one record.
        let known = self.profiles.contains_key(&profile_name);
        let mut audit = Audit {
            metrics: &self.metrics,
            tenant: tenant.name.clone(),
            request_id: spec
                .request_id
                .clone()
                .unwrap_or_else(|| crate::service::new_request_id("r")),
            profile: if known {
                profile_name.clone()
            } else {
                UNKNOWN_PROFILE_LABEL.to_string()
            },
            requested_profile: (!known).then(|| profile_name.clone()),
            code_sha256: hex_sha256(&spec.code),
            code_text: self
                .audit_code
                .then(|| String::from_utf8_lossy(&spec.code).into_owned()),
            client_addr: spec.client_addr.clone(),
            written: false,
        };
        let (mut result, extra) = match self.profiles.get(&profile_name) {
            None => (
                run::rejected(
                    RejectKind::UnknownProfile,
                    format!("unknown profile {profile_name:?}"),
                ),
                RunExtra::default(),
            ),
            Some(profile) => {
                let ctx = RunContext {
                    tenant,
                    pool: &profile.pool,
                    warm: &profile.warm,
                    slots: &self.slots,
                    admission: &self.admission,
                    child_ids: &self.child_ids,
                };
                run::execute(ctx, spec, received, streaming).await
            }
        };
        result.request_id = audit.request_id.clone();
        audit.write(&result);
        (result, extra)
    }

    /// Whether a peer may read the metrics: any tenant, and proxies (the HTTP shim serves them).
    pub fn may_read_metrics(&self, peer_uid: u32) -> Result<(), IdentityError> {
        if self.tenants.is_proxy(peer_uid) {
            return Ok(());
        }
        self.tenants.identify(peer_uid, None).map(|_| ())
    }

    /// Prometheus text of the daemon's metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(&self.status(), &self.session_pools())
    }

    /// Stops the keepers and kills every zygote (and so every child: each zygote is PID 1 of
    /// its namespace).
    pub async fn shutdown(&self) {
        self.end_all_sessions();
        self.stop.send_replace(true);
        for profile in self.profiles.values() {
            profile.warm.clear();
            for zygote in profile.pool.zygotes() {
                zygote.stop().await;
            }
        }
        // Killing zygote-init does not wait for its pid namespace to empty; the cgroups can
        // only be removed once their last process is gone.
        if let Some(cgroups) = &self.cgroups {
            let deadline = Instant::now() + Duration::from_secs(5);
            let busy =
                || (0..cgroups.len()).any(|i| cgroups.slot(i).pids().is_ok_and(|p| !p.is_empty()));
            while busy() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// zygote-init host pids of every live zygote, for tests and diagnostics.
    pub fn zygote_pids(&self) -> Vec<i32> {
        self.profiles
            .values()
            .flat_map(|p| p.pool.zygotes())
            .filter_map(|z| z.init_pid())
            .collect()
    }
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One cgroup per slot, or None (with the reason logged) when the host has no usable cgroups:
/// memory is then limited by RLIMIT_AS and pids by RLIMIT_NPROC only.
fn create_cgroups(instance: &str, count: u32) -> Option<Arc<crate::daemon::cgroup::CgroupSlots>> {
    match crate::daemon::cgroup::CgroupSlots::create(Path::new("/sys/fs/cgroup"), instance, count) {
        Ok(cgroups) => {
            info!(cgroups = %cgroups.describe(), "slot cgroups ready");
            Some(Arc::new(cgroups))
        }
        Err(err) => {
            warn!(
                cause = %err,
                "no usable cgroups: falling back to rlimits (memory: RLIMIT_AS, pids: RLIMIT_NPROC; no peak memory or OOM accounting)"
            );
            None
        }
    }
}

/// A short, stable name for a daemon's cgroup tree (`sandfork-<name>`), derived from its socket
/// path: the same daemon finds its crashed predecessor's tree, two daemons never share one.
pub fn instance_name(socket: &Path) -> String {
    let digest = Sha256::digest(socket.as_os_str().as_encoded_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The audit record and metrics of one run.
struct Audit<'a> {
    metrics: &'a Metrics,
    tenant: String,
    request_id: String,
    /// The profile's name if it is configured, else [`UNKNOWN_PROFILE_LABEL`]: metric labels
    /// come only from the config, so callers cannot grow the series.
    profile: String,
    /// The name a request asked for when no such profile exists (escaped in the record).
    requested_profile: Option<String>,
    code_sha256: String,
    /// Only with `audit_code = true`.
    code_text: Option<String>,
    client_addr: Option<String>,
    written: bool,
}

impl Audit<'_> {
    fn write(&mut self, result: &RunResult) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        self.metrics.record(&self.tenant, &self.profile, result);
        info!(
            target: "sandfork::audit",
            tenant = self.tenant.as_str(),
            request_id = %self.request_id,
            profile = %self.profile,
            requested_profile = self.requested_profile.as_ref().map(|p| format!("{p:?}")),
            code_sha256 = %self.code_sha256,
            code = self.code_text.as_deref().unwrap_or(""),
            status = result.status.as_str(),
            // Absent when there is none (a signal ended it, or it never ran).
            exit_code = result.exit_code,
            signal = result.signal,
            rejection = result.rejection.as_ref().map(|r| r.kind.as_str()),
            wall_ms = result.usage.wall_ms,
            cpu_ms = result.usage.cpu_ms,
            max_rss_kb = result.usage.max_rss_kb,
            stdout_bytes = result.stdout.len(),
            stderr_bytes = result.stderr.len(),
            files_out = result.files.len(),
            warm = result.warm,
            client_addr = self.client_addr.as_deref().unwrap_or(""),
            message = result.message.as_deref().unwrap_or(""),
            "run"
        );
    }
}

impl Drop for Audit<'_> {
    fn drop(&mut self) {
        if !self.written {
            let stopped = RunResult::new(sandfork_protocol::Status::Killed)
                .with_message("the caller went away or cancelled; the run was stopped");
            self.write(&stopped);
        }
    }
}

mod sessions;
pub use sessions::SessionAnswer;
#[cfg(test)]
mod tests;
