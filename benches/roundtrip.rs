//! One request round trip through a running sandforkd — `print(1)` sent, result received — next
//! to what a service without a zygote pays for the same answer: a fresh
//! `python -I -B -X utf8 -c 'print(1)'` of the same real interpreter (DESIGN §8: not a pyenv shim,
//! and the zygote's own flags).
//!
//! The bench starts its own daemon (`target/<profile>/sandforkd` with a temporary config; needs
//! root and the workspace's binaries, so run `cargo build --release --workspace` first), or uses
//! the one listening at `$SANDFORK_BENCH_SOCKET`. Without root and without that variable it prints
//! `SKIPPED: needs root` and returns. The daemon it started gets SIGTERM (by pid) at the end.
//!
//! ```sh
//! cargo build --release --workspace && cargo bench --bench roundtrip
//! ```
//!
//! After criterion's own output, a last line gives the ratio of the two medians.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandfork::cli::bench::{baseline_command, resolve_python, DEFAULT_PYTHON};
use sandfork_protocol::client::Client;
use sandfork_protocol::{RunSpec, Status};

/// What every measured request runs.
const CODE: &str = "print(1)";
/// Per benchmark function; with 1 s of warm-up `cargo bench` stays around half a minute.
const MEASUREMENT_TIME: Duration = Duration::from_secs(3);
const WARM_UP_TIME: Duration = Duration::from_secs(1);
/// Criterion's minimum is 10; 20 samples of milliseconds-long iterations fit in 3 s.
const SAMPLE_SIZE: usize = 20;
/// How long a fresh daemon may take to report ready (zygote start-up: probe, jail, preload).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon may take to drain after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

const SANDFORK: (&str, &str) = ("roundtrip", "sandfork_print1");
const BASELINE: (&str, &str) = ("baseline", "python_print1");

/// A sandforkd this bench started, with its temporary directory (socket, runtime dir, log).
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts sandforkd with a private config and waits until it is ready.
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("sandfork-bench-")
            .tempdir()
            .expect("temporary directory");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{}\"\nruntime_dir = \"{}\"\nslots = 4\nshutdown_grace_ms = 3000\n",
                dir.path().join("sandfork.sock").display(),
                dir.path().join("runtime").display(),
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sandforkd"));
        command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        sandfork::daemon::sys::die_with_parent(&mut command, libc::SIGTERM);
        let child = command.spawn().expect("spawn sandforkd");
        let daemon = Daemon { child, dir };
        daemon.wait_ready();
        daemon
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sandfork.sock")
    }

    fn wait_ready(&self) {
        let runtime = runtime();
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            let ready = runtime.block_on(async {
                let mut client = Client::connect(&self.socket()).await.ok()?;
                client.ping().await.ok().map(|status| status.ready)
            });
            if ready == Some(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        panic!(
            "sandforkd not ready in {READY_TIMEOUT:?} (were the workspace's binaries built? \
             cargo build --release --workspace); its log:\n{log}"
        );
    }
}

impl Drop for Daemon {
    /// SIGTERM by pid, then SIGKILL if it has not drained in time.
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Criterion's output directory: `$CRITERION_HOME`, else `<target>/criterion` (this executable
/// is `<target>/<profile>/deps/roundtrip-<hash>`).
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median of this run's estimate for `group/function`, in ns: `None` when criterion wrote
/// none since `since` (its test and list modes measure nothing, and an older file is stale).
fn median_ns(dir: &Path, (group, function): (&str, &str), since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    if std::fs::metadata(&path).and_then(|m| m.modified()).ok()? < since {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn main() {
    let (socket, daemon) = match std::env::var_os("SANDFORK_BENCH_SOCKET") {
        Some(socket) => (PathBuf::from(socket), None),
        None if !nix::unistd::geteuid().is_root() => {
            println!("SKIPPED: needs root (sandforkd maps uid ranges and mounts jails)");
            return;
        }
        None => {
            let daemon = Daemon::start();
            (daemon.socket(), Some(daemon))
        }
    };
    let python = resolve_python(Path::new(DEFAULT_PYTHON)).expect("the baseline's interpreter");
    let runtime = runtime();
    let mut client = runtime
        .block_on(Client::connect(&socket))
        .expect("connect to sandforkd");
    let spec = RunSpec {
        code: CODE.as_bytes().to_vec(),
        ..Default::default()
    };

    let started = SystemTime::now();
    let mut criterion = Criterion::default()
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE)
        .configure_from_args();

    let mut group = criterion.benchmark_group(SANDFORK.0);
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(SANDFORK.1, |b| {
        b.iter(|| {
            let result = runtime
                .block_on(client.run(spec.clone()))
                .expect("run through sandforkd");
            assert_eq!(result.status, Status::Ok, "{:?}", result.message);
            assert_eq!(result.stdout, b"1\n");
        })
    });
    group.finish();

    let mut group = criterion.benchmark_group(BASELINE.0);
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(BASELINE.1, |b| {
        b.iter(|| {
            let output = baseline_command(&python, CODE)
                .output()
                .expect("start the interpreter");
            assert!(output.status.success(), "{output:?}");
            assert_eq!(output.stdout, b"1\n");
        })
    });
    group.finish();

    criterion.final_summary();
    drop(client);
    drop(daemon);

    let medians = criterion_dir().and_then(|dir| {
        let sandfork = median_ns(&dir, SANDFORK, started)?;
        let baseline = median_ns(&dir, BASELINE, started)?;
        Some((sandfork, baseline))
    });
    if let Some((sandfork, baseline)) = medians {
        println!(
            "roundtrip: sandfork median {:.3} ms, {} {} -c 'print(1)' median {:.3} ms, \
             ratio {:.3}",
            sandfork / 1e6,
            python.display(),
            sandfork::cli::bench::BASELINE_FLAGS.join(" "),
            baseline / 1e6,
            baseline / sandfork,
        );
    }
}
