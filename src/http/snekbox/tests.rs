//! Unit tests of `src/http/snekbox.rs`: each rule against snekbox's own behaviour.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use sandfork_protocol::{FileData, RunResult, Status};

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
        executable_path: None,
    }
}

fn config() -> EvalConfig {
    EvalConfig {
        profile: Some("snek".into()),
        executables: BTreeMap::from([
            ("/snekbin/python/default/bin/python".into(), "snek".into()),
            ("/snekbin/python/3.13/bin/python".into(), "older".into()),
        ]),
    }
}

fn run_of(request: EvalRequest) -> RunSpec {
    match plan(request, &config()).unwrap() {
        Plan::Run(spec) => spec,
        Plan::Answer(answer) => panic!("no run: {answer:?}"),
    }
}

fn answer_of(request: EvalRequest) -> EvalResponse {
    match plan(request, &config()).unwrap() {
        Plan::Answer(answer) => answer,
        Plan::Run(spec) => panic!("a run: {spec:?}"),
    }
}

fn code(spec: &RunSpec) -> String {
    String::from_utf8(spec.code.clone()).unwrap()
}

#[test]
fn input_is_dash_c_code_and_leading_empty_arguments_are_dropped() {
    for request in [
        eval(Some("print(1)"), None, &[]),
        eval(Some("print(1)"), Some(&["-c"]), &[]),
        eval(None, Some(&["-c", "print(1)"]), &[]),
        eval(None, Some(&["", "", "-c", "print(1)"]), &[]),
    ] {
        let spec = run_of(request);
        assert_eq!(code(&spec), "print(1)");
        assert!(spec.argv.is_empty());
        assert_eq!(spec.profile.as_deref(), Some("snek"));
    }
    let spec = run_of(eval(None, Some(&["-c", "print(2)", "a", "", "b"]), &[]));
    assert_eq!(spec.argv, ["a", "", "b"], "later empty arguments stay");
}

#[test]
fn dash_m_runs_the_module_as_python_does() {
    let spec = run_of(eval(Some("pass"), Some(&["", "-m", "timeit"]), &[]));
    assert!(
        code(&spec).contains("_runpy._run_module_as_main(\"timeit\")"),
        "{}",
        code(&spec)
    );
    assert_eq!(spec.argv, ["pass"]);
    for option in ["-c", "-m"] {
        let spec = run_of(eval(None, Some(&[option]), &[]));
        assert!(
            code(&spec).contains(&format!("Argument expected for the {option} option")),
            "{}",
            code(&spec)
        );
    }
}

#[test]
fn a_file_argument_runs_that_file_or_says_it_cannot_be_opened() {
    // "print(3)" in base64
    let spec = run_of(eval(
        None,
        Some(&["./main.py", "x"]),
        &[("main.py", "cHJpbnQoMyk=")],
    ));
    assert_eq!(code(&spec), "print(3)");
    assert_eq!(spec.argv, ["x"]);
    assert_eq!(spec.files.len(), 1, "the file is written too");
    // snekbox's [""] + input: the input is a file name Python cannot open (exit 2).
    let spec = run_of(eval(Some("print('hello')"), Some(&[""]), &[]));
    assert!(
        code(&spec).contains("can't open file") && code(&spec).contains("SystemExit(2)"),
        "{}",
        code(&spec)
    );
}

