//! Streaming runs and sessions over the socket (protocol version 2), end to end against a real
//! daemon: output arrives as it is produced, globals survive from cell to cell, a cell can be
//! interrupted, limits end cells and sessions as documented, and what a session holds (its
//! state, its uid, its cgroup) stays its own and goes away with it.

mod common;

use std::time::{Duration, Instant};

use common::sessions::{cell, cell_with, close, open};
use common::{privileged, runtime, start_private_daemon, test_config, Daemon};
use sandfork_protocol::client::{Client, ClientError};
use sandfork_protocol::{
    Caller, Cell, ErrorKind, FileData, LimitsRequest, OutputStream, Request, Response, RunSpec,
    SessionOp, SessionOpen, SessionReply, Status,
};

fn daemon() -> &'static Daemon {
    static DAEMON: std::sync::OnceLock<Daemon> = std::sync::OnceLock::new();
    DAEMON.get_or_init(|| {
        start_private_daemon("sandfork-sessions-", |dir| {
            test_config(dir, "[sessions]\nidle_timeout_s = 600\n")
        })
    })
}

async fn connect() -> Client {
    Client::connect(&daemon().socket).await.expect("connect")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_streamed_run_sends_output_as_it_is_produced() {
    if !privileged("a_streamed_run_sends_output_as_it_is_produced") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let started = Instant::now();
        let mut chunks: Vec<(OutputStream, Vec<u8>, Duration)> = Vec::new();
        let spec = RunSpec {
            code: b"import sys, time\nprint('first', flush=True)\nprint('err', file=sys.stderr, flush=True)\ntime.sleep(0.5)\nprint('second')\n".to_vec(),
            ..RunSpec::default()
        };
        let (result, extra) = client
            .stream_run(spec, |stream, data| {
                chunks.push((stream, data.to_vec(), started.elapsed()))
            })
            .await
            .unwrap();
        assert_eq!(result.status, Status::Ok, "{result:?}");
        assert!(result.stdout.is_empty() && result.stderr.is_empty(), "streamed output is not repeated");
        assert_eq!((extra.stdout_streamed, extra.stderr_streamed), (13, 4));
        let stdout: Vec<u8> = chunks
            .iter()
            .filter(|c| c.0 == OutputStream::Stdout)
            .flat_map(|c| c.1.clone())
            .collect();
        assert_eq!(text(&stdout), "first\nsecond\n");
        let first = chunks.iter().find(|c| c.0 == OutputStream::Stdout).unwrap();
        let total = started.elapsed();
        assert!(
            total - first.2 >= Duration::from_millis(400),
            "the first line arrived at {:?}, the run ended at {total:?}: not streamed",
            first.2
        );
    });
}

#[test]
fn a_streamed_run_keeps_its_caps() {
    if !privileged("a_streamed_run_keeps_its_caps") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let spec = RunSpec {
            code: b"while True: print('x' * 1000)".to_vec(),
            limits: LimitsRequest {
                output_bytes: Some(50_000),
                ..LimitsRequest::default()
            },
            ..RunSpec::default()
        };
        let mut got = 0u64;
        let (result, extra) = client
            .stream_run(spec, |_, data| got += data.len() as u64)
            .await
            .unwrap();
        assert_eq!(result.status, Status::OutputLimit);
        assert!(result.stdout_truncated);
        assert_eq!(extra.stdout_streamed, 50_000);
        assert_eq!(got, 50_000);
    });
}

