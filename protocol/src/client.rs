//! A Rust client of the daemon's socket, used by the `sandfork` CLI, the HTTP shim, the tests and
//! the benchmarks, and usable as a library: [`Client::connect`] (with the Hello exchange), then
//! [`Client::run`] for one run at a time.
//!
//! `Client::run` is the simple path (one run at a time); `send`/`recv` expose the multiplexed
//! protocol for callers that keep several runs in flight.

use std::path::{Path, PathBuf};

use crate::{
    CodecError, ErrorFrame, FrameReader, FrameWriter, Hello, HelloReply, Request, Response,
    RunResult, RunSpec, ServerStatus, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
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
        loop {
            match self.recv().await? {
                Response::Result { id: got, result } if got == id => return Ok(result),
                Response::Error {
                    id: Some(got),
                    error,
                } if got == id => return Err(ClientError::Server(error)),
                Response::Error { id: None, error } => return Err(ClientError::Server(error)),
                _ => continue,
            }
        }
    }

    /// Asks for the server's status.
    pub async fn ping(&mut self) -> Result<ServerStatus, ClientError> {
        let id = self.next_id();
        self.send(&Request::Ping { id }).await?;
        loop {
            match self.recv().await? {
                Response::Pong { id: got, status } if got == id => return Ok(status),
                Response::Error { error, .. } => return Err(ClientError::Server(error)),
                _ => continue,
            }
        }
    }
}
