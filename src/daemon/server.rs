//! The Unix-socket server: bytes → frames (protocol crate) → requests → supervisor.
//!
//! `run(listener, supervisor, shutdown)` accepts connections until `shutdown` resolves, then
//! stops accepting, lets in-flight runs finish within the grace period and drops the rest (which
//! kills their children). Each connection: Hello first, then any number of Run/Cancel/Ping
//! frames; runs execute concurrently and their results are written as they finish, in any order.
//! A vanished client's runs are dropped, killing their children.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_protocol::{
    Caller, CodecError, ErrorFrame, ErrorKind, FrameReader, FrameWriter, HelloReply, Request,
    Response, RunExtra, RunResult, SessionOp, Status, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::daemon::child::{output_queue, OutputChunk};
use crate::daemon::engine::run::Streaming;
use crate::daemon::supervisor::{SessionAnswer, Supervisor};
use crate::tenants::IdentityError;
use crate::tenants::Tenant;
use crate::validate;

/// How long a new connection may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Protocol errors logged per connection before the rest are only counted.
const LOGGED_ERRORS_PER_CONNECTION: u32 = 5;
/// After the grace period, how long connections get to deliver the `killed` results of the runs
/// they had to stop, before they are closed regardless.
const KILLED_RESULTS_WITHIN: Duration = Duration::from_secs(5);

/// Where the server is in its life; every connection watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutting down: no new runs; the ones in flight may finish within the grace period.
    Draining,
    /// The grace period is over: every run still in flight is stopped, and its caller gets a
    /// `killed` result saying why.
    Killing,
}

/// Serves `listener` until `shutdown` resolves; returns once every connection has finished or
/// the grace period has passed.
pub async fn run(
    listener: UnixListener,
    supervisor: Arc<Supervisor>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(Phase::Serving);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let conn = Connection::new(&stream, Arc::clone(&supervisor), stop_rx.clone());
                    connections.spawn(conn.serve(stream));
                }
                Err(err) => {
                    warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(
        connections = connections.len(),
        grace_ms = supervisor.shutdown_grace.as_millis() as u64,
        "shutting down: no new connections; waiting for in-flight runs"
    );
    stop_tx.send_replace(Phase::Draining);
    let drained = tokio::time::timeout(supervisor.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            "grace period over; killing the remaining runs"
        );
        stop_tx.send_replace(Phase::Killing);
        let answered = tokio::time::timeout(KILLED_RESULTS_WITHIN, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if answered.is_err() {
            connections.shutdown().await;
        }
    }
}

/// Who is on the other end, for logs.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: i32,
    uid: u32,
}

struct Connection {
    supervisor: Arc<Supervisor>,
    stop: watch::Receiver<Phase>,
    peer: Peer,
    logged_errors: u32,
    /// The protocol version agreed at Hello (the client's, when we speak it).
    version: u32,
}

/// Why an in-flight request is stopped early.
#[derive(Debug)]
enum Stop {
    /// The client cancelled it.
    Cancelled,
    /// The daemon's grace period ran out.
    Shutdown(String),
}

impl Connection {
    fn new(stream: &UnixStream, supervisor: Arc<Supervisor>, stop: watch::Receiver<Phase>) -> Self {
        let peer = stream
            .peer_cred()
            .map(|c| Peer {
                pid: c.pid().unwrap_or(0),
                uid: c.uid(),
            })
            .unwrap_or(Peer {
                pid: 0,
                uid: u32::MAX,
            });
        Connection {
            supervisor,
            stop,
            peer,
            logged_errors: 0,
            version: PROTOCOL_VERSION,
        }
    }

    /// Answers a request (`id`, or None for the connection) with an error frame, and logs it
    /// within the connection's log budget.
    async fn refuse(
        &mut self,
        out: &mpsc::Sender<Response>,
        id: Option<u64>,
        kind: ErrorKind,
        message: String,
    ) {
        self.log_protocol_error(kind, &message);
        let _ = out.send(error(id, kind, message)).await;
    }

    fn log_protocol_error(&mut self, kind: ErrorKind, detail: &str) {
        self.logged_errors += 1;
        if self.logged_errors <= LOGGED_ERRORS_PER_CONNECTION {
            warn!(
                peer_pid = self.peer.pid,
                peer_uid = self.peer.uid,
                kind = kind.as_str(),
                detail,
                "bad request"
            );
        } else if self.logged_errors == LOGGED_ERRORS_PER_CONNECTION + 1 {
            warn!(
                peer_pid = self.peer.pid,
                "further bad requests on this connection are not logged"
            );
        }
    }

