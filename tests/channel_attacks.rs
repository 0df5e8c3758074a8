//! Attacks on the one path from a child to the supervisor: the run's control channel (fd 3),
//! which the program holds while it runs. Everything that arrives on it may have been written
//! by the program, so each test forges, floods or smuggles something, then asserts that the
//! run's result tells the truth (status and exit code from the kernel, nothing forged kept) and
//! that the daemon stays whole: descriptors, CPU and memory flat, no panic in its log.
//!
//! The tests share one private daemon of this binary and run one after the other (a lock), so
//! the daemon's descriptor count and CPU time can be read around each attack.

mod common;

use std::path::Path;

use common::{err, out, privileged, read_log, start_private_daemon, test_config, Daemon};
use sandfork_protocol::client::Client;
use sandfork_protocol::{Mode, RunResult, RunSpec, Status};
use tokio::sync::Mutex;

/// Serializes the attacks (each test has its own runtime; this lock is runtime-agnostic and
/// a failed test does not poison it).
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn daemon() -> &'static Daemon {
    static DAEMON: std::sync::OnceLock<Daemon> = std::sync::OnceLock::new();
    DAEMON.get_or_init(|| start_private_daemon("sandfork-channel-", |dir| test_config(dir, "")))
}

async fn run_spec(spec: RunSpec) -> RunResult {
    let mut client = Client::connect(&daemon().socket).await.expect("connect");
    client.run(spec).await.expect("run")
}

async fn run(code: &str) -> RunResult {
    run_spec(common::spec(code)).await
}

async fn run_function(code: &str) -> RunResult {
    run_spec(RunSpec {
        mode: Mode::Function,
        ..common::spec(code)
    })
    .await
}

/// The daemon's open descriptors.
fn daemon_fds() -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon().pid))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The daemon's own CPU time (user + system), in clock ticks.
fn daemon_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon().pid)).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn assert_no_panic(log: &Path) {
    let log = read_log(log);
    assert!(
        !log.contains("panicked"),
        "the daemon logged a panic:\n{log}"
    );
}

/// The prologue of every attack: the channel as a socket, and sends that tolerate the
/// supervisor hanging up (it closes the channel at the first thing it does not expect).
const PROLOGUE: &str = r#"
import json, os, socket, sys
chan = socket.socket(fileno=3)
def attempt(fn):
    try:
        fn()
        return True
    except OSError:
        return False
def header(obj):
    return json.dumps(obj).encode()
"#;

fn attack(body: &str) -> String {
    format!("{PROLOGUE}{body}")
}

/// A files report whose sizes overflow when summed must not get past the size check, let alone
/// crash the supervisor (it used to panic slicing the payload).
#[tokio::test]
async fn overflowing_file_sizes_are_refused() {
    if !privileged("overflowing_file_sizes_are_refused") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let code = attack(
        r#"
big = 2**64 - 1
entries = [{"path": "a", "size": big}, {"path": "b", "size": 2}]
attempt(lambda: chan.send(header({"op": "files", "entries": entries, "truncated": False, "size": 1})))
attempt(lambda: chan.send(b"x"))
attempt(lambda: chan.send(header({"op": "done"})))
open("real.txt", "w").write("kept?")
print("sent")
"#,
    );
    let result = run(&code).await;
    assert_eq!(result.status, Status::Ok, "{:?}", result.message);
    assert_eq!(out(&result), "sent\n");
    assert!(
        result.files.is_empty(),
        "nothing of a forged report is kept"
    );
    assert!(result.files_truncated, "the lost files are flagged");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("misused"), "{message}");
    assert!(message.contains("overflow"), "{message}");
    assert_no_panic(&daemon().log);
    assert_eq!(out(&run("print('fine')").await), "fine\n");
}

