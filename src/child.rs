//! A child of a zygote, from fork to exit.
//!
//! `ReadyChild::fork` asks a zygote for a child and waits until the child reports that it is
//! locked down: from then on it is a `ReadyChild`, holding its slot (uid), its pidfd, its control
//! channel and the read ends of its stdout/stderr. That can happen on the request path (cold) or
//! ahead of time (warm, see `warm.rs`). `ReadyChild::run` specializes it for one request — the
//! child lowers its rlimits to the request's — sends "go" with the code and stdin as sealed
//! memfds, collects output (capped) while waiting for the exit, the wall deadline or an output
//! overflow, and classifies the ending.
//!
//! A `ReadyChild` is consumed by `run`, so one child serves at most one request. Dropping one
//! (discarded warm child, client gone, cancel, shutdown) kills the process through its pidfd,
//! and its slot returns to the pool only once the process is really gone.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_ipc::child::{
    CollectCaps, FileEntry, FromChild, GoRequest, GoRlimits, RunMode, ToChild, MAX_CHILD_PACKET,
};
use sandfork_ipc::lockdown::RlimitParams;
use sandfork_ipc::reports::{Next, ReportCaps, ReportDecoder, Reports};
use sandfork_ipc::zygote::SpawnRequest;
use sandfork_protocol::{FileData, Mode, RunResult, RunSpec, Status, Timings, Usage};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use crate::config::Limits;
use crate::slots::Slot;
use crate::sys::{self, PidFd, SeqChannel};
use crate::zygote::{ChildEvent, ExitReport, Zygote};

/// How long forking and locking down a child may take before it counts as a sandbox failure.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// After a child is killed or has exited, how long we wait for its exit report and pipe EOF.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
const MIB: u64 = 1024 * 1024;

/// Why a child could not run a request.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The child died or vanished before it took the code; another child may serve the request.
    #[error("child lost before it took the code: {0}")]
    Lost(String),
    /// The sandbox failed; the request fails with internal_error.
    #[error("{0}")]
    Sandbox(String),
}

/// Largest packet a child may send before its request (only "ready").
const MAX_READY_PACKET: usize = 256;
/// Descriptors accepted with a report packet, to be counted and closed at once (a report never
/// carries any; more than this truncates the packet, and the kernel closes the rest).
const MAX_REPORT_FDS: usize = 8;

/// A forked, locked-down child waiting for its one request.
#[derive(Debug)]
pub struct ReadyChild {
    zygote: Arc<Zygote>,
    /// Pid inside the zygote's pid namespace, for logs.
    pid: i32,
    guard: ChildGuard,
    chan: SeqChannel,
    events: mpsc::UnboundedReceiver<ChildEvent>,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// When the child reported ready; warm children are discarded after an idle limit.
    pub ready_at: Instant,
}

