//! One run, from a validated request to exactly one `RunResult`.
//!
//! Path: check the request against the profile's limits → take a slot (its uid) → pick a
//! zygote → ask it to fork a child, handing over the child's channel and the write ends of its
//! stdout/stderr pipes → wait until the child reports it is locked down → send "go" with the code
//! and stdin as sealed memfds → collect output (capped) while waiting for the exit, the wall
//! deadline, or an output overflow → classify.
//!
//! Dropping the future of a run (client gone, cancel, shutdown) kills its child through the
//! pidfd, and the slot is only returned once the child is really gone.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_protocol::{LimitsRequest, RunResult, RunSpec, Status, Timings, Usage};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Notify};
use tracing::warn;

use crate::config::Limits;
use crate::pool::Pool;
use crate::slots::{Slot, Slots};
use crate::sys::{self, PidFd, SeqChannel};
use crate::zygote::{ChildEvent, ChildParams, ExitInfo};

/// How long a run may wait for a zygote to be available.
const ZYGOTE_WAIT: Duration = Duration::from_secs(10);
/// How long forking and locking down a child may take before it counts as a sandbox failure.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// After a child is killed or has exited, how long we wait for its exit report and pipe EOF.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
const MIB: u64 = 1024 * 1024;

/// Applies a request's limits to a profile's: lower only, never higher.
pub fn effective_limits(profile: &Limits, request: &LimitsRequest) -> Result<Limits, String> {
    let mut limits = *profile;
    let lower = |name: &str, asked: Option<u64>, ceiling: u64| -> Result<u64, String> {
        match asked {
            None => Ok(ceiling),
            Some(0) => Err(format!("{name} must be positive")),
            Some(v) if v > ceiling => Err(format!(
                "{name} {v} exceeds the profile's ceiling of {ceiling}"
            )),
            Some(v) => Ok(v),
        }
    };
    limits.timeout_ms = lower("timeout_ms", request.timeout_ms, profile.timeout_ms)?;
    limits.memory_mb = lower("memory_mb", request.memory_mb, profile.memory_mb)?;
    limits.output_bytes = lower("output_bytes", request.output_bytes, profile.output_bytes)?;
    if request.timeout_ms.is_some() && profile.cpu_seconds.is_none() {
        limits.cpu_seconds = None; // derive the CPU limit from the lowered wall timeout
    }
    Ok(limits)
}

/// Rlimits a child is forked with: the profile's ceilings.
fn spawn_rlimits(limits: &Limits) -> serde_json::Value {
    json!({
        "cpu_seconds": limits.cpu_seconds(),
        "fsize_bytes": limits.tmpfs_mb * MIB,
        "nofile": limits.nofile,
        "nproc": limits.pids,
        "as_bytes": limits.memory_mb * MIB,
    })
}

/// Rlimits the child lowers itself to when its request arrives.
fn go_rlimits(limits: &Limits) -> serde_json::Value {
    json!({
        "cpu_seconds": limits.cpu_seconds(),
        "as_bytes": limits.memory_mb * MIB,
    })
}

/// A result that never ran.
pub fn rejected(message: impl Into<String>) -> RunResult {
    let mut result = RunResult::new(Status::Rejected);
    result.message = Some(message.into());
    result
}

fn internal_error(message: impl Into<String>) -> RunResult {
    let mut result = RunResult::new(Status::InternalError);
    result.message = Some(message.into());
    result
}

/// Runs `spec` on `pool`. `received` is when the request arrived (for queue timing).
pub async fn execute(
    pool: &Pool,
    slots: &Slots,
    run_id: u64,
    spec: RunSpec,
    received: Instant,
) -> RunResult {
    let limits = match effective_limits(&pool.profile.limits, &spec.limits) {
        Ok(limits) => limits,
        Err(message) => return rejected(message),
    };
    if spec.code.len() as u64 > limits.code_bytes {
        return rejected(format!(
            "code is {} bytes; the limit is {}",
            spec.code.len(),
            limits.code_bytes
        ));
    }
    if spec.stdin.len() as u64 > limits.stdin_bytes {
        return rejected(format!(
            "stdin is {} bytes; the limit is {}",
            spec.stdin.len(),
            limits.stdin_bytes
        ));
    }
    let slot = slots.acquire().await;
    let queued = received.elapsed();
    let mut result = match run_in_slot(pool, slot, run_id, &spec, &limits).await {
        Ok(result) => result,
        Err(message) => internal_error(message),
    };
    result.timings.queue_ms = ms(queued);
    result.timings.total_ms = ms(received.elapsed());
    result
}

