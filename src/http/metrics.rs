//! The shim's own metrics (requests by endpoint and status code, latency by endpoint, whether
//! the daemon answered the last scrape, the CPU time the shim has used, the connections it
//! opened to the daemon), appended at `/metrics` to the daemon's, which the shim
//! fetches with the protocol's `Metrics` request.
//!
//! Both are OpenMetrics text from prometheus-client; the daemon's closing `# EOF` is dropped so
//! the page has one.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route's path pattern (`other` for unknown paths, so callers cannot grow the set).
    endpoint: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

/// This process's CPU time, user + system, in seconds (0 if the kernel will not say).
fn own_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|usage| seconds(usage.user_time()) + seconds(usage.system_time()))
        .unwrap_or(0.0)
}

/// The shim's registry.
#[derive(Debug)]
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    seconds: HistogramFamily<EndpointLabels>,
    daemon_up: Gauge,
    /// The shim's own CPU time (user + system), read at each scrape: `sandfork bench --url`
    /// divides its growth by the runs it sent to get the shim's CPU per run.
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Connections opened to the daemon: the pool's churn (one per burst's extra request, and
    /// one per streamed run, not one per request).
    daemon_connections: Counter,
    /// Of those, the ones idle in the pool at the scrape: each holds an fd in the shim and one in
    /// the daemon, which a leak check must not count as leaked (scripts/soak.py).
    daemon_connections_idle: Gauge,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let mut registry = Registry::with_prefix("sandfork_http");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status code",
            requests.clone(),
        );
        let seconds: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_seconds",
            "HTTP request latency, by endpoint",
            seconds.clone(),
        );
        let daemon_up = Gauge::default();
        registry.register(
            "daemon_up",
            "1 if sandforkd answered this scrape's metrics request, else 0",
            daemon_up.clone(),
        );
        let cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cpu_seconds",
            "CPU time (user + system) this shim process has used since it started",
            cpu_seconds.clone(),
        );
        let daemon_connections = Counter::default();
        registry.register(
            "daemon_connections",
            "Connections opened to sandforkd (idle ones are kept and reused)",
            daemon_connections.clone(),
        );
        let daemon_connections_idle = Gauge::default();
        registry.register(
            "daemon_connections_idle",
            "Connections to sandforkd idle in the pool, ready for the next request (at most 32)",
            daemon_connections_idle.clone(),
        );
        HttpMetrics {
            registry,
            requests,
            seconds,
            daemon_up,
            cpu_seconds,
            daemon_connections,
            daemon_connections_idle,
        }
    }

    /// The counter of connections opened to the daemon, for the [`Upstream`] that opens them.
    ///
    /// [`Upstream`]: super::upstream::Upstream
    pub fn daemon_connections(&self) -> Counter {
        self.daemon_connections.clone()
    }

    /// Counts one answered request.
    pub fn observe(&self, endpoint: &str, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.seconds
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The page: the daemon's metrics (if it answered), then the shim's, with `idle` daemon
    /// connections in the pool.
    pub fn render(&self, daemon: Option<&str>, idle: usize) -> String {
        self.daemon_up.set(i64::from(daemon.is_some()));
        self.daemon_connections_idle
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
        self.cpu_seconds.set(own_cpu_seconds());
        let mut text = String::new();
        if let Some(daemon) = daemon {
            let body = daemon.trim_end();
            text.push_str(body.strip_suffix("# EOF").unwrap_or(body));
        }
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_eof_after_both_registries() {
        let metrics = HttpMetrics::new();
        metrics.observe("/v1/execute", 200, Duration::from_millis(3));
        metrics.observe("/v1/execute", 200, Duration::from_millis(3));
        let daemon =
            "# HELP sandfork_slots x\n# TYPE sandfork_slots gauge\nsandfork_slots 4\n# EOF\n";
        let text = metrics.render(Some(daemon), 3);
        assert!(text.starts_with("# HELP sandfork_slots"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert!(
            text.contains("sandfork_http_requests_total{endpoint=\"/v1/execute\",code=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("sandfork_http_daemon_up 1"));
        assert!(
            text.contains("sandfork_http_daemon_connections_total 0"),
            "{text}"
        );
        assert!(metrics
            .render(None, 0)
            .contains("sandfork_http_daemon_up 0"));
    }
}
