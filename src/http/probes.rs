//! Operations endpoints, without API keys: `/healthz` (the process is up), `/readyz` (the daemon
//! answers and every profile has a live zygote), `/metrics` (the daemon's and the shim's
//! metrics; loopback peers only unless `--public-metrics`, since it names tenants) and
//! `/openapi.json`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::warn;

use super::api::{ErrorBody, Health, ProfileReadiness, Readiness};
use super::error::ApiError;
use super::{metrics, Shim};

/// The process is up (nothing else is checked).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The shim is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The daemon is reachable and ready (every profile has a live zygote).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Daemon unreachable, or not ready; see Retry-After", body = ErrorBody),
    )
)]
pub async fn readyz(State(shim): State<Arc<Shim>>) -> Result<Json<Readiness>, ApiError> {
    let (status, sessions) = shim.upstream.status().await?;
    let warm = status.profiles.iter().all(|p| p.zygotes_ready > 0);
    if !status.ready || !warm {
        let waiting: Vec<String> = status
            .profiles
            .iter()
            .filter(|p| p.zygotes_ready == 0)
            .map(|p| p.name.clone())
            .collect();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "sandforkd is not ready (profiles without a zygote: {})",
                waiting.join(", ")
            ),
        )
        .retry_after(std::time::Duration::from_secs(1)));
    }
    Ok(Json(Readiness {
        ready: true,
        slots_total: status.slots_total,
        slots_busy: status.slots_busy,
        profiles: status
            .profiles
            .into_iter()
            .map(|p| {
                let pool = sessions.iter().find(|s| s.profile == p.name);
                ProfileReadiness {
                    sessions_live: pool.map_or(0, |s| s.live),
                    sessions_max: pool.map_or(0, |s| s.max),
                    name: p.name,
                    zygotes_ready: p.zygotes_ready,
                    zygotes_wanted: p.zygotes_wanted,
                    warm_children: p.warm_children,
                    queued: p.queued,
                }
            })
            .collect(),
    }))
}

/// The daemon's metrics (runs by tenant, profile and status; latency histograms; queue depth,
/// busy slots, warm children, zygotes) and the shim's (requests by endpoint and code).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        (status = 403, description = "Not a loopback peer (see --public-metrics)", body = ErrorBody),
    )
)]
pub async fn metrics(
    State(shim): State<Arc<Shim>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, ApiError> {
    if !shim.settings.public_metrics && !peer.ip().is_loopback() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "/metrics is served to loopback peers only (start with --public-metrics to change it)",
        ));
    }
    let daemon = match shim.upstream.metrics().await {
        Ok(text) => Some(text),
        Err(err) => {
            warn!(kind = %err.kind, cause = %err.message, "the daemon's metrics are unavailable");
            None
        }
    };
    let text = shim
        .metrics
        .render(daemon.as_deref(), shim.upstream.idle_connections());
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json(State(shim): State<Arc<Shim>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        shim.openapi_json.clone(),
    )
        .into_response()
}