impl ReadyChild {
    /// Forks a child of `zygote` into `slot` with the profile's ceilings as its limits, and waits
    /// until it is locked down.
    pub async fn fork(
        zygote: Arc<Zygote>,
        slot: Slot,
        child_id: u64,
        ceiling: &Limits,
    ) -> Result<ReadyChild, ChildError> {
        let sandbox =
            |what: &str, err: std::io::Error| ChildError::Sandbox(format!("{what}: {err}"));
        let (chan_ours, chan_child) =
            sys::seqpacket_pair().map_err(|e| sandbox("socketpair", e))?;
        let (out_r, out_w) = sys::pipe().map_err(|e| sandbox("pipe", e))?;
        let (err_r, err_w) = sys::pipe().map_err(|e| sandbox("pipe", e))?;
        let request = SpawnRequest {
            id: child_id,
            uid: slot.inner_uid(),
            gid: slot.inner_uid(),
            tmpfs_bytes: ceiling.tmpfs_mb * MIB,
            rlimits: spawn_rlimits(ceiling, slot.cgroup().is_some()),
        };
        // The ceiling until the request says otherwise (and counters reset for this child).
        if let Some(cgroup) = slot.cgroup() {
            cgroup
                .prepare(ceiling.memory_mb * MIB, ceiling.pids)
                .map_err(|e| ChildError::Sandbox(format!("cgroup: {e}")))?;
        }
        let mut events = zygote
            .spawn(request, [&chan_child, &out_w, &err_w])
            .await
            .map_err(|e| ChildError::Sandbox(format!("zygote {}: {e}", zygote.name)))?;
        drop((chan_child, out_w, err_w));

        let (pid, pidfd) = match tokio::time::timeout(SPAWN_TIMEOUT, events.recv()).await {
            Ok(Some(ChildEvent::Spawned { pid, pidfd })) => (pid, pidfd),
            Ok(Some(ChildEvent::SpawnFailed(reason))) => {
                return Err(ChildError::Sandbox(format!("fork failed: {reason}")))
            }
            Ok(Some(ChildEvent::Exited(_))) => {
                return Err(ChildError::Sandbox(
                    "child exited before it was spawned".into(),
                ))
            }
            Ok(None) => return Err(ChildError::Sandbox(format!("zygote {} died", zygote.name))),
            Err(_) => return Err(ChildError::Sandbox("zygote did not fork in time".into())),
        };
        let guard = ChildGuard::new(pidfd, slot);
        // Into the slot's cgroup before it can do anything of its own (it is still in lockdown).
        if let Some(cgroup) = guard.cgroup() {
            let attached = guard
                .host_pid()
                .ok_or_else(|| "the child vanished before it could be attached".to_string())
                .and_then(|pid| cgroup.attach(pid).map_err(|e| e.to_string()));
            if let Err(why) = attached {
                guard.kill();
                return Err(ChildError::Sandbox(format!("cgroup attach: {why}")));
            }
        }
        let chan = SeqChannel::new(chan_ours).map_err(|e| sandbox("child channel", e))?;
        let ready = tokio::time::timeout(SPAWN_TIMEOUT, chan.recv(MAX_READY_PACKET, 0)).await;
        let said_ready = matches!(&ready, Ok(Ok(Some(packet)))
            if matches!(sandfork_ipc::decode(&packet.data, MAX_READY_PACKET), Ok(FromChild::Ready {})));
        if !said_ready {
            guard.kill();
            let exit = wait_exit(&mut events).await;
            let detail = read_to_end_bounded(err_r).await;
            return Err(ChildError::Sandbox(format!(
                "child {pid} failed during lockdown ({}): {}",
                describe_exit(exit.as_ref()),
                String::from_utf8_lossy(&detail).trim()
            )));
        }
        Ok(ReadyChild {
            zygote,
            pid,
            guard,
            chan,
            events,
            stdout: out_r,
            stderr: err_r,
            ready_at: Instant::now(),
        })
    }

    /// Asks a child that will wait for its request to rehearse the profile's warm-up meanwhile,
    /// so the copy-on-write faults a run takes happen before the request arrives. Only for a
    /// child no request is waiting for: a "go" sent during the rehearsal waits for its end.
    /// A child that cannot be told is found dead when it is used. Nothing is sent when the
    /// profile has no warm-up, or its warm-up failed in the zygote.
    pub async fn rehearse(&self) {
        if !self.zygote.ready.rehearsal {
            return;
        }
        if let Ok(message) = sandfork_ipc::encode(&ToChild::Rehearse {}) {
            let _ = self.chan.send(&message, &[]).await;
        }
    }

    /// True while the child and its zygote are alive, the zygote is not being replaced, and the
    /// child has waited less than `idle_limit`.
    pub fn is_usable(&self, idle_limit: Duration) -> bool {
        self.zygote.accepts_children()
            && self.ready_at.elapsed() < idle_limit
            && !self.guard.has_exited()
    }

    /// The zygote this child came from.
    pub fn zygote(&self) -> &Arc<Zygote> {
        &self.zygote
    }