#[test]
fn a_rejected_streamed_run_is_answered_without_a_start() {
    if !privileged("a_rejected_streamed_run_is_answered_without_a_start") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let id = client.next_id();
        let spec = RunSpec {
            profile: Some("nope".into()),
            ..common::spec("print(1)")
        };
        client.send(&Request::StreamRun { id, spec }).await.unwrap();
        match client.recv().await.unwrap() {
            Response::Done { result, .. } => assert_eq!(result.status, Status::Rejected),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn a_session_keeps_its_globals_and_echoes_values() {
    if !privileged("a_session_keeps_its_globals_and_echoes_values") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let session = open(&mut client, SessionOpen::default()).await;
        assert!(session.session_id.starts_with("s_") && session.session_id.len() == 34);
        assert_eq!(session.profile, "default");
        let id = session.session_id.clone();

        let (r, x) = cell(&mut client, &id, "x = 41\nprint('set')").await;
        assert_eq!(
            (r.status, text(&r.stdout), x.value),
            (Status::Ok, "set\n".into(), None)
        );
        let (r, x) = cell(&mut client, &id, "x + 1").await;
        assert_eq!((r.status, x.value.as_deref()), (Status::Ok, Some("42")));
        let (_, x) = cell(&mut client, &id, "None").await;
        assert_eq!(x.value, None, "None is not echoed");
        let (_, x) = cell(&mut client, &id, "def f(n):\n    return 'v' * n\nf(3)").await;
        assert_eq!(x.value.as_deref(), Some("'vvv'"));

        // stdin per cell
        let (r, x) = cell_with(
            &mut client,
            &id,
            Cell {
                code: b"name = input()\nname.upper()".to_vec(),
                stdin: b"ada\n".to_vec(),
                ..Cell::default()
            },
        )
        .await;
        assert_eq!((r.status, x.value.as_deref()), (Status::Ok, Some("'ADA'")));

        // an exception is the cell's, not the session's
        let (r, x) = cell(&mut client, &id, "1 / 0").await;
        assert_eq!(r.status, Status::Error);
        let stderr = text(&r.stderr);
        assert!(
            stderr.contains("ZeroDivisionError") && stderr.contains("<cell 6>"),
            "{stderr}"
        );
        assert!(
            !stderr.contains("zygote"),
            "the zygote's frames are cut: {stderr}"
        );
        assert!(!x.session_ended);
        let (r, x) = cell(&mut client, &id, "x").await;
        assert_eq!((r.status, x.value.as_deref()), (Status::Ok, Some("41")));

        let (r, _) = cell(&mut client, &id, "def broken(:\n").await;
        assert_eq!(r.status, Status::Error);
        assert!(text(&r.stderr).contains("SyntaxError"));

        let listed = client
            .session(Caller::default(), SessionOp::List)
            .await
            .unwrap();
        let SessionReply::List(sessions) = listed else {
            panic!("{listed:?}")
        };
        let mine = sessions
            .iter()
            .find(|s| s.session_id == id)
            .expect("listed");
        assert_eq!(mine.cells, 8);
        close(&mut client, &id).await;
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
        assert!(
            matches!(&err, ClientError::Server(frame) if frame.kind == ErrorKind::SessionEnded),
            "{err:?}"
        );
    });
}

#[test]
fn a_streamed_cell_sends_output_as_it_is_produced() {
    if !privileged("a_streamed_cell_sends_output_as_it_is_produced") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let id = open(&mut client, SessionOpen::default()).await.session_id;
        let started = Instant::now();
        let mut first_at = None;
        let mut streamed = Vec::new();
        let (result, extra) = client
            .execute_cell(
                Caller::default(),
                &id,
                Cell {
                    code: b"import time\nprint(1, flush=True)\ntime.sleep(0.5)\n'done'".to_vec(),
                    stream: true,
                    ..Cell::default()
                },
                |_, data| {
                    first_at.get_or_insert(started.elapsed());
                    streamed.extend_from_slice(data);
                },
            )
            .await
            .unwrap();
        assert_eq!(result.status, Status::Ok);
        assert_eq!(text(&streamed), "1\n");
        assert_eq!(extra.stdout_streamed, 2);
        assert_eq!(extra.value.as_deref(), Some("'done'"));
        assert!(started.elapsed() - first_at.unwrap() >= Duration::from_millis(400));
        close(&mut client, &id).await;
    });
}

