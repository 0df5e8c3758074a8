//! `sandfork bench`: a bounded load generator for a running daemon, and the baseline it is
//! compared with (a fresh interpreter per request, as peers without a zygote do it).
//!
//! One invocation, top to bottom ([`run`]):
//! 1. With a baseline: [`resolve_python`] finds the real interpreter behind `python3` (on these
//!    machines a pyenv shim, ~200 ms per start, would flatter us), then [`baseline_command`] —
//!    `python -I -B -X utf8 -c CODE`, the zygote's own flags — runs min(N, 100) times, one after
//!    the other, each timed from spawn to exit. Its first successful stdout becomes the expected
//!    output of every daemon run.
//! 2. C connections are opened and greeted before the clock starts.
//! 3. One worker per connection keeps exactly one run in flight, taking request numbers from a
//!    shared counter until N are taken, so the daemon sees C concurrent runs, like a pool of C
//!    synchronous callers (an app server's workers). Each run is timed from send to its result:
//!    the client-observed round trip. (One connection per in-flight run rather than multiplexing:
//!    the daemon serves both the same way, and this keeps the client's own head-of-line effects
//!    out of the numbers.) With a rate R (open loop), run i is due at i/R seconds after the
//!    start. A worker that picks it up early sleeps until then and times it from the send; one
//!    that picks it up late (its connection was busy) times it from when it was due, so the
//!    wait for a free connection counts (no coordinated omission).
//! 4. The collector ([`Tally`]) checks each result as it arrives — status `ok` and the expected
//!    stdout, which without a baseline is the first `ok` result's — records its round trip in a
//!    histogram (µs, 3 significant digits) and sums the server's per-phase timings.
//!
//! With `--url` (and an API key) the runs go through the HTTP shim instead ([`http`]): one
//! kept-alive HTTP/1.1 connection per worker, or a new one per run. Given `--socket` as well, the
//! same load goes over the socket first, in the same invocation, and the summary adds the
//! socket's p50, the difference (the shim's overhead) and the shim's CPU per run.
//!
//! With `--floor` the same number of floor runs (`Mode::Floor`: the zygote forks a child that
//! exits at once) follow over the socket at the same concurrency, and the summary adds their
//! p50 and the CPU per run of both phases ([`floor`]).
//!
//! Everything is bounded: N requests, and a hard deadline on the whole invocation after which
//! every request without a correct result counts as an error. The last line of the output is a
//! [`Summary`] (see its `Display`), which scripts and tests parse.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use sandfork_protocol::{RunResult, RunSpec, Status};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use sandfork_protocol::client::{Client, ClientError};

mod baseline;
pub mod floor;
pub mod http;
mod report;
mod session;

use baseline::*;
pub use baseline::{baseline_command, resolve_python};
use report::*;
pub use report::{
    latency_histogram, percentile_ms, Baseline, PhaseMeans, Report, Summary, UsageMeans,
};

/// What every request runs unless `--code` says otherwise.
pub const DEFAULT_CODE: &str = "print(1)";
/// Requests per invocation unless `--requests` says otherwise.
pub const DEFAULT_REQUESTS: u64 = 200;
/// The hard bound on one invocation (baseline, connections and load together).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// The baseline runs min(N, this) interpreters: enough for a stable median, and bounded because
/// each costs a whole interpreter start.
pub const MAX_BASELINE_RUNS: u64 = 100;
/// The flags the zygote runs the interpreter with (see `pool.rs`); the baseline uses the same, so
/// it pays for the same start-up and no more.
pub const BASELINE_FLAGS: [&str; 4] = ["-I", "-B", "-X", "utf8"];
/// The interpreter the baseline resolves when none is given, as the default profile names it.
pub const DEFAULT_PYTHON: &str = "python3";
/// Largest round trip the histograms hold, in µs (an hour); longer ones are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Histogram precision: 3 significant digits (1 µs exact below 2 ms, 0.1 % above).
const SIGNIFICANT_DIGITS: u8 = 3;
/// How many failures are described on stderr; the rest are only counted.
const MAX_ERROR_EXAMPLES: usize = 5;
/// How much of an unexpected stdout an error description quotes.
const QUOTE_BYTES: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("requests and concurrency must be at least 1")]
    Invalid,
    #[error("{0}")]
    Connect(#[source] ClientError),
    #[error("the deadline of {0:?} passed before the load could start")]
    Deadline(Duration),
    #[error("cannot start {python}: {source}")]
    PythonSpawn {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error("{python} did not report sys.executable: {detail}")]
    PythonProbe { python: PathBuf, detail: String },
    #[error("session mode: {0}")]
    Session(String),
    #[error("HTTP: {0}")]
    Http(String),
}

