//! The last phase of a step: what reaches the status at a bounded rate. Heartbeats, readiness
//! and progress are folded in at most once per fold period; the completion estimate only rides
//! on writes that happen anyway; DeadlineAtRisk follows the estimate that is written.

use k8s_openapi::jiff::Timestamp;

use super::{summary::with_heartbeats_of, view::Observed};
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

/// Folds heartbeats (and readiness) in at a bounded rate: when they are all that changed and
/// the last fold is recent, keeps their previous values and looks again when the period is over.
fn fold_heartbeats(observed: &Observed, prev: &BackgroundJobStatus, d: &mut Decision, now: Timestamp) {
    let (last_fold, fold_seconds) = (observed.last_fold, observed.fold_seconds);
    let stale = with_heartbeats_of(&d.status, prev);
    if stale != d.status
        && stale == *prev
        && let Some(next_fold) = last_fold.map(|t| plus(t, fold_seconds)).filter(|t| now < *t)
    {
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
    let (last_fold, fold_seconds) = (observed.last_fold, observed.fold_seconds);
    if observed.job.spec.heartbeat.is_some() && !d.status.active.is_empty() {
        let next_fold = match last_fold.map(|t| plus(t, fold_seconds)) {
            Some(next) if !d.folded && next > now => next,
            _ => plus(now, fold_seconds),
        };
        d.requeue_after = min_opt(d.requeue_after, until(now, next_fold));
    }
}