async fn run_in_slot(
    pool: &Pool,
    slot: Slot,
    run_id: u64,
    spec: &RunSpec,
    limits: &Limits,
) -> Result<RunResult, String> {
    let zygote = pool
        .pick(ZYGOTE_WAIT)
        .await
        .ok_or_else(|| format!("no zygote of profile {} is ready", pool.profile.name))?;
    let spawn_started = Instant::now();
    let (chan_ours, chan_child) = sys::seqpacket_pair().map_err(|e| format!("socketpair: {e}"))?;
    let (out_r, out_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let params = ChildParams {
        run_id,
        uid: slot.inner_uid(),
        gid: slot.inner_uid(),
        tmpfs_bytes: limits.tmpfs_mb * MIB,
        rlimits: spawn_rlimits(limits),
    };
    let mut events = zygote
        .spawn(&params, [&chan_child, &out_w, &err_w])
        .await
        .map_err(|e| format!("zygote {}: {e}", zygote.name))?;
    drop((chan_child, out_w, err_w));

    let stdout = Capture::start(out_r, limits.output_bytes);
    let stderr = Capture::start(err_r, limits.output_bytes);

    let (pid, pidfd) = match tokio::time::timeout(SPAWN_TIMEOUT, events.recv()).await {
        Ok(Some(ChildEvent::Spawned { pid, pidfd })) => (pid, pidfd),
        Ok(Some(ChildEvent::SpawnFailed(reason))) => return Err(format!("fork failed: {reason}")),
        Ok(Some(ChildEvent::Exited(_))) => return Err("child exited before it was spawned".into()),
        Ok(None) => return Err(format!("zygote {} died", zygote.name)),
        Err(_) => return Err("zygote did not fork in time".into()),
    };
    let child = ChildGuard::new(pidfd, slot);

    // The child says "ready" once it is locked down; only then does it get the code.
    let chan = SeqChannel::new(chan_ours).map_err(|e| format!("child channel: {e}"))?;
    let ready = tokio::time::timeout(SPAWN_TIMEOUT, chan.recv(256, 0)).await;
    let ready = matches!(&ready, Ok(Ok(Some(p))) if p.data == br#"{"op":"ready"}"#);
    if !ready {
        child.kill();
        let exit = wait_exit(&mut events).await;
        let stderr = stderr.finish().await;
        let detail = String::from_utf8_lossy(&stderr.0).trim().to_string();
        return Err(format!(
            "child {pid} failed during lockdown ({}): {detail}",
            describe_exit(exit.as_ref())
        ));
    }
    let spawn_time = spawn_started.elapsed();

    let code = sys::sealed_memfd("sandfork-code", &spec.code).map_err(|e| e.to_string())?;
    let stdin = sys::sealed_memfd("sandfork-stdin", &spec.stdin).map_err(|e| e.to_string())?;
    let go = json!({"op": "go", "argv": spec.argv, "rlimits": go_rlimits(limits)});
    let run_started = Instant::now();
    chan.send(go.to_string().as_bytes(), &[raw(&code), raw(&stdin)])
        .await
        .map_err(|e| format!("sending code to the child: {e}"))?;
    drop((code, stdin, chan));

    let deadline = tokio::time::sleep(Duration::from_millis(limits.timeout_ms));
    tokio::pin!(deadline);
    let mut stopped: Option<Status> = None;
    let exit = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(ChildEvent::Exited(info)) => break Some(info),
                Some(_) => continue,
                None => break None,
            },
            _ = &mut deadline, if stopped.is_none() => {
                stopped = Some(Status::Timeout);
                child.kill();
            }
            _ = stdout.overflowed(), if stopped.is_none() => {
                stopped = Some(Status::OutputLimit);
                child.kill();
            }
            _ = stderr.overflowed(), if stopped.is_none() => {
                stopped = Some(Status::OutputLimit);
                child.kill();
            }
        }
    };
    let run_time = run_started.elapsed();
    let (out, out_truncated) = stdout.finish().await;
    let (err, err_truncated) = stderr.finish().await;
    let Some(exit) = exit else {
        child.kill();
        return Err(format!(
            "zygote {} died while the run was in progress",
            zygote.name
        ));
    };
    child.exited();

    let (status, message) = classify(&exit, stopped, limits);
    Ok(RunResult {
        status,
        exit_code: exit.exit_code,
        signal: exit.signal,
        stdout: out,
        stderr: err,
        stdout_truncated: out_truncated,
        stderr_truncated: err_truncated,
        usage: Usage {
            wall_ms: ms(run_time),
            cpu_ms: (exit.utime + exit.stime) * 1000.0,
            max_rss_kb: exit.maxrss_kb,
        },
        timings: Timings {
            queue_ms: 0.0,
            spawn_ms: ms(spawn_time),
            run_ms: ms(run_time),
            total_ms: 0.0,
        },
        message,
    })
}

