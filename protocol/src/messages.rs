//! The messages of the sandfork protocol: what a client may ask and what the server answers.
//!
//! These types are the protocol. Their field order and variant order *are* the wire format (see
//! `docs/PROTOCOL.md`): append new variants at the end, never reorder or insert, and bump
//! [`PROTOCOL_VERSION`] for any change an old peer would misread.
//!
//! Longer than the ~500 lines we aim for, on purpose: every message of the wire format, with the
//! documentation docs/PROTOCOL.md follows, in one file to read against that document.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::repl::{Caller, OutputStream, RunExtra, SessionOp, SessionPool, SessionReply};
use crate::PROTOCOL_VERSION;

/// A frame sent by a client to the server.
// `Run` is much larger than the other variants, but a request lives only from decode to dispatch,
// one per frame; boxing the spec would cost an allocation per run and change every match on it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Opens the conversation. Must be the first frame on a connection, so the server learns the
    /// client's protocol version before it interprets anything else.
    Hello(Hello),
    /// Runs one program. Several may be in flight on one connection; `id` is chosen by the client
    /// and echoed in the run's [`Response::Result`] (or [`Response::Error`]) so answers can arrive
    /// in any order.
    Run {
        /// Client-chosen handle for this run, unique among the connection's runs in flight.
        id: u64,
        /// What to run and under which limits.
        spec: RunSpec,
    },
    /// Asks the server to stop the run `id` early; the run still ends with its own result.
    Cancel {
        /// The id of the [`Request::Run`] to stop.
        id: u64,
    },
    /// Health check; answered by [`Response::Pong`] with the server's readiness.
    Ping {
        /// Echoed in the pong so a client can match it to this ping.
        id: u64,
    },
    /// Asks for the daemon's own metrics; answered by [`Response::Metrics`], so a monitoring
    /// agent (or the HTTP shim's `/metrics`) can scrape them over the same socket.
    Metrics {
        /// Echoed in the answer so a client can match it to this request.
        id: u64,
    },
    /// Version 2. Runs one program like [`Request::Run`], its output sent as it is produced:
    /// answered by [`Response::Started`] once it has a child, [`Response::Output`] frames, and
    /// [`Response::Done`] (or one [`Response::Done`] with the rejection, or an error frame).
    StreamRun {
        /// Client-chosen handle, as for `Run`.
        id: u64,
        /// What to run and under which limits.
        spec: RunSpec,
    },
    /// Version 2. An operation on sessions: open, run a cell, interrupt, close, list, files.
    Session {
        /// Client-chosen handle; a cell in flight can be cancelled by it like a run.
        id: u64,
        /// On whose behalf (proxies only) and the audit ids.
        caller: Caller,
        /// What to do.
        op: SessionOp,
    },
    /// Version 2. Readiness like [`Request::Ping`], with the sessions of every profile;
    /// answered by [`Response::Status`].
    Status {
        /// Echoed in the answer.
        id: u64,
    },
}

impl Request {
    /// The client-chosen id this request carries, if any (a hello has none).
    pub fn id(&self) -> Option<u64> {
        match self {
            Request::Hello(_) => None,
            Request::Run { id, .. }
            | Request::Cancel { id }
            | Request::Ping { id }
            | Request::Metrics { id }
            | Request::StreamRun { id, .. }
            | Request::Session { id, .. }
            | Request::Status { id } => Some(*id),
        }
    }

    /// The lowest protocol version in which this request exists: a client that said Hello with
    /// an older one is refused it.
    pub fn since_version(&self) -> u32 {
        match self {
            Request::StreamRun { .. } | Request::Session { .. } | Request::Status { .. } => 2,
            _ => 1,
        }
    }
}

/// The client's opening frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks, so the server can refuse a client it would misread.
    pub version: u32,
    /// Free-form client name and version (e.g. `"sandfork-py/0.3"`), for the server's logs.
    pub client: String,
}

impl Hello {
    /// A hello for this crate's [`PROTOCOL_VERSION`].
    pub fn new(client: impl Into<String>) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            client: client.into(),
        }
    }
}