    async fn serve(mut self, stream: UnixStream) {
        let max = self.supervisor.max_frame_len;
        let (read_half, write_half) = stream.into_split();
        let mut reader = FrameReader::new(read_half, max);
        let (out_tx, mut out_rx) = mpsc::channel::<Response>(256);
        let writer_task = tokio::spawn(async move {
            let mut writer = FrameWriter::new(write_half, max);
            while let Some(response) = out_rx.recv().await {
                if let Err(err) = writer.write(&response).await {
                    debug!(cause = %err, "client went away while we were writing");
                    break;
                }
            }
        });

        if self.handshake(&mut reader, &out_tx).await {
            self.serve_requests(&mut reader, &out_tx).await;
        }
        drop(out_tx);
        let _ = writer_task.await;
    }

    /// Reads the Hello; answers it. False if the connection should close.
    async fn handshake(
        &mut self,
        reader: &mut FrameReader<tokio::net::unix::OwnedReadHalf>,
        out: &mpsc::Sender<Response>,
    ) -> bool {
        let first = match tokio::time::timeout(HELLO_TIMEOUT, reader.read::<Request>()).await {
            Err(_) => {
                self.log_protocol_error(ErrorKind::HelloRequired, "no hello in time");
                return false;
            }
            Ok(Ok(None)) => return false,
            Ok(Ok(Some(request))) => request,
            Ok(Err(err)) => {
                self.reply_codec_error(&err, out).await;
                return false;
            }
        };
        match first {
            Request::Hello(hello)
                if (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) =>
            {
                debug!(peer_pid = self.peer.pid, client = %hello.client, version = hello.version, "hello");
                self.version = hello.version;
                // A uid that is neither a tenant nor a proxy has nothing to do here.
                if let Err(err @ IdentityError::UnknownUid { .. }) =
                    self.supervisor.identify(self.peer.uid, None)
                {
                    let message = err.to_string();
                    self.refuse(out, None, ErrorKind::PermissionDenied, message)
                        .await;
                    return false;
                }
                let reply = Response::Hello(HelloReply {
                    version: self.version,
                    server: format!("sandforkd {}", env!("CARGO_PKG_VERSION")),
                    max_frame_len: self.supervisor.max_frame_len,
                });
                out.send(reply).await.is_ok()
            }
            Request::Hello(hello) => {
                let message = format!(
                    "this server speaks protocol versions {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}; the client sent {}",
                    hello.version
                );
                self.refuse(out, None, ErrorKind::UnsupportedVersion, message)
                    .await;
                false
            }
            _ => {
                let message = "the first frame must be Hello".to_string();
                self.refuse(out, None, ErrorKind::HelloRequired, message)
                    .await;
                false
            }
        }
    }

