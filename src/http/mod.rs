//! The HTTP shim (`sandfork-http`): remote callers reach the daemon over HTTP with an API key.
//!
//! The shim is a separate, unprivileged process whose uid is a *proxy* of the daemon (listed in
//! the config's `proxy_uids`). It reads the same config file as the daemon, authenticates each
//! caller by API key ([`crate::tenants::Tenants::by_api_key`]), and forwards the run over the
//! Unix socket on the tenant's behalf (`RunSpec.tenant`), with the caller's address
//! (`client_addr`) and a request id for the audit trail. The daemon enforces every policy
//! (ceilings, profiles, rate, concurrency, sizes); the shim turns its answers into HTTP status
//! codes. The shim holds no secret but the key hashes the daemon's config already holds.
//!
//! Map (the path of one `POST /v1/execute`, top to bottom):
//! - [`listener`]: TCP accept loop; hyper HTTP/1.1 with a header read timeout, a connection cap,
//!   the peer address as a request extension, graceful shutdown. [`listener::run`] is the entry
//!   point the binary and the tests drive.
//! - [`observe`]: middleware around every route: request id (`X-Request-Id`), total request
//!   timeout, request counters and latency.
//! - [`auth`]: `Authorization: Bearer KEY` or `X-API-Key: KEY` → the tenant's name (401 if not).
//! - [`body`]: the request body, read under a byte cap and a time limit, parsed as JSON.
//! - [`execute`] (`/v1/execute`), [`sessions`] (`/v1/sessions…`), [`compat`] (`/eval` as
//!   snekbox, `/execute` as the python-sandbox-api style), [`probes`] (`/healthz`, `/readyz`,
//!   `/metrics`, `/openapi.json`): the handlers; each builds a request for the daemon and shapes
//!   its answer. [`snekbox`]: what a snekbox `/eval` request means and how it is answered.
//! - [`stream`]: a streamed run's or cell's answer as server-sent events.
//! - [`upstream`]: the shim's side of the daemon's socket: one connection per request (connect,
//!   Hello, Run) and its errors.
//! - [`error`]: every failure as `{"error": {"kind", "message"}}` with its status code, and
//!   how daemon rejections and error frames map to codes.
//! - [`api`]: the request and response types, which also generate the OpenAPI document.
//! - [`metrics`]: the shim's own counters, appended to the daemon's at `/metrics`.

pub mod api;
pub mod auth;
pub mod body;
pub mod compat;
pub mod error;
pub mod execute;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod observe;
pub mod probes;
pub mod sessions;
pub mod snekbox;
pub mod stream;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::tenants::{TenantError, Tenants};

