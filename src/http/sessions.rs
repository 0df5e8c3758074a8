//! `/v1/sessions`: stateful sessions for REPL backends (notebooks, teaching sites, agents).
//!
//! Every handler authenticates the key, then asks the daemon on the key's tenant's behalf; the
//! daemon decides everything (ownership, limits, bounds). Another tenant's session id is
//! answered exactly like one that never existed (404 `session_not_found`); the owner of an
//! ended session gets 404 `session_ended` with the reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandfork_protocol::{
    Caller, Cell, LimitsRequest, Request, SessionInfo, SessionOp, SessionOpen, SessionReply,
};

use super::api::{
    CellRequest, ErrorBody, SessionFile, SessionFiles, SessionJson, SessionList, SessionRequest,
    StreamEvent,
};
use super::error::ApiError;
use super::execute::{checked_code, decode_file, json, refusal};
use super::observe::RequestId;
use super::{auth, body, stream, Shim};
use crate::output::CellOutput;

/// An authenticated session request: the shim, and who asks for the daemon (the key's tenant,
/// the request id, the peer). A request without a valid key is answered 401 before its handler.
pub struct Asker {
    shim: Arc<Shim>,
    caller: Caller,
}

impl FromRequestParts<Arc<Shim>> for Asker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shim: &Arc<Shim>) -> Result<Self, ApiError> {
        let tenant = auth::authenticate(&shim.tenants, &parts.headers)?;
        let request_id = parts.extensions.get::<RequestId>().map(|id| id.0.clone());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|peer| peer.0.to_string());
        Ok(Asker {
            shim: Arc::clone(shim),
            caller: Caller {
                tenant: Some(tenant),
                request_id,
                client_addr: peer,
            },
        })
    }
}

impl Asker {
    /// Asks the daemon `op` on the caller's behalf.
    async fn ask(self, op: SessionOp) -> Result<SessionReply, ApiError> {
        self.shim.upstream.session(self.caller, op).await
    }
}

fn unexpected(reply: SessionReply) -> ApiError {
    ApiError::daemon_error("daemon_error", format!("the daemon answered {reply:?}"))
}

/// Opens a session.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    request_body = SessionRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 201, description = "The session is open", body = SessionJson),
        (status = 400, description = "Malformed JSON; unknown profile; a limit or idle_timeout_s above its ceiling", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "The tenant may not use this profile", body = ErrorBody),
        (status = 429, description = "The tenant holds its max_sessions (too_many_sessions), or is over its rate", body = ErrorBody),
        (status = 503, description = "The profile holds its max_sessions (no_session_capacity), busy, or daemon unavailable; see Retry-After", body = ErrorBody),
    )
)]
pub async fn open(
    asker: Asker,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<SessionJson>), ApiError> {
    let bytes = body::read(body, &headers, &asker.shim.settings).await?;
    let request: SessionRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        SessionRequest::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::malformed(format!("the body is not the expected JSON: {e}")))?
    };
    let op = SessionOp::Open(SessionOpen {
        profile: request.profile,
        limits: LimitsRequest {
            timeout_ms: request.limits.timeout_ms,
            memory_mb: request.limits.memory_mb,
            output_bytes: request.limits.output_bytes,
        },
        idle_timeout_s: request.idle_timeout_s,
    });
    match asker.ask(op).await? {
        SessionReply::Opened(info) => Ok((StatusCode::CREATED, Json(session_json(info)))),
        SessionReply::Refused { rejection, message } => {
            Err(ApiError::rejected(&rejection, Some(&message)))
        }
        other => Err(unexpected(other)),
    }
}

/// The caller's live sessions.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The caller's own live sessions", body = SessionList),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
    )
)]
pub async fn list(asker: Asker) -> Result<Json<SessionList>, ApiError> {
    match asker.ask(SessionOp::List).await? {
        SessionReply::List(sessions) => Ok(Json(SessionList {
            sessions: sessions.into_iter().map(session_json).collect(),
        })),
        other => Err(unexpected(other)),
    }
}