#[test]
fn an_interrupt_stops_the_cell_and_the_session_survives() {
    if !privileged("an_interrupt_stops_the_cell_and_the_session_survives") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let id = open(&mut client, SessionOpen::default()).await.session_id;
        cell(&mut client, &id, "kept = 'still here'").await;
        let cell_id = client.next_id();
        client
            .send(&Request::Session {
                id: cell_id,
                caller: Caller::default(),
                op: SessionOp::Execute {
                    session: id.clone(),
                    cell: Cell {
                        code: b"while True:\n    pass".to_vec(),
                        ..Cell::default()
                    },
                },
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut other = connect().await;
        let reply = other
            .session(
                Caller::default(),
                SessionOp::Interrupt {
                    session: id.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(reply, SessionReply::Interrupted);
        let result = loop {
            match client.recv().await.unwrap() {
                Response::Done {
                    id: got, result, ..
                } if got == cell_id => break result,
                _ => continue,
            }
        };
        assert_eq!(result.status, Status::Error);
        assert!(
            text(&result.stderr).contains("KeyboardInterrupt"),
            "{result:?}"
        );
        let (r, x) = cell(&mut client, &id, "kept").await;
        assert_eq!(
            (r.status, x.value.as_deref()),
            (Status::Ok, Some("'still here'"))
        );
        close(&mut client, &id).await;
    });
}

#[test]
fn a_cell_over_its_time_is_interrupted_and_one_that_will_not_stop_ends_its_session() {
    if !privileged(
        "a_cell_over_its_time_is_interrupted_and_one_that_will_not_stop_ends_its_session",
    ) {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let limits = LimitsRequest {
            timeout_ms: Some(500),
            ..LimitsRequest::default()
        };
        let id = open(&mut client, SessionOpen { limits, ..SessionOpen::default() })
            .await
            .session_id;
        let started = Instant::now();
        let (r, x) = cell(&mut client, &id, "import time\ntime.sleep(30)").await;
        assert_eq!(r.status, Status::Timeout, "{r:?}");
        assert!(!x.session_ended);
        assert!(started.elapsed() < Duration::from_secs(5));
        let (r, _) = cell(&mut client, &id, "1 + 1").await;
        assert_eq!(r.status, Status::Ok, "the session survived an interruptible timeout");

        let started = Instant::now();
        let stubborn = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass";
        let (r, x) = cell(&mut client, &id, stubborn).await;
        assert_eq!(r.status, Status::Timeout, "{r:?}");
        assert!(x.session_ended, "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = client
            .execute_cell(Caller::default(), &id, Cell { code: b"1".to_vec(), ..Cell::default() }, |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(&err, ClientError::Server(f) if f.kind == ErrorKind::SessionEnded), "{err:?}");
    });
}

/// A cell that writes past the cap and ends before the overflow is noticed still went over it:
/// `output_limit`, never `ok` with the truncation flag set; the session goes on.
#[test]
fn a_cell_over_its_output_cap_is_output_limit_even_when_it_ends_first() {
    if !privileged("a_cell_over_its_output_cap_is_output_limit_even_when_it_ends_first") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let limits = LimitsRequest {
            output_bytes: Some(1000),
            ..LimitsRequest::default()
        };
        let id = open(
            &mut client,
            SessionOpen {
                limits,
                ..SessionOpen::default()
            },
        )
        .await
        .session_id;
        for _ in 0..30 {
            let (r, x) = cell(&mut client, &id, "print('x' * 5000)").await;
            assert!(r.stdout_truncated, "{:?}", r.message);
            assert_eq!(r.status, Status::OutputLimit, "{:?}", r.message);
            assert!(!x.session_ended);
        }
        let (r, x) = cell(&mut client, &id, "1 + 1").await;
        assert_eq!((r.status, x.value.as_deref()), (Status::Ok, Some("2")));
        close(&mut client, &id).await;
    });
}

