//! A session's child: one locked-down child that runs cell after cell in the same `__main__`.
//!
//! It is a [`ReadyChild`] (forked from the profile's zygote into its own identity, locked down
//! exactly as a run's child) told `session` instead of `go`. From then on the supervisor sends
//! it cells, each with its code and stdin as sealed memfds, and reads back — as claims, through
//! the same [`ReportDecoder`] as a run's reports — the cell's value and `cell_done`. What the
//! supervisor believes about a cell's ending comes from where it can: the wall deadline is its
//! own, the output caps are counted here, memory comes from the slot's cgroup and a death from
//! the zygote's exit report. Only `ok` versus `error` of a cell that ran to its end is the
//! child's word, and it is a word about the session's own cell.
//!
//! The output pipes live as long as the session. Each pipe has a pump task that reads into the
//! current cell's [`Keep`] (kept or streamed, under the cap); between cells it does not read,
//! so a thread the program left running stalls on a full pipe instead of costing the daemon
//! anything. When the child says `cell_done` (after flushing), the pump reads what the pipe
//! still holds, without waiting for more, and hands the cell's output back.
//!
//! A cell over its time is interrupted (SIGINT: KeyboardInterrupt in the cell); if it has not
//! ended [`INTERRUPT_GRACE`] later, the child is killed and the session ends with that cell.
//! Output over the cap is the same: interrupt, then kill.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_ipc::child::{
    CellRequest, ListFilesRequest, ReadFileRequest, SessionStart, ToChild, MAX_CHILD_PACKET,
};
use sandfork_ipc::reports::{Next, Purpose, ReportCaps, ReportDecoder, Reports};
use sandfork_protocol::{
    Cell, FileData, FileInfo, OutputStream, RunExtra, RunResult, Status, Timings, Usage,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;

use super::capture::{Keep, OutputSink};
use super::exit::classify;
use super::guard::ChildGuard;
use super::{go_rlimits, input_files, ms, ChildError, ReadyChild, MIB, REAP_TIMEOUT};
use crate::config::Limits;
use crate::daemon::sys::{self, PidFd, SeqChannel};
use crate::daemon::zygotes::handle::{ChildEvent, ExitReport};

/// How long an interrupted cell (over its time, or its output cap) gets to end before its
/// session's child is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(1);
/// Descriptors accepted with a report packet, to be counted and closed (a report carries none).
const MAX_REPORT_FDS: usize = 8;
/// Code up to this size is sent inside the cell message rather than as a memfd.
const INLINE_CODE_BYTES: usize = 16 * 1024;
/// Reads of a pipe's remains when a cell ends (each up to 64 KiB).
const DRAIN_READS: usize = 64;
/// Longest a file listing may be.
pub const MAX_LISTING: u64 = 1000;

/// A live session child, between cells or running one.
#[derive(Debug)]
pub struct SessionChild {
    pid: i32,
    guard: ChildGuard,
    chan: SeqChannel,
    events: mpsc::UnboundedReceiver<ChildEvent>,
    stdout: Pump,
    stderr: Pump,
    cells: u64,
    /// The slot cgroup's CPU counter after the last cell (cells are charged the difference).
    cpu_ns_before: u64,
    /// Set once the child is gone (or must be): no more cells.
    ended: bool,
}

/// How a cell ended.
#[derive(Debug)]
pub struct CellEnd {
    pub result: RunResult,
    pub extra: RunExtra,
}

/// Signals a session's child from outside the lock its cells hold (interrupt, close).
#[derive(Debug)]
pub struct Signaller(PidFd);

impl Signaller {
    /// KeyboardInterrupt in the running cell (between cells the child ignores it).
    pub fn interrupt(&self) {
        let _ = self.0.signal(libc::SIGINT);
    }

    /// Ends the child now.
    pub fn kill(&self) {
        let _ = self.0.signal(libc::SIGKILL);
    }

    /// Resolves once the child has exited.
    pub async fn exited(&self) {
        let _ = self.0.exited().await;
    }
}

impl ReadyChild {
    /// Makes this child a session's: it lowers its rlimits to `limits` and waits for cells.
    pub async fn into_session(self, limits: &Limits) -> Result<SessionChild, ChildError> {
        let start = ToChild::Session(SessionStart {
            rlimits: go_rlimits(limits, self.guard.cgroup().is_some()),
        });
        let message = sandfork_ipc::encode(&start)
            .map_err(|e| ChildError::Sandbox(format!("session message: {e}")))?;
        if let Some(cgroup) = self.guard.cgroup() {
            cgroup
                .prepare(limits.memory_mb * MIB, limits.pids)
                .map_err(|e| ChildError::Sandbox(format!("cgroup: {e}")))?;
        }
        if let Err(err) = self.chan.send(&message, &[]).await {
            return Err(ChildError::Lost(format!("child {}: {err}", self.pid)));
        }
        Ok(SessionChild {
            pid: self.pid,
            guard: self.guard,
            chan: self.chan,
            events: self.events,
            stdout: Pump::start(self.stdout),
            stderr: Pump::start(self.stderr),
            cells: 0,
            cpu_ns_before: 0,
            ended: false,
        })
    }
}

impl SessionChild {
    /// A handle that interrupts or kills this child without holding it.
    pub fn signaller(&self) -> Result<Signaller, String> {
        self.guard
            .duplicate_pidfd()
            .map(Signaller)
            .ok_or_else(|| "the session's child is gone".to_string())
    }

    /// True once the child is gone (or had to be killed): the session is over.
    pub fn has_ended(&self) -> bool {
        self.ended || self.guard.has_exited()
    }

    /// Cells run so far.
    pub fn cells(&self) -> u64 {
        self.cells
    }

    /// Runs one cell under `limits` (its timeout and output cap; memory is the session's).
    /// With a `sink`, output goes there as it is produced.
    pub async fn cell(
        &mut self,
        cell: &Cell,
        limits: &Limits,
        sink: Option<OutputSink>,
    ) -> CellEnd {
        match self.try_cell(cell, limits, sink).await {
            Ok(end) => end,
            Err(why) => {
                self.end();
                CellEnd {
                    result: RunResult::new(Status::InternalError).with_message(why),
                    extra: RunExtra {
                        session_ended: true,
                        ..RunExtra::default()
                    },
                }
            }
        }
    }

    async fn try_cell(
        &mut self,
        cell: &Cell,
        limits: &Limits,
        sink: Option<OutputSink>,
    ) -> Result<CellEnd, String> {
        if self.has_ended() {
            return Err("the session's child is gone".into());
        }
        self.cells += 1;
        // Small code travels in the message itself (the child decodes it as UTF-8 with
        // replacement characters either way); larger code, and any stdin, as sealed memfds.
        let inline_code = (cell.code.len() <= INLINE_CODE_BYTES)
            .then(|| String::from_utf8_lossy(&cell.code).into_owned());
        let mut memfds = Vec::new();
        if inline_code.is_none() {
            memfds.push(
                sys::sealed_memfd("sandfork-code", &cell.code)
                    .map_err(|e| format!("code memfd: {e}"))?,
            );
        }
        if !cell.stdin.is_empty() {
            memfds.push(
                sys::sealed_memfd("sandfork-stdin", &cell.stdin)
                    .map_err(|e| format!("stdin memfd: {e}"))?,
            );
        }
        let (manifest, files_memfd) =
            input_files(&cell.files).map_err(|e| format!("files memfd: {e}"))?;
        memfds.extend(files_memfd);
        let fds: Vec<_> = memfds.iter().map(|m| m.as_raw_fd()).collect();
        let request = ToChild::Cell(CellRequest {
            number: self.cells,
            files: manifest,
            value_bytes: limits.output_bytes,
            code: inline_code,
            stdin: !cell.stdin.is_empty(),
        });
        let request = sandfork_ipc::encode(&request).map_err(|e| format!("cell message: {e}"))?;
        let overflow = Arc::new(Notify::new());
        let keep = |stream| Keep::new(stream, limits.output_bytes, sink.clone());
        self.stdout
            .begin(keep(OutputStream::Stdout), Arc::clone(&overflow));
        self.stderr
            .begin(keep(OutputStream::Stderr), Arc::clone(&overflow));
        drop(sink);

        let started = Instant::now();
        self.chan
            .send(&request, &fds)
            .await
            .map_err(|e| format!("the session's child {} took no cell: {e}", self.pid))?;
        drop(memfds);

        let caps = ReportCaps {
            result_bytes: limits.output_bytes,
            file_count: 0,
            file_bytes: 0,
        };
        let mut decoder = ReportDecoder::for_purpose(caps, Purpose::Cell);
        let deadline = tokio::time::sleep(Duration::from_millis(limits.timeout_ms));
        tokio::pin!(deadline);
        let grace = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(grace);
        let mut stopped: Option<Status> = None;
        let mut killed = false;
        let mut exit: Option<ExitReport> = None;
        let mut reading = true;
        loop {
            tokio::select! {
                packet = self.chan.recv(MAX_CHILD_PACKET, MAX_REPORT_FDS), if reading => {
                    let next = match packet {
                        Ok(Some(packet)) => decoder.feed(&packet.data, packet.fds.len()),
                        Ok(None) => { reading = false; continue; }
                        Err(err) => { decoder.refuse(format!("an unreadable packet: {err}")); Next::Stop }
                    };
                    if next == Next::Stop {
                        reading = false;
                        if decoder.is_done() && !killed {
                            break; // the cell is over; the session goes on
                        }
                        if !killed {
                            // Misuse of the channel: nothing more can be believed of this child.
                            self.guard.kill();
                            killed = true;
                        }
                    }
                }
                event = self.events.recv() => match event {
                    Some(ChildEvent::Exited(report)) => { exit = Some(report); break; }
                    Some(_) => continue,
                    None => break,
                },
                _ = &mut deadline, if stopped.is_none() => {
                    stopped = Some(Status::Timeout);
                    self.interrupt_then_kill(grace.as_mut());
                }
                _ = overflow.notified(), if stopped.is_none() => {
                    stopped = Some(Status::OutputLimit);
                    self.interrupt_then_kill(grace.as_mut());
                }
                _ = &mut grace, if !killed => {
                    debug!(child = self.pid, "the interrupted cell did not end; killing its session");
                    self.guard.kill();
                    killed = true;
                }
            }
        }
        let run_time = started.elapsed();
        let reports = decoder.finish();
        // The child died, or will: wait for the kernel's word before the pumps' last bytes.
        if exit.is_none() && (killed || self.guard.has_exited()) {
            self.guard.kill();
            exit = super::wait_exit(&mut self.events).await;
        }
        let dead = exit.is_some() || killed;
        let out = self.stdout.finish(OutputStream::Stdout).await;
        let err = self.stderr.finish(OutputStream::Stderr).await;
        // A cell that wrote past the cap and ended before the overflow was noticed still went
        // over it (as for runs).
        if stopped.is_none() && (out.truncated || err.truncated) {
            stopped = Some(Status::OutputLimit);
        }
        let usage = self.guard.cgroup().and_then(|c| c.usage().ok());
        let cpu_ns = usage.as_ref().map(|u| u.cpu_ns);
        let cell_cpu_ms = cpu_ns.map_or(0.0, |now| {
            now.saturating_sub(self.cpu_ns_before) as f64 / 1e6
        });
        if let Some(now) = cpu_ns {
            self.cpu_ns_before = now;
        }
        let (mut result, ended) = if dead {
            self.end();
            let exit = exit.unwrap_or_default();
            let (status, message) = classify(
                &exit,
                stopped,
                usage.as_ref().map(|u| u.oom_killed),
                err.last_words(),
                limits,
            );
            let why = match (status, exit.exit_code) {
                (Status::Ok | Status::Error, Some(_)) if reports.misuse.is_none() => {
                    "the cell exited the session".to_string()
                }
                _ => "the session ended with this cell".to_string(),
            };
            let message = match (message, &reports.misuse) {
                (_, Some(misuse)) => {
                    format!("the program misused the sandbox's control channel ({misuse}); {why}")
                }
                (Some(message), None) => format!("{message}; {why}"),
                (None, None) => why,
            };
            let mut result = RunResult::new(status).with_message(message);
            result.exit_code = exit.exit_code;
            result.signal = exit.signal;
            (result, true)
        } else {
            let failed = reports.cell_failed.unwrap_or(true);
            let mut result = match stopped {
                Some(Status::Timeout) => RunResult::new(Status::Timeout).with_message(format!(
                    "wall-clock limit of {} ms reached; the cell was interrupted",
                    limits.timeout_ms
                )),
                Some(Status::OutputLimit) => {
                    RunResult::new(Status::OutputLimit).with_message(format!(
                        "output exceeded {} bytes on a stream; the cell was interrupted",
                        limits.output_bytes
                    ))
                }
                _ if failed => RunResult::new(Status::Error)
                    .with_message("the cell raised an exception (traceback in stderr)"),
                _ => RunResult::new(Status::Ok),
            };
            if let Some(Err(why)) = &reports.result {
                result.message = Some(why.clone());
            }
            (result, false)
        };
        let value = match (result.status, reports) {
            (
                Status::Ok,
                Reports {
                    result: Some(Ok(value)),
                    ..
                },
            ) => Some(String::from_utf8_lossy(&value).into_owned()),
            _ => None,
        };
        let extra = RunExtra {
            stdout_streamed: out.streamed,
            stderr_streamed: err.streamed,
            value,
            session_ended: ended,
        };
        result.stdout_truncated = out.truncated;
        result.stderr_truncated = err.truncated;
        result.stdout = out.kept;
        result.stderr = err.kept;
        result.usage = Usage {
            wall_ms: ms(run_time),
            cpu_ms: cell_cpu_ms,
            max_rss_kb: usage
                .and_then(|u| u.peak_memory_bytes)
                .map_or(0, |bytes| bytes / 1024),
        };
        result.timings = Timings {
            run_ms: ms(run_time),
            ..Timings::default()
        };
        Ok(CellEnd { result, extra })
    }

    fn interrupt_then_kill(&self, grace: std::pin::Pin<&mut tokio::time::Sleep>) {
        if let Some(pidfd) = self.guard.duplicate_pidfd() {
            let _ = pidfd.signal(libc::SIGINT);
        }
        grace.reset(tokio::time::Instant::now() + INTERRUPT_GRACE);
    }

    /// The regular files of the session's directory (at most [`MAX_LISTING`]) and whether
    /// there were more. Between cells only.
    pub async fn list_files(&mut self) -> Result<(Vec<FileInfo>, bool), String> {
        let request = ToChild::ListFiles(ListFilesRequest {
            max_count: MAX_LISTING,
        });
        let caps = ReportCaps {
            result_bytes: 0,
            file_count: MAX_LISTING,
            file_bytes: 0,
        };
        let reports = self.ask(&request, caps, Purpose::Listing).await?;
        let files = reports
            .listing
            .into_iter()
            .map(|e| FileInfo {
                path: e.path,
                size: e.size,
            })
            .collect();
        Ok((files, reports.files_truncated))
    }

    /// One file of the session's directory: `Ok(None)` if there is no such regular file,
    /// `Err` if it is larger than `max_bytes` or the child failed. Between cells only.
    pub async fn read_file(
        &mut self,
        path: &str,
        max_bytes: u64,
    ) -> Result<Option<FileData>, String> {
        let request = ToChild::ReadFile(ReadFileRequest {
            path: path.to_string(),
            max_bytes,
        });
        let caps = ReportCaps {
            result_bytes: 0,
            file_count: 1,
            file_bytes: max_bytes,
        };
        let reports = self.ask(&request, caps, Purpose::ReadFile).await?;
        if reports.files_truncated && reports.files.is_empty() {
            return Err(format!("{path:?} is larger than {max_bytes} bytes"));
        }
        Ok(reports
            .files
            .into_iter()
            .find(|f| f.path == path)
            .map(|f| FileData {
                path: f.path,
                content: f.content,
            }))
    }

    /// Sends a request between cells and reads its reports; a child that misuses the channel
    /// or does not answer in time ends the session.
    async fn ask(
        &mut self,
        request: &ToChild,
        caps: ReportCaps,
        purpose: Purpose,
    ) -> Result<Reports, String> {
        if self.has_ended() {
            return Err("the session's child is gone".into());
        }
        let message = sandfork_ipc::encode(request).map_err(|e| e.to_string())?;
        self.chan
            .send(&message, &[])
            .await
            .map_err(|e| format!("the session's child did not take the request: {e}"))?;
        let mut decoder = ReportDecoder::for_purpose(caps, purpose);
        let read = async {
            loop {
                match self.chan.recv(MAX_CHILD_PACKET, MAX_REPORT_FDS).await {
                    Ok(Some(packet)) => {
                        if decoder.feed(&packet.data, packet.fds.len()) == Next::Stop {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        decoder.refuse(format!("an unreadable packet: {err}"));
                        break;
                    }
                }
            }
        };
        let answered = tokio::time::timeout(REAP_TIMEOUT, read).await.is_ok();
        let reports = decoder.finish();
        if !answered || !reports.done || reports.misuse.is_some() {
            self.end();
            let why = reports.misuse.unwrap_or_else(|| "no answer in time".into());
            return Err(format!(
                "the session's child failed a file request ({why}); the session ended"
            ));
        }
        Ok(reports)
    }

    /// Ends the session's child (it is killed; its identity returns once it is gone).
    pub fn end(&mut self) {
        self.ended = true;
        self.guard.kill();
    }
}

/// One output pipe of a session, read by a task of its own into the current cell's [`Keep`].
#[derive(Debug)]
struct Pump {
    commands: mpsc::UnboundedSender<PumpCommand>,
}

#[derive(Debug)]
enum PumpCommand {
    /// A cell begins: read into this, and notify on crossing the cap.
    Start(Keep, Arc<Notify>),
    /// The cell is over: read what the pipe holds now, then hand the output back.
    Finish(oneshot::Sender<Keep>),
}

impl Pump {
    fn start(read_end: OwnedFd) -> Pump {
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(read_end, rx));
        Pump { commands }
    }

    fn begin(&self, keep: Keep, overflow: Arc<Notify>) {
        let _ = self.commands.send(PumpCommand::Start(keep, overflow));
    }

    /// The cell's output; what the pipe holds is read first (bounded wait: a caller that
    /// stopped reading its stream cannot hold the session).
    async fn finish(&self, stream: OutputStream) -> Keep {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(PumpCommand::Finish(tx));
        match tokio::time::timeout(REAP_TIMEOUT, rx).await {
            Ok(Ok(keep)) => keep,
            _ => {
                let mut keep = Keep::new(stream, 0, None);
                keep.truncated = true;
                keep
            }
        }
    }
}

async fn pump(read_end: OwnedFd, mut commands: mpsc::UnboundedReceiver<PumpCommand>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    while let Some(command) = commands.recv().await {
        let (mut keep, overflow) = match command {
            PumpCommand::Start(keep, overflow) => (keep, overflow),
            PumpCommand::Finish(reply) => {
                let _ = reply.send(Keep::new(OutputStream::Stdout, 0, None));
                continue;
            }
        };
        let reply = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(PumpCommand::Finish(reply)) => break Some(reply),
                    Some(PumpCommand::Start(..)) => continue,
                    None => break None,
                },
                read = tokio::io::AsyncReadExt::read(&mut pipe, &mut buf), if !eof => match read {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => {
                        if keep.take(&buf[..n]).await {
                            overflow.notify_one();
                        }
                    }
                },
            }
        };
        let Some(reply) = reply else { return };
        // What the child wrote before it said the cell was done is in the pipe now; a thread
        // still writing gets a bounded number of reads, the rest goes to the next cell.
        // A read(2) of its own, not tokio's `try_read`: that one answers from the readiness
        // tokio has cached, which may not have seen the bytes that just arrived.
        for _ in 0..DRAIN_READS {
            if eof {
                break;
            }
            match nix::unistd::read(&pipe, &mut buf) {
                Ok(0) => eof = true,
                Ok(n) => {
                    if keep.take(&buf[..n]).await {
                        overflow.notify_one();
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => eof = true,
            }
        }
        let _ = reply.send(keep);
    }
}
