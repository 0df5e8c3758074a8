//! snekbox's `POST /eval`, as python-discord/snekbox behaves (`snekbox/api/resources/eval.py`,
//! `snekbox/nsjail.py`, `snekbox/snekio`): what a request means, and how a result is answered.
//! Pure functions, so every rule is unit-tested; [`super::compat::eval`] is the handler.
//!
//! A request is `{"input"?, "args"?, "files"?, "executable_path"?}`: `input` is appended to
//! `args` (default `["-c"]`), leading empty arguments are dropped, and the arguments are
//! Python's command line. `-c CODE`, `-m MODULE` and `FILE` (among `files`, or Python's "can't
//! open file" when it is not) run as Python would run them; `executable_path` picks a profile
//! through the `[eval]` config. Input files are written as snekbox writes them (paths
//! normalized, never beyond the working directory); a file that cannot be written ends the
//! request with snekbox's `returncode: null` answer, as does an argument with a NUL byte and
//! output that is not UTF-8. Output files leave out hidden paths and names starting with `_`,
//! sorted by path. The deliberate differences are in the README's "Compatibility notes".

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sandfork_protocol::{FileData, RunResult, RunSpec, Status};

use super::api::{EvalOutputFile, EvalRequest, EvalResponse};
use super::error::ApiError;
use super::execute::{checked_code, decode_file};
use crate::config::EvalConfig;

/// SIGKILL: nsjail kills a program at its time and memory limits; snekbox reports 128 + 9.
const SIGKILL: i32 = 9;
/// SIGTERM: snekbox stops nsjail with it when the output is over its cap; it reports 128 + 15.
const SIGTERM: i32 = 15;
/// What snekbox answers when an argument holds a NUL byte (Popen's ValueError).
pub const NULL_BYTE: &str = "ValueError: embedded null byte";
/// What snekbox answers when the output is not UTF-8.
pub const INVALID_UNICODE: &str = "UnicodeDecodeError: invalid Unicode in output pipe";

/// What an `/eval` request becomes.
#[derive(Debug)]
pub enum Plan {
    /// A run on a profile.
    Run(RunSpec),
    /// snekbox's answer without a run (the request could not start one).
    Answer(EvalResponse),
}

/// An answer with `returncode: null` and `stdout` saying why, as snekbox gives when the run
/// could not happen or its output could not be read.
fn failed(stdout: impl Into<String>) -> EvalResponse {
    EvalResponse {
        stdout: stdout.into(),
        returncode: None,
        files: Vec::new(),
    }
}

/// The profile for `executable_path`: the `[eval]` default without one (`None`: the daemon's
/// default profile), the configured one for a listed path; any other path is refused without
/// saying whether it exists on this host.
pub fn profile_for<'a>(
    eval: &'a EvalConfig,
    executable_path: Option<&str>,
) -> Result<Option<&'a str>, ApiError> {
    match executable_path {
        None | Some("") => Ok(eval.profile.as_deref()),
        Some(path) => eval
            .executables
            .get(path)
            .map(|profile| Some(profile.as_str()))
            .ok_or_else(|| {
                let known: Vec<&String> = eval.executables.keys().collect();
                ApiError::bad_request(
                    "invalid_executable_path",
                    format!(
                        "executable_path {path:?} is not one of this server's interpreters ({known:?}); leave it out for the default"
                    ),
                )
            }),
    }
}

/// `path` as snekbox resolves it under the working directory: `.` and empty parts dropped,
/// `..` taken back, never above the root. `None` when it would climb out.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    Some(parts.join("/"))
}

/// The input files, written in order as snekbox writes them. `Err`: a 400 (a path beyond the
/// root, bad base64); `Ok(Err(answer))`: a file that cannot be written where an earlier one
/// put a file or a directory, which snekbox answers with `returncode: null`.
fn input_files(request: &EvalRequest) -> Result<Result<Vec<FileData>, EvalResponse>, ApiError> {
    let mut files: Vec<FileData> = Vec::new();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for file in &request.files {
        if file.path.starts_with('/') || file.path.contains('\0') {
            return Err(ApiError::bad_request(
                "invalid_files",
                format!(
                    "file path {:?} does not match: no absolute paths, no NUL bytes",
                    file.path
                ),
            ));
        }
        let path = normalize(&file.path)
            .filter(|path| !path.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_files",
                    format!("File path '{}' may not traverse beyond root", file.path),
                )
            })?;
        let mut data = decode_file(&path, &file.content)?;
        let parents: Vec<String> = path
            .match_indices('/')
            .map(|(at, _)| path[..at].to_string())
            .collect();
        if dirs.contains(&path) {
            return Ok(Err(failed(format!(
                "IsADirectoryError: Failed to create file '{}'.",
                file.path
            ))));
        }
        if parents
            .iter()
            .any(|parent| files.iter().any(|f| &f.path == parent))
        {
            return Ok(Err(failed(format!(
                "FileExistsError: Failed to create file '{}'.",
                file.path
            ))));
        }
        dirs.extend(parents);
        // A later file of the same path replaces the earlier one, as a second write would.
        files.retain(|f| f.path != path);
        data.path = path;
        files.push(data);
    }
    Ok(Ok(files))
}

/// Python's own usage error for `-c` or `-m` without its argument (exit status 2).
fn usage_error(option: &str) -> String {
    format!(
        "import sys\nsys.stderr.write(\"Argument expected for the {option} option\\n\"\n    \"usage: %s [option] ... [-c cmd | -m mod | file | -] [arg] ...\\n\"\n    \"Try `python -h' for more information.\\n\" % sys.executable)\nraise SystemExit(2)\n"
    )
}

