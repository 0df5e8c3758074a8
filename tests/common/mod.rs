//! Shared fixture of the end-to-end tests: a real `sandforkd` per test binary.
//!
//! The daemon is spawned from a dedicated thread that lives as long as the test process, with
//! PR_SET_PDEATHSIG(SIGTERM): PDEATHSIG follows the *thread* that forked, and test threads come
//! and go. When the test process exits, the daemon gets SIGTERM and shuts down cleanly.
//!
//! Tests that cannot run on a host (not root) print `SKIPPED: <reason>`; with `CI` set in the
//! environment they fail instead, because on the CI machine nothing may skip.

#![allow(dead_code)]

#[path = "../support/skip.rs"]
pub mod skip;

pub mod http;
pub mod sessions;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sandfork_protocol::client::Client;
use sandfork_protocol::{RunResult, RunSpec, Status};

/// A daemon started for tests.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid: u32,
}

/// True if privileged tests can run; otherwise prints SKIPPED (or panics under CI).
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip::skip(test, "needs root (user namespace uid ranges, mounts)");
    false
}

/// Config for test daemons: private socket and runtime dir, enough slots for the concurrency
/// tests, short grace so shutdown tests stay fast.
pub fn test_config(dir: &Path, extra: &str) -> String {
    format!(
        "socket = \"{}\"\nruntime_dir = \"{}\"\nslots = 8\nqueue_per_profile = 256\nshutdown_grace_ms = 3000\n{extra}\n",
        dir.join("sandfork.sock").display(),
        dir.join("runtime").display(),
    )
}

/// A daemon of this test binary with its own configuration: `configure` gets the daemon's private
/// directory (where its socket and runtime dir go) and returns the config text. Started from a
/// thread that lives as long as the test process; returns once the daemon is ready.
pub fn start_private_daemon(prefix: &str, configure: impl FnOnce(&Path) -> String) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
        .keep();
    let config = dir.join("config.toml");
    std::fs::write(&config, configure(&dir)).expect("write config");
    let (pid, log) = spawn_daemon_forever(&dir, &config);
    let socket = dir.join("sandfork.sock");
    wait_ready(&socket, &log, Duration::from_secs(120));
    Daemon {
        dir,
        socket,
        log,
        pid,
    }
}

/// The shared daemon of this test binary (the test configuration), started on first use.
pub fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Daemon> = OnceLock::new();
    DAEMON.get_or_init(|| start_private_daemon("sandfork-test-", |dir| test_config(dir, "")))
}

/// Spawns sandforkd from a thread that never ends, so PDEATHSIG only fires when the test
/// process exits. Returns the daemon's pid and log path.
fn spawn_daemon_forever(dir: &Path, config: &Path) -> (u32, PathBuf) {
    let log = dir.join("daemon.log");
    let (tx, rx) = std::sync::mpsc::channel();
    let (config, log_path) = (config.to_owned(), log.clone());
    std::thread::Builder::new()
        .name("test-daemon-parent".into())
        .spawn(move || {
            let child = start_daemon_process(&config, &log_path);
            let _ = tx.send(child.id());
            // Keep this thread (the daemon's parent thread for PDEATHSIG) alive forever.
            let _keep = child;
            loop {
                std::thread::park();
            }
        })
        .expect("thread");
    let pid = rx.recv().expect("daemon pid");
    (pid, log)
}

/// Starts a daemon process with PDEATHSIG(SIGTERM) tied to the calling thread.
pub fn start_daemon_process(config: &Path, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sandforkd"));
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    sandfork::daemon::sys::die_with_parent(&mut command, libc::SIGTERM);
    command.spawn().expect("spawn sandforkd")
}

