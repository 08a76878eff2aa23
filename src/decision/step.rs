//! `decide`: one level-triggered step for one job.
//!
//! Every shard is in exactly one state, read from the last status and corrected by the pods seen:
//! succeeded or failed (ranges), active (one live attempt), retrying (waiting for its next
//! attempt) or pending (never started). Outcomes are recorded per (shard, attempt), so seeing a
//! finished pod twice changes nothing: nothing is counted twice, and a pod keeps its tracking
//! finalizer until the status that records it has been written.

use std::collections::BTreeMap;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::ResourceExt;

use super::ranges::Ranges;
use crate::api::{
    ActiveShard, BackgroundJob, BackgroundJobStatus, Failure, Phase, Progress, RetryingShard, ShardCounts,
    ShardProgress, WorkerCounts,
};

/// What the core needs to know of a shard's Lease. Times are on the operator's clock: when it saw
/// the value change, so a worker's clock cannot fool it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseView {
    pub shard: i32,
    /// The pod of the attempt that owns the shard.
    pub holder: Option<String>,
    /// When renewTime was last seen to change (None: never renewed).
    pub last_renewal: Option<Timestamp>,
    /// The progress the worker reported.
    pub progress: Option<ShardProgress>,
    /// When the reported done count was last seen to change.
    pub progress_since: Option<Timestamp>,
    /// The result summary the worker reported.
    pub result: Option<serde_json::Value>,
}

/// Everything `decide` looks at for one job.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub job: &'a BackgroundJob,
    pub pods: &'a [PodView],
    pub leases: &'a [LeaseView],
    /// When heartbeats were last folded into this job's status (None: not since the operator started).
    pub last_fold: Option<Timestamp>,
    /// Heartbeats alone change the status at most once per this many seconds.
    pub fold_seconds: i64,
    /// What the worker budget allows this job now (None: no budget).
    pub grant: Option<&'a super::queue::Grant>,
}

impl<'a> Observed<'a> {
    pub fn new(job: &'a BackgroundJob, pods: &'a [PodView]) -> Self {
        Self { job, pods, leases: &[], last_fold: None, fold_seconds: FOLD_SECONDS, grant: None }
    }
}

/// By default, heartbeats, progress, readiness and mid-job shard successes reach the status at
/// most this often per job (unless something else changes the status anyway): lease renewals
/// must not become status writes one for one, nor each of a job's shards a write of its own.
pub const FOLD_SECONDS: i64 = 15;

/// What the core needs to know of a worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub shard: i32,
    pub attempt: i32,
    pub phase: PodPhase,
    /// Has a deletionTimestamp.
    pub deleting: bool,
    /// Still carries the tracking finalizer.
    pub tracked: bool,
    pub ready: bool,
    /// For a failed pod: why, in the pod's own words.
    pub failure: Option<Failure>,
    pub created: Option<Timestamp>,
    /// When the operator first saw it Running.
    pub running_since: Option<Timestamp>,
    /// For a pod not running yet: why a container cannot start, as the kubelet says (an image
    /// that cannot be pulled, a missing Secret key, ...), which fails the attempt.
    pub cannot_start: Option<Failure>,
}

impl PodView {
    /// Neither finished nor on its way out.
    pub fn live(&self) -> bool {
        !self.deleting && matches!(self.phase, PodPhase::Pending | PodPhase::Running)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// An Event to publish on the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    /// The worker pod it is about, if one: the event's related object. It also keeps two events
    /// of one reason apart (the event recorder would fold them into one series otherwise).
    pub pod: Option<String>,
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
    pub requeue_after: Option<std::time::Duration>,
    /// The job's TTL after finishing has passed: delete it.
    pub delete_job: bool,
    /// `status` is to be written, with the current heartbeats: the caller notes `now` as the last fold.
    pub folded: bool,
    /// Reasons of the attempts this step found failed (for metrics).
    pub failed_attempts: Vec<String>,
}

/// Seconds to wait before the retry that follows the `failures`-th failure of a shard.
pub fn backoff_seconds(backoff: &crate::api::Backoff, failures: i32) -> i64 {
    let exp = (failures - 1).clamp(0, 62);
    let secs = backoff.initial_seconds as f64 * backoff.factor.max(1.0).powi(exp);
    if secs.is_finite() { (secs as i64).min(backoff.max_seconds).max(0) } else { backoff.max_seconds }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap_or(Timestamp::MAX)
}

/// Sets a condition, keeping lastTransitionTime when its status does not change.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = time(now);
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: time(now),
            observed_generation: generation,
        }),
    }
}