/// Everything the server needs to run one program.
///
/// The default is an empty script in the server's default profile under the policy's default
/// limits, so callers can spell out only what they set (`RunSpec { code, ..Default::default() }`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Which interpreter profile (zygote pool, e.g. `"stdlib"` or `"pandas"`) runs the code;
    /// `None` picks the server's default profile so simple clients need not know profile names.
    pub profile: Option<String>,
    /// The Python source to run, as bytes (it need not be valid UTF-8 for the wire; Python decides).
    #[serde(with = "serde_bytes")]
    pub code: Vec<u8>,
    /// Bytes given to the program on standard input; empty means stdin is at end of file at once.
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    /// The program's arguments, `sys.argv[1:]` (the server picks `sys.argv[0]`).
    pub argv: Vec<String>,
    /// Limits the client asks for; each may only lower the server's policy, never raise it.
    pub limits: LimitsRequest,
    /// How the code is run: as a script, or as a module whose `main()` returns a value, so
    /// callers that want a result need not parse it out of stdout.
    pub mode: Mode,
    /// Files written into the run's working directory before the code starts, so a program can
    /// be given data (a CSV, a config) without smuggling it through stdin or the source.
    pub files: Vec<FileData>,
    /// Run on behalf of this tenant instead of the one the peer's uid maps to. Only a proxy peer
    /// (the HTTP shim, which authenticates its own callers) may say so; the server refuses it from
    /// anyone else, so a local client cannot borrow another tenant's quota or ceilings.
    pub tenant: Option<String>,
    /// The caller's id for this run in the audit trail, so a request can be followed across the
    /// shim, the daemon and the caller's own logs; `None` lets the server make one.
    pub request_id: Option<String>,
    /// The remote client's address as the proxy saw it, recorded in the audit record because the
    /// daemon itself only sees the proxy's uid.
    pub client_addr: Option<String>,
}

/// How a run's code is executed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The code runs top to bottom as `__main__`; what it prints is its output.
    #[default]
    Script,
    /// The code defines `main()`; the server calls it and its JSON-serializable return value
    /// comes back in [`RunResult::result`], on its own channel (never parsed from stdout). A
    /// missing `main` or a value JSON cannot encode ends the run as [`Status::Error`], with the
    /// reason in stderr.
    Function,
    /// Nothing runs: the zygote forks a child that exits at once, through the same channels
    /// as a run (admission, a slot, the spawn, the exit report), and the result is `ok` with
    /// the time from spawn to reaping in `timings.run_ms` and the child's CPU in `usage`. The
    /// code must be empty. `sandfork bench --floor` measures against it what a run costs
    /// beyond the kernel's fork, exit and reap of the profile's zygote.
    Floor,
}

/// One file carried into or out of a run's working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    /// Path relative to the run's working directory (e.g. `"data/in.csv"`); absolute paths, `..`
    /// components and NUL bytes are refused, so a file can never land outside that directory.
    pub path: String,
    /// The file's bytes, verbatim (not necessarily UTF-8).
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
}

/// Limits a client asks for one run; `None` means "the policy's default".
///
/// A value above what the tenant's policy allows makes the run end as [`Status::Rejected`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsRequest {
    /// Wall-clock budget in milliseconds, after which the run ends as [`Status::Timeout`].
    pub timeout_ms: Option<u64>,
    /// Memory ceiling in MiB, beyond which the run ends as [`Status::MemoryLimit`].
    pub memory_mb: Option<u64>,
    /// Cap on captured bytes of stdout and of stderr (each stream counted on its own), beyond
    /// which output is cut, the truncation flag set, and the run stopped as [`Status::OutputLimit`].
    pub output_bytes: Option<u64>,
}