    /// Runs `spec` in this child under `limits` (already checked against the profile's).
    pub async fn run(mut self, spec: &RunSpec, limits: &Limits) -> Result<RunResult, ChildError> {
        let code = sys::sealed_memfd("sandfork-code", &spec.code)
            .map_err(|e| ChildError::Sandbox(format!("code memfd: {e}")))?;
        let stdin = sys::sealed_memfd("sandfork-stdin", &spec.stdin)
            .map_err(|e| ChildError::Sandbox(format!("stdin memfd: {e}")))?;
        let stdout = Capture::start(self.stdout, limits.output_bytes);
        let stderr = Capture::start(self.stderr, limits.output_bytes);
        let manifest: Vec<FileEntry> = spec
            .files
            .iter()
            .map(|f| FileEntry {
                path: f.path.clone(),
                size: f.content.len() as u64,
            })
            .collect();
        let mut fds = vec![code.as_raw_fd(), stdin.as_raw_fd()];
        let files_memfd = if spec.files.is_empty() {
            None
        } else {
            let blob: Vec<u8> = spec
                .files
                .iter()
                .flat_map(|f| f.content.iter().copied())
                .collect();
            let memfd = sys::sealed_memfd("sandfork-files", &blob)
                .map_err(|e| ChildError::Sandbox(format!("files memfd: {e}")))?;
            fds.push(memfd.as_raw_fd());
            Some(memfd)
        };
        let caps = ReportCaps {
            result_bytes: limits.output_bytes,
            file_count: limits.max_files,
            file_bytes: limits.output_bytes,
        };
        let go = ToChild::Go(GoRequest {
            argv: spec.argv.clone(),
            rlimits: go_rlimits(limits, self.guard.cgroup().is_some()),
            mode: match spec.mode {
                Mode::Script => RunMode::Script,
                Mode::Function => RunMode::Function,
            },
            files: manifest,
            collect: CollectCaps {
                max_count: caps.file_count,
                max_bytes: caps.file_bytes,
            },
        });
        let go = sandfork_ipc::encode(&go)
            .map_err(|e| ChildError::Sandbox(format!("go message: {e}")))?;
        // Specialize: the request's memory and pids limits on the slot's cgroup, counters reset.
        if let Some(cgroup) = self.guard.cgroup() {
            cgroup
                .prepare(limits.memory_mb * MIB, limits.pids)
                .map_err(|e| ChildError::Sandbox(format!("cgroup: {e}")))?;
        }
        let run_started = Instant::now();
        if let Err(err) = self.chan.send(&go, &fds).await {
            return Err(ChildError::Lost(format!("child {}: {err}", self.pid)));
        }
        drop((code, stdin, files_memfd));
        let reports = ReportReader::start(self.chan, caps, spec.mode == Mode::Function);

        let deadline = tokio::time::sleep(Duration::from_millis(limits.timeout_ms));
        tokio::pin!(deadline);
        let mut stopped: Option<Status> = None;
        // The status comes from the kernel: the zygote's wait4 report of the child's exit. What
        // the child says on its channel (including "done") is the program's claim and decides
        // nothing here.
        let exit = loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(ChildEvent::Exited(info)) => break Some(info),
                    Some(_) => continue,
                    None => break None,
                },
                _ = &mut deadline, if stopped.is_none() => {
                    stopped = Some(Status::Timeout);
                    self.guard.kill();
                }
                _ = stdout.overflowed(), if stopped.is_none() => {
                    stopped = Some(Status::OutputLimit);
                    self.guard.kill();
                }
                _ = stderr.overflowed(), if stopped.is_none() => {
                    stopped = Some(Status::OutputLimit);
                    self.guard.kill();
                }
            }
        };
        let run_time = run_started.elapsed();
        let (out, out_truncated) = stdout.finish().await;
        let (err, err_truncated) = stderr.finish().await;
        let reports = reports.finish().await;
        // The cgroup's view (final once the exit is reported: the kernel counts an OOM kill
        // before it delivers the SIGKILL).
        let accounting = match self.guard.cgroup().map(|c| c.usage()) {
            Some(Ok(usage)) => Some(usage),
            Some(Err(err)) => {
                warn!(cause = %err, "reading the slot's cgroup usage failed");
                None
            }
            None => None,
        };
        // With a cgroup its OOM counter is the only word on memory; without one (rootless) the
        // program's last words are all there is.
        let oom_killed = accounting.as_ref().map(|u| u.oom_killed);
        let Some(exit) = exit else {
            self.guard.kill();
            return Err(ChildError::Sandbox(format!(
                "zygote {} died while the run was in progress",
                self.zygote.name
            )));
        };
        self.guard.exited();
        if reports.packets > 0 {
            debug!(
                child = self.pid,
                packets = reports.packets,
                bytes = reports.bytes,
                "child reports read"
            );
        }

        let (mut status, mut message) = classify(&exit, stopped, oom_killed, &err, limits);
        let misuse = reports.misuse.as_ref().map(|why| {
            format!("the program misused the sandbox's control channel ({why}); its reports were ignored")
        });
        if spec.mode == Mode::Function && status == Status::Ok {
            match &reports.result {
                Some(Ok(_)) => {}
                Some(Err(why)) => {
                    status = Status::OutputLimit;
                    message = Some(why.clone());
                }
                None => {
                    status = Status::Error;
                    message = Some(misuse.clone().unwrap_or_else(|| {
                        "function mode: main() returned no result to the sandbox \
                         (the result channel was closed or misused)"
                            .into()
                    }));
                }
            }
        }
        if message.is_none() {
            message = misuse;
        }
        let mut result = RunResult::new(status);
        if let Some(Ok(value)) = reports.result {
            result.result = Some(String::from_utf8_lossy(&value).into_owned());
        }
        result.files = reports
            .files
            .into_iter()
            .map(|f| FileData {
                path: f.path,
                content: f.content,
            })
            .collect();
        result.files_truncated = reports.files_truncated;
        result.exit_code = exit.exit_code;
        result.signal = exit.signal;
        result.stdout = out;
        result.stderr = err;
        result.stdout_truncated = out_truncated;
        result.stderr_truncated = err_truncated;
        result.usage = Usage {
            wall_ms: ms(run_time),
            cpu_ms: accounting
                .as_ref()
                .map_or((exit.utime + exit.stime) * 1000.0, |u| {
                    u.cpu_ns as f64 / 1e6
                }),
            max_rss_kb: accounting
                .as_ref()
                .and_then(|u| u.peak_memory_bytes)
                .map_or(exit.maxrss_kb, |bytes| bytes / 1024),
        };
        result.timings = Timings {
            run_ms: ms(run_time),
            ..Timings::default()
        };
        result.message = message;
        Ok(result)
    }
}

