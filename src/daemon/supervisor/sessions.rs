//! The supervisor's session operations: open, cell, interrupt, close, list, files; the reaper
//! that ends idle and expired sessions; the end of every session at shutdown.
//!
//! Opening a session is a run's path up to the child: the tenant's policy decides the limits
//! (a request may only lower them), admission charges the tenant's rate and concurrency while
//! the child is forked, and the child is forked cold from the profile's zygote into an identity
//! of its own (uid and cgroup), locked down like any run's child, with RLIMIT_CPU at the
//! session's lifetime. A cell goes through admission again (it holds a run slot and a unit of
//! the tenant's concurrency while it runs) and runs in a task the session owns, so a caller
//! that goes away interrupts its cell instead of tearing the session's state apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandfork_protocol::{
    Caller, Cell, ErrorKind, RejectKind, Rejection, RunExtra, RunResult, SessionOp, SessionOpen,
    SessionPool, SessionReply,
};
use tracing::{info, warn};

use super::Supervisor;
use crate::config::DEFAULT_PROFILE;
use crate::daemon::child::OutputSink;
use crate::daemon::engine::run::{self, Streaming};
use crate::daemon::sessions::{new_session_id, Refusal, Session, SessionEnd, SessionParams};
use crate::tenants::Tenant;
use crate::validate;

/// How a session operation is answered.
// `Cell` is much larger than the rest, but an answer lives only from the operation's end to its
// encoding, one per request; boxing it would cost an allocation per cell.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SessionAnswer {
    /// A reply frame.
    Reply(SessionReply),
    /// A cell's (or a rejected cell's) result: `Done`.
    Cell(RunResult, RunExtra),
    /// An error frame.
    Refused(ErrorKind, String),
}

impl From<Refusal> for SessionAnswer {
    fn from((kind, message): Refusal) -> Self {
        SessionAnswer::Refused(kind, message)
    }
}

/// A question about a session's files.
#[derive(Debug)]
enum FileAsk {
    List,
    /// One file, at most `max_bytes` (the session's output cap).
    Read {
        path: String,
        max_bytes: u64,
    },
}

impl Supervisor {
    /// Performs one session operation for `tenant`. A cell's output goes to `streaming`'s sink
    /// when the cell asks to stream (`streaming` is then required).
    pub async fn session_op(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        caller: &Caller,
        op: SessionOp,
        streaming: Option<Streaming>,
    ) -> SessionAnswer {
        match op {
            SessionOp::Open(open) => self.open_session(tenant, caller, open).await,
            SessionOp::Execute { session, cell } => {
                match self.sessions.find(&tenant.name, &session) {
                    Ok(session) => {
                        self.run_cell(tenant, caller, session, cell, streaming)
                            .await
                    }
                    Err(refusal) => refusal.into(),
                }
            }
            SessionOp::Interrupt { session } => match self.sessions.find(&tenant.name, &session) {
                Ok(session) => {
                    if session.is_busy() {
                        session.signaller.interrupt();
                    }
                    SessionAnswer::Reply(SessionReply::Interrupted)
                }
                Err(refusal) => refusal.into(),
            },
            SessionOp::Close { session } => match self.sessions.find(&tenant.name, &session) {
                Ok(session) => {
                    self.end_session(&session, SessionEnd::Closed, "closed by its owner".into());
                    SessionAnswer::Reply(SessionReply::Closed)
                }
                Err(refusal) => refusal.into(),
            },
            SessionOp::List => SessionAnswer::Reply(SessionReply::List(
                self.sessions
                    .of_tenant(&tenant.name)
                    .iter()
                    .map(|s| s.info())
                    .collect(),
            )),
            SessionOp::ListFiles { session } => match self.sessions.find(&tenant.name, &session) {
                Ok(session) => self.between_cells(&session, FileAsk::List).await,
                Err(refusal) => refusal.into(),
            },
            SessionOp::ReadFile { session, path } => {
                let session = match self.sessions.find(&tenant.name, &session) {
                    Ok(session) => session,
                    Err(refusal) => return refusal.into(),
                };
                if let Err(why) = sandfork_ipc::path::check_relative_path(&path) {
                    return SessionAnswer::Refused(ErrorKind::InvalidRequest, why);
                }
                let max_bytes = session.limits.output_bytes;
                self.between_cells(&session, FileAsk::Read { path, max_bytes })
                    .await
            }
        }
    }

