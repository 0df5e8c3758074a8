//! Function mode (main()'s JSON value on its own channel) and files (in before the code runs,
//! out after it), end to end through the socket.

mod common;

use common::{err, ok_stdout, privileged, run_spec, spec};
use sandfork_protocol::{FileData, Mode, RejectKind, RunResult, RunSpec, Status};

fn function(code: &str) -> RunSpec {
    RunSpec {
        mode: Mode::Function,
        ..spec(code)
    }
}

fn file(path: &str, content: &[u8]) -> FileData {
    FileData {
        path: path.into(),
        content: content.to_vec(),
    }
}

fn rejection(result: &RunResult) -> RejectKind {
    assert_eq!(result.status, Status::Rejected, "{:?}", result.message);
    result.rejection.as_ref().expect("a rejection").kind
}

#[tokio::test]
async fn function_mode_returns_mains_value_apart_from_stdout() {
    if !privileged("function_mode_returns_mains_value_apart_from_stdout") {
        return;
    }
    let code = "def main():\n    print('side output')\n    return {'answer': 42, 'items': [1, 2.5, None, 'x'], 'ok': True}\n";
    let result = run_spec(function(code)).await;
    assert_eq!(ok_stdout(&result), "side output\n");
    let value: serde_json::Value = serde_json::from_str(result.result.as_deref().unwrap()).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"answer": 42, "items": [1, 2.5, null, "x"], "ok": true})
    );
    // None is a value too.
    let result = run_spec(function("def main():\n    return None\n")).await;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.result.as_deref(), Some("null"));
    // A value printed to stdout is never taken for the result.
    let result = run_spec(function(
        "print('{\"forged\": 1}')\ndef main():\n    return 7\n",
    ))
    .await;
    assert_eq!(result.result.as_deref(), Some("7"));
}

#[tokio::test]
async fn function_mode_errors_say_what_is_wrong() {
    if !privileged("function_mode_errors_say_what_is_wrong") {
        return;
    }
    let missing = run_spec(function("x = 1\n")).await;
    assert_eq!(missing.status, Status::Error);
    assert!(
        err(&missing).contains("must define a function main()"),
        "{}",
        err(&missing)
    );
    assert_eq!(missing.result, None);

    let unserializable = run_spec(function("def main():\n    return {1, 2}\n")).await;
    assert_eq!(unserializable.status, Status::Error);
    assert!(
        err(&unserializable).contains("not JSON-serializable"),
        "{}",
        err(&unserializable)
    );
    assert_eq!(unserializable.result, None);

    let nan = run_spec(function("def main():\n    return float('nan')\n")).await;
    assert_eq!(nan.status, Status::Error);

    let raises = run_spec(function("def main():\n    raise ValueError('bad input')\n")).await;
    assert_eq!(raises.status, Status::Error);
    assert!(err(&raises).contains("ValueError: bad input"));

    // Script mode ignores main().
    let script = run_spec(spec("def main():\n    return 1\nprint('script')")).await;
    assert_eq!(ok_stdout(&script), "script\n");
    assert_eq!(script.result, None);
}

#[tokio::test]
async fn files_go_in_before_the_code_and_come_back_out() {
    if !privileged("files_go_in_before_the_code_and_come_back_out") {
        return;
    }
    let code = r#"
import csv, os
rows = list(csv.reader(open('data/input.csv')))
total = sum(int(r[1]) for r in rows[1:])
with open('out.txt', 'w') as f:
    f.write(f'total={total}\n')
os.makedirs('reports/deep', exist_ok=True)
open('reports/deep/r.bin', 'wb').write(bytes(range(256)))
print(sorted(os.listdir('.')))
"#;
    let mut request = spec(code);
    request.files = vec![
        file("data/input.csv", b"name,n\na,1\nb,2\nc,39\n"),
        file("unused.txt", b"left alone"),
    ];
    let result = run_spec(request).await;
    assert_eq!(
        ok_stdout(&result),
        "['data', 'out.txt', 'reports', 'unused.txt']\n"
    );
    let mut files: Vec<(String, Vec<u8>)> = result
        .files
        .into_iter()
        .map(|f| (f.path, f.content))
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            ("out.txt".to_string(), b"total=42\n".to_vec()),
            ("reports/deep/r.bin".to_string(), (0..=255u8).collect()),
        ],
        "new files come back; unchanged inputs do not"
    );
    assert!(!result.files_truncated);
}

#[tokio::test]
async fn symlinks_fifos_and_devices_are_never_followed_or_read() {
    if !privileged("symlinks_fifos_and_devices_are_never_followed_or_read") {
        return;
    }
    let code = r#"
import os
os.symlink('/etc/passwd', 'passwd-link')
os.symlink('/dev/zero', 'zero-link')
os.symlink('real.txt', 'inner-link')
try:
    os.mkfifo('a-fifo')  # the sandbox may forbid creating fifos at all (mknod); both are fine
except PermissionError:
    pass
open('real.txt', 'w').write('real')
print('ok')
"#;
    let result = run_spec(spec(code)).await;
    assert_eq!(ok_stdout(&result), "ok\n");
    let paths: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["real.txt"], "only the regular file comes back");
}

#[tokio::test]
async fn output_files_are_capped() {
    if !privileged("output_files_are_capped") {
        return;
    }
    let code = "for i in range(150):\n    open(f'f{i:03}.txt', 'w').write('x')\n";
    let result = run_spec(spec(code)).await;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.files.len(), 100);
    assert!(result.files_truncated);
    let mut request =
        spec("open('big.bin', 'wb').write(b'y' * 2_000_000)\nopen('small.txt', 'w').write('s')\n");
    request.limits.output_bytes = Some(1_000_000);
    let result = run_spec(request).await;
    let paths: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["small.txt"]);
    assert!(result.files_truncated);
}

