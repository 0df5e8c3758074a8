//! Unit tests of `protocol/src/io.rs`.

use std::io::Cursor;
use std::time::Duration;

use tokio::io::{duplex, AsyncWriteExt};
use tokio::time::{sleep, timeout};

use super::*;
use crate::*;

const CAP: u32 = DEFAULT_MAX_FRAME_LEN;
/// A bound on every await, so a reader that wrongly waits fails the test instead of hanging.
const PATIENCE: Duration = Duration::from_secs(5);

fn run(id: u64) -> Request {
    Request::Run {
        id,
        spec: RunSpec {
            profile: None,
            code: vec![b'x'; 300],
            stdin: Vec::new(),
            argv: vec!["a".into()],
            limits: LimitsRequest::default(),
            ..Default::default()
        },
    }
}

fn frame(msg: &Request) -> Vec<u8> {
    codec::encode_frame(msg, CAP).unwrap()
}

#[tokio::test]
async fn writer_to_reader_round_trip() {
    let (client, server) = duplex(1024);
    let mut writer = FrameWriter::new(client, CAP);
    let mut reader = FrameReader::new(server, CAP);
    let sent = [
        Request::Hello(Hello::new("t")),
        run(1),
        Request::Ping { id: 2 },
    ];
    let task = tokio::spawn(async move {
        for msg in &sent {
            writer.write(msg).await.unwrap();
        }
        sent
    });
    let mut got = Vec::new();
    while let Some(msg) = timeout(PATIENCE, reader.read::<Request>())
        .await
        .unwrap()
        .unwrap()
    {
        got.push(msg);
    }
    assert_eq!(got, task.await.unwrap());
}

#[tokio::test]
async fn frames_sent_in_one_write_are_read_one_by_one() {
    let (mut client, server) = duplex(64 * 1024);
    let mut bytes = frame(&run(1));
    bytes.extend(frame(&Request::Cancel { id: 1 }));
    bytes.extend(frame(&Request::Ping { id: 3 }));
    client.write_all(&bytes).await.unwrap();
    drop(client);
    let mut reader = FrameReader::new(server, CAP);
    assert_eq!(reader.read::<Request>().await.unwrap(), Some(run(1)));
    assert_eq!(
        reader.read::<Request>().await.unwrap(),
        Some(Request::Cancel { id: 1 })
    );
    assert_eq!(
        reader.read::<Request>().await.unwrap(),
        Some(Request::Ping { id: 3 })
    );
    assert_eq!(reader.read::<Request>().await.unwrap(), None);
}

#[tokio::test]
async fn oversized_header_is_rejected_before_the_payload_arrives() {
    let (mut client, server) = duplex(1024);
    // Only the header; the writer stays open, so a reader waiting for the payload would hang.
    client
        .write_all(&20_000_000u32.to_le_bytes())
        .await
        .unwrap();
    let mut reader = FrameReader::new(server, CAP);
    let err = timeout(PATIENCE, reader.read::<Request>())
        .await
        .expect("reader waited for a payload it should have refused")
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::FrameTooLarge {
                len: 20_000_000,
                max: CAP
            }
        ),
        "{err:?}"
    );
    assert!(reader.buf.capacity() <= READ_CHUNK + FRAME_HEADER_LEN);
    drop(client);
}

#[tokio::test]
async fn eof_inside_a_frame_is_truncated() {
    let (mut client, server) = duplex(1024);
    client.write_all(&10u32.to_le_bytes()).await.unwrap();
    client.write_all(b"abc").await.unwrap();
    drop(client);
    let mut reader = FrameReader::new(server, CAP);
    let err = reader.read::<Request>().await.unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Truncated {
                expected: 14,
                got: 7
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Malformed);
}