/// Reads a child's reports in a task of their own while the run goes on: packets go to the
/// [`ReportDecoder`] (which bounds them and believes nothing), descriptors are closed the moment
/// they arrive, and the channel is dropped — closed — as soon as the decoder stops.
struct ReportReader {
    task: tokio::task::JoinHandle<Reports>,
}

impl ReportReader {
    fn start(chan: SeqChannel, caps: ReportCaps, function_mode: bool) -> ReportReader {
        let task = tokio::spawn(async move {
            let mut decoder = ReportDecoder::new(caps, function_mode);
            loop {
                let packet = match chan.recv(MAX_CHILD_PACKET, MAX_REPORT_FDS).await {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(err) => {
                        decoder.refuse(format!("an unreadable packet: {err}"));
                        break;
                    }
                };
                let descriptors = packet.fds.len();
                drop(packet.fds);
                if decoder.feed(&packet.data, descriptors) == Next::Stop {
                    break;
                }
            }
            decoder.finish()
        });
        ReportReader { task }
    }

    /// The reports, once the child has closed its channel or the decoder stopped (bounded
    /// wait: a channel kept open by a surviving descriptor must not hold the run).
    async fn finish(self) -> Reports {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(REAP_TIMEOUT, self.task).await {
            Ok(Ok(reports)) => reports,
            _ => {
                abort.abort();
                Reports {
                    files_truncated: true,
                    ..Reports::default()
                }
            }
        }
    }
}

/// Rlimits a child is forked with: the profile's ceilings. Memory is the cgroup's job when there
/// is one (RLIMIT_AS counts address space, not memory, and trips numpy's reservations); it is
/// the fallback otherwise.
fn spawn_rlimits(limits: &Limits, memory_by_cgroup: bool) -> RlimitParams {
    RlimitParams {
        cpu_seconds: limits.cpu_seconds(),
        fsize_bytes: limits.tmpfs_mb * MIB,
        nofile: limits.nofile,
        nproc: limits.pids,
        as_bytes: (!memory_by_cgroup).then_some(limits.memory_mb * MIB),
    }
}

/// Rlimits the child lowers itself to when its request arrives (never higher than at fork).
fn go_rlimits(limits: &Limits, memory_by_cgroup: bool) -> GoRlimits {
    GoRlimits {
        cpu_seconds: limits.cpu_seconds(),
        as_bytes: (!memory_by_cgroup).then_some(limits.memory_mb * MIB),
    }
}