#[tokio::test]
async fn bad_input_files_are_rejected_before_anything_runs() {
    if !privileged("bad_input_files_are_rejected_before_anything_runs") {
        return;
    }
    let cases: Vec<(Vec<FileData>, RejectKind)> = vec![
        (vec![file("/etc/passwd", b"x")], RejectKind::InvalidFiles),
        (vec![file("../escape", b"x")], RejectKind::InvalidFiles),
        (vec![file("a/../../b", b"x")], RejectKind::InvalidFiles),
        (vec![file("nul\0name", b"x")], RejectKind::InvalidFiles),
        (vec![file("", b"x")], RejectKind::InvalidFiles),
        (
            vec![file("same", b"1"), file("same", b"2")],
            RejectKind::InvalidFiles,
        ),
        (
            (0..101).map(|i| file(&format!("f{i}"), b"")).collect(),
            RejectKind::InvalidFiles,
        ),
        (
            vec![file("huge", &vec![0u8; 8 * 1024 * 1024 + 1])],
            RejectKind::TooLarge,
        ),
    ];
    for (files, kind) in cases {
        let mut request = spec("open('/sandbox/work/ran', 'w')\nprint('ran')");
        request.files = files;
        let result = run_spec(request).await;
        assert_eq!(rejection(&result), kind, "{:?}", result.message);
        assert!(result.stdout.is_empty());
    }
}

/// Issue 13, defect 1: a run's import path behaves as `python main.py` in its working directory
/// does, so the modules it was given (or writes) import.
#[tokio::test]
async fn uploaded_modules_import_as_with_python_main_py() {
    if !privileged("uploaded_modules_import_as_with_python_main_py") {
        return;
    }
    let code = "import lib\nfrom pkg import mod\n\
                open('written.py', 'w').write('Y = 1\\n')\nimport written\n\
                print(lib.X + written.Y, mod.f())\n";
    let result = run_spec(RunSpec {
        files: vec![
            file("lib.py", b"X = 41\n"),
            file("pkg/__init__.py", b""),
            file("pkg/mod.py", b"def f():\n    return 'pkg'\n"),
        ],
        ..spec(code)
    })
    .await;
    assert_eq!(ok_stdout(&result), "42 pkg\n", "{}", err(&result));
    // Only the run's own directory was added: the stdlib stays where it was, read-only.
    let result = run_spec(spec(
        "import sys, os\nprint(sys.path[0] == os.getcwd())\n\
         try:\n    open(os.path.join(os.path.dirname(os.__file__), 'evil.py'), 'w')\n\
         except OSError:\n    print('read-only')\n",
    ))
    .await;
    assert_eq!(ok_stdout(&result), "True\nread-only\n");
}

/// Issue 13, defect 8: a file whose name is not UTF-8 is left out alone, and the result says so;
/// the other files come back.
#[tokio::test]
async fn a_file_named_in_something_else_than_utf8_is_left_out_alone() {
    if !privileged("a_file_named_in_something_else_than_utf8_is_left_out_alone") {
        return;
    }
    let code = "import os\nopen('good.txt', 'w').write('kept')\n\
                fd = os.open(b'bad\\xff', os.O_CREAT | os.O_WRONLY, 0o644)\n\
                os.write(fd, b'x')\nos.close(fd)\nprint('done')\n";
    let result = run_spec(spec(code)).await;
    assert_eq!(ok_stdout(&result), "done\n");
    let paths: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["good.txt"], "{:?}", result.message);
    assert_eq!(result.files[0].content, b"kept");
    assert!(result.files_truncated, "the left-out file is flagged");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("not UTF-8"), "{message}");
}

/// Issue 13, defect 2: a deep tree does not turn a successful program into a failure; the walk
/// is bounded and says it left something out. And files are collected from the run's
/// directory, not from wherever the program's working directory ended up.
#[tokio::test]
async fn a_deep_tree_is_walked_within_bounds_from_the_runs_directory() {
    if !privileged("a_deep_tree_is_walked_within_bounds_from_the_runs_directory") {
        return;
    }
    let deep = "import os\ntop = os.getcwd()\nfor _ in range(1000):\n    os.mkdir('d')\n    os.chdir('d')\n\
                os.chdir(top)\nopen('top.txt', 'w').write('t')\nprint('done')\n";
    let result = run_spec(spec(deep)).await;
    assert_eq!(ok_stdout(&result), "done\n", "{}", err(&result));
    assert_eq!(result.exit_code, Some(0));
    let paths: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["top.txt"]);
    assert!(result.files_truncated, "the walk says it stopped short");

    // A wide tree: the walk stops at its entry bound, and says so.
    let wide = "import os\nopen('a.txt', 'w').write('a')\nfor i in range(12000):\n    os.mkdir('z%d' % i)\nprint('wide')\n";
    let result = run_spec(spec(wide)).await;
    assert_eq!(ok_stdout(&result), "wide\n", "{}", err(&result));
    let paths: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a.txt"]);
    assert!(result.files_truncated, "the walk says it stopped short");

    let moved =
        "import os\nos.mkdir('out')\nos.chdir('out')\nopen('f', 'w').write('x')\nprint('moved')\n";
    let result = run_spec(spec(moved)).await;
    assert_eq!(ok_stdout(&result), "moved\n");
    let paths: Vec<&str> = result.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["out/f"]);
    assert!(!result.files_truncated);
}
