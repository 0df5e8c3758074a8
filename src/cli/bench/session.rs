//! `sandfork bench --session`: cells in live sessions, beside the fork-per-run path.
//!
//! Besides the load of cells (one session per connection, opened before the clock starts), two
//! probes measure what a REPL backend waits for: opening a session ([`OPEN_SAMPLES`] opens and
//! closes, one after the other), and the first streamed byte — a cell prints the monotonic clock
//! and then sleeps, and the client takes the difference to its own clock when the first output
//! frame arrives ([`FIRST_BYTE_SAMPLES`] times; the sleep is interrupted at once). The host's
//! monotonic clock is the children's too: they have no time namespace.

use hdrhistogram::Histogram;
use sandfork_protocol::{
    Caller, Cell, ErrorKind, Request, Response, RunResult, SessionOp, SessionOpen, SessionReply,
};

use super::*;

/// Sessions opened and closed, one after the other, for the open latency.
pub const OPEN_SAMPLES: u64 = 20;
/// Cells whose first streamed byte is timed.
pub const FIRST_BYTE_SAMPLES: u64 = 10;
/// The first-byte cell: the child's clock, then a second of sleep (as a REPL's long cell).
const FIRST_BYTE_CODE: &str =
    "import time\nprint(time.clock_gettime_ns(time.CLOCK_MONOTONIC), flush=True)\ntime.sleep(1)\n";

/// Session mode's extra numbers.
#[derive(Debug, Clone)]
pub struct SessionBench {
    /// The same load through the fork-per-run path, in the same invocation.
    pub runs: Summary,
    pub runs_errors: u64,
    /// Of those runs, the ones forked for their request (no warm child): what opening a session
    /// compares with.
    pub runs_cold: Histogram<u64>,
    /// Opening a session (open request to its answer).
    pub open: Histogram<u64>,
    /// From the child's write to the client's receipt of the first streamed byte.
    pub first_byte: Histogram<u64>,
}

impl SessionBench {
    pub(super) fn describe(&self, cells: &Report) -> Vec<String> {
        let r = &self.runs;
        let cells = cells.summary();
        let pct = |h: &Histogram<u64>| {
            format!(
                "p50 {:.3} p99 {:.3} (n={})",
                percentile_ms(h, 0.5),
                percentile_ms(h, 0.99),
                h.len()
            )
        };
        vec![
            format!(
                "fork per run, same load: round trip ms p50 {:.3} p99 {:.3}, {:.1} runs/s; cells: \
                 p50 {:.3} p99 {:.3}, {:.1} cells/s (p50 ratio {:.1}×)",
                r.p50_ms,
                r.p99_ms,
                r.rps,
                cells.p50_ms,
                cells.p99_ms,
                cells.rps,
                if cells.p50_ms > 0.0 {
                    r.p50_ms / cells.p50_ms
                } else {
                    0.0
                },
            ),
            if self.runs_cold.is_empty() {
                format!(
                    "session open ms: {} (every run of the comparison had a warm child; a \
                     profile without warm children gives the cold round trip)",
                    pct(&self.open)
                )
            } else {
                format!(
                    "session open ms: {}; runs forked for their request, round trip ms: {}",
                    pct(&self.open),
                    pct(&self.runs_cold)
                )
            },
            format!(
                "first streamed byte, ms after the child wrote it: {}",
                pct(&self.first_byte)
            ),
        ]
    }
}

/// The probes' histograms.
pub(super) struct Probes {
    pub open: Histogram<u64>,
    pub first_byte: Histogram<u64>,
}

/// Opens a session for one connection of the load.
pub(super) async fn open(
    client: &mut Client,
    config: &BenchConfig,
    deadline: Instant,
) -> Result<String, BenchError> {
    let op = SessionOp::Open(SessionOpen {
        profile: config.profile.clone(),
        ..SessionOpen::default()
    });
    let reply = tokio::time::timeout_at(deadline, client.session(Caller::default(), op))
        .await
        .map_err(|_| BenchError::Deadline(config.deadline))?;
    match reply {
        Ok(SessionReply::Opened(info)) => Ok(info.session_id),
        Ok(SessionReply::Refused { message, .. }) => Err(BenchError::Session(message)),
        Ok(other) => Err(BenchError::Session(format!("unexpected answer {other:?}"))),
        Err(ClientError::Server(frame)) if frame.kind == ErrorKind::NoSessionCapacity => {
            Err(BenchError::Session(format!(
                "{} (use a concurrency within the profile's max_sessions)",
                frame.message
            )))
        }
        Err(err) => Err(BenchError::Connect(err)),
    }
}

