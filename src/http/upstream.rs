//! The daemon, as the shim talks to it: one socket connection per HTTP request.
//!
//! Why not a pool: connecting to a Unix socket and exchanging Hellos costs tens of
//! microseconds (measured: see the README's "HTTP API" section), against milliseconds for any
//! run; and a connection per request makes cancellation free: when the HTTP client goes away
//! or the request times out, the handler's future is dropped, the connection closes, and the
//! daemon kills the run (a closed connection cancels its runs).

use std::path::PathBuf;

use sandfork_protocol::{
    Caller, Cell, Request, Response, RunExtra, RunResult, RunSpec, ServerStatus, SessionOp,
    SessionPool, SessionReply,
};

use super::error::ApiError;
use sandfork_protocol::client::{Client, ClientError};

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub struct Upstream {
    socket: PathBuf,
}

impl Upstream {
    pub fn new(socket: PathBuf) -> Upstream {
        Upstream { socket }
    }

    async fn connect(&self) -> Result<Client, ApiError> {
        Client::connect(&self.socket)
            .await
            .map_err(ApiError::from_client)
    }

    /// Runs `spec` and returns its result (rejections included: see [`ApiError::rejected`]).
    pub async fn run(&self, spec: RunSpec) -> Result<RunResult, ApiError> {
        let mut client = self.connect().await?;
        client.run(spec).await.map_err(ApiError::from_client)
    }

    /// The daemon's readiness, slots and pools.
    pub async fn ping(&self) -> Result<ServerStatus, ApiError> {
        let mut client = self.connect().await?;
        client.ping().await.map_err(ApiError::from_client)
    }

    /// Readiness with the sessions of every profile.
    pub async fn status(&self) -> Result<(ServerStatus, Vec<SessionPool>), ApiError> {
        let mut client = self.connect().await?;
        client.status().await.map_err(ApiError::from_client)
    }

    /// A session operation other than a cell.
    pub async fn session(&self, caller: Caller, op: SessionOp) -> Result<SessionReply, ApiError> {
        let mut client = self.connect().await?;
        client
            .session(caller, op)
            .await
            .map_err(ApiError::from_client)
    }

    /// One cell, unstreamed (a refused cell is its rejected result: see [`ApiError::rejected`]).
    pub async fn cell(
        &self,
        caller: Caller,
        session: &str,
        cell: Cell,
    ) -> Result<(RunResult, RunExtra), ApiError> {
        let mut client = self.connect().await?;
        client
            .execute_cell(caller, session, cell, |_, _| {})
            .await
            .map_err(ApiError::from_client)
    }

    /// The uid the daemon runs as (its socket peer's credentials): root, or a rootless
    /// daemon's user. That uid is always a proxy, like those in `proxy_uids`.
    pub async fn uid(&self) -> std::io::Result<u32> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        Ok(stream.peer_cred()?.uid())
    }

    /// The daemon's Prometheus text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let mut client = self.connect().await?;
        let id = client.next_id();
        client
            .send(&Request::Metrics { id })
            .await
            .map_err(ApiError::from_client)?;
        loop {
            match client.recv().await.map_err(ApiError::from_client)? {
                Response::Metrics { id: got, text } if got == id => return Ok(text),
                Response::Error { error, .. } => {
                    return Err(ApiError::from_client(ClientError::Server(error)))
                }
                _ => continue,
            }
        }
    }
}
