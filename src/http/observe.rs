//! The middleware around every route: the request id, the total request timeout, and the
//! shim's request counters.
//!
//! The request id is the caller's `X-Request-Id` when it is sane (1 to 128 characters among
//! letters, digits and `._:-`, so it can go into logs and the audit record unescaped), else a
//! fresh `h-` + 16 hex digits. Handlers read it as an extension, pass it to the daemon as
//! `RunSpec.request_id`, and every response carries it back in `X-Request-Id`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::debug;

use super::error::ApiError;
use super::Shim;

/// The request id header, in and out.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longest request id taken from a caller.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's id in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The caller's id if it is sane.
    pub fn from_caller(value: &HeaderValue) -> Option<RequestId> {
        let text = value.to_str().ok()?;
        let sane = !text.is_empty()
            && text.len() <= MAX_REQUEST_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        sane.then(|| RequestId(text.to_string()))
    }

    /// A fresh id: `h-` and 16 random hex digits (`h` for HTTP; the daemon's own are `r-…`).
    pub fn generate() -> RequestId {
        RequestId(crate::service::new_request_id("h"))
    }
}

/// Sets the request id, bounds the request's time, counts the answer.
pub async fn observe(
    State(shim): State<Arc<Shim>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let endpoint = matched.as_ref().map_or("other", |m| m.as_str()).to_string();
    let method = request.method().clone();
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(RequestId::from_caller)
        .unwrap_or_else(RequestId::generate);
    request.extensions_mut().insert(request_id.clone());
    let timeout = shim.settings.request_timeout;
    let mut response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        // Dropping the handler closed its daemon connection, which cancels the run.
        Err(_) => ApiError::request_timeout(format!(
            "no answer within {} s; the run, if any, was cancelled",
            timeout.as_secs()
        ))
        .into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER.clone(), value);
    }
    let elapsed = started.elapsed();
    shim.metrics
        .observe(&endpoint, response.status().as_u16(), elapsed);
    debug!(
        %method,
        endpoint,
        status = response.status().as_u16(),
        request_id = %request_id.0,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        for good in [
            "abc",
            "r-1234",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "a.b_c:d",
        ] {
            let value = HeaderValue::from_static(good);
            assert_eq!(RequestId::from_caller(&value).unwrap().0, good);
        }
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        for bad in [
            "",
            "has space",
            "new\tline",
            "quote\"",
            "semi;colon",
            long.as_str(),
        ] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert!(RequestId::from_caller(&value).is_none(), "{bad:?}");
        }
        let fresh = RequestId::generate();
        assert!(
            fresh.0.starts_with("h-") && fresh.0.len() == 18,
            "{fresh:?}"
        );
        assert!(RequestId::from_caller(&HeaderValue::from_str(&fresh.0).unwrap()).is_some());
    }
}
