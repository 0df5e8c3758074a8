//! What a child reports after its program, read as claims.
//!
//! The child's channel stays open while the program runs, so every packet here may have been
//! written by the program. [`ReportDecoder`] is a pure state machine fed one packet at a time:
//! it accepts at most one `result` (function mode only), one `files` report and one `done`, in
//! that order; it checks every size with checked arithmetic against the caps before it keeps a
//! byte; it bounds the packets and bytes one run may send (so a flood costs the supervisor a
//! bounded amount of work, charged to that run); and at the first thing it does not expect it
//! stops for good, saying why. A packet that carries descriptors is such a thing: the caller
//! has already closed them.
//!
//! Memory: the decoder keeps at most `result_bytes + file_bytes` of payload, and never
//! reserves more than it has been sent.

use crate::child::{FileEntry, FromChild, BLOB_CHUNK, MAX_CHILD_PACKET};
use crate::path::check_relative_path;

/// Caps of one run's reports, from the run's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportCaps {
    /// Largest main() result (bytes of JSON).
    pub result_bytes: u64,
    /// Most output files.
    pub file_count: u64,
    /// Most bytes of output files in all.
    pub file_bytes: u64,
}

impl ReportCaps {
    /// Most packets a well-behaved child needs: three headers and the blobs in chunks of at
    /// least a quarter of [`BLOB_CHUNK`] (zygote.py sends whole chunks but the last), with room.
    pub fn max_packets(&self) -> u64 {
        let chunk = (BLOB_CHUNK / 4) as u64;
        16 + self.result_bytes.div_ceil(chunk) + self.file_bytes.div_ceil(chunk)
    }

    /// Most bytes a well-behaved child sends: the payloads and three headers at most.
    pub fn max_bytes(&self) -> u64 {
        self.result_bytes
            .saturating_add(self.file_bytes)
            .saturating_add(3 * MAX_CHILD_PACKET as u64)
    }
}

/// One output file a child reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedFile {
    pub path: String,
    pub content: Vec<u8>,
}

/// Everything a child reported that passed the checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reports {
    /// Function mode: main()'s JSON text, or why it was refused (too large).
    pub result: Option<Result<Vec<u8>, String>>,
    /// The output files.
    pub files: Vec<ReportedFile>,
    /// The child left files out (its claim), or a files report was refused.
    pub files_truncated: bool,
    /// How many files the child says it left out because their path is not UTF-8 (a claim:
    /// it only words the run's message).
    pub files_skipped: u64,
    /// The child said it is done (output closed).
    pub done: bool,
    /// Why the reading stopped early: the channel was misused (by the program, necessarily).
    pub misuse: Option<String>,
    /// Packets read from the channel.
    pub packets: u64,
    /// Bytes read from the channel.
    pub bytes: u64,
    /// A session's cell: the child said the cell raised (`Some(true)`) or not.
    pub cell_failed: Option<bool>,
    /// A listing of a session's working directory.
    pub listing: Vec<FileEntry>,
}

/// What the reports answer: which messages are expected, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A run: `result` (function mode only), `files`, `done`.
    Run { function_mode: bool },
    /// A session's cell: `result` (its value), `cell_done`.
    Cell,
    /// A session's file listing: `listing`, `done`.
    Listing,
    /// One file of a session: `files` (at most `caps.file_count` entries), `done`.
    ReadFile,
}

/// What the caller does after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next packet.
    Read,
    /// Stop reading (done, a refusal, or misuse); close the channel.
    Stop,
}

#[derive(Debug)]
enum Expect {
    /// A header (`result`, `files` or `done`).
    Header,
    /// `remaining` more payload bytes of a blob.
    Blob {
        kind: Blob,
        remaining: u64,
        data: Vec<u8>,
    },
    /// Nothing more: the reading is over.
    Nothing,
}

#[derive(Debug)]
enum Blob {
    Result,
    Files(Vec<FileEntry>),
}

/// Decodes one run's reports, packet by packet.
#[derive(Debug)]
pub struct ReportDecoder {
    caps: ReportCaps,
    purpose: Purpose,
    expect: Expect,
    seen_result: bool,
    seen_files: bool,
    reports: Reports,
}

