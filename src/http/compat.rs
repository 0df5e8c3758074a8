//! Drop-in endpoints for clients of other sandboxes.
//!
//! - `POST /eval` speaks snekbox's API (python-discord/snekbox, `snekbox/api/resources/eval.py`):
//!   request `{"input"?, "args"?, "files"?: [{"path", "content" (base64)}]}`, at least one of
//!   `input` and `args`; `input` is appended to `args`, which default to `["-c"]`. Answer
//!   `{"stdout", "returncode", "files": [{"path", "size", "content"}]}`. The differences are in
//!   the README ("HTTP API", compatibility notes).
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
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sandfork_protocol::{FileData, Mode, RunResult, RunSpec, Status};

use super::api::{
    ErrorBody, EvalOutputFile, EvalRequest, EvalResponse, ScriptError, ScriptFailure,
    ScriptRequest, ScriptResponse,
};
use super::error::ApiError;
use super::execute::{checked_code, decode_file, run};
use super::observe::RequestId;
use super::{auth, body, Shim};
use crate::output::raw_json;

/// SIGKILL, the signal snekbox reports (as 128 + 9) for a run its jail killed at a limit.
const SIGKILL: i32 = 9;
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
        (status = 400, description = "Neither input nor args, unsupported args, bad files or base64", body = ErrorBody),
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
    let spec = eval_spec(request)?;
    let result = run(&shim, spec, tenant, &request_id, peer).await?;
    Ok(Json(eval_response(result)))
}

/// A snekbox request as a run: `-c CODE ARGS...` or `FILE ARGS...` (FILE among the files).
pub fn eval_spec(request: EvalRequest) -> Result<RunSpec, ApiError> {
    let mut args = match (request.args, &request.input) {
        (Some(args), _) => args,
        (None, Some(_)) => vec!["-c".to_string()],
        (None, None) => return Err(ApiError::malformed("either `input` or `args` is required")),
    };
    args.extend(request.input);
    let files = request
        .files
        .iter()
        .map(|f| decode_file(&f.path, &f.content))
        .collect::<Result<Vec<FileData>, _>>()?;
    let unsupported = |what: &str| {
        ApiError::bad_request(
            "invalid_args",
            format!(
                "{what}: sandfork runs `[\"-c\", CODE, ARGS...]` or `[FILE, ARGS...]` with FILE among `files`"
            ),
        )
    };
    let mut args = args.into_iter();
    let code = match args.next() {
        Some(flag) if flag == "-c" => args
            .next()
            .ok_or_else(|| unsupported("`-c` needs the code after it"))?,
        Some(path) if !path.starts_with('-') => {
            let wanted = path.strip_prefix("./").unwrap_or(&path);
            let file = files
                .iter()
                .find(|f| f.path == wanted)
                .ok_or_else(|| unsupported(&format!("{path:?} is not among the files")))?;
            String::from_utf8(file.content.clone()).map_err(|_| {
                ApiError::bad_request("invalid_code", format!("{path:?} is not UTF-8"))
            })?
        }
        Some(other) => return Err(unsupported(&format!("unsupported argument {other:?}"))),
        None => return Err(unsupported("`args` is empty")),
    };
    Ok(RunSpec {
        code: checked_code(code)?,
        argv: args.collect(),
        files,
        ..RunSpec::default()
    })
}

/// A result as snekbox shapes it.
pub fn eval_response(result: RunResult) -> EvalResponse {
    let returncode = match result.status {
        Status::Ok | Status::Error => result.exit_code,
        // nsjail kills the program at its time limit: snekbox reports 137.
        Status::Timeout => Some(128 + SIGKILL),
        Status::CpuLimit
        | Status::MemoryLimit
        | Status::OutputLimit
        | Status::Killed
        | Status::Rejected => result
            .signal
            .map(|s| 128 + s)
            .or(result.exit_code)
            .or(Some(128 + SIGKILL)),
        // snekbox answers null when the sandbox itself failed, with the reason as output.
        Status::InternalError => None,
    };
    let mut stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    stdout.push_str(&String::from_utf8_lossy(&result.stderr));
    if result.status == Status::InternalError {
        stdout.push_str(result.message.as_deref().unwrap_or("the sandbox failed"));
    }
    let files = result
        .files
        .into_iter()
        // snekbox's default output pattern (`**/[!_]*`) leaves out names starting with `_`.
        .filter(|f| !f.path.rsplit('/').next().unwrap_or("").starts_with('_'))
        .map(|f| EvalOutputFile {
            size: f.content.len() as u64,
            content: STANDARD.encode(&f.content),
            path: f.path,
        })
        .collect();
    EvalResponse {
        stdout,
        returncode,
        files,
    }
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
    use crate::http::api::EvalFile;

    fn eval(input: Option<&str>, args: Option<&[&str]>, files: &[(&str, &str)]) -> EvalRequest {
        EvalRequest {
            input: input.map(str::to_string),
            args: args.map(|a| a.iter().map(|s| s.to_string()).collect()),
            files: files
                .iter()
                .map(|(path, content)| EvalFile {
                    path: path.to_string(),
                    content: content.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn input_is_dash_c_code() {
        let spec = eval_spec(eval(Some("print(1)"), None, &[])).unwrap();
        assert_eq!(spec.code, b"print(1)");
        assert!(spec.argv.is_empty());
        let spec = eval_spec(eval(None, Some(&["-c", "print(2)", "a", "b"]), &[])).unwrap();
        assert_eq!(spec.code, b"print(2)");
        assert_eq!(spec.argv, ["a", "b"]);
    }

    #[test]
    fn a_file_argument_runs_that_file() {
        // "print(3)" in base64
        let spec = eval_spec(eval(
            None,
            Some(&["main.py", "x"]),
            &[("main.py", "cHJpbnQoMyk=")],
        ))
        .unwrap();
        assert_eq!(spec.code, b"print(3)");
        assert_eq!(spec.argv, ["x"]);
        assert_eq!(spec.files.len(), 1, "the file is written too");
    }

    #[test]
    fn unsupported_requests_are_400() {
        for request in [
            eval(None, None, &[]),
            eval(None, Some(&[]), &[]),
            eval(None, Some(&["-c"]), &[]),
            eval(None, Some(&["-m", "timeit"]), &[]),
            eval(None, Some(&["missing.py"]), &[]),
            eval(Some("print(1)"), None, &[("a", "not base64!")]),
        ] {
            let err = eval_spec(request).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{err:?}");
        }
    }

    #[test]
    fn return_codes_follow_snekbox() {
        let mut result = RunResult::new(Status::Error);
        result.exit_code = Some(3);
        result.stdout = b"out\n".to_vec();
        result.stderr = b"err\n".to_vec();
        let response = eval_response(result);
        assert_eq!(
            (response.returncode, response.stdout.as_str()),
            (Some(3), "out\nerr\n")
        );
        assert_eq!(
            eval_response(RunResult::new(Status::Timeout)).returncode,
            Some(137)
        );
        let mut killed = RunResult::new(Status::Killed);
        killed.signal = Some(31);
        assert_eq!(eval_response(killed).returncode, Some(159));
        let broken = RunResult::new(Status::InternalError).with_message("zygote died");
        let response = eval_response(broken);
        assert_eq!(response.returncode, None);
        assert!(response.stdout.contains("zygote died"));
    }

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
