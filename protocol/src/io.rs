//! Frames over byte streams: a cancel-safe async reader, an async writer, and blocking helpers.
//!
//! The reader keeps its buffer in the struct (the mini-redis `Connection` pattern): a `read` that
//! is cancelled — say, by the other branch of a `tokio::select!` — loses no bytes, and the next
//! `read` carries on with the same frame.

use std::io::{ErrorKind as IoErrorKind, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, CodecError, FRAME_HEADER_LEN};

/// Bytes asked of the stream per read when the current frame needs fewer, so that small frames
/// sent back to back are picked up in one system call.
const READ_CHUNK: usize = 8 * 1024;

/// Buffer capacity kept between frames; more (left over from a large frame) is given back.
const IDLE_CAPACITY: usize = 64 * 1024;

/// Reads whole frames from an async byte stream and decodes them.
#[derive(Debug)]
pub struct FrameReader<R> {
    /// The stream frames arrive on.
    inner: R,
    /// Bytes read but not yet returned as a message. Kept here, not in `read`'s locals, so a
    /// cancelled `read` loses nothing.
    buf: Vec<u8>,
    /// Largest payload accepted, already clamped to [`MAX_FRAME_LEN_LIMIT`](crate::MAX_FRAME_LEN_LIMIT).
    max_frame_len: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames from `inner` whose payloads may not exceed `max_frame_len` bytes
    /// (clamped to [`MAX_FRAME_LEN_LIMIT`](crate::MAX_FRAME_LEN_LIMIT)).
    pub fn new(inner: R, max_frame_len: u32) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            max_frame_len: codec::effective_max(max_frame_len),
        }
    }

    /// Reads and decodes the next frame.
    ///
    /// Returns `Ok(None)` on a clean end of stream between frames, [`CodecError::Truncated`] when
    /// the stream ends inside a frame, and [`CodecError::FrameTooLarge`] as soon as a header
    /// announces more than the cap, without waiting for (or allocating) the payload; the stream
    /// cannot be resynchronised after that, so drop it. A complete frame whose payload does not
    /// decode gives [`CodecError::Decode`] and is consumed, so the caller may keep reading.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no bytes are lost.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        loop {
            if let Some((used, payload)) = codec::parse_frame(&self.buf, self.max_frame_len)? {
                let decoded = codec::decode(payload);
                self.consume(used);
                return decoded.map(Some);
            }
            self.reserve_for_frame()?;
            // `read_buf` is cancel-safe: when cancelled, it has read nothing.
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return self.end_of_stream();
            }
        }
    }

    /// Makes room for the next read, so it never has an empty buffer to fill.
    ///
    /// The buffer grows with the bytes that have arrived (doubling), not with the length the header
    /// announces: a peer that announces a large frame and sends nothing costs nothing.
    fn reserve_for_frame(&mut self) -> Result<(), CodecError> {
        let frame = match codec::frame_len(&self.buf, self.max_frame_len)? {
            Some(len) => FRAME_HEADER_LEN + len,
            None => FRAME_HEADER_LEN,
        };
        let missing = frame.saturating_sub(self.buf.len());
        self.buf
            .reserve_exact(missing.min(self.buf.len()).max(READ_CHUNK));
        Ok(())
    }

    /// Drops the first `used` bytes (a frame just returned) and gives back a large frame's memory.
    fn consume(&mut self, used: usize) {
        self.buf.drain(..used);
        if self.buf.capacity() > IDLE_CAPACITY && self.buf.len() <= IDLE_CAPACITY / 2 {
            self.buf.shrink_to(IDLE_CAPACITY);
        }
    }

    /// What the end of the stream means given what is buffered.
    fn end_of_stream<T>(&self) -> Result<Option<T>, CodecError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let expected = match codec::frame_len(&self.buf, self.max_frame_len)? {
            Some(len) => FRAME_HEADER_LEN + len,
            None => FRAME_HEADER_LEN,
        };
        Err(CodecError::Truncated {
            expected,
            got: self.buf.len(),
        })
    }
}

impl<R> FrameReader<R> {
    /// The cap in force on payloads read.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Changes the cap (clamped to [`MAX_FRAME_LEN_LIMIT`](crate::MAX_FRAME_LEN_LIMIT)), e.g. to
    /// the one a server announced in its hello reply.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = codec::effective_max(max_frame_len);
    }

    /// Bytes read from the stream but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying stream; reading from it directly would desynchronise the frames.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying stream; bytes already buffered are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Encodes messages and writes them as frames to an async byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    /// The stream frames are written to.
    inner: W,
    /// Largest payload sent, already clamped; a larger message fails instead of being sent, so the
    /// peer is never handed a frame it must reject.
    max_frame_len: u32,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer of frames to `inner` whose payloads may not exceed `max_frame_len` bytes
    /// (clamped to [`MAX_FRAME_LEN_LIMIT`](crate::MAX_FRAME_LEN_LIMIT)).
    pub fn new(inner: W, max_frame_len: u32) -> Self {
        FrameWriter {
            inner,
            max_frame_len: codec::effective_max(max_frame_len),
        }
    }

    /// Writes `msg` as one frame (header and payload) and flushes.
    ///
    /// Not cancel-safe: a cancelled write may leave half a frame on the stream. Give the writer
    /// its own task, or do not race `write` against other branches.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), CodecError> {
        let frame = codec::encode_frame(msg, self.max_frame_len)?;
        self.inner.write_all(&frame).await?;
        self.inner.flush().await?;
        Ok(())
    }
}

impl<W> FrameWriter<W> {
    /// The cap in force on payloads written.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Changes the cap (clamped to [`MAX_FRAME_LEN_LIMIT`](crate::MAX_FRAME_LEN_LIMIT)), e.g. to
    /// the one a server announced in its hello reply.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = codec::effective_max(max_frame_len);
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The underlying stream; writing to it directly would desynchronise the frames.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The underlying stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads one frame from a blocking stream and decodes it.
///
/// Same outcomes as [`FrameReader::read`]: `Ok(None)` on end of stream between frames,
/// [`CodecError::Truncated`] inside one, [`CodecError::FrameTooLarge`] right after the header.
/// The payload buffer grows with the bytes that actually arrive, not with the announced length.
pub fn read_frame_blocking<T: DeserializeOwned>(
    r: &mut impl Read,
    max: u32,
) -> Result<Option<T>, CodecError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        FRAME_HEADER_LEN => {}
        got => {
            return Err(CodecError::Truncated {
                expected: FRAME_HEADER_LEN,
                got,
            })
        }
    }
    let len = codec::check_header(header, max)?;
    let mut payload = Vec::with_capacity(len.min(IDLE_CAPACITY));
    r.take(len as u64).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(CodecError::Truncated {
            expected: FRAME_HEADER_LEN + len,
            got: FRAME_HEADER_LEN + payload.len(),
        });
    }
    codec::decode(&payload).map(Some)
}

/// Encodes `msg` and writes it as one frame to a blocking stream, then flushes.
pub fn write_frame_blocking<T: Serialize>(
    w: &mut impl Write,
    msg: &T,
    max: u32,
) -> Result<(), CodecError> {
    let frame = codec::encode_frame(msg, max)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests;