/// A frame sent by the server to a client.
// `Result` is much larger than the other variants, but a response lives only from the run's end to
// its encoding; boxing it would cost an allocation per run and change every match on it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Accepts the client's [`Request::Hello`].
    Hello(HelloReply),
    /// The one final answer to a [`Request::Run`].
    Result {
        /// The id of the run this result ends.
        id: u64,
        /// How the run ended and what it printed.
        result: RunResult,
    },
    /// A request, or the connection, failed at the protocol level (not a run that failed: that is
    /// a [`Response::Result`] with a non-`ok` status).
    Error {
        /// The id of the request the error answers; `None` for a connection-level error (bad frame,
        /// missing hello), which cannot be tied to a request.
        id: Option<u64>,
        /// What went wrong.
        error: ErrorFrame,
    },
    /// Answers a [`Request::Ping`].
    Pong {
        /// The ping's id, echoed.
        id: u64,
        /// Whether the server can take work now, and its pools' state.
        status: ServerStatus,
    },
    /// Answers a [`Request::Metrics`].
    Metrics {
        /// The request's id, echoed.
        id: u64,
        /// The daemon's metrics in the Prometheus text exposition format (version 0.0.4), ready
        /// to be served as is to a scraper.
        text: String,
    },
    /// Version 2. A streamed run or a cell has its child and is starting: from now on its
    /// answer is `Output` frames and one `Done` (never a rejection).
    Started {
        /// The request's id.
        id: u64,
    },
    /// Version 2. A piece of a streamed run's (or cell's) output, in order per stream.
    Output {
        /// The request's id.
        id: u64,
        /// Which stream.
        stream: OutputStream,
        /// The bytes, as the program wrote them (not necessarily UTF-8, and a character may be
        /// split across frames).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Version 2. The one final answer to a [`Request::StreamRun`] or a cell.
    Done {
        /// The request's id.
        id: u64,
        /// How it ended; `stdout`/`stderr` hold what was *not* streamed.
        result: RunResult,
        /// Streamed byte counts, a cell's value, whether the session ended.
        extra: RunExtra,
    },
    /// Version 2. The answer to a [`Request::Session`] other than a cell.
    Session {
        /// The request's id.
        id: u64,
        /// The answer.
        reply: SessionReply,
    },
    /// Version 2. Answers [`Request::Status`].
    Status {
        /// The request's id.
        id: u64,
        /// The same as a pong's.
        status: ServerStatus,
        /// Live sessions and their bound, per profile.
        sessions: Vec<SessionPool>,
    },
}

impl Response {
    /// The request id this response answers, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            Response::Hello(_) => None,
            Response::Result { id, .. }
            | Response::Pong { id, .. }
            | Response::Metrics { id, .. }
            | Response::Started { id }
            | Response::Output { id, .. }
            | Response::Done { id, .. }
            | Response::Session { id, .. }
            | Response::Status { id, .. } => Some(*id),
            Response::Error { id, .. } => *id,
        }
    }

    /// A protocol error answering request `id` (`None`: the connection as a whole).
    pub fn error(id: Option<u64>, kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            id,
            error: ErrorFrame::new(kind, message),
        }
    }
}

/// The server's answer to a hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Protocol version the server speaks, so a client can log or adapt to it.
    pub version: u32,
    /// Free-form server name and version, for the client's logs and bug reports.
    pub server: String,
    /// Largest payload, in bytes, the server accepts in one frame (and the largest it sends), so
    /// the client can size its reads and refuse to send what would be rejected.
    pub max_frame_len: u32,
}

/// A protocol-level error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Machine-readable class of the error, for clients to branch on.
    pub kind: ErrorKind,
    /// Human-readable detail, for logs; not meant to be parsed.
    pub message: String,
}

impl ErrorFrame {
    /// An error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorFrame {
            kind,
            message: message.into(),
        }
    }
}

/// Classes of protocol-level errors. `docs/PROTOCOL.md` says when each is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A complete frame whose payload does not decode (or a frame cut short by end of stream).
    Malformed,
    /// A frame header announced more bytes than the cap.
    FrameTooLarge,
    /// The hello's version is one the server does not speak.
    UnsupportedVersion,
    /// Something other than a hello came first.
    HelloRequired,
    /// A well-formed request that makes no sense here (e.g. a second hello).
    InvalidRequest,
    /// A run reused the id of a run still in flight on this connection.
    DuplicateId,
    /// A cancel named an id with no run in flight on this connection.
    UnknownId,
    /// The server is draining and takes no new work.
    ShuttingDown,
    /// The server failed in a way that is not the client's fault.
    Internal,
    /// The peer's uid maps to no tenant, or a peer that is not a proxy named a tenant in
    /// [`RunSpec::tenant`].
    PermissionDenied,
    /// Version 2: no session of that id belongs to the caller (it never existed, or it is
    /// another tenant's: the two are not told apart).
    SessionNotFound,
    /// Version 2: the caller's session has ended (closed, idle, lifetime, its child died, the
    /// daemon restarted); the message says why.
    SessionEnded,
    /// Version 2: the session is running a cell; one at a time.
    SessionBusy,
    /// Version 2: the tenant holds its policy's `max_sessions` already.
    TooManySessions,
    /// Version 2: the profile holds its `max_sessions` already (every session holds a uid and
    /// a cgroup); retry later.
    NoSessionCapacity,
    /// Version 2: the session's directory has no regular file at that path.
    FileNotFound,
}

