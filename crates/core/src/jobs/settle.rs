//! `settle`: a running step's verdict on the whole job — failed, succeeded, suspended, waiting
//! (for the jobs it comes after, or for workers in the queue) or running — and, when it runs,
//! the attempts it starts.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::{
    book::Book,
    chain::{self, Chain, Verdict},
    outcome::MESSAGE_RANGES,
    summary::fail,
    view::{FORBIDDEN_PAUSE_SECONDS, Observed, Refusal},
};
use crate::{
    EventNote, Related,
    conditions::{hold_condition, set_condition},
    time::{min_opt, plus, time, until},
};
use nightshift_api::{
    BackgroundJobStatus, Phase,
    reasons::{ConditionType, EventReason, Reason},
};

/// Settles the job's phase — failed, succeeded, suspended, queued or running — and, when it
/// runs, starts the attempts it has room for. Returns how many workers the job wants.
pub(super) fn settle(
    observed: &Observed,
    prev: &BackgroundJobStatus,
    status: &mut BackgroundJobStatus,
    book: &mut Book,
) -> i32 {
    let (job, now) = (observed.job, book.now);
    let spec = &job.spec;
    let generation = job.metadata.generation;
    let remaining = book.remaining();
    let wants = remaining.min(i64::from(spec.workers.max)) as i32;
    let chain = chain_verdict(observed, status, now);
    let waiting = observed.grant.and_then(|g| g.waiting.clone()).filter(|_| prev.phase != Some(Phase::Running));
    if let Some(Verdict::Fail { reason, message }) = &chain {
        book.job_failure.get_or_insert((*reason, message.clone()));
    }
    let chain_waits = matches!(chain, Some(Verdict::Wait { .. }));
    find_job_failure(observed, prev, book, waiting.is_none() && !chain_waits);
    if remaining == 0 && book.job_failure.is_none() {
        book.job_failure = book.failed_shards_verdict();
    }
    let mut desired = 0;
    if let Some((reason, message)) = book.job_failure.take() {
        book.stop_all();
        book.d.events.push(EventNote::warning(EventReason::Failed, message.clone()));
        *status = fail(job, std::mem::take(status), reason, message, now);
    } else if remaining == 0 {
        succeed(observed, status, book);
    } else if spec.suspend {
        suspend(observed, prev, status, book);
    } else if let Some(Verdict::Wait { message, first, recheck }) = chain {
        wait_for_chain(observed, prev, status, book, (message, first, recheck));
    } else if let Some((position, reason)) = waiting {
        // Not started, and the budget has no room yet: wait in the queue.
        desired = wants;
        wait_for_workers(observed, prev, status, book, (position, reason));
    } else {
        desired = wants;
        run(observed, prev, status, book, desired);
    }
    // Out of a suspend, whether straight back to work or into the queue.
    if prev.phase == Some(Phase::Suspended) && matches!(status.phase, Some(Phase::Queued | Phase::Running)) {
        let message = "spec.suspend is false".to_string();
        set_condition(
            &mut status.conditions,
            ConditionType::Suspended,
            false,
            Reason::Resumed,
            message,
            now,
            generation,
        );
    }
    workers_blocked(observed, status, book);
    desired
}

/// Every shard is done and the job did not fail: it succeeded.
fn succeed(observed: &Observed, status: &mut BackgroundJobStatus, book: &mut Book) {
    let (job, now) = (observed.job, book.now);
    let (spec, generation) = (&job.spec, job.metadata.generation);
    let message = if book.failed.is_empty() {
        format!("all {} shards succeeded", book.total)
    } else {
        let (failed, total) = (book.failed.len(), book.total);
        format!(
            "{} of {total} shards succeeded; {failed} failed ({}), allowed by spec.retry.allowFailedShards",
            i64::from(total) - failed,
            book.failed.abbreviated(MESSAGE_RANGES)
        )
    };
    status.phase = Some(Phase::Succeeded);
    status.completion_time.get_or_insert(time(now));
    let conditions = &mut status.conditions;
    set_condition(conditions, ConditionType::Complete, true, Reason::Succeeded, message.clone(), now, generation);
    book.d.events.push(EventNote::normal(EventReason::Succeeded, message));
    if let Some(ttl) = spec.ttl_seconds_after_finished {
        book.d.requeue_after = min_opt(book.d.requeue_after, Duration::from_secs(ttl.max(0) as u64));
    }
}