/// The status of a job that failed for `reason`: phase Failed, the Failed condition, the time.
pub fn fail(
    job: &BackgroundJob,
    mut status: BackgroundJobStatus,
    reason: &str,
    message: String,
    now: Timestamp,
) -> BackgroundJobStatus {
    let generation = job.metadata.generation;
    status.phase = Some(Phase::Failed);
    status.completion_time.get_or_insert(time(now));
    set_condition(&mut status.conditions, "Failed", true, reason, message, now, generation);
    set_condition(&mut status.conditions, "Complete", false, reason, "the job failed".into(), now, generation);
    if let Some(w) = status.workers.as_mut() {
        w.desired = 0;
        w.summary = format!("{}/0", w.active);
    }
    status
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
    // Nothing to do but record outcomes: no pod to create or delete, nothing to tell.
    let quiet = |d: &Decision| {
        d.create.is_empty() && d.delete.is_empty() && d.events.is_empty() && d.failed_attempts.is_empty()
    };
    if !quiet(&d) || prev.phase != Some(Phase::Running) || d.status.phase != Some(Phase::Running) {
        return d;
    }
    // The pods of shards that just succeeded, seen as still running.
    let newly_done =
        |p: &PodView| p.phase == PodPhase::Succeeded && !p.deleting && prev.active.iter().any(|a| a.pod == p.name);
    if !observed.pods.iter().any(newly_done) {
        return d;
    }
    let held: Vec<PodView> = observed
        .pods
        .iter()
        .map(|p| {
            if newly_done(p) {
                PodView { phase: PodPhase::Running, running_since: p.running_since.or(Some(now)), ..p.clone() }
            } else {
                p.clone()
            }
        })
        .collect();
    let mut later = decide_now(&Observed { pods: &held, ..*observed }, now);
    if !quiet(&later) || later.status != *prev {
        return d;
    }
    later.requeue_after = min_opt(later.requeue_after, until(now, next_fold));
    later
}

