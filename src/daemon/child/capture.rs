//! The child's stdout and stderr, read under a cap — kept for the result, or streamed to the
//! caller as it arrives; and what a dead child left in a pipe.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use sandfork_protocol::OutputStream;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Notify};

use super::REAP_TIMEOUT;

/// Chunks of streamed output the daemon holds per stream while the caller is slow to take them;
/// with [`STREAM_CHUNK`] this bounds the daemon's memory per stream. Beyond it the capture stops
/// reading, the pipe fills, and the child blocks in `write` — its own stall, not the daemon's.
pub const STREAM_QUEUE: usize = 8;
/// Largest piece of streamed output (one `Output` frame).
pub const STREAM_CHUNK: usize = 16 * 1024;

/// A piece of a streamed run's output, on its way to the caller.
#[derive(Debug)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: Vec<u8>,
}

/// Where streamed output goes: a bounded queue the caller's connection drains.
pub type OutputSink = mpsc::Sender<OutputChunk>;

/// A bounded queue for one streamed run (both streams share it, so their order is kept).
pub fn output_queue() -> (OutputSink, mpsc::Receiver<OutputChunk>) {
    mpsc::channel(STREAM_QUEUE)
}

/// One stream's output under its cap: kept, or streamed to a sink; counts what went where.
#[derive(Debug)]
pub(super) struct Keep {
    stream: OutputStream,
    cap: usize,
    sink: Option<OutputSink>,
    /// Bytes kept for the result (nothing when streaming).
    pub(super) kept: Vec<u8>,
    /// Bytes taken in all, up to the cap (kept or streamed).
    pub(super) taken: usize,
    /// Bytes handed to the sink.
    pub(super) streamed: u64,
    pub(super) truncated: bool,
    /// When streaming: the last [`TAIL`] bytes, for classifying the ending (a final
    /// `MemoryError` without a cgroup).
    tail: Vec<u8>,
}

/// Bytes of streamed output remembered for [`Keep::last_words`].
const TAIL: usize = 4096;

impl Keep {
    pub(super) fn new(stream: OutputStream, cap: u64, sink: Option<OutputSink>) -> Keep {
        Keep {
            stream,
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            sink,
            kept: Vec::new(),
            taken: 0,
            streamed: 0,
            truncated: false,
            tail: Vec::new(),
        }
    }

    /// The end of what the program wrote (kept or streamed), for classifying its ending.
    pub(super) fn last_words(&self) -> &[u8] {
        if self.sink.is_some() {
            &self.tail
        } else {
            &self.kept
        }
    }

    /// Takes `data` (what fits under the cap); true if this crossed the cap just now. Waits
    /// while the sink is full: the caller's pace is the child's.
    pub(super) async fn take(&mut self, data: &[u8]) -> bool {
        let room = self.cap.saturating_sub(self.taken);
        let fits = &data[..data.len().min(room)];
        self.taken += fits.len();
        match &self.sink {
            Some(sink) => {
                self.tail.extend_from_slice(fits);
                let excess = self.tail.len().saturating_sub(TAIL);
                self.tail.drain(..excess);
                for piece in fits.chunks(STREAM_CHUNK) {
                    let chunk = OutputChunk {
                        stream: self.stream,
                        data: piece.to_vec(),
                    };
                    if sink.send(chunk).await.is_err() {
                        break; // the caller is gone; its run is being stopped
                    }
                    self.streamed += piece.len() as u64;
                }
            }
            None => self.kept.extend_from_slice(fits),
        }
        let crossed = data.len() > room && !self.truncated;
        self.truncated |= data.len() > room;
        crossed
    }
}

/// Reads one output stream to its end, keeping or streaming at most `cap` bytes. More than
/// that sets the truncation flag and signals `overflowed`; the rest is read and dropped so the
/// writer never blocks on a full pipe.
pub(super) struct Capture {
    task: tokio::task::JoinHandle<Keep>,
    overflow: Arc<Notify>,
}

impl Capture {
    pub(super) fn start(read_end: OwnedFd, keep: Keep) -> Capture {
        let overflow = Arc::new(Notify::new());
        let signal = Arc::clone(&overflow);
        let task = tokio::spawn(async move {
            let mut keep = keep;
            let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) else {
                return keep;
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if keep.take(&buf[..n]).await {
                            signal.notify_one();
                        }
                    }
                }
            }
            keep
        });
        Capture { task, overflow }
    }

    pub(super) async fn overflowed(&self) {
        self.overflow.notified().await;
    }

    /// What was taken, once the writer has closed (bounded wait).
    pub(super) async fn finish(self, stream: OutputStream) -> Keep {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(REAP_TIMEOUT, self.task).await {
            Ok(Ok(keep)) => keep,
            _ => {
                abort.abort();
                let mut keep = Keep::new(stream, 0, None);
                keep.truncated = true;
                keep
            }
        }
    }
}

/// Reads what a dead child left in a pipe (its lockdown error), at most 64 KiB.
pub(super) async fn read_to_end_bounded(fd: OwnedFd) -> Vec<u8> {
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