#[test]
fn a_session_crash_ends_it_with_a_clear_status() {
    if !privileged("a_session_crash_ends_it_with_a_clear_status") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let limits = LimitsRequest {
            memory_mb: Some(100),
            ..LimitsRequest::default()
        };
        let id = open(
            &mut client,
            SessionOpen {
                limits,
                ..SessionOpen::default()
            },
        )
        .await
        .session_id;
        let (r, x) = cell(&mut client, &id, "hog = bytearray(400 * 1024 * 1024)").await;
        assert_eq!(r.status, Status::MemoryLimit, "{r:?}");
        assert!(x.session_ended);

        let id = open(&mut client, SessionOpen::default()).await.session_id;
        let (r, x) = cell(&mut client, &id, "import os\nos.kill(os.getpid(), 9)").await;
        assert!(matches!(r.status, Status::Killed | Status::Error), "{r:?}");
        assert!(x.session_ended);

        let id = open(&mut client, SessionOpen::default()).await.session_id;
        let (r, x) = cell(&mut client, &id, "import sys\nsys.exit(3)").await;
        assert_eq!((r.status, r.exit_code), (Status::Error, Some(3)), "{r:?}");
        assert!(x.session_ended);
        assert!(r.message.unwrap_or_default().contains("exited the session"));
    });
}

#[test]
fn session_files_go_in_and_come_out_path_safe() {
    if !privileged("session_files_go_in_and_come_out_path_safe") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let id = open(&mut client, SessionOpen::default()).await.session_id;
        let (r, _) = cell_with(&mut client, &id, Cell {
            code: b"import os\nopen('out/result.txt', 'w').write(open('data/in.csv').read().upper())\nos.symlink('/etc/passwd', 'link')".to_vec(),
            files: vec![FileData { path: "data/in.csv".into(), content: b"a,b\n".to_vec() }],
            ..Cell::default()
        })
        .await;
        assert_eq!(r.status, Status::Error, "out/ does not exist yet: {r:?}");
        cell(&mut client, &id, "import os\nos.makedirs('out', exist_ok=True)\nopen('out/result.txt', 'w').write(open('data/in.csv').read().upper())\nos.symlink('/etc/passwd', 'link')").await;
        let reply = client
            .session(Caller::default(), SessionOp::ListFiles { session: id.clone() })
            .await
            .unwrap();
        let SessionReply::Files { files, truncated } = reply else { panic!("{reply:?}") };
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["data/in.csv", "out/result.txt"], "symlinks are not listed");
        assert!(!truncated);
        let reply = client
            .session(Caller::default(), SessionOp::ReadFile { session: id.clone(), path: "out/result.txt".into() })
            .await
            .unwrap();
        assert_eq!(reply, SessionReply::File(FileData { path: "out/result.txt".into(), content: b"A,B\n".to_vec() }));
        for (bad, kind) in [
            ("../etc/passwd", ErrorKind::InvalidRequest),
            ("/etc/passwd", ErrorKind::InvalidRequest),
            ("data/../../x", ErrorKind::InvalidRequest),
            ("link", ErrorKind::FileNotFound),
            ("missing.txt", ErrorKind::FileNotFound),
        ] {
            let err = client
                .session(Caller::default(), SessionOp::ReadFile { session: id.clone(), path: bad.into() })
                .await
                .unwrap_err();
            assert!(matches!(&err, ClientError::Server(f) if f.kind == kind), "{bad}: {err:?}");
        }
        // A replaced input file.
        let (_, x) = cell_with(&mut client, &id, Cell {
            code: b"open('data/in.csv').read()".to_vec(),
            files: vec![FileData { path: "data/in.csv".into(), content: b"new".to_vec() }],
            ..Cell::default()
        })
        .await;
        assert_eq!(x.value.as_deref(), Some("'new'"));
        close(&mut client, &id).await;
    });
}

#[test]
fn state_stays_inside_its_session() {
    if !privileged("state_stays_inside_its_session") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let a = open(&mut client, SessionOpen::default()).await.session_id;
        let b = open(&mut client, SessionOpen::default()).await.session_id;
        cell(&mut client, &a, "secret = 'sekret-A-1234'\nopen('secret.txt', 'w').write(secret)").await;
        let probe = "import gc, os\nfound = [o for o in gc.get_objects() if isinstance(o, str) and 'sekret-A' in o and o != 'sekret-A']\n(found, sorted(os.listdir('.')), 'secret' in globals())";
        let (r, x) = cell(&mut client, &b, probe).await;
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert_eq!(x.value.as_deref(), Some("([], [], False)"), "session B sees A");
        let run = client
            .run(common::spec("import gc, os\nprint([o for o in gc.get_objects() if isinstance(o, str) and 'sekret-A' in o and o != 'sekret-A'], os.listdir('.'))"))
            .await
            .unwrap();
        assert_eq!(text(&run.stdout), "[] []\n", "a run sees the session");
        close(&mut client, &a).await;
        close(&mut client, &b).await;
    });
}

