//! Codec throughput: encode + decode of a typical run request and a typical result.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sandfork_protocol::codec::{decode, encode_frame, parse_frame};
use sandfork_protocol::{
    LimitsRequest, Request, Response, RunResult, RunSpec, Status, DEFAULT_MAX_FRAME_LEN,
};

/// A run request with 1 KiB of code, as a client sends it.
fn run_request() -> Request {
    Request::Run {
        id: 42,
        spec: RunSpec {
            profile: Some("stdlib".into()),
            code: b"print('hello, sandbox')\n".repeat(43)[..1024].to_vec(),
            stdin: Vec::new(),
            argv: vec!["--verbose".into()],
            limits: LimitsRequest {
                timeout_ms: Some(5_000),
                memory_mb: Some(256),
                output_bytes: None,
            },
            ..Default::default()
        },
    }
}

/// A result with 4 KiB of stdout, as the server sends it.
fn run_result() -> Response {
    let mut result = RunResult::new(Status::Ok);
    result.exit_code = Some(0);
    result.stdout = vec![b'x'; 4096];
    result.usage.wall_ms = 1.25;
    result.usage.cpu_ms = 1.0;
    result.usage.max_rss_kb = 9_800;
    result.timings.total_ms = 1.7;
    Response::Result { id: 42, result }
}

/// Frames `msg`, then parses and decodes it back, as the two ends of a connection would.
fn round_trip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let frame = encode_frame(msg, DEFAULT_MAX_FRAME_LEN).expect("encodes");
    let (_, payload) = parse_frame(&frame, DEFAULT_MAX_FRAME_LEN)
        .expect("valid frame")
        .expect("whole frame");
    decode(payload).expect("decodes")
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let request = run_request();
    group.throughput(Throughput::Elements(1));
    group.bench_function("run_request_1k_code", |b| {
        b.iter(|| round_trip(black_box(&request)))
    });
    let response = run_result();
    group.bench_function("run_result_4k_stdout", |b| {
        b.iter(|| round_trip(black_box(&response)))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
