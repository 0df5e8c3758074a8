//! Shared pieces of the HTTP end-to-end tests: starting `sandfork-http` as an unprivileged
//! user, and a plain HTTP client with JSON answers.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

use super::read_log;

/// Spawns a child from a thread that never ends, so its PR_SET_PDEATHSIG fires only when the
/// test process exits (PDEATHSIG follows the thread that forked).
pub fn spawn_forever(start: impl FnOnce() -> Child + Send + 'static) -> u32 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = start();
        tx.send(child.id()).unwrap();
        let _keep = child;
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("child started")
}

/// Starts `sandfork-http` as `uid` on a free loopback port with `--config config` and `args`;
/// returns its base URL once it listens. It lives as long as the test process.
pub fn start_shim(config: &Path, args: &[&str], log: &Path, uid: u32) -> String {
    let (config, log_path) = (config.to_owned(), log.to_owned());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    spawn_forever(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn_shim(&config, &args, &log_path, uid)
    });
    shim_url(log)
}

/// Spawns `sandfork-http` as `uid` on a free loopback port, with PR_SET_PDEATHSIG tied to the
/// calling thread; [`shim_url`] waits for it to listen.
pub fn spawn_shim(config: &Path, args: &[&str], log: &Path, uid: u32) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sandfork-http"));
    command
        .arg("--config")
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    sandfork::daemon::sys::die_with_parent(&mut command, libc::SIGTERM);
    command.spawn().expect("spawn sandfork-http")
}

/// The base URL of the shim logging to `log`, once it listens (the port is read from its log).
pub fn shim_url(log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let text = read_log(log);
        if let Some(addr) = text
            .lines()
            .find(|l| l.contains("listening"))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        {
            return format!("http://{addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("sandfork-http did not start; log:\n{}", read_log(log));
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

/// An answer: status, headers, body as JSON (Null if it is not JSON), and the raw bytes.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("")
    }

    pub fn retry_after(&self) -> u64 {
        self.headers
            .get("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {:?} {}", self.status, self.body))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the shim answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body").to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        bytes,
    }
}

pub async fn post(base: &str, path: &str, key: Option<&str>, body: Value) -> Answer {
    let mut request = client().post(format!("{base}{path}")).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    send(request).await
}

/// The events of a server-sent-event body, in order: (event name, data as JSON).
pub fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = Some(name.trim().to_string());
                } else if let Some(part) = line.strip_prefix("data:") {
                    data.push_str(part.strip_prefix(' ').unwrap_or(part));
                }
            }
            let value = serde_json::from_str(&data).ok()?;
            Some((event.unwrap_or_else(|| "message".into()), value))
        })
        .collect()
}

/// The shim's user in the end-to-end stacks: nobody, a proxy of the test daemon.
pub const SHIM_UID: u32 = 65_534;

/// A test stack: a root `sandforkd` of its own and `sandfork-http` as nobody in front of it.
pub struct Stack {
    /// The shim's base URL, `http://127.0.0.1:PORT`.
    pub base: String,
    /// The daemon's socket.
    pub socket: std::path::PathBuf,
    pub daemon_log: std::path::PathBuf,
    /// The daemon's config, for [`Stack::restart_daemon`].
    pub config: std::path::PathBuf,
    /// The running daemon's pid (this test process started it).
    pub daemon_pid: std::sync::atomic::AtomicU32,
}

impl Stack {
    /// Starts a stack whose config has the test settings, the shim as a proxy, and `tenants`:
    /// (name, API key, extra `[tenants.policy]` lines).
    pub fn start(prefix: &str, tenants: &[(&str, &str, &str)]) -> Stack {
        Stack::start_with(prefix, tenants, "")
    }

    /// [`Stack::start`] with `more` in the config: its top-level keys first, then its tables
    /// (profiles, `[eval]`, …); the tenants' tables follow it.
    pub fn start_with(prefix: &str, tenants: &[(&str, &str, &str)], more: &str) -> Stack {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut extra = format!("proxy_uids = [{SHIM_UID}]\n{more}");
        for (name, key, policy) in tenants {
            extra.push_str(&format!(
                "[[tenants]]\nname = \"{name}\"\napi_key_sha256 = [\"{}\"]\n[tenants.policy]\n{policy}\n",
                sandfork::tenants::hash_key(key)
            ));
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, super::test_config(&dir, &extra)).unwrap();
        let daemon_log = dir.join("daemon.log");
        let socket = dir.join("sandfork.sock");
        let (config2, log2) = (config.clone(), daemon_log.clone());
        let pid = spawn_forever(move || super::start_daemon_process(&config2, &log2));
        super::wait_ready(&socket, &daemon_log, Duration::from_secs(90));
        let base = start_shim(&config, &[], &dir.join("shim.log"), SHIM_UID);
        Stack {
            base,
            socket,
            daemon_log,
            config,
            daemon_pid: pid.into(),
        }
    }

    /// Stops the daemon (SIGTERM to the pid this test started, then its socket gone) and starts
    /// a new one with the same config (its log starts afresh), leaving the shim as it is;
    /// returns when the new one is ready.
    pub fn restart_daemon(&self) {
        use std::sync::atomic::Ordering;
        let old = self.daemon_pid.load(Ordering::SeqCst);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM to the daemon this test started");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.socket.exists() {
            assert!(Instant::now() < deadline, "the daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (config, log) = (self.config.clone(), self.daemon_log.clone());
        let pid = spawn_forever(move || super::start_daemon_process(&config, &log));
        self.daemon_pid.store(pid, Ordering::SeqCst);
        super::wait_ready(&self.socket, &self.daemon_log, Duration::from_secs(90));
    }
}
