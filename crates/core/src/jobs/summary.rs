//! The status from the shard book: conditions, counts, progress and the merged result.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::{book::Book, retrying, view::LeaseView};
use crate::{Decision, conditions::set_condition, time::time};
use nightshift_api::{
    BackgroundJob, BackgroundJobStatus, JobProgress, Phase, Ranges, ShardCounts, ShardProgress, WorkerCounts,
    reasons::{ConditionType, Reason},
};

/// The status of a job that failed for `reason`: phase Failed, the Failed condition, the time.
pub fn fail(
    job: &BackgroundJob,
    mut status: BackgroundJobStatus,
    reason: Reason,
    message: String,
    now: Timestamp,
) -> BackgroundJobStatus {
    let generation = job.metadata.generation;
    status.phase = Some(Phase::Failed);
    status.completion_time.get_or_insert(time(now));
    set_condition(&mut status.conditions, ConditionType::Failed, true, reason, message, now, generation);
    let failed = "the job failed".to_string();
    set_condition(&mut status.conditions, ConditionType::Complete, false, reason, failed, now, generation);
    if let Some(w) = status.workers.as_mut() {
        w.desired = 0;
        w.summary = format!("{}/0", w.active);
    }
    status
}

/// Closes the book: the counts, the shards' lists and heartbeats, progress and result go into
/// `status`, which goes into the decision.
pub(super) fn summarize(
    mut status: BackgroundJobStatus,
    book: Book,
    desired: i32,
    leases: &BTreeMap<i32, &LeaseView>,
) -> Decision {
    let now = book.now;
    let Book { total, succeeded, failed, active, retrying, live, disruptions, shard_failures, mut d, .. } = book;
    status.disruptions = disruptions;
    status.shard_failures = shard_failures;
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
    let workers = if finished { 0 } else { live.len() as i32 + d.create.len() as i32 };
    let ready = if finished { 0 } else { live.iter().filter(|p| p.ready).count() as i32 };
    status.workers = Some(WorkerCounts { desired, active: workers, ready, summary: format!("{workers}/{desired}") });
    status.active = if finished { Vec::new() } else { active.into_values().collect() };
    (status.retrying, status.retrying_groups) = if finished { Default::default() } else { retrying::pack(retrying) };
    for entry in status.active.iter_mut() {
        let lease = leases.get(&entry.shard).filter(|l| l.holder.as_deref() == Some(entry.pod.as_str()));
        entry.last_heartbeat_time = lease.and_then(|l| l.last_renewal).map(time);
        entry.progress = lease.and_then(|l| l.progress.clone());
    }
    let (progress, fraction) = job_progress(&status, leases, total, finished);
    status.progress = Some(progress);
    status.estimated_completion_time = match (status.phase, &status.start_time) {
        (Some(Phase::Running), Some(start)) => estimate(start.0, fraction, now).map(time),
        _ => None,
    };
    if let Some(latest) = leases.values().filter_map(|l| l.last_renewal).max() {
        status.last_heartbeat_time = Some(time(latest));
    }
    merge_results(&mut status, &succeeded, leases);
    d.status = status;
    d
}

/// No estimate before the job has run this long ...
pub const ESTIMATE_AFTER_SECONDS: i64 = 10;
/// ... and done this fraction of its work.
pub const ESTIMATE_AFTER_FRACTION: f64 = 0.01;

