//! The daemon, as the shim talks to it: a pool of greeted socket connections, one request at a
//! time on each.
//!
//! A request takes an idle connection (or opens one and says Hello), and gives it back only when
//! its exchange completed; a request that fails or is dropped half-way drops its connection,
//! which closes it. So cancellation stays free: when the HTTP client goes away or the request
//! times out, the handler's future is dropped, the connection closes, and the daemon kills the
//! run (a closed connection cancels its runs). An idle connection the daemon has closed
//! (draining, restarted) shows it at the next take ([`Client::is_reusable`]) and is replaced
//! before anything is sent on it, so no request is ever sent twice.
//!
//! Why a pool: a connection and its Hello cost a round trip through the daemon, a task on each
//! side and an allocation of each frame buffer per request; reusing connections took what the
//! shim adds to a run at c=1 from 0.74 to 0.25 ms p50 (docs/BENCHMARKS.md, "Speed, second
//! pass").

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

use sandfork_protocol::{
    Caller, Cell, Request, Response, RunExtra, RunResult, RunSpec, ServerStatus, SessionOp,
    SessionPool, SessionReply,
};

use super::error::ApiError;
use sandfork_protocol::client::{Client, ClientError};

/// Idle connections kept for reuse; beyond this, a finished request closes its connection (a
/// burst's extra connections are not held open for good).
const MAX_IDLE: usize = 32;

/// Where the daemon listens, and the connections kept open to it.
#[derive(Clone)]
pub struct Upstream {
    socket: PathBuf,
    /// Greeted connections no request is using, newest last.
    idle: Arc<Mutex<Vec<Client>>>,
    /// `sandfork_http_daemon_connections_total`: every connection opened.
    opened: Counter,
}

/// A connection taken from the pool for one request; [`Taken::give_back`] returns it once the
/// exchange is complete, and dropping it instead closes it.
struct Taken {
    client: Client,
    idle: Arc<Mutex<Vec<Client>>>,
}

impl Taken {
    /// `result`, as the shim reports it; the connection goes back to the pool if it carried
    /// the exchange to its end.
    fn finish<T>(self, result: Result<T, ClientError>) -> Result<T, ApiError> {
        match result {
            Ok(value) => {
                self.give_back();
                Ok(value)
            }
            Err(err) => Err(ApiError::from_client(err)),
        }
    }

    fn give_back(self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(self.client);
        }
    }
}

impl std::ops::Deref for Taken {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Taken {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("socket", &self.socket)
            .field("idle", &self.idle_connections())
            .finish()
    }
}

impl Upstream {
    pub fn new(socket: PathBuf, opened: Counter) -> Upstream {
        Upstream {
            socket,
            idle: Arc::default(),
            opened,
        }
    }

    /// Connections idle in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// A new greeted connection, outside the pool (a streamed run keeps its own).
    pub async fn open(&self) -> Result<Client, ApiError> {
        self.opened.inc();
        Client::connect(&self.socket)
            .await
            .map_err(ApiError::from_client)
    }

    /// An idle connection the daemon still holds open, else a new one.
    async fn connect(&self) -> Result<Taken, ApiError> {
        loop {
            let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match reused {
                Some(client) if client.is_reusable() => {
                    return Ok(Taken {
                        client,
                        idle: Arc::clone(&self.idle),
                    })
                }
                Some(_closed) => continue,
                None => break,
            }
        }
        let client = self.open().await?;
        Ok(Taken {
            client,
            idle: Arc::clone(&self.idle),
        })
    }

    /// Runs `spec` and returns its result (rejections included: see [`ApiError::rejected`]).
    pub async fn run(&self, spec: RunSpec) -> Result<RunResult, ApiError> {
        let mut client = self.connect().await?;
        let result = client.run(spec).await;
        client.finish(result)
    }

    /// The daemon's readiness, slots and pools.
    pub async fn ping(&self) -> Result<ServerStatus, ApiError> {
        let mut client = self.connect().await?;
        let result = client.ping().await;
        client.finish(result)
    }

    /// Readiness with the sessions of every profile.
    pub async fn status(&self) -> Result<(ServerStatus, Vec<SessionPool>), ApiError> {
        let mut client = self.connect().await?;
        let result = client.status().await;
        client.finish(result)
    }

    /// A session operation other than a cell.
    pub async fn session(&self, caller: Caller, op: SessionOp) -> Result<SessionReply, ApiError> {
        let mut client = self.connect().await?;
        let result = client.session(caller, op).await;
        client.finish(result)
    }

    /// One cell, unstreamed (a refused cell is its rejected result: see [`ApiError::rejected`]).
    pub async fn cell(
        &self,
        caller: Caller,
        session: &str,
        cell: Cell,
    ) -> Result<(RunResult, RunExtra), ApiError> {
        let mut client = self.connect().await?;
        let result = client.execute_cell(caller, session, cell, |_, _| {}).await;
        client.finish(result)
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
        let result = async {
            client.send(&Request::Metrics { id }).await?;
            loop {
                match client.recv().await? {
                    Response::Metrics { id: got, text } if got == id => return Ok(text),
                    Response::Error { error, .. } => return Err(ClientError::Server(error)),
                    _ => continue,
                }
            }
        }
        .await;
        client.finish(result)
    }
}
