//! The worked examples in docs/PROTOCOL.md must be what the encoder produces.

use sandfork_protocol::codec::encode_frame;
use sandfork_protocol::{
    ErrorKind, FileData, Hello, HelloReply, LimitsRequest, Mode, RejectKind, Rejection, Request,
    Response, RunResult, RunSpec, Status, Timings, Usage, DEFAULT_MAX_FRAME_LEN,
    MAX_FRAME_LEN_LIMIT, PROTOCOL_VERSION,
};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// Each example's name (as in the doc's `<!-- wire-example: NAME -->` marker) and its frame.
fn examples() -> Vec<(&'static str, Vec<u8>)> {
    let hello = Request::Hello(Hello {
        version: 1,
        client: "example/0.1".into(),
    });
    let hello_reply = Response::Hello(HelloReply {
        version: 1,
        server: "sandforkd/0.1.0".into(),
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
    });
    let run = Request::Run {
        id: 7,
        spec: RunSpec {
            profile: None,
            code: b"print(1)\n".to_vec(),
            stdin: Vec::new(),
            argv: vec!["-v".into()],
            limits: LimitsRequest {
                timeout_ms: Some(2000),
                memory_mb: None,
                output_bytes: None,
            },
            mode: Mode::Script,
            files: Vec::new(),
            tenant: None,
            request_id: None,
            client_addr: None,
        },
    };
    let run_function = Request::Run {
        id: 8,
        spec: RunSpec {
            profile: None,
            code: b"def main():\n    return open('n').read()\n".to_vec(),
            stdin: Vec::new(),
            argv: Vec::new(),
            limits: LimitsRequest::default(),
            mode: Mode::Function,
            files: vec![FileData {
                path: "n".into(),
                content: b"42".to_vec(),
            }],
            tenant: None,
            request_id: Some("r-8".into()),
            client_addr: None,
        },
    };
    let result = Response::Result {
        id: 7,
        result: RunResult {
            status: Status::Ok,
            exit_code: Some(0),
            signal: None,
            stdout: b"1\n".to_vec(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            usage: Usage {
                wall_ms: 1.5,
                cpu_ms: 1.0,
                max_rss_kb: 9000,
            },
            timings: Timings {
                queue_ms: 0.0,
                spawn_ms: 0.25,
                run_ms: 1.5,
                total_ms: 2.0,
            },
            message: None,
            request_id: "r-7".into(),
            result: None,
            files: Vec::new(),
            files_truncated: false,
            rejection: None,
            warm: true,
        },
    };
    let result_function = Response::Result {
        id: 8,
        result: RunResult {
            status: Status::Ok,
            exit_code: Some(0),
            usage: Usage {
                wall_ms: 0.5,
                cpu_ms: 0.5,
                max_rss_kb: 9000,
            },
            timings: Timings {
                queue_ms: 0.0,
                spawn_ms: 0.25,
                run_ms: 0.5,
                total_ms: 1.0,
            },
            request_id: "r-8".into(),
            result: Some("\"42\"".into()),
            warm: true,
            ..RunResult::new(Status::Ok)
        },
    };
    let rejected = Response::Result {
        id: 9,
        result: RunResult {
            rejection: Some(Rejection {
                kind: RejectKind::RateLimited,
                retry_after_ms: Some(250),
            }),
            request_id: "r-9".into(),
            ..RunResult::rejected(RejectKind::RateLimited, "rate limited")
        },
    };
    let metrics = Request::Metrics { id: 10 };
    let error = Response::error(Some(7), ErrorKind::DuplicateId, "id 7 in flight");
    vec![
        ("hello", frame(&hello)),
        ("hello-reply", frame(&hello_reply)),
        ("run", frame(&run)),
        ("result", frame(&result)),
        ("run-function", frame(&run_function)),
        ("result-function", frame(&result_function)),
        ("rejected", frame(&rejected)),
        ("metrics", frame(&metrics)),
        ("error", frame(&error)),
    ]
}

/// `msg` as a whole frame.
fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    encode_frame(msg, DEFAULT_MAX_FRAME_LEN).expect("example encodes")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of the annotated block after `<!-- wire-example: NAME -->`: on each line, the
/// two-digit hex tokens before the `#` comment.
fn annotated_bytes(name: &str) -> Vec<u8> {
    let marker = format!("<!-- wire-example: {name} -->");
    let after = DOC
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no {marker}"))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```text\n")
        .unwrap_or_else(|| panic!("{marker} is not followed by a ```text block"));
    let block = &block[..block.find("```").expect("unclosed block")];
    let mut bytes = Vec::new();
    for line in block.lines() {
        let data = line.split('#').next().unwrap_or_default();
        for token in data.split_whitespace() {
            assert_eq!(
                token.len(),
                2,
                "{name}: {token:?} in {line:?} is not one byte"
            );
            bytes.push(
                u8::from_str_radix(token, 16)
                    .unwrap_or_else(|_| panic!("{name}: {token:?} in {line:?} is not hex")),
            );
        }
    }
    bytes
}

#[test]
fn worked_examples_match_the_encoder() {
    for (name, frame) in examples() {
        assert_eq!(
            hex(&annotated_bytes(name)),
            hex(&frame),
            "annotated bytes of the {name} example in docs/PROTOCOL.md"
        );
        let one_line = format!("`{}`", hex(&frame));
        assert!(
            DOC.contains(&one_line),
            "docs/PROTOCOL.md lacks the one-line hex of the {name} example: {one_line}"
        );
    }
}

#[test]
fn doc_lists_every_enum_variant_at_its_index() {
    for (i, status) in Status::ALL.into_iter().enumerate() {
        let row = format!("| {i} | `{}` |", status.as_str());
        assert!(DOC.contains(&row), "docs/PROTOCOL.md lacks the row {row}");
    }
    for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
        let row = format!("| {i} | `{}` |", kind.as_str());
        assert!(DOC.contains(&row), "docs/PROTOCOL.md lacks the row {row}");
    }
    for (i, kind) in RejectKind::ALL.into_iter().enumerate() {
        let row = format!("| {i} | `{}` |", kind.as_str());
        assert!(DOC.contains(&row), "docs/PROTOCOL.md lacks the row {row}");
    }
    for (i, mode) in ["script", "function"].into_iter().enumerate() {
        let row = format!("| {i} | `{mode}` |");
        assert!(DOC.contains(&row), "docs/PROTOCOL.md lacks the row {row}");
    }
}

#[test]
fn doc_states_the_constants() {
    assert!(DOC.contains(&format!("(version {PROTOCOL_VERSION})")));
    assert!(DOC.contains(&format!("{DEFAULT_MAX_FRAME_LEN} bytes")));
    assert!(DOC.contains(&format!("{MAX_FRAME_LEN_LIMIT} bytes")));
}

/// Prints the examples' hex, to help update the doc when a message changes.
#[test]
#[ignore]
fn print_examples() {
    for (name, frame) in examples() {
        println!("{name}: {}", hex(&frame));
    }
}
