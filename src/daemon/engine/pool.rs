//! Profiles and their zygote pools.
//!
//! A `Profile` is what one config profile becomes at start-up: a probed interpreter, the jail
//! spec its zygotes are built from, and its limits. A `Pool` keeps the profile's zygotes
//! running: one keeper task per zygote starts it, waits for it to die, and starts it again with
//! exponential backoff. Runs `pick` a live zygote round-robin.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_ipc::lockdown::InitConfig;
use sandfork_ipc::zygote::{RootlessConfig, ZygoteConfig};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::config::{Config, Limits, ProfileConfig};
use crate::daemon::rootless;
use crate::daemon::zygotes::handle::{RecyclePolicy, Spawner, Zygote, ZygoteError};
use crate::daemon::zygotes::jail::{
    self, Bind, ExecSpec, IdMapping, Interpreter, JailSpec, RootPlan, Symlink, JAIL_DEVICES,
    JAIL_RUNTIME_DIR, JAIL_SHM_DIR, JAIL_WORK_DIR, JAIL_WORK_PARENT,
};

/// File names inside the runtime dir.
pub const ZYGOTE_SCRIPT: &str = "zygote.py";
pub const PROBE_SCRIPT: &str = "probe.py";
pub const LOCKDOWN_LIB: &str = "libsandfork_lockdown.so";

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A zygote that lived this long before dying restarts without backoff.
const HEALTHY_LIFETIME: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A profile ready to start zygotes.
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub limits: Limits,
    pub interpreter: Interpreter,
    pub spec: JailSpec,
    pub zygotes: u32,
    /// Warm children to keep ready, and how long one may wait.
    pub warm_children: u32,
    pub warm_idle: std::time::Duration,
    /// When a zygote is replaced by a fresh one.
    pub recycle: RecyclePolicy,
    /// Sessions this profile may hold at once.
    pub max_sessions: u32,
    /// A run may start this many processes and threads (0: none; see `ProfileConfig`). Each
    /// child is then PID 1 of its own pid namespace.
    pub processes: u64,
    /// How long a child of a replaced zygote may still live: the longest run, or the longest
    /// session when the profile has sessions. The replaced zygote is stopped after it.
    pub longest_child: Duration,
}

impl Profile {
    /// Whether each child is forked as PID 1 of a pid namespace of its own: the profile lets
    /// runs start processes.
    pub fn own_pid_namespace(&self) -> bool {
        self.processes > 0
    }

    /// Probes the interpreter and builds the jail spec. Blocking (runs the interpreter once).
    /// `rootless`: the daemon is not root (see `crate::daemon::rootless`).
    pub fn prepare(
        name: &str,
        profile: &ProfileConfig,
        config: &Config,
        runtime_dir: &Path,
        rootless: bool,
    ) -> Result<Profile, jail::JailError> {
        let wanted = Config::preload_modules(profile);
        let interpreter =
            Interpreter::probe(&profile.python, &runtime_dir.join(PROBE_SCRIPT), &wanted)?;
        for (module, reason) in &interpreter.preload_failed {
            warn!(
                profile = name,
                module, reason, "preload module is not importable; skipped"
            );
        }
        let preload: Vec<&String> = wanted
            .iter()
            .filter(|m| !interpreter.preload_failed.contains_key(*m))
            .collect();
        let plan = RootPlan::for_interpreter(&interpreter)?;
        // Not JAIL_RUNTIME_DIR: the child needs nothing there (the lockdown library is already
        // mapped), so it cannot read the zygote's files either.
        let mut read_paths: Vec<PathBuf> = plan.read_paths();
        read_paths.extend(["/dev/urandom", "/dev/random", "/dev/zero"].map(PathBuf::from));
        let processes = profile.processes > 0;
        let zygote_config = ZygoteConfig {
            lockdown_lib: PathBuf::from(format!("{JAIL_RUNTIME_DIR}/{LOCKDOWN_LIB}")),
            lockdown_init: InitConfig {
                read_exec_paths: interpreter.exec_paths(),
                read_paths,
                read_write_paths: vec![PathBuf::from("/dev/null")],
                work_parent: PathBuf::from(JAIL_WORK_PARENT),
                landlock_required: true,
                processes,
            },
            shm_dir: processes.then(|| PathBuf::from(JAIL_SHM_DIR)),
            preload: preload.into_iter().cloned().collect(),
            warmup: profile.warmup.clone(),
            work_dir: PathBuf::from(JAIL_WORK_DIR),
            profile: name.to_string(),
            // Rootless: children stay uid 0 without capabilities, one RLIMIT_NPROC for all.
            rootless: rootless.then(|| RootlessConfig {
                nproc: rootless::nproc_limit(
                    config.profile_limits(profile).pids,
                    config.identity_count(),
                ),
            }),
        };
        let zygote_config =
            serde_json::to_string(&zygote_config).map_err(jail::JailError::ZygoteConfig)?;
        let (uid_map, gid_map) = if rootless {
            // Only the daemon's own ids, as 0: all an unprivileged process may map.
            rootless::own_id_maps()
        } else {
            let id_map = vec![IdMapping {
                inside: 0,
                outside: config.uid_base,
                count: config.identity_count() + 1,
            }];
            (id_map.clone(), id_map)
        };
        let mut binds: Vec<Bind> = plan
            .binds()
            .into_iter()
            .map(|path| Bind { path, dest: None })
            .collect();
        binds.push(Bind {
            path: runtime_dir.to_owned(),
            dest: Some(PathBuf::from(JAIL_RUNTIME_DIR)),
        });
        let mut symlinks = plan.symlinks();
        let mut dirs = vec![PathBuf::from(JAIL_WORK_DIR)];
        if processes {
            dirs.push(PathBuf::from(JAIL_SHM_DIR));
            symlinks.push(Symlink {
                path: PathBuf::from("/dev/shm"),
                target: PathBuf::from(JAIL_SHM_DIR),
            });
        }
        let spec = JailSpec {
            uid_map,
            gid_map,
            hostname: "sandfork".into(),
            keep_fds: vec![3],
            root_size_bytes: 4 * 1024 * 1024,
            binds,
            symlinks,
            devices: JAIL_DEVICES.iter().map(PathBuf::from).collect(),
            dirs,
            cwd: PathBuf::from(JAIL_WORK_PARENT),
            seccomp: true,
            exec: ExecSpec {
                path: interpreter.executable.clone(),
                // argv[0] is the real path: without /proc, Python finds sys.executable from it.
                argv: vec![
                    interpreter.executable.display().to_string(),
                    "-I".into(),
                    "-B".into(),
                    "-X".into(),
                    "utf8".into(),
                    format!("{JAIL_RUNTIME_DIR}/{ZYGOTE_SCRIPT}"),
                    zygote_config,
                ],
                env: jail::zygote_env(),
            },
        };
        Ok(Profile {
            name: name.to_string(),
            limits: config.profile_limits(profile),
            interpreter,
            spec,
            zygotes: profile.zygotes,
            warm_children: profile.warm_children,
            warm_idle: Duration::from_millis(profile.warm_idle_ms),
            recycle: RecyclePolicy {
                max_forks: profile.zygote_max_forks,
                max_rss_growth_kb: profile.zygote_max_rss_growth_mb * 1024,
                max_age: Duration::from_secs(profile.zygote_max_age_s),
            },
            max_sessions: profile.max_sessions,
            processes: profile.processes,
            longest_child: longest_child(config, profile),
        })
    }
}

