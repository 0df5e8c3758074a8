//! A hostile peer cannot make the decoder or the reader allocate what it merely claims.
//!
//! A counting global allocator records the largest single allocation; this file holds one test so
//! no other test's allocations interfere.

use std::sync::atomic::Ordering;

use sandfork_protocol::codec::decode;
use sandfork_protocol::{CodecError, FrameReader, Request, MAX_FRAME_LEN_LIMIT};
use tokio::io::AsyncWriteExt;

#[path = "support/recording.rs"]
mod recording;

use recording::LARGEST;

/// Well below anything a claimed length in these tests asks for.
const SMALL: usize = 64 * 1024;

/// A Run payload whose code length prefix claims `claimed` bytes, with 3 bytes behind it.
fn run_claiming(claimed: u64) -> Vec<u8> {
    let mut payload = vec![1, 7, 0, 253]; // Run, id 7, profile None, u64 varint marker
    payload.extend_from_slice(&claimed.to_le_bytes());
    payload.extend_from_slice(b"abc");
    payload
}

#[tokio::test(flavor = "current_thread")]
async fn claimed_lengths_are_not_allocated() {
    for claimed in [1u64 << 40, 60 << 20, 8 << 20, 1 << 20] {
        let payload = run_claiming(claimed);
        LARGEST.store(0, Ordering::Relaxed);
        let outcome = decode::<Request>(&payload);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(matches!(outcome, Err(CodecError::Decode(_))), "{outcome:?}");
        assert!(
            largest < SMALL,
            "decoding a {}-byte payload claiming {claimed} bytes allocated {largest} bytes",
            payload.len()
        );
    }

    // A header announcing a large frame (within the cap), then nothing: the reader must not
    // reserve the announced size before the bytes arrive.
    let (mut client, server) = tokio::io::duplex(1024);
    client
        .write_all(&(60u32 << 20).to_le_bytes())
        .await
        .expect("duplex write");
    client.write_all(b"abc").await.expect("duplex write");
    drop(client);
    let mut reader = FrameReader::new(server, MAX_FRAME_LEN_LIMIT);
    LARGEST.store(0, Ordering::Relaxed);
    let outcome = reader.read::<Request>().await;
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        matches!(outcome, Err(CodecError::Truncated { got: 7, .. })),
        "{outcome:?}"
    );
    assert!(largest < SMALL, "the reader allocated {largest} bytes");
}