/// Default `--listen`: loopback only; put a TLS-terminating proxy in front for remote callers.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `--max-body-bytes`: room for the largest default request (1 MiB code + 1 MiB stdin +
/// 8 MiB of files, which base64 makes ~10.7 MiB) with JSON escaping to spare.
pub const DEFAULT_MAX_BODY_BYTES: usize = 24 * 1024 * 1024;
/// Default `--header-read-timeout-ms`: a client has this long to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--body-read-timeout-ms`: a client has this long to send a request's body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--max-connections`: open client connections at once; more wait in the backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Time on top of the longest possible run (queue wait + wall-clock limit) and the body read
/// before a request is abandoned: forking, collecting output files, encoding the answer.
const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after SIGTERM before their connections are closed
/// (which cancels their runs).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How the shim runs: where the daemon is and the limits of the HTTP side.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Largest request body accepted; a larger one is refused (413) before it is parsed.
    pub max_body_bytes: usize,
    /// A client slower than this to send its headers is disconnected (slowloris).
    pub header_read_timeout: Duration,
    /// A client slower than this to send its body is answered 408.
    pub body_read_timeout: Duration,
    /// A request still unanswered after this is answered 408 and its run cancelled. Derived
    /// from the config by [`Settings::request_timeout_for`]: above any run's longest life.
    pub request_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Serve `/metrics` to any peer; by default only to loopback peers (it names tenants).
    pub public_metrics: bool,
    /// Grace for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Settings with the defaults, for the daemon at `socket`, sized for `config`.
    pub fn new(config: &Config, socket: PathBuf) -> Settings {
        Settings {
            socket,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            request_timeout: Settings::request_timeout_for(config, DEFAULT_BODY_READ_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            public_metrics: false,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// The total request timeout: the body read, plus the longest queue wait of any tenant,
    /// plus the longest wall-clock limit of any profile, plus a margin. A run can never outlive
    /// it, so it only fires for clients or daemons that hang.
    pub fn request_timeout_for(config: &Config, body_read_timeout: Duration) -> Duration {
        let longest_run = config
            .profiles
            .values()
            .map(|p| config.profile_limits(p).timeout_ms)
            .max()
            .unwrap_or(config.limits.timeout_ms);
        let longest_wait = config
            .tenants
            .iter()
            .map(|t| t.policy.max_queue_wait_ms)
            .chain([crate::tenants::PolicyConfig::default().max_queue_wait_ms])
            .max()
            .unwrap_or(0);
        body_read_timeout
            + Duration::from_millis(longest_run.saturating_add(longest_wait))
            + REQUEST_TIMEOUT_MARGIN
    }
}

/// The shim's shared state: settings, the tenants' key lookup, metrics, the OpenAPI document.
pub struct Shim {
    pub settings: Settings,
    /// Key → tenant, from the same config the daemon reads (shared with the MCP tools).
    pub tenants: Arc<Tenants>,
    /// Where runs go.
    pub upstream: upstream::Upstream,
    /// The shim's own request counters.
    pub metrics: metrics::HttpMetrics,
    /// `/openapi.json`, rendered once.
    pub openapi_json: String,
    /// `[eval]`: the profile of each snekbox `executable_path`.
    pub eval: crate::config::EvalConfig,
}

impl Shim {
    /// Builds the state. The daemon's uid given to the tenant lookups only decides who the
    /// built-in `local` tenant is, which has no keys: any value does for key lookups.
    pub fn new(config: &Config, settings: Settings) -> Result<Shim, TenantError> {
        let tenants = Tenants::from_config(config, 0)?;
        let openapi_json = openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the document: {e}\"}}"));
        let metrics = metrics::HttpMetrics::new();
        Ok(Shim {
            upstream: upstream::Upstream::new(
                settings.socket.clone(),
                metrics.daemon_connections(),
            ),
            settings,
            tenants: Arc::new(tenants),
            metrics,
            openapi_json,
            eval: config.eval.clone(),
        })
    }
}

/// Every route, with the OpenAPI document built from the handlers' annotations.
fn routes() -> OpenApiRouter<Arc<Shim>> {
    OpenApiRouter::with_openapi(api::ApiDoc::openapi())
        .routes(routes!(execute::execute))
        .routes(routes!(sessions::open, sessions::list))
        .routes(routes!(sessions::execute))
        .routes(routes!(sessions::interrupt))
        .routes(routes!(sessions::close))
        .routes(routes!(sessions::files))
        .routes(routes!(sessions::file))
        .routes(routes!(compat::eval))
        .routes(routes!(compat::execute_script))
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::readyz))
        .routes(routes!(probes::metrics))
        .routes(routes!(probes::openapi_json))
}

/// The OpenAPI document of the shim. A route's catch-all segment (axum's `{*path}`, which
/// matches several segments) is written `{path}` there, as OpenAPI spells a path parameter.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes().split_for_parts().1;
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    doc
}

/// The application: every route, JSON 404 and 405, the panic guard and the [`observe`]
/// middleware (outermost, so it sees and counts every answer).
pub fn router(shim: Arc<Shim>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .merge(mcp::routes(&shim))
        .route("/eval", axum::routing::options(compat::eval_options))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panicked,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shim),
            observe::observe,
        ))
        .with_state(shim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route_with_its_types() {
        let doc: serde_json::Value = serde_json::from_str(&openapi().to_json().unwrap()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/execute",
            "/eval",
            "/execute",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/v1/sessions",
            "/v1/sessions/{id}",
            "/v1/sessions/{id}/execute",
            "/v1/sessions/{id}/interrupt",
            "/v1/sessions/{id}/files",
            "/v1/sessions/{id}/files/{path}",
        ] {
            assert!(paths.contains_key(path), "{path}");
        }
        assert!(
            !paths.keys().any(|p| p.contains('*')),
            "catch-alls are spelled as OpenAPI does"
        );
        let execute = &doc["paths"]["/v1/execute"]["post"];
        assert_eq!(
            execute["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ExecuteRequest"
        );
        for code in ["200", "400", "401", "403", "413", "429", "503"] {
            assert!(execute["responses"][code].is_object(), "{code}");
        }
    }

    #[test]
    fn the_request_timeout_outlives_any_run() {
        let config = Config::default().validated().unwrap();
        // 30 s body + 10 s queue wait + 15 s run + 10 s margin
        assert_eq!(
            Settings::request_timeout_for(&config, DEFAULT_BODY_READ_TIMEOUT),
            Duration::from_secs(65)
        );
    }
}