fn decide_now(observed: &Observed, now: Timestamp) -> Decision {
    let Observed { job, pods, leases, last_fold, fold_seconds, grant } = *observed;
    let spec = &job.spec;
    let leases: BTreeMap<i32, &LeaseView> = leases.iter().map(|l| (l.shard, l)).collect();
    let generation = job.metadata.generation;
    let prev = job.status.clone().unwrap_or_default();
    let mut d = Decision::default();
    let mut status = prev.clone();
    status.observed_generation = generation;
    status.queued_time.get_or_insert(time(now));
    let total = spec.shards.max(0);

    // A finished job only lets go of what it still holds, and waits for its TTL.
    if prev.phase.is_some_and(|p| p.is_finished()) {
        for pod in pods {
            if pod.live() {
                d.delete.push(pod.name.clone());
            } else if pod.tracked {
                d.release.push(pod.name.clone());
            }
        }
        if let (Some(ttl), Some(done)) = (spec.ttl_seconds_after_finished, &prev.completion_time) {
            let expiry = plus(done.0, i64::from(ttl));
            if now >= expiry {
                d.delete_job = true;
            } else {
                d.requeue_after = Some(until(now, expiry));
            }
        }
        d.status = status;
        return d;
    }

    let mut succeeded = Ranges::from_opt(prev.succeeded_shards.as_ref());
    let mut failed = Ranges::from_opt(prev.failed_shards.as_ref());
    let mut active: BTreeMap<i32, ActiveShard> = prev.active.iter().map(|a| (a.shard, a.clone())).collect();
    let mut retrying: BTreeMap<i32, RetryingShard> = prev.retrying.iter().map(|r| (r.shard, r.clone())).collect();
    // Entries for shards the spec no longer has (cannot happen through the API; be safe).
    active.retain(|s, _| *s < total);
    retrying.retain(|s, _| *s < total);

    let mut by_shard: BTreeMap<i32, Vec<&PodView>> = BTreeMap::new();
    for pod in pods {
        if (0..total).contains(&pod.shard) {
            by_shard.entry(pod.shard).or_default().push(pod);
        } else if pod.live() {
            d.delete.push(pod.name.clone());
        } else if pod.tracked {
            d.release.push(pod.name.clone());
        }
    }

    let mut failure_of_job: Option<(&'static str, String)> = None;
    let retry_limit = spec.retry.limit;

    // Adopt pods of attempts the status does not know yet (created just before a crash or a
    // failed status write): the newest attempt of a shard is its current one.
    for (&shard, shard_pods) in &by_shard {
        if succeeded.contains(shard) || failed.contains(shard) {
            continue;
        }
        let newest = shard_pods.iter().map(|p| p.attempt).max().unwrap_or(0);
        let known =
            active.get(&shard).map(|a| a.attempt).or_else(|| retrying.get(&shard).map(|r| r.attempt - 1)).unwrap_or(0);
        if newest > known {
            let pod = shard_pods.iter().find(|p| p.attempt == newest).unwrap();
            let failures =
                retrying.remove(&shard).map(|r| r.failures).or(active.get(&shard).map(|a| a.failures)).unwrap_or(0);
            active.insert(
                shard,
                ActiveShard {
                    shard,
                    attempt: newest,
                    failures,
                    pod: pod.name.clone(),
                    start_time: time(pod.created.unwrap_or(now)),
                    last_heartbeat_time: None,
                    progress: None,
                },
            );
        }
    }

    // Outcomes of current attempts.
    let mut failed_attempts: Vec<String> = Vec::new();
    let mut record_failure = |shard: i32,
                              entry: &ActiveShard,
                              failure: Failure,
                              retrying: &mut BTreeMap<i32, RetryingShard>,
                              failed: &mut Ranges,
                              events: &mut Vec<EventNote>| {
        let failures = entry.failures + 1;
        failed_attempts.push(failure.reason.clone());
        let what = describe(&failure);
        if failures > retry_limit {
            failed.insert(shard);
            events.push(EventNote {
                warning: true,
                reason: "AttemptFailed",
                note: format!("shard {shard} attempt {} failed ({what}); no retries left", entry.attempt),
                pod: Some(entry.pod.clone()),
            });
            failure_of_job.get_or_insert((
                "RetriesExhausted",
                format!(
                    "shard {shard} failed {failures} times (spec.retry.limit is {retry_limit}); last failure: {what}"
                ),
            ));
        } else {
            let wait = backoff_seconds(&spec.retry.backoff, failures);
            events.push(EventNote {
                warning: true,
                reason: "AttemptFailed",
                note: format!("shard {shard} attempt {} failed ({what}); retrying in {wait}s", entry.attempt),
                pod: Some(entry.pod.clone()),
            });
            retrying.insert(
                shard,
                RetryingShard {
                    shard,
                    attempt: entry.attempt + 1,
                    failures,
                    next_retry_time: Some(time(plus(now, wait))),
                    last_failure: Some(failure),
                },
            );
        }
    };

    let mut live_pods: Vec<&PodView> = Vec::new();
    let shards: Vec<i32> = active.keys().copied().collect();
    for shard in shards {
        let entry = active[&shard].clone();
        let current = by_shard.get(&shard).and_then(|ps| ps.iter().find(|p| p.attempt == entry.attempt)).copied();
        let Some(pod) = current else {
            // Created but not seen yet, or gone without our finalizer: (re)create, by the same name.
            if !spec.suspend {
                d.create.push((shard, entry.attempt));
            } else {
                active.remove(&shard);
                retrying.insert(shard, interrupted(&entry));
            }
            continue;
        };
        match pod.phase {
            PodPhase::Succeeded => {
                active.remove(&shard);
                succeeded.insert(shard);
            }
            PodPhase::Failed => {
                active.remove(&shard);
                let failure = pod.failure.clone().unwrap_or_else(|| Failure {
                    reason: "Error".into(),
                    message: String::new(),
                    exit_code: None,
                });
                record_failure(shard, &entry, failure, &mut retrying, &mut failed, &mut d.events);
            }
            _ if pod.deleting => {
                active.remove(&shard);
                if spec.suspend {
                    retrying.insert(shard, interrupted(&entry));
                } else {
                    let failure = Failure {
                        reason: "PodDeleted".into(),
                        message: format!("pod {} was deleted before it finished", pod.name),
                        exit_code: None,
                    };
                    record_failure(shard, &entry, failure, &mut retrying, &mut failed, &mut d.events);
                }
            }
            _ => {
                let deadline = spec.timeouts.attempt_seconds.map(|s| plus(entry.start_time.0, s));
                if spec.suspend {
                    active.remove(&shard);
                    retrying.insert(shard, interrupted(&entry));
                    d.delete.push(pod.name.clone());
                } else if deadline.is_some_and(|t| now >= t) {
                    active.remove(&shard);
                    d.delete.push(pod.name.clone());
                    let failure = Failure {
                        reason: "AttemptDeadlineExceeded".into(),
                        message: format!(
                            "attempt ran longer than spec.timeouts.attemptSeconds ({}s)",
                            spec.timeouts.attempt_seconds.unwrap_or(0)
                        ),
                        exit_code: None,
                    };
                    record_failure(shard, &entry, failure, &mut retrying, &mut failed, &mut d.events);
                } else if let Some(failure) = pod.cannot_start.clone() {
                    // The kubelet would retry forever (ImagePullBackOff): spec.retry decides instead.
                    active.remove(&shard);
                    d.delete.push(pod.name.clone());
                    record_failure(shard, &entry, failure, &mut retrying, &mut failed, &mut d.events);
                } else if let Some(failure) =
                    heartbeat_failure(spec, &entry, pod, leases.get(&shard).copied(), now, &mut d)
                {
                    active.remove(&shard);
                    d.delete.push(pod.name.clone());
                    record_failure(shard, &entry, failure, &mut retrying, &mut failed, &mut d.events);
                } else {
                    live_pods.push(pod);
                    if let Some(deadline) = deadline {
                        d.requeue_after = min_opt(d.requeue_after, until(now, deadline));
                    }
                }
            }
        }
    }

    d.failed_attempts = failed_attempts;

    // Every other pod: a superseded attempt, or a shard that is done. Stop the live ones; release
    // the finished ones, whose outcome is recorded (or moot).
    for (shard, shard_pods) in &by_shard {
        for pod in shard_pods {
            let is_current = active
                .get(shard)
                .is_some_and(|a| a.attempt == pod.attempt && live_pods.iter().any(|p| p.name == pod.name));
            if is_current {
                continue;
            }
            if pod.live() {
                if !d.delete.contains(&pod.name) {
                    d.delete.push(pod.name.clone());
                }
            } else if pod.tracked {
                d.release.push(pod.name.clone());
            }
        }
    }

    // The job's own deadline, counted from its (latest) start.
    if failure_of_job.is_none()
        && !spec.suspend
        && let Some(start) = &prev.start_time
    {
        let deadline = plus(start.0, spec.timeouts.job_seconds);
        if now >= deadline {
            failure_of_job = Some((
                "DeadlineExceeded",
                format!("the job ran longer than spec.timeouts.jobSeconds ({}s)", spec.timeouts.job_seconds),
            ));
        } else {
            d.requeue_after = min_opt(d.requeue_after, until(now, deadline));
        }
    }

    let remaining = i64::from(total) - succeeded.len() - failed.len();
    let mut desired = 0;

    if let Some((reason, message)) = failure_of_job {
        for pod in &live_pods {
            if !d.delete.contains(&pod.name) {
                d.delete.push(pod.name.clone());
            }
        }
        d.create.clear();
        live_pods.clear();
        active.clear();
        d.events.push(EventNote { warning: true, reason: "Failed", note: message.clone(), pod: None });
        status = fail(job, status, reason, message, now);
    } else if remaining == 0 {
        status.phase = Some(Phase::Succeeded);
        status.completion_time.get_or_insert(time(now));
        set_condition(
            &mut status.conditions,
            "Complete",
            true,
            "Succeeded",
            format!("all {total} shards succeeded"),
            now,
            generation,
        );
        d.events.push(EventNote {
            warning: false,
            reason: "Succeeded",
            note: format!("all {total} shards succeeded"),
            pod: None,
        });
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            d.requeue_after = min_opt(d.requeue_after, std::time::Duration::from_secs(ttl.max(0) as u64));
        }
    } else if spec.suspend {
        if prev.phase != Some(Phase::Suspended) {
            d.events.push(EventNote {
                warning: false,
                reason: "Suspended",
                note: "spec.suspend is true: workers stopped, progress kept".into(),
                pod: None,
            });
        }
        status.phase = Some(Phase::Suspended);
        set_condition(
            &mut status.conditions,
            "Suspended",
            true,
            "Suspended",
            "spec.suspend is true".into(),
            now,
            generation,
        );
    } else if let Some((position, reason)) =
        grant.and_then(|g| g.waiting.clone()).filter(|_| prev.phase != Some(Phase::Running))
    {
        // Not started, and the budget has no room yet: wait in the queue.
        desired = remaining.min(i64::from(spec.workers.max)) as i32;
        if prev.phase != Some(Phase::Queued) {
            d.events.push(EventNote {
                warning: false,
                reason: "Queued",
                note: format!("waiting for workers: {reason}"),
                pod: None,
            });
        }
        status.phase = Some(Phase::Queued);
        set_condition(
            &mut status.conditions,
            "Admitted",
            false,
            "WaitingForWorkers",
            format!("{reason}; number {position} in the queue"),
            now,
            generation,
        );
    } else {
        // Admit and run.
        if status.start_time.is_none() || prev.phase == Some(Phase::Suspended) {
            status.start_time = Some(time(now));
            let note = if prev.phase == Some(Phase::Suspended) {
                "resumed".to_string()
            } else {
                format!("admitted: {total} shards on up to {} workers", spec.workers.max)
            };
            d.events.push(EventNote {
                warning: false,
                reason: if prev.phase == Some(Phase::Suspended) { "Resumed" } else { "Admitted" },
                note,
                pod: None,
            });
            if prev.phase != Some(Phase::Suspended) {
                set_condition(
                    &mut status.conditions,
                    "Admitted",
                    true,
                    "Admitted",
                    "workers may start".into(),
                    now,
                    generation,
                );
            }
            if spec.timeouts.job_seconds > 0 {
                d.requeue_after =
                    min_opt(d.requeue_after, std::time::Duration::from_secs(spec.timeouts.job_seconds as u64));
            }
        }
        status.phase = Some(Phase::Running);

        desired = remaining.min(i64::from(spec.workers.max)) as i32;
        let mut free = desired as i64 - live_pods.len() as i64 - d.create.len() as i64;
        if let Some(g) = grant {
            free = free.min(i64::from(g.extra) - d.create.len() as i64);
        }
        // Retries that are due first (lowest shard first), then shards never started.
        let due: Vec<i32> = retrying
            .values()
            .filter(|r| r.next_retry_time.as_ref().is_none_or(|t| t.0 <= now))
            .map(|r| r.shard)
            .collect();
        for shard in due {
            if free <= 0 {
                break;
            }
            let r = retrying.remove(&shard).unwrap();
            start(&mut d, &mut active, job, shard, r.attempt, r.failures, now);
            free -= 1;
        }
        if free > 0 {
            let mut taken: Ranges = succeeded.clone();
            for s in active.keys().chain(retrying.keys()) {
                taken.insert(*s);
            }
            for shard in failed.iter() {
                taken.insert(shard);
            }
            let fresh: Vec<i32> = taken.gaps(total).take(free as usize).collect();
            for shard in fresh {
                start(&mut d, &mut active, job, shard, 1, 0, now);
            }
        }
        if let Some(secs) = spec.timeouts.attempt_seconds.filter(|_| !d.create.is_empty()) {
            d.requeue_after = min_opt(d.requeue_after, std::time::Duration::from_secs(secs.max(1) as u64));
        }
        for r in retrying.values() {
            if let Some(t) = &r.next_retry_time
                && t.0 > now
            {
                d.requeue_after = min_opt(d.requeue_after, until(now, t.0));
            }
        }
    }

    // Out of a suspend, whether straight back to work or into the queue.
    if prev.phase == Some(Phase::Suspended) && matches!(status.phase, Some(Phase::Queued | Phase::Running)) {
        set_condition(
            &mut status.conditions,
            "Suspended",
            false,
            "Resumed",
            "spec.suspend is false".into(),
            now,
            generation,
        );
    }

    // Counts and summaries.
    let running = active.len() as i32;
    let n_succeeded = succeeded.len() as i32;
    let n_failed = failed.len() as i32;
    status.succeeded_shards = succeeded.to_opt_string();
    status.failed_shards = failed.to_opt_string();
    status.shards = Some(ShardCounts {
        total,
        pending: total - running - n_succeeded - n_failed,
        running,
        succeeded: n_succeeded,
        failed: n_failed,
        summary: format!("{n_succeeded}/{total}"),
    });
    let finished = status.phase.is_some_and(|p| p.is_finished());
    let live = if finished { 0 } else { live_pods.len() as i32 + d.create.len() as i32 };
    let ready = if finished { 0 } else { live_pods.iter().filter(|p| p.ready).count() as i32 };
    status.workers = Some(WorkerCounts { desired, active: live, ready, summary: format!("{live}/{desired}") });
    status.active = if finished { Vec::new() } else { active.into_values().collect() };
    status.retrying = if finished { Vec::new() } else { retrying.into_values().collect() };
    if !finished {
        for entry in status.active.iter_mut() {
            let lease = leases.get(&entry.shard).filter(|l| l.holder.as_deref() == Some(entry.pod.as_str()));
            entry.last_heartbeat_time = lease.and_then(|l| l.last_renewal).map(time);
            entry.progress = lease.and_then(|l| l.progress.clone());
        }
    }
    status.progress = Some(job_progress(&status, &leases, total, finished));
    if let Some(latest) = leases.values().filter_map(|l| l.last_renewal).max() {
        status.last_heartbeat_time = Some(time(latest));
    }
    status.result = merged_result(leases.values().filter_map(|l| l.result.as_ref()));

    // Fold heartbeats (and readiness) in at a bounded rate: when they are all that changed and
    // the last fold is recent, keep their previous values and look again when the period is over.
    let stale = with_heartbeats_of(&status, &prev);
    if stale != status
        && stale == prev
        && let Some(next_fold) = last_fold.map(|t| plus(t, fold_seconds)).filter(|t| now < *t)
    {
        status = stale;
        d.requeue_after = min_opt(d.requeue_after, until(now, next_fold));
    }
    // Any write carries the current heartbeats along: it counts as a fold.
    d.folded = status != prev;
    // Lease renewals do not wake the controller (every renewal of every worker would, and a
    // burst of them would keep pushing the job's reconcile back): a job whose workers heartbeat
    // is looked at again when the fold period is over. Missed heartbeats have their own timer.
    if spec.heartbeat.is_some() && !status.active.is_empty() {
        let next_fold = match last_fold.map(|t| plus(t, fold_seconds)) {
            Some(next) if !d.folded && next > now => next,
            _ => plus(now, fold_seconds),
        };
        d.requeue_after = min_opt(d.requeue_after, until(now, next_fold));
    }

    d.status = status;
    d
}

