//! One zygote: a `zygote-init` process (which built the jail and exec'd the Python zygote as PID 1
//! of its pid namespace) and the SEQPACKET control channel to it.
//!
//! The supervisor asks a zygote to `spawn` a child for a run id; the zygote answers `spawned`
//! with the child's pidfd, and later `exit` with its wait status and rusage. A reader task routes
//! those events to the run waiting for them. When the channel closes the zygote is dead: every
//! waiting run sees its event channel close and reports `internal_error`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use sandfork_ipc::zygote::{ExitReport, ReadyInfo};
use sandfork_ipc::zygote::{FromZygote, SpawnRequest, ToZygote, MAX_ZYGOTE_EVENT, SPAWN_FDS};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::daemon::sys::{self, PidFd, SeqChannel};
use crate::daemon::zygotes::jail::JailSpec;

/// Exit codes a child uses when it failed before reaching user code (zygote/zygote.py).
pub const EXIT_LOCKDOWN_FAILED: i32 = 121;
pub const EXIT_CHILD_SETUP_FAILED: i32 = 122;

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("cannot spawn zygote-init {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("zygote control channel: {0}")]
    Channel(#[from] std::io::Error),
    #[error("zygote failed to start: {0}")]
    Start(String),
    #[error("zygote did not become ready within {0:?}")]
    StartTimeout(Duration),
    #[error("zygote is gone")]
    Gone,
    #[error("zygote refused to spawn: {0}")]
    SpawnFailed(String),
}

/// Forks `zygote-init` processes from one long-lived thread. PR_SET_PDEATHSIG fires when the
/// *thread* that forked a child exits, so forking from short-lived tokio blocking threads would
/// kill zygotes at random; this thread lives as long as the daemon.
#[derive(Debug, Clone)]
pub struct Spawner {
    jobs: std::sync::mpsc::Sender<SpawnJob>,
}

struct SpawnJob {
    command: Command,
    reply: oneshot::Sender<std::io::Result<std::process::Child>>,
}

impl Spawner {
    pub fn start() -> Spawner {
        let (jobs, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("zygote-spawner".into())
            .spawn(move || {
                for mut job in rx {
                    let _ = job.reply.send(job.command.spawn());
                }
            })
            .expect("spawning a thread at start-up");
        Spawner { jobs }
    }

    async fn spawn(&self, command: Command) -> std::io::Result<std::process::Child> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(SpawnJob { command, reply })
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?
    }
}

/// What a zygote tells us about one child.
#[derive(Debug)]
pub enum ChildEvent {
    Spawned { pid: i32, pidfd: PidFd },
    SpawnFailed(String),
    Exited(ExitReport),
}

/// A running zygote.
#[derive(Debug)]
pub struct Zygote {
    /// For logs: "<profile>#<n>".
    pub name: String,
    chan: SeqChannel,
    /// Event channels of runs whose children this zygote holds, by run id.
    waiters: Mutex<HashMap<u64, mpsc::UnboundedSender<ChildEvent>>>,
    alive: AtomicBool,
    /// zygote-init's host pid; killing it takes the whole jail down (PDEATHSIG chain, pid ns).
    init: Mutex<Option<std::process::Child>>,
    init_pidfd: PidFd,
    pub ready: ReadyInfo,
    /// Children forked so far, for recycling after a number of forks.
    forks: AtomicU64,
    /// Peak RSS the zygote last reported, for recycling on growth.
    peak_rss_kb: AtomicU64,
    /// Set when the zygote is being replaced: no new children; the running ones finish.
    draining: AtomicBool,
    /// When it became ready, for recycling on age.
    started: std::time::Instant,
}

/// When a zygote should be replaced by a fresh one.
#[derive(Debug, Clone, Copy)]
pub struct RecyclePolicy {
    pub max_forks: u64,
    pub max_rss_growth_kb: u64,
    /// A zygote's hash seed and address-space layout are its children's too: a fresh zygote
    /// after this long draws new ones.
    pub max_age: Duration,
}

impl Zygote {
    /// Starts zygote-init with `spec`, waits until the Python zygote reports ready, and starts
    /// the reader task.
    pub async fn start(
        name: String,
        spawner: &Spawner,
        init_path: &std::path::Path,
        spec: &JailSpec,
        ready_timeout: Duration,
    ) -> Result<Arc<Zygote>, ZygoteError> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let spec_json = serde_json::to_string(spec).map_err(std::io::Error::other)?;
        let mut command = Command::new(init_path);
        command
            .arg(spec_json)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let theirs_raw: RawFd = theirs.as_raw_fd();
        sys::die_with_parent_holding_fd(&mut command, theirs_raw, 3);
        let mut child = spawner
            .spawn(command)
            .await
            .map_err(|source| ZygoteError::Spawn {
                path: init_path.to_owned(),
                source,
            })?;
        drop(theirs);
        let init_pidfd = PidFd::open(child.id())?;
        let stderr_lines = forward_output(&name, child.stdout.take(), child.stderr.take());

        let chan = SeqChannel::new(ours)?;
        let ready = match tokio::time::timeout(ready_timeout, chan.recv(MAX_ZYGOTE_EVENT, 0)).await
        {
            Err(_) => {
                kill_and_reap(&mut child);
                return Err(ZygoteError::StartTimeout(ready_timeout));
            }
            Ok(Err(err)) => {
                kill_and_reap(&mut child);
                return Err(ZygoteError::Channel(err));
            }
            Ok(Ok(None)) => {
                // zygote-init or Python died before saying anything: its last stderr line says why.
                let _ = init_pidfd.exited().await;
                let status = child.wait().ok();
                let reason = stderr_lines.last_line().await.unwrap_or_default();
                return Err(ZygoteError::Start(format!(
                    "{} ({})",
                    if reason.is_empty() {
                        "no output".into()
                    } else {
                        reason
                    },
                    status.map_or("unknown status".into(), |s| s.to_string())
                )));
            }
            Ok(Ok(Some(packet))) => packet,
        };
        let ready = match sandfork_ipc::decode::<FromZygote>(&ready.data, MAX_ZYGOTE_EVENT) {
            Ok(FromZygote::Ready(ready)) => ready,
            Ok(FromZygote::Fatal { error }) => {
                kill_and_reap(&mut child);
                return Err(ZygoteError::Start(error));
            }
            Ok(other) => {
                kill_and_reap(&mut child);
                return Err(ZygoteError::Start(format!(
                    "unexpected first message {other:?}"
                )));
            }
            Err(err) => {
                kill_and_reap(&mut child);
                return Err(ZygoteError::Start(format!("invalid ready message: {err}")));
            }
        };
        Ok(Zygote::attach(name, chan, child, init_pidfd, ready))
    }

    /// A zygote that has said `ready` on `chan`: starts the task that routes its events. `init`
    /// is the process whose death is the zygote's (zygote-init; in the scheduling tests, any
    /// process the test controls), `init_pidfd` its pidfd.
    pub fn attach(
        name: String,
        chan: SeqChannel,
        init: std::process::Child,
        init_pidfd: PidFd,
        ready: ReadyInfo,
    ) -> Arc<Zygote> {
        let zygote = Arc::new(Zygote {
            name,
            chan,
            waiters: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            init: Mutex::new(Some(init)),
            init_pidfd,
            forks: AtomicU64::new(0),
            peak_rss_kb: AtomicU64::new(ready.rss_kb),
            draining: AtomicBool::new(false),
            started: std::time::Instant::now(),
            ready,
        });
        tokio::spawn(Arc::clone(&zygote).read_events());
        zygote
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Alive and not being replaced: may fork new children.
    pub fn accepts_children(&self) -> bool {
        self.is_alive() && !self.draining.load(Ordering::Acquire)
    }

    /// Stops new forks; children already forked keep running.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Children forked by this zygote that have not exited yet.
    pub fn live_children(&self) -> usize {
        self.lock_waiters().len()
    }

    /// Whether `policy` says this zygote has served long enough or grown too much.
    pub fn wants_recycling(&self, policy: &RecyclePolicy) -> Option<String> {
        let forks = self.forks.load(Ordering::Relaxed);
        if forks >= policy.max_forks {
            return Some(format!("{forks} forks"));
        }
        let growth = self
            .peak_rss_kb
            .load(Ordering::Relaxed)
            .saturating_sub(self.ready.rss_kb);
        if growth > policy.max_rss_growth_kb {
            return Some(format!("peak RSS grew by {growth} KiB"));
        }
        let age = self.started.elapsed();
        if age >= policy.max_age {
            return Some(format!("{} s old", age.as_secs()));
        }
        None
    }

    /// Resolves when the zygote has died (its channel closed).
    pub async fn died(&self) {
        let _ = self.init_pidfd.exited().await;
    }

    /// Asks for a child; its events arrive on the returned channel.
    pub async fn spawn(
        &self,
        request: SpawnRequest,
        fds: [&OwnedFd; SPAWN_FDS],
    ) -> Result<mpsc::UnboundedReceiver<ChildEvent>, ZygoteError> {
        if !self.accepts_children() {
            return Err(ZygoteError::Gone);
        }
        let id = request.id;
        let message = sandfork_ipc::encode(&ToZygote::Spawn(request))
            .map_err(|err| ZygoteError::Channel(std::io::Error::other(err)))?;
        self.forks.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_waiters().insert(id, tx);
        let raw = fds.map(AsRawFd::as_raw_fd);
        if let Err(err) = self.chan.send(&message, &raw).await {
            self.lock_waiters().remove(&id);
            return Err(ZygoteError::Channel(err));
        }
        Ok(rx)
    }

    /// Stops the zygote: kills zygote-init, which takes PID 1 and the namespace with it.
    pub async fn stop(&self) {
        self.alive.store(false, Ordering::Release);
        let child = self.init.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            let _ = self.init_pidfd.signal(libc::SIGKILL);
            let _ = self.init_pidfd.exited().await;
            let _ = child.wait();
        }
    }

    /// Host pid of zygote-init, for diagnostics and tests.
    pub fn init_pid(&self) -> Option<i32> {
        self.init_pidfd.host_pid()
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<ChildEvent>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read_events(self: Arc<Self>) {
        loop {
            let packet = match self.chan.recv(MAX_ZYGOTE_EVENT, 1).await {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(err) => {
                    warn!(zygote = %self.name, cause = %err, "bad packet from zygote; stopping it");
                    break;
                }
            };
            if let Err(err) = self.route(packet) {
                warn!(zygote = %self.name, cause = %err, "bad message from zygote; stopping it");
                break;
            }
        }
        self.alive.store(false, Ordering::Release);
        // Dropping the senders tells every waiting run that its zygote is gone.
        self.lock_waiters().clear();
        self.stop().await;
        info!(zygote = %self.name, "zygote exited");
    }

    fn route(&self, packet: sys::Packet) -> Result<(), String> {
        let message = sandfork_ipc::decode::<FromZygote>(&packet.data, MAX_ZYGOTE_EVENT)
            .map_err(|e| e.to_string())?;
        let (id, event) = match message {
            FromZygote::Spawned { id, pid, rss_kb } => {
                self.peak_rss_kb.fetch_max(rss_kb, Ordering::Relaxed);
                let pidfd = packet
                    .fds
                    .into_iter()
                    .next()
                    .ok_or("spawned without a pidfd")?;
                let pidfd = PidFd::new(pidfd).map_err(|e| e.to_string())?;
                (id, ChildEvent::Spawned { pid, pidfd })
            }
            FromZygote::SpawnFailed { id, error } => (id, ChildEvent::SpawnFailed(error)),
            FromZygote::Exit(report) => (report.id, ChildEvent::Exited(report)),
            other => return Err(format!("unexpected message {other:?}")),
        };
        let last = matches!(event, ChildEvent::Exited(_) | ChildEvent::SpawnFailed(_));
        let mut waiters = self.lock_waiters();
        if let Some(tx) = waiters.get(&id) {
            let _ = tx.send(event);
        }
        if last {
            waiters.remove(&id);
        }
        Ok(())
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.init.lock() {
            if let Some(mut child) = guard.take() {
                kill_and_reap(&mut child);
            }
        }
    }
}

fn kill_and_reap(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Logs what zygote-init and the zygote print, and remembers the last stderr line (the
/// one-line reason zygote-init gives when a step fails).
fn forward_output(
    name: &str,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
) -> LastLine {
    let last = LastLine::default();
    for (stream, fd) in [
        ("stdout", stdout.map(OwnedFd::from)),
        ("stderr", stderr.map(OwnedFd::from)),
    ] {
        let Some(fd) = fd else { continue };
        let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            continue;
        };
        let name = name.to_string();
        let last = last.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line: String = line.chars().take(1000).collect();
                debug!(zygote = %name, stream, "{line}");
                if stream == "stderr" {
                    warn!(zygote = %name, "{line}");
                    last.set(line);
                }
            }
            last.close();
        });
    }
    last
}

/// The last line a process wrote to stderr, available once the stream has closed.
#[derive(Debug, Clone, Default)]
struct LastLine {
    inner: Arc<Mutex<(Option<String>, bool)>>,
    closed: Arc<tokio::sync::Notify>,
}

impl LastLine {
    fn set(&self, line: String) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.0 = Some(line);
        }
    }

    fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.1 = true;
        }
        self.closed.notify_waiters();
    }

    async fn last_line(&self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let notified = self.closed.notified();
            if let Ok(inner) = self.inner.lock() {
                if inner.1 {
                    return inner.0.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inner.lock().ok().and_then(|i| i.0.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
