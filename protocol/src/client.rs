//! A Rust client of the daemon's socket, used by the `sandfork` CLI, the HTTP shim, the tests and
//! the benchmarks, and usable as a library: [`Client::connect`] (with the Hello exchange), then
//! [`Client::run`] for one run at a time.
//!
//! `Client::run` is the simple path (one run at a time); `send`/`recv` expose the multiplexed
//! protocol for callers that keep several runs in flight.

use std::path::{Path, PathBuf};

use crate::{
    Caller, Cell, CodecError, ErrorFrame, FrameReader, FrameWriter, Hello, HelloReply,
    OutputStream, Request, Response, RunExtra, RunResult, RunSpec, ServerStatus, SessionOp,
    SessionPool, SessionReply, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    #[error("server error ({}): {}", .0.kind.as_str(), .0.message)]
    Server(ErrorFrame),
    #[error("the server closed the connection")]
    Closed,
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

/// A connection that has completed the Hello exchange.
pub struct Client {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    next_id: u64,
    /// What the server said in its Hello.
    pub server: HelloReply,
}

impl Client {
    /// Connects and says Hello.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = FrameReader::new(read_half, DEFAULT_MAX_FRAME_LEN);
        let mut writer = FrameWriter::new(write_half, DEFAULT_MAX_FRAME_LEN);
        writer
            .write(&Request::Hello(Hello {
                version: PROTOCOL_VERSION,
                client: format!("sandfork-client {}", env!("CARGO_PKG_VERSION")),
            }))
            .await?;
        match reader.read::<Response>().await? {
            Some(Response::Hello(server)) => Ok(Client {
                reader,
                writer,
                next_id: 1,
                server,
            }),
            Some(Response::Error { error, .. }) => Err(ClientError::Server(error)),
            Some(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            None => Err(ClientError::Closed),
        }
    }

    /// True when the connection can carry another request after sitting idle: nothing arrived
    /// unasked, and the server has not closed its end (a daemon draining or restarted closes
    /// idle connections). Never blocks. For pools of connections, such as the HTTP shim's.
    pub fn is_reusable(&self) -> bool {
        if self.reader.buffered() > 0 {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(
            self.reader.get_ref().try_read(&mut byte),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// A fresh request id for this connection.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        Ok(self.writer.write(request).await?)
    }

    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        self.reader.read().await?.ok_or(ClientError::Closed)
    }

    /// Runs one program and waits for its result.
    pub async fn run(&mut self, spec: RunSpec) -> Result<RunResult, ClientError> {
        let id = self.next_id();
        self.send(&Request::Run { id, spec }).await?;
        self.answer(id, |response| match response {
            Response::Result { result, .. } => Some(result),
            _ => None,
        })
        .await
    }

    /// Runs one program with its output streamed: `on_output` is called with every chunk as
    /// it arrives (in order per stream), then the result comes back with the streamed counts.
    pub async fn stream_run(
        &mut self,
        spec: RunSpec,
        on_output: impl FnMut(OutputStream, &[u8]),
    ) -> Result<(RunResult, RunExtra), ClientError> {
        let id = self.next_id();
        self.send(&Request::StreamRun { id, spec }).await?;
        self.until_done(id, on_output).await
    }

    /// Runs one cell in `session`; with `cell.stream`, `on_output` sees the output as it is
    /// produced. The cell's value is in the returned [`RunExtra`].
    pub async fn execute_cell(
        &mut self,
        caller: Caller,
        session: &str,
        cell: Cell,
        on_output: impl FnMut(OutputStream, &[u8]),
    ) -> Result<(RunResult, RunExtra), ClientError> {
        let id = self.next_id();
        let op = SessionOp::Execute {
            session: session.to_string(),
            cell,
        };
        self.send(&Request::Session { id, caller, op }).await?;
        self.until_done(id, on_output).await
    }

    /// A session operation other than a cell (open, interrupt, close, list, files).
    pub async fn session(
        &mut self,
        caller: Caller,
        op: SessionOp,
    ) -> Result<SessionReply, ClientError> {
        let id = self.next_id();
        self.send(&Request::Session { id, caller, op }).await?;
        self.answer(id, |response| match response {
            Response::Session { reply, .. } => Some(reply),
            _ => None,
        })
        .await
    }

    /// Waits for the answer to request `id`: every other frame of `id` goes to `pick`, which
    /// takes it as the answer (`Some`) or passes (`None`); other requests' frames are skipped.
    /// An error frame for `id` or for the connection is the error.
    async fn answer<T>(
        &mut self,
        id: u64,
        mut pick: impl FnMut(Response) -> Option<T>,
    ) -> Result<T, ClientError> {
        loop {
            match self.recv().await? {
                Response::Error {
                    id: Some(got),
                    error,
                } if got == id => return Err(ClientError::Server(error)),
                Response::Error { id: None, error } => return Err(ClientError::Server(error)),
                response if response.id() == Some(id) => {
                    if let Some(answer) = pick(response) {
                        return Ok(answer);
                    }
                }
                _ => continue,
            }
        }
    }

    /// Readiness with the sessions of every profile.
    pub async fn status(&mut self) -> Result<(ServerStatus, Vec<SessionPool>), ClientError> {
        let id = self.next_id();
        self.send(&Request::Status { id }).await?;
        self.answer(id, |response| match response {
            Response::Status {
                status, sessions, ..
            } => Some((status, sessions)),
            _ => None,
        })
        .await
    }

    /// The frames of streamed request `id` until its `Done`.
    async fn until_done(
        &mut self,
        id: u64,
        mut on_output: impl FnMut(OutputStream, &[u8]),
    ) -> Result<(RunResult, RunExtra), ClientError> {
        self.answer(id, |response| match response {
            Response::Output { stream, data, .. } => {
                on_output(stream, &data);
                None
            }
            Response::Done { result, extra, .. } => Some((result, extra)),
            _ => None,
        })
        .await
    }

    /// Asks for the server's status.
    pub async fn ping(&mut self) -> Result<ServerStatus, ClientError> {
        let id = self.next_id();
        self.send(&Request::Ping { id }).await?;
        self.answer(id, |response| match response {
            Response::Pong { status, .. } => Some(status),
            _ => None,
        })
        .await
    }
}
