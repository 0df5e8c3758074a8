//! Bad input to the socket: each case gets a clear error frame (or a closed connection for
//! framing errors), and the daemon keeps serving. Raw bytes are written with std sockets so
//! nothing in the client library can paper over a server bug.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{daemon, descendants, ok_stdout, privileged, run, spec};
use sandfork_protocol::codec::{encode, encode_frame};
use sandfork_protocol::{
    read_frame_blocking, ErrorKind, Hello, Request, Response, DEFAULT_MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};

const MAX: u32 = DEFAULT_MAX_FRAME_LEN;

fn connect() -> UnixStream {
    let stream = UnixStream::connect(&daemon().socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

fn hello() -> Request {
    Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: "protocol-test".into(),
    })
}

fn send(stream: &mut UnixStream, request: &Request) {
    stream
        .write_all(&encode_frame(request, MAX).unwrap())
        .unwrap();
}

fn recv(stream: &mut UnixStream) -> Option<Response> {
    read_frame_blocking(stream, MAX).expect("a well-formed response")
}

fn handshake() -> UnixStream {
    let mut stream = connect();
    send(&mut stream, &hello());
    assert!(matches!(recv(&mut stream), Some(Response::Hello(_))));
    stream
}

fn expect_error(response: Option<Response>, kind: ErrorKind) -> (Option<u64>, String) {
    match response {
        Some(Response::Error { id, error }) => {
            assert_eq!(error.kind, kind, "{}", error.message);
            assert!(!error.message.is_empty());
            (id, error.message)
        }
        other => panic!("expected an error of kind {kind:?}, got {other:?}"),
    }
}