    /// Live sessions and their bound, per profile.
    pub fn session_pools(&self) -> Vec<SessionPool> {
        self.profiles
            .iter()
            .map(|(name, profile)| SessionPool {
                profile: name.clone(),
                live: self.sessions.count(name),
                max: profile.pool.profile.max_sessions,
            })
            .collect()
    }

    /// Ends every session (daemon shutdown).
    pub(super) fn end_all_sessions(&self) {
        for session in self.sessions.all() {
            self.end_session(
                &session,
                SessionEnd::Shutdown,
                "the daemon shut down".into(),
            );
        }
    }

    async fn open_session(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        caller: &Caller,
        open: SessionOpen,
    ) -> SessionAnswer {
        let refused = |kind: RejectKind, message: String| {
            SessionAnswer::Reply(SessionReply::Refused {
                rejection: Rejection {
                    kind,
                    retry_after_ms: None,
                },
                message,
            })
        };
        let profile_name = open.profile.unwrap_or_else(|| DEFAULT_PROFILE.to_string());
        let Some(profile) = self.profiles.get(&profile_name) else {
            return refused(
                RejectKind::UnknownProfile,
                format!("unknown profile {profile_name:?}"),
            );
        };
        let ceilings = &profile.pool.profile.limits;
        let mut limits = match tenant.effective_limits(&profile_name, ceilings, &open.limits) {
            Ok(limits) => limits,
            Err(err) => return refused(run::reject_kind(&err), err.to_string()),
        };
        let config = self.sessions_config;
        let idle = match open.idle_timeout_s {
            None => config.idle_timeout_s,
            Some(0) => {
                return refused(
                    RejectKind::InvalidLimits,
                    "idle_timeout_s must be positive".into(),
                )
            }
            Some(asked) if asked > config.max_idle_timeout_s => {
                return refused(
                    RejectKind::LimitAboveCeiling,
                    format!(
                        "idle_timeout_s {asked} exceeds the maximum of {}",
                        config.max_idle_timeout_s
                    ),
                )
            }
            Some(asked) => asked,
        };
        let place = match self.sessions.reserve(
            &tenant.name,
            tenant.policy.max_sessions,
            &profile_name,
            profile.pool.profile.max_sessions,
        ) {
            Ok(place) => place,
            Err(refusal) => return refusal.into(),
        };
        // The rate and concurrency of the tenant pay for the fork.
        let permit = match self.admission.admit(tenant, &profile_name).await {
            Ok(permit) => permit,
            Err(refusal) => {
                let result = run::admission_refused(&refusal);
                let rejection = result.rejection.unwrap_or(Rejection {
                    kind: RejectKind::Busy,
                    retry_after_ms: None,
                });
                return SessionAnswer::Reply(SessionReply::Refused {
                    rejection,
                    message: result.message.unwrap_or_default(),
                });
            }
        };
        let lifetime = Duration::from_secs(config.max_lifetime_s);
        // CPU over the whole session: at most its lifetime (a cell's own bound is its timeout).
        limits.cpu_seconds = Some(config.max_lifetime_s);
        let id = match new_session_id(self.node.as_deref()) {
            Ok(id) => id,
            Err(why) => return SessionAnswer::Refused(ErrorKind::Internal, why),
        };
        let opened = Instant::now();
        let slot = self.slots.acquire().await;
        let child = match run::fork_into(&profile.pool, slot, &self.child_ids, &limits).await {
            Ok(child) => child,
            Err(why) => return SessionAnswer::Refused(ErrorKind::Internal, why),
        };
        let child = match child.into_session(&limits).await {
            Ok(child) => child,
            Err(err) => return SessionAnswer::Refused(ErrorKind::Internal, err.to_string()),
        };
        drop(permit);
        let signaller = match child.signaller() {
            Ok(signaller) => signaller,
            Err(why) => return SessionAnswer::Refused(ErrorKind::Internal, why),
        };
        let params = SessionParams {
            id,
            tenant: tenant.name.clone(),
            profile: profile_name.clone(),
            limits,
            idle_timeout: Duration::from_secs(idle),
            lifetime,
        };
        let session = Arc::new(Session::new(params, child, signaller));
        place.fill(Arc::clone(&session));
        self.metrics.session_opened(&tenant.name, &profile_name);
        info!(
            target: "sandfork::audit",
            tenant = tenant.name.as_str(),
            request_id = caller.request_id.as_deref().unwrap_or(""),
            session_id = %session.id,
            profile = %profile_name,
            idle_timeout_s = idle,
            lifetime_s = config.max_lifetime_s,
            open_ms = opened.elapsed().as_secs_f64() * 1000.0,
            client_addr = caller.client_addr.as_deref().unwrap_or(""),
            "session_open"
        );
        tokio::spawn(reap(Arc::clone(self), Arc::clone(&session)));
        SessionAnswer::Reply(SessionReply::Opened(session.info()))
    }