#[test]
fn executable_path_picks_a_configured_profile_and_nothing_else() {
    let mut request = eval(Some("1"), None, &[]);
    request.executable_path = Some("/snekbin/python/3.13/bin/python".into());
    assert_eq!(run_of(request).profile.as_deref(), Some("older"));
    let mut request = eval(Some("1"), None, &[]);
    request.executable_path = Some(String::new());
    assert_eq!(run_of(request).profile.as_deref(), Some("snek"));
    let unset = EvalConfig::default();
    let spec = match plan(eval(Some("1"), None, &[]), &unset).unwrap() {
        Plan::Run(spec) => spec,
        Plan::Answer(answer) => panic!("{answer:?}"),
    };
    assert_eq!(
        spec.profile, None,
        "no [eval]: the daemon's default profile"
    );
    for path in ["/abc/def", "/snekbin", "/etc/hostname", "/usr/bin/python3"] {
        let mut request = eval(Some("1"), None, &[]);
        request.executable_path = Some(path.into());
        let err = plan(request, &config()).unwrap_err();
        assert_eq!(
            (err.status, err.kind.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_executable_path")
        );
    }
}

#[test]
fn file_paths_are_normalized_and_never_leave_the_working_directory() {
    for (path, normalized) in [
        ("file.txt", "file.txt"),
        ("./0.jpg", "0.jpg"),
        ("path/to/file", "path/to/file"),
        ("folder/../hm", "hm"),
        ("folder/./to/./somewhere", "folder/to/somewhere"),
        ("traversal/but/../not/beyond/../root", "traversal/not/root"),
        (r"backslash\okay", r"backslash\okay"),
        ("numbers/0123456789", "numbers/0123456789"),
    ] {
        let spec = run_of(eval(Some("1"), None, &[(path, "")]));
        assert_eq!(spec.files[0].path, normalized, "{path}");
    }
    for path in [
        "../secrets",
        "../../dir",
        "dir/../../secrets",
        "dir/var/../../../file",
        "/",
        "/etc/passwd",
        "a\0b",
        ".",
    ] {
        let err = plan(eval(Some("1"), None, &[(path, "")]), &config()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{path}");
    }
}

#[test]
fn files_that_cannot_be_written_answer_as_snekbox_does() {
    let answer = answer_of(eval(
        Some("1"),
        None,
        &[("dir/test.txt", "YWJj"), ("dir", "eHl6")],
    ));
    assert_eq!(
        (answer.returncode, answer.stdout.as_str()),
        (None, "IsADirectoryError: Failed to create file 'dir'.")
    );
    let answer = answer_of(eval(Some("1"), None, &[("dir", ""), ("dir/test.txt", "")]));
    assert_eq!(
        answer.stdout,
        "FileExistsError: Failed to create file 'dir/test.txt'."
    );
}

#[test]
fn a_nul_byte_in_an_argument_is_snekbox_value_error() {
    for request in [
        eval(Some("\0"), None, &[]),
        eval(None, Some(&["-c", "print(1)", "a\0"]), &[]),
    ] {
        let answer = answer_of(request);
        assert_eq!(
            (answer.returncode, answer.stdout.as_str()),
            (None, NULL_BYTE)
        );
    }
}

#[test]
fn requests_without_a_program_are_400() {
    for request in [
        eval(None, None, &[]),
        eval(None, Some(&[]), &[]),
        eval(None, Some(&["", ""]), &[]),
        eval(None, Some(&["-u", "-c", "1"]), &[]),
        eval(Some("print(1)"), None, &[("a", "not base64!")]),
    ] {
        let err = plan(request, &config()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{err:?}");
    }
}

#[test]
fn return_codes_follow_snekbox() {
    let mut result = RunResult::new(Status::Error);
    result.exit_code = Some(3);
    result.stdout = b"out\n".to_vec();
    result.stderr = b"err\n".to_vec();
    let answer = response(result);
    assert_eq!(
        (answer.returncode, answer.stdout.as_str()),
        (Some(3), "out\nerr\n")
    );
    assert_eq!(
        response(RunResult::new(Status::Timeout)).returncode,
        Some(137)
    );
    assert_eq!(
        response(RunResult::new(Status::OutputLimit)).returncode,
        Some(143),
        "snekbox SIGTERMs nsjail on an output flood"
    );
    let mut killed = RunResult::new(Status::Killed);
    killed.signal = Some(11);
    assert_eq!(response(killed).returncode, Some(139));
    let mut memory = RunResult::new(Status::MemoryLimit);
    memory.exit_code = Some(0);
    assert_eq!(
        response(memory).returncode,
        Some(0),
        "a worker killed at the limit; the first process exited by itself"
    );
    let broken = RunResult::new(Status::InternalError).with_message("zygote died");
    let answer = response(broken);
    assert_eq!(answer.returncode, None);
    assert!(answer.stdout.contains("zygote died"));
}

#[test]
fn output_that_is_not_utf8_is_snekbox_decode_error_unless_cut_at_the_cap() {
    let mut result = RunResult::new(Status::Ok);
    result.exit_code = Some(0);
    result.stdout = b"ok \xed\xb2\xa6\n".to_vec();
    let answer = response(result.clone());
    assert_eq!(
        (answer.returncode, answer.stdout.as_str()),
        (None, INVALID_UNICODE)
    );
    // Cut inside "é" at the cap: the partial character is dropped, not an error.
    result.status = Status::OutputLimit;
    result.stdout = b"caf\xc3".to_vec();
    result.stdout_truncated = true;
    let answer = response(result);
    assert_eq!(
        (answer.returncode, answer.stdout.as_str()),
        (Some(143), "caf")
    );
}

#[test]
fn output_files_leave_out_hidden_and_underscore_names_sorted_by_path() {
    let mut result = RunResult::new(Status::Ok);
    result.exit_code = Some(0);
    result.files = [
        "test.txt",
        "dir/test2.txt",
        "normal/.hidden.txt",
        ".hidden/b.txt",
        "_private",
        "dir/_x",
        "_dir/kept",
    ]
    .iter()
    .map(|path| FileData {
        path: path.to_string(),
        content: b"x".to_vec(),
    })
    .collect();
    let paths: Vec<String> = response(result).files.into_iter().map(|f| f.path).collect();
    assert_eq!(paths, ["_dir/kept", "dir/test2.txt", "test.txt"]);
}
