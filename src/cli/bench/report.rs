//! What a bench run found: latency histograms, per-phase and usage means, the baseline, and the
//! report with its exact last line.

use super::*;

/// The line scripts parse: `p50_ms=… p90_ms=… p99_ms=… rps=… errors=…`, then, with a baseline,
/// ` baseline_p50_ms=… ratio=…`. Floats have 3 decimals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Results per second of the load phase.
    pub rps: f64,
    pub errors: u64,
    pub baseline_p50_ms: Option<f64>,
    /// HTTP mode with `--socket` too: the same load's p50 over the socket.
    pub socket_p50_ms: Option<f64>,
    /// HTTP mode: the shim's CPU time per run, from its `/metrics`.
    pub shim_cpu_per_run_ms: Option<f64>,
    /// With `--floor`: the floor runs' p50, and the CPU per run of the load and of the floor
    /// (`NaN` when the machine's CPU counters could not be read).
    pub floor: Option<FloorFigures>,
}

/// The three figures `--floor` adds to the summary line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloorFigures {
    pub floor_p50_ms: f64,
    pub cpu_per_run_ms: f64,
    pub floor_cpu_ms: f64,
}

impl Summary {
    /// The summary of `results` round trips recorded in `latency` (µs) over `elapsed`.
    pub fn new(
        latency: &Histogram<u64>,
        results: u64,
        elapsed: Duration,
        errors: u64,
        baseline: Option<&Histogram<u64>>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        Summary {
            p50_ms: percentile_ms(latency, 0.50),
            p90_ms: percentile_ms(latency, 0.90),
            p99_ms: percentile_ms(latency, 0.99),
            rps: if seconds > 0.0 {
                results as f64 / seconds
            } else {
                0.0
            },
            errors,
            baseline_p50_ms: baseline.map(|b| percentile_ms(b, 0.50)),
            socket_p50_ms: None,
            shim_cpu_per_run_ms: None,
            floor: None,
        }
    }

    /// HTTP p50 over the socket's: what the shim adds at the median (with `--socket` too).
    pub fn http_overhead_p50_ms(&self) -> Option<f64> {
        self.socket_p50_ms.map(|socket| self.p50_ms - socket)
    }

    /// Baseline p50 over sandfork's p50: how many times faster a run through the daemon is than
    /// starting an interpreter. 0 when there is no sandfork p50 to divide by.
    pub fn ratio(&self) -> Option<f64> {
        let baseline = self.baseline_p50_ms?;
        Some(if self.p50_ms > 0.0 {
            baseline / self.p50_ms
        } else {
            0.0
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} rps={:.3} errors={}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.rps, self.errors
        )?;
        if let (Some(baseline), Some(ratio)) = (self.baseline_p50_ms, self.ratio()) {
            write!(f, " baseline_p50_ms={baseline:.3} ratio={ratio:.3}")?;
        }
        if let (Some(socket), Some(overhead)) = (self.socket_p50_ms, self.http_overhead_p50_ms()) {
            write!(
                f,
                " socket_p50_ms={socket:.3} http_overhead_p50_ms={overhead:.3}"
            )?;
        }
        if let Some(cpu) = self.shim_cpu_per_run_ms {
            write!(f, " shim_cpu_per_run_ms={cpu:.3}")?;
        }
        if let Some(floor) = self.floor {
            write!(
                f,
                " floor_p50_ms={:.3} cpu_per_run_ms={:.3} floor_cpu_ms={:.3}",
                floor.floor_p50_ms, floor.cpu_per_run_ms, floor.floor_cpu_ms
            )?;
        }
        Ok(())
    }
}

/// The `q` quantile of a µs histogram, in ms; 0 when nothing was recorded.
pub fn percentile_ms(histogram: &Histogram<u64>, q: f64) -> f64 {
    if histogram.is_empty() {
        0.0
    } else {
        histogram.value_at_quantile(q) as f64 / 1000.0
    }
}

/// "p50" of a histogram in ms with 3 decimals, or "-" when it is empty.
pub(super) fn p50_or_none(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        "-".to_string()
    } else {
        format!("{:.3}", percentile_ms(histogram, 0.5))
    }
}

/// An empty round-trip histogram: µs from 1 to an hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's rules (low ≥ 1, high ≥ 2 × low, digits ≤ 5).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|err| unreachable!("constant histogram bounds rejected: {err}"))
}

pub(super) fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Means of the server's per-phase timings (`RunResult::timings`), in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseMeans {
    pub queue_ms: f64,
    pub spawn_ms: f64,
    pub run_ms: f64,
    pub total_ms: f64,
}

/// Means of what the programs themselves used (`RunResult::usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageMeans {
    /// The program's wall time from "go" to exit, ms.
    pub wall_ms: f64,
    /// The child's CPU time (user + system, including its exit), ms: compared with `run_ms` it
    /// tells computing from waiting.
    pub cpu_ms: f64,
    /// The child's peak RSS, KiB.
    pub max_rss_kb: f64,
}

