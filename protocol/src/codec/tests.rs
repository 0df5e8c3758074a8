//! Unit tests of `protocol/src/codec.rs`.

use std::time::{Duration, Instant};

use super::*;
use crate::*;

fn run_spec() -> RunSpec {
    RunSpec {
        profile: Some("pandas".into()),
        code: b"import sys\nprint(sys.argv)\n".to_vec(),
        stdin: vec![0, 1, 2, 255],
        argv: vec!["-v".into(), "ünïcode".into()],
        limits: LimitsRequest {
            timeout_ms: Some(2_000),
            memory_mb: Some(256),
            output_bytes: None,
        },
        mode: Mode::Function,
        files: vec![
            FileData {
                path: "data/in.csv".into(),
                content: b"a,b\n1,2\n".to_vec(),
            },
            FileData {
                path: "blob".into(),
                content: vec![0, 255],
            },
        ],
        tenant: Some("acme".into()),
        request_id: Some("req-1".into()),
        client_addr: Some("203.0.113.7:52100".into()),
    }
}

fn run_result() -> RunResult {
    RunResult {
        status: Status::Error,
        exit_code: Some(-1),
        signal: Some(31),
        stdout: b"out".to_vec(),
        stderr: b"Traceback (most recent call last):\n".to_vec(),
        stdout_truncated: true,
        stderr_truncated: false,
        usage: Usage {
            wall_ms: 1.5,
            cpu_ms: 0.25,
            max_rss_kb: 10_240,
        },
        timings: Timings {
            queue_ms: 0.1,
            spawn_ms: 0.2,
            run_ms: 1.5,
            total_ms: 2.0,
        },
        message: Some("killed by SIGSYS".into()),
        request_id: "req-1".into(),
        result: Some("{\"answer\": 42}".into()),
        files: vec![FileData {
            path: "out/plot.png".into(),
            content: vec![0x89, b'P', b'N', b'G'],
        }],
        files_truncated: true,
        rejection: None,
        warm: true,
    }
}

fn requests() -> Vec<Request> {
    vec![
        Request::Hello(Hello::new("test/1")),
        Request::Run {
            id: u64::MAX,
            spec: run_spec(),
        },
        Request::Run {
            id: 0,
            spec: RunSpec::default(),
        },
        Request::Cancel { id: 251 },
        Request::Ping { id: 70_000 },
        Request::Metrics { id: 1 << 32 },
    ]
}