/// One invocation's parameters (the CLI's flags).
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Profile every run asks for; `None` is the daemon's default profile.
    pub profile: Option<String>,
    /// The Python source every request runs.
    pub code: String,
    /// How many runs to send in total.
    pub requests: u64,
    /// Runs in flight at once (one connection each).
    pub concurrency: u64,
    /// Also time a fresh interpreter per request, and take the expected stdout from it.
    pub baseline: bool,
    /// Open loop: runs started per second in all. `None`: closed loop.
    pub rate: Option<f64>,
    /// The baseline's interpreter (resolved to its `sys.executable`); default `python3`.
    pub python: Option<PathBuf>,
    /// Hard bound on the whole invocation.
    pub deadline: Duration,
    /// Session mode: the requests are cells, one live session per connection; the same load
    /// through the fork-per-run path, session opening and the first streamed byte are measured
    /// in the same invocation.
    pub session: bool,
    /// HTTP mode: the runs go through the shim at this URL.
    pub http: Option<http::HttpTarget>,
    /// HTTP mode with `--socket` given too: the same load over the socket first, for the
    /// shim's overhead.
    pub socket_too: bool,
    /// Floor runs after the load, and CPU per run of both.
    pub floor: bool,
}

impl BenchConfig {
    /// The defaults of `sandfork bench` against `socket`.
    pub fn new(socket: PathBuf) -> Self {
        BenchConfig {
            socket,
            profile: None,
            code: DEFAULT_CODE.to_string(),
            requests: DEFAULT_REQUESTS,
            concurrency: 1,
            baseline: false,
            rate: None,
            python: None,
            deadline: DEFAULT_DEADLINE,
            session: false,
            http: None,
            socket_too: false,
            floor: false,
        }
    }
}

/// Runs one bounded benchmark against the daemon at `config.socket`.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    if config.requests == 0 || config.concurrency == 0 {
        return Err(BenchError::Invalid);
    }
    let deadline = Instant::now() + config.deadline;
    let baseline = if config.baseline {
        let python = config
            .python
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PYTHON));
        let python = resolve_python(&python)?;
        let runs = config.requests.min(MAX_BASELINE_RUNS);
        Some(run_baseline(&python, &config.code, runs, deadline).await)
    } else {
        None
    };

    let expected = baseline.as_ref().and_then(|b| b.stdout.clone());
    if config.floor && config.session {
        return Err(BenchError::Session(
            "--floor compares runs, not cells".into(),
        ));
    }
    // The machine's background, measured while the daemon idles: subtracted from every phase.
    let background = if config.floor {
        floor::background(&config.socket).await
    } else {
        None
    };
    let mark = || async {
        if config.floor {
            floor::settle(&config.socket).await;
            floor::Snapshot::take()
        } else {
            None
        }
    };
    if let Some(target) = &config.http {
        if config.session {
            return Err(BenchError::Http(
                "--session goes over the socket only".into(),
            ));
        }
        let socket = if config.socket_too {
            Some(load(config, deadline, expected.clone(), Workload::Runs).await?)
        } else {
            None
        };
        let cpu_before = http::shim_cpu_seconds(target).await;
        let before = mark().await;
        let mut report = load(config, deadline, expected, Workload::Http(target)).await?;
        let after = mark().await;
        let cpu_after = http::shim_cpu_seconds(target).await;
        report.baseline = baseline;
        report.floor = floor_phase(config, deadline, &report, (before, after), background).await?;
        report.http = Some(report::HttpBench {
            socket: socket.as_ref().map(Report::summary),
            socket_errors: socket.as_ref().map_or(0, Report::errors),
            shim_cpu_per_run_ms: match (cpu_before, cpu_after) {
                (Some(before), Some(after)) if report.results > 0 => {
                    Some((after - before) * 1000.0 / report.results as f64)
                }
                _ => None,
            },
            new_connection: target.new_connection,
        });
        return Ok(report);
    }
    if !config.session {
        let before = mark().await;
        let mut report = load(config, deadline, expected, Workload::Runs).await?;
        let after = mark().await;
        report.baseline = baseline;
        report.floor = floor_phase(config, deadline, &report, (before, after), background).await?;
        return Ok(report);
    }
    // Session mode: the fork-per-run path first, then the session probes, then the cells.
    let runs = load(config, deadline, expected.clone(), Workload::Runs).await?;
    let probes = session::probes(config, deadline).await?;
    let mut report = load(config, deadline, expected, Workload::Cells).await?;
    report.baseline = baseline;
    report.session = Some(session::SessionBench {
        runs: runs.summary(),
        runs_errors: runs.errors(),
        runs_cold: runs.cold_latency.clone(),
        open: probes.open,
        first_byte: probes.first_byte,
    });
    Ok(report)
}

