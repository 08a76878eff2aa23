//! `decide`: one level-triggered step for one job, as a pipeline of phases over the shard book
//! (`book.rs`): open → adopt → judge attempts → stop superseded → settle the job's outcome and
//! start attempts → summarize the status (`summary.rs`) → fold heartbeats and the estimate (`fold.rs`).
//!
//! Outcomes are recorded per (shard, attempt), so seeing a finished pod twice changes nothing:
//! nothing is counted twice, and a pod keeps its tracking finalizer until the status that
//! records it has been written.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::{
    book::Book,
    fold::fold,
    settle::{newly_waiting, settle},
    summary::{fail, summarize},
    template,
    view::{LeaseView, Observed, PodPhase, PodView, Refusal},
};
use crate::{
    Decision, EventNote, Related,
    conditions::set_condition,
    time::{min_opt, plus, time, until, whole},
};
use nightshift_api::{
    BackgroundJob, BackgroundJobStatus, Phase, Ranges,
    reasons::{ConditionType, EventReason, Reason},
};

/// One step for one job, decided at the instant `at` (the clock as read). Everything is judged
/// at its whole second, `now` (the precision the API stores), but for a worker's heartbeat: the
/// operator saw its renewals to the nanosecond, and a silent worker is failed the instant its
/// timeout has passed since, neither up to a second early nor late.
///
/// A shard that succeeded while its job goes on running, and that is all that changed, waits
/// for the next fold of the job's status (at most `fold_seconds`) instead of a write of its own:
/// the shards of a job tend to finish close together, and the write that records the last of
/// them (the job is done) goes out at once. Its pod keeps its finalizer until then, so nothing
/// is lost; a shard that frees a worker for a waiting one is never held back.
pub fn decide(observed: &Observed, at: Timestamp) -> Decision {
    let now = whole(at);
    let d = decide_now(observed, at);
    let prev = observed.job.status.as_ref();
    let next_fold = super::fold::next_fold(observed, now);
    let (Some(prev), Some(next_fold)) = (prev, next_fold) else { return d };
    if !d.quiet() || prev.phase != Some(Phase::Running) || d.status.phase != Some(Phase::Running) {
        return d;
    }
    // The pods of shards that just succeeded, seen as still running.
    let newly_done =
        |p: &PodView| p.phase == PodPhase::Succeeded && !p.deleting() && prev.active.iter().any(|a| a.pod == p.name);
    if !observed.pods.iter().any(newly_done) {
        return d;
    }
    let held: Vec<PodView> = observed
        .pods
        .iter()
        .map(|p| match newly_done(p) {
            true => PodView { phase: PodPhase::Running, running_since: p.running_since.or(Some(now)), ..p.clone() },
            false => p.clone(),
        })
        .collect();
    let mut later = decide_now(&Observed { pods: &held, ..*observed }, at);
    if !later.quiet() || later.status != *prev {
        return d;
    }
    later.requeue_after = min_opt(later.requeue_after, until(now, next_fold));
    later
}

fn decide_now(observed: &Observed, at: Timestamp) -> Decision {
    let (job, now) = (observed.job, whole(at));
    let prev = job.status.clone().unwrap_or_default();
    let mut status = prev.clone();
    status.observed_generation = job.metadata.generation;
    status.queued_time.get_or_insert(time(now));
    if prev.phase.is_some_and(|p| p.is_finished()) {
        return finished(observed, status, now);
    }
    status.resolved_template = template::resolved(job);
    if template::unresolved(job) && !job.spec.cancel {
        return resolve(observed, status, now);
    }
    if let Some(message) = shards_beyond(job).filter(|_| prev.start_time.is_none()) {
        let mut d = Decision::default();
        d.events.push(EventNote::warning(EventReason::Failed, message.clone()));
        d.status = fail(job, status, Reason::InvalidOnlyShards, message, now);
        return d;
    }
    let leases: BTreeMap<i32, &LeaseView> = observed.leases.iter().map(|l| (l.shard, l)).collect();
    let mut book = Book::open(job, &prev, observed.pods, at);
    book.adopt();
    book.judge_attempts(&leases);
    book.stop_superseded();
    let desired = settle(observed, &prev, &mut status, &mut book);
    let mut d = summarize(status, book, desired, &leases);
    fold(observed, &prev, &mut d, now);
    d
}

/// spec.onlyShards naming shards the job does not have: refused rather than run as a job of no
/// shards, which would "succeed" at once.
fn shards_beyond(job: &BackgroundJob) -> Option<String> {
    let only = Ranges::parse(job.spec.only_shards.as_deref()?);
    let shards = job.spec.shards;
    let last = only.last().filter(|&last| last >= shards)?;
    Some(format!(
        "spec.onlyShards names shards up to {last}, which do not exist: spec.shards is {shards}, so indexes run from 0 to {}",
        shards - 1
    ))
}

/// A job whose spec.templateRef is not resolved yet: resolve it when the template exists (the
/// next step, with the template's fields in the spec, admits it), else wait for it, Queued.
fn resolve(observed: &Observed, mut status: BackgroundJobStatus, now: Timestamp) -> Decision {
    let job = observed.job;
    let name = job.spec.template_ref.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
    let mut d = Decision::default();
    let generation = job.metadata.generation;
    if let Some(Refusal::Invalid { message }) = observed.refusal {
        let message = format!("spec.templateRef: BackgroundJobTemplate {name} does not fit this job: {message}");
        d.events.push(EventNote::warning(EventReason::Failed, message.clone()));
        d.status = fail(job, status, Reason::InvalidTemplate, message, now);
        return d;
    }
    status.phase = Some(Phase::Queued);
    match observed.template_generation {
        Some(template_generation) => d.resolve = Some(template_generation),
        None => {
            let namespace = job.metadata.namespace.as_deref().unwrap_or_default();
            let message = format!(
                "spec.templateRef: BackgroundJobTemplate {name} does not exist in namespace {namespace}; the job starts once it is created"
            );
            if newly_waiting(job.status.as_ref(), Reason::WaitingForTemplate) {
                d.events.push(
                    EventNote::normal(EventReason::Queued, message.clone()).about(Related::Template(name.to_string())),
                );
            }
            let conditions = &mut status.conditions;
            set_condition(
                conditions,
                ConditionType::Admitted,
                false,
                Reason::WaitingForTemplate,
                message,
                now,
                generation,
            );
        }
    }
    d.status = status;
    d
}

/// A finished job only lets go of what it still holds, and waits for its TTL.
fn finished(observed: &Observed, status: BackgroundJobStatus, now: Timestamp) -> Decision {
    let mut d = Decision::default();
    for pod in observed.pods {
        if pod.live() {
            d.delete.push(pod.name.clone());
        } else if pod.tracked {
            d.release.push(pod.name.clone());
        }
    }
    if let (Some(ttl), Some(done)) = (observed.job.spec.ttl_seconds_after_finished, &status.completion_time) {
        let expiry = plus(done.0, i64::from(ttl));
        if now >= expiry {
            d.delete_job = true;
        } else {
            d.requeue_after = Some(until(now, expiry));
        }
    }
    d.status = status;
    d
}
