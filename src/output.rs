//! The one JSON shape of a run's result: what `sandfork run --json` prints and what every HTTP
//! endpoint that returns a run (`/v1/execute`) answers. Built once, from the protocol's
//! `RunResult`, by [`RunOutput::new`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sandfork_protocol::{RunExtra, RunResult};
use serde::Serialize;
use serde_json::value::RawValue;

/// A run's result, as the CLI prints it and the HTTP API returns it.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct RunOutput {
    /// How the run ended: ok, error, timeout, cpu_limit, memory_limit, output_limit, killed,
    /// internal_error; `rejected` only from `sandfork run --json` (over HTTP a rejection is an
    /// error response, never a 200).
    pub status: String,
    /// Exit code, if the program exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that ended the program, if one did.
    pub signal: Option<i32>,
    /// Standard output (UTF-8; invalid bytes become U+FFFD).
    pub stdout: String,
    /// Standard error (tracebacks).
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub usage: UsageJson,
    pub timings: TimingsJson,
    /// Why, for every status but ok.
    pub message: Option<String>,
    /// Served by a child forked and locked down before the request arrived.
    pub warm: bool,
    /// The run's id in the daemon's audit trail (also the `X-Request-Id` response header).
    pub request_id: String,
    /// Function mode: `main()`'s return value, as JSON (absent in script mode; null when the
    /// run failed or `main()` returned None).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "http", schema(value_type = Option<Object>))]
    pub result: Option<Box<RawValue>>,
    /// Regular files the program created or changed in its working directory.
    pub files: Vec<OutputFile>,
    /// More files, or bytes, were there than the caps allow.
    pub files_truncated: bool,
    /// A streamed run: bytes of stdout sent as `stdout` events (`stdout` here is then empty);
    /// absent when the run was not streamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_streamed: Option<u64>,
    /// A streamed run: bytes of stderr sent as `stderr` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_streamed: Option<u64>,
    /// Status `rejected` (`sandfork run --json`; over HTTP a rejection is an error response):
    /// why, machine-readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection: Option<RejectionJson>,
}

/// Why a run was refused before it started.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct RejectionJson {
    /// unknown_profile, profile_not_allowed, invalid_limits, limit_above_ceiling, too_large,
    /// invalid_files, rate_limited, busy, queue_timeout.
    pub kind: String,
    /// For rate_limited and busy: milliseconds after which a retry may succeed.
    pub retry_after_ms: Option<u64>,
}

/// A session cell's result: a run's, plus the cell's value and whether the session ended.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CellOutput {
    #[serde(flatten)]
    pub run: RunOutput,
    /// The `repr()` of the cell's last expression statement; null when it has none, its value
    /// is None, or the cell failed.
    pub value: Option<String>,
    /// The session ended with this cell (its process died, or a cell that would not stop was
    /// killed); later calls get 404 `session_ended`.
    pub session_ended: bool,
}

impl CellOutput {
    pub fn new(result: RunResult, extra: RunExtra, streamed: bool) -> CellOutput {
        let value = extra.value.clone();
        let session_ended = extra.session_ended;
        CellOutput {
            run: RunOutput::new(result, false).streamed(streamed.then_some(&extra)),
            value,
            session_ended,
        }
    }
}

/// Resources a run used.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct UsageJson {
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub max_rss_kb: u64,
}

/// Where a run's time went, in milliseconds.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct TimingsJson {
    /// Waiting for admission and a free slot.
    pub queue_ms: f64,
    /// Getting a locked-down child ready.
    pub spawn_ms: f64,
    /// The program, from start to exit.
    pub run_ms: f64,
    /// The whole request inside the daemon.
    pub total_ms: f64,
}

/// A file the program left.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct OutputFile {
    pub path: String,
    pub content_b64: String,
    /// Bytes (before base64).
    pub size: u64,
}

impl RunOutput {
    /// The result of `result`; `function_mode` decides whether `result` (main()'s value) is
    /// present at all. Output bytes are decoded as UTF-8 with replacement characters; files are
    /// base64.
    pub fn new(result: RunResult, function_mode: bool) -> RunOutput {
        let value = function_mode.then(|| result.result.map_or_else(Box::default, raw_json));
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
            warm: result.warm,
            request_id: result.request_id,
            result: value,
            files: result
                .files
                .into_iter()
                .map(|f| OutputFile {
                    size: f.content.len() as u64,
                    content_b64: STANDARD.encode(&f.content),
                    path: f.path,
                })
                .collect(),
            files_truncated: result.files_truncated,
            stdout_streamed: None,
            stderr_streamed: None,
            rejection: result.rejection.map(|r| RejectionJson {
                kind: r.kind.as_str().to_string(),
                retry_after_ms: r.retry_after_ms,
            }),
        }
    }

    /// The same output with a streamed run's byte counts (`None`: it was not streamed).
    pub fn streamed(mut self, extra: Option<&RunExtra>) -> RunOutput {
        if let Some(extra) = extra {
            self.stdout_streamed = Some(extra.stdout_streamed);
            self.stderr_streamed = Some(extra.stderr_streamed);
        }
        self
    }
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

#[cfg(test)]
mod tests {
    use sandfork_protocol::{FileData, Status};

    use super::*;

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
    fn every_field_is_there() {
        let json = serde_json::to_value(RunOutput::new(sample(), false)).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["exit_code"], 0);
        assert_eq!(json["stdout"], "hi\n");
        assert_eq!(json["stderr"], "\u{fffd}warn");
        assert_eq!(json["usage"]["wall_ms"], 1.5);
        assert_eq!(json["timings"]["total_ms"], 2.0);
        assert_eq!(json["request_id"], "h-1");
        assert_eq!(json["warm"], false);
        assert!(json.get("result").is_none(), "no result in script mode");
        assert_eq!(json["files"][0]["content_b64"], "ZG9uZQ==");
        assert_eq!(json["files"][0]["size"], 4);
        assert_eq!(json["files_truncated"], false);
        assert!(json.get("stdout_streamed").is_none(), "not streamed");
    }

    #[test]
    fn a_cell_is_a_run_with_a_value() {
        let extra = RunExtra {
            stdout_streamed: 3,
            value: Some("42".into()),
            ..RunExtra::default()
        };
        let json = serde_json::to_value(CellOutput::new(sample(), extra, true)).unwrap();
        assert_eq!(json["status"], "ok");
        assert_eq!(json["value"], "42");
        assert_eq!(json["stdout_streamed"], 3);
        assert_eq!(json["session_ended"], false);
        let json =
            serde_json::to_value(CellOutput::new(sample(), RunExtra::default(), false)).unwrap();
        assert!(json["value"].is_null());
        assert!(json.get("stdout_streamed").is_none());
    }

    #[test]
    fn function_results_stay_exact_json() {
        let text = serde_json::to_string(&RunOutput::new(sample(), true)).unwrap();
        assert!(
            text.contains("\"result\":123456789012345678901234567890"),
            "{text}"
        );
        let mut failed = sample();
        failed.result = None;
        let value = serde_json::to_value(RunOutput::new(failed, true)).unwrap();
        assert!(value["result"].is_null());
    }
}