/// With `--floor`: the floor runs, and both phases' CPU per run (the machine's busy time between
/// the settled daemon's snapshots around each, less the bench's own and the background). The
/// background is measured again after the floor, and the mean of the two is subtracted; a
/// figure that comes out negative (the machine's other work changed by more than the runs
/// used) is not reported.
async fn floor_phase(
    config: &BenchConfig,
    deadline: Instant,
    load_report: &Report,
    load_marks: (Option<floor::Snapshot>, Option<floor::Snapshot>),
    background_before: Option<f64>,
) -> Result<Option<report::FloorBench>, BenchError> {
    if !config.floor {
        return Ok(None);
    }
    let before = floor::Snapshot::take();
    let floor = load(config, deadline, Some(Vec::new()), Workload::Floor).await?;
    floor::settle(&config.socket).await;
    let after = floor::Snapshot::take();
    let background_after = floor::background(&config.socket).await;
    let background = background_before.zip(background_after);
    let per_run = |marks: (Option<floor::Snapshot>, Option<floor::Snapshot>), results: u64| match (
        marks, background,
    ) {
        ((Some(before), Some(after)), Some((b0, b1))) if results > 0 => {
            Some(before.cpu_until(&after, (b0 + b1) / 2.0) / results as f64).filter(|ms| *ms >= 0.0)
        }
        _ => None,
    };
    Ok(Some(report::FloorBench {
        summary: floor.summary(),
        errors: floor.errors(),
        cpu_per_run_ms: per_run(load_marks, load_report.results),
        floor_cpu_ms: per_run((before, after), floor.results),
        background_ms_per_s: background,
    }))
}

/// What each connection sends.
#[derive(Debug, Clone, Copy)]
enum Workload<'a> {
    /// Runs, forked per request.
    Runs,
    /// Cells, in one session the connection opens before the clock starts.
    Cells,
    /// Runs through the HTTP shim.
    Http(&'a http::HttpTarget),
    /// Floor runs: nothing runs, the child exits at once (`Mode::Floor`).
    Floor,
}

/// A worker's way to the daemon.
enum Conn {
    Socket(Client),
    Http(http::HttpConn),
}

