//! The sandfork wire protocol, shared by the supervisor (`sandforkd`), the HTTP shim and clients.
//!
//! Layers, bottom up (each a module, all re-exported here):
//!
//! - [`io`]: byte streams ⇄ frames. [`FrameReader`] (cancel-safe, so it can sit in
//!   `tokio::select!`) and [`FrameWriter`] for tokio streams; [`read_frame_blocking`] and
//!   [`write_frame_blocking`] for blocking clients and tests.
//! - [`codec`]: frames ⇄ payloads ⇄ messages. A frame is a `u32` little-endian payload length
//!   followed by a bincode payload; the length is checked against a cap before anything is read or
//!   allocated. The only module that names bincode.
//! - [`messages`]: what is said — [`Request`] (client → server) and [`Response`] (server → client).
//! - [`client`]: a Rust client of the daemon's socket ([`client::Client`]).
//!
//! The path of one run, as the supervisor sees it: `FrameReader::read::<Request>()` waits until a
//! whole frame is buffered ([`codec::parse_frame`] checks the 4-byte header against the cap first),
//! [`codec::decode`] turns the payload into `Request::Run { id, spec }`, the supervisor runs `spec`,
//! and `FrameWriter::write(&Response::Result { id, result })` encodes and sends the answer.
//!
//! `docs/PROTOCOL.md` describes the bytes on the wire for clients written in other languages.

pub mod client;
pub mod codec;
pub mod io;
pub mod messages;
pub mod repl;

pub use codec::CodecError;
pub use io::{read_frame_blocking, write_frame_blocking, FrameReader, FrameWriter};
pub use messages::{
    ErrorFrame, ErrorKind, FileData, Hello, HelloReply, LimitsRequest, Mode, ProfileStatus,
    RejectKind, Rejection, Request, Response, RunResult, RunSpec, ServerStatus, Status, Timings,
    Usage,
};
pub use repl::{
    Caller, Cell, FileInfo, OutputStream, RunExtra, SessionInfo, SessionOp, SessionOpen,
    SessionPool, SessionReply,
};

/// Version of the protocol this crate speaks, sent in both hellos. Bump it for any change to the
/// messages that an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest version a server still serves: version 1 clients know only `Run`, `Cancel`,
/// `Ping` and `Metrics`, whose shapes are unchanged.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;

/// Frame cap (payload bytes) used when the configuration sets none: room for large scripts and
/// captured output without letting one client tie up much memory.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Ceiling on any configured frame cap; larger caps are treated as this one.
pub const MAX_FRAME_LEN_LIMIT: u32 = 64 * 1024 * 1024;