fn start(
    d: &mut Decision,
    active: &mut BTreeMap<i32, ActiveShard>,
    job: &BackgroundJob,
    shard: i32,
    attempt: i32,
    failures: i32,
    now: Timestamp,
) {
    let pod = super::pod::pod_name(&job.name_any(), shard, attempt);
    d.events.push(EventNote {
        warning: false,
        reason: "WorkerStarted",
        note: format!("shard {shard} attempt {attempt} on pod {pod}"),
        pod: Some(pod.clone()),
    });
    d.create.push((shard, attempt));
    active.insert(
        shard,
        ActiveShard { shard, attempt, failures, pod, start_time: time(now), last_heartbeat_time: None, progress: None },
    );
}

/// Fails a running attempt whose worker went silent (HeartbeatTimeout) or stopped making progress
/// (Stalled); otherwise asks to look again when that could next happen.
fn heartbeat_failure(
    spec: &crate::api::BackgroundJobSpec,
    entry: &ActiveShard,
    pod: &PodView,
    lease: Option<&LeaseView>,
    now: Timestamp,
    d: &mut Decision,
) -> Option<Failure> {
    let hb = spec.heartbeat.as_ref()?;
    // A pod that is not running yet (pulling its image, say) cannot heartbeat.
    if pod.phase != PodPhase::Running {
        return None;
    }
    let baseline = pod.running_since.unwrap_or(now).max(entry.start_time.0);
    let lease = lease.filter(|l| l.holder.as_deref() == Some(pod.name.as_str()));
    let beat = lease.and_then(|l| l.last_renewal).map_or(baseline, |b| b.max(baseline));
    let silent_at = plus(beat, i64::from(hb.timeout_seconds));
    if now >= silent_at {
        return Some(Failure {
            reason: "HeartbeatTimeout".into(),
            message: format!(
                "no heartbeat for {}s (spec.heartbeat.timeoutSeconds is {})",
                now.duration_since(beat).as_secs(),
                hb.timeout_seconds
            ),
            exit_code: None,
        });
    }
    d.requeue_after = min_opt(d.requeue_after, until(now, silent_at));
    if let Some(stall) = hb.stall_seconds {
        let moved = lease.and_then(|l| l.progress_since).map_or(baseline, |p| p.max(baseline));
        let stalled_at = plus(moved, i64::from(stall));
        if now >= stalled_at {
            return Some(Failure {
                reason: "Stalled".into(),
                message: format!(
                    "heartbeats but no progress for {}s (spec.heartbeat.stallSeconds is {stall})",
                    now.duration_since(moved).as_secs()
                ),
                exit_code: None,
            });
        }
        d.requeue_after = min_opt(d.requeue_after, until(now, stalled_at));
    }
    None
}

