//! Every failure of the HTTP API as a status code and `{"error": {"kind", "message"}}`.
//!
//! Three sources, one shape: the shim's own checks (key, body, JSON, base64), the daemon's
//! rejections (`RunResult.rejection`, by [`RejectKind`]) and the daemon's error frames (by
//! [`ErrorKind`]), plus an unreachable daemon. `Retry-After` (seconds, rounded up) accompanies
//! 429 and 503.

use std::any::Any;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandfork_protocol::{CodecError, ErrorFrame, ErrorKind, RejectKind, Rejection};

use super::api::{ErrorBody, ErrorDetail};
use sandfork_protocol::client::ClientError;

/// Retry hint when the daemon gives none (unreachable, shutting down, a queue timeout).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable class (`ErrorDetail.kind`).
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
    /// Sent as `Retry-After`, in whole seconds rounded up.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: kind.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: Duration) -> ApiError {
        self.retry_after = Some(after);
        self
    }

    /// 400 with `kind`.
    pub fn bad_request(kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// 400: the body is not the JSON the endpoint takes.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::bad_request("malformed", message)
    }

    /// 401: no key, or a key no tenant holds.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 413: the body, or a part of the request, is over its cap.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 408: the client, or the whole request, took too long.
    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 503: the daemon cannot be reached; retry shortly.
    pub fn daemon_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "daemon_unavailable",
            message,
        )
        .retry_after(DEFAULT_RETRY_AFTER)
    }

    /// 502: the daemon answered something the shim cannot pass on as a result.
    pub fn daemon_error(kind: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, kind, message)
    }

    /// A run the daemon refused before it started.
    pub fn rejected(rejection: &Rejection, message: Option<&str>) -> ApiError {
        let kind = rejection.kind;
        let message = message.unwrap_or(kind.as_str()).to_string();
        let status = match kind {
            // 400 rather than 404: the route exists; a field of the request is wrong.
            RejectKind::UnknownProfile
            | RejectKind::InvalidLimits
            | RejectKind::LimitAboveCeiling
            | RejectKind::InvalidFiles => StatusCode::BAD_REQUEST,
            RejectKind::ProfileNotAllowed => StatusCode::FORBIDDEN,
            RejectKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RejectKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RejectKind::Busy | RejectKind::QueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut error = ApiError::new(status, kind.as_str(), message);
        if matches!(
            kind,
            RejectKind::RateLimited | RejectKind::Busy | RejectKind::QueueTimeout
        ) {
            let after = rejection
                .retry_after_ms
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_millis);
            error = error.retry_after(after);
        }
        error
    }

    /// An error frame the daemon answered a request with.
    pub fn from_frame(frame: &ErrorFrame) -> ApiError {
        let message = frame.message.clone();
        match frame.kind {
            // Code the daemon refuses as malformed (the shim checks it first, so rarely seen).
            ErrorKind::InvalidRequest => ApiError::bad_request("invalid_request", message),
            ErrorKind::FrameTooLarge => ApiError::too_large(message),
            ErrorKind::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
                    .retry_after(DEFAULT_RETRY_AFTER)
            }
            // The shim is not a proxy, or names a tenant the daemon does not know: the shim
            // and the daemon disagree about the config. Not the caller's fault.
            ErrorKind::PermissionDenied => ApiError::daemon_error("permission_denied", message),
            ErrorKind::SessionNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "session_not_found", message)
            }
            ErrorKind::SessionEnded => {
                ApiError::new(StatusCode::NOT_FOUND, "session_ended", message)
            }
            ErrorKind::SessionBusy => ApiError::new(StatusCode::CONFLICT, "session_busy", message),
            ErrorKind::FileNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "file_not_found", message)
            }
            ErrorKind::TooManySessions => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", message)
            }
            ErrorKind::NoSessionCapacity => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_session_capacity",
                message,
            )
            .retry_after(DEFAULT_RETRY_AFTER),
            ErrorKind::Malformed
            | ErrorKind::UnsupportedVersion
            | ErrorKind::HelloRequired
            | ErrorKind::DuplicateId
            | ErrorKind::UnknownId
            | ErrorKind::Internal => ApiError::daemon_error(
                "daemon_error",
                format!("{}: {message}", frame.kind.as_str()),
            ),
        }
    }

    /// A failure talking to the daemon.
    pub fn from_client(err: ClientError) -> ApiError {
        match err {
            ClientError::Connect { path, source } => ApiError::daemon_unavailable(format!(
                "cannot reach sandforkd at {}: {source}",
                path.display()
            )),
            ClientError::Server(frame) => ApiError::from_frame(&frame),
            ClientError::Codec(CodecError::FrameTooLarge { len, max }) => ApiError::too_large(
                format!("the request is {len} bytes encoded; the daemon takes at most {max}"),
            ),
            ClientError::Codec(CodecError::Io(e)) => {
                ApiError::daemon_unavailable(format!("connection to sandforkd failed: {e}"))
            }
            ClientError::Closed => {
                ApiError::daemon_unavailable("sandforkd closed the connection (restarting?)")
            }
            other => ApiError::daemon_error("daemon_error", other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let seconds = after.as_millis().div_ceil(1000).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The fallback route: 404 in the API's error shape.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A known path asked with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// A handler panicked (a bug): 500, and the connection survives.
pub fn panicked(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the shim failed on this request",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(kind: RejectKind, retry_after_ms: Option<u64>) -> Rejection {
        Rejection {
            kind,
            retry_after_ms,
        }
    }

    #[test]
    fn every_rejection_has_its_code() {
        let expected = [
            (RejectKind::UnknownProfile, 400),
            (RejectKind::ProfileNotAllowed, 403),
            (RejectKind::InvalidLimits, 400),
            (RejectKind::LimitAboveCeiling, 400),
            (RejectKind::TooLarge, 413),
            (RejectKind::InvalidFiles, 400),
            (RejectKind::RateLimited, 429),
            (RejectKind::Busy, 503),
            (RejectKind::QueueTimeout, 503),
        ];
        assert_eq!(expected.len(), RejectKind::ALL.len());
        for (kind, code) in expected {
            let error = ApiError::rejected(&rejection(kind, None), Some("why"));
            assert_eq!(error.status.as_u16(), code, "{kind}");
            assert_eq!(error.kind, kind.as_str());
            assert_eq!(error.retry_after.is_some(), code == 429 || code == 503);
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let response = ApiError::rejected(&rejection(RejectKind::RateLimited, Some(1001)), None)
            .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let response =
            ApiError::rejected(&rejection(RejectKind::Busy, Some(10)), None).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn every_error_frame_maps() {
        for kind in ErrorKind::ALL {
            let error = ApiError::from_frame(&ErrorFrame::new(kind, "detail"));
            let expected = match kind {
                ErrorKind::InvalidRequest => 400,
                ErrorKind::FrameTooLarge => 413,
                ErrorKind::ShuttingDown | ErrorKind::NoSessionCapacity => 503,
                ErrorKind::SessionNotFound | ErrorKind::SessionEnded | ErrorKind::FileNotFound => {
                    404
                }
                ErrorKind::SessionBusy => 409,
                ErrorKind::TooManySessions => 429,
                _ => 502,
            };
            assert_eq!(error.status.as_u16(), expected, "{kind}");
            assert!(error.message.contains("detail"));
        }
    }

    #[test]
    fn unauthorized_names_the_scheme() {
        let response = ApiError::unauthorized("no key").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
