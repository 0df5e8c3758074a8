//! `zygote/zygote.py` speaks the shapes of `sandfork-ipc`: its report functions, its "ready" and
//! its sample "go" are run in the host's Python and decoded with the Rust definitions, strictly.
//! No privileges needed: nothing here forks a zygote.

use sandfork_ipc::child::{FromChild, GoRlimits, SessionStart, ToChild};
use sandfork_ipc::reports::{Next, Purpose, ReportCaps, ReportDecoder};
use sandfork_ipc::zygote::FromZygote;

/// Runs `script` with zygote.py importable as `zygote`; returns its stdout lines.
fn python(script: &str) -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/zygote");
    let output = std::process::Command::new("python3")
        .args([
            "-I",
            "-c",
            &format!("import sys; sys.path.insert(0, {dir:?})\n{script}"),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn unhex(line: &str) -> Vec<u8> {
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn the_childs_reports_decode_as_the_supervisor_expects() {
    let packets = python(
        r#"
import socket, zygote
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
zygote.report_ready(a)
zygote.report_result(a, b'{"answer": [1, 2]}')
payload = b"x" * 40000 + b"abc"
zygote.report_files(a, [{"path": "out/big.bin", "size": 40000}, {"path": "f.txt", "size": 3}], payload, True, 2)
zygote.report_done(a)
a.close()
while True:
    data = b.recv(1 << 20)
    if not data:
        break
    print(data.hex())
"#,
    );
    let packets: Vec<Vec<u8>> = packets.iter().map(|l| unhex(l)).collect();
    let ready: FromChild = sandfork_ipc::decode(&packets[0], 256).expect("ready decodes");
    assert_eq!(ready, FromChild::Ready {});
    let caps = ReportCaps {
        result_bytes: 1 << 20,
        file_count: 10,
        file_bytes: 1 << 20,
    };
    let mut decoder = ReportDecoder::new(caps, true);
    let mut stopped = false;
    for packet in &packets[1..] {
        assert!(!stopped, "the decoder stopped before the last packet");
        stopped = decoder.feed(packet, 0) == Next::Stop;
    }
    let reports = decoder.finish();
    assert_eq!(reports.misuse, None);
    assert!(reports.done);
    assert_eq!(reports.result, Some(Ok(br#"{"answer": [1, 2]}"#.to_vec())));
    let paths: Vec<&str> = reports.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["out/big.bin", "f.txt"]);
    assert_eq!(reports.files[0].content.len(), 40000);
    assert_eq!(reports.files[1].content, b"abc");
    assert!(reports.files_truncated, "the child's own truncation flag");
    assert_eq!(
        reports.files_skipped, 2,
        "files left out for their non-UTF-8 paths"
    );
}

#[test]
fn a_session_childs_reports_decode_as_the_supervisor_expects() {
    let packets = python(
        r#"
import socket, zygote
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
zygote.report_result(a, b"'x' * 3")
zygote.report_cell_done(a, True)
zygote.report_listing(a, [{"path": "d/f.txt", "size": 9}], False)
zygote.report_files(a, [{"path": "d/f.txt", "size": 2}], b"hi", False)
zygote.report_done(a)
a.close()
while True:
    data = b.recv(1 << 20)
    if not data:
        break
    print(data.hex())
print(zygote.SESSION_PREFIX.hex())
"#,
    );
    let mut packets: Vec<Vec<u8>> = packets.iter().map(|l| unhex(l)).collect();
    let prefix = packets.pop().unwrap();
    let caps = ReportCaps {
        result_bytes: 1 << 20,
        file_count: 10,
        file_bytes: 1 << 20,
    };
    let mut rest = packets.iter();
    let mut read = |purpose| {
        let mut decoder = ReportDecoder::for_purpose(caps, purpose);
        for packet in rest.by_ref() {
            if decoder.feed(packet, 0) == Next::Stop {
                break;
            }
        }
        decoder.finish()
    };
    let cell = read(Purpose::Cell);
    assert_eq!(cell.misuse, None);
    assert_eq!(
        (cell.result, cell.cell_failed),
        (Some(Ok(b"'x' * 3".to_vec())), Some(true))
    );
    let listing = read(Purpose::Listing);
    assert_eq!(
        (listing.misuse, listing.listing.len(), listing.done),
        (None, 1, true)
    );
    let file = read(Purpose::ReadFile);
    assert_eq!(
        (file.misuse, file.files[0].content.as_slice()),
        (None, b"hi".as_slice())
    );
    let session = ToChild::Session(SessionStart {
        rlimits: GoRlimits {
            cpu_seconds: 3600,
            as_bytes: None,
        },
    });
    let encoded = sandfork_ipc::encode(&session).unwrap();
    assert!(
        encoded.starts_with(&prefix),
        "zygote.py recognizes a session by its prefix"
    );
}

#[test]
fn the_zygotes_ready_and_the_childs_go_match_the_rust_types() {
    let lines = python(
        r#"
import json, zygote
print(json.dumps(zygote.ready_message(3, ["numpy: ImportError: x"], None, "pass", {"landlock": 6})))
print(zygote.SAMPLE_GO)
print(zygote.REHEARSE.decode())
"#,
    );
    let ready: FromZygote = sandfork_ipc::decode(lines[0].as_bytes(), 1 << 16).expect("ready");
    let FromZygote::Ready(info) = ready else {
        panic!("not a ready: {ready:?}")
    };
    assert_eq!(info.preloaded, 3);
    assert!(info.rehearsal);
    let go: ToChild = sandfork_ipc::decode(lines[1].as_bytes(), 1 << 16).expect("sample go");
    assert!(matches!(go, ToChild::Go(_)));
    let rehearse = sandfork_ipc::encode(&ToChild::Rehearse {}).expect("encodes");
    assert_eq!(lines[2].as_bytes(), rehearse.as_slice());
}