/// Progress over the whole job. Each shard counts as a fraction: 1 when it succeeded, done/total
/// while its worker reports progress, 0 otherwise. done and total are the sums the workers
/// reported; without reports they count shards.
fn job_progress(
    status: &BackgroundJobStatus,
    leases: &BTreeMap<i32, &LeaseView>,
    total: i32,
    finished: bool,
) -> Progress {
    let succeeded = Ranges::from_opt(status.succeeded_shards.as_ref());
    let mut fraction = succeeded.len() as f64;
    for a in &status.active {
        if let Some(p) = a.progress.as_ref().filter(|p| p.total > 0) {
            fraction += (p.done as f64 / p.total as f64).clamp(0.0, 1.0);
        }
    }
    let mut percent = if total > 0 { ((fraction * 100.0) / f64::from(total)).floor() as i32 } else { 100 };
    if status.phase == Some(Phase::Succeeded) {
        percent = 100;
    } else if !finished {
        percent = percent.min(99);
    }
    let reported: Vec<&ShardProgress> = leases.values().filter_map(|l| l.progress.as_ref()).collect();
    let (done, all) = if reported.is_empty() {
        (succeeded.len(), i64::from(total))
    } else {
        (reported.iter().map(|p| p.done).sum(), reported.iter().map(|p| p.total).sum())
    };
    let message = status
        .active
        .iter()
        .filter_map(|a| a.progress.as_ref())
        .map(|p| p.message.clone())
        .find(|m| !m.is_empty())
        .unwrap_or_default();
    Progress { done, total: all, percent: percent.max(0), message, summary: format!("{}%", percent.max(0)) }
}