/// The baseline: a fresh interpreter per request.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The interpreter actually started (after resolving shims).
    pub python: PathBuf,
    /// Runs attempted.
    pub runs: u64,
    /// Runs that exited non-zero, printed something else than the first successful run, could
    /// not start, or did not finish before the deadline.
    pub failures: u64,
    /// Spawn-to-exit times, µs.
    pub latency: Histogram<u64>,
    /// The first successful run's stdout: what every daemon run must print.
    pub stdout: Option<Vec<u8>>,
    /// Descriptions of the first few failures.
    pub error_examples: Vec<String>,
}

/// Everything one invocation measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests asked for.
    pub requests: u64,
    /// Connections used (each with one run in flight).
    pub connections: u64,
    /// Wall time of the load phase, from the first send to the last result.
    pub elapsed: Duration,
    /// Client-observed round trips of every run that got a result (of any status), µs.
    pub latency: Histogram<u64>,
    /// Runs that got a result (of any status).
    pub results: u64,
    /// Runs whose result was `ok` with the expected stdout.
    pub good: u64,
    /// Server-side phase means over every result.
    pub phases: PhaseMeans,
    /// Means of the children's resource usage over every result.
    pub usage: UsageMeans,
    /// Results served by a pre-forked (warm) child.
    pub warm: u64,
    /// Round trips of the results served by a warm child, µs …
    pub warm_latency: Histogram<u64>,
    /// … and of those whose child was forked for the request.
    pub cold_latency: Histogram<u64>,
    /// Descriptions of the first few failed requests.
    pub error_examples: Vec<String>,
    /// True if the deadline stopped the load before every request had its answer.
    pub deadline_hit: bool,
    pub baseline: Option<Baseline>,
    /// Session mode: the comparison and the probes measured with the cells.
    pub session: Option<super::session::SessionBench>,
    /// HTTP mode: the socket's load of the same invocation and the shim's CPU.
    pub http: Option<HttpBench>,
    /// With `--floor`: the floor runs and the CPU per run of both phases.
    pub floor: Option<FloorBench>,
}

/// What `--floor` adds to a report.
#[derive(Debug, Clone)]
pub struct FloorBench {
    /// The floor runs' summary.
    pub summary: Summary,
    /// Floor runs that failed.
    pub errors: u64,
    /// CPU ms the machine spent per run of the load, the bench's own and the background
    /// aside (None: the counters could not be read).
    pub cpu_per_run_ms: Option<f64>,
    /// … and per floor run.
    pub floor_cpu_ms: Option<f64>,
    /// The machine's busy CPU ms per second with the daemon idle, measured before the load and
    /// after the floor; their mean is subtracted from both.
    pub background_ms_per_s: Option<(f64, f64)>,
}

/// What HTTP mode adds to a report.
#[derive(Debug, Clone)]
pub struct HttpBench {
    /// The same load over the socket first (with `--socket` too).
    pub socket: Option<Summary>,
    /// Its failed requests.
    pub socket_errors: u64,
    /// The shim's CPU time per run (None when its `/metrics` does not say).
    pub shim_cpu_per_run_ms: Option<f64>,
    /// A TCP connection per run, not one kept alive per worker.
    pub new_connection: bool,
}

impl Report {
    /// Failed requests (no result, a status other than `ok`, or another stdout), plus failed
    /// baseline runs.
    pub fn errors(&self) -> u64 {
        self.requests.saturating_sub(self.good)
            + self.baseline.as_ref().map_or(0, |b| b.failures)
            + self.session.as_ref().map_or(0, |s| s.runs_errors)
            + self.http.as_ref().map_or(0, |h| h.socket_errors)
            + self.floor.as_ref().map_or(0, |f| f.errors)
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary::new(
            &self.latency,
            self.results,
            self.elapsed,
            self.errors(),
            self.baseline.as_ref().map(|b| &b.latency),
        );
        if let Some(http) = &self.http {
            summary.socket_p50_ms = http.socket.map(|s| s.p50_ms);
            summary.shim_cpu_per_run_ms = http.shim_cpu_per_run_ms;
        }
        if let Some(floor) = &self.floor {
            summary.floor = Some(FloorFigures {
                floor_p50_ms: floor.summary.p50_ms,
                cpu_per_run_ms: floor.cpu_per_run_ms.unwrap_or(f64::NAN),
                floor_cpu_ms: floor.floor_cpu_ms.unwrap_or(f64::NAN),
            });
        }
        summary
    }