/// Polls the daemon until it reports ready; panics with its log otherwise. Polls from its own
/// thread, so it may be called from inside an async test.
pub fn wait_ready(socket: &Path, log: &Path, timeout: Duration) {
    let (socket, log) = (socket.to_owned(), log.to_owned());
    std::thread::spawn(move || poll_ready(&socket, &log, timeout))
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn poll_ready(socket: &Path, log: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let rt = runtime();
    while Instant::now() < deadline {
        let ready = rt.block_on(async {
            match Client::connect(socket).await {
                Ok(mut client) => client.ping().await.map(|s| s.ready).unwrap_or(false),
                Err(_) => false,
            }
        });
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("daemon not ready in {timeout:?}; log:\n{}", read_log(log));
}

pub fn read_log(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A run request for `code` with default everything.
pub fn spec(code: &str) -> RunSpec {
    RunSpec {
        code: code.as_bytes().to_vec(),
        ..RunSpec::default()
    }
}

/// Runs `spec` on the shared daemon.
pub async fn run_spec(spec: RunSpec) -> RunResult {
    let mut client = Client::connect(&daemon().socket).await.expect("connect");
    client.run(spec).await.expect("run")
}

/// Runs `code` on the shared daemon.
pub async fn run(code: &str) -> RunResult {
    run_spec(spec(code)).await
}

/// Runs `code` as the first cell of a fresh session on the daemon at `socket` (then closes
/// it): the same code as a run, seen from a session's child. Returns the cell's result and
/// whether the session ended with it. Waits for room when the profile's sessions are all taken
/// (the tests of a binary run side by side).
pub async fn in_session_at(socket: &Path, code: &str) -> (RunResult, bool) {
    use sandfork_protocol::{Caller, Cell, ErrorKind, SessionOp, SessionOpen, SessionReply};
    let mut client = Client::connect(socket).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(60);
    let session = loop {
        match client
            .session(Caller::default(), SessionOp::Open(SessionOpen::default()))
            .await
        {
            Ok(SessionReply::Opened(info)) => break info.session_id,
            Err(sandfork_protocol::client::ClientError::Server(frame))
                if frame.kind == ErrorKind::NoSessionCapacity && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("cannot open a session: {other:?}"),
        }
    };
    let cell = Cell {
        code: code.as_bytes().to_vec(),
        ..Cell::default()
    };
    let (result, extra) = client
        .execute_cell(Caller::default(), &session, cell, |_, _| {})
        .await
        .expect("cell");
    if !extra.session_ended {
        client
            .session(Caller::default(), SessionOp::Close { session })
            .await
            .expect("close");
    }
    (result, extra.session_ended)
}

/// [`in_session_at`] on the shared daemon.
pub async fn in_session(code: &str) -> (RunResult, bool) {
    in_session_at(&daemon().socket, code).await
}

/// stdout as text.
pub fn out(result: &RunResult) -> String {
    String::from_utf8_lossy(&result.stdout).into_owned()
}

/// stderr as text.
pub fn err(result: &RunResult) -> String {
    String::from_utf8_lossy(&result.stderr).into_owned()
}

/// Asserts status `ok` and returns stdout, showing everything on failure.
pub fn ok_stdout(result: &RunResult) -> String {
    assert_eq!(
        result.status,
        Status::Ok,
        "expected ok; stdout={:?} stderr={:?} message={:?}",
        out(result),
        err(result),
        result.message
    );
    out(result)
}

/// Host pids of all processes whose parent chain leads to `root` (excluding `root`).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The comm field may contain spaces; the ppid is the 2nd field after the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// The host pid of the child (a descendant of `root`) whose working directory holds `marker`:
/// a run creates the marker file, and the host sees it through /proc/<pid>/root. Waits up to
/// 10 s.
pub fn find_marked_child(root: u32, marker: &str) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let found = descendants(root)
            .into_iter()
            .find(|pid| Path::new(&format!("/proc/{pid}/root/sandbox/work/{marker}")).exists());
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The Python of the client tests' venv (`scripts/clients-venv`: the `mcp` SDK, pytest, mypy and
/// the client package), from `SANDFORK_CLIENTS_PYTHON` as `scripts/test` sets it; None (the test
/// skipped, or failed under CI) when it is not set.
pub fn clients_python(test: &str) -> Option<PathBuf> {
    venv_python(test, "SANDFORK_CLIENTS_PYTHON", "scripts/clients-venv")
}

/// The Python of the operations checks' venv (`scripts/tools-venv`: kubernetes-validate,
/// schemathesis, jsonschema), from `SANDFORK_TOOLS_PYTHON`; None as for [`clients_python`].
pub fn tools_python(test: &str) -> Option<PathBuf> {
    venv_python(test, "SANDFORK_TOOLS_PYTHON", "scripts/tools-venv")
}

/// The Python of `scripts/venv` (numpy, pandas), from `SANDFORK_TEST_VENV_PYTHON`; None as for
/// [`clients_python`].
pub fn test_venv_python(test: &str) -> Option<PathBuf> {
    venv_python(test, "SANDFORK_TEST_VENV_PYTHON", "scripts/venv")
}

/// The interpreter `variable` names (scripts/test sets it from `script`), or None after the
/// skip rule.
fn venv_python(test: &str, variable: &str, script: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(python) => Some(PathBuf::from(python)),
        None => {
            skip::skip(
                test,
                &format!("{variable} is not set (scripts/test sets it from {script})"),
            );
            None
        }
    }
}

/// nginx (Debian's package; scripts/test installs it) with everything of its own in `dir`: a
/// main config there that includes `server_conf` in its `http` block (pid, logs and temporary
/// files in `dir`), and the command that runs it (`-p`, `-c`, `-e` set; add `-t` or `-g`).
pub fn nginx_command(dir: &Path, server_conf: &Path) -> Command {
    let d = dir.display();
    let main = dir.join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
            server_conf.display()
        ),
    )
    .expect("nginx.conf");
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&main)
        .arg("-e")
        .arg(dir.join("error.log"));
    command
}