impl ErrorKind {
    /// Every kind, in wire (variant index) order.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Malformed,
        ErrorKind::FrameTooLarge,
        ErrorKind::UnsupportedVersion,
        ErrorKind::HelloRequired,
        ErrorKind::InvalidRequest,
        ErrorKind::DuplicateId,
        ErrorKind::UnknownId,
        ErrorKind::ShuttingDown,
        ErrorKind::Internal,
        ErrorKind::PermissionDenied,
        ErrorKind::SessionNotFound,
        ErrorKind::SessionEnded,
        ErrorKind::SessionBusy,
        ErrorKind::TooManySessions,
        ErrorKind::NoSessionCapacity,
        ErrorKind::FileNotFound,
    ];

    /// The kind's snake_case name, as serde names it in text formats and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::HelloRequired => "hello_required",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::DuplicateId => "duplicate_id",
            ErrorKind::UnknownId => "unknown_id",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::SessionNotFound => "session_not_found",
            ErrorKind::SessionEnded => "session_ended",
            ErrorKind::SessionBusy => "session_busy",
            ErrorKind::TooManySessions => "too_many_sessions",
            ErrorKind::NoSessionCapacity => "no_session_capacity",
            ErrorKind::FileNotFound => "file_not_found",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The server's health, as reported in a pong.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// True when the server accepts runs now (started, not draining), so a load balancer or a
    /// readiness probe can route around a server that is not.
    pub ready: bool,
    /// One entry per configured profile, so a client can see which pools are warm.
    pub profiles: Vec<ProfileStatus>,
    /// Runs the server can execute at once (one slot, one uid each), so a client or balancer can
    /// size its concurrency to the server.
    pub slots_total: u32,
    /// Slots running a program right now; `slots_busy == slots_total` means new runs queue.
    pub slots_busy: u32,
}

/// The state of one profile's zygote pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileStatus {
    /// The profile's name, as a client would put it in [`RunSpec::profile`].
    pub name: String,
    /// Zygotes up and able to fork right now; zero means runs of this profile would wait.
    pub zygotes_ready: u32,
    /// Zygotes the pool is configured to keep, so `ready < wanted` shows a pool still warming up
    /// or respawning.
    pub zygotes_wanted: u32,
    /// Pre-forked children waiting for work right now; zero means the next run of this profile
    /// pays for a fork.
    pub warm_children: u32,
    /// Runs of this profile waiting for a slot, so a client can see the backlog before adding to it.
    pub queued: u32,
}

/// How one run ended, with what it printed and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The one outcome of the run; clients branch on this first.
    pub status: Status,
    /// The process's exit code when it exited on its own; `None` if it never ran or was killed.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did (e.g. 9 for a kill at the deadline, 31 for a
    /// seccomp kill), so a client can tell how a `killed` run died.
    pub signal: Option<i32>,
    /// What the program wrote to standard output, up to the output cap.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// What the program wrote to standard error (tracebacks land here), up to the output cap.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// True when `stdout` was cut at the cap, so the client knows it does not have all of it.
    pub stdout_truncated: bool,
    /// True when `stderr` was cut at the cap, so the client knows it does not have all of it.
    pub stderr_truncated: bool,
    /// Resources the run consumed, for billing, quotas and tuning limits.
    pub usage: Usage,
    /// Where the time went on the server, for latency debugging.
    pub timings: Timings,
    /// Human-readable reason for a `rejected`, `internal_error`, `killed` or limit status (e.g.
    /// "unknown profile \"gpu\""), so the status alone need not explain itself.
    pub message: Option<String>,
    /// The run's id in the audit trail: the spec's [`RunSpec::request_id`] echoed, or the one the
    /// server made, so the caller can quote it when asking about the run.
    pub request_id: String,
    /// In [`Mode::Function`], `main()`'s return value as JSON text; `None` in script mode or when
    /// there is no value. It travels on its own channel, so nothing the program prints can forge it.
    pub result: Option<String>,
    /// Regular files the program left in its working directory (within the caps), so a program
    /// can hand back output that is not text on stdout.
    pub files: Vec<FileData>,
    /// True when more files, or more bytes, were there than the caps allow, so the client knows
    /// `files` is not everything.
    pub files_truncated: bool,
    /// Why the run was refused, machine-readable; set exactly when `status` is
    /// [`Status::Rejected`], so a client can back off or fix the request without parsing `message`.
    pub rejection: Option<Rejection>,
    /// True when a pre-forked (warm) child served the run, to explain `timings.spawn_ms` and tune
    /// the pools.
    pub warm: bool,
}