/// One cell of the load: its result, as a run's.
pub(super) async fn cell(
    client: &mut Client,
    session: &str,
    code: Vec<u8>,
) -> Result<RunResult, ClientError> {
    let cell = Cell {
        code,
        ..Cell::default()
    };
    client
        .execute_cell(Caller::default(), session, cell, |_, _| {})
        .await
        .map(|(result, _)| result)
}

/// The open and first-byte probes, on one connection.
pub(super) async fn probes(config: &BenchConfig, deadline: Instant) -> Result<Probes, BenchError> {
    let work = async {
        let mut client = Client::connect(&config.socket)
            .await
            .map_err(BenchError::Connect)?;
        let mut open_latency = latency_histogram();
        for _ in 0..OPEN_SAMPLES {
            let started = Instant::now();
            let session = open(&mut client, config, deadline).await?;
            record(&mut open_latency, started.elapsed());
            close(&mut client, session).await;
        }
        let session = open(&mut client, config, deadline).await?;
        let mut first_byte = latency_histogram();
        for _ in 0..FIRST_BYTE_SAMPLES {
            if let Some(latency) = first_streamed_byte(&mut client, &session).await? {
                record(&mut first_byte, latency);
            }
        }
        close(&mut client, session).await;
        Ok(Probes {
            open: open_latency,
            first_byte,
        })
    };
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| BenchError::Deadline(config.deadline))?
}

/// Closes the load's sessions, on a connection of its own (bounded: a daemon that does not
/// answer leaves them to their idle timeout).
pub(super) async fn close_all(config: &BenchConfig, sessions: Vec<String>) {
    if sessions.is_empty() {
        return;
    }
    let work = async {
        if let Ok(mut client) = Client::connect(&config.socket).await {
            for session in sessions {
                close(&mut client, session).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
}

async fn close(client: &mut Client, session: String) {
    let _ = client
        .session(Caller::default(), SessionOp::Close { session })
        .await;
}

/// Runs the first-byte cell, streamed; interrupts its sleep once the first byte is in.
async fn first_streamed_byte(
    client: &mut Client,
    session: &str,
) -> Result<Option<Duration>, BenchError> {
    let id = client.next_id();
    let cell = Cell {
        code: FIRST_BYTE_CODE.as_bytes().to_vec(),
        stream: true,
        ..Cell::default()
    };
    let request = Request::Session {
        id,
        caller: Caller::default(),
        op: SessionOp::Execute {
            session: session.to_string(),
            cell,
        },
    };
    client.send(&request).await.map_err(BenchError::Connect)?;
    let mut latency = None;
    loop {
        match client.recv().await.map_err(BenchError::Connect)? {
            Response::Output { id: got, data, .. } if got == id && latency.is_none() => {
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                    .map_err(|e| BenchError::Session(format!("clock_gettime: {e}")))?;
                let now_ns = now.tv_sec() as i128 * 1_000_000_000 + now.tv_nsec() as i128;
                let written = String::from_utf8_lossy(&data);
                let written: i128 = written.trim().parse().map_err(|_| {
                    BenchError::Session(format!("the probe cell printed {written:?}"))
                })?;
                let ns = u64::try_from(now_ns - written).unwrap_or(0);
                latency = Some(Duration::from_nanos(ns));
                let interrupt = Request::Session {
                    id: client.next_id(),
                    caller: Caller::default(),
                    op: SessionOp::Interrupt {
                        session: session.to_string(),
                    },
                };
                client.send(&interrupt).await.map_err(BenchError::Connect)?;
            }
            Response::Done { id: got, .. } if got == id => return Ok(latency),
            Response::Error {
                id: Some(got),
                error,
            } if got == id => return Err(BenchError::Session(error.message)),
            _ => continue,
        }
    }
}
