//! Sessions attacked and torn down: a session's cell misusing its control channel (fd 3), a
//! cell flooding output or reading stdin while it is interrupted, closed or timed out, and every
//! way a session ends — close, idle timeout, lifetime, daemon shutdown — each asserted from the
//! host: the child is gone, its uid runs nothing, its cgroup is empty, the daemon is healthy.
//!
//! One private daemon (no warm children, its own uid range) so that every process with a slot
//! uid belongs to a session or a run of these tests.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::sessions::{cell, ended_message, open};
use common::{in_session_at, privileged, read_log, start_private_daemon, test_config, Daemon};
use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{
    Caller, Cell, ErrorKind, LimitsRequest, Request, Response, SessionOp, SessionOpen, Status,
};

/// The daemons' uid bases: slot uids are above them.
const UID_BASE: u32 = 320_000;
const SHUTDOWN_UID_BASE: u32 = 330_000;

fn config(dir: &Path, uid_base: u32) -> String {
    test_config(
        dir,
        &format!(
            "uid_base = {uid_base}\n[sessions]\nmax_lifetime_s = 10\n[profiles.default]\nwarm_children = 0\nmax_sessions = 8\n"
        ),
    )
}

fn daemon() -> &'static Daemon {
    static DAEMON: std::sync::OnceLock<Daemon> = std::sync::OnceLock::new();
    DAEMON
        .get_or_init(|| start_private_daemon("sandfork-session-attacks-", |d| config(d, UID_BASE)))
}

async fn connect() -> Client {
    Client::connect(&daemon().socket).await.expect("connect")
}

/// Host pids under `daemon` running as a slot uid (above `uid_base`): children of runs and
/// sessions.
fn slot_processes(daemon: &Daemon, uid_base: u32) -> Vec<u32> {
    common::descendants(daemon.pid)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
                })
                .is_some_and(|uid| uid > uid_base && uid < uid_base + 10_000)
        })
        .collect()
}

/// Slot cgroups of the daemon on `socket` that hold a process.
fn busy_cgroups(socket: &Path) -> Vec<std::path::PathBuf> {
    let instance = format!(
        "sandfork-{}",
        sandfork::daemon::supervisor::instance_name(socket)
    );
    let mut busy = Vec::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if path
                .components()
                .any(|c| c.as_os_str() == instance.as_str())
                && std::fs::read_to_string(path.join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty())
            {
                busy.push(path.clone());
            }
            stack.push(path);
        }
    }
    busy
}