    /// One cell, from the request to its audit record: every cell that reached its session is
    /// recorded and counted, the refused ones (sizes, rate, concurrency) too.
    async fn run_cell(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        caller: &Caller,
        session: Arc<Session>,
        cell: Cell,
        streaming: Option<Streaming>,
    ) -> SessionAnswer {
        let received = Instant::now();
        let code_sha256 = super::hex_sha256(&cell.code);
        let (mut result, extra) = match self
            .cell_result(tenant, &session, cell, streaming, received)
            .await
        {
            Ok(ran) => ran,
            Err((kind, message)) => return SessionAnswer::Refused(kind, message),
        };
        result.request_id = caller
            .request_id
            .clone()
            .unwrap_or_else(|| crate::service::new_request_id("c"));
        result.timings.total_ms = ms(received.elapsed());
        self.metrics
            .record_cell(&tenant.name, &session.profile, &result);
        info!(
            target: "sandfork::audit",
            tenant = tenant.name.as_str(),
            request_id = %result.request_id,
            session_id = %session.id,
            profile = %session.profile,
            code_sha256 = %code_sha256,
            status = result.status.as_str(),
            exit_code = result.exit_code,
            signal = result.signal,
            rejection = result.rejection.as_ref().map(|r| r.kind.as_str()),
            wall_ms = result.usage.wall_ms,
            cpu_ms = result.usage.cpu_ms,
            stdout_bytes = result.stdout.len() as u64 + extra.stdout_streamed,
            stderr_bytes = result.stderr.len() as u64 + extra.stderr_streamed,
            session_ended = extra.session_ended,
            client_addr = caller.client_addr.as_deref().unwrap_or(""),
            message = result.message.as_deref().unwrap_or(""),
            "cell"
        );
        SessionAnswer::Cell(result, extra)
    }

    /// A cell's result (a rejected one included), or why it is not one at all.
    async fn cell_result(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        session: &Arc<Session>,
        cell: Cell,
        streaming: Option<Streaming>,
        received: Instant,
    ) -> Result<(RunResult, RunExtra), Refusal> {
        if let Err(message) = validate::code(&cell.code) {
            return Err((ErrorKind::InvalidRequest, message));
        }
        if let Err((kind, message)) =
            run::check_input(&cell.code, &cell.stdin, &cell.files, &session.limits)
        {
            return Ok((run::rejected(kind, message), RunExtra::default()));
        }
        if !session.try_claim() {
            return Err((
                ErrorKind::SessionBusy,
                format!("session {} is running a cell; one at a time", session.id),
            ));
        }
        let mut claim = Claim {
            session,
            cell: false,
        };
        let permit = match self.admission.admit(tenant, &session.profile).await {
            Ok(permit) => permit,
            Err(refusal) => {
                let mut result = run::admission_refused(&refusal);
                result.timings.queue_ms = ms(received.elapsed());
                return Ok((result, RunExtra::default()));
            }
        };
        let queued = permit.waited();
        let sink: Option<OutputSink> = match streaming {
            Some(streaming) => {
                let _ = streaming.admitted.send(());
                cell.stream.then_some(streaming.sink)
            }
            None => None,
        };
        // The cell runs in a task of its own: a caller that goes away (this future dropped)
        // interrupts the cell through `Interrupter`, and the session stays consistent.
        let task = {
            let session = Arc::clone(session);
            tokio::spawn(async move {
                let _permit = permit;
                let mut guard = session.child.lock().await;
                let child = guard.as_mut()?;
                Some(child.cell(&cell, &session.limits, sink).await)
            })
        };
        let mut interrupter = Interrupter {
            session,
            armed: true,
        };
        let end = task.await.ok().flatten();
        interrupter.armed = false;
        claim.cell = true;
        let Some(end) = end else {
            return Err((ErrorKind::SessionEnded, session.why_ended()));
        };
        let (mut result, extra) = (end.result, end.extra);
        if extra.session_ended {
            let why = result
                .message
                .clone()
                .unwrap_or_else(|| "its child died".into());
            self.end_session(session, SessionEnd::Died, why);
        }
        // Ended meanwhile by someone else (closed, lifetime, shutdown): say so on the cell.
        if let Some((end, why)) = session.ended() {
            if end != SessionEnd::Died {
                result.message = Some(format!("the session ended: {why}"));
            }
        }
        result.timings.queue_ms = ms(queued);
        Ok((result, extra))
    }