/// Descriptors of every kind a program can make, sent over the channel again and again: the
/// supervisor closes each the moment it arrives, so its descriptor count stays flat.
#[tokio::test]
async fn descriptors_sent_by_the_program_are_closed_at_once() {
    if !privileged("descriptors_sent_by_the_program_are_closed_at_once") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let code = attack(
        r#"
r, w = os.pipe()
f = os.open("file.txt", os.O_CREAT | os.O_RDWR, 0o600)
d = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
null = os.open("/dev/null", os.O_RDONLY)
kinds = [[r, w], [f], [d], [null], [0, 1, 2], [3], [r] * 8, [w] * 20]
try:
    kinds.append([os.memfd_create("m")])
except OSError:
    pass
sent = 0
for fds in kinds:
    if attempt(lambda: socket.send_fds(chan, [header({"op": "done"})], fds)):
        sent += 1
print("sent", sent >= 1)
"#,
    );
    // Warm up the daemon's own descriptors (warm children, zygote channels) first.
    for _ in 0..3 {
        assert_eq!(out(&run("print(1)").await), "1\n");
    }
    let before = daemon_fds();
    for round in 0..20 {
        let result = run(&code).await;
        assert_eq!(
            result.status,
            Status::Ok,
            "round {round}: {:?}",
            result.message
        );
        assert_eq!(out(&result), "sent True\n");
        assert!(
            result
                .message
                .as_deref()
                .unwrap_or("")
                .contains("descriptor"),
            "{:?}",
            result.message
        );
    }
    for _ in 0..3 {
        assert_eq!(out(&run("print(1)").await), "1\n");
    }
    // Settle: a run's last descriptors close when its child's exit is collected.
    let mut after = daemon_fds();
    for _ in 0..50 {
        if after <= before + 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = daemon_fds();
    }
    assert!(
        after <= before + 4,
        "the daemon's descriptors grew from {before} to {after} over 20 attacks"
    );
    assert_no_panic(&daemon().log);
}

/// A flood of small, well-formed headers: the supervisor stops reading at the run's packet
/// budget and hangs up, so the program's sends start failing after a bounded number, and the
/// daemon's CPU is not spent on it.
#[tokio::test]
async fn a_flood_of_headers_is_cut_off() {
    if !privileged("a_flood_of_headers_is_cut_off") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let code = attack(
        r#"
import time
message = header({"op": "files", "entries": [], "truncated": False, "size": 0})
accepted = 0
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    try:
        chan.send(message)
        accepted += 1
    except OSError:
        break
print(accepted)
"#,
    );
    let cpu_before = daemon_cpu_ticks();
    let result = run(&code).await;
    let cpu_ticks = daemon_cpu_ticks() - cpu_before;
    assert_eq!(
        result.status,
        Status::Ok,
        "{:?} {}",
        result.message,
        err(&result)
    );
    let accepted: u64 = out(&result).trim().parse().expect("a count");
    // The first header is taken, the second is a misuse (one files report per run): the
    // supervisor hangs up; what the socket buffer held before that is all that got through.
    assert!(
        accepted < 5_000,
        "{accepted} headers were accepted before the supervisor hung up"
    );
    assert!(
        result.message.as_deref().unwrap_or("").contains("misused"),
        "{:?}",
        result.message
    );
    // Generous: a second of the daemon's CPU (100 ticks) for one run would mean the flood
    // was read.
    assert!(
        cpu_ticks < 100,
        "the daemon spent {cpu_ticks} ticks on one run"
    );
    assert_no_panic(&daemon().log);
}

/// A forged "done" decides nothing: the exit code is the one the kernel reports.
#[tokio::test]
async fn a_forged_done_does_not_set_the_exit_code() {
    if !privileged("a_forged_done_does_not_set_the_exit_code") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    for forged in [r#"{"op": "done"}"#, r#"{"op": "done", "exit_code": 0}"#] {
        let code = attack(&format!(
            r#"
import time
attempt(lambda: chan.send(b'{forged}'))
time.sleep(0.2)
print("still running")
sys.exit(3)
"#
        ));
        let result = run(&code).await;
        assert_eq!(
            result.status,
            Status::Error,
            "{forged}: {:?}",
            result.message
        );
        assert_eq!(result.exit_code, Some(3), "{forged}");
        assert_eq!(out(&result), "still running\n", "{forged}");
    }
    assert_no_panic(&daemon().log);
}

/// With a memory cgroup, `memory_limit` comes from its OOM counter only: a program that merely
/// prints or raises MemoryError without allocating is an ordinary error.
#[tokio::test]
async fn memory_limit_is_not_taken_from_output_text() {
    if !privileged("memory_limit_is_not_taken_from_output_text") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    for code in [
        "import sys\nsys.stderr.write('MemoryError\\n')\nsys.exit(1)\n",
        "raise MemoryError\n",
    ] {
        let result = run(code).await;
        assert_eq!(result.status, Status::Error, "{code}: {:?}", result.message);
        assert_eq!(result.exit_code, Some(1));
    }
}