impl ReportDecoder {
    /// A run's decoder (`function_mode`: main()'s result is expected).
    pub fn new(caps: ReportCaps, function_mode: bool) -> Self {
        ReportDecoder::for_purpose(caps, Purpose::Run { function_mode })
    }

    /// A decoder for `purpose`.
    pub fn for_purpose(caps: ReportCaps, purpose: Purpose) -> Self {
        ReportDecoder {
            caps,
            purpose,
            expect: Expect::Header,
            seen_result: false,
            seen_files: false,
            reports: Reports::default(),
        }
    }

    /// Feeds one packet: its bytes and how many descriptors came with it (already closed).
    pub fn feed(&mut self, packet: &[u8], descriptors: usize) -> Next {
        if matches!(self.expect, Expect::Nothing) {
            return Next::Stop;
        }
        self.reports.packets = self.reports.packets.saturating_add(1);
        self.reports.bytes = self.reports.bytes.saturating_add(packet.len() as u64);
        if descriptors > 0 {
            return self.misuse(format!("a packet carried {descriptors} descriptor(s)"));
        }
        if self.reports.packets > self.caps.max_packets() {
            let why = format!("more than {} packets", self.caps.max_packets());
            return self.misuse(why);
        }
        if self.reports.bytes > self.caps.max_bytes() {
            let why = format!("more than {} bytes", self.caps.max_bytes());
            return self.misuse(why);
        }
        match std::mem::replace(&mut self.expect, Expect::Nothing) {
            Expect::Header => self.header(packet),
            Expect::Blob {
                kind,
                remaining,
                mut data,
            } => {
                let len = packet.len() as u64;
                if len == 0 || len > remaining {
                    return self.misuse(format!(
                        "a payload packet of {len} bytes where {remaining} remained"
                    ));
                }
                data.extend_from_slice(packet);
                match remaining - len {
                    0 => self.complete(kind, data),
                    remaining => {
                        self.expect = Expect::Blob {
                            kind,
                            remaining,
                            data,
                        };
                        Next::Read
                    }
                }
            }
            Expect::Nothing => Next::Stop,
        }
    }

    /// The child said `done` (the reading is over).
    pub fn is_done(&self) -> bool {
        self.reports.done
    }

    /// The channel itself failed the caller's checks (a packet over [`MAX_CHILD_PACKET`], too
    /// many descriptors): a misuse like any other.
    pub fn refuse(&mut self, why: String) {
        self.misuse(why);
    }

    /// Ends the reading (channel closed, or the run is over): what passed the checks. After a
    /// misuse nothing reported can be told apart from what the program forged, so no result
    /// and no files are kept; files cut short or left unread count as truncated.
    pub fn finish(mut self) -> Reports {
        let cut_short = matches!(
            self.expect,
            Expect::Blob {
                kind: Blob::Files(_),
                ..
            }
        );
        let refused_result = matches!(self.reports.result, Some(Err(_)));
        if self.reports.misuse.is_some() {
            self.reports.result = None;
            self.reports.files.clear();
            self.reports.listing.clear();
        }
        if cut_short || refused_result || self.reports.misuse.is_some() {
            self.reports.files_truncated = true;
        }
        self.reports
    }