/// spec.suspend is true: the job is Suspended (its workers are stopped by the book).
fn suspend(observed: &Observed, prev: &BackgroundJobStatus, status: &mut BackgroundJobStatus, book: &mut Book) {
    let (now, generation) = (book.now, observed.job.metadata.generation);
    if prev.phase != Some(Phase::Suspended) {
        let note = "spec.suspend is true: workers stopped, progress kept";
        book.d.events.push(EventNote::normal(EventReason::Suspended, note));
    }
    status.phase = Some(Phase::Suspended);
    let message = "spec.suspend is true".to_string();
    set_condition(&mut status.conditions, ConditionType::Suspended, true, Reason::Suspended, message, now, generation);
}

/// The jobs of spec.after have not all succeeded yet: Queued, waiting for them.
/// `wait`: the chain's verdict (its message, the first job waited for, when to look again).
fn wait_for_chain(
    observed: &Observed,
    prev: &BackgroundJobStatus,
    status: &mut BackgroundJobStatus,
    book: &mut Book,
    wait: (String, String, Option<Timestamp>),
) {
    let (now, generation) = (book.now, observed.job.metadata.generation);
    let (message, first, recheck) = wait;
    if newly_waiting(Some(prev), Reason::WaitingForDependencies) {
        book.d.events.push(EventNote::normal(EventReason::Queued, message.clone()).about(Related::Job(first)));
    }
    if let Some(t) = recheck {
        book.d.requeue_after = min_opt(book.d.requeue_after, until(now, t));
    }
    status.phase = Some(Phase::Queued);
    let conditions = &mut status.conditions;
    set_condition(conditions, ConditionType::Admitted, false, Reason::WaitingForDependencies, message, now, generation);
}

/// Not started, and the worker budget has no room yet: Queued, at `place` (position, why).
fn wait_for_workers(
    observed: &Observed,
    prev: &BackgroundJobStatus,
    status: &mut BackgroundJobStatus,
    book: &mut Book,
    place: (usize, String),
) {
    let (now, generation) = (book.now, observed.job.metadata.generation);
    let (position, reason) = place;
    if newly_waiting(Some(prev), Reason::WaitingForWorkers) {
        book.d.events.push(EventNote::normal(EventReason::Queued, format!("waiting for workers: {reason}")));
    }
    status.phase = Some(Phase::Queued);
    let message = format!("{reason}; number {position} in the queue");
    let conditions = &mut status.conditions;
    set_condition(conditions, ConditionType::Admitted, false, Reason::WaitingForWorkers, message, now, generation);
}

/// A job starts waiting for `reason` (it was not Queued for it already): the moment for a Queued event.
pub(super) fn newly_waiting(prev: Option<&BackgroundJobStatus>, reason: Reason) -> bool {
    prev.and_then(|s| s.phase) != Some(Phase::Queued) || prev.and_then(|s| s.waiting_for()) != Some(reason.as_str())
}

/// For a job that has not started and names others in spec.after: what its chain allows.
fn chain_verdict(observed: &Observed, status: &BackgroundJobStatus, now: Timestamp) -> Option<Verdict> {
    let spec = &observed.job.spec;
    if spec.after.is_empty() || status.start_time.is_some() {
        return None;
    }
    let queued = status.queued_time.as_ref().map_or(now, |t| t.0);
    Some(chain::judge(&spec.after, observed.chain.unwrap_or(&Chain::default()), queued, now))
}

