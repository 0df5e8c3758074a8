//! `POST /mcp` (and the rest of MCP's streamable HTTP transport at `/mcp`): the MCP tools of
//! [`crate::mcp`], for agents that reach the shim over HTTP. Every request must carry a
//! tenant's API key, as on every other endpoint (401 otherwise, before the SDK sees it); each
//! tool call acts on behalf of the tenant whose key its request carries.
//!
//! The SDK's check of the `Host` header (a defence of unauthenticated local servers against DNS
//! rebinding) is off: every request here is authenticated by its key, and the shim is meant to
//! sit behind a proxy under whatever host name the operator gives it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::{auth, Shim};
use crate::mcp::{Identity, SandforkMcp};

/// The `/mcp` routes, behind the API key check.
pub fn routes(shim: &Arc<Shim>) -> Router<Arc<Shim>> {
    let tools = SandforkMcp::new(
        shim.settings.socket.clone(),
        None,
        Identity::ApiKey(Arc::clone(&shim.tenants)),
    );
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_max_request_body_bytes(shim.settings.max_body_bytes);
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        LocalSessionManager::default().into(),
        config,
    );
    Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(
            Arc::clone(shim),
            require_key,
        ))
}

/// 401, as on every other endpoint, for a request without a valid key.
async fn require_key(State(shim): State<Arc<Shim>>, request: Request, next: Next) -> Response {
    match auth::authenticate(&shim.tenants, request.headers()) {
        Ok(_) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}
