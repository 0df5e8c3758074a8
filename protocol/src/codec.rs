//! Bytes ⇄ messages: the payload encoding and the frame layout.
//!
//! A frame is a 4-byte little-endian payload length followed by the payload, a message encoded with
//! bincode 2's `standard()` configuration (varint integers, little-endian). This is the only module
//! that names bincode, so the payload encoding can be swapped in one place; `docs/PROTOCOL.md`
//! spells out the bytes for implementers in other languages.
//!
//! Two caps keep a hostile peer from making us allocate: the frame cap (checked on the 4-byte
//! header before anything else) and a decode limit on the bytes that length prefixes inside a
//! payload may claim (checked by bincode before it allocates a `Vec`/`String`).

use bincode::config::Config;
use bincode::error::DecodeError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ErrorKind, MAX_FRAME_LEN_LIMIT};

/// Bytes in a frame header: the payload length as a `u32`, little-endian.
pub const FRAME_HEADER_LEN: usize = 4;

/// The most bytes one decode may claim, whatever the payload's size.
///
/// bincode counts claims in in-memory sizes (a one-byte varint `u64` claims 8), so a payload at the
/// largest allowed frame of [`MAX_FRAME_LEN_LIMIT`] bytes claims somewhat more than its length;
/// twice the frame limit leaves room for that.
const DECODE_LIMIT_CEILING: usize = 2 * MAX_FRAME_LEN_LIMIT as usize;

/// Errors of encoding, decoding and framing.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame (announced by a header, or about to be sent) is larger than the cap.
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    FrameTooLarge {
        /// Payload length announced or produced.
        len: u64,
        /// The cap in force.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame after {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame needed, header included (4 when the header itself was cut).
        expected: usize,
        /// Bytes that arrived before the end.
        got: usize,
    },
    /// A complete payload is not a valid message.
    #[error("malformed payload: {0}")]
    Decode(String),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl CodecError {
    /// The [`ErrorKind`] to report to the peer for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CodecError::FrameTooLarge { .. } => ErrorKind::FrameTooLarge,
            CodecError::Decode(_) | CodecError::Truncated { .. } => ErrorKind::Malformed,
            CodecError::Io(_) | CodecError::Encode(_) => ErrorKind::Internal,
        }
    }
}

/// The bincode configuration of the protocol, with a decode limit of `LIMIT` claimed bytes.
const fn config<const LIMIT: usize>() -> impl Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// The frame cap in force for a configured cap: never above [`MAX_FRAME_LEN_LIMIT`].
pub fn effective_max(max_frame_len: u32) -> u32 {
    max_frame_len.min(MAX_FRAME_LEN_LIMIT)
}

/// Encodes `msg` as a bare payload (no header).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, config::<DECODE_LIMIT_CEILING>())
        .map_err(|e| CodecError::Encode(format!("{e:?}")))
}

/// Encodes `msg` as a whole frame: the `u32` little-endian payload length, then the payload.
///
/// Fails with [`CodecError::FrameTooLarge`] when the payload would exceed `max_frame_len` (itself
/// never above [`MAX_FRAME_LEN_LIMIT`]); the size is measured before the frame is allocated.
pub fn encode_frame<T: Serialize>(msg: &T, max_frame_len: u32) -> Result<Vec<u8>, CodecError> {
    let max = effective_max(max_frame_len);
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut size, config::<DECODE_LIMIT_CEILING>())
        .map_err(|e| CodecError::Encode(format!("{e:?}")))?;
    let len = size.bytes_written;
    let header = match u32::try_from(len) {
        Ok(header) if header <= max => header,
        _ => {
            return Err(CodecError::FrameTooLarge {
                len: len as u64,
                max,
            })
        }
    };
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + len);
    frame.extend_from_slice(&header.to_le_bytes());
    bincode::serde::encode_into_std_write(msg, &mut frame, config::<DECODE_LIMIT_CEILING>())
        .map_err(|e| CodecError::Encode(format!("{e:?}")))?;
    debug_assert_eq!(frame.len(), FRAME_HEADER_LEN + len);
    Ok(frame)
}

