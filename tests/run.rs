//! End to end through the socket: what a run returns, for every kind of ending the core handles.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{daemon, err, ok_stdout, out, privileged, run, run_spec, spec};
use sandfork_protocol::client::Client;
use sandfork_protocol::{LimitsRequest, Request, Response, Status};

#[tokio::test]
async fn hello_world() {
    if !privileged("hello_world") {
        return;
    }
    let result = run("print('hello, world')").await;
    assert_eq!(ok_stdout(&result), "hello, world\n");
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.signal, None);
    assert!(result.stderr.is_empty());
    assert!(!result.stdout_truncated && !result.stderr_truncated);
    assert!(result.timings.total_ms > 0.0 && result.usage.wall_ms > 0.0);
    assert!(result.usage.max_rss_kb > 0, "rusage must be reported");
}

#[tokio::test]
async fn stdout_and_stderr_are_kept_apart() {
    if !privileged("stdout_and_stderr_are_kept_apart") {
        return;
    }
    let result =
        run("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nprint('out again')")
            .await;
    assert_eq!(ok_stdout(&result), "to out\nout again\n");
    assert_eq!(err(&result), "to err\n");
}

#[tokio::test]
async fn uncaught_exception_is_error_with_traceback() {
    if !privileged("uncaught_exception_is_error_with_traceback") {
        return;
    }
    let result = run("x = 1\ny = x / 0\n").await;
    assert_eq!(result.status, Status::Error);
    assert_eq!(result.exit_code, Some(1));
    let stderr = err(&result);
    assert!(
        stderr.contains("Traceback (most recent call last)"),
        "{stderr}"
    );
    assert!(stderr.contains("File \"main.py\", line 2"), "{stderr}");
    assert!(stderr.contains("y = x / 0"), "source line shown: {stderr}");
    assert!(
        stderr.contains("ZeroDivisionError: division by zero"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("zygote"),
        "the zygote's own frames are hidden: {stderr}"
    );
}

#[tokio::test]
async fn syntax_error_is_error() {
    if !privileged("syntax_error_is_error") {
        return;
    }
    let result = run("def broken(:\n    pass\n").await;
    assert_eq!(result.status, Status::Error);
    assert!(err(&result).contains("SyntaxError"), "{}", err(&result));
}

#[tokio::test]
async fn sys_exit_code_is_returned() {
    if !privileged("sys_exit_code_is_returned") {
        return;
    }
    let result = run("import sys\nprint('bye')\nsys.exit(3)").await;
    assert_eq!(result.status, Status::Error);
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(out(&result), "bye\n");
    let zero = run("import sys\nsys.exit(0)").await;
    assert_eq!(zero.status, Status::Ok);
    let message = run("import sys\nsys.exit('fatal: no input')").await;
    assert_eq!(message.exit_code, Some(1));
    assert_eq!(err(&message), "fatal: no input\n");
}

#[tokio::test]
async fn stdin_and_argv_reach_the_program() {
    if !privileged("stdin_and_argv_reach_the_program") {
        return;
    }
    let mut request =
        spec("import sys\ndata = sys.stdin.read()\nprint(data.upper(), sys.argv[1:])");
    request.stdin = b"some input\nover two lines".to_vec();
    request.argv = vec!["-a".into(), "b c".into()];
    let result = run_spec(request).await;
    assert_eq!(
        ok_stdout(&result),
        "SOME INPUT\nOVER TWO LINES ['-a', 'b c']\n"
    );
}

#[tokio::test]
async fn unicode_round_trips() {
    if !privileged("unicode_round_trips") {
        return;
    }
    let result = run("s = 'héllo wörld ✓ 日本'\nprint(s)\nprint(len(s))").await;
    assert_eq!(ok_stdout(&result), "héllo wörld ✓ 日本\n16\n");
}

#[tokio::test]
async fn infinite_loop_times_out_within_deadline() {
    if !privileged("infinite_loop_times_out_within_deadline") {
        return;
    }
    let mut request = spec("while True:\n    pass\n");
    request.limits.timeout_ms = Some(1000);
    let started = Instant::now();
    let result = run_spec(request).await;
    let elapsed = started.elapsed();
    assert_eq!(result.status, Status::Timeout, "{:?}", result.message);
    assert_eq!(result.signal, Some(libc::SIGKILL));
    assert!(
        result.usage.wall_ms <= 1200.0,
        "killed {} ms after start; deadline 1000 ms + 200 ms",
        result.usage.wall_ms
    );
    assert!(
        elapsed < Duration::from_millis(1000 + 1500),
        "result took {elapsed:?} to arrive"
    );
}

#[tokio::test]
async fn print_flood_is_capped_and_stopped() {
    if !privileged("print_flood_is_capped_and_stopped") {
        return;
    }
    let mut request = spec("while True:\n    print('x' * 1000)\n");
    request.limits.output_bytes = Some(64 * 1024);
    let result = run_spec(request).await;
    assert_eq!(result.status, Status::OutputLimit, "{:?}", result.message);
    assert!(result.stdout_truncated);
    assert_eq!(result.stdout.len(), 64 * 1024);
    // The default cap too (1 MiB), on stderr.
    let result = run("import sys\nwhile True:\n    sys.stderr.write('y' * 4096)\n").await;
    assert_eq!(result.status, Status::OutputLimit);
    assert!(result.stderr_truncated && !result.stdout_truncated);
    assert_eq!(result.stderr.len(), 1024 * 1024);
    // And the daemon is fine afterwards.
    assert_eq!(ok_stdout(&run("print('still here')").await), "still here\n");
}

#[tokio::test]
async fn output_just_under_the_cap_is_complete() {
    if !privileged("output_just_under_the_cap_is_complete") {
        return;
    }
    let mut request = spec("import sys\nsys.stdout.write('z' * 65536)\n");
    request.limits.output_bytes = Some(65536);
    let result = run_spec(request).await;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(result.stdout.len(), 65536);
    assert!(!result.stdout_truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_runs_get_their_own_output() {
    if !privileged("fifty_concurrent_runs_get_their_own_output") {
        return;
    }
    let code =
        "import sys, time\nn = int(sys.argv[1])\ntime.sleep(0.02)\nprint(n, n * n, 'x' * n)\n";
    let mut tasks = Vec::new();
    for n in 0..50u32 {
        tasks.push(tokio::spawn(async move {
            let mut request = spec(code);
            request.argv = vec![n.to_string()];
            (n, run_spec(request).await)
        }));
    }
    for task in tasks {
        let (n, result) = task.await.expect("task");
        let stdout = ok_stdout(&result);
        assert_eq!(
            stdout,
            format!("{n} {} {}\n", n * n, "x".repeat(n as usize))
        );
    }
}

#[tokio::test]
async fn many_runs_in_flight_on_one_connection() {
    if !privileged("many_runs_in_flight_on_one_connection") {
        return;
    }
    let mut client = Client::connect(&daemon().socket).await.expect("connect");
    for id in 1..=10u64 {
        let mut request = spec(
            "import sys, time\ntime.sleep(0.05 * (10 - int(sys.argv[1])) / 10)\nprint(sys.argv[1])",
        );
        request.argv = vec![id.to_string()];
        client
            .send(&Request::Run { id, spec: request })
            .await
            .expect("send");
    }
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 10 {
        match client.recv().await.expect("recv") {
            Response::Result { id, result } => {
                seen.insert(id, ok_stdout(&result));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for (id, stdout) in seen {
        assert_eq!(stdout, format!("{id}\n"));
    }
}

#[tokio::test]
async fn unknown_profile_and_raised_limits_are_rejected() {
    if !privileged("unknown_profile_and_raised_limits_are_rejected") {
        return;
    }
    let mut request = spec("print(1)");
    request.profile = Some("no-such-profile".into());
    let result = run_spec(request).await;
    assert_eq!(result.status, Status::Rejected);
    assert!(result.message.unwrap().contains("unknown profile"));

    let mut request = spec("print(1)");
    request.limits = LimitsRequest {
        timeout_ms: Some(10 * 60 * 1000),
        ..Default::default()
    };
    let result = run_spec(request).await;
    assert_eq!(result.status, Status::Rejected);
    assert!(result.message.unwrap().contains("exceeds"));

    let big = format!("x = '{}'", "a".repeat(1024 * 1024 + 10));
    let result = run(&big).await;
    assert_eq!(result.status, Status::Rejected);
    assert!(result.message.unwrap().contains("code is"));
}

#[tokio::test]
async fn the_working_directory_is_a_private_writable_tmpfs() {
    if !privileged("the_working_directory_is_a_private_writable_tmpfs") {
        return;
    }
    let code = r#"
import os, tempfile
print(os.getcwd(), os.listdir('.'))
with open('notes.txt', 'w') as f:
    f.write('data')
with tempfile.NamedTemporaryFile(dir='.') as t:
    t.write(b'x')
print(open('notes.txt').read(), sorted(os.listdir('.')))
"#;
    assert_eq!(
        ok_stdout(&run(code).await),
        "/sandbox/work []\ndata ['notes.txt']\n"
    );
}

#[tokio::test]
async fn threads_and_stdlib_work() {
    if !privileged("threads_and_stdlib_work") {
        return;
    }
    let code = r#"
import threading, json, re, decimal, datetime, hashlib, random, sqlite3, asyncio, zlib
results = []
threads = [threading.Thread(target=lambda i=i: results.append(i * i)) for i in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
db = sqlite3.connect(':memory:'); db.execute('create table t (x)'); db.execute('insert into t values (42)')
async def main():
    await asyncio.sleep(0)
    return 'async'
print(sorted(results), json.dumps({'a': 1}), db.execute('select x from t').fetchone()[0],
      asyncio.run(main()), len(zlib.compress(b'a' * 1000)) < 100, decimal.Decimal('1.1') + 1)
"#;
    assert_eq!(
        ok_stdout(&run(code).await),
        "[0, 1, 4, 9] {\"a\": 1} 42 async True 2.1\n"
    );
}

#[tokio::test]
async fn randomness_differs_between_runs() {
    if !privileged("randomness_differs_between_runs") {
        return;
    }
    let code = "import random, os, secrets\nprint(random.random(), os.urandom(8).hex(), secrets.token_hex(8))";
    let a = ok_stdout(&run(code).await);
    let b = ok_stdout(&run(code).await);
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split(' ').collect(), b.split(' ').collect());
    for i in 0..3 {
        assert_ne!(a[i], b[i], "source {i} repeated across runs");
    }
}

// ---- the CLI ----------------------------------------------------------------------------

fn cli(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .args(args)
        .env("SANDFORK_SOCKET", &daemon().socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandfork");
    feed(&mut child, stdin);
    child.wait_with_output().expect("sandfork output")
}

/// Writes `bytes` to the child's stdin and closes it; if the child has already gone, fails
/// with what it printed, not a bare broken pipe.
fn feed(child: &mut std::process::Child, bytes: &[u8]) {
    let written = child.stdin.take().unwrap().write_all(bytes);
    if let Err(error) = written {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        panic!("sandfork did not take its stdin ({error}); it exited {status}: {stderr}");
    }
}

#[test]
fn cli_run_json_prints_one_object() {
    if !privileged("cli_run_json_prints_one_object") {
        return;
    }
    let output = cli(&["run", "--json", "-"], b"print(1)");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "exactly one JSON line: {text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["status"], "ok");
    assert_eq!(value["stdout"], "1\n");
    assert_eq!(value["stderr"], "");
    assert_eq!(value["exit_code"], 0);
    assert!(value["signal"].is_null());
    assert_eq!(value["stdout_truncated"], false);
    assert_eq!(value["stderr_truncated"], false);
    for key in ["wall_ms", "cpu_ms", "max_rss_kb"] {
        assert!(value["usage"][key].is_number(), "usage.{key}: {value}");
    }
    for key in ["queue_ms", "spawn_ms", "run_ms", "total_ms"] {
        assert!(value["timings"][key].is_number(), "timings.{key}: {value}");
    }
}

#[test]
fn cli_run_passes_output_and_exit_code_through() {
    if !privileged("cli_run_passes_output_and_exit_code_through") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("prog.py");
    std::fs::write(&script, "import sys\nprint(sys.stdin.read().strip(), sys.argv[1:])\nprint('oops', file=sys.stderr)\nsys.exit(3)\n").unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "from a file\n").unwrap();
    let output = cli(
        &[
            "run",
            "--timeout-ms",
            "5000",
            "--stdin",
            input.to_str().unwrap(),
            script.to_str().unwrap(),
            "x",
            "--y",
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "from a file ['x', '--y']\n"
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), "oops\n");

    let timeout = cli(&["run", "--timeout-ms", "300", "-"], b"while True: pass\n");
    assert_eq!(timeout.status.code(), Some(124), "{timeout:?}");
}

/// What `POST /v1/execute` can do, `sandfork run` can: function mode, input files, returned
/// files written (path-safe) to a directory, the output cap, `--arg`, and a `--json` with the
/// request id, `warm`, the result and files, and the rejection kind.
#[test]
fn cli_run_does_what_http_can() {
    if !privileged("cli_run_does_what_http_can") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.csv");
    std::fs::write(&data, "a,1\nb,2\n").unwrap();
    let helper = dir.path().join("helper.py");
    std::fs::write(&helper, "def twice(x):\n    return 2 * x\n").unwrap();
    let program = dir.path().join("prog.py");
    std::fs::write(
        &program,
        "import os, sys, helper\n\
         def main():\n\
         \x20   rows = open('in/data.csv').read().split()\n\
         \x20   os.makedirs('out/deep')\n\
         \x20   open('out/deep/r.txt', 'w').write('written')\n\
         \x20   print('printed')\n\
         \x20   return {'rows': helper.twice(len(rows)), 'argv': sys.argv[1:]}\n",
    )
    .unwrap();
    let out_dir = dir.path().join("got");
    let data_arg = format!("{}:in/data.csv", data.display());
    let output = cli(
        &[
            "run",
            "--function",
            "--file",
            &data_arg,
            "--file",
            helper.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--arg",
            "--looks-like-a-flag",
            program.to_str().unwrap(),
            "tail",
        ],
        b"",
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "printed\n{\"rows\": 4, \"argv\": [\"--looks-like-a-flag\", \"tail\"]}\n"
    );
    let written = std::fs::read_to_string(out_dir.join("out/deep/r.txt")).unwrap();
    assert_eq!(written, "written");

    let json = cli(
        &["run", "--json", "--function", "--file", &data_arg, "-"],
        b"def main():\n    open('o.txt', 'w').write('x')\n    return len(open('in/data.csv').read())\n",
    );
    assert!(json.status.success(), "{json:?}");
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["result"], 8, "{value}");
    assert_eq!(value["files"][0]["path"], "o.txt");
    assert!(value["warm"].is_boolean() && value["request_id"].as_str().unwrap().starts_with("r-"));
    assert!(value.get("rejection").is_none(), "{value}");

    let capped = cli(
        &["run", "--json", "--output-bytes", "10", "-"],
        b"print('x' * 100)",
    );
    assert_eq!(capped.status.code(), Some(137), "{capped:?}");
    let value: serde_json::Value = serde_json::from_slice(&capped.stdout).unwrap();
    assert_eq!(
        (value["status"].as_str(), value["stdout"].as_str()),
        (Some("output_limit"), Some("xxxxxxxxxx"))
    );

    let refused = cli(
        &["run", "--json", "--timeout-ms", "999999999", "-"],
        b"print(1)",
    );
    assert_eq!(refused.status.code(), Some(125), "{refused:?}");
    let value: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(value["status"], "rejected");
    assert_eq!(value["rejection"]["kind"], "limit_above_ceiling", "{value}");

    let unreadable = cli(
        &["run", "--json", "--file", "/nonexistent/in.txt", "-"],
        b"print(1)",
    );
    assert_eq!(unreadable.status.code(), Some(125));
    let value: serde_json::Value = serde_json::from_slice(&unreadable.stdout).unwrap();
    assert_eq!(value["error"]["kind"], "invalid_input", "{value}");
}

#[test]
fn cli_ping_and_unreachable_daemon() {
    if !privileged("cli_ping_and_unreachable_daemon") {
        return;
    }
    let output = cli(&["ping"], b"");
    assert!(output.status.success(), "{output:?}");
    let missing = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .args(["ping", "--socket", "/nonexistent/sandfork.sock"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot connect"));
    let run_missing = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .args(["run", "--socket", "/nonexistent/sandfork.sock", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(run_missing.status.code(), Some(125));
}

#[test]
fn cli_run_stream_prints_output_as_it_arrives() {
    if !privileged("cli_run_stream_prints_output_as_it_arrives") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .args(["run", "--stream", "-"])
        .env("SANDFORK_SOCKET", &daemon().socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandfork");
    let code = b"import sys, time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')\nsys.exit(4)\n";
    feed(&mut child, code);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    // The program still sleeps: the first line came while it ran.
    assert!(
        child.try_wait().unwrap().is_none(),
        "sandfork exited before the program's end"
    );
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "second\n");
    assert_eq!(
        child.wait().unwrap().code(),
        Some(4),
        "the exit code as without --stream"
    );
    // Refused before stdin is read: no stdin to write (it would race the exit: EPIPE).
    let both = Command::new(env!("CARGO_BIN_EXE_sandfork"))
        .args(["run", "--stream", "--json", "-"])
        .env("SANDFORK_SOCKET", &daemon().socket)
        .stdin(Stdio::null())
        .output()
        .expect("run sandfork");
    assert_eq!(
        both.status.code(),
        Some(2),
        "--stream and --json exclude each other"
    );
}
