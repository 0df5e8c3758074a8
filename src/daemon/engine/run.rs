//! One run, from a validated request to exactly one `RunResult`.
//!
//! Path: the tenant's and the profile's limits (a request may only lower them) → admission
//! (rate, tenant concurrency, the fair per-profile queue, a run slot) → take a warm child, or fork one now (cold: a free slot, a live zygote, fork, lockdown) →
//! `ReadyChild::run` (go, capture, deadline, classify). A warm child that turns out to be dead
//! when its code is sent is replaced by a cold one; the request does not fail for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sandfork_protocol::{Mode, RejectKind, RunExtra, RunResult, RunSpec, Status};
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::daemon::child::{ChildError, OutputSink, ReadyChild};
use crate::daemon::engine::identities::Identities;
use crate::daemon::engine::pool::Pool;
use crate::daemon::engine::warm::{WarmPool, REFILL_AFTER};
use crate::daemon::policy::admission::{Admission, Refusal};
use crate::tenants::{PolicyError, Tenant};
use crate::validate;

/// How long a run that found no warm child waits for the one being prepared before it forks its
/// own (a preparation takes a few ms; far longer means the machine is saturated).
const WARM_PATIENCE: Duration = Duration::from_millis(50);

/// How long a run may wait for a zygote to be available.
const ZYGOTE_WAIT: Duration = Duration::from_secs(10);

/// A result that never ran.
pub fn rejected(kind: RejectKind, message: impl Into<String>) -> RunResult {
    RunResult::rejected(kind, message)
}

fn internal_error(message: impl Into<String>) -> RunResult {
    let mut result = RunResult::new(Status::InternalError);
    result.message = Some(message.into());
    result
}

/// What a run needs from the supervisor.
pub struct RunContext<'a> {
    /// Who asked: their policy caps the limits and their share of the queue.
    pub tenant: &'a Tenant,
    pub pool: &'a std::sync::Arc<Pool>,
    pub warm: &'a WarmPool,
    pub slots: &'a Identities,
    pub admission: &'a Admission,
    pub child_ids: &'a AtomicU64,
}

/// A streamed run's hooks: where its output goes, and who is told once it is admitted (from
/// then on it cannot be rejected).
#[derive(Debug)]
pub struct Streaming {
    pub sink: OutputSink,
    pub admitted: oneshot::Sender<()>,
}

/// Runs `spec`. `received` is when the request arrived (for queue timing). With `streaming`,
/// its output goes to the sink as it is produced.
pub async fn execute(
    ctx: RunContext<'_>,
    spec: RunSpec,
    received: Instant,
    streaming: Option<Streaming>,
) -> (RunResult, RunExtra) {
    let rejected_with = |result| (result, RunExtra::default());
    let profile = &ctx.pool.profile.name;
    let limits = match ctx
        .tenant
        .effective_limits(profile, &ctx.pool.profile.limits, &spec.limits)
    {
        Ok(limits) => limits,
        Err(err) => return rejected_with(rejected(reject_kind(&err), err.to_string())),
    };
    if let Err((kind, message)) = check_input(&spec.code, &spec.stdin, &spec.files, &limits) {
        return rejected_with(rejected(kind, message));
    }
    let permit = match ctx.admission.admit(ctx.tenant, profile).await {
        Ok(permit) => permit,
        Err(refusal) => {
            let mut result = admission_refused(&refusal);
            result.timings.queue_ms = ms(received.elapsed());
            return rejected_with(result);
        }
    };
    let queued = permit.waited();
    let sink = streaming.map(|s| {
        let _ = s.admitted.send(());
        s.sink
    });
    let ran = if spec.mode == Mode::Floor {
        run_floor(&ctx, &limits)
            .await
            .map(|result| (result, RunExtra::default()))
    } else {
        run_with_child(&ctx, &spec, &limits, sink).await
    };
    let (mut result, extra) = match ran {
        Ok(ran) => ran,
        Err(message) => (internal_error(message), RunExtra::default()),
    };
    result.timings.queue_ms = ms(queued);
    result.timings.total_ms = ms(received.elapsed());
    (result, extra)
}

/// The rejected result of a request admission refused, with its retry hint.
pub fn admission_refused(refusal: &Refusal) -> RunResult {
    let kind = match refusal {
        Refusal::RateLimited { .. } => RejectKind::RateLimited,
        Refusal::Busy { .. } => RejectKind::Busy,
        Refusal::QueueTimeout { .. } => RejectKind::QueueTimeout,
    };
    let mut result = rejected(kind, refusal.to_string());
    if let Some(rejection) = result.rejection.as_mut() {
        rejection.retry_after_ms = refusal.retry_after_ms();
    }
    result
}