/// `python -m MODULE`: what CPython's `-m` runs (`runpy._run_module_as_main`, which also
/// prints "No module named …" and exits 1 as the interpreter does).
fn module_launcher(module: &str) -> String {
    let quoted = serde_json::to_string(module).unwrap_or_default();
    format!(
        "import runpy as _runpy, sys as _sys\n_sys.argv[0] = \"-m\"\n_runpy._run_module_as_main({quoted})\n"
    )
}

/// `python FILE` for a FILE the request did not bring: the interpreter's message, exit 2.
fn missing_file(path: &str) -> String {
    let quoted = serde_json::to_string(path).unwrap_or_default();
    format!(
        "import os as _os, sys as _sys\n_sys.stderr.write(\"%s: can't open file %r: [Errno 2] No such file or directory\\n\" % (_sys.executable, _os.path.abspath({quoted})))\nraise SystemExit(2)\n"
    )
}

/// What an `/eval` request means here (see the module documentation).
pub fn plan(request: EvalRequest, eval: &EvalConfig) -> Result<Plan, ApiError> {
    let profile = profile_for(eval, request.executable_path.as_deref())?.map(str::to_string);
    let mut args = match (&request.args, &request.input) {
        (Some(args), _) => args.clone(),
        (None, Some(_)) => vec!["-c".to_string()],
        (None, None) => return Err(ApiError::malformed("either `input` or `args` is required")),
    };
    args.extend(request.input.clone());
    let files = match input_files(&request)? {
        Ok(files) => files,
        Err(answer) => return Ok(Plan::Answer(answer)),
    };
    // snekbox drops leading empty arguments; a NUL anywhere fails at Popen.
    let args: Vec<String> = args.into_iter().skip_while(String::is_empty).collect();
    if args.iter().any(|arg| arg.contains('\0')) {
        return Ok(Plan::Answer(failed(NULL_BYTE)));
    }
    let mut args = args.into_iter();
    let code = match args.next().as_deref() {
        Some("-c") => match args.next() {
            Some(code) => code,
            None => usage_error("-c"),
        },
        Some("-m") => match args.next() {
            Some(module) => module_launcher(&module),
            None => usage_error("-m"),
        },
        Some(path) if !path.starts_with('-') => {
            let wanted = normalize(path).unwrap_or_default();
            match files.iter().find(|f| f.path == wanted) {
                Some(file) => String::from_utf8(file.content.clone()).map_err(|_| {
                    ApiError::bad_request("invalid_code", format!("{path:?} is not UTF-8"))
                })?,
                None => missing_file(path),
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_args",
                format!(
                    "unsupported argument {other:?}: sandfork runs `-c CODE`, `-m MODULE` or `FILE`, with their arguments"
                ),
            ))
        }
        None => return Err(ApiError::bad_request("invalid_args", "`args` is empty")),
    };
    Ok(Plan::Run(RunSpec {
        profile,
        code: checked_code(code)?,
        argv: args.collect(),
        files,
        ..RunSpec::default()
    }))
}

/// `bytes` as text, or `None` when they are not UTF-8. A stream cut at its cap may end inside
/// a character: that tail is dropped, as a reader stopping there would.
fn text(bytes: &[u8], truncated: bool) -> Option<String> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text.to_string()),
        Err(err) if truncated && err.error_len().is_none() => {
            Some(String::from_utf8_lossy(&bytes[..err.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

/// snekbox's output-file rules: no hidden file or directory, no name starting with `_`
/// (its pattern `**/[!_]*` with hidden paths excluded).
fn returned(path: &str) -> bool {
    let hidden = path.split('/').any(|part| part.starts_with('.'));
    let underscore = path.rsplit('/').next().unwrap_or("").starts_with('_');
    !hidden && !underscore
}

/// A result as snekbox shapes it.
pub fn response(result: RunResult) -> EvalResponse {
    let returncode = match result.status {
        Status::Ok | Status::Error => result.exit_code,
        // nsjail kills the program at its time limit: snekbox reports 137.
        Status::Timeout => Some(128 + SIGKILL),
        // snekbox stops nsjail with SIGTERM when the output is over its cap.
        Status::OutputLimit => Some(128 + SIGTERM),
        Status::CpuLimit | Status::MemoryLimit | Status::Killed | Status::Rejected => result
            .signal
            .map(|s| 128 + s)
            .or(result.exit_code)
            .or(Some(128 + SIGKILL)),
        // snekbox answers null when the sandbox itself failed, with the reason as output.
        Status::InternalError => None,
    };
    let (Some(stdout), Some(stderr)) = (
        text(&result.stdout, result.stdout_truncated),
        text(&result.stderr, result.stderr_truncated),
    ) else {
        return failed(INVALID_UNICODE);
    };
    let mut stdout = stdout + &stderr;
    if result.status == Status::InternalError {
        stdout.push_str(result.message.as_deref().unwrap_or("the sandbox failed"));
    }
    let mut files: Vec<EvalOutputFile> = result
        .files
        .into_iter()
        .filter(|f| returned(&f.path))
        .map(|f| EvalOutputFile {
            size: f.content.len() as u64,
            content: STANDARD.encode(&f.content),
            path: f.path,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    EvalResponse {
        stdout,
        returncode,
        files,
    }
}

#[cfg(test)]
mod tests;
