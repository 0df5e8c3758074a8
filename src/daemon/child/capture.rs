//! The child's stdout and stderr, read under a cap; and what a dead child left in a pipe.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use super::REAP_TIMEOUT;

/// Reads one output stream, keeping at most `cap` bytes. More than that sets the truncation
/// flag and signals `overflowed`; the rest is read and dropped so the writer never blocks.
pub(super) struct Capture {
    task: tokio::task::JoinHandle<(Vec<u8>, bool)>,
    overflow: Arc<Notify>,
}

impl Capture {
    pub(super) fn start(read_end: OwnedFd, cap: u64) -> Capture {
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

    pub(super) async fn overflowed(&self) {
        self.overflow.notified().await;
    }

    /// The captured bytes and the truncation flag, once the writer has closed (bounded wait).
    pub(super) async fn finish(self) -> (Vec<u8>, bool) {
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