/// Waits until nothing runs under a slot uid and no slot cgroup holds a process, or panics.
async fn assert_nothing_left(daemon: &Daemon, uid_base: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = slot_processes(daemon, uid_base);
        let cgroups = busy_cgroups(&daemon.socket);
        if procs.is_empty() && cgroups.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: processes {procs:?} and cgroups {cgroups:?} left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serializes the tests of the shared daemon: they count its slot processes and cgroups.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_closed_session_leaves_nothing_behind() {
    if !privileged("a_closed_session_leaves_nothing_behind") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut client = connect().await;
    let id = open(&mut client, SessionOpen::default()).await.session_id;
    cell(&mut client, &id, "import threading, time\nx = 1\nt = threading.Thread(target=time.sleep, args=(60,))\nt.start()\nopen('f', 'w').write('x')").await;
    assert!(
        !slot_processes(daemon(), UID_BASE).is_empty(),
        "the session's child is alive"
    );
    client
        .session(
            Caller::default(),
            SessionOp::Close {
                session: id.clone(),
            },
        )
        .await
        .unwrap();
    assert_nothing_left(daemon(), UID_BASE, "close").await;
    let err = client
        .session(Caller::default(), SessionOp::ListFiles { session: id })
        .await
        .unwrap_err();
    assert!(ended_message(&err).contains("closed"));
}

#[tokio::test]
async fn an_idle_session_ends_and_leaves_nothing_behind() {
    if !privileged("an_idle_session_ends_and_leaves_nothing_behind") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut client = connect().await;
    let id = open(
        &mut client,
        SessionOpen {
            idle_timeout_s: Some(1),
            ..SessionOpen::default()
        },
    )
    .await
    .session_id;
    cell(&mut client, &id, "x = 1").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (r, _) = cell(&mut client, &id, "x").await;
    assert_eq!(r.status, Status::Ok, "a cell restarts the idle clock");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_nothing_left(daemon(), UID_BASE, "idle").await;
    let err = client
        .execute_cell(
            Caller::default(),
            &id,
            Cell {
                code: b"x".to_vec(),
                ..Cell::default()
            },
            |_, _| {},
        )
        .await
        .unwrap_err();
    assert!(ended_message(&err).contains("idle for 1 s"));
}

#[tokio::test]
async fn a_session_cannot_outlive_its_lifetime_even_inside_a_cell() {
    if !privileged("a_session_cannot_outlive_its_lifetime_even_inside_a_cell") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut client = connect().await;
    let opened = Instant::now();
    let id = open(&mut client, SessionOpen::default()).await.session_id;
    // The cell's own timeout (15 s) is beyond the session's lifetime (10 s).
    let (r, x) = cell(&mut client, &id, "import time\ntime.sleep(14)").await;
    let lived = opened.elapsed();
    assert!(lived < Duration::from_secs(12), "lived {lived:?}");
    assert!(lived >= Duration::from_secs(9), "lived {lived:?}");
    assert_eq!(r.status, Status::Killed, "{r:?}");
    assert!(x.session_ended);
    assert!(r
        .message
        .unwrap_or_default()
        .contains("maximum lifetime of 10 s"));
    assert_nothing_left(daemon(), UID_BASE, "lifetime").await;
}

#[tokio::test]
async fn a_cell_misusing_its_channel_ends_its_session_and_nothing_else() {
    if !privileged("a_cell_misusing_its_channel_ends_its_session_and_nothing_else") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut client = connect().await;
    let bystander = open(&mut client, SessionOpen::default()).await.session_id;
    cell(&mut client, &bystander, "kept = 'yes'").await;
    let attacks = [
        ("garbage", "import os\nos.write(3, b'\\xff not json')\nimport time\ntime.sleep(0.3)"),
        (
            "descriptors",
            "import socket, os\nchan = socket.socket(fileno=3)\nsocket.send_fds(chan, [b'{\"op\":\"cell_done\",\"failed\":false}'], [0, 1, 2])\nimport time\ntime.sleep(0.3)",
        ),
        (
            "a forged listing inside a cell",
            "import socket\nchan = socket.socket(fileno=3)\nchan.send(b'{\"op\":\"listing\",\"entries\":[],\"truncated\":false}')\nimport time\ntime.sleep(0.3)",
        ),
        (
            "an oversized value",
            "import socket\nchan = socket.socket(fileno=3)\nchan.send(b'{\"op\":\"result\",\"size\":18446744073709551615}')\nimport time\ntime.sleep(0.3)",
        ),
        (
            "a flood of packets",
            "import socket\nchan = socket.socket(fileno=3)\nfor _ in range(100000):\n    try:\n        chan.send(b'{\"op\":\"result\",\"size\":1}')\n    except OSError:\n        break",
        ),
    ];
    for (name, code) in attacks {
        let id = open(&mut client, SessionOpen::default()).await.session_id;
        let (r, x) = cell(&mut client, &id, code).await;
        let message = r.message.clone().unwrap_or_default();
        if name == "an oversized value" {
            // Refused as too large: the cell's value is dropped; the session may go on.
            assert!(
                message.contains("value") || x.session_ended,
                "{name}: {r:?}"
            );
        } else {
            assert!(x.session_ended, "{name}: {r:?}");
            assert!(message.contains("misused"), "{name}: {message}");
        }
        client
            .session(Caller::default(), SessionOp::Close { session: id })
            .await
            .ok();
    }
    // A forged "cell_done" ends the cell early: the session's own confusion, nobody else's.
    let id = open(&mut client, SessionOpen::default()).await.session_id;
    let (r, _) = cell(
        &mut client,
        &id,
        "import os, time\nos.write(3, b'{\"op\":\"cell_done\",\"failed\":false}')\ntime.sleep(0.5)\nprint('late')",
    )
    .await;
    assert_eq!(r.status, Status::Ok);
    client
        .session(Caller::default(), SessionOp::Close { session: id })
        .await
        .unwrap();

    let (r, x) = cell(&mut client, &bystander, "kept").await;
    assert_eq!(
        (r.status, x.value.as_deref()),
        (Status::Ok, Some("'yes'")),
        "the bystander is untouched"
    );
    let run = client.run(common::spec("print('healthy')")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "healthy\n");
    assert!(!read_log(&daemon().log).contains("panicked"));
}

#[tokio::test]
async fn interrupting_closing_and_timing_out_floods_and_reads_leave_the_daemon_healthy() {
    if !privileged("interrupting_closing_and_timing_out_floods_and_reads_leave_the_daemon_healthy")
    {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let flood = "while True:\n    print('x' * 4000)";
    let reader = "import sys\nn = 0\nwhile True:\n    for line in sys.stdin:\n        n += 1\n    sys.stdin.seek(0) if sys.stdin.seekable() else None";
    let big_stdin = "line\n".repeat(200_000).into_bytes();
    let limits = LimitsRequest {
        timeout_ms: Some(1500),
        output_bytes: Some(64 * 1024 * 1024 / 64),
        ..LimitsRequest::default()
    };
    for (what, code, stdin) in [("flood", flood, Vec::new()), ("reads", reader, big_stdin)] {
        for how in ["interrupt", "close", "timeout", "client gone"] {
            let mut client = Some(connect().await);
            let id = open(
                client.as_mut().unwrap(),
                SessionOpen {
                    limits: limits.clone(),
                    ..SessionOpen::default()
                },
            )
            .await
            .session_id;
            let cell_id = client.as_mut().unwrap().next_id();
            let request = Request::Session {
                id: cell_id,
                caller: Caller::default(),
                op: SessionOp::Execute {
                    session: id.clone(),
                    cell: Cell {
                        code: code.as_bytes().to_vec(),
                        stdin: stdin.clone(),
                        stream: true,
                        ..Cell::default()
                    },
                },
            };
            client.as_mut().unwrap().send(&request).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut other = connect().await;
            match how {
                "interrupt" => {
                    other
                        .session(
                            Caller::default(),
                            SessionOp::Interrupt {
                                session: id.clone(),
                            },
                        )
                        .await
                        .unwrap();
                }
                "close" => {
                    other
                        .session(
                            Caller::default(),
                            SessionOp::Close {
                                session: id.clone(),
                            },
                        )
                        .await
                        .unwrap();
                }
                "client gone" => drop(client.take()),
                _ => {}
            }
            if let Some(client) = client.as_mut() {
                // The answer comes, whatever happened (the client reads its stream slowly).
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let frame = tokio::time::timeout_at(deadline.into(), client.recv())
                        .await
                        .unwrap_or_else(|_| panic!("{what}/{how}: no answer"))
                        .unwrap();
                    match frame {
                        Response::Done { id, result, .. } if id == cell_id => {
                            assert_ne!(
                                result.status,
                                Status::InternalError,
                                "{what}/{how}: {result:?}"
                            );
                            break;
                        }
                        Response::Output { .. } => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        _ => {}
                    }
                }
            }
            if how == "client gone" {
                // The cell is interrupted when its caller goes (long before its 1.5 s timeout):
                // the session takes the next cell at once.
                let gone = Instant::now();
                loop {
                    let next = Cell {
                        code: b"'next'".to_vec(),
                        ..Cell::default()
                    };
                    match other
                        .execute_cell(Caller::default(), &id, next, |_, _| {})
                        .await
                    {
                        Ok((r, x)) => {
                            assert_eq!(
                                (r.status, x.value.as_deref()),
                                (Status::Ok, Some("'next'")),
                                "{what}"
                            );
                            break;
                        }
                        Err(ClientError::Server(f)) if f.kind == ErrorKind::SessionBusy => {
                            assert!(
                                gone.elapsed() < Duration::from_millis(800),
                                "{what}: the cell outlived its caller"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(err) => panic!("{what}: {err:?}"),
                    }
                }
            }
            // Whatever it was, the session is usable or cleanly ended; the daemon answers.
            let (r, ended) = in_session_at(&daemon().socket, "print('fine')").await;
            assert_eq!((r.status, ended), (Status::Ok, false), "{what}/{how}");
            other
                .session(Caller::default(), SessionOp::Close { session: id })
                .await
                .ok();
        }
    }
    assert!(!read_log(&daemon().log).contains("panicked"));
    assert_nothing_left(daemon(), UID_BASE, "floods and reads").await;
}

#[tokio::test]
async fn daemon_shutdown_ends_every_session_cleanly() {
    if !privileged("daemon_shutdown_ends_every_session_cleanly") {
        return;
    }
    let daemon = start_private_daemon("sandfork-session-shutdown-", |d| {
        config(d, SHUTDOWN_UID_BASE)
    });
    let mut client = Client::connect(&daemon.socket).await.unwrap();
    let idle = open(&mut client, SessionOpen::default()).await.session_id;
    let busy = open(&mut client, SessionOpen::default()).await.session_id;
    cell(&mut client, &idle, "x = 1").await;
    let cell_id = client.next_id();
    client
        .send(&Request::Session {
            id: cell_id,
            caller: Caller::default(),
            op: SessionOp::Execute {
                session: busy,
                cell: Cell {
                    code: b"import time\ntime.sleep(60)".to_vec(),
                    ..Cell::default()
                },
            },
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(slot_processes(&daemon, SHUTDOWN_UID_BASE).len(), 2);
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The running cell is answered (its session ended) before the daemon exits.
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match client.recv().await {
                Ok(Response::Done { id, result, extra }) if id == cell_id => {
                    return Some((result, extra))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .expect("an answer or a closed connection in time");
    if let Some((result, extra)) = answer {
        assert!(extra.session_ended, "{result:?}");
        assert_ne!(result.status, Status::Ok);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{}", daemon.pid)).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(12),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    assert!(busy_cgroups(&daemon.socket).is_empty());
    let log = read_log(&daemon.log);
    assert!(
        log.contains("session_close") && log.contains("daemon shut down"),
        "{log}"
    );
    assert!(!log.contains("panicked"));
}