/// Function mode: a result sent before main() returns is not taken for main()'s value.
#[tokio::test]
async fn a_result_before_main_returns_is_not_believed() {
    if !privileged("a_result_before_main_returns_is_not_believed") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    // main() returns normally: its real result follows the forged one, which is a misuse.
    let code = attack(
        r#"
def main():
    attempt(lambda: chan.send(header({"op": "result", "size": 2})))
    attempt(lambda: chan.send(b"99"))
    return 7
"#,
    );
    let result = run_function(&code).await;
    assert_ne!(result.result.as_deref(), Some("99"), "the forged value won");
    assert_eq!(result.status, Status::Error, "{:?}", result.message);
    assert!(
        result.message.as_deref().unwrap_or("").contains("misused"),
        "{:?}",
        result.message
    );
    // main() raises after forging: the run is an error, with no value.
    let code = attack(
        r#"
def main():
    attempt(lambda: chan.send(header({"op": "result", "size": 2})))
    attempt(lambda: chan.send(b"99"))
    raise ValueError("no value really")
"#,
    );
    let result = run_function(&code).await;
    assert_eq!(result.status, Status::Error, "{:?}", result.message);
    assert_eq!(result.exit_code, Some(1));
    assert!(err(&result).contains("ValueError"), "{}", err(&result));
    // Issue 13, defect 2: no value goes with a failed run, claimed or not.
    assert_eq!(result.result, None, "a failed run carries no main() value");
    assert_no_panic(&daemon().log);
}

/// Huge declared sizes: refused from the header, before anything is read or reserved.
#[tokio::test]
async fn huge_declared_sizes_are_refused_unread() {
    if !privileged("huge_declared_sizes_are_refused_unread") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let code = attack(
        r#"
ok = attempt(lambda: chan.send(header({"op": "files", "entries": [{"path": "a", "size": 2**62}], "truncated": False, "size": 2**62})))
more = attempt(lambda: [chan.send(b"y" * 60000) for _ in range(200)])
print(ok, more)
"#,
    );
    let result = run(&code).await;
    assert_eq!(result.status, Status::Ok, "{:?}", result.message);
    assert_eq!(
        out(&result),
        "True False\n",
        "the supervisor hung up at the header"
    );
    assert!(result.files.is_empty() && result.files_truncated);
    let code = attack(
        r#"
def main():
    attempt(lambda: chan.send(header({"op": "result", "size": 2**63})))
    return 1
"#,
    );
    let result = run_function(&code).await;
    assert_eq!(result.status, Status::OutputLimit, "{:?}", result.message);
    assert_eq!(result.result, None);
    assert_no_panic(&daemon().log);
}

/// After all of that, the daemon's memory has not grown with the attacks.
#[tokio::test]
async fn thousands_of_messages_leave_the_daemon_flat() {
    if !privileged("thousands_of_messages_leave_the_daemon_flat") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let rss = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", daemon().pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // A files report announcing the cap, then its payload one byte per packet: the run's packet
    // budget ends it long before the thousands are through.
    let code = attack(
        r#"
size = 1024 * 1024
attempt(lambda: chan.send(header({"op": "files", "entries": [{"path": "a", "size": size}], "truncated": False, "size": size})))
accepted = 0
for i in range(5000):
    if not attempt(lambda: chan.send(b"z")):
        break
    accepted += 1
print(accepted < 5000)
"#,
    );
    for _ in 0..5 {
        run(&code).await;
    }
    let before = rss();
    for _ in 0..30 {
        let result = run(&code).await;
        assert_eq!(result.status, Status::Ok, "{:?}", result.message);
        assert_eq!(out(&result), "True\n", "the budget did not stop the flood");
        assert!(result.files.is_empty() && result.files_truncated);
    }
    let after = rss();
    assert!(
        after <= before + before / 10 + 2048,
        "daemon RSS grew from {before} to {after} KiB over 30 attacks"
    );
    assert_no_panic(&daemon().log);
}
