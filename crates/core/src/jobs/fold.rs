//! The last phase of a step: what reaches the status at a bounded rate. Heartbeats and progress
//! are folded in at most once per fold period, workers turning ready alone once per
//! [`READINESS_FOLDS`] of them; the completion estimate only rides on writes that happen anyway;
//! DeadlineAtRisk follows the estimate that is written.

use k8s_openapi::jiff::Timestamp;

use super::{
    summary::{with_heartbeats_of, with_readiness_of},
    view::Observed,
};
use crate::{
    Decision, EventNote,
    conditions::hold_condition,
    time::{min_opt, plus, until},
};
use nightshift_api::{
    BackgroundJobStatus, Phase,
    reasons::{ConditionType, EventReason, Reason},
};

/// Folds `d.status` against `prev`, and notes whether it is to be written.
pub(super) fn fold(observed: &Observed, prev: &BackgroundJobStatus, d: &mut Decision, now: Timestamp) {
    fold_heartbeats(observed, prev, d, now);
    // The estimate rides on writes that happen anyway: alone, it changes nothing.
    let mut without_estimate = d.status.clone();
    without_estimate.estimated_completion_time = prev.estimated_completion_time.clone();
    if without_estimate == *prev {
        d.status = without_estimate;
    }
    deadline_at_risk(observed, d, now);
    // Any write carries the current heartbeats along: it counts as a fold.
    d.folded = d.status != *prev;
    look_again_for_heartbeats(observed, d, now);
}

/// How late a reconcile may come to a fold's instant and still fold then (it was woken for it).
const FOLD_SLACK_SECONDS: i64 = 2;

/// Workers turning ready, when nothing else changed, wait this many fold periods (a minute by
/// default). Readiness tells a person that the workers came up; the writes a job makes anyway
/// (its workers started, a shard done, the job finished) and its heartbeats' folds carry it
/// along sooner. Alone, it was 1,490 of the 3,488 status writes of 1,000 short jobs under load
/// (3.49 per 3-shard job, 2.04 since; `make bench` with no client limit).
const READINESS_FOLDS: i64 = 4;

/// When what waits for a fold is written: None, now (no fold yet, or `now` is a fold's instant);
/// else the next instant of the job's fold grid, every `fold_seconds` from its last fold. A
/// change seen long after the last fold waits for the grid too, so that changes close together
/// share a write (a job's workers start and finish close together): not the first of them
/// written at once and the rest a period later.
pub(super) fn next_fold(observed: &Observed, now: Timestamp) -> Option<Timestamp> {
    next_on_grid(observed.last_fold?, observed.fold_seconds.max(1), now)
}

/// [`next_fold`] on a grid of `period` seconds from the last fold.
fn next_on_grid(last: Timestamp, period: i64, now: Timestamp) -> Option<Timestamp> {
    let since = now.as_second() - last.as_second();
    if since < period {
        return Some(plus(last, period));
    }
    let on_grid = since - since % period;
    (since - on_grid >= FOLD_SLACK_SECONDS).then(|| plus(last, on_grid + period))
}

/// Folds heartbeats (and readiness) in at a bounded rate: when they are all that changed and
/// no fold is due ([`next_fold`]; readiness alone, [`READINESS_FOLDS`] periods), keeps their
/// previous values and looks again at the next fold.
fn fold_heartbeats(observed: &Observed, prev: &BackgroundJobStatus, d: &mut Decision, now: Timestamp) {
    let stale = with_heartbeats_of(&d.status, prev);
    if stale == d.status || stale != *prev {
        return;
    }
    let period = observed.fold_seconds.max(1);
    let period = if with_readiness_of(&d.status, prev) == *prev { period * READINESS_FOLDS } else { period };
    if let Some(next_fold) = observed.last_fold.and_then(|last| next_on_grid(last, period, now)) {
        d.status = stale;
        d.requeue_after = min_opt(d.requeue_after, until(now, next_fold));
    }
}

/// DeadlineAtRisk is True while the job runs and its estimated completion is past its deadline
/// (one Warning event when it turns True); False once that is no longer so. It follows the
/// estimate, which moves only with writes that happen anyway.
fn deadline_at_risk(observed: &Observed, d: &mut Decision, now: Timestamp) {
    let (spec, generation) = (&observed.job.spec, observed.job.metadata.generation);
    let status = &mut d.status;
    let deadline = status.start_time.as_ref().map(|s| plus(s.0, spec.timeouts.job_seconds));
    let late = match (&status.estimated_completion_time, deadline) {
        (Some(eta), Some(deadline)) if status.phase == Some(Phase::Running) && eta.0 > deadline => {
            Some((eta.0, deadline))
        }
        _ => None,
    };
    let cause = late.map(|(eta, deadline)| {
        let message = format!(
            "estimated to finish at {eta}, after its deadline {deadline} (spec.timeouts.jobSeconds is {})",
            spec.timeouts.job_seconds
        );
        (Reason::EstimatePastDeadline, message)
    });
    let note = cause.as_ref().map(|(_, message)| message.clone());
    let cleared = (Reason::EstimateWithinDeadline, "the estimated completion is within the deadline");
    if hold_condition(&mut status.conditions, ConditionType::DeadlineAtRisk, cause, cleared, now, generation) {
        d.events.push(EventNote::warning(EventReason::DeadlineAtRisk, note.unwrap_or_default()));
    }
}

/// Lease renewals do not wake the controller (every renewal of every worker would, and a burst
/// of them would keep pushing the job's reconcile back): a job whose workers heartbeat is looked
/// at again when the fold period is over. Missed heartbeats have their own timer.
fn look_again_for_heartbeats(observed: &Observed, d: &mut Decision, now: Timestamp) {
    let fold_seconds = observed.fold_seconds;
    if observed.job.spec.heartbeat.is_some() && !d.status.active.is_empty() {
        let next_fold = match next_fold(observed, now) {
            Some(next) if !d.folded => next,
            _ => plus(now, fold_seconds),
        };
        d.requeue_after = min_opt(d.requeue_after, until(now, next_fold));
    }
}
