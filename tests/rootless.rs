//! Rootless mode end to end: `sandforkd` started by an unprivileged user (uid 65534, `nobody`,
//! when the tests run as root; the test's own uid otherwise), with the distribution's
//! /usr/bin/python3 (the pyenv one under /root is unreadable to that user). Every request goes
//! through the `sandfork` CLI run as the same user, the daemon's own `local` tenant.
//!
//! A host without unprivileged user namespaces makes these tests print `SKIPPED: <reason>`
//! (the daemon's own start-up error); with `CI` set they fail instead.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{descendants, read_log};
use serde_json::Value;

/// The unprivileged host uid (and gid) the daemon and the CLI run as when we are root.
const NOBODY: u32 = 65_534;
/// The interpreter every user can read.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A rootless daemon and the files it was given.
struct RootlessDaemon {
    /// Its private directory: config, socket, runtime dir, log; owned by `uid`.
    dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pid: u32,
}

/// The uid the daemon and the CLI run as: `None` means "as we are" (not root already).
fn run_as() -> Option<u32> {
    nix::unistd::geteuid().is_root().then_some(NOBODY)
}

fn daemon_uid() -> u32 {
    run_as().unwrap_or_else(|| nix::unistd::geteuid().as_raw())
}

/// A command run as the unprivileged user, with a plain environment.
fn unprivileged(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(program);
    if let Some(id) = run_as() {
        // As root, std also drops the supplementary groups.
        command.uid(id).gid(id);
    }
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("XDG_RUNTIME_DIR", dir)
        .env("RUST_LOG", "info");
    command
}

/// Returns true (after printing SKIPPED, or panicking under CI) when the test cannot run.
fn skip(test: &str, reason: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run on CI: {reason}");
    }
    println!("SKIPPED: {test}: {reason}");
    true
}

/// A fresh directory for one daemon, owned by the unprivileged user.
fn private_dir(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
        .keep();
    if let Some(id) = run_as() {
        let (uid, gid) = (
            nix::unistd::Uid::from_raw(id),
            nix::unistd::Gid::from_raw(id),
        );
        nix::unistd::chown(&dir, Some(uid), Some(gid)).expect("chown the daemon's directory");
    }
    dir
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("config.toml");
    let text = format!(
        "socket = \"{}\"\nruntime_dir = \"{}\"\nslots = 4\nshutdown_grace_ms = 3000\n\
         [profiles.default]\npython = \"{SYSTEM_PYTHON}\"\npreload = [\"json\"]\n\
         warm_children = 1\nlimits = {{ timeout_ms = 5000, output_bytes = 65536 }}\n\
         [profiles.procs]\npython = \"{SYSTEM_PYTHON}\"\npreload = [\"json\"]\n\
         warm_children = 0\nprocesses = 8\nlimits = {{ timeout_ms = 5000 }}\n",
        dir.join("sandfork.sock").display(),
        dir.join("runtime").display(),
    );
    std::fs::write(&config, text).expect("write config");
    config
}

/// Starts sandforkd as the unprivileged user. The calling thread must outlive the daemon:
/// PR_SET_PDEATHSIG(SIGTERM) follows the thread that forked.
fn start_daemon(dir: &Path, config: &Path, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    let mut command = unprivileged(env!("CARGO_BIN_EXE_sandforkd"), dir);
    command
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    sandfork::daemon::sys::die_with_parent(&mut command, libc::SIGTERM);
    command.spawn().expect("spawn sandforkd")
}

