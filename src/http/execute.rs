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
use axum::{Extension, Json};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sandfork_protocol::{FileData, LimitsRequest, Mode, RunResult, RunSpec, Status};
use serde_json::value::RawValue;

use super::api::{
    ErrorBody, ExecuteRequest, OutputFile, RunMode, RunOutput, TimingsJson, UsageJson,
};
use super::error::ApiError;
use super::observe::RequestId;
use super::{auth, body, Shim};

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
        (status = 200, description = "The run happened (whatever its status)", body = RunOutput),
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
) -> Result<Json<RunOutput>, ApiError> {
    let tenant = auth::authenticate(&shim.tenants, &headers)?;
    let request: ExecuteRequest = body::json(body, &headers, &shim.settings).await?;
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
    let result = run(&shim, spec, tenant, &request_id, peer).await?;
    Ok(Json(run_output(result, request.mode)))
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
    let spec = RunSpec {
        tenant: Some(tenant),
        request_id: Some(request_id.0.clone()),
        client_addr: Some(peer.to_string()),
        ..spec
    };
    let result = shim.daemon.run(spec).await?;
    match (&result.status, &result.rejection) {
        (Status::Rejected, Some(rejection)) => {
            Err(ApiError::rejected(rejection, result.message.as_deref()))
        }
        (Status::Rejected, None) => Err(ApiError::bad_request(
            "rejected",
            result.message.unwrap_or_else(|| "rejected".into()),
        )),
        _ => Ok(result),
    }
}

/// The code as the daemon takes it: non-empty, without NUL (JSON strings are always UTF-8).
pub fn checked_code(code: String) -> Result<Vec<u8>, ApiError> {
    if code.is_empty() {
        return Err(ApiError::bad_request("invalid_code", "code is empty"));
    }
    if let Some(at) = code.find('\0') {
        return Err(ApiError::bad_request(
            "invalid_code",
            format!("code contains a NUL character at byte {at}"),
        ));
    }
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

/// Base64 of output files.
pub fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// `main()`'s JSON text, verbatim (so integers beyond 64 bits stay exact); text that is somehow
/// not JSON is passed on as a JSON string rather than lost.
pub fn raw_json(text: String) -> Box<RawValue> {
    match RawValue::from_string(text) {
        Ok(raw) => raw,
        Err(err) => {
            let quoted = serde_json::to_string(&format!("(not JSON: {err})"))
                .unwrap_or_else(|_| "null".into());
            RawValue::from_string(quoted).unwrap_or_default()
        }
    }
}

/// The response of a run: `crate::client::result_json`'s fields plus the HTTP extras.
pub fn run_output(result: RunResult, mode: RunMode) -> RunOutput {
    let value = match mode {
        RunMode::Script => None,
        RunMode::Function => Some(result.result.map_or_else(Box::default, raw_json)),
    };
    RunOutput {
        status: result.status.as_str().to_string(),
        exit_code: result.exit_code,
        signal: result.signal,
        stdout: String::from_utf8_lossy(&result.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
        stdout_truncated: result.stdout_truncated,
        stderr_truncated: result.stderr_truncated,
        usage: UsageJson {
            wall_ms: result.usage.wall_ms,
            cpu_ms: result.usage.cpu_ms,
            max_rss_kb: result.usage.max_rss_kb,
        },
        timings: TimingsJson {
            queue_ms: result.timings.queue_ms,
            spawn_ms: result.timings.spawn_ms,
            run_ms: result.timings.run_ms,
            total_ms: result.timings.total_ms,
        },
        message: result.message,
        request_id: result.request_id,
        result: value,
        files: result
            .files
            .into_iter()
            .map(|f| OutputFile {
                size: f.content.len() as u64,
                content_b64: encode_b64(&f.content),
                path: f.path,
            })
            .collect(),
        files_truncated: result.files_truncated,
    }
}

#[cfg(test)]
mod tests {
    use sandfork_protocol::Status;

    use super::*;
    use crate::client::result_json;

    fn sample() -> RunResult {
        let mut result = RunResult::new(Status::Ok);
        result.exit_code = Some(0);
        result.stdout = b"hi\n".to_vec();
        result.stderr = b"\xffwarn".to_vec();
        result.usage.wall_ms = 1.5;
        result.timings.total_ms = 2.0;
        result.request_id = "h-1".into();
        result.result = Some("123456789012345678901234567890".into());
        result.files = vec![FileData {
            path: "out.txt".into(),
            content: b"done".to_vec(),
        }];
        result
    }

    #[test]
    fn the_cli_fields_are_all_there_with_the_same_values() {
        let result = sample();
        let cli = result_json(&result);
        let http = serde_json::to_value(run_output(result, RunMode::Script)).unwrap();
        for (key, value) in cli.as_object().unwrap() {
            assert_eq!(http.get(key), Some(value), "{key}");
        }
        assert_eq!(http["request_id"], "h-1");
        assert!(http.get("result").is_none(), "no result in script mode");
        assert_eq!(http["files"][0]["content_b64"], "ZG9uZQ==");
        assert_eq!(http["files"][0]["size"], 4);
        assert_eq!(http["files_truncated"], false);
    }

    #[test]
    fn function_results_stay_exact_json() {
        let text = serde_json::to_string(&run_output(sample(), RunMode::Function)).unwrap();
        assert!(
            text.contains("\"result\":123456789012345678901234567890"),
            "{text}"
        );
        let mut failed = sample();
        failed.result = None;
        let value = serde_json::to_value(run_output(failed, RunMode::Function)).unwrap();
        assert!(value["result"].is_null());
    }

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
