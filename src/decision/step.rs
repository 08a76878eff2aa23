//! `decide`: one level-triggered step for one job, as a pipeline of phases over the shard book
//! (`book.rs`): open → adopt → judge attempts → stop superseded → settle the job's outcome and
//! schedule → summarize the status (`status.rs`) → fold heartbeats and the estimate (`fold.rs`).
//!
//! Outcomes are recorded per (shard, attempt), so seeing a finished pod twice changes nothing:
//! nothing is counted twice, and a pod keeps its tracking finalizer until the status that
//! records it has been written.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};

use super::{
    book::Book,
    chain::{self, Chain, Verdict},
    fold::fold,
    status::{fail, hold_condition, set_condition, summarize},
    template,
    view::{FORBIDDEN_PAUSE_SECONDS, LeaseView, Observed, PodPhase, PodView, Refusal},
};
use crate::api::{
    BackgroundJobStatus, Phase,
    names::{ConditionType, EventReason, Reason},
};

/// An Event to publish on the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: EventReason,
    pub note: String,
    /// The object it is about, if one besides the one it is on: the event's related object.
    pub related: Option<Related>,
}

/// An event's related object. It also keeps two events of one reason apart: the event recorder
/// (like client-go's for events.k8s.io) folds events of one reason and related object into one
/// series that keeps the first note, so "created job a", then "created job b" with no related
/// object would read "created job a" (x2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Related {
    Pod(String),
    Job(String),
    Template(String),
}

impl EventNote {
    pub fn normal(reason: EventReason, note: impl Into<String>) -> Self {
        Self { warning: false, reason, note: note.into(), related: None }
    }

    pub fn warning(reason: EventReason, note: impl Into<String>) -> Self {
        Self { warning: true, ..Self::normal(reason, note) }
    }

    pub fn about(self, related: Related) -> Self {
        Self { related: Some(related), ..self }
    }
}

/// What to do for one job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The status to write (the controller writes it only when it differs from the current one).
    pub status: BackgroundJobStatus,
    /// (shard, attempt) of worker pods to create.
    pub create: Vec<(i32, i32)>,
    /// Pods to delete.
    pub delete: Vec<String>,
    /// Pods whose tracking finalizer may go once `status` is written.
    pub release: Vec<String>,
    pub events: Vec<EventNote>,
    /// Look again after this long at the latest (a retry, a deadline, the TTL).
    pub requeue_after: Option<Duration>,
    /// The job's TTL after finishing has passed: delete it.
    pub delete_job: bool,
    /// `status` is to be written, with the current heartbeats: the caller notes `now` as the last fold.
    pub folded: bool,
    /// Reasons of the attempts this step found failed (for metrics).
    pub failed_attempts: Vec<String>,
    /// Reasons of the attempts this step found taken away by the cluster (for metrics).
    pub disrupted_attempts: Vec<String>,
    /// Write the job's BackgroundJobTemplate, of this generation, into its spec.
    pub resolve: Option<i64>,
}

impl Decision {
    /// Nothing to do but record outcomes: no pod to create or delete, nothing to tell.
    fn quiet(&self) -> bool {
        self.create.is_empty()
            && self.delete.is_empty()
            && self.events.is_empty()
            && self.failed_attempts.is_empty()
            && self.disrupted_attempts.is_empty()
    }
}

/// Seconds to wait before the retry that follows the `failures`-th failure of a shard.
pub fn backoff_seconds(backoff: &crate::api::Backoff, failures: i32) -> i64 {
    let exp = (failures - 1).clamp(0, 62);
    let secs = backoff.initial_seconds as f64 * backoff.factor.max(1.0).powi(exp);
    if secs.is_finite() { (secs as i64).min(backoff.max_seconds).max(0) } else { backoff.max_seconds }
}