/// The workers' result summaries merged: numbers summed, lists concatenated (first 10 items),
/// anything else from the highest shard that reported it. Dropped if it grows past 4 KiB.
fn merged_result<'a>(results: impl Iterator<Item = &'a serde_json::Value>) -> Option<serde_json::Value> {
    use serde_json::{Map, Value};
    let mut merged = Map::new();
    let mut any = false;
    for result in results {
        let Value::Object(fields) = result else { continue };
        any = true;
        for (k, v) in fields {
            let next = match (merged.remove(k), v) {
                (Some(Value::Number(a)), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) => Value::from(a.saturating_add(b)),
                    _ => Value::from(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
                },
                (Some(Value::Array(mut a)), Value::Array(b)) => {
                    a.extend(b.iter().cloned());
                    a.truncate(10);
                    Value::Array(a)
                }
                (_, Value::Array(b)) => Value::Array(b.iter().take(10).cloned().collect()),
                (_, v) => v.clone(),
            };
            merged.insert(k.clone(), next);
        }
    }
    let merged = Value::Object(merged);
    (any && serde_json::to_string(&merged).map_or(0, |s| s.len()) <= crate::api::MAX_RESULT_BYTES).then_some(merged)
}

/// `status` with the heartbeat-driven fields of `prev`: what it would be if no heartbeat were folded in.
fn with_heartbeats_of(status: &BackgroundJobStatus, prev: &BackgroundJobStatus) -> BackgroundJobStatus {
    let mut stale = status.clone();
    for entry in stale.active.iter_mut() {
        let old = prev.active.iter().find(|a| a.shard == entry.shard && a.attempt == entry.attempt);
        entry.last_heartbeat_time = old.and_then(|a| a.last_heartbeat_time.clone());
        entry.progress = old.and_then(|a| a.progress.clone());
    }
    stale.last_heartbeat_time = prev.last_heartbeat_time.clone();
    // Workers turning ready is worth a write of its own only once per fold period: a job's
    // status is written when it starts its workers and when they finish anyway.
    if let (Some(now), Some(before)) = (stale.workers.as_mut(), prev.workers.as_ref()) {
        now.ready = before.ready;
    }
    stale.result = prev.result.clone();
    // Progress from shard completions is not a heartbeat; from worker reports it is.
    if status.succeeded_shards == prev.succeeded_shards {
        stale.progress = prev.progress.clone();
    }
    stale
}

/// A shard whose attempt was stopped by a suspend: not a failure; it runs again on resume.
fn interrupted(entry: &ActiveShard) -> RetryingShard {
    RetryingShard {
        shard: entry.shard,
        attempt: entry.attempt + 1,
        failures: entry.failures,
        next_retry_time: None,
        last_failure: None,
    }
}

fn describe(f: &Failure) -> String {
    let mut s = f.reason.clone();
    if let Some(code) = f.exit_code {
        s = format!("exit code {code}, {s}");
    }
    if !f.message.is_empty() {
        s = format!("{s}: {}", f.message);
    }
    s
}

fn until(now: Timestamp, t: Timestamp) -> std::time::Duration {
    let secs = t.duration_since(now).as_secs().max(0) as u64;
    std::time::Duration::from_secs(secs.max(1))
}

fn min_opt(a: Option<std::time::Duration>, b: std::time::Duration) -> Option<std::time::Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}