/// Names how a run ended. `stopped` is set when the supervisor killed it, and wins;
/// `oom_killed` is the slot cgroup's OOM counter where there is one, and then the only word on
/// memory; without one (rootless), `stderr` tells a `MemoryError` at the address-space limit
/// from other errors.
pub fn classify(
    exit: &ExitReport,
    stopped: Option<Status>,
    oom_killed: Option<bool>,
    stderr: &[u8],
    limits: &Limits,
) -> (Status, Option<String>) {
    if let Some(status) = stopped {
        let message = match status {
            Status::Timeout => format!("wall-clock limit of {} ms reached", limits.timeout_ms),
            Status::OutputLimit => format!(
                "output exceeded {} bytes on a stream; the run was stopped",
                limits.output_bytes
            ),
            _ => status.as_str().to_string(),
        };
        return (status, Some(message));
    }
    let memory_message = || Some(format!("memory limit of {} MiB reached", limits.memory_mb));
    if oom_killed == Some(true) {
        return (Status::MemoryLimit, memory_message());
    }
    let memory_error = oom_killed.is_none() && died_of_memory_error(stderr);
    let cpu_ms = (exit.utime + exit.stime) * 1000.0;
    match (exit.exit_code, exit.signal) {
        (Some(0), _) => (Status::Ok, None),
        (Some(_), _) if memory_error => (Status::MemoryLimit, memory_message()),
        (Some(code), _) => (Status::Error, Some(format!("exited with code {code}"))),
        (None, Some(libc::SIGXCPU)) => (
            Status::CpuLimit,
            Some(format!("CPU limit of {} s reached", limits.cpu_seconds())),
        ),
        (None, Some(libc::SIGKILL)) if cpu_ms >= (limits.cpu_seconds() * 1000) as f64 => (
            Status::CpuLimit,
            Some(format!("CPU limit of {} s reached", limits.cpu_seconds())),
        ),
        (None, Some(libc::SIGSYS)) => (
            Status::Killed,
            Some("killed by seccomp (SIGSYS): the program made a forbidden system call".into()),
        ),
        (None, Some(signal)) => (
            Status::Killed,
            Some(format!(
                "killed by signal {signal} ({})",
                signal_name(signal)
            )),
        ),
        (None, None) => (
            Status::InternalError,
            Some("child vanished without a status".into()),
        ),
    }
}

/// True if the program's last words were an uncaught MemoryError.
fn died_of_memory_error(stderr: &[u8]) -> bool {
    let tail = &stderr[stderr.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.starts_with("MemoryError"))
}

fn signal_name(signal: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(signal).map_or("unknown", |s| s.as_str())
}

fn describe_exit(exit: Option<&ExitReport>) -> String {
    match exit {
        Some(ExitReport {
            exit_code: Some(code),
            ..
        }) => format!("exit {code}"),
        Some(ExitReport {
            signal: Some(sig), ..
        }) => format!("signal {sig}"),
        _ => "no exit status".into(),
    }
}

async fn wait_exit(events: &mut mpsc::UnboundedReceiver<ChildEvent>) -> Option<ExitReport> {
    let wait = async {
        while let Some(event) = events.recv().await {
            if let ChildEvent::Exited(info) = event {
                return Some(info);
            }
        }
        None
    };
    tokio::time::timeout(REAP_TIMEOUT, wait)
        .await
        .ok()
        .flatten()
}

/// Reads what a dead child left in a pipe (its lockdown error), at most 64 KiB.
async fn read_to_end_bounded(fd: OwnedFd) -> Vec<u8> {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return Vec::new();
    };
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        while data.len() < buf.len() {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(REAP_TIMEOUT, read).await;
    data
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Owns a live child: kills it when dropped unless it has exited, and holds the slot until the
/// process is really gone, so its uid is never shared with the next run.
#[derive(Debug)]
struct ChildGuard {
    pidfd: Option<PidFd>,
    slot: Option<Slot>,
}

impl ChildGuard {
    fn new(pidfd: PidFd, slot: Slot) -> Self {
        ChildGuard {
            pidfd: Some(pidfd),
            slot: Some(slot),
        }
    }

    fn kill(&self) {
        if let Some(pidfd) = &self.pidfd {
            kill_child(pidfd);
        }
    }

    fn cgroup(&self) -> Option<&crate::cgroup::SlotCgroup> {
        self.slot.as_ref().and_then(|s| s.cgroup())
    }

    fn host_pid(&self) -> Option<i32> {
        self.pidfd
            .as_ref()
            .and_then(PidFd::host_pid)
            .filter(|&pid| pid > 0)
    }

    fn has_exited(&self) -> bool {
        self.pidfd.as_ref().is_none_or(PidFd::has_exited)
    }

    /// The zygote reported the exit: nothing left to kill.
    fn exited(&mut self) {
        self.pidfd = None;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let slot = self.slot.take();
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        kill_child(&pidfd);
        // Keep the slot until the process has exited; then both go.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = tokio::time::timeout(REAP_TIMEOUT, pidfd.exited()).await;
                drop(slot);
            });
        }
    }
}