#[test]
fn one_cell_at_a_time_and_old_clients_are_still_served() {
    if !privileged("one_cell_at_a_time_and_old_clients_are_still_served") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let id = open(&mut client, SessionOpen::default()).await.session_id;
        let first = client.next_id();
        client
            .send(&Request::Session {
                id: first,
                caller: Caller::default(),
                op: SessionOp::Execute {
                    session: id.clone(),
                    cell: Cell {
                        code: b"import time\ntime.sleep(1)".to_vec(),
                        ..Cell::default()
                    },
                },
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut other = connect().await;
        let err = other
            .execute_cell(
                Caller::default(),
                &id,
                Cell {
                    code: b"1".to_vec(),
                    ..Cell::default()
                },
                |_, _| {},
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Server(f) if f.kind == ErrorKind::SessionBusy),
            "{err:?}"
        );
        let err = other
            .session(
                Caller::default(),
                SessionOp::ListFiles {
                    session: id.clone(),
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Server(f) if f.kind == ErrorKind::SessionBusy),
            "{err:?}"
        );
        loop {
            if let Response::Done {
                id: got, result, ..
            } = client.recv().await.unwrap()
            {
                if got == first {
                    assert_eq!(result.status, Status::Ok);
                    break;
                }
            }
        }
        close(&mut client, &id).await;

        // A version 1 client: Run works, version 2 requests are refused by name.
        use tokio::net::UnixStream;
        let stream = UnixStream::connect(&daemon().socket).await.unwrap();
        let (r, w) = stream.into_split();
        let mut reader =
            sandfork_protocol::FrameReader::new(r, sandfork_protocol::DEFAULT_MAX_FRAME_LEN);
        let mut writer =
            sandfork_protocol::FrameWriter::new(w, sandfork_protocol::DEFAULT_MAX_FRAME_LEN);
        writer
            .write(&Request::Hello(sandfork_protocol::Hello {
                version: 1,
                client: "old".into(),
            }))
            .await
            .unwrap();
        let Some(Response::Hello(hello)) = reader.read::<Response>().await.unwrap() else {
            panic!()
        };
        assert_eq!(hello.version, 1);
        writer
            .write(&Request::Run {
                id: 1,
                spec: common::spec("print(7)"),
            })
            .await
            .unwrap();
        let Some(Response::Result { result, .. }) = reader.read::<Response>().await.unwrap() else {
            panic!()
        };
        assert_eq!(text(&result.stdout), "7\n");
        writer.write(&Request::Status { id: 2 }).await.unwrap();
        let Some(Response::Error { id: Some(2), error }) = reader.read::<Response>().await.unwrap()
        else {
            panic!()
        };
        assert_eq!(error.kind, ErrorKind::InvalidRequest);
    });
}

#[test]
fn every_cell_gets_exactly_its_own_output() {
    if !privileged("every_cell_gets_exactly_its_own_output") {
        return;
    }
    runtime().block_on(async {
        // Back to back, as fast as the socket goes, several sessions at once (a busy daemon is
        // where the pipe's bytes and the cell's end race): the output a cell flushed before it
        // said it was done must be in its own result, never in the next one's.
        let sessions = (0..3).map(|s| async move {
            let mut client = connect().await;
            let id = open(&mut client, SessionOpen::default()).await.session_id;
            for n in 0..200 {
                let code = format!("print({n})\nimport sys\nprint('e{n}', file=sys.stderr)");
                let (r, _) = cell(&mut client, &id, &code).await;
                assert_eq!(
                    (text(&r.stdout), text(&r.stderr)),
                    (format!("{n}\n"), format!("e{n}\n")),
                    "session {s}, cell {n}"
                );
            }
            close(&mut client, &id).await;
        });
        futures_util::future::join_all(sessions).await;
    });
}