/// The running zygotes of one profile.
#[derive(Debug)]
pub struct Pool {
    pub profile: Arc<Profile>,
    members: Vec<watch::Receiver<Option<Arc<Zygote>>>>,
    next: AtomicUsize,
    /// Signalled by keepers whenever a zygote comes up or goes away.
    changed: Arc<Notify>,
}

/// How a keeper starts its zygote: [`JailLauncher`] in the daemon; the scheduling tests give
/// zygotes of their own (a socketpair and a process they control) to test the keepers without
/// root.
pub trait Launch: Send + Sync + 'static {
    /// Starts the zygote `name` and waits until it is ready.
    fn launch(&self, name: String) -> LaunchFuture<'_>;
}

/// What [`Launch::launch`] returns.
pub type LaunchFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Arc<Zygote>, ZygoteError>> + Send + 'a>,
>;

/// Starts a profile's zygotes as zygote-init jails.
pub struct JailLauncher {
    pub profile: Arc<Profile>,
    pub spawner: Spawner,
    pub init_path: PathBuf,
}

impl Launch for JailLauncher {
    fn launch(&self, name: String) -> LaunchFuture<'_> {
        Box::pin(Zygote::start(
            name,
            &self.spawner,
            &self.init_path,
            &self.profile.spec,
            READY_TIMEOUT,
        ))
    }
}

impl Pool {
    /// Starts one keeper task per zygote, each starting its zygote with `launcher`. They stop
    /// when `stop` turns true.
    pub fn start(
        profile: Arc<Profile>,
        launcher: Arc<dyn Launch>,
        stop: watch::Receiver<bool>,
    ) -> Pool {
        let mut members = Vec::new();
        let changed = Arc::new(Notify::new());
        for n in 0..profile.zygotes {
            let (tx, rx) = watch::channel(None);
            members.push(rx);
            tokio::spawn(keep_zygote(
                format!("{}#{n}", profile.name),
                Arc::clone(&profile),
                Arc::clone(&launcher),
                Member {
                    slot: tx,
                    changed: Arc::clone(&changed),
                },
                stop.clone(),
            ));
        }
        Pool {
            profile,
            members,
            next: AtomicUsize::new(0),
            changed,
        }
    }

    /// Live zygotes right now.
    pub fn ready_count(&self) -> u32 {
        self.members
            .iter()
            .filter(|m| m.borrow().as_ref().is_some_and(|z| z.accepts_children()))
            .count() as u32
    }