impl RunResult {
    /// A result with `status` and every other field empty or zero.
    pub fn new(status: Status) -> Self {
        RunResult {
            status,
            exit_code: None,
            signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            usage: Usage::default(),
            timings: Timings::default(),
            message: None,
            request_id: String::new(),
            result: None,
            files: Vec::new(),
            files_truncated: false,
            rejection: None,
            warm: false,
        }
    }

    /// A [`Status::Rejected`] result saying why, machine-readable (`kind`, no retry hint) and for
    /// people (`message`).
    pub fn rejected(kind: RejectKind, message: impl Into<String>) -> Self {
        RunResult {
            rejection: Some(Rejection {
                kind,
                retry_after_ms: None,
            }),
            ..RunResult::new(Status::Rejected)
        }
        .with_message(message)
    }

    /// The same result with `message` set.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// Why a run was refused before it ran.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rejection {
    /// The reason, for clients to branch on.
    pub kind: RejectKind,
    /// For `rate_limited` and `busy`: milliseconds after which a retry may succeed, so a client
    /// backs off for the right time instead of hammering; `None` when retrying will not help.
    pub retry_after_ms: Option<u64>,
}

/// Reasons a run is refused. `docs/PROTOCOL.md` says when each is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// No profile of that name exists.
    UnknownProfile,
    /// The profile exists but the tenant may not use it.
    ProfileNotAllowed,
    /// A limit is zero or otherwise malformed.
    InvalidLimits,
    /// A limit is above the tenant's or the profile's ceiling.
    LimitAboveCeiling,
    /// The code, stdin or input files are over their caps.
    TooLarge,
    /// An input file's path is unusable (absolute, `..`, NUL, duplicate) or there are too many.
    InvalidFiles,
    /// The tenant's rate limit (token bucket) is exhausted.
    RateLimited,
    /// The tenant is at its concurrency cap, or the profile's queue is full.
    Busy,
    /// The run waited for a slot longer than the tenant's maximum queue wait.
    QueueTimeout,
}

impl RejectKind {
    /// Every kind, in wire (variant index) order.
    pub const ALL: [RejectKind; 9] = [
        RejectKind::UnknownProfile,
        RejectKind::ProfileNotAllowed,
        RejectKind::InvalidLimits,
        RejectKind::LimitAboveCeiling,
        RejectKind::TooLarge,
        RejectKind::InvalidFiles,
        RejectKind::RateLimited,
        RejectKind::Busy,
        RejectKind::QueueTimeout,
    ];

    /// The kind's snake_case name, as serde names it in text formats, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::UnknownProfile => "unknown_profile",
            RejectKind::ProfileNotAllowed => "profile_not_allowed",
            RejectKind::InvalidLimits => "invalid_limits",
            RejectKind::LimitAboveCeiling => "limit_above_ceiling",
            RejectKind::TooLarge => "too_large",
            RejectKind::InvalidFiles => "invalid_files",
            RejectKind::RateLimited => "rate_limited",
            RejectKind::Busy => "busy",
            RejectKind::QueueTimeout => "queue_timeout",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resources one run consumed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall-clock time of the program itself, from "go" to exit, in milliseconds.
    pub wall_ms: f64,
    /// CPU time (user + system) the program used, in milliseconds; compare with `wall_ms` to see
    /// whether it computed or waited.
    pub cpu_ms: f64,
    /// Peak resident memory of the program, in KiB, to tune `memory_mb`.
    pub max_rss_kb: u64,
}

/// Where the time of one request went on the server, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting for admission and a free slot; high values mean the server is saturated.
    pub queue_ms: f64,
    /// Getting a locked-down child ready (a warm child, or a fork from the zygote).
    pub spawn_ms: f64,
    /// From "go" to the child's exit and the collection of its output.
    pub run_ms: f64,
    /// From the request's arrival to the result being ready to send.
    pub total_ms: f64,
}

