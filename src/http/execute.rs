//! `POST /v1/execute`: the native endpoint. The request becomes a `RunSpec` on behalf of the
//! key's tenant; the result comes back as `sandfork run --json` prints it, plus the request id,
//! `main()`'s value in function mode and the files the program left.
//!
//! The helpers here (code checks, base64, the daemon round trip with rejections turned into
//! HTTP errors) serve the compatibility endpoints too.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sandfork_protocol::{FileData, LimitsRequest, Mode, Request, RunResult, RunSpec, Status};

use super::api::{ErrorBody, ExecuteRequest, RunMode, StreamEvent};
use super::error::ApiError;
use super::observe::RequestId;
use super::{auth, body, stream, Shim};
use crate::output::RunOutput;

/// Standard base64, padding optional (clients differ; both forms are unambiguous).
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Runs one program.
#[utoipa::path(
    post,
    path = "/v1/execute",
    tag = "runs",
    request_body = ExecuteRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The run happened (whatever its status). With `stream` (or `Accept: text/event-stream`): server-sent events `stdout` and `stderr` with `{\"text\"}` as the program writes, then one `result` with this JSON (stdout/stderr empty, `stdout_streamed`/`stderr_streamed` counting what was sent); an `error` event if the daemon fails after the stream began",
            content((RunOutput = "application/json"), (StreamEvent = "text/event-stream"))),
        (status = 400, description = "Malformed JSON, code, files, base64 or limits; unknown profile; a limit above a ceiling", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 403, description = "The tenant may not use this profile", body = ErrorBody),
        (status = 408, description = "The body or the whole request took too long", body = ErrorBody),
        (status = 413, description = "The body, the code, stdin or the files are over their caps", body = ErrorBody),
        (status = 429, description = "Over the tenant's rate; see Retry-After", body = ErrorBody),
        (status = 503, description = "Busy, queue timeout or daemon unavailable; see Retry-After", body = ErrorBody),
    )
)]
pub async fn execute(
    State(shim): State<Arc<Shim>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let tenant = auth::authenticate(&shim.tenants, &headers)?;
    let request: ExecuteRequest = body::json(body, &headers, &shim.settings).await?;
    let streamed = stream::wanted(request.stream, &headers);
    let files = request
        .files
        .iter()
        .map(|f| decode_file(&f.path, &f.content_b64))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = RunSpec {
        profile: request.profile,
        code: checked_code(request.code)?,
        stdin: request.stdin.map(String::into_bytes).unwrap_or_default(),
        argv: request.args,
        limits: LimitsRequest {
            timeout_ms: request.limits.timeout_ms,
            memory_mb: request.limits.memory_mb,
            output_bytes: request.limits.output_bytes,
        },
        mode: match request.mode {
            RunMode::Script => Mode::Script,
            RunMode::Function => Mode::Function,
        },
        files,
        ..RunSpec::default()
    };
    let function_mode = request.mode == RunMode::Function;
    if streamed {
        let spec = on_behalf(spec, tenant, &request_id, peer);
        let shape: stream::Shape = if function_mode {
            |result, extra| json(RunOutput::new(result, true).streamed(Some(&extra)))
        } else {
            |result, extra| json(RunOutput::new(result, false).streamed(Some(&extra)))
        };
        return stream::respond(&shim, |id| Request::StreamRun { id, spec }, shape).await;
    }
    let result = run(&shim, spec, tenant, &request_id, peer).await?;
    Ok(Json(RunOutput::new(result, function_mode)).into_response())
}

/// A response body as JSON text, its fields in their declared order (these types always
/// serialize).
pub fn json(value: impl serde::Serialize) -> String {
    serde_json::to_string(&value).unwrap_or_default()
}

/// `spec` on behalf of the key's tenant, with the audit trail's request id and address.
fn on_behalf(spec: RunSpec, tenant: String, request_id: &RequestId, peer: SocketAddr) -> RunSpec {
    RunSpec {
        tenant: Some(tenant),
        request_id: Some(request_id.0.clone()),
        client_addr: Some(peer.to_string()),
        ..spec
    }
}

/// The HTTP error of a result the daemon refused, if it was refused.
pub fn refusal(result: &RunResult) -> Option<ApiError> {
    match (&result.status, &result.rejection) {
        (Status::Rejected, Some(rejection)) => {
            Some(ApiError::rejected(rejection, result.message.as_deref()))
        }
        (Status::Rejected, None) => Some(ApiError::bad_request(
            "rejected",
            result.message.clone().unwrap_or_else(|| "rejected".into()),
        )),
        _ => None,
    }
}

/// Sends `spec` on behalf of `tenant` and returns the result of a run that happened; a run the
/// daemon refused is the matching HTTP error.
pub async fn run(
    shim: &Shim,
    spec: RunSpec,
    tenant: String,
    request_id: &RequestId,
    peer: SocketAddr,
) -> Result<RunResult, ApiError> {
    let result = shim
        .upstream
        .run(on_behalf(spec, tenant, request_id, peer))
        .await?;
    match refusal(&result) {
        Some(error) => Err(error),
        None => Ok(result),
    }
}

/// The code as the daemon takes it: non-empty, without NUL (JSON strings are always UTF-8).
pub fn checked_code(code: String) -> Result<Vec<u8>, ApiError> {
    crate::validate::code(code.as_bytes())
        .map_err(|message| ApiError::bad_request("invalid_code", message))?;
    Ok(code.into_bytes())
}

/// An input file with its base64 content decoded (paths are the daemon's to judge).
pub fn decode_file(path: &str, content_b64: &str) -> Result<FileData, ApiError> {
    let content = BASE64_IN.decode(content_b64.trim()).map_err(|e| {
        ApiError::bad_request(
            "invalid_files",
            format!("file {path:?}: the content is not valid base64 ({e})"),
        )
    })?;
    Ok(FileData {
        path: path.to_string(),
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_base64_checks() {
        assert!(checked_code("print(1)".into()).is_ok());
        assert_eq!(
            checked_code(String::new()).unwrap_err().kind,
            "invalid_code"
        );
        assert_eq!(
            checked_code("a\0b".into()).unwrap_err().kind,
            "invalid_code"
        );
        assert_eq!(decode_file("a", "aGk=").unwrap().content, b"hi");
        assert_eq!(decode_file("a", "aGk").unwrap().content, b"hi");
        assert_eq!(decode_file("a", "").unwrap().content, b"");
        let err = decode_file("a", "!!!").unwrap_err();
        assert_eq!(
            (err.status.as_u16(), err.kind.as_str()),
            (400, "invalid_files")
        );
    }
}