/// The rejection a policy error makes.
pub fn reject_kind(err: &PolicyError) -> RejectKind {
    match err {
        PolicyError::ProfileNotAllowed { .. } => RejectKind::ProfileNotAllowed,
        PolicyError::NotPositive { .. } | PolicyError::BelowFloor { .. } => {
            RejectKind::InvalidLimits
        }
        _ => RejectKind::LimitAboveCeiling,
    }
}

/// Code, stdin and input files against their caps (a run's or a cell's).
pub fn check_input(
    code: &[u8],
    stdin: &[u8],
    files: &[sandfork_protocol::FileData],
    limits: &Limits,
) -> Result<(), (RejectKind, String)> {
    if code.len() as u64 > limits.code_bytes {
        return Err((
            RejectKind::TooLarge,
            format!(
                "code is {} bytes; the limit is {}",
                code.len(),
                limits.code_bytes
            ),
        ));
    }
    if stdin.len() as u64 > limits.stdin_bytes {
        return Err((
            RejectKind::TooLarge,
            format!(
                "stdin is {} bytes; the limit is {}",
                stdin.len(),
                limits.stdin_bytes
            ),
        ));
    }
    validate::files(files, limits)
}

async fn run_with_child(
    ctx: &RunContext<'_>,
    spec: &RunSpec,
    limits: &Limits,
    sink: Option<OutputSink>,
) -> Result<(RunResult, RunExtra), String> {
    let started = Instant::now();
    if let Some(child) = ctx.warm.take_or_wait(WARM_PATIENCE).await {
        let spawn_time = started.elapsed();
        let run = child.run(spec, limits, sink.clone());
        tokio::pin!(run);
        // The replacement is asked for once: when the run ends, or REFILL_AFTER into it.
        let outcome = tokio::select! {
            biased;
            outcome = &mut run => {
                ctx.warm.refill();
                outcome
            }
            _ = tokio::time::sleep(REFILL_AFTER) => {
                ctx.warm.refill();
                run.await
            }
        };
        match outcome {
            Ok((mut result, extra)) => {
                result.timings.spawn_ms = ms(spawn_time);
                result.warm = true;
                return Ok((result, extra));
            }
            Err(ChildError::Lost(reason)) => {
                tracing::debug!(cause = %reason, "warm child lost; forking a cold one");
            }
            Err(ChildError::Sandbox(reason)) => return Err(reason),
        }
    }
    let cold_started = Instant::now();
    let child = fork_cold(ctx).await?;
    let spawn_time = cold_started.elapsed();
    match child.run(spec, limits, sink).await {
        Ok((mut result, extra)) => {
            result.timings.spawn_ms = ms(spawn_time);
            Ok((result, extra))
        }
        Err(err) => Err(err.to_string()),
    }
}

/// A floor run: a slot, a zygote, a child that exits at once (`child::floor`).
async fn run_floor(ctx: &RunContext<'_>, limits: &Limits) -> Result<RunResult, String> {
    let slot = ctx.slots.acquire().await;
    let zygote = ctx
        .pool
        .pick(ZYGOTE_WAIT)
        .await
        .ok_or_else(|| format!("no zygote of profile {} is ready", ctx.pool.profile.name))?;
    let id = ctx.child_ids.fetch_add(1, Ordering::Relaxed);
    let own_pid_namespace = ctx.pool.profile.own_pid_namespace();
    crate::daemon::child::floor(zygote, slot, id, limits, own_pid_namespace)
        .await
        .map_err(|e| e.to_string())
}

async fn fork_cold(ctx: &RunContext<'_>) -> Result<ReadyChild, String> {
    let slot = ctx.slots.acquire().await;
    fork_into(ctx.pool, slot, ctx.child_ids, &ctx.pool.profile.limits).await
}

/// Forks a child of one of `pool`'s zygotes into `slot`, with `ceiling` as its limits.
pub async fn fork_into(
    pool: &std::sync::Arc<Pool>,
    slot: crate::daemon::engine::identities::Identity,
    child_ids: &AtomicU64,
    ceiling: &Limits,
) -> Result<ReadyChild, String> {
    let zygote = pool
        .pick(ZYGOTE_WAIT)
        .await
        .ok_or_else(|| format!("no zygote of profile {} is ready", pool.profile.name))?;
    let id = child_ids.fetch_add(1, Ordering::Relaxed);
    let own_pid_namespace = pool.profile.own_pid_namespace();
    ReadyChild::fork(zygote, slot, id, ceiling, own_pid_namespace)
        .await
        .map_err(|e| e.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