/// The one outcome of a run. `docs/PROTOCOL.md` says what each means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The program exited with code 0.
    Ok,
    /// The program exited non-zero or raised an uncaught exception (traceback in stderr).
    Error,
    /// The wall-clock budget ran out.
    Timeout,
    /// The CPU-time limit was hit.
    CpuLimit,
    /// The memory limit was hit.
    MemoryLimit,
    /// Output exceeded the cap; the run was stopped and a truncation flag set.
    OutputLimit,
    /// The program died by any other signal (e.g. SIGSYS from a seccomp kill) or was cancelled.
    Killed,
    /// Refused by policy before running (unknown profile, a limit above the ceiling, quota);
    /// [`RunResult::rejection`] says why.
    Rejected,
    /// The sandbox failed; never the user's fault.
    InternalError,
}

impl Status {
    /// Every status, in wire (variant index) order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::Error,
        Status::Timeout,
        Status::CpuLimit,
        Status::MemoryLimit,
        Status::OutputLimit,
        Status::Killed,
        Status::Rejected,
        Status::InternalError,
    ];

    /// The status's snake_case name, as serde names it in text formats, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::CpuLimit => "cpu_limit",
            Status::MemoryLimit => "memory_limit",
            Status::OutputLimit => "output_limit",
            Status::Killed => "killed",
            Status::Rejected => "rejected",
            Status::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde_names() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(status.to_string(), status.as_str());
        }
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        for kind in RejectKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        for (mode, name) in [(Mode::Script, "script"), (Mode::Function, "function")] {
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn run_spec_default_is_an_empty_script() {
        let spec = RunSpec::default();
        assert_eq!(spec.profile, None);
        assert!(spec.code.is_empty() && spec.stdin.is_empty() && spec.argv.is_empty());
        assert_eq!(spec.limits, LimitsRequest::default());
        assert_eq!(spec.mode, Mode::Script);
        assert!(spec.files.is_empty());
        assert_eq!(spec.tenant, None);
        assert_eq!(spec.request_id, None);
        assert_eq!(spec.client_addr, None);
    }

    #[test]
    fn run_result_new_is_empty() {
        let result = RunResult::new(Status::Rejected).with_message("unknown profile");
        assert_eq!(result.status, Status::Rejected);
        assert_eq!(result.exit_code, None);
        assert_eq!(result.signal, None);
        assert!(result.stdout.is_empty() && result.stderr.is_empty());
        assert!(!result.stdout_truncated && !result.stderr_truncated);
        assert_eq!(result.usage, Usage::default());
        assert_eq!(result.timings, Timings::default());
        assert_eq!(result.message.as_deref(), Some("unknown profile"));
        assert!(result.request_id.is_empty());
        assert_eq!(result.result, None);
        assert!(result.files.is_empty() && !result.files_truncated);
        assert_eq!(result.rejection, None);
        assert!(!result.warm);
    }

    #[test]
    fn rejected_says_why() {
        let result = RunResult::rejected(RejectKind::UnknownProfile, "unknown profile \"gpu\"");
        assert_eq!(result.status, Status::Rejected);
        assert_eq!(
            result.rejection,
            Some(Rejection {
                kind: RejectKind::UnknownProfile,
                retry_after_ms: None,
            })
        );
        assert_eq!(result.message.as_deref(), Some("unknown profile \"gpu\""));
        assert_eq!(result.exit_code, None);
    }

    #[test]
    fn ids() {
        assert_eq!(Request::Hello(Hello::new("t")).id(), None);
        assert_eq!(Request::Cancel { id: 3 }.id(), Some(3));
        assert_eq!(Request::Ping { id: 4 }.id(), Some(4));
        assert_eq!(Request::Metrics { id: 6 }.id(), Some(6));
        assert_eq!(
            Response::Metrics {
                id: 6,
                text: String::new()
            }
            .id(),
            Some(6)
        );
        assert_eq!(Response::error(None, ErrorKind::Malformed, "x").id(), None);
        assert_eq!(
            Response::error(Some(5), ErrorKind::UnknownId, "x").id(),
            Some(5)
        );
    }

    #[test]
    fn hello_new_uses_current_version() {
        assert_eq!(Hello::new("t").version, PROTOCOL_VERSION);
    }
}