/// Names how a run ended. `stopped` is set when the supervisor killed it, and wins.
pub fn classify(
    exit: &ExitInfo,
    stopped: Option<Status>,
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
    let cpu_ms = (exit.utime + exit.stime) * 1000.0;
    match (exit.exit_code, exit.signal) {
        (Some(0), _) => (Status::Ok, None),
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

fn signal_name(signal: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(signal).map_or("unknown", |s| s.as_str())
}

fn describe_exit(exit: Option<&ExitInfo>) -> String {
    match exit {
        Some(ExitInfo {
            exit_code: Some(code),
            ..
        }) => format!("exit {code}"),
        Some(ExitInfo {
            signal: Some(sig), ..
        }) => format!("signal {sig}"),
        _ => "no exit status".into(),
    }
}

async fn wait_exit(events: &mut mpsc::UnboundedReceiver<ChildEvent>) -> Option<ExitInfo> {
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

fn raw(fd: &OwnedFd) -> std::os::fd::RawFd {
    std::os::fd::AsRawFd::as_raw_fd(fd)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Owns a live child: kills it when dropped unless it has exited, and holds the slot until the
/// process is really gone, so its uid is never shared with the next run.
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

    /// The zygote reported the exit: nothing left to kill.
    fn exited(mut self) {
        self.pidfd = None;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        kill_child(&pidfd);
        let slot = self.slot.take();
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

    fn exit(code: Option<i32>, signal: Option<i32>, cpu: f64) -> ExitInfo {
        ExitInfo {
            exit_code: code,
            signal,
            utime: cpu,
            stime: 0.0,
            maxrss_kb: 0,
        }
    }

    #[test]
    fn requests_may_only_lower_limits() {
        let profile = Limits::default();
        let lowered = effective_limits(
            &profile,
            &LimitsRequest {
                timeout_ms: Some(100),
                memory_mb: None,
                output_bytes: Some(10),
            },
        )
        .unwrap();
        assert_eq!(lowered.timeout_ms, 100);
        assert_eq!(lowered.output_bytes, 10);
        assert_eq!(lowered.memory_mb, profile.memory_mb);
        let too_high = LimitsRequest {
            timeout_ms: Some(profile.timeout_ms + 1),
            ..Default::default()
        };
        assert!(effective_limits(&profile, &too_high)
            .unwrap_err()
            .contains("exceeds"));
        let zero = LimitsRequest {
            memory_mb: Some(0),
            ..Default::default()
        };
        assert!(effective_limits(&profile, &zero).is_err());
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
                classify(&info, stopped, &limits).0,
                want,
                "{info:?} {stopped:?}"
            );
        }
    }
}