fn responses() -> Vec<Response> {
    let mut out = vec![
        Response::Hello(HelloReply {
            version: PROTOCOL_VERSION,
            server: "sandforkd/0.1.0".into(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }),
        Response::Result {
            id: 9,
            result: run_result(),
        },
        Response::Result {
            id: 10,
            result: RunResult::new(Status::Ok),
        },
        Response::Pong {
            id: 3,
            status: ServerStatus {
                ready: true,
                profiles: vec![ProfileStatus {
                    name: "stdlib".into(),
                    zygotes_ready: 2,
                    zygotes_wanted: 4,
                    warm_children: 3,
                    queued: 300,
                }],
                slots_total: 64,
                slots_busy: 7,
            },
        },
        Response::Metrics {
            id: 4,
            text: "# TYPE sandfork_runs_total counter\nsandfork_runs_total 3\n".into(),
        },
    ];
    for kind in ErrorKind::ALL {
        out.push(Response::error(Some(1), kind, kind.as_str()));
    }
    out.push(Response::error(None, ErrorKind::Malformed, ""));
    for status in Status::ALL {
        out.push(Response::Result {
            id: 2,
            result: RunResult::new(status),
        });
    }
    for kind in RejectKind::ALL {
        out.push(Response::Result {
            id: 3,
            result: RunResult::rejected(kind, kind.as_str()),
        });
        let mut result = RunResult::rejected(kind, "");
        if let Some(rejection) = result.rejection.as_mut() {
            rejection.retry_after_ms = Some(1_500);
        }
        out.push(Response::Result { id: 3, result });
    }
    out.push(Response::Pong {
        id: 5,
        status: ServerStatus::default(),
    });
    out
}

#[test]
fn every_request_round_trips() {
    for msg in requests() {
        let payload = encode(&msg).unwrap();
        assert_eq!(decode::<Request>(&payload).unwrap(), msg);
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
        let (used, body) = parse_frame(&frame, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(body, &payload[..]);
    }
}

#[test]
fn every_response_round_trips() {
    for msg in responses() {
        let payload = encode(&msg).unwrap();
        assert_eq!(decode::<Response>(&payload).unwrap(), msg);
    }
}

#[test]
fn variant_indices_follow_declaration_order() {
    // The documented tables list variants in this order; the first payload byte is the index.
    for (i, status) in Status::ALL.into_iter().enumerate() {
        assert_eq!(encode(&status).unwrap(), vec![i as u8]);
    }
    for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
        assert_eq!(encode(&kind).unwrap(), vec![i as u8]);
    }
    for (i, kind) in RejectKind::ALL.into_iter().enumerate() {
        assert_eq!(encode(&kind).unwrap(), vec![i as u8]);
    }
    assert_eq!(encode(&Mode::Script).unwrap(), [0]);
    assert_eq!(encode(&Mode::Function).unwrap(), [1]);
    let firsts: Vec<u8> = requests().iter().map(|r| encode(r).unwrap()[0]).collect();
    assert_eq!(firsts, [0, 1, 1, 2, 3, 4]);
    let firsts: Vec<u8> = responses()[..5]
        .iter()
        .map(|r| encode(r).unwrap()[0])
        .collect();
    assert_eq!(firsts, [0, 1, 1, 3, 4]);
    assert_eq!(encode(&responses()[5]).unwrap()[0], 2);
}

#[test]
fn new_fields_follow_the_old_ones() {
    // A default spec: the five original fields, then mode Script (0), no files (0), and the
    // three None options.
    let payload = encode(&Request::Run {
        id: 7,
        spec: RunSpec::default(),
    })
    .unwrap();
    assert_eq!(payload, [1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // An empty result ends with request_id "", result None, no files, files_truncated false,
    // rejection None and warm false.
    let payload = encode(&RunResult::new(Status::Ok)).unwrap();
    assert_eq!(payload[payload.len() - 6..], [0, 0, 0, 0, 0, 0]);
    let payload = encode(&RunResult::rejected(RejectKind::Busy, "")).unwrap();
    assert_eq!(payload[payload.len() - 5..], [0, 1, 7, 0, 0]);
}

#[test]
fn integers_are_varints_and_floats_fixed() {
    assert_eq!(encode(&250u64).unwrap(), [250]);
    assert_eq!(encode(&251u64).unwrap(), [251, 251, 0]);
    assert_eq!(encode(&70_000u64).unwrap(), [252, 0x70, 0x11, 0x01, 0x00]);
    assert_eq!(
        encode(&(1u64 << 32)).unwrap(),
        [253, 0, 0, 0, 0, 1, 0, 0, 0]
    );
    assert_eq!(encode(&-1i32).unwrap(), [1]);
    assert_eq!(encode(&1i32).unwrap(), [2]);
    assert_eq!(encode(&1.0f64).unwrap(), 1.0f64.to_le_bytes());
    assert_eq!(encode(&Some(true)).unwrap(), [1, 1]);
    assert_eq!(encode(&None::<bool>).unwrap(), [0]);
}

#[test]
fn version_constant() {
    assert_eq!(PROTOCOL_VERSION, 2);
    assert_eq!(OLDEST_PROTOCOL_VERSION, 1);
    // Hello is variant 0, then the version as a varint.
    assert_eq!(
        &encode(&Request::Hello(Hello::new(""))).unwrap(),
        &[0, 2, 0]
    );
}

#[test]
fn parse_frame_needs_a_whole_header() {
    let frame = encode_frame(&Request::Ping { id: 1 }, DEFAULT_MAX_FRAME_LEN).unwrap();
    for n in 0..FRAME_HEADER_LEN {
        assert!(parse_frame(&frame[..n], DEFAULT_MAX_FRAME_LEN)
            .unwrap()
            .is_none());
    }
}

#[test]
fn parse_frame_waits_for_the_whole_payload() {
    let frame = encode_frame(&Request::Ping { id: 1 }, DEFAULT_MAX_FRAME_LEN).unwrap();
    for n in FRAME_HEADER_LEN..frame.len() {
        assert!(parse_frame(&frame[..n], DEFAULT_MAX_FRAME_LEN)
            .unwrap()
            .is_none());
    }
    let (used, payload) = parse_frame(&frame, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(decode::<Request>(payload).unwrap(), Request::Ping { id: 1 });
}

#[test]
fn parse_frame_two_back_to_back() {
    let mut buf = encode_frame(&Request::Ping { id: 1 }, DEFAULT_MAX_FRAME_LEN).unwrap();
    buf.extend(encode_frame(&Request::Cancel { id: 2 }, DEFAULT_MAX_FRAME_LEN).unwrap());
    let (used, payload) = parse_frame(&buf, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(decode::<Request>(payload).unwrap(), Request::Ping { id: 1 });
    let (used2, payload) = parse_frame(&buf[used..], DEFAULT_MAX_FRAME_LEN)
        .unwrap()
        .unwrap();
    assert_eq!(
        decode::<Request>(payload).unwrap(),
        Request::Cancel { id: 2 }
    );
    assert_eq!(used + used2, buf.len());
}

#[test]
fn oversized_header_is_rejected_before_the_payload() {
    let header = 20_000_000u32.to_le_bytes();
    let err = parse_frame(&header, DEFAULT_MAX_FRAME_LEN).unwrap_err();
    assert!(matches!(
        err,
        CodecError::FrameTooLarge {
            len: 20_000_000,
            max: DEFAULT_MAX_FRAME_LEN
        }
    ));
    assert_eq!(
        err.to_string(),
        "frame of 20000000 bytes exceeds the 16777216-byte cap"
    );
    assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    // The cap itself is fine; one byte more is not.
    assert!(parse_frame(&100u32.to_le_bytes(), 100).unwrap().is_none());
    assert!(parse_frame(&101u32.to_le_bytes(), 100).is_err());
}

#[test]
fn configured_cap_is_clamped_to_the_limit() {
    let header = (MAX_FRAME_LEN_LIMIT + 1).to_le_bytes();
    match parse_frame(&header, u32::MAX) {
        Err(CodecError::FrameTooLarge { max, .. }) => assert_eq!(max, MAX_FRAME_LEN_LIMIT),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[test]
fn encode_frame_refuses_oversized_payloads() {
    let msg = Request::Run {
        id: 1,
        spec: RunSpec {
            code: vec![b'x'; 200],
            ..run_spec()
        },
    };
    let err = encode_frame(&msg, 100).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { max: 100, .. }));
}

#[test]
fn empty_payload_is_malformed() {
    let err = decode::<Request>(&[]).unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Malformed);
}

#[test]
fn garbage_payload_is_malformed() {
    for garbage in [&[0xff; 16][..], &[1, 0xfe, 0xfe], &[0, 1, 5, b'a']] {
        let err = decode::<Request>(garbage).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut payload = encode(&Request::Ping { id: 1 }).unwrap();
    payload.push(0);
    let err = decode::<Request>(&payload).unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed payload: 1 trailing bytes after the message"
    );
}

#[test]
fn unknown_variant_is_malformed() {
    // Request has 5 variants; index 5 does not exist.
    let err = decode::<Request>(&[5, 1]).unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    // A Result whose status index is 9 (Status has 9 variants: 0..=8).
    let mut payload = encode(&Response::Result {
        id: 1,
        result: RunResult::new(Status::Ok),
    })
    .unwrap();
    assert_eq!(payload[2], 0);
    payload[2] = 9;
    assert!(matches!(
        decode::<Response>(&payload),
        Err(CodecError::Decode(_))
    ));
    // Mode has 3 variants (floor is 2) and RejectKind 9.
    assert_eq!(decode::<Mode>(&[2]).unwrap(), Mode::Floor);
    assert!(decode::<Mode>(&[3]).is_err());
    assert!(decode::<RejectKind>(&[9]).is_err());
    // Non-0/1 bool and option tags are refused too.
    assert!(decode::<Option<u8>>(&[2, 0]).is_err());
    assert!(decode::<bool>(&[2]).is_err());
}

/// A Run payload whose code length prefix claims `claimed` bytes, with 3 bytes behind it.
fn run_claiming(claimed: u64) -> Vec<u8> {
    let mut payload = vec![1, 7, 0]; // Run, id 7, profile None
    payload.push(253); // u64 varint marker
    payload.extend_from_slice(&claimed.to_le_bytes());
    payload.extend_from_slice(b"abc");
    payload
}

#[test]
fn huge_claimed_length_fails_fast() {
    for claimed in [1u64 << 40, u64::MAX, 60 << 20, 1 << 20] {
        let start = Instant::now();
        let err = decode::<Request>(&run_claiming(claimed)).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    // A huge argv element count: RunSpec with profile None, empty code and stdin, then argv.
    let mut payload = vec![1, 7, 0, 0, 0, 253];
    payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let start = Instant::now();
    assert!(matches!(
        decode::<Request>(&payload),
        Err(CodecError::Decode(_))
    ));
    assert!(start.elapsed() < Duration::from_secs(1));
    // A huge files count, then a file whose content claims a huge length: empty argv, no
    // limits, mode Script.
    for (count, content_len) in [(1u64 << 40, 1u64), (1, 1u64 << 40)] {
        let mut payload = vec![1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 253];
        payload.extend_from_slice(&count.to_le_bytes());
        payload.extend_from_slice(&[1, b'f', 253]);
        payload.extend_from_slice(&content_len.to_le_bytes());
        payload.extend_from_slice(b"abc");
        let start = Instant::now();
        assert!(matches!(
            decode::<Request>(&payload),
            Err(CodecError::Decode(_))
        ));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn large_valid_payloads_decode() {
    // Just past each limit step, and one dominated by tiny fields (8 claimed bytes per byte).
    for size in [8_193usize, 65_537, 524_289, 4_194_305, 5 << 20] {
        let msg = Request::Run {
            id: 1,
            spec: RunSpec {
                code: vec![b'#'; size],
                ..run_spec()
            },
        };
        assert_eq!(decode::<Request>(&encode(&msg).unwrap()).unwrap(), msg);
    }
    let msg = Request::Run {
        id: u64::MAX,
        spec: RunSpec {
            argv: vec![String::new(); 100_000],
            ..run_spec()
        },
    };
    assert_eq!(decode::<Request>(&encode(&msg).unwrap()).unwrap(), msg);
}

#[test]
fn a_frame_at_the_largest_cap_decodes() {
    let overhead = encode_frame(
        &Request::Run {
            id: 1,
            spec: run_spec(),
        },
        u32::MAX,
    )
    .unwrap()
    .len()
        - FRAME_HEADER_LEN
        - run_spec().code.len();
    let code_len = MAX_FRAME_LEN_LIMIT as usize - overhead - 8; // wider varint for the length
    let msg = Request::Run {
        id: 1,
        spec: RunSpec {
            code: vec![b'#'; code_len],
            ..run_spec()
        },
    };
    let frame = encode_frame(&msg, MAX_FRAME_LEN_LIMIT).unwrap();
    let (_, payload) = parse_frame(&frame, MAX_FRAME_LEN_LIMIT).unwrap().unwrap();
    assert!(payload.len() > MAX_FRAME_LEN_LIMIT as usize - 16);
    assert_eq!(decode::<Request>(payload).unwrap(), msg);
}

#[test]
fn error_kinds_and_messages() {
    let io = CodecError::from(std::io::Error::other("boom"));
    assert_eq!(io.kind(), ErrorKind::Internal);
    assert_eq!(io.to_string(), "i/o error: boom");
    let truncated = CodecError::Truncated {
        expected: 14,
        got: 7,
    };
    assert_eq!(truncated.kind(), ErrorKind::Malformed);
    assert_eq!(
        truncated.to_string(),
        "stream ended inside a frame after 7 of 14 bytes"
    );
    assert_eq!(CodecError::Encode("x".into()).kind(), ErrorKind::Internal);
    assert_eq!(CodecError::Decode("x".into()).kind(), ErrorKind::Malformed);
}