/// Runs one cell in the session.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/execute",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    request_body = CellRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The cell ran (whatever its status): the run result JSON plus `value` (the repr() of its last expression, or null) and `session_ended`. With `stream` (or `Accept: text/event-stream`): `stdout`/`stderr` events, then one `result` event with this JSON",
            content((CellOutput = "application/json"), (StreamEvent = "text/event-stream"))),
        (status = 400, description = "Malformed JSON, code, files or base64", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such session of the caller's (session_not_found), or it has ended (session_ended)", body = ErrorBody),
        (status = 409, description = "A cell is running in this session (session_busy)", body = ErrorBody),
        (status = 413, description = "The code, stdin or files are over their caps", body = ErrorBody),
        (status = 429, description = "Over the tenant's rate", body = ErrorBody),
        (status = 503, description = "Busy, queue timeout or daemon unavailable; see Retry-After", body = ErrorBody),
    )
)]
pub async fn execute(
    asker: Asker,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Asker { shim, caller } = asker;
    let request: CellRequest = body::json(body, &headers, &shim.settings).await?;
    let streamed = stream::wanted(request.stream, &headers);
    let cell = Cell {
        code: checked_code(request.code)?,
        stdin: request.stdin.map(String::into_bytes).unwrap_or_default(),
        files: request
            .files
            .iter()
            .map(|f| decode_file(&f.path, &f.content_b64))
            .collect::<Result<Vec<_>, _>>()?,
        stream: streamed,
    };
    if streamed {
        let op = SessionOp::Execute { session: id, cell };
        return stream::respond(
            &shim,
            |id| Request::Session { id, caller, op },
            |result, extra| json(CellOutput::new(result, extra, true)),
        )
        .await;
    }
    let (result, extra) = shim.upstream.cell(caller, &id, cell).await?;
    if let Some(error) = refusal(&result) {
        return Err(error);
    }
    Ok(Json(CellOutput::new(result, extra, false)).into_response())
}

/// Interrupts the running cell (KeyboardInterrupt); the session survives.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/interrupt",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 202, description = "Interrupt sent (to the running cell, if any)"),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such session of the caller's, or it has ended", body = ErrorBody),
    )
)]
pub async fn interrupt(asker: Asker, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    match asker.ask(SessionOp::Interrupt { session: id }).await? {
        SessionReply::Interrupted => Ok(StatusCode::ACCEPTED),
        other => Err(unexpected(other)),
    }
}

/// Closes the session: its process is killed, its files are gone.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 204, description = "Closed"),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such session of the caller's, or it has ended already", body = ErrorBody),
    )
)]
pub async fn close(asker: Asker, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    match asker.ask(SessionOp::Close { session: id }).await? {
        SessionReply::Closed => Ok(StatusCode::NO_CONTENT),
        other => Err(unexpected(other)),
    }
}

/// The regular files of the session's directory (between cells).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/files",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Path and size of each regular file (symlinks and other kinds are left out)", body = SessionFiles),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such session of the caller's, or it has ended", body = ErrorBody),
        (status = 409, description = "A cell is running (session_busy)", body = ErrorBody),
    )
)]
pub async fn files(asker: Asker, Path(id): Path<String>) -> Result<Json<SessionFiles>, ApiError> {
    match asker.ask(SessionOp::ListFiles { session: id }).await? {
        SessionReply::Files { files, truncated } => Ok(Json(SessionFiles {
            files: files
                .into_iter()
                .map(|f| SessionFile {
                    path: f.path,
                    size: f.size,
                })
                .collect(),
            truncated,
        })),
        other => Err(unexpected(other)),
    }
}

/// One file of the session's directory, as bytes.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/files/{*path}",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "The session's id"),
        ("path" = String, Path, description = "Relative path in the session's directory, e.g. out/plot.png"),
    ),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "The path is absolute, has `..` or is otherwise unusable; the file is over the output cap", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such session (session_not_found, session_ended) or regular file (file_not_found)", body = ErrorBody),
        (status = 409, description = "A cell is running (session_busy)", body = ErrorBody),
    )
)]
pub async fn file(
    asker: Asker,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match asker.ask(SessionOp::ReadFile { session: id, path }).await? {
        SessionReply::File(file) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            file.content,
        )
            .into_response()),
        other => Err(unexpected(other)),
    }
}

fn session_json(info: SessionInfo) -> SessionJson {
    SessionJson {
        session_id: info.session_id,
        profile: info.profile,
        created_at: rfc3339(info.created_at_ms),
        expires_at: rfc3339(info.expires_at_ms),
        idle_timeout_s: info.idle_timeout_s,
        cells: info.cells,
        busy: info.busy,
    }
}

fn rfc3339(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix_ms / 1000);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_256_000_999), "2026-12-03T00:00:00Z");
    }
}