/// Reasons to fail the whole job besides a shard out of retries: a cancel, a pod template the API
/// server refused as invalid, the job's deadline, a job asking for an agent the operator cannot give.
/// `runs`: the job would run workers now (not waiting in the queue).
fn find_job_failure(observed: &Observed, prev: &BackgroundJobStatus, book: &mut Book, runs: bool) {
    let (spec, now) = (&observed.job.spec, book.now);
    if spec.cancel {
        let message = "spec.cancel is true: the job was cancelled and its workers stopped";
        book.job_failure.get_or_insert((Reason::Cancelled, message.into()));
    }
    if let Some(Refusal::Invalid { message }) = observed.refusal {
        book.job_failure.get_or_insert((Reason::InvalidPodTemplate, message.clone()));
    }
    // The job's own deadline, counted from its (latest) start.
    if book.job_failure.is_none()
        && !spec.suspend
        && let Some(start) = &prev.start_time
    {
        let deadline = plus(start.0, spec.timeouts.job_seconds);
        if now >= deadline {
            book.job_failure = Some((
                Reason::DeadlineExceeded,
                format!("the job ran longer than spec.timeouts.jobSeconds ({}s)", spec.timeouts.job_seconds),
            ));
        } else {
            book.d.requeue_after = min_opt(book.d.requeue_after, until(now, deadline));
        }
    }
    let needs_agent = spec.heartbeat.as_ref().is_some_and(|h| h.inject_agent);
    if book.job_failure.is_none()
        && book.remaining() > 0
        && !spec.suspend
        && runs
        && needs_agent
        && !observed.agent_image
    {
        let message =
            "spec.heartbeat.injectAgent is true, but this operator has no agent image (nightshift run --agent-image)";
        book.job_failure = Some((Reason::AgentImageUnset, message.into()));
    }
}

/// Admits the job (or resumes it) and starts the attempts there is room for.
fn run(
    observed: &Observed,
    prev: &BackgroundJobStatus,
    status: &mut BackgroundJobStatus,
    book: &mut Book,
    desired: i32,
) {
    let (job, now) = (observed.job, book.now);
    let spec = &job.spec;
    let resumed = prev.phase == Some(Phase::Suspended);
    if status.start_time.is_none() || resumed {
        status.start_time = Some(time(now));
        let event = if resumed {
            EventNote::normal(EventReason::Resumed, "resumed")
        } else {
            let note = format!("admitted: {} shards on up to {} workers", book.total, spec.workers.max);
            EventNote::normal(EventReason::Admitted, note)
        };
        book.d.events.push(event);
        if !resumed {
            let (conditions, message) = (&mut status.conditions, "workers may start".to_string());
            let generation = job.metadata.generation;
            set_condition(conditions, ConditionType::Admitted, true, Reason::Admitted, message, now, generation);
        }
        if spec.timeouts.job_seconds > 0 {
            book.d.requeue_after = min_opt(book.d.requeue_after, Duration::from_secs(spec.timeouts.job_seconds as u64));
        }
    }
    status.phase = Some(Phase::Running);
    let starting = book.d.create.len() as i64;
    let mut free = i64::from(desired) - book.live.len() as i64 - starting;
    if let Some(g) = observed.grant {
        free = free.min(i64::from(g.extra) - starting);
    }
    if let Some(until_t) = forbidden_pause(observed).filter(|t| now < *t) {
        free = 0;
        book.d.requeue_after = min_opt(book.d.requeue_after, until(now, until_t));
    }
    book.start_attempts(free);
}

/// Until when new workers wait after the API server forbade one.
fn forbidden_pause(observed: &Observed) -> Option<Timestamp> {
    match observed.refusal {
        Some(Refusal::Forbidden { at, .. } | Refusal::NotOwned { at, .. }) => Some(plus(*at, FORBIDDEN_PAUSE_SECONDS)),
        _ => None,
    }
}

/// WorkersBlocked is True while the API server's last answer to a worker pod of this job was
/// 403, or an object its workers need belongs to something else, and the job still waits to
/// start workers; False once that is over. An object not owned is also told in an event.
fn workers_blocked(observed: &Observed, status: &mut BackgroundJobStatus, book: &mut Book) {
    let (now, generation) = (book.now, observed.job.metadata.generation);
    let pausing = forbidden_pause(observed).is_some_and(|t| book.now < t);
    let waiting = pausing || !book.d.create.is_empty();
    let cause = match observed.refusal {
        Some(Refusal::Forbidden { message, .. }) if waiting => Some((Reason::PodCreationForbidden, message.clone())),
        Some(Refusal::NotOwned { message, .. }) if waiting => Some((Reason::ObjectNotOwned, message.clone())),
        _ => None,
    };
    let not_owned = cause.as_ref().filter(|(reason, _)| *reason == Reason::ObjectNotOwned).map(|c| c.1.clone());
    let cleared = (Reason::PodCreationAllowed, "the API server accepts the job's worker pods");
    let turned = hold_condition(&mut status.conditions, ConditionType::WorkersBlocked, cause, cleared, now, generation);
    if let Some(message) = not_owned.filter(|_| turned) {
        book.d.events.push(EventNote::warning(EventReason::ObjectNotOwned, message));
    }
}
