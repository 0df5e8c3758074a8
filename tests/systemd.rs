//! systemd: the units in `systemd/`, installed by `scripts/install` into a staging root, pass
//! `systemd-analyze verify` with nothing to say; and `sandforkd` started through
//! `systemd-socket-activate` (socket activation without a running systemd, as `sandforkd.socket`
//! does it) serves a run on the socket it was passed, tells the notify socket READY=1
//! (`Type=notify`), and leaves the socket file, which is systemd's, in place when it stops.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{privileged, read_log, skip, test_config};
use sandfork_protocol::client::Client;
use sandfork_protocol::{RunSpec, Status};

fn tool(name: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        skip::skip(
            test,
            &format!("{name} is not installed (Debian: the systemd package)"),
        );
    }
    found
}

/// The directory the test binaries' sandforkd, sandfork-http and helpers are in.
fn build_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sandforkd")).parent().unwrap()
}

#[test]
fn the_installed_units_verify() {
    const TEST: &str = "the_installed_units_verify";
    if !tool("systemd-analyze", TEST) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let install = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install"))
        .arg("--destdir")
        .arg(root.path())
        .arg("--from")
        .arg(build_dir())
        .output()
        .unwrap();
    assert!(install.status.success(), "scripts/install: {install:?}");
    let units = root.path().join("etc/systemd/system");
    for unit in [
        "sandforkd.socket",
        "sandforkd.service",
        "sandfork-http.service",
    ] {
        assert!(units.join(unit).is_file(), "{unit} was not installed");
    }
    let config = std::fs::read_to_string(root.path().join("etc/sandfork/config.toml")).unwrap();
    assert!(config.contains("proxy_uids = [65534]"), "{config}");
    // The system's own units (targets the ours are ordered against) in the staging root.
    let system = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&system).unwrap();
    let copied = Command::new("cp")
        .args(["-a", "/lib/systemd/system"])
        .arg(&system)
        .status()
        .unwrap();
    assert!(copied.success());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(
            [
                "sandforkd.socket",
                "sandforkd.service",
                "sandfork-http.service",
            ]
            .map(|u| units.join(u)),
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // verify exits 0 on many warnings ("ignoring ..."): clean means it says nothing.
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
    // And it would have said something: a unit with an error does not pass.
    let broken = units.join("sandforkd.service");
    let text = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(&broken, text.replace("KillMode=mixed", "KillMode=bogus")).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!verify.stderr.is_empty(), "a broken unit verified cleanly");
}

#[test]
fn socket_activation_serves_a_run_and_notifies_readiness() {
    const TEST: &str = "socket_activation_serves_a_run_and_notifies_readiness";
    if !privileged(TEST) || !tool("systemd-socket-activate", TEST) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("sandfork-activate-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, test_config(dir.path(), "")).unwrap();
    let socket = dir.path().join("sandfork.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let log = dir.path().join("daemon.log");
    // systemd-socket-activate listens, and on the first connection execs the daemon in its own
    // process with the listening socket as fd 3 (LISTEN_FDS=1, LISTEN_PID its pid).
    let mut daemon = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&socket)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(env!("CARGO_BIN_EXE_sandforkd"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_listening(&socket);
    let runtime = common::runtime();
    let result = runtime.block_on(async {
        // The connection waits in the passed socket's backlog while the daemon starts.
        let mut client = tokio::time::timeout(Duration::from_secs(120), Client::connect(&socket))
            .await
            .expect("the activated daemon answered the hello in time")
            .expect("connect");
        client
            .run(RunSpec {
                code: b"print('activated')".to_vec(),
                ..RunSpec::default()
            })
            .await
            .expect("run")
    });
    assert_eq!(
        result.status,
        Status::Ok,
        "{:?}\n{}",
        result.message,
        read_log(&log)
    );
    assert_eq!(result.stdout, b"activated\n");
    let mut buffer = [0u8; 4096];
    let n = notify.recv(&mut buffer).expect("a notification");
    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    let text = read_log(&log);
    assert!(text.contains("activated=true"), "{text}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop:\n{}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", read_log(&log));
    let n = notify.recv(&mut buffer).expect("a stopping notification");
    assert!(String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1"));
    assert!(
        socket.exists(),
        "the daemon removed the socket systemd owns"
    );
}

/// A socket passed by systemd that is not a listening Unix stream socket is refused at start-up
/// with the reason, instead of being served as something it is not.
#[test]
fn a_passed_socket_of_the_wrong_kind_is_refused() {
    const TEST: &str = "a_passed_socket_of_the_wrong_kind_is_refused";
    if !privileged(TEST) || !tool("systemd-socket-activate", TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, test_config(dir.path(), "")).unwrap();
    let socket = dir.path().join("dgram.sock");
    let mut daemon = Command::new("systemd-socket-activate")
        .arg("--datagram")
        .arg("--listen")
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_sandforkd"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&socket);
    // A datagram wakes the activator, which execs the daemon.
    let sender = UnixDatagram::unbound().unwrap();
    sender.send_to(b"wake", &socket).unwrap();
    let output = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if daemon.try_wait().unwrap().is_some() {
                break daemon.wait_with_output().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon served a datagram socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a listening stream socket"), "{stderr}");
}

/// Waits (10 s at most) for systemd-socket-activate to create its socket.
fn wait_listening(socket: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
