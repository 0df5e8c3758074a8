//! The daemon's metrics, served as Prometheus text through the protocol's `Metrics` request
//! (the HTTP shim exposes them at GET /metrics).
//!
//! Counters and histograms are updated as runs finish; gauges (slots, queue, warm children,
//! zygotes) are read from the supervisor's state at scrape time, so they cannot drift.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sandfork_protocol::{RunResult, ServerStatus, SessionPool};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    tenant: String,
    profile: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabels {
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServedLabels {
    profile: String,
    /// "warm" or "cold": whether the child was forked before the request.
    child: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantProfileLabels {
    tenant: String,
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    profile: String,
    /// One of a fixed set (see `SessionEnd::label`), never free text.
    reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// All metrics of one daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    total_seconds: HistogramFamily<ServedLabels>,
    queue_seconds: HistogramFamily<ProfileLabels>,
    slots_total: Gauge,
    slots_busy: Gauge,
    queued: Family<ProfileLabels, Gauge>,
    warm_children: Family<ProfileLabels, Gauge>,
    zygotes_ready: Family<ProfileLabels, Gauge>,
    cells: Family<RunLabels, Counter>,
    sessions_opened: Family<TenantProfileLabels, Counter>,
    sessions_ended: Family<EndLabels, Counter>,
    sessions_live: Family<ProfileLabels, Gauge>,
    sessions_max: Family<ProfileLabels, Gauge>,
    /// Encoding takes `&Registry`; the lock keeps concurrent scrapes from interleaving gauge
    /// updates and encoding.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sandfork");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Runs finished, by tenant, profile and status",
            runs.clone(),
        );
        let total_seconds: HistogramFamily<ServedLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "run_total_seconds",
            "Request latency inside the daemon (queue + child + run), by profile and warm/cold child",
            total_seconds.clone(),
        );
        let queue_seconds: HistogramFamily<ProfileLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "run_queue_seconds",
            "Time runs waited for a slot",
            queue_seconds.clone(),
        );
        let slots_total = Gauge::default();
        registry.register("slots", "Concurrent-run slots", slots_total.clone());
        let slots_busy = Gauge::default();
        registry.register(
            "slots_busy",
            "Identities running a program now",
            slots_busy.clone(),
        );
        let queued = Family::<ProfileLabels, Gauge>::default();
        registry.register("queued_runs", "Runs waiting for a slot", queued.clone());
        let warm_children = Family::<ProfileLabels, Gauge>::default();
        registry.register(
            "warm_children",
            "Children forked and locked down, waiting for a request",
            warm_children.clone(),
        );
        let zygotes_ready = Family::<ProfileLabels, Gauge>::default();
        registry.register("zygotes_ready", "Live zygotes", zygotes_ready.clone());
        let cells = Family::<RunLabels, Counter>::default();
        registry.register(
            "session_cells",
            "Session cells finished, by tenant, profile and status",
            cells.clone(),
        );
        let sessions_opened = Family::<TenantProfileLabels, Counter>::default();
        registry.register(
            "sessions_opened",
            "Sessions opened, by tenant and profile",
            sessions_opened.clone(),
        );
        let sessions_ended = Family::<EndLabels, Counter>::default();
        registry.register(
            "sessions_ended",
            "Sessions ended, by profile and reason (closed, idle, lifetime, died, failed, shutdown)",
            sessions_ended.clone(),
        );
        let sessions_live = Family::<ProfileLabels, Gauge>::default();
        registry.register(
            "sessions_live",
            "Sessions alive now (each holds a uid and a cgroup)",
            sessions_live.clone(),
        );
        let sessions_max = Family::<ProfileLabels, Gauge>::default();
        registry.register(
            "sessions_max",
            "Sessions a profile may hold at once (max_sessions)",
            sessions_max.clone(),
        );
        Metrics {
            registry,
            runs,
            total_seconds,
            queue_seconds,
            slots_total,
            slots_busy,
            queued,
            warm_children,
            zygotes_ready,
            cells,
            sessions_opened,
            sessions_ended,
            sessions_live,
            sessions_max,
            scrape: Mutex::new(()),
        }
    }

    /// Counts one finished run.
    pub fn record(&self, tenant: &str, profile: &str, result: &RunResult) {
        self.runs
            .get_or_create(&RunLabels {
                tenant: tenant.to_string(),
                profile: profile.to_string(),
                status: result.status.as_str().to_string(),
            })
            .inc();
        let profile_labels = ProfileLabels {
            profile: profile.to_string(),
        };
        self.queue_seconds
            .get_or_create(&profile_labels)
            .observe(result.timings.queue_ms / 1000.0);
        self.total_seconds
            .get_or_create(&ServedLabels {
                profile: profile.to_string(),
                child: if result.warm { "warm" } else { "cold" }.to_string(),
            })
            .observe(result.timings.total_ms / 1000.0);
    }

    /// Counts one finished session cell.
    pub fn record_cell(&self, tenant: &str, profile: &str, result: &RunResult) {
        self.cells
            .get_or_create(&RunLabels {
                tenant: tenant.to_string(),
                profile: profile.to_string(),
                status: result.status.as_str().to_string(),
            })
            .inc();
    }

    /// Counts one opened session.
    pub fn session_opened(&self, tenant: &str, profile: &str) {
        self.sessions_opened
            .get_or_create(&TenantProfileLabels {
                tenant: tenant.to_string(),
                profile: profile.to_string(),
            })
            .inc();
    }

    /// Counts one ended session; `reason` is a label from a fixed set.
    pub fn session_ended(&self, profile: &str, reason: &'static str) {
        self.sessions_ended
            .get_or_create(&EndLabels {
                profile: profile.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition, with gauges taken from `status` and `sessions`.
    pub fn render(&self, status: &ServerStatus, sessions: &[SessionPool]) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.slots_total.set(i64::from(status.slots_total));
        self.slots_busy.set(i64::from(status.slots_busy));
        for profile in &status.profiles {
            let labels = ProfileLabels {
                profile: profile.name.clone(),
            };
            self.queued
                .get_or_create(&labels)
                .set(i64::from(profile.queued));
            self.warm_children
                .get_or_create(&labels)
                .set(i64::from(profile.warm_children));
            self.zygotes_ready
                .get_or_create(&labels)
                .set(i64::from(profile.zygotes_ready));
        }
        for pool in sessions {
            let labels = ProfileLabels {
                profile: pool.profile.clone(),
            };
            self.sessions_live
                .get_or_create(&labels)
                .set(i64::from(pool.live));
            self.sessions_max
                .get_or_create(&labels)
                .set(i64::from(pool.max));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandfork_protocol::{ProfileStatus, Status};

    #[test]
    fn counts_runs_and_renders_gauges() {
        let metrics = Metrics::new();
        let mut ok = RunResult::new(Status::Ok);
        ok.timings.total_ms = 1.5;
        ok.warm = true;
        metrics.record("acme", "default", &ok);
        metrics.record("acme", "default", &ok);
        metrics.record("acme", "default", &RunResult::new(Status::Timeout));
        let status = ServerStatus {
            ready: true,
            profiles: vec![ProfileStatus {
                name: "default".into(),
                zygotes_ready: 1,
                warm_children: 2,
                ..Default::default()
            }],
            slots_total: 4,
            slots_busy: 1,
        };
        let sessions = [SessionPool {
            profile: "default".into(),
            live: 1,
            max: 4,
        }];
        metrics.record_cell("acme", "default", &ok);
        metrics.session_opened("acme", "default");
        metrics.session_ended("default", "idle");
        let text = metrics.render(&status, &sessions);
        assert!(
            text.contains("sandfork_sessions_live{profile=\"default\"} 1"),
            "{text}"
        );
        assert!(text.contains("sandfork_sessions_max{profile=\"default\"} 4"));
        assert!(text.contains(
            "sandfork_session_cells_total{tenant=\"acme\",profile=\"default\",status=\"ok\"} 1"
        ));
        assert!(
            text.contains("sandfork_sessions_ended_total{profile=\"default\",reason=\"idle\"} 1")
        );
        assert!(
            text.contains(
                "sandfork_runs_total{tenant=\"acme\",profile=\"default\",status=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "sandfork_runs_total{tenant=\"acme\",profile=\"default\",status=\"timeout\"} 1"
        ));
        assert!(text.contains("sandfork_slots_busy 1"));
        assert!(text.contains("sandfork_warm_children{profile=\"default\"} 2"));
        assert!(
            text.contains("sandfork_run_total_seconds_count{profile=\"default\",child=\"warm\"} 2")
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
