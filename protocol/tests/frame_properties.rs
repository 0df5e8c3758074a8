//! Property tests of the frame layer and the decoder, as a hostile client would drive them:
//! random and adversarial byte strings and frame sequences. Nothing panics, every error is an
//! error, and nothing is allocated beyond the frame cap (a counting allocator records the largest
//! single allocation; this binary holds only these tests).

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use proptest::prelude::*;
use recording::LARGEST;
use sandfork_protocol::codec::{decode, encode_frame, parse_frame};
use sandfork_protocol::{FrameReader, Request, Response, RunSpec};
use tokio::io::AsyncWriteExt;

#[path = "support/recording.rs"]
mod recording;

/// The largest-allocation record is global: one property at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The frame cap these properties run under.
const MAX_FRAME: u32 = 64 * 1024;
/// What a decoder may allocate beyond the bytes it was given: serde's cautious preallocation
/// for a claimed sequence length is capped at 1 MiB.
const DECODE_SLACK: usize = 1024 * 1024;

/// Bytes that look like frames often enough to reach past the header checks: a plausible
/// header (small, at the cap, just over it, huge) before random or valid payloads.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let valid = Just(
        encode_frame(
            &Request::Run {
                id: 1,
                spec: RunSpec {
                    code: b"print(1)".to_vec(),
                    ..RunSpec::default()
                },
            },
            MAX_FRAME,
        )
        .expect("encodes"),
    );
    let header = prop_oneof![0u32..64, Just(MAX_FRAME), Just(MAX_FRAME + 1), any::<u32>()]
        .prop_map(|n| n.to_le_bytes().to_vec());
    let garbage = proptest::collection::vec(any::<u8>(), 0..256);
    let piece = prop_oneof![valid, header, garbage];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn parse_frame_stays_inside_its_buffer(buf in stream()) {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(Some((total, payload))) = parse_frame(&buf, MAX_FRAME) {
            prop_assert!(total <= buf.len());
            prop_assert!(payload.len() as u32 <= MAX_FRAME);
            prop_assert_eq!(total, payload.len() + 4);
        }
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic_or_an_allocation(payload in stream()) {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        LARGEST.store(0, Ordering::Relaxed);
        let _ = decode::<Request>(&payload);
        let _ = decode::<Response>(&payload);
        let largest = LARGEST.load(Ordering::Relaxed);
        prop_assert!(
            largest <= payload.len() * 16 + DECODE_SLACK,
            "decoding {} bytes allocated {largest}", payload.len()
        );
    }

    #[test]
    fn the_reader_takes_any_stream_without_panic_or_overallocation(bytes in stream()) {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let largest = runtime.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let writer = tokio::spawn(async move {
                let _ = client.write_all(&bytes).await;
            });
            let mut reader = FrameReader::new(server, MAX_FRAME);
            LARGEST.store(0, Ordering::Relaxed);
            // Every frame is read until the stream ends or the reader refuses one.
            for _ in 0..64 {
                match reader.read::<Request>().await {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
            let largest = LARGEST.load(Ordering::Relaxed);
            drop(reader);
            let _ = writer.await;
            largest
        });
        prop_assert!(
            largest <= MAX_FRAME as usize + DECODE_SLACK,
            "the reader allocated {largest} bytes"
        );
    }
}