/// When a job that started at `start` and has done `fraction` (0 to 1) of its work by `now` will
/// finish at the same rate: None too early to tell (see the constants above) or when the result
/// is out of range. Never before `now`.
pub fn estimate(start: Timestamp, fraction: f64, now: Timestamp) -> Option<Timestamp> {
    let elapsed = now.duration_since(start).as_secs_f64();
    if !(fraction.is_finite() && (ESTIMATE_AFTER_FRACTION..=1.0).contains(&fraction))
        || elapsed < ESTIMATE_AFTER_SECONDS as f64
    {
        return None;
    }
    let left = elapsed * (1.0 - fraction) / fraction;
    let left = k8s_openapi::jiff::SignedDuration::try_from_secs_f64(left.ceil()).ok()?;
    now.checked_add(left).ok().map(|t| Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Progress over the whole job, and the fraction of it done (0 to 1). Each shard counts as a
/// fraction: 1 when it succeeded, done/total while its worker reports progress, 0 otherwise.
/// done and total are the sums the workers reported; without reports they count shards.
fn job_progress(
    status: &BackgroundJobStatus,
    leases: &BTreeMap<i32, &LeaseView>,
    total: i32,
    finished: bool,
) -> (JobProgress, f64) {
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
    let progress =
        JobProgress { done, total: all, percent: percent.max(0), message, summary: format!("{}%", percent.max(0)) };
    (progress, if total > 0 { fraction / f64::from(total) } else { 1.0 })
}

/// Merges into `status.result` the result of each succeeded shard not merged yet, once, from the
/// Lease of the attempt that succeeded; `status.resultShards` says which are in. The result is
/// never recomputed from Leases: a new leader, a stale cache or a lost Lease cannot take a shard's
/// result out or count it twice. A shard whose Lease shows no result yet is merged when it does,
/// until the job finishes.
fn merge_results(status: &mut BackgroundJobStatus, succeeded: &Ranges, leases: &BTreeMap<i32, &LeaseView>) {
    let mut merged = Ranges::from_opt(status.result_shards.as_ref());
    // Once dropped for its size, the result stays absent: merging into nothing would undercount.
    let dropped = status.result.is_none() && !merged.is_empty();
    for shard in succeeded.iter() {
        if merged.contains(shard) {
            continue;
        }
        let Some(result) = leases.get(&shard).and_then(|l| l.result.as_ref()).filter(|r| r.is_object()) else {
            continue;
        };
        merged.insert(shard);
        if !dropped {
            status.result = merge_result(status.result.take().unwrap_or_default(), result);
        }
    }
    status.result_shards = merged.to_opt_string();
}

/// One shard's result summary merged into the job's: numbers summed, lists concatenated (first 10
/// items), anything else from the shard merged last. None if it grows past 4 KiB.
fn merge_result(into: serde_json::Value, result: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::{Map, Value};
    let mut merged = match into {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    let Value::Object(fields) = result else { return Some(Value::Object(merged)) };
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
    let merged = Value::Object(merged);
    (serde_json::to_string(&merged).map_or(usize::MAX, |s| s.len()) <= nightshift_api::MAX_RESULT_BYTES)
        .then_some(merged)
}

/// `status` with the heartbeat-driven fields of `prev`: what it would be if no heartbeat were folded in.
pub(super) fn with_heartbeats_of(status: &BackgroundJobStatus, prev: &BackgroundJobStatus) -> BackgroundJobStatus {
    let mut stale = status.clone();
    for entry in stale.active.iter_mut() {
        let old = prev.active.iter().find(|a| a.shard == entry.shard && a.attempt == entry.attempt);
        entry.last_heartbeat_time = old.and_then(|a| a.last_heartbeat_time.clone());
        entry.progress = old.and_then(|a| a.progress.clone());
    }
    stale.last_heartbeat_time = prev.last_heartbeat_time.clone();
    // Progress from shard completions is not a heartbeat; from worker reports it is.
    if status.succeeded_shards == prev.succeeded_shards {
        stale.progress = prev.progress.clone();
    }
    with_readiness_of(&stale, prev)
}

/// `status` with the readiness of `prev`'s workers, and its estimate (which moves with the
/// clock: alone, it is never worth a write).
pub(super) fn with_readiness_of(status: &BackgroundJobStatus, prev: &BackgroundJobStatus) -> BackgroundJobStatus {
    let mut stale = status.clone();
    if let (Some(now), Some(before)) = (stale.workers.as_mut(), prev.workers.as_ref()) {
        now.ready = before.ready;
    }
    stale.estimated_completion_time = prev.estimated_completion_time.clone();
    stale
}