    /// Asks the session's child about its files, between cells (`session_busy` while a cell
    /// runs). The request runs in a task of its own, so a caller that goes away cannot leave
    /// an answer unread on the channel.
    async fn between_cells(&self, session: &Arc<Session>, ask: FileAsk) -> SessionAnswer {
        if !session.try_claim() {
            return SessionAnswer::Refused(
                ErrorKind::SessionBusy,
                format!(
                    "session {} is running a cell; files can be read between cells",
                    session.id
                ),
            );
        }
        let _claim = Claim {
            session,
            cell: false,
        };
        let task = {
            let session = Arc::clone(session);
            tokio::spawn(async move {
                let mut guard = session.child.lock().await;
                let child = guard.as_mut()?;
                let answer = match ask {
                    FileAsk::List => child
                        .list_files()
                        .await
                        .map(|(files, truncated)| SessionReply::Files { files, truncated })
                        .map_err(|why| (ErrorKind::Internal, why)),
                    FileAsk::Read { path, max_bytes } => {
                        match child.read_file(&path, max_bytes).await {
                            Ok(Some(file)) => Ok(SessionReply::File(file)),
                            Ok(None) => Err((
                                ErrorKind::FileNotFound,
                                format!("no regular file {path:?} in the session's directory"),
                            )),
                            Err(why) => Err((ErrorKind::InvalidRequest, why)),
                        }
                    }
                };
                Some((answer, child.has_ended()))
            })
        };
        match task.await.ok().flatten() {
            None => SessionAnswer::Refused(ErrorKind::SessionEnded, session.why_ended()),
            Some((Ok(reply), _)) => SessionAnswer::Reply(reply),
            Some((Err((_, why)), true)) => {
                self.end_session(session, SessionEnd::Failed, why.clone());
                SessionAnswer::Refused(ErrorKind::SessionEnded, why)
            }
            Some((Err((kind, why)), false)) => SessionAnswer::Refused(kind, why),
        }
    }

    /// Ends `session`: marks it, kills its child, removes it (its owner keeps a tombstone),
    /// gives its place back, and releases its identity once the child is gone.
    pub(super) fn end_session(&self, session: &Arc<Session>, end: SessionEnd, why: String) {
        if !session.mark_ended(end, why.clone()) {
            return;
        }
        session.signaller.kill();
        self.sessions.remove(session);
        session.wake.notify_one();
        self.metrics.session_ended(&session.profile, end.label());
        info!(
            target: "sandfork::audit",
            tenant = session.tenant.as_str(),
            session_id = %session.id,
            profile = %session.profile,
            reason = end.label(),
            cells = session.info().cells,
            message = why.as_str(),
            "session_close"
        );
        let session = Arc::clone(session);
        tokio::spawn(async move {
            // A running cell holds the lock until it sees the child die.
            let child = session.child.lock().await.take();
            drop(child);
        });
    }
}

/// Releases a session's claim when the cell (or file request) is over, however it ends.
struct Claim<'a> {
    session: &'a Session,
    cell: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.session.release(self.cell);
    }
}

/// Interrupts the running cell if its caller goes away before the cell is over.
struct Interrupter<'a> {
    session: &'a Session,
    armed: bool,
}

impl Drop for Interrupter<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.session.signaller.interrupt();
        }
    }
}

/// Ends `session` when it has been idle too long, its lifetime is over, or its child died.
async fn reap(supervisor: Arc<Supervisor>, session: Arc<Session>) {
    loop {
        if session.ended().is_some() {
            return;
        }
        let (deadline, end) = session.next_deadline();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                if end == SessionEnd::Lifetime {
                    let why = format!(
                        "its maximum lifetime of {} s ran out",
                        supervisor.sessions_config.max_lifetime_s
                    );
                    supervisor.end_session(&session, end, why);
                    return;
                }
                if !session.is_busy() && session.next_deadline().0 <= Instant::now() {
                    let why = format!("idle for {} s", session.idle_timeout.as_secs());
                    supervisor.end_session(&session, end, why);
                    return;
                }
            }
            _ = session.signaller.exited() => {
                // A running cell reports the death itself, with its cause; give it the time.
                if session.is_busy() {
                    let _ = tokio::time::timeout(Duration::from_secs(10), session.wake.notified()).await;
                }
                if session.ended().is_none() {
                    warn!(session_id = %session.id, "a session's child died between cells");
                    supervisor.end_session(&session, SessionEnd::Died, "its process died".into());
                }
                return;
            }
            _ = session.wake.notified() => {}
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