    async fn serve_requests(
        &mut self,
        reader: &mut FrameReader<tokio::net::unix::OwnedReadHalf>,
        out: &mpsc::Sender<Response>,
    ) {
        // Cancel handles of in-flight runs. Dropping one (connection gone) drops its run, which
        // kills the child; sending on it cancels with a result.
        let mut inflight: HashMap<u64, oneshot::Sender<Stop>> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
        let mut tasks = JoinSet::new();
        let mut stop = self.stop.clone();
        loop {
            if *stop.borrow() != Phase::Serving && inflight.is_empty() {
                // Draining and nothing left in flight on this connection: close it, once the
                // runs' tasks have handed over their results.
                while tasks.join_next().await.is_some() {}
                return;
            }
            tokio::select! {
                frame = reader.read::<Request>() => match frame {
                    Ok(Some(request)) if request.since_version() > self.version => {
                        let message = format!(
                            "this request needs protocol version {}; the connection said Hello with {}",
                            request.since_version(),
                            self.version
                        );
                        self.refuse(out, request.id(), ErrorKind::InvalidRequest, message).await;
                    }
                    Ok(Some(request)) if *stop.borrow() != Phase::Serving && starts_work(&request) => {
                        let message = "the server is shutting down; no new runs".to_string();
                        let _ = out.send(error(request.id(), ErrorKind::ShuttingDown, message)).await;
                    }
                    Ok(Some(request)) => {
                        self.dispatch(request, out, &mut inflight, &done_tx, &mut tasks).await;
                    }
                    Ok(None) => break,
                    Err(err @ CodecError::Decode(_)) => {
                        // The frame was consumed whole: answer and keep the connection.
                        self.reply_codec_error(&err, out).await;
                    }
                    Err(err) => {
                        self.reply_codec_error(&err, out).await;
                        break;
                    }
                },
                Some(id) = done_rx.recv() => {
                    inflight.remove(&id);
                }
                _ = stop.changed(), if *stop.borrow() != Phase::Killing => {
                    if *stop.borrow() == Phase::Killing {
                        let reason = format!(
                            "the daemon is shutting down and the grace period of {} ms ran out; \
                             the run was stopped",
                            self.supervisor.shutdown_grace.as_millis()
                        );
                        for (_, cancel) in inflight.drain() {
                            let _ = cancel.send(Stop::Shutdown(reason.clone()));
                        }
                    }
                }
                _ = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // The client is gone (or broke framing): abandon its runs.
        drop(inflight);
        while tasks.join_next().await.is_some() {}
    }

    async fn dispatch(
        &mut self,
        request: Request,
        out: &mpsc::Sender<Response>,
        inflight: &mut HashMap<u64, oneshot::Sender<Stop>>,
        done: &mpsc::UnboundedSender<u64>,
        tasks: &mut JoinSet<()>,
    ) {
        let streamed = matches!(request, Request::StreamRun { .. });
        match request {
            Request::Hello(_) => {
                let message = "hello was already received on this connection".to_string();
                self.refuse(out, None, ErrorKind::InvalidRequest, message)
                    .await;
            }
            Request::Metrics { id } => {
                // Tenant names and counts are not for strangers: tenants and proxies only.
                if let Err(err) = self.supervisor.may_read_metrics(self.peer.uid) {
                    let message = err.to_string();
                    self.refuse(out, Some(id), ErrorKind::PermissionDenied, message)
                        .await;
                    return;
                }
                let text = self.supervisor.metrics_text();
                let _ = out.send(Response::Metrics { id, text }).await;
            }
            Request::Ping { id } => {
                let status = self.supervisor.status();
                let _ = out.send(Response::Pong { id, status }).await;
            }
            Request::Cancel { id } => match inflight.remove(&id) {
                Some(cancel) => {
                    let _ = cancel.send(Stop::Cancelled);
                }
                None => {
                    let message = format!("no run with id {id} is in flight");
                    let _ = out
                        .send(error(Some(id), ErrorKind::UnknownId, message))
                        .await;
                }
            },
            Request::Status { id } => {
                let status = self.supervisor.status();
                let sessions = self.supervisor.session_pools();
                let _ = out
                    .send(Response::Status {
                        id,
                        status,
                        sessions,
                    })
                    .await;
            }
            Request::Run { id, spec } | Request::StreamRun { id, spec } => {
                if let Err(message) = validate::run_code(spec.mode, &spec.code) {
                    self.refuse(out, Some(id), ErrorKind::InvalidRequest, message)
                        .await;
                    return;
                }
                let Some((tenant, cancel_rx)) = self
                    .admit_inflight(id, spec.tenant.as_deref(), out, inflight)
                    .await
                else {
                    return;
                };
                let supervisor = Arc::clone(&self.supervisor);
                let out = out.clone();
                let done = done.clone();
                let received = Instant::now();
                tasks.spawn(async move {
                    let answer = if streamed {
                        let (streaming, forward) = streaming_to(id, &out);
                        let run =
                            supervisor.execute_streamed(&tenant, spec, received, Some(streaming));
                        tokio::select! {
                            ((result, extra), ()) = async { tokio::join!(run, forward) } => {
                                Some(Response::Done { id, result, extra })
                            }
                            stop = cancel_rx => stop.ok().map(|stop| Response::Done {
                                id,
                                result: stopped_result(stop),
                                extra: RunExtra::default(),
                            }),
                        }
                    } else {
                        tokio::select! {
                            result = supervisor.execute(&tenant, spec, received) => {
                                Some(Response::Result { id, result })
                            }
                            stop = cancel_rx => stop.ok().map(|stop| Response::Result {
                                id,
                                result: stopped_result(stop),
                            }),
                        }
                    };
                    if let Some(answer) = answer {
                        let _ = out.send(answer).await;
                    }
                    let _ = done.send(id);
                });
            }
            Request::Session { id, caller, op } => {
                self.session(id, caller, op, out, inflight, done, tasks)
                    .await;
            }
        }
    }

    /// Registers request `id` as in flight for the tenant the peer acts as: its cancel handle.
    /// `None` (answered already) for a duplicate id or an unknown tenant.
    async fn admit_inflight(
        &mut self,
        id: u64,
        on_behalf_of: Option<&str>,
        out: &mpsc::Sender<Response>,
        inflight: &mut HashMap<u64, oneshot::Sender<Stop>>,
    ) -> Option<(Arc<Tenant>, oneshot::Receiver<Stop>)> {
        if inflight.contains_key(&id) {
            let message = format!("a request with id {id} is already in flight");
            self.refuse(out, Some(id), ErrorKind::DuplicateId, message)
                .await;
            return None;
        }
        // Who is asking: the peer's own tenant, or the one a proxy peer names.
        let tenant = match self.supervisor.identify(self.peer.uid, on_behalf_of) {
            Ok(tenant) => tenant,
            Err(err) => {
                let message = err.to_string();
                self.refuse(out, Some(id), ErrorKind::PermissionDenied, message)
                    .await;
                return None;
            }
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        inflight.insert(id, cancel_tx);
        Some((tenant, cancel_rx))
    }

    /// A session operation. A cell is in flight like a run (a cancel interrupts it; the end of
    /// the grace period ends its session); the other operations are answered as they finish.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &mut self,
        id: u64,
        caller: Caller,
        op: SessionOp,
        out: &mpsc::Sender<Response>,
        inflight: &mut HashMap<u64, oneshot::Sender<Stop>>,
        done: &mpsc::UnboundedSender<u64>,
        tasks: &mut JoinSet<()>,
    ) {
        let Some((tenant, cancel_rx)) = self
            .admit_inflight(id, caller.tenant.as_deref(), out, inflight)
            .await
        else {
            return;
        };
        let supervisor = Arc::clone(&self.supervisor);
        let out = out.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let cell_session = match &op {
                SessionOp::Execute { session, .. } => Some(session.clone()),
                _ => None,
            };
            let (streaming, forward) = streaming_to(id, &out);
            let work = supervisor.session_op(&tenant, &caller, op, Some(streaming));
            let both = async { tokio::join!(work, forward).0 };
            tokio::pin!(both);
            let mut cancel_rx = cancel_rx;
            let mut cancel_open = true;
            let answer = loop {
                tokio::select! {
                    answer = &mut both => break answer,
                    stop = &mut cancel_rx, if cancel_open => {
                        cancel_open = false;
                        // A cell stopped by its caller — a cancel, or the connection gone (the
                        // handle dropped) — is interrupted and still answers; at the end of the
                        // grace period its session ends with it.
                        let Some(session) = &cell_session else { continue };
                        let op = match stop.unwrap_or(Stop::Cancelled) {
                            Stop::Cancelled => SessionOp::Interrupt { session: session.clone() },
                            Stop::Shutdown(_) => SessionOp::Close { session: session.clone() },
                        };
                        let _ = supervisor.session_op(&tenant, &caller, op, None).await;
                    }
                }
            };
            let response = match answer {
                SessionAnswer::Reply(reply) => Response::Session { id, reply },
                SessionAnswer::Cell(result, extra) => Response::Done { id, result, extra },
                SessionAnswer::Refused(kind, message) => error(Some(id), kind, message),
            };
            let _ = out.send(response).await;
            let _ = done.send(id);
        });
    }

