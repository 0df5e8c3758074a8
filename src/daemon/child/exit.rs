//! How a run ended: the kernel's word on the child's exit, read early when the child says it is
//! done, and the one status every run ends with.

use std::time::{Duration, Instant};

use sandfork_protocol::Status;
use tracing::debug;

use super::guard::ChildGuard;
use crate::config::Limits;
use crate::daemon::sys;
use crate::daemon::zygotes::handle::ExitReport;

/// Whether this daemon may read its children's exit codes in /proc (checked once).
pub(super) static MAY_READ_EXIT_CODES: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(sys::may_read_exit_codes);

/// How long a child that said "done" gets to be seen exiting before the run waits for the
/// zygote's report instead, and how often it is looked at meanwhile. A well-behaved child is in
/// `exit_group` within a few hundred microseconds of its "done": it is looked at once at once,
/// then from a blocking thread that sleeps between looks (so the child, often on the same core,
/// gets to run; spinning on the runtime's thread measured worse at the 90th percentile), with a
/// fine timer slack; the timer wheel's millisecond would cost more than the look saves.
const EXIT_LOOK_FOR: Duration = Duration::from_millis(3);
const EXIT_LOOK_EVERY: Duration = Duration::from_micros(10);

/// The child's exit status as the kernel holds it once the child is exiting (see
/// `sys::exiting_status`); `None` if it is not seen exiting within [`EXIT_LOOK_FOR`] (it is
/// still running: a forged "done"), or it already ended (then the zygote's report is on its
/// way).
pub(super) async fn kernel_exit_status(guard: &ChildGuard) -> Option<ExitReport> {
    let pid = guard.host_pid()?;
    let started = Instant::now();
    let status = match sys::exiting_status(pid) {
        Some(status) => status,
        None => tokio::task::spawn_blocking(move || {
            // Sleeps of a few microseconds, as asked: the default timer slack (50 µs) would
            // stretch each one. This thread belongs to the blocking pool; a fine slack on it
            // costs nothing elsewhere.
            let _ = nix::sys::prctl::set_timerslack(1_000);
            loop {
                std::thread::sleep(EXIT_LOOK_EVERY);
                if let Some(status) = sys::exiting_status(pid) {
                    return Some(status);
                }
                if started.elapsed() >= EXIT_LOOK_FOR {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()?,
    };
    debug!(
        waited_us = started.elapsed().as_micros() as u64,
        "exit seen"
    );
    // Read while the pidfd still held an unreaped process: the pid was this child's.
    if guard.has_exited() {
        return None;
    }
    Some(ExitReport {
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        ..ExitReport::default()
    })
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