    /// The human-readable lines printed before the summary line.
    pub fn describe(&self, config: &BenchConfig) -> Vec<String> {
        let ms = |q| percentile_ms(&self.latency, q);
        let mut lines = vec![
            format!(
                "sandfork bench: {} × {} ({} profile), concurrency {} ({} connection{}, one {} \
                 in flight each)",
                self.requests,
                quote(config.code.as_bytes()),
                config.profile.as_deref().unwrap_or("default"),
                config.concurrency,
                self.connections,
                if self.connections == 1 { "" } else { "s" },
                if self.session.is_some() {
                    "cell of its own live session"
                } else {
                    "run"
                },
            ),
            format!(
                "results: {} of {} ok, {} failed, in {:.3} s{}",
                self.good,
                self.requests,
                self.requests - self.good,
                self.elapsed.as_secs_f64(),
                if self.deadline_hit {
                    " (stopped by the deadline)"
                } else {
                    ""
                },
            ),
        ];
        if !self.latency.is_empty() {
            let mean_ms = self.latency.mean() / 1000.0;
            lines.push(format!(
                "round trip ms: min {:.3} mean {:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
                self.latency.min() as f64 / 1000.0,
                mean_ms,
                ms(0.5),
                ms(0.9),
                ms(0.99),
                self.latency.max() as f64 / 1000.0,
            ));
            let p = self.phases;
            lines.push(format!(
                "server phases, mean ms: queue {:.3} spawn {:.3} run {:.3} total {:.3}; \
                 client + socket {:.3}",
                p.queue_ms,
                p.spawn_ms,
                p.run_ms,
                p.total_ms,
                mean_ms - p.total_ms,
            ));
            let u = self.usage;
            lines.push(format!(
                "child usage, mean: wall {:.3} ms, cpu {:.3} ms, max rss {:.1} MiB",
                u.wall_ms,
                u.cpu_ms,
                u.max_rss_kb / 1024.0,
            ));
            if let Some(session) = &self.session {
                lines.extend(session.describe(self));
            } else {
                lines.push(format!(
                "warm children: {} of {} results ({:.1} %); round trip p50 ms: warm {}, forked \
                 for the request {}",
                self.warm,
                self.results,
                100.0 * self.warm as f64 / self.results as f64,
                p50_or_none(&self.warm_latency),
                p50_or_none(&self.cold_latency),
            ));
            }
        }
        if let Some(http) = &self.http {
            let url = config.http.as_ref().map_or("", |t| t.url.as_str());
            lines.push(format!(
                "over HTTP: POST {url}/v1/execute, {}",
                if http.new_connection {
                    "a new TCP connection per run"
                } else {
                    "one kept-alive HTTP/1.1 connection per worker"
                }
            ));
            if let Some(socket) = &http.socket {
                lines.push(format!(
                    "over the socket first, the same load: ms p50 {:.3} p90 {:.3} p99 {:.3}, \
                     {:.1} runs/s, {} failed; the shim adds {:.3} ms at the median",
                    socket.p50_ms,
                    socket.p90_ms,
                    socket.p99_ms,
                    socket.rps,
                    http.socket_errors,
                    ms(0.5) - socket.p50_ms,
                ));
            }
            lines.push(match http.shim_cpu_per_run_ms {
                Some(cpu) => format!("shim CPU per run: {cpu:.3} ms (its /metrics)"),
                None => "shim CPU per run: unknown (its /metrics did not say)".into(),
            });
        }
        if let Some(floor) = &self.floor {
            let s = &floor.summary;
            lines.push(format!(
                "floor (the zygote forks a child that exits at once, same channels), same load: \
                 ms p50 {:.3} p90 {:.3} p99 {:.3}, {:.1} runs/s, {} failed",
                s.p50_ms, s.p90_ms, s.p99_ms, s.rps, floor.errors,
            ));
            lines.push(match (floor.cpu_per_run_ms, floor.floor_cpu_ms) {
                (Some(run), Some(floor_cpu)) => format!(
                    "CPU per run (the machine's, less this bench's and the background): {run:.3} \
                     ms; per floor run {floor_cpu:.3} ms ({:.2}× the floor); p50 {:.2}× the \
                     floor's",
                    run / floor_cpu,
                    ms(0.5) / s.p50_ms,
                ),
                _ if floor.background_ms_per_s.is_none() => {
                    "CPU per run: unknown (/proc/stat or getrusage could not be read)".into()
                }
                _ => "CPU per run: not measurable, the machine's other work changed by more \
                      than the runs used; run on a quiet machine"
                    .into(),
            });
            if let Some((before, after)) = floor.background_ms_per_s {
                lines.push(format!(
                    "background (the machine's busy CPU with the daemon idle): {before:.1} ms/s \
                     before, {after:.1} ms/s after{}",
                    if floor::background_changed(before, after) {
                        " — it changed during the bench: the CPU figures are not trustworthy"
                    } else {
                        ""
                    }
                ));
            }
        }
        if let Some(b) = &self.baseline {
            lines.push(format!(
                "baseline: {} {} -c CODE, {} runs one after the other, {} failed: ms p50 {:.3} \
                 p90 {:.3} p99 {:.3}",
                b.python.display(),
                BASELINE_FLAGS.join(" "),
                b.runs,
                b.failures,
                percentile_ms(&b.latency, 0.5),
                percentile_ms(&b.latency, 0.9),
                percentile_ms(&b.latency, 0.99),
            ));
        }
        lines
    }

    /// Descriptions of the first few failures, daemon runs and baseline runs.
    pub fn error_examples(&self) -> impl Iterator<Item = &String> {
        let baseline = self.baseline.iter().flat_map(|b| b.error_examples.iter());
        baseline.chain(self.error_examples.iter())
    }
}