/// True if the server closed the connection (EOF) within the read timeout.
fn closed(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(0))
        || matches!(stream.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

async fn still_healthy() {
    assert_eq!(ok_stdout(&run("print('healthy')").await), "healthy\n");
}

#[tokio::test]
async fn oversized_frame_is_refused_before_reading_it() {
    if !privileged("oversized_frame_is_refused_before_reading_it") {
        return;
    }
    let mut stream = handshake();
    // Announce 2 GiB and send nothing more: the server must answer from the header alone.
    stream.write_all(&(2u32 << 30).to_le_bytes()).unwrap();
    let (id, message) = expect_error(recv(&mut stream), ErrorKind::FrameTooLarge);
    assert_eq!(id, None);
    assert!(message.contains("exceeds"), "{message}");
    assert!(closed(&mut stream));
    still_healthy().await;
}

#[tokio::test]
async fn oversized_frame_before_hello() {
    if !privileged("oversized_frame_before_hello") {
        return;
    }
    let mut stream = connect();
    stream.write_all(&(MAX + 1).to_le_bytes()).unwrap();
    expect_error(recv(&mut stream), ErrorKind::FrameTooLarge);
    assert!(closed(&mut stream));
    still_healthy().await;
}

#[tokio::test]
async fn garbage_payload_gets_malformed_and_the_connection_survives() {
    if !privileged("garbage_payload_gets_malformed_and_the_connection_survives") {
        return;
    }
    let mut stream = handshake();
    let garbage = [0xffu8, 0xfe, 0x13, 0x37, 0x00, 0x99, 0x42];
    stream
        .write_all(&(garbage.len() as u32).to_le_bytes())
        .unwrap();
    stream.write_all(&garbage).unwrap();
    expect_error(recv(&mut stream), ErrorKind::Malformed);
    // The same connection still runs code.
    send(
        &mut stream,
        &Request::Run {
            id: 7,
            spec: spec("print('after garbage')"),
        },
    );
    match recv(&mut stream) {
        Some(Response::Result { id: 7, result }) => {
            assert_eq!(ok_stdout(&result), "after garbage\n")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn garbage_first_frame_closes() {
    if !privileged("garbage_first_frame_closes") {
        return;
    }
    let mut stream = connect();
    stream.write_all(&5u32.to_le_bytes()).unwrap();
    stream.write_all(b"\x09\x09\x09\x09\x09").unwrap();
    expect_error(recv(&mut stream), ErrorKind::Malformed);
    assert!(closed(&mut stream));
    // Raw HTTP on the socket: the "length" is huge, so FrameTooLarge.
    let mut http = connect();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    expect_error(recv(&mut http), ErrorKind::FrameTooLarge);
    still_healthy().await;
}

#[tokio::test]
async fn unknown_version_is_refused() {
    if !privileged("unknown_version_is_refused") {
        return;
    }
    let mut stream = connect();
    send(
        &mut stream,
        &Request::Hello(Hello {
            version: PROTOCOL_VERSION + 41,
            client: "from the future".into(),
        }),
    );
    let (_, message) = expect_error(recv(&mut stream), ErrorKind::UnsupportedVersion);
    assert!(message.contains("version"), "{message}");
    assert!(closed(&mut stream));
}

#[tokio::test]
async fn a_request_before_hello_is_refused() {
    if !privileged("a_request_before_hello_is_refused") {
        return;
    }
    let mut stream = connect();
    send(
        &mut stream,
        &Request::Run {
            id: 1,
            spec: spec("print(1)"),
        },
    );
    expect_error(recv(&mut stream), ErrorKind::HelloRequired);
    assert!(closed(&mut stream));
}

#[tokio::test]
async fn truncated_frames_and_abrupt_closes_do_not_hurt() {
    if !privileged("truncated_frames_and_abrupt_closes_do_not_hurt") {
        return;
    }
    for cut in [1usize, 3, 4, 10] {
        let mut stream = handshake();
        let frame = encode_frame(
            &Request::Run {
                id: 1,
                spec: spec("print(1)"),
            },
            MAX,
        )
        .unwrap();
        stream
            .write_all(&frame[..cut.min(frame.len() - 1)])
            .unwrap();
        drop(stream);
    }
    for _ in 0..20 {
        drop(connect());
    }
    still_healthy().await;
}

#[tokio::test]
async fn bad_code_gets_invalid_request_with_its_id() {
    if !privileged("bad_code_gets_invalid_request_with_its_id") {
        return;
    }
    let mut stream = handshake();
    let cases: [(u64, &[u8], &str); 4] = [
        (11, b"", "empty"),
        (12, b"print('\xff\xfe')", "UTF-8"),
        (13, b"print(1)\0print(2)", "NUL"),
        (14, b"\xc3\x28", "UTF-8"),
    ];
    for (id, code, why) in cases {
        let mut request = spec("");
        request.code = code.to_vec();
        send(&mut stream, &Request::Run { id, spec: request });
        let (got, message) = expect_error(recv(&mut stream), ErrorKind::InvalidRequest);
        assert_eq!(got, Some(id));
        assert!(message.contains(why), "{message}");
    }
    // Still usable.
    send(
        &mut stream,
        &Request::Run {
            id: 15,
            spec: spec("print(15)"),
        },
    );
    assert!(matches!(
        recv(&mut stream),
        Some(Response::Result { id: 15, .. })
    ));
}

#[tokio::test]
async fn duplicate_ids_unknown_cancels_and_cancel() {
    if !privileged("duplicate_ids_unknown_cancels_and_cancel") {
        return;
    }
    let mut stream = handshake();
    send(
        &mut stream,
        &Request::Run {
            id: 1,
            spec: spec("import time\ntime.sleep(30)"),
        },
    );
    send(
        &mut stream,
        &Request::Run {
            id: 1,
            spec: spec("print('dup')"),
        },
    );
    let (id, _) = expect_error(recv(&mut stream), ErrorKind::DuplicateId);
    assert_eq!(id, Some(1));
    send(&mut stream, &Request::Cancel { id: 99 });
    let (id, _) = expect_error(recv(&mut stream), ErrorKind::UnknownId);
    assert_eq!(id, Some(99));
    let started = Instant::now();
    send(&mut stream, &Request::Cancel { id: 1 });
    match recv(&mut stream) {
        Some(Response::Result { id: 1, result }) => {
            assert_eq!(result.status, sandfork_protocol::Status::Killed);
            assert!(result.message.unwrap().contains("cancel"));
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    send(&mut stream, &Request::Ping { id: 2 });
    assert!(matches!(
        recv(&mut stream),
        Some(Response::Pong { id: 2, .. })
    ));
}

#[tokio::test]
async fn a_vanished_clients_child_is_killed() {
    if !privileged("a_vanished_clients_child_is_killed") {
        return;
    }
    let daemon = daemon();
    // The child marks itself with a file in its private tmpfs; the host finds it through
    // /proc/<pid>/root, so other tests' children cannot be mistaken for it.
    let marker = format!("vanish-{}", std::process::id());
    let ours = || {
        descendants(daemon.pid).into_iter().find(|pid| {
            std::path::Path::new(&format!("/proc/{pid}/root/sandbox/work/{marker}")).exists()
        })
    };
    let mut stream = handshake();
    let code = format!("import time\nopen('{marker}', 'w').close()\ntime.sleep(60)");
    let mut request = spec(&code);
    request.request_id = Some(marker.clone());
    send(
        &mut stream,
        &Request::Run {
            id: 1,
            spec: request,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut child = None;
    while child.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        child = ours();
    }
    let child = child.expect("the child never appeared");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone = || !std::path::Path::new(&format!("/proc/{child}")).exists();
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gone(),
        "the vanished client's child {child} is still running"
    );
    // The run still left its one audit record.
    let deadline = Instant::now() + Duration::from_secs(5);
    let record = loop {
        let log = common::read_log(&daemon.log);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("sandfork::audit") && l.contains(&marker))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no audit record for the cancelled run"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(record.contains("status=\"killed\""), "{record}");
    still_healthy().await;
}

#[tokio::test]
async fn a_payload_claiming_a_huge_length_is_malformed() {
    if !privileged("a_payload_claiming_a_huge_length_is_malformed") {
        return;
    }
    let mut stream = handshake();
    // A Run whose code field claims 2^40 bytes, in a 40-byte frame.
    let mut payload = encode(&Request::Ping { id: 1 }).unwrap();
    payload[0] = 1; // variant Run
    payload.truncate(2);
    payload.extend_from_slice(&[0u8]); // profile: None
    payload.push(253); // varint u64 marker
    payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
    payload.extend_from_slice(&[0u8; 16]);
    stream
        .write_all(&(payload.len() as u32).to_le_bytes())
        .unwrap();
    stream.write_all(&payload).unwrap();
    expect_error(recv(&mut stream), ErrorKind::Malformed);
    still_healthy().await;
}
