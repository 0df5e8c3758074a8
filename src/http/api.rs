//! The HTTP API's request and response types. They are what the handlers parse and answer, and
//! (through `utoipa`) what the OpenAPI document at `/openapi.json` says; nothing is written twice.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's header; the paths come from the handlers (see `crate::http::routes`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sandfork-http",
        description = "Runs untrusted Python in sandforkd's locked-down children, for callers \
                       holding an API key. Errors are `{\"error\": {\"kind\", \"message\"}}`.",
    ),
    modifiers(&KeySchemes),
    tags(
        (name = "runs", description = "Run code"),
        (name = "sessions", description = "Stateful sessions: cells in one live interpreter"),
        (name = "compat", description = "Drop-in endpoints of other sandboxes' APIs"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// Declares the two ways to present a key.
struct KeySchemes;

impl Modify for KeySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// `POST /v1/execute`: one program to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The Python source: non-empty, no NUL character.
    #[schema(min_length = 1)]
    pub code: String,
    /// Given to the program on standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// `sys.argv[1:]`.
    #[serde(default)]
    pub args: Vec<String>,
    /// `script` (default) runs the code top to bottom; `function` then calls its `main()` and
    /// returns the value as `result`.
    #[serde(default)]
    pub mode: RunMode,
    /// The interpreter profile; default: the daemon's `default` profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// Files written into the run's working directory before the code starts.
    #[serde(default)]
    pub files: Vec<InputFile>,
    /// Limits for this run; each may only lower the tenant's and the profile's.
    #[serde(default)]
    pub limits: RequestLimits,
    /// Answer with server-sent events as the program writes (`stdout`, `stderr`, then one
    /// `result`); the same as sending `Accept: text/event-stream`.
    #[serde(default)]
    pub stream: bool,
}

/// How the code is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    #[default]
    Script,
    Function,
}

/// A file for the run's working directory.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Relative, `/`-separated, without `..` components, e.g. `data/in.csv`.
    pub path: String,
    /// The content, base64 (standard alphabet; padding optional).
    pub content_b64: String,
}

/// Limits asked for one run (absent: the policy's).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    /// Wall-clock limit in milliseconds (a session's: of each cell).
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Memory limit in MiB (a session's: of the whole session); at least 16.
    #[schema(minimum = 16)]
    pub memory_mb: Option<u64>,
    /// Cap on stdout, and on stderr, each, in bytes.
    #[schema(minimum = 1)]
    pub output_bytes: Option<u64>,
}

/// Every error: `{"error": {"kind", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: e.g. unauthorized, malformed, invalid_files, profile_not_allowed,
    /// too_large, rate_limited, busy, daemon_unavailable (the README lists them all).
    pub kind: String,
    /// For people; do not parse it.
    pub message: String,
}

/// `POST /eval` (snekbox): `input` is run as `python -c input`; or `args` are the
/// interpreter's arguments (`["-c", CODE, ...]` or `[FILE, ...]` with FILE among `files`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvalRequest {
    /// Python source, appended to `args` (which default to `["-c"]`).
    #[serde(default)]
    pub input: Option<String>,
    /// The interpreter's arguments.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Files for the working directory.
    #[serde(default)]
    pub files: Vec<EvalFile>,
    /// The interpreter, by the path a snekbox caller knows it by: the `[eval]` config maps each
    /// such path to a profile; absent or empty, the `[eval]` default profile.
    #[serde(default)]
    pub executable_path: Option<String>,
}

/// A snekbox file: `content` is base64.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct EvalFile {
    pub path: String,
    /// Base64; absent: an empty file.
    #[serde(default)]
    pub content: String,
}

/// The snekbox answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvalResponse {
    /// stdout, then stderr.
    pub stdout: String,
    /// The exit code; 128 + N after signal N (137 for a timeout); null when the sandbox failed.
    pub returncode: Option<i32>,
    /// Files the program created or changed, sorted by path (not hidden ones, not those whose
    /// name starts with `_`).
    pub files: Vec<EvalOutputFile>,
}