#[test]
fn code_of_any_size_and_stdin_are_each_cells_own() {
    if !privileged("code_of_any_size_and_stdin_are_each_cells_own") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        let id = open(&mut client, SessionOpen::default()).await.session_id;
        // Code above the inline size travels as a memfd: the same result.
        let big = format!("# {}\nlen('{}')", "x".repeat(40_000), "y".repeat(30_000));
        let (r, x) = cell(&mut client, &id, &big).await;
        assert_eq!(
            (r.status, x.value.as_deref()),
            (Status::Ok, Some("30000")),
            "{r:?}"
        );
        // Stdin is the cell's own: a cell without any reads end of file at once, even after a
        // cell that had some, left some unread, or put something else on fd 0.
        let with_stdin = Cell {
            code: b"input()".to_vec(),
            stdin: b"first\nleft over\n".to_vec(),
            ..Cell::default()
        };
        let (_, x) = cell_with(&mut client, &id, with_stdin).await;
        assert_eq!(x.value.as_deref(), Some("'first'"));
        let eof = "import os, sys\n(sys.stdin.read(), os.read(0, 100))";
        let (_, x) = cell(&mut client, &id, eof).await;
        assert_eq!(x.value.as_deref(), Some("('', b'')"));
        cell(
            &mut client,
            &id,
            "import os\nr, w = os.pipe()\nos.write(w, b'stale')\nos.dup2(r, 0)",
        )
        .await;
        let (_, x) = cell(&mut client, &id, eof).await;
        assert_eq!(x.value.as_deref(), Some("('', b'')"));
        close(&mut client, &id).await;
    });
}

#[test]
fn memory_and_pids_are_the_sessions_across_its_cells() {
    if !privileged("memory_and_pids_are_the_sessions_across_its_cells") {
        return;
    }
    runtime().block_on(async {
        let mut client = connect().await;
        // Threads count against the session's pids (64 by default) whichever cell started them.
        let id = open(&mut client, SessionOpen::default()).await.session_id;
        let start = "import threading\nstop = threading.Event()\nthreads = []\ndef more(n):\n    for _ in range(n):\n        t = threading.Thread(target=stop.wait)\n        t.start()\n        threads.append(t)\n    return len(threads)";
        let (r, _) = cell(&mut client, &id, start).await;
        assert_eq!(r.status, Status::Ok, "{r:?}");
        let (r, x) = cell(&mut client, &id, "more(40)").await;
        assert_eq!((r.status, x.value.as_deref()), (Status::Ok, Some("40")), "{r:?}");
        let (r, _) = cell(&mut client, &id, "more(40)").await;
        assert_eq!(r.status, Status::Error, "the second 40 threads exceed the session's pids");
        assert!(text(&r.stderr).contains("can't start new thread"), "{}", text(&r.stderr));
        let (r, x) = cell(&mut client, &id, "stop.set()\nfor t in threads: t.join()\nlen(threads)").await;
        assert_eq!(r.status, Status::Ok, "{r:?}");
        assert!(x.value.unwrap().parse::<u32>().unwrap() < 64);
        close(&mut client, &id).await;

        // Memory: what earlier cells keep counts when a later cell allocates.
        let limits = LimitsRequest {
            memory_mb: Some(200),
            ..LimitsRequest::default()
        };
        let id = open(&mut client, SessionOpen { limits, ..SessionOpen::default() })
            .await
            .session_id;
        let (r, _) = cell(&mut client, &id, "a = bytearray(120 * 1024 * 1024)").await;
        assert_eq!(r.status, Status::Ok, "120 MiB fit: {r:?}");
        let (r, x) = cell(&mut client, &id, "b = bytearray(120 * 1024 * 1024)").await;
        assert_eq!((r.status, x.session_ended), (Status::MemoryLimit, true), "{r:?}");
    });
}