#[tokio::test]
async fn eof_inside_a_header_is_truncated() {
    let (mut client, server) = duplex(1024);
    client.write_all(&[1, 0]).await.unwrap();
    drop(client);
    let mut reader = FrameReader::new(server, CAP);
    let err = reader.read::<Request>().await.unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Truncated {
                expected: 4,
                got: 2
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn eof_between_frames_is_clean() {
    let (client, server) = duplex(1024);
    drop(client);
    let mut reader = FrameReader::new(server, CAP);
    assert_eq!(reader.read::<Request>().await.unwrap(), None);
}

#[tokio::test]
async fn garbage_frame_is_consumed_and_reading_goes_on() {
    let (mut client, server) = duplex(1024);
    client.write_all(&3u32.to_le_bytes()).await.unwrap();
    client.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
    client
        .write_all(&frame(&Request::Ping { id: 5 }))
        .await
        .unwrap();
    drop(client);
    let mut reader = FrameReader::new(server, CAP);
    let err = reader.read::<Request>().await.unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    assert_eq!(
        reader.read::<Request>().await.unwrap(),
        Some(Request::Ping { id: 5 })
    );
    assert_eq!(reader.read::<Request>().await.unwrap(), None);
}

#[tokio::test]
async fn frame_split_across_many_small_writes() {
    let (mut client, server) = duplex(1024);
    let mut bytes = frame(&run(7));
    bytes.extend(frame(&run(8)));
    let writer = tokio::spawn(async move {
        for chunk in bytes.chunks(3) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut reader = FrameReader::new(server, CAP);
    for id in [7, 8] {
        let got = timeout(PATIENCE, reader.read::<Request>()).await.unwrap();
        assert_eq!(got.unwrap(), Some(run(id)));
    }
    writer.await.unwrap();
    assert_eq!(reader.read::<Request>().await.unwrap(), None);
}

#[tokio::test]
async fn cancelled_read_resumes_the_same_frame() {
    let (mut client, server) = duplex(1024);
    let bytes = frame(&run(9));
    let mut reader = FrameReader::new(server, CAP);
    let mut cancelled = 0;
    let mut got = None;
    // Feed the frame a few bytes at a time; between feeds, a timeout cancels the pending read.
    for chunk in bytes.chunks(16) {
        client.write_all(chunk).await.unwrap();
        tokio::select! {
            msg = reader.read::<Request>() => {
                got = Some(msg.unwrap());
            }
            _ = sleep(Duration::from_millis(5)) => cancelled += 1,
        }
    }
    assert!(
        cancelled > 10,
        "the read was cancelled only {cancelled} times"
    );
    assert_eq!(got, Some(Some(run(9))));
}

#[tokio::test]
async fn large_frame_memory_is_given_back() {
    let (mut client, server) = duplex(1 << 20);
    let big = Request::Run {
        id: 1,
        spec: RunSpec {
            code: vec![0; 4 << 20],
            ..match run(1) {
                Request::Run { spec, .. } => spec,
                _ => unreachable!(),
            }
        },
    };
    let bytes = frame(&big);
    let writer = tokio::spawn(async move {
        client.write_all(&bytes).await.unwrap();
        client
            .write_all(&frame(&Request::Ping { id: 1 }))
            .await
            .unwrap();
    });
    let mut reader = FrameReader::new(server, CAP);
    assert_eq!(reader.read::<Request>().await.unwrap(), Some(big));
    assert!(reader.buf.capacity() <= IDLE_CAPACITY);
    assert_eq!(
        reader.read::<Request>().await.unwrap(),
        Some(Request::Ping { id: 1 })
    );
    writer.await.unwrap();
}

#[tokio::test]
async fn writer_refuses_frames_over_its_cap() {
    let (client, _server) = duplex(1024);
    let mut writer = FrameWriter::new(client, 100);
    let err = writer.write(&run(1)).await.unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { max: 100, .. }));
}

#[test]
fn blocking_round_trip() {
    let mut wire = Vec::new();
    write_frame_blocking(&mut wire, &run(1), CAP).unwrap();
    write_frame_blocking(&mut wire, &Request::Ping { id: 2 }, CAP).unwrap();
    let mut r = Cursor::new(wire);
    assert_eq!(read_frame_blocking(&mut r, CAP).unwrap(), Some(run(1)));
    assert_eq!(
        read_frame_blocking(&mut r, CAP).unwrap(),
        Some(Request::Ping { id: 2 })
    );
    assert_eq!(read_frame_blocking::<Request>(&mut r, CAP).unwrap(), None);
}

#[test]
fn blocking_errors() {
    let mut wire = frame(&run(1));
    wire.truncate(wire.len() - 1);
    let expected = wire.len() + 1;
    let err = read_frame_blocking::<Request>(&mut Cursor::new(wire), CAP).unwrap_err();
    assert!(
        matches!(err, CodecError::Truncated { expected: e, got } if e == expected && got == e - 1),
        "{err:?}"
    );
    let err = read_frame_blocking::<Request>(&mut Cursor::new(vec![9, 9]), CAP).unwrap_err();
    assert!(matches!(
        err,
        CodecError::Truncated {
            expected: 4,
            got: 2
        }
    ));
    let err =
        read_frame_blocking::<Request>(&mut Cursor::new(u32::MAX.to_le_bytes()), CAP).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { .. }));
    let err = write_frame_blocking(&mut Vec::new(), &run(1), 10).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { max: 10, .. }));
}