/// The load itself: C connections, N requests, the results checked against `expected`.
async fn load(
    config: &BenchConfig,
    deadline: Instant,
    expected: Option<Vec<u8>>,
    workload: Workload<'_>,
) -> Result<Report, BenchError> {
    let connections = config.concurrency.min(config.requests);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let client = match workload {
            Workload::Http(target) => Conn::Http(
                tokio::time::timeout_at(deadline, http::HttpConn::connect(target))
                    .await
                    .map_err(|_| BenchError::Deadline(config.deadline))?
                    .map_err(BenchError::Http)?,
            ),
            Workload::Runs | Workload::Cells | Workload::Floor => Conn::Socket(
                tokio::time::timeout_at(deadline, Client::connect(&config.socket))
                    .await
                    .map_err(|_| BenchError::Deadline(config.deadline))?
                    .map_err(BenchError::Connect)?,
            ),
        };
        clients.push(client);
    }
    let mut targets = Vec::new();
    for client in &mut clients {
        targets.push(match (workload, &mut *client) {
            (Workload::Cells, Conn::Socket(client)) => {
                Target::Cell(session::open(client, config, deadline).await?)
            }
            _ => Target::Run,
        });
    }

    let spec = match workload {
        Workload::Floor => RunSpec {
            profile: config.profile.clone(),
            mode: sandfork_protocol::Mode::Floor,
            ..Default::default()
        },
        _ => RunSpec {
            profile: config.profile.clone(),
            code: config.code.clone().into_bytes(),
            ..Default::default()
        },
    };
    let mut tally = Tally::new(expected);
    let taken = Arc::new(AtomicU64::new(0));
    let (samples, mut incoming) = mpsc::unbounded_channel();
    let mut workers = JoinSet::new();
    let started = Instant::now();
    let schedule = config.rate.map(|rate| Schedule {
        start: started,
        rate,
    });
    let targets_closed = targets.clone();
    for (client, target) in clients.into_iter().zip(targets) {
        workers.spawn(drive(
            client,
            spec.clone(),
            target,
            taken.clone(),
            config.requests,
            schedule,
            samples.clone(),
        ));
    }
    drop(samples);
    let mut deadline_hit = false;
    loop {
        match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(sample)) => tally.add(sample),
            Ok(None) => break,
            Err(_) => {
                deadline_hit = true;
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    workers.abort_all();
    // Sessions outlive their connections: close the load's own.
    let sessions: Vec<String> = targets_closed
        .into_iter()
        .filter_map(|t| match t {
            Target::Cell(session) => Some(session),
            Target::Run => None,
        })
        .collect();
    session::close_all(config, sessions).await;

    Ok(tally.into_report(config.requests, connections, elapsed, deadline_hit))
}

/// One run's round trip and what came back (or why nothing did).
#[derive(Debug)]
struct Sample {
    latency: Duration,
    outcome: Result<RunResult, String>,
}

/// What one connection sends: runs, or cells of its session.
#[derive(Debug, Clone)]
enum Target {
    Run,
    Cell(String),
}

/// Open-loop arrivals: run `i` is due `i / rate` seconds after `start`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    fn due(&self, run: u64) -> Instant {
        self.start + Duration::from_secs_f64(run as f64 / self.rate)
    }
}

/// One connection's loop: one run in flight until `requests` runs have been taken by all workers
/// together; with a schedule, each run waits until it is due and is timed from then. Stops early
/// when the connection breaks (the run it was on counts as failed).
async fn drive(
    mut client: Conn,
    spec: RunSpec,
    target: Target,
    taken: Arc<AtomicU64>,
    requests: u64,
    schedule: Option<Schedule>,
    samples: mpsc::UnboundedSender<Sample>,
) {
    loop {
        let run = taken.fetch_add(1, Ordering::Relaxed);
        if run >= requests {
            return;
        }
        let spec = spec.clone();
        let sent = match schedule {
            // Late already (this connection was busy): the run has been waiting since it was
            // due, and that wait counts. Otherwise sleep until it is due and time it from the
            // moment it is sent, so the timer's own slack (up to a millisecond in tokio) does
            // not count against the daemon.
            Some(schedule) => {
                let due = schedule.due(run);
                if Instant::now() >= due {
                    due
                } else {
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                }
            }
            None => Instant::now(),
        };
        let (outcome, broken) = match (&mut client, &target) {
            (Conn::Socket(client), Target::Run) => socket_outcome(client.run(spec).await),
            (Conn::Socket(client), Target::Cell(session)) => {
                socket_outcome(session::cell(client, session, spec.code).await)
            }
            // An HTTP error leaves the worker able to try again (with a new connection).
            (Conn::Http(client), _) => {
                let code = String::from_utf8_lossy(&spec.code);
                (client.run(spec.profile.as_deref(), &code).await, false)
            }
        };
        let latency = sent.elapsed();
        if samples.send(Sample { latency, outcome }).is_err() || broken {
            return;
        }
    }
}

/// A socket client's answer as a sample's outcome, and whether the connection is unusable now:
/// a protocol error answering the run leaves it usable; anything else not.
fn socket_outcome(outcome: Result<RunResult, ClientError>) -> (Result<RunResult, String>, bool) {
    let broken = matches!(&outcome, Err(err) if !matches!(err, ClientError::Server(_)));
    (outcome.map_err(|err| err.to_string()), broken)
}

