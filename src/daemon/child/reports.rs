//! The child's reports, read in a task of their own while the run goes on.

use sandfork_ipc::child::MAX_CHILD_PACKET;
use sandfork_ipc::reports::{Next, ReportCaps, ReportDecoder, Reports};

use super::REAP_TIMEOUT;
use crate::daemon::sys::SeqChannel;

/// Descriptors accepted with a report packet, to be counted and closed at once (a report never
/// carries any; more than this truncates the packet, and the kernel closes the rest).
const MAX_REPORT_FDS: usize = 8;

/// Reads a child's reports in a task of their own while the run goes on: packets go to the
/// [`ReportDecoder`] (which bounds them and believes nothing), descriptors are closed the moment
/// they arrive, and the channel is dropped — closed — as soon as the decoder stops.
pub(super) struct ReportReader {
    task: tokio::task::JoinHandle<Reports>,
    /// Turns true when the child says `done` (a claim: it only prompts a look at the kernel).
    done: tokio::sync::watch::Receiver<bool>,
}

impl ReportReader {
    pub(super) fn start(chan: SeqChannel, caps: ReportCaps, function_mode: bool) -> ReportReader {
        let (said_done, done) = tokio::sync::watch::channel(false);
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
            if decoder.is_done() {
                let _ = said_done.send(true);
            }
            decoder.finish()
        });
        ReportReader { task, done }
    }

    /// Resolves once the child has said `done`; never, if it does not.
    pub(super) async fn done(&self) {
        let mut done = self.done.clone();
        if done.wait_for(|done| *done).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The reports, once the child has closed its channel or the decoder stopped (bounded
    /// wait: a channel kept open by a surviving descriptor must not hold the run).
    pub(super) async fn finish(self) -> Reports {
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