/// Decodes one message from a whole payload; bytes left over after the message are an error.
///
/// Length prefixes inside the payload may not claim more than a limit scaled to the payload's
/// size, so a tiny payload claiming a huge string or byte buffer fails without the claimed size
/// being allocated.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    // Any valid payload claims at most 8 bytes per encoded byte (a one-byte varint `u64` claims 8;
    // byte strings claim exactly their length), so a limit of at least 8 × its length never
    // refuses a valid message, and a hostile one cannot claim much more than it sent.
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    match payload.len() {
        0..=8_192 => decode_limited::<{ 64 * KIB }, T>(payload),
        8_193..=65_536 => decode_limited::<{ 512 * KIB }, T>(payload),
        65_537..=524_288 => decode_limited::<{ 4 * MIB }, T>(payload),
        524_289..=4_194_304 => decode_limited::<{ 32 * MIB }, T>(payload),
        _ => decode_limited::<DECODE_LIMIT_CEILING, T>(payload),
    }
}

fn decode_limited<const LIMIT: usize, T: DeserializeOwned>(
    payload: &[u8],
) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, config::<LIMIT>())
        .map_err(|e| CodecError::Decode(describe(e)))?;
    match payload.len() - used {
        0 => Ok(msg),
        extra => Err(CodecError::Decode(format!(
            "{extra} trailing bytes after the message"
        ))),
    }
}

/// A lower-case, human-readable description of a bincode decode error.
fn describe(err: DecodeError) -> String {
    match err {
        DecodeError::UnexpectedEnd { additional } => {
            format!("payload ends early ({additional} more bytes needed)")
        }
        DecodeError::LimitExceeded => "a length prefix claims more bytes than allowed".to_owned(),
        DecodeError::UnexpectedVariant {
            type_name, found, ..
        } => format!("unknown variant index {found} for {type_name}"),
        DecodeError::InvalidBooleanValue(v) => format!("invalid bool byte {v}"),
        DecodeError::Utf8 { inner } => format!("string is not utf-8: {inner}"),
        DecodeError::OutsideUsizeRange(v) => format!("length {v} does not fit in memory"),
        DecodeError::OtherString(s) => s,
        other => format!("{other:?}"),
    }
}

/// Reads the payload length a frame header announces, checked against the cap.
///
/// Fails with [`CodecError::FrameTooLarge`] when the length exceeds `max_frame_len` (never above
/// [`MAX_FRAME_LEN_LIMIT`]).
pub fn check_header(
    header: [u8; FRAME_HEADER_LEN],
    max_frame_len: u32,
) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header);
    let max = effective_max(max_frame_len);
    if len > max {
        return Err(CodecError::FrameTooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(len as usize)
}

/// The payload length announced by the header at the start of `buf`, checked against the cap;
/// `Ok(None)` while fewer than [`FRAME_HEADER_LEN`] bytes have arrived.
pub fn frame_len(buf: &[u8], max_frame_len: u32) -> Result<Option<usize>, CodecError> {
    match buf.first_chunk::<FRAME_HEADER_LEN>() {
        Some(header) => check_header(*header, max_frame_len).map(Some),
        None => Ok(None),
    }
}

/// Finds the first whole frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (not an error), or the frame's total size
/// (header included, what the caller should consume) and its payload. The announced length is
/// checked against `max_frame_len` as soon as the header is there, before the payload arrives.
pub fn parse_frame(buf: &[u8], max_frame_len: u32) -> Result<Option<(usize, &[u8])>, CodecError> {
    let Some(len) = frame_len(buf, max_frame_len)? else {
        return Ok(None);
    };
    let total = FRAME_HEADER_LEN + len;
    Ok(buf
        .get(FRAME_HEADER_LEN..total)
        .map(|payload| (total, payload)))
}

#[cfg(test)]
mod tests;