/// Checks results as they arrive and accumulates the numbers.
#[derive(Debug)]
struct Tally {
    /// The stdout every run must print: the baseline's, else the first `ok` result's.
    expected: Option<Vec<u8>>,
    latency: Histogram<u64>,
    results: u64,
    good: u64,
    phase_sums: PhaseMeans,
    usage_sums: UsageMeans,
    warm: u64,
    warm_latency: Histogram<u64>,
    cold_latency: Histogram<u64>,
    error_examples: Vec<String>,
}

impl Tally {
    fn new(expected: Option<Vec<u8>>) -> Self {
        Tally {
            expected,
            latency: latency_histogram(),
            results: 0,
            good: 0,
            phase_sums: PhaseMeans::default(),
            usage_sums: UsageMeans::default(),
            warm: 0,
            warm_latency: latency_histogram(),
            cold_latency: latency_histogram(),
            error_examples: Vec::new(),
        }
    }

    fn add(&mut self, sample: Sample) {
        let result = match sample.outcome {
            Ok(result) => result,
            Err(err) => {
                self.note_error(format!("request failed: {err}"));
                return;
            }
        };
        record(&mut self.latency, sample.latency);
        self.results += 1;
        let t = &result.timings;
        self.phase_sums.queue_ms += t.queue_ms;
        self.phase_sums.spawn_ms += t.spawn_ms;
        self.phase_sums.run_ms += t.run_ms;
        self.phase_sums.total_ms += t.total_ms;
        self.usage_sums.wall_ms += result.usage.wall_ms;
        self.usage_sums.cpu_ms += result.usage.cpu_ms;
        self.usage_sums.max_rss_kb += result.usage.max_rss_kb as f64;
        self.warm += u64::from(result.warm);
        let by_kind = if result.warm {
            &mut self.warm_latency
        } else {
            &mut self.cold_latency
        };
        record(by_kind, sample.latency);
        if result.status != Status::Ok {
            self.note_error(format!(
                "status {}: {}{}",
                result.status,
                result.message.as_deref().unwrap_or(""),
                if result.stderr.is_empty() {
                    String::new()
                } else {
                    format!(" stderr {}", quote(&result.stderr))
                },
            ));
            return;
        }
        match &self.expected {
            None => self.expected = Some(result.stdout),
            Some(expected) if *expected == result.stdout => {}
            Some(expected) => {
                let message = format!(
                    "stdout differs: expected {}, got {}",
                    quote(expected),
                    quote(&result.stdout)
                );
                self.note_error(message);
                return;
            }
        }
        self.good += 1;
    }

    fn note_error(&mut self, message: String) {
        if self.error_examples.len() < MAX_ERROR_EXAMPLES {
            self.error_examples.push(message);
        }
    }

    fn into_report(
        self,
        requests: u64,
        connections: u64,
        elapsed: Duration,
        deadline_hit: bool,
    ) -> Report {
        let n = self.results.max(1) as f64;
        let (s, u) = (self.phase_sums, self.usage_sums);
        let mut error_examples = self.error_examples;
        if deadline_hit && error_examples.len() < MAX_ERROR_EXAMPLES {
            error_examples.push(format!(
                "deadline: {} of {requests} requests had no result",
                requests - self.results
            ));
        }
        Report {
            requests,
            connections,
            elapsed,
            latency: self.latency,
            results: self.results,
            good: self.good,
            phases: PhaseMeans {
                queue_ms: s.queue_ms / n,
                spawn_ms: s.spawn_ms / n,
                run_ms: s.run_ms / n,
                total_ms: s.total_ms / n,
            },
            usage: UsageMeans {
                wall_ms: u.wall_ms / n,
                cpu_ms: u.cpu_ms / n,
                max_rss_kb: u.max_rss_kb / n,
            },
            warm: self.warm,
            warm_latency: self.warm_latency,
            cold_latency: self.cold_latency,
            error_examples,
            deadline_hit,
            baseline: None,
            session: None,
            http: None,
            floor: None,
        }
    }
}

/// Bytes as a short, escaped, quoted string for messages.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTE_BYTES)]);
    let ellipsis = if bytes.len() > QUOTE_BYTES { "…" } else { "" };
    format!("{text:?}{ellipsis}")
}

#[cfg(test)]
mod tests;