    async fn reply_codec_error(&mut self, err: &CodecError, out: &mpsc::Sender<Response>) {
        let kind = err.kind();
        self.log_protocol_error(kind, &err.to_string());
        if !matches!(err, CodecError::Io(_)) {
            let _ = out.send(error(None, kind, err.to_string())).await;
        }
    }
}

/// Whether a request asks for new work (refused while the server drains).
fn starts_work(request: &Request) -> bool {
    match request {
        Request::Run { .. } | Request::StreamRun { .. } => true,
        Request::Session { op, .. } => {
            matches!(op, SessionOp::Open(_) | SessionOp::Execute { .. })
        }
        _ => false,
    }
}

/// The result of a run stopped before its end.
fn stopped_result(stop: Stop) -> RunResult {
    let reason = match stop {
        Stop::Cancelled => "cancelled by the client".to_string(),
        Stop::Shutdown(reason) => reason,
    };
    RunResult::new(Status::Killed).with_message(reason)
}

/// The hooks of streamed request `id`, and the future that forwards what comes through them to
/// the client (see [`forward_output`]); poll both side by side.
fn streaming_to(
    id: u64,
    out: &mpsc::Sender<Response>,
) -> (Streaming, impl Future<Output = ()> + '_) {
    let (sink, chunks) = output_queue();
    let (admitted, admitted_rx) = oneshot::channel();
    (
        Streaming { sink, admitted },
        forward_output(id, admitted_rx, chunks, out),
    )
}

/// Sends a streamed request's `Started` once it is admitted, then its output as `Output`
/// frames, in order, until every sink is gone (the run or cell is over). The connection's
/// queue is bounded: a slow client slows this, which fills the sink, which stalls the child.
async fn forward_output(
    id: u64,
    admitted: oneshot::Receiver<()>,
    mut chunks: mpsc::Receiver<OutputChunk>,
    out: &mpsc::Sender<Response>,
) {
    if admitted.await.is_ok() && out.send(Response::Started { id }).await.is_err() {
        return;
    }
    while let Some(chunk) = chunks.recv().await {
        let frame = Response::Output {
            id,
            stream: chunk.stream,
            data: chunk.data,
        };
        if out.send(frame).await.is_err() {
            return;
        }
    }
}

fn error(id: Option<u64>, kind: ErrorKind, message: String) -> Response {
    Response::Error {
        id,
        error: ErrorFrame { kind, message },
    }
}