    fn header(&mut self, packet: &[u8]) -> Next {
        let message = match serde_json::from_slice::<FromChild>(packet) {
            Ok(message) => message,
            Err(err) => return self.misuse(format!("unreadable report: {err}")),
        };
        let purpose = self.purpose;
        let (takes_result, takes_files) = match purpose {
            Purpose::Run { function_mode } => (function_mode, true),
            Purpose::Cell => (true, false),
            Purpose::Listing => (false, false),
            Purpose::ReadFile => (false, true),
        };
        match message {
            FromChild::Result { size } if takes_result && !self.seen_result && !self.seen_files => {
                self.seen_result = true;
                if size > self.caps.result_bytes {
                    let what = match purpose {
                        Purpose::Cell => "the cell's value",
                        _ => "main()'s result",
                    };
                    self.reports.result = Some(Err(format!(
                        "{what} is {size} bytes; the limit is {}",
                        self.caps.result_bytes
                    )));
                    return self.stop();
                }
                self.expect_blob(Blob::Result, size)
            }
            FromChild::Files {
                entries,
                truncated,
                skipped,
                size,
            } if takes_files && !self.seen_files => {
                self.seen_files = true;
                if let Err(why) = self.check_files(&entries, size) {
                    self.reports.files_truncated = true;
                    return self.misuse(why);
                }
                self.reports.files_truncated |= truncated || skipped > 0;
                self.reports.files_skipped = skipped;
                self.expect_blob(Blob::Files(entries), size)
            }
            FromChild::Done {} if purpose != Purpose::Cell => {
                self.reports.done = true;
                self.stop()
            }
            FromChild::CellDone { failed } if purpose == Purpose::Cell => {
                self.reports.done = true;
                self.reports.cell_failed = Some(failed);
                self.stop()
            }
            FromChild::Listing { entries, truncated }
                if purpose == Purpose::Listing && !self.seen_files =>
            {
                self.seen_files = true;
                if entries.len() as u64 > self.caps.file_count {
                    return self.misuse(format!(
                        "a listing of {} files; the limit is {}",
                        entries.len(),
                        self.caps.file_count
                    ));
                }
                if let Some(why) = entries
                    .iter()
                    .find_map(|e| check_relative_path(&e.path).err())
                {
                    return self.misuse(why);
                }
                self.reports.files_truncated = truncated;
                self.reports.listing = entries;
                self.expect = Expect::Header;
                Next::Read
            }
            other => self.misuse(format!("unexpected report {other:?}")),
        }
    }

    fn expect_blob(&mut self, kind: Blob, size: u64) -> Next {
        if size == 0 {
            return self.complete(kind, Vec::new());
        }
        // Never reserve more than one chunk ahead of what arrived.
        let reserve = usize::try_from(size).map_or(BLOB_CHUNK, |n| n.min(BLOB_CHUNK));
        self.expect = Expect::Blob {
            kind,
            remaining: size,
            data: Vec::with_capacity(reserve),
        };
        Next::Read
    }

    fn complete(&mut self, kind: Blob, data: Vec<u8>) -> Next {
        match kind {
            Blob::Result => self.reports.result = Some(Ok(data)),
            Blob::Files(entries) => {
                let mut offset: usize = 0;
                for entry in entries {
                    let piece = usize::try_from(entry.size)
                        .ok()
                        .and_then(|len| offset.checked_add(len))
                        .and_then(|end| data.get(offset..end).map(|bytes| (end, bytes)));
                    let Some((end, bytes)) = piece else {
                        // Cannot happen after check_files; refuse rather than index.
                        self.reports.files.clear();
                        self.reports.files_truncated = true;
                        return self.misuse("files report does not match its payload".into());
                    };
                    self.reports.files.push(ReportedFile {
                        path: entry.path,
                        content: bytes.to_vec(),
                    });
                    offset = end;
                }
            }
        }
        self.expect = Expect::Header;
        Next::Read
    }

    fn check_files(&self, entries: &[FileEntry], size: u64) -> Result<(), String> {
        if entries.len() as u64 > self.caps.file_count {
            return Err(format!(
                "a files report lists {} files; the limit is {}",
                entries.len(),
                self.caps.file_count
            ));
        }
        if size > self.caps.file_bytes {
            return Err(format!(
                "a files report announces {size} bytes; the limit is {}",
                self.caps.file_bytes
            ));
        }
        let mut total: u64 = 0;
        for entry in entries {
            check_relative_path(&entry.path)?;
            total = total
                .checked_add(entry.size)
                .ok_or("a files report's sizes overflow")?;
        }
        if total != size {
            return Err(format!(
                "a files report's sizes add up to {total}, not the announced {size}"
            ));
        }
        Ok(())
    }

    fn stop(&mut self) -> Next {
        self.expect = Expect::Nothing;
        Next::Stop
    }

    fn misuse(&mut self, why: String) -> Next {
        self.reports.misuse.get_or_insert(why);
        self.stop()
    }
}

#[cfg(test)]
mod tests;