/// Waits until the daemon answers `ping` as ready. Err: the daemon exited (its log says why)
/// or never got ready.
fn wait_ready(daemon: &RootlessDaemon, exited: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let ping = unprivileged(env!("CARGO_BIN_EXE_sandfork"), &daemon.dir)
            .args(["ping", "--socket"])
            .arg(&daemon.socket)
            .output()
            .expect("run sandfork ping");
        if ping.status.success() {
            return Ok(());
        }
        if exited() {
            return Err(read_log(&daemon.log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "not ready in 90 s; log:\n{}",
        read_log(&daemon.log)
    ))
}

/// What a start-up failure means: a host without unprivileged user namespaces is a reason to
/// skip; anything else is a failure.
fn skip_reason(log: &str) -> Option<String> {
    log.lines()
        .find(|line| line.contains("needs unprivileged user namespaces"))
        .map(str::to_owned)
}

/// The shared daemon of this test binary, or why it cannot run here.
fn daemon() -> Result<&'static RootlessDaemon, String> {
    static DAEMON: OnceLock<Result<RootlessDaemon, String>> = OnceLock::new();
    DAEMON
        .get_or_init(|| {
            if !Path::new(SYSTEM_PYTHON).exists() {
                return Err(format!("{SYSTEM_PYTHON} is missing"));
            }
            let dir = private_dir("sandfork-rootless-");
            let config = write_config(&dir);
            let log = dir.join("daemon.log");
            let (tx, rx) = std::sync::mpsc::channel();
            let (dir2, config2, log2) = (dir.clone(), config.clone(), log.clone());
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut child = start_daemon(&dir2, &config2, &log2);
                tx.send(child.id()).expect("send pid");
                // This thread is the daemon's parent for PDEATHSIG: it lives while the daemon
                // does (to the end of the test process), and says when the daemon is gone.
                let _ = child.wait();
                let _ = done_tx.send(());
                loop {
                    std::thread::park();
                }
            });
            let pid = rx.recv().expect("daemon pid");
            let daemon = RootlessDaemon {
                socket: dir.join("sandfork.sock"),
                dir,
                config,
                log,
                pid,
            };
            match wait_ready(&daemon, || done_rx.try_recv().is_ok()) {
                Ok(()) => Ok(daemon),
                Err(log) => match skip_reason(&log) {
                    Some(reason) => Err(reason),
                    None => panic!("the rootless daemon did not start; log:\n{log}"),
                },
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `code` through `sandfork run --json` as the unprivileged user: (exit code, result).
fn run(daemon: &RootlessDaemon, code: &str, extra: &[&str]) -> (i32, Value) {
    let mut child = unprivileged(env!("CARGO_BIN_EXE_sandfork"), &daemon.dir)
        .args(["run", "--json", "--socket"])
        .arg(&daemon.socket)
        .args(extra)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sandfork");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(code.as_bytes())
        .expect("write code");
    let out = child.wait_with_output().expect("sandfork run");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sandfork run printed no JSON ({e}): {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), result)
}

/// The daemon of this binary, or None after printing SKIPPED.
fn daemon_or_skip(test: &str) -> Option<&'static RootlessDaemon> {
    match daemon() {
        Ok(daemon) => Some(daemon),
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

/// The effective uid of a host process, from /proc.
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn print_1_works_and_the_log_names_rootless_mode_and_its_losses() {
    let Some(daemon) = daemon_or_skip("print_1_works_and_the_log_names_rootless_mode") else {
        return;
    };
    let (code, result) = run(daemon, "print(1)", &[]);
    assert_eq!(
        (code, result["status"].as_str()),
        (0, Some("ok")),
        "{result}"
    );
    assert_eq!(result["stdout"], "1\n");

    let log = read_log(&daemon.log);
    assert!(log.contains("rootless mode"), "{log}");
    for loss in [
        "rootless: all runs share one uid",
        "landlock signal scoping",
        "rootless: no cgroups: memory is RLIMIT_AS, pids RLIMIT_NPROC",
        "rootless: no separate host identity",
    ] {
        assert!(log.contains(loss), "the log must say {loss:?}:\n{log}");
    }
    assert!(
        log.lines()
            .filter(|l| l.contains("rootless: "))
            .all(|l| l.contains("WARN")),
        "each lost protection is a warning:\n{log}"
    );

    // Nothing of the daemon runs with more than the unprivileged user's identity.
    let mut processes = descendants(daemon.pid);
    processes.push(daemon.pid);
    assert!(
        processes.len() >= 3,
        "daemon, zygote-init, zygote: {processes:?}"
    );
    for pid in processes {
        if let Some(uid) = process_uid(pid) {
            assert_eq!(uid, daemon_uid(), "process {pid} runs as uid {uid}");
        }
    }
}

/// Probes every layer from inside a rootless run; prints one JSON object.
const ISOLATION_PROBE: &str = r#"
import ctypes, errno, json, os, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
r = {}
def err(fn):
    try:
        fn()
        return None
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
r["inet"] = err(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
r["unix"] = err(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
r["fork"] = err(os.fork)
r["exec"] = err(lambda: os.execv("/usr/bin/python3", ["python3", "-c", "print('escaped')"]))
def write(path):
    with open(path, "w") as f:
        f.write("x")
r["write_root"] = err(lambda: write("/escape"))
r["write_sandbox"] = err(lambda: write("/sandbox/escape"))
r["write_tmp"] = err(lambda: write("/tmp/escape"))
r["write_cwd"] = err(lambda: write("here"))
r["shadow"] = err(lambda: open("/etc/shadow").read())
r["config"] = err(lambda: open("{config}").read())
r["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]
# The zygote (PID 1) has our very uid: only landlock's signal scoping stands in the way.
r["signal_zygote"] = err(lambda: os.kill(1, 0))
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
header, data = Header(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(header), data) == 0
r["capget"] = [[d.effective, d.permitted, d.inheritable] for d in data]
r["bounding"] = [c for c in range(64) if libc.prctl(23, c, 0, 0, 0) == 1]
r["no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)
r["seccomp"] = libc.prctl(21, 0, 0, 0, 0)
results = []
threads = [threading.Thread(target=lambda: results.append(1)) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
r["threads"] = len(results)
print(json.dumps(r))
"#;

#[test]
fn isolation_holds_inside_a_rootless_run() {
    let Some(daemon) = daemon_or_skip("isolation_holds_inside_a_rootless_run") else {
        return;
    };
    let probe = ISOLATION_PROBE.replace("{config}", &daemon.config.display().to_string());
    let (code, result) = run(daemon, &probe, &[]);
    assert_eq!(code, 0, "{result}");
    let stdout = result["stdout"].as_str().unwrap_or_default();
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {result}"));

    assert_eq!(r["inet"], "EPERM", "no network sockets");
    assert_eq!(r["unix"], "EPERM", "no unix sockets");
    assert_eq!(r["fork"], "EPERM", "no new processes");
    assert_eq!(r["exec"], "EPERM", "no exec");
    for key in ["write_root", "write_sandbox", "write_tmp"] {
        assert!(r[key].is_string(), "{key} must fail: {r}");
    }
    assert_eq!(r["write_cwd"], Value::Null, "the run's tmpfs is writable");
    assert!(
        r["shadow"].is_string(),
        "/etc/shadow must be unreadable: {r}"
    );
    assert!(
        matches!(r["config"].as_str(), Some("EACCES" | "ENOENT")),
        "the daemon's config must be out of reach: {r}"
    );
    assert_eq!(
        r["ids"],
        serde_json::json!([0, 0, 0, 0]),
        "uid 0 of the namespace"
    );
    if sandfork_lockdown::landlock_rules::probe_abi().is_ok_and(|abi| abi >= 6) {
        assert_eq!(r["signal_zygote"], "EPERM", "signals are scoped to the run");
    }
    assert_eq!(
        r["capget"],
        serde_json::json!([[0, 0, 0], [0, 0, 0]]),
        "no capability, though uid 0"
    );
    assert_eq!(r["bounding"], serde_json::json!([]), "empty bounding set");
    assert_eq!(r["no_new_privs"], 1);
    assert_eq!(r["seccomp"], 2);
    assert_eq!(
        r["threads"], 8,
        "threads work under the shared RLIMIT_NPROC"
    );
}

#[test]
fn ptrace_kills_a_rootless_run_with_sigsys() {
    let Some(daemon) = daemon_or_skip("ptrace_kills_a_rootless_run_with_sigsys") else {
        return;
    };
    let code = "import ctypes\nctypes.CDLL(None).ptrace(0, 0, 0, 0)\nprint('survived')";
    let (exit, result) = run(daemon, code, &[]);
    assert_eq!(result["status"], "killed", "{result}");
    assert_eq!(result["signal"], libc::SIGSYS, "{result}");
    assert_eq!(exit, 128 + libc::SIGSYS);
    assert_eq!(result["stdout"], "");
}

#[test]
fn timeout_and_output_flood_get_their_statuses() {
    let Some(daemon) = daemon_or_skip("timeout_and_output_flood_get_their_statuses") else {
        return;
    };
    let started = Instant::now();
    let (exit, result) = run(daemon, "while True:\n    pass\n", &["--timeout-ms", "500"]);
    assert_eq!(result["status"], "timeout", "{result}");
    assert_eq!(exit, 124);
    assert!(started.elapsed() < Duration::from_secs(10));

    let flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n";
    let (_, result) = run(daemon, flood, &[]);
    assert_eq!(result["status"], "output_limit", "{result}");
    assert_eq!(result["stdout_truncated"], true, "{result}");
    assert_eq!(result["stdout"].as_str().map(str::len), Some(65536));
}

#[test]
fn sigterm_stops_a_rootless_daemon_cleanly() {
    if !Path::new(SYSTEM_PYTHON).exists()
        && skip(
            "sigterm_stops_a_rootless_daemon_cleanly",
            "no system python",
        )
    {
        return;
    }
    // A daemon of its own: the shared one must stay up for the other tests.
    let dir = private_dir("sandfork-rootless-term-");
    let config = write_config(&dir);
    let log = dir.join("daemon.log");
    let (tx, rx) = std::sync::mpsc::channel::<(u32, std::sync::mpsc::Receiver<ExitStatus>)>();
    let (dir2, config2, log2) = (dir.clone(), config.clone(), log.clone());
    std::thread::spawn(move || {
        let mut child = start_daemon(&dir2, &config2, &log2);
        let (status_tx, status_rx) = std::sync::mpsc::channel();
        tx.send((child.id(), status_rx)).expect("send pid");
        let status = child.wait().expect("wait for sandforkd");
        let _ = status_tx.send(status);
    });
    let (pid, exited) = rx.recv().expect("daemon pid");
    let daemon = RootlessDaemon {
        socket: dir.join("sandfork.sock"),
        dir,
        config,
        log,
        pid,
    };
    if let Err(log) = wait_ready(&daemon, || exited.try_recv().is_ok()) {
        match skip_reason(&log) {
            Some(reason) if skip("sigterm_stops_a_rootless_daemon_cleanly", &reason) => return,
            _ => panic!("the rootless daemon did not start; log:\n{log}"),
        }
    }
    let (code, result) = run(&daemon, "print(2)", &[]);
    assert_eq!(
        (code, result["stdout"].as_str()),
        (0, Some("2\n")),
        "{result}"
    );
    let zygotes = descendants(daemon.pid);
    assert!(!zygotes.is_empty());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = exited
        .recv_timeout(Duration::from_secs(20))
        .expect("sandforkd exits within 20 s of SIGTERM");
    let log = read_log(&daemon.log);
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(!daemon.socket.exists(), "the socket is removed");
    assert!(log.contains("stopped"), "{log}");
    // The zygotes and their jails went with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while zygotes
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        assert!(
            Instant::now() < deadline,
            "jail processes outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir_all(&daemon.dir).expect("remove the daemon's directory");
}

#[test]
fn a_rootless_run_with_processes_works_and_the_log_says_what_caps_them() {
    let test = "a_rootless_run_with_processes_works_and_the_log_says_what_caps_them";
    let Some(daemon) = daemon_or_skip(test) else {
        return;
    };
    let log = read_log(&daemon.log);
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("rootless: profile procs: processes: up to 8")
            && l.contains("RLIMIT_NPROC")),
        "the log must say what caps a rootless run's processes:\n{log}"
    );
    let before = descendants(daemon.pid);
    let code = r#"
import os, subprocess, sys, time
from multiprocessing import Pool

def square(x):
    return x * x

if __name__ == "__main__":
    print(os.getpid(), subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True).stdout)
    with Pool(2) as pool:
        print(pool.map(square, [1, 2, 3]))
    if os.fork() == 0:
        os.setsid()
        time.sleep(600)
"#;
    let (code, result) = run(daemon, code, &["--profile", "procs"]);
    assert_eq!(
        (code, result["status"].as_str()),
        (0, Some("ok")),
        "{result}"
    );
    assert_eq!(result["stdout"], "1 b'7\\n'\n[1, 4, 9]\n");
    // The other tests share the daemon (its default profile refills a warm child): only the
    // procs zygote's processes count, and its zygote was there before.
    let of_procs = |pid: &u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline).contains("\"profile\":\"procs\"")
        })
    };
    let left: Vec<u32> = descendants(daemon.pid)
        .into_iter()
        .filter(|pid| !before.contains(pid) && of_procs(pid))
        .collect();
    assert!(left.is_empty(), "left after the result: {left:?}");
}