    pub fn wanted(&self) -> u32 {
        self.members.len() as u32
    }

    /// A live zygote, round-robin; waits up to `wait` for one to come up.
    pub async fn pick(&self, wait: Duration) -> Option<Arc<Zygote>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before checking, so a zygote that comes up in between is not missed.
            let notified = self.changed.notified();
            let n = self.members.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let member = &self.members[(start + i) % n];
                if let Some(zygote) = member.borrow().as_ref() {
                    if zygote.accepts_children() {
                        return Some(Arc::clone(zygote));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Resolves the next time a zygote of this pool comes up or goes away.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Every zygote of this pool, for shutdown and diagnostics.
    pub fn zygotes(&self) -> Vec<Arc<Zygote>> {
        self.members
            .iter()
            .filter_map(|m| m.borrow().clone())
            .collect()
    }
}

/// How often a keeper checks whether its zygote should be recycled.
const RECYCLE_CHECK: Duration = Duration::from_millis(250);

/// Keeps one zygote of the pool alive: starts it, restarts it with backoff when it dies, and
/// replaces it when its recycle policy says so (the replacement is started first, so capacity
/// never drops; the old one drains: no new children, running ones finish, then it stops).
async fn keep_zygote(
    name: String,
    profile: Arc<Profile>,
    launcher: Arc<dyn Launch>,
    member: Member,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_START;
    let mut current: Option<Arc<Zygote>> = None;
    while !*stop.borrow() {
        let started = Instant::now();
        let attempt = launcher.launch(name.clone());
        let attempt = tokio::select! {
            result = attempt => result,
            _ = stop.changed() => break,
        };
        match attempt {
            Ok(zygote) => {
                info!(
                    zygote = %name,
                    python = %zygote.ready.python,
                    preloaded = zygote.ready.preloaded,
                    rss_kb = zygote.ready.rss_kb,
                    init_pid = zygote.init_pid().unwrap_or(0),
                    start_ms = started.elapsed().as_millis() as u64,
                    "zygote ready"
                );
                for failure in &zygote.ready.preload_failed {
                    warn!(zygote = %name, failure = %failure, "preload failed inside the jail");
                }
                if let Some(error) = &zygote.ready.warmup_error {
                    warn!(
                        zygote = %name, cause = %error,
                        "the profile's warm-up failed in the zygote; warm children will not rehearse"
                    );
                }
                member.set(Some(Arc::clone(&zygote)));
                if let Some(old) = current.replace(zygote) {
                    tokio::spawn(drain(old, profile.longest_child));
                }
            }
            Err(err) => {
                error!(zygote = %name, cause = %err, retry_ms = backoff.as_millis() as u64, "zygote failed to start");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        let Some(zygote) = current.clone() else {
            continue;
        };
        let mut check = tokio::time::interval(RECYCLE_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                                _ = zygote.died() => {
                    member.set(None);
                    current = None;
                    zygote.stop().await;
                    if *stop.borrow() {
                        return; // stopped on purpose by the supervisor's shutdown
                    }
                    if started.elapsed() >= HEALTHY_LIFETIME {
                        backoff = BACKOFF_START;
                        warn!(zygote = %name, "zygote died; restarting");
                    } else {
                        warn!(zygote = %name, retry_ms = backoff.as_millis() as u64, "zygote died soon after start; restarting after a pause");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    break;
                }
                _ = stop.changed() => {
                    member.set(None);
                    zygote.stop().await;
                    return;
                }
                _ = check.tick() => {
                    if let Some(reason) = zygote.wants_recycling(&profile.recycle) {
                        info!(zygote = %name, reason, "recycling zygote");
                        backoff = BACKOFF_START;
                        break; // start the replacement; this one keeps serving until then
                    }
                }
            }
        }
    }
    if let Some(zygote) = current {
        member.set(None);
        zygote.stop().await;
    }
}

/// How long a child of `profile` may live: its run timeout, or its sessions' lifetime.
fn longest_child(config: &Config, profile: &ProfileConfig) -> Duration {
    let run = Duration::from_millis(config.profile_limits(profile).timeout_ms);
    if profile.max_sessions == 0 {
        return run;
    }
    run.max(Duration::from_secs(config.sessions.max_lifetime_s))
}

/// Lets a replaced zygote finish its running children (runs and sessions, bounded by the
/// longest either may live), then stops it.
async fn drain(zygote: Arc<Zygote>, longest_child: Duration) {
    zygote.start_draining();
    let deadline = Instant::now() + longest_child + Duration::from_secs(10);
    while zygote.is_alive() && zygote.live_children() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!(zygote = %zygote.name, left = zygote.live_children(), "replaced zygote stopped");
    zygote.stop().await;
}

/// A keeper's handle on its place in the pool.
struct Member {
    slot: watch::Sender<Option<Arc<Zygote>>>,
    changed: Arc<Notify>,
}

impl Member {
    fn set(&self, zygote: Option<Arc<Zygote>>) {
        self.slot.send_replace(zygote);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