fn kill_child(pidfd: &PidFd) {
    if let Err(err) = pidfd.signal(libc::SIGKILL) {
        warn!(cause = %err, "killing a child failed");
    }
}

/// Reads one output stream, keeping at most `cap` bytes. More than that sets the truncation
/// flag and signals `overflowed`; the rest is read and dropped so the writer never blocks.
struct Capture {
    task: tokio::task::JoinHandle<(Vec<u8>, bool)>,
    overflow: Arc<Notify>,
}

impl Capture {
    fn start(read_end: OwnedFd, cap: u64) -> Capture {
        let overflow = Arc::new(Notify::new());
        let signal = Arc::clone(&overflow);
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let task = tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut truncated = false;
            let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) else {
                return (kept, truncated);
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = cap.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                        if n > room && !truncated {
                            truncated = true;
                            signal.notify_one();
                        }
                    }
                }
            }
            (kept, truncated)
        });
        Capture { task, overflow }
    }

    async fn overflowed(&self) {
        self.overflow.notified().await;
    }

    /// The captured bytes and the truncation flag, once the writer has closed (bounded wait).
    async fn finish(self) -> (Vec<u8>, bool) {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(REAP_TIMEOUT, self.task).await {
            Ok(Ok(captured)) => captured,
            _ => {
                abort.abort();
                (Vec::new(), true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zygote::EXIT_LOCKDOWN_FAILED;

    fn exit(code: Option<i32>, signal: Option<i32>, cpu: f64) -> ExitReport {
        ExitReport {
            exit_code: code,
            signal,
            utime: cpu,
            ..ExitReport::default()
        }
    }

    #[test]
    fn classification_names_every_ending() {
        let limits = Limits::default();
        let cases = [
            (exit(Some(0), None, 0.0), None, Status::Ok),
            (exit(Some(3), None, 0.0), None, Status::Error),
            (exit(None, Some(libc::SIGXCPU), 1.0), None, Status::CpuLimit),
            (
                exit(None, Some(libc::SIGKILL), 99_999.0),
                None,
                Status::CpuLimit,
            ),
            (exit(None, Some(libc::SIGKILL), 0.1), None, Status::Killed),
            (exit(None, Some(libc::SIGSYS), 0.0), None, Status::Killed),
            (
                exit(None, Some(libc::SIGKILL), 0.0),
                Some(Status::Timeout),
                Status::Timeout,
            ),
            (
                exit(Some(0), None, 0.0),
                Some(Status::OutputLimit),
                Status::OutputLimit,
            ),
            // After "ready" every exit code is the program's own, even the zygote's setup codes.
            (
                exit(Some(EXIT_LOCKDOWN_FAILED), None, 0.0),
                None,
                Status::Error,
            ),
        ];
        for (info, stopped, want) in cases {
            assert_eq!(
                classify(&info, stopped, Some(false), b"", &limits).0,
                want,
                "{info:?} {stopped:?}"
            );
        }
        let out_of_memory =
            b"Traceback (most recent call last):\n  File \"main.py\", line 1\nMemoryError\n";
        let exit1 = exit(Some(1), None, 0.1);
        // Without a memory cgroup (rootless) a final MemoryError is all there is to go on.
        assert_eq!(
            classify(&exit1, None, None, out_of_memory, &limits).0,
            Status::MemoryLimit
        );
        assert_eq!(
            classify(&exit1, None, None, b"ValueError: x\n", &limits).0,
            Status::Error
        );
        // With one, its OOM counter is the only word: printing the word is just output.
        assert_eq!(
            classify(&exit1, None, Some(false), out_of_memory, &limits).0,
            Status::Error
        );
        // The cgroup's OOM kill wins over the signal it used.
        let killed = exit(None, Some(libc::SIGKILL), 0.1);
        assert_eq!(
            classify(&killed, None, Some(true), b"", &limits).0,
            Status::MemoryLimit
        );
        // A program that merely prints the word, then exits 0, is fine.
        assert_eq!(
            classify(
                &exit(Some(0), None, 0.0),
                None,
                None,
                b"MemoryError\n",
                &limits
            )
            .0,
            Status::Ok
        );
    }
}
