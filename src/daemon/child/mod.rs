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
    CollectCaps, FileEntry, FromChild, GoRequest, GoRlimits, RunMode, ToChild,
};
use sandfork_ipc::lockdown::RlimitParams;
use sandfork_ipc::reports::ReportCaps;
use sandfork_ipc::zygote::SpawnRequest;
use sandfork_protocol::{
    FileData, Mode, OutputStream, RunExtra, RunResult, RunSpec, Status, Timings, Usage,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::daemon::engine::identities::Identity;
use crate::daemon::sys::{self, SeqChannel};
use crate::daemon::zygotes::handle::{ChildEvent, ExitReport, Zygote};

/// How long forking and locking down a child may take before it counts as a sandbox failure.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// After a child is killed or has exited, how long we wait for its exit report and pipe EOF.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
const MIB: u64 = 1024 * 1024;

mod capture;
mod exit;
mod guard;
mod reports;
mod session;

pub use capture::{output_queue, OutputChunk, OutputSink};
use capture::{read_to_end_bounded, Capture, Keep};
pub use exit::classify;
use exit::{kernel_exit_status, MAY_READ_EXIT_CODES};
use guard::ChildGuard;
use reports::ReportReader;
pub use session::{CellEnd, SessionChild, Signaller, INTERRUPT_GRACE};

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
    /// PID 1 of a pid namespace of its own (a profile with processes): its run ends early on
    /// "done" only when nothing else of it is left in the slot's cgroup, else on the zygote's
    /// exit report, which comes once every process of the namespace is gone.
    own_pid_namespace: bool,
    /// When the child reported ready; warm children are discarded after an idle limit.
    pub ready_at: Instant,
}