/// One step for one job. `now` must be whole seconds (the precision the API stores).
///
/// A shard that succeeded while its job goes on running, and that is all that changed, waits
/// for the next fold of the job's status (at most `fold_seconds`) instead of a write of its own:
/// the shards of a job tend to finish close together, and the write that records the last of
/// them (the job is done) goes out at once. Its pod keeps its finalizer until then, so nothing
/// is lost; a shard that frees a worker for a waiting one is never held back.
pub fn decide(observed: &Observed, now: Timestamp) -> Decision {
    let d = decide_now(observed, now);
    let prev = observed.job.status.as_ref();
    let next_fold = observed.last_fold.map(|t| plus(t, observed.fold_seconds)).filter(|t| now < *t);
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
    let mut later = decide_now(&Observed { pods: &held, ..*observed }, now);
    if !later.quiet() || later.status != *prev {
        return d;
    }
    later.requeue_after = min_opt(later.requeue_after, until(now, next_fold));
    later
}

fn decide_now(observed: &Observed, now: Timestamp) -> Decision {
    let job = observed.job;
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
    let mut book = Book::open(job, &prev, observed.pods, now);
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
fn shards_beyond(job: &crate::api::BackgroundJob) -> Option<String> {
    let only = super::ranges::Ranges::parse(job.spec.only_shards.as_deref()?);
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
    match observed.template {
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

/// Settles the job's phase — failed, succeeded, suspended, queued or running — and, when it
/// runs, starts the attempts it has room for. Returns how many workers the job wants.
fn settle(observed: &Observed, prev: &BackgroundJobStatus, status: &mut BackgroundJobStatus, book: &mut Book) -> i32 {
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
        let message = if book.failed.is_empty() {
            format!("all {} shards succeeded", book.total)
        } else {
            let (failed, total) = (book.failed.len(), book.total);
            format!(
                "{} of {total} shards succeeded; {failed} failed ({}), allowed by spec.retry.allowFailedShards",
                i64::from(total) - failed,
                book.failed.abbreviated(super::outcome::MESSAGE_RANGES)
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
    } else if spec.suspend {
        if prev.phase != Some(Phase::Suspended) {
            let note = "spec.suspend is true: workers stopped, progress kept";
            book.d.events.push(EventNote::normal(EventReason::Suspended, note));
        }
        status.phase = Some(Phase::Suspended);
        let message = "spec.suspend is true".to_string();
        set_condition(
            &mut status.conditions,
            ConditionType::Suspended,
            true,
            Reason::Suspended,
            message,
            now,
            generation,
        );
    } else if let Some(Verdict::Wait { message, first, recheck }) = chain {
        if newly_waiting(Some(prev), Reason::WaitingForDependencies) {
            book.d.events.push(EventNote::normal(EventReason::Queued, message.clone()).about(Related::Job(first)));
        }
        if let Some(t) = recheck {
            book.d.requeue_after = min_opt(book.d.requeue_after, until(now, t));
        }
        status.phase = Some(Phase::Queued);
        let conditions = &mut status.conditions;
        set_condition(
            conditions,
            ConditionType::Admitted,
            false,
            Reason::WaitingForDependencies,
            message,
            now,
            generation,
        );
    } else if let Some((position, reason)) = waiting {
        // Not started, and the budget has no room yet: wait in the queue.
        desired = wants;
        if newly_waiting(Some(prev), Reason::WaitingForWorkers) {
            book.d.events.push(EventNote::normal(EventReason::Queued, format!("waiting for workers: {reason}")));
        }
        status.phase = Some(Phase::Queued);
        let message = format!("{reason}; number {position} in the queue");
        let conditions = &mut status.conditions;
        set_condition(conditions, ConditionType::Admitted, false, Reason::WaitingForWorkers, message, now, generation);
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

/// A job starts waiting for `reason` (it was not Queued for it already): the moment for a Queued event.
fn newly_waiting(prev: Option<&BackgroundJobStatus>, reason: Reason) -> bool {
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
    book.schedule(free);
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

pub(super) fn time(t: Timestamp) -> Time {
    Time(t)
}

pub(super) fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap_or(Timestamp::MAX)
}

pub(super) fn until(now: Timestamp, t: Timestamp) -> Duration {
    let secs = t.duration_since(now).as_secs().max(0) as u64;
    Duration::from_secs(secs.max(1))
}

pub(super) fn min_opt(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}
