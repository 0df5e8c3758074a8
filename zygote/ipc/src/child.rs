//! The supervisor ↔ child channel: a SEQPACKET socket, fd 3 of the child.
//!
//! ```text
//! child -> supervisor   ready                      after the lockdown, before any user input
//! supervisor -> child   rehearse                   optional, to a warm child nobody waits for
//! supervisor -> child   go (fds: code memfd, stdin memfd[, input files memfd])
//! child -> supervisor   result {size} + raw packets          function mode: main()'s JSON
//!                       files {entries, truncated, skipped, size} + raw packets
//!                       done                       stdout/stderr flushed and closed
//!
//! A session's child, instead of go:
//! supervisor -> child   session {rlimits}          from now on, cells until the channel closes
//! supervisor -> child   cell {number, files, value_bytes, code, stdin}
//!                            (fds: [code memfd unless inline][stdin memfd][input files memfd])
//! child -> supervisor   result {size} + raw packets   the repr() of the cell's last expression
//!                       cell_done {failed}          output flushed (not closed); next cell
//! supervisor -> child   list_files {max_count}      between cells
//! child -> supervisor   listing {entries, truncated}, done
//! supervisor -> child   read_file {path, max_bytes} between cells
//! child -> supervisor   files {...} + raw packets (one entry, or none), done
//! ```
//!
//! The child keeps fd 3 while the program runs, so **everything after `go` may have been written
//! by the program**: [`crate::reports::ReportDecoder`] reads it as claims under caps, and the
//! supervisor takes the exit status from the kernel, never from this channel.

use serde::{Deserialize, Serialize};

/// Largest packet the supervisor accepts from a child (a files header lists up to `max_files`
/// paths of at most [`crate::path::MAX_PATH_BYTES`] bytes each).
pub const MAX_CHILD_PACKET: usize = 512 * 1024;
/// Largest blob packet a well-behaved child sends (zygote.py's `CHUNK`).
pub const BLOB_CHUNK: usize = 32 * 1024;

/// Supervisor → child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToChild {
    /// Run the profile's warm-up once while waiting (no descriptors).
    Rehearse {},
    /// Run the request; the code and stdin memfds (and the input files' memfd) ride along.
    Go(GoRequest),
    /// Become a session: lower the rlimits to the session's and wait for cells.
    Session(SessionStart),
    /// Run one cell in the session's `__main__`; the code and stdin memfds (and the input
    /// files' memfd) ride along.
    Cell(CellRequest),
    /// List the regular files of the working directory (between cells).
    ListFiles(ListFilesRequest),
    /// Send one file of the working directory (between cells).
    ReadFile(ReadFileRequest),
}

/// What a session's child needs before its first cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStart {
    /// The session's rlimits (CPU over its whole life), never above the ceilings at fork.
    pub rlimits: GoRlimits,
}

/// One cell, besides its descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellRequest {
    /// The cell's number in its session (1, 2, …), for its traceback's file name.
    pub number: u64,
    /// Input files, as in `go` (an existing file of the same path is replaced).
    pub files: Vec<FileEntry>,
    /// Longest value (repr) the supervisor keeps; a longer one is cut by the child.
    pub value_bytes: u64,
    /// The code itself, when it is small (decoded as UTF-8 with replacement characters, as the
    /// child decodes it anyway); `None`: it comes as the first memfd.
    pub code: Option<String>,
    /// A stdin memfd comes (after the code's, if any); `false`: stdin is empty.
    pub stdin: bool,
}

/// A listing of the working directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFilesRequest {
    pub max_count: u64,
}

/// One file of the working directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFileRequest {
    /// Relative to the working directory, checked by `crate::path::check_relative_path`.
    pub path: String,
    pub max_bytes: u64,
}

/// What a child needs to run its one request, besides the descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoRequest {
    /// `sys.argv[1:]`.
    pub argv: Vec<String>,
    /// The request's limits; the child only lowers its own to them.
    pub rlimits: GoRlimits,
    /// Script or function mode.
    pub mode: RunMode,
    /// The input files, in the order of their bytes in the files memfd.
    pub files: Vec<FileEntry>,
    /// Caps on the output files the child reports.
    pub collect: CollectCaps,
}

/// The rlimits a child lowers itself to when its request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoRlimits {
    /// RLIMIT_CPU (soft; the hard limit is one second more).
    pub cpu_seconds: u64,
    /// RLIMIT_AS, only where no memory cgroup is available.
    pub as_bytes: Option<u64>,
}

/// How the child runs the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Run the file as `__main__`.
    Script,
    /// Run it, then call `main()` and report its JSON value.
    Function,
}

/// One file and its size, in a manifest of input files or a files report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the working directory ([`crate::path::check_relative_path`]).
    pub path: String,
    /// Bytes.
    pub size: u64,
}

/// Caps the child applies when it collects output files (the supervisor checks them again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectCaps {
    /// Most files.
    pub max_count: u64,
    /// Most bytes in all.
    pub max_bytes: u64,
}

/// Child → supervisor. Headers only: a `result` or `files` header is followed by `size` bytes in
/// raw packets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromChild {
    /// Locked down, waiting for `go` (the only message before the program runs).
    Ready {},
    /// Function mode: main()'s JSON text follows.
    Result { size: u64 },
    /// The output files follow, concatenated in the order of `entries`.
    Files {
        entries: Vec<FileEntry>,
        /// The child left files out (over its caps).
        truncated: bool,
        /// Files the child left out because their path is not UTF-8 (a report cannot carry it).
        #[serde(default)]
        skipped: u64,
        size: u64,
    },
    /// The program is over and stdout/stderr are closed. A claim like any other: it ends the
    /// reading of this channel, nothing more.
    Done {},
    /// A session's cell is over; its output is flushed. `failed`: it raised (a claim about the
    /// session's own cell, which only words that cell's status).
    CellDone { failed: bool },
    /// The working directory's regular files (a listing, no contents).
    Listing {
        entries: Vec<FileEntry>,
        truncated: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_has_the_documented_shape() {
        let go = ToChild::Go(GoRequest {
            argv: vec!["a".into()],
            rlimits: GoRlimits {
                cpu_seconds: 3,
                as_bytes: None,
            },
            mode: RunMode::Function,
            files: vec![FileEntry {
                path: "x.py".into(),
                size: 2,
            }],
            collect: CollectCaps {
                max_count: 1,
                max_bytes: 2,
            },
        });
        let json = serde_json::to_value(&go).unwrap();
        assert_eq!(json["op"], "go");
        assert_eq!(json["mode"], "function");
        assert_eq!(json["files"][0]["path"], "x.py");
        assert_eq!(serde_json::from_value::<ToChild>(json).unwrap(), go);
        assert_eq!(
            serde_json::to_string(&ToChild::Rehearse {}).unwrap(),
            r#"{"op":"rehearse"}"#
        );
    }

    #[test]
    fn reports_decode_strictly() {
        assert_eq!(
            serde_json::from_str::<FromChild>(r#"{"op":"done"}"#).unwrap(),
            FromChild::Done {}
        );
        for bad in [
            r#"{"op":"done","exit_code":0}"#,
            r#"{"op":"result","size":-1}"#,
            r#"{"op":"result","size":18446744073709551616}"#,
            r#"{"op":"files","entries":[],"size":0}"#,
            r#"{"op":"go"}"#,
            r#"[]"#,
        ] {
            assert!(serde_json::from_str::<FromChild>(bad).is_err(), "{bad}");
        }
    }
}
