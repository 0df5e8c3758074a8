//! Drop-in endpoints for clients of other sandboxes.
//!
//! - `POST /eval` speaks snekbox's API (python-discord/snekbox): what a request means and how
//!   a result is answered are [`super::snekbox`]'s; the differences are in the README
//!   ("Compatibility notes"). `OPTIONS /eval` answers 200 with `Allow: POST`, as snekbox does.
//! - `POST /execute` speaks the python-sandbox-api style: `{"script"}` defining `main()`, answered
//!   `{"result", "stdout"}` or, when the script fails, 400 `{"error": "<text>", "stdout"}`.
//!
//! Both authenticate like `/v1/execute`, and their HTTP-level errors (401, 413, 429, 503, …)
//! have the common `{"error": {"kind", "message"}}` shape.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sandfork_protocol::{Mode, RunResult, RunSpec, Status};

use super::api::{
    ErrorBody, EvalRequest, EvalResponse, ScriptError, ScriptFailure, ScriptRequest, ScriptResponse,
};
use super::error::ApiError;
use super::execute::{checked_code, run};
use super::observe::RequestId;
use super::{auth, body, snekbox, Shim};
use crate::output::raw_json;

/// Prefix of the zygote's own function-mode messages in stderr.
const FUNCTION_MODE_PREFIX: &str = "sandfork: function mode: ";

/// Evaluates Python as snekbox's `POST /eval` does.
#[utoipa::path(
    post,
    path = "/eval",
    tag = "compat",
    request_body = EvalRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "The run happened; see returncode", body = EvalResponse),
        (status = 400, description = "Neither input nor args, unsupported args, an unknown executable_path, bad files or base64", body = ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 413, description = "Over a size cap", body = ErrorBody),
        (status = 429, description = "Over the tenant's rate", body = ErrorBody),
        (status = 503, description = "Busy or daemon unavailable", body = ErrorBody),
    )
)]
pub async fn eval(
    State(shim): State<Arc<Shim>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EvalResponse>, ApiError> {
    let tenant = auth::authenticate(&shim.tenants, &headers)?;
    let request: EvalRequest = body::json(body, &headers, &shim.settings).await?;
    match snekbox::plan(request, &shim.eval)? {
        snekbox::Plan::Answer(answer) => Ok(Json(answer)),
        snekbox::Plan::Run(spec) => {
            let result = run(&shim, spec, tenant, &request_id, peer).await?;
            Ok(Json(snekbox::response(result)))
        }
    }
}

/// `OPTIONS /eval`: snekbox (falcon) answers 200 with the methods the resource takes.
pub async fn eval_options() -> Response {
    (StatusCode::OK, [(axum::http::header::ALLOW, "POST")]).into_response()
}

/// Runs a script's `main()`, python-sandbox-api style.
#[utoipa::path(
    post,
    path = "/execute",
    tag = "compat",
    request_body = ScriptRequest,
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "main()'s value and the output", body = ScriptResponse),
        (status = 400, description = "The script failed (no main(), an exception, a value JSON cannot encode, a limit: `{error, stdout}`), or the request is not valid (`{\"error\": {kind, message}}`)", body = ScriptFailure),
        (status = 401, description = "No API key, or an unknown one", body = ErrorBody),
        (status = 413, description = "Over a size cap", body = ErrorBody),
        (status = 429, description = "Over the tenant's rate", body = ErrorBody),
        (status = 503, description = "Busy or daemon unavailable", body = ErrorBody),
    )
)]
pub async fn execute_script(
    State(shim): State<Arc<Shim>>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = auth::authenticate(&shim.tenants, &headers)?;
    let request: ScriptRequest = body::json(body, &headers, &shim.settings).await?;
    let spec = RunSpec {
        code: checked_code(request.script)?,
        mode: Mode::Function,
        ..RunSpec::default()
    };
    let result = run(&shim, spec, tenant, &request_id, peer).await?;
    Ok(script_response(result))
}

/// `{"result", "stdout"}`, or the failure as `{"error": "<text>", "stdout"}`.
pub fn script_response(result: RunResult) -> Response {
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    match (result.status, result.result) {
        (Status::Ok, Some(value)) => Json(ScriptResponse {
            result: raw_json(value),
            stdout,
        })
        .into_response(),
        (status, _) => {
            let code = if status == Status::InternalError {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            let error = script_failure(
                status,
                &String::from_utf8_lossy(&result.stderr),
                result.message.as_deref(),
            );
            (code, Json(ScriptError { error, stdout })).into_response()
        }
    }
}

/// One line saying why a script failed: the zygote's function-mode message or the exception
/// (the last line of a traceback), else the run's message.
fn script_failure(status: Status, stderr: &str, message: Option<&str>) -> String {
    let last_line = stderr.lines().rev().map(str::trim).find(|l| !l.is_empty());
    match (status, last_line) {
        (Status::Error, Some(line)) => line
            .strip_prefix(FUNCTION_MODE_PREFIX)
            .unwrap_or(line)
            .to_string(),
        _ => message
            .map(str::to_string)
            .unwrap_or_else(|| format!("the script ended with status {}", status.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_failures_say_why_in_one_line() {
        let stderr = "sandfork: function mode: the script must define a function main()\n";
        assert_eq!(
            script_failure(Status::Error, stderr, None),
            "the script must define a function main()"
        );
        let traceback =
            "Traceback (most recent call last):\n  File ...\nZeroDivisionError: division by zero\n";
        assert_eq!(
            script_failure(Status::Error, traceback, None),
            "ZeroDivisionError: division by zero"
        );
        assert_eq!(
            script_failure(Status::Timeout, "", Some("timed out after 100 ms")),
            "timed out after 100 ms"
        );
    }
}
