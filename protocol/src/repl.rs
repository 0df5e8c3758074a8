//! What REPL backends need (protocol version 2): output streamed as it is produced, and
//! sessions — one locked-down child that keeps its globals from cell to cell.
//!
//! The messages here travel inside [`crate::Request::StreamRun`], [`crate::Request::Session`],
//! [`crate::Response::Output`], [`crate::Response::Done`] and [`crate::Response::Session`]. As in
//! `messages.rs`, field and variant order is the wire format: append, never reorder.

use serde::{Deserialize, Serialize};

use crate::{FileData, LimitsRequest, Rejection};

/// Which of the program's output streams a chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    /// The stream's name, as the HTTP API names its events.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// What a streamed run or a cell adds to its [`crate::RunResult`] in [`crate::Response::Done`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunExtra {
    /// Bytes of stdout sent as [`crate::Response::Output`] frames before the result (the
    /// result's own `stdout` is then empty); `stdout_truncated` still says whether the cap cut it.
    pub stdout_streamed: u64,
    /// The same for stderr.
    pub stderr_streamed: u64,
    /// A cell's value: the `repr()` of its last expression statement, when it has one and it is
    /// not `None` (as a REPL echoes it); `None` for runs.
    pub value: Option<String>,
    /// True when the session ended with this cell (its child died, or a timed-out cell had to be
    /// killed): later operations on it answer [`crate::ErrorKind::SessionEnded`].
    pub session_ended: bool,
}

/// Who a session operation is for. The same rules as [`crate::RunSpec`]'s fields: only a proxy
/// peer (the HTTP shim) may name a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Act on behalf of this tenant (proxies only).
    pub tenant: Option<String>,
    /// The caller's id for this operation in the audit trail.
    pub request_id: Option<String>,
    /// The remote client's address as the proxy saw it.
    pub client_addr: Option<String>,
}

/// One operation on sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionOp {
    /// Starts a session; answered by [`SessionReply::Opened`].
    Open(SessionOpen),
    /// Runs one cell in the session; answered like a [`crate::Request::StreamRun`]:
    /// [`crate::Response::Started`], [`crate::Response::Output`] frames when the cell streams,
    /// then [`crate::Response::Done`] with the cell's value.
    Execute {
        /// The session's id, as [`SessionInfo::session_id`] gave it.
        session: String,
        /// The cell.
        cell: Cell,
    },
    /// Raises KeyboardInterrupt in the running cell (the session survives); answered by
    /// [`SessionReply::Interrupted`], also when no cell was running.
    Interrupt { session: String },
    /// Ends the session (its child is killed); answered by [`SessionReply::Closed`].
    Close { session: String },
    /// The caller's own live sessions; answered by [`SessionReply::List`].
    List,
    /// The regular files in the session's working directory (path and size); answered by
    /// [`SessionReply::Files`]. Between cells only: [`crate::ErrorKind::SessionBusy`] otherwise.
    ListFiles { session: String },
    /// One file of the session's working directory; answered by [`SessionReply::File`].
    ReadFile { session: String, path: String },
}

/// What a new session asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionOpen {
    /// The interpreter profile; `None`: the server's default.
    pub profile: Option<String>,
    /// `timeout_ms` and `output_bytes` apply to every cell, `memory_mb` to the session as a
    /// whole (all cells, one process); each may only lower the policy's.
    pub limits: LimitsRequest,
    /// Seconds without a cell after which the session ends; `None`: the server's default, and
    /// never above its maximum.
    pub idle_timeout_s: Option<u64>,
}

/// One cell of a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Python source, run in the session's `__main__`.
    #[serde(with = "serde_bytes")]
    pub code: Vec<u8>,
    /// What the cell reads on stdin (`input()`); empty: end of file at once.
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    /// Files written into the session's working directory before the cell runs (an existing
    /// file of the same path is replaced).
    pub files: Vec<FileData>,
    /// Send output as [`crate::Response::Output`] frames as it is produced.
    pub stream: bool,
}

/// A session, as its owner sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's id: 128 random bits, hex, prefixed `s_`.
    pub session_id: String,
    /// Its profile.
    pub profile: String,
    /// When it was opened, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it ends at the latest (its maximum lifetime), in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// Seconds without a cell after which it ends.
    pub idle_timeout_s: u64,
    /// Cells run so far.
    pub cells: u64,
    /// A cell is running now.
    pub busy: bool,
}

/// A file in a session's working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
}

/// The answer to a [`SessionOp`] (errors are [`crate::Response::Error`] frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SessionReply {
    Opened(SessionInfo),
    Interrupted,
    Closed,
    List(Vec<SessionInfo>),
    Files {
        files: Vec<FileInfo>,
        /// More files were there than the listing carries.
        truncated: bool,
    },
    File(FileData),
    /// The session was not opened: the policy refused it (unknown or forbidden profile, a limit
    /// above a ceiling, the tenant's rate); `rejection` says why, as for a run.
    Refused {
        rejection: Rejection,
        message: String,
    },
}

/// Sessions of one profile, for readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPool {
    pub profile: String,
    /// Sessions alive now (each holds a uid and a cgroup, busy or idle).
    pub live: u32,
    /// The profile's `max_sessions`: more are refused with `no_session_capacity`.
    pub max: u32,
}