impl ReadyChild {
    /// Forks a child of `zygote` into `slot` with the profile's ceilings as its limits, and waits
    /// until it is locked down. `own_pid_namespace`: the profile lets runs start processes.
    pub async fn fork(
        zygote: Arc<Zygote>,
        slot: Identity,
        child_id: u64,
        ceiling: &Limits,
        own_pid_namespace: bool,
    ) -> Result<ReadyChild, ChildError> {
        let sandbox =
            |what: &str, err: std::io::Error| ChildError::Sandbox(format!("{what}: {err}"));
        let (chan_ours, chan_child) =
            sys::seqpacket_pair().map_err(|e| sandbox("socketpair", e))?;
        let (out_r, out_w) = sys::pipe().map_err(|e| sandbox("pipe", e))?;
        let (err_r, err_w) = sys::pipe().map_err(|e| sandbox("pipe", e))?;
        let request = spawn_request(&slot, child_id, ceiling, own_pid_namespace, false);
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
            own_pid_namespace,
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

    /// Runs `spec` in this child under `limits` (already checked against the profile's). With
    /// a `sink`, output goes there as it is produced instead of into the result.
    pub async fn run(
        mut self,
        spec: &RunSpec,
        limits: &Limits,
        sink: Option<OutputSink>,
    ) -> Result<(RunResult, RunExtra), ChildError> {
        let code = sys::sealed_memfd("sandfork-code", &spec.code)
            .map_err(|e| ChildError::Sandbox(format!("code memfd: {e}")))?;
        let stdin = sys::sealed_memfd("sandfork-stdin", &spec.stdin)
            .map_err(|e| ChildError::Sandbox(format!("stdin memfd: {e}")))?;
        let keep = |stream| Keep::new(stream, limits.output_bytes, sink.clone());
        let stdout = Capture::start(self.stdout, keep(OutputStream::Stdout));
        let stderr = Capture::start(self.stderr, keep(OutputStream::Stderr));
        drop(sink);
        let (manifest, files_memfd) = input_files(&spec.files)
            .map_err(|e| ChildError::Sandbox(format!("files memfd: {e}")))?;
        let mut fds = vec![code.as_raw_fd(), stdin.as_raw_fd()];
        fds.extend(files_memfd.as_ref().map(|m| m.as_raw_fd()));
        let caps = ReportCaps {
            result_bytes: limits.output_bytes,
            file_count: limits.max_files,
            file_bytes: limits.output_bytes,
        };
        let go = ToChild::Go(GoRequest {
            argv: spec.argv.clone(),
            rlimits: go_rlimits(limits, self.guard.cgroup().is_some()),
            mode: match spec.mode {
                // A floor run never gets a child that takes code (`engine::run` forks it with
                // `floor`); were one here, it would run its (empty) code as a script.
                Mode::Script | Mode::Floor => RunMode::Script,
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
        // The status comes from the kernel. Normally that is the zygote's wait4 report, which
        // comes after the kernel has torn down the child's copy of the zygote's memory (for a
        // forked CPython, milliseconds). When the child says "done" — a claim, which anyone
        // holding its channel could make — the supervisor instead looks at the kernel's task:
        // once it is exiting and its memory detached, its exit code is final
        // (`sys::exiting_status`), and the run can end without waiting for the teardown. A
        // forged "done" leads only to a look that finds a running process, and the run goes on.
        // This needs a cgroup (CPU and memory accounting that does not wait for the exit
        // report) and the right to read the child's exit code. PID 1 of a pid namespace (a
        // profile with processes) is seen exiting before the kernel has killed the processes it
        // started: its look counts only when the slot's cgroup holds no other process of the
        // run; otherwise the run waits for the exit report, which comes once they are all gone.
        let look_on_done = self.guard.cgroup().is_some() && *MAY_READ_EXIT_CODES;
        let (mut looking, mut looked) = (false, false);
        let mut seen_exiting = false;
        let exit = loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(ChildEvent::Exited(info)) => break Some(info),
                    Some(_) => continue,
                    None => break None,
                },
                _ = reports.done(), if look_on_done && stopped.is_none() && !looking && !looked => {
                    looking = true;
                }
                status = kernel_exit_status(&self.guard), if looking && stopped.is_none() => {
                    (looking, looked) = (false, true);
                    let status =
                        status.filter(|_| !self.own_pid_namespace || self.guard.alone_in_cgroup());
                    debug!(child = self.pid, early = status.is_some(), "looked for the exit");
                    if let Some(report) = status {
                        seen_exiting = true;
                        // It is on its way out: make sure, and keep its identity until it is gone.
                        self.guard.kill();
                        break Some(report);
                    }
                }
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
        let out = stdout.finish(OutputStream::Stdout).await;
        let err = stderr.finish(OutputStream::Stderr).await;
        // A program that wrote past the cap and ended before the overflow was noticed here
        // still went over it: the status says so, whichever came first.
        if stopped.is_none() && (out.truncated || err.truncated) {
            stopped = Some(Status::OutputLimit);
        }
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
        if !seen_exiting {
            self.guard.exited();
        }
        if reports.packets > 0 {
            debug!(
                child = self.pid,
                packets = reports.packets,
                bytes = reports.bytes,
                "child reports read"
            );
        }

        let (mut status, mut message) =
            classify(&exit, stopped, oom_killed, err.last_words(), limits);
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
        if message.is_none() && reports.files_skipped > 0 {
            message = Some(format!(
                "{} output file(s) left out: their paths are not UTF-8",
                reports.files_skipped
            ));
        }
        let mut result = RunResult::new(status);
        // main()'s value only with the run's success (docs/PROTOCOL.md): a value from a run that
        // then failed, or was claimed before the program failed, is not its result.
        if let (Status::Ok, Some(Ok(value))) = (status, reports.result) {
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
        let extra = RunExtra {
            stdout_streamed: out.streamed,
            stderr_streamed: err.streamed,
            ..RunExtra::default()
        };
        result.stdout = out.kept;
        result.stderr = err.kept;
        result.stdout_truncated = out.truncated;
        result.stderr_truncated = err.truncated;
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
        Ok((result, extra))
    }
}

/// A request's input files for the child: their manifest (path and size, in order) and their
/// contents back to back in one sealed memfd (none without files).
fn input_files(files: &[FileData]) -> std::io::Result<(Vec<FileEntry>, Option<OwnedFd>)> {
    let manifest = files
        .iter()
        .map(|f| FileEntry {
            path: f.path.clone(),
            size: f.content.len() as u64,
        })
        .collect();
    if files.is_empty() {
        return Ok((manifest, None));
    }
    let blob: Vec<u8> = files
        .iter()
        .flat_map(|f| f.content.iter().copied())
        .collect();
    Ok((manifest, Some(sys::sealed_memfd("sandfork-files", &blob)?)))
}

/// A floor run (`Mode::Floor`): the zygote forks a child in `slot` that exits at once, through
/// the same channels as a run (its channel and output pipes handed over, the `spawned` report
/// with its pidfd, the `exit` report). The result is `ok`, with the time from the spawn request
/// to the exit report as `run_ms`, to the `spawned` report as `spawn_ms`, and the child's CPU.
pub async fn floor(
    zygote: Arc<Zygote>,
    slot: Identity,
    child_id: u64,
    ceiling: &Limits,
    own_pid_namespace: bool,
) -> Result<RunResult, ChildError> {
    let sandbox = |what: &str, err: std::io::Error| ChildError::Sandbox(format!("{what}: {err}"));
    let (_chan_ours, chan_child) = sys::seqpacket_pair().map_err(|e| sandbox("socketpair", e))?;
    let (_out_r, out_w) = sys::pipe().map_err(|e| sandbox("pipe", e))?;
    let (_err_r, err_w) = sys::pipe().map_err(|e| sandbox("pipe", e))?;
    let request = spawn_request(&slot, child_id, ceiling, own_pid_namespace, true);
    let started = Instant::now();
    let mut events = zygote
        .spawn(request, [&chan_child, &out_w, &err_w])
        .await
        .map_err(|e| ChildError::Sandbox(format!("zygote {}: {e}", zygote.name)))?;
    drop((chan_child, out_w, err_w));
    let mut spawned_at = None;
    // The slot is held until the exit report: a uid never serves two live children.
    let exit = loop {
        match tokio::time::timeout(SPAWN_TIMEOUT, events.recv()).await {
            Ok(Some(ChildEvent::Spawned { .. })) => spawned_at = Some(started.elapsed()),
            Ok(Some(ChildEvent::SpawnFailed(reason))) => {
                return Err(ChildError::Sandbox(format!("fork failed: {reason}")))
            }
            Ok(Some(ChildEvent::Exited(report))) => break report,
            Ok(None) => return Err(ChildError::Sandbox(format!("zygote {} died", zygote.name))),
            Err(_) => {
                return Err(ChildError::Sandbox(
                    "the floor child was not reaped in time".into(),
                ))
            }
        }
    };
    let elapsed = started.elapsed();
    drop(slot);
    let mut result = RunResult::new(if exit.exit_code == Some(0) {
        Status::Ok
    } else {
        Status::InternalError
    });
    result.exit_code = exit.exit_code;
    result.signal = exit.signal;
    result.timings.spawn_ms = spawned_at.map_or(0.0, |t| t.as_secs_f64() * 1000.0);
    result.timings.run_ms = elapsed.as_secs_f64() * 1000.0;
    result.usage = Usage {
        wall_ms: result.timings.run_ms,
        cpu_ms: (exit.utime + exit.stime) * 1000.0,
        max_rss_kb: exit.maxrss_kb,
    };
    Ok(result)
}

/// What the zygote is asked for: a child in `slot`, with the profile's ceilings.
fn spawn_request(
    slot: &Identity,
    child_id: u64,
    ceiling: &Limits,
    own_pid_namespace: bool,
    floor: bool,
) -> SpawnRequest {
    SpawnRequest {
        id: child_id,
        uid: slot.inner_uid(),
        gid: slot.inner_uid(),
        tmpfs_bytes: ceiling.tmpfs_mb * MIB,
        rlimits: spawn_rlimits(ceiling, slot.cgroup().is_some()),
        own_pid_namespace,
        floor,
    }
}

/// Rlimits a child is forked with: the profile's ceilings. Memory is the cgroup's job when there
/// is one (RLIMIT_AS counts address space, not memory, and trips numpy's reservations); it is
/// the fallback otherwise. File size is not limited (RLIM_INFINITY): the tmpfs sizes bound what
/// a run can store, and a sparse file larger than its tmpfs costs nothing (snekbox sets the
/// same; its tests create one, and a shared-memory object one byte larger than `/dev/shm`).
fn spawn_rlimits(limits: &Limits, memory_by_cgroup: bool) -> RlimitParams {
    RlimitParams {
        cpu_seconds: limits.cpu_seconds(),
        fsize_bytes: libc::RLIM_INFINITY,
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests;