/// A file in the snekbox answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvalOutputFile {
    pub path: String,
    pub size: u64,
    /// Base64.
    pub content: String,
}

/// `POST /execute` (python-sandbox-api style): the script defines `main()`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ScriptRequest {
    /// Python source defining `main()`, whose JSON-serializable return value is the result.
    #[schema(min_length = 1)]
    pub script: String,
}

/// `main()`'s value and what the script printed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptResponse {
    #[schema(value_type = Object)]
    pub result: Box<RawValue>,
    pub stdout: String,
}

/// The script failed: no `main()`, an exception, a value JSON cannot encode, a limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptError {
    pub error: String,
    pub stdout: String,
}

/// A 400 of `POST /execute`: the script failed (its API's own shape), or the request was not
/// valid (the shape of every other error).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // the document's shape; the handlers answer with its two variants
pub enum ScriptFailure {
    Script(ScriptError),
    Request(ErrorBody),
}

/// One server-sent event of a streamed run or cell (the `text/event-stream` answer).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // the document's shape; stream.rs writes the events
pub struct StreamEvent {
    /// `stdout` and `stderr` as the program writes, then one `result`; `error` instead if the
    /// daemon fails after the stream began.
    pub event: StreamEventName,
    /// JSON text: `{"text"}` for output, the run's (or cell's) result for `result`,
    /// `{"error": {"kind", "message"}}` for `error`.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// The name of a server-sent event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamEventName {
    Stdout,
    Stderr,
    Result,
    Error,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always "ok": the process is up.
    pub status: String,
}

/// `GET /readyz`: the daemon's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub slots_total: u32,
    pub slots_busy: u32,
    pub profiles: Vec<ProfileReadiness>,
}

/// One profile's pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileReadiness {
    pub name: String,
    pub zygotes_ready: u32,
    pub zygotes_wanted: u32,
    pub warm_children: u32,
    pub queued: u32,
    /// Sessions alive now (each holds a uid and a cgroup, busy or idle).
    pub sessions_live: u32,
    /// The profile's `max_sessions`.
    pub sessions_max: u32,
}

/// `POST /v1/sessions`: a new session (every field optional; an empty body will do).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The interpreter profile; default: the daemon's `default` profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// `timeout_ms` and `output_bytes` apply to each cell, `memory_mb` to the session as a whole.
    #[serde(default)]
    pub limits: RequestLimits,
    /// Seconds without a cell after which the session ends (default and maximum: the daemon's
    /// `[sessions]` config).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub idle_timeout_s: Option<u64>,
}

/// A session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionJson {
    /// `s_` and 32 hex digits (128 random bits).
    pub session_id: String,
    pub profile: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When the session ends at the latest (its maximum lifetime), RFC 3339, UTC.
    pub expires_at: String,
    /// Seconds without a cell after which it ends.
    pub idle_timeout_s: u64,
    /// Cells run so far.
    pub cells: u64,
    /// A cell is running.
    pub busy: bool,
}

/// `GET /v1/sessions`: the caller's live sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionJson>,
}

/// `POST /v1/sessions/{id}/execute`: one cell.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CellRequest {
    /// Python source, run in the session's `__main__`: non-empty, no NUL character.
    #[schema(min_length = 1)]
    pub code: String,
    /// What `input()` reads in this cell.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Files written into the session's directory before the cell (replacing same-named ones).
    #[serde(default)]
    pub files: Vec<InputFile>,
    /// Answer with server-sent events (as `/v1/execute` does).
    #[serde(default)]
    pub stream: bool,
}

/// `GET /v1/sessions/{id}/files`: the regular files of the session's directory.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionFiles {
    pub files: Vec<SessionFile>,
    /// More files were there than the listing holds (1000).
    pub truncated: bool,
}

/// A file in a session's directory.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionFile {
    pub path: String,
    pub size: u64,
}
