//! The record step: writes the decided status (fenced on its version, only when it changed), then
//! deletes the pods it stops, releases the tracking finalizers of pods whose outcome it holds,
//! counts, publishes events, and deletes a job whose TTL after finishing passed.
//!
//! A pod is deleted after the status that says why (a silent worker's attempt failed, say): the
//! failure is recorded one round trip sooner, and a status write fenced off (409) stops nothing
//! that the next decision would keep. Nothing is lost when the operator stops in between: a live
//! pod that is no attempt's current one is stopped by every later decision, and the next
//! attempt of its shard waits for it to stop.

use std::{sync::Arc, time::Instant};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};

use crate::controller::lean::WorkerPod;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::{debug, info};

use super::{act, context::Context};
use crate::controller::{
    Error, events, wait_from,
    writes::{FENCED_RETRY, delete_by_uid, resource_version, slow_start, write_status},
};
use crate::operator::metrics::ReasonLabel;
use nightshift_api::BackgroundJob;
use nightshift_core::Decision;

pub async fn record(
    ctx: &Arc<Context>,
    job: &BackgroundJob,
    pods: &[Arc<WorkerPod>],
    d: Decision,
    now: Timestamp,
) -> Result<Action, Error> {
    if !record_status(ctx, job, &d, now).await? {
        // Decided from an old version of the job: its newer version, on its way to the cache,
        // wakes the job again; nothing of this decision is recorded.
        return Ok(Action::requeue(FENCED_RETRY));
    }
    act::delete_pods(ctx, job, pods, &d.delete).await?;
    release_finalizers(ctx, job, pods, &d.release).await?;
    for reason in &d.failed_attempts {
        ctx.metrics.attempts_failed.get_or_create(&ReasonLabel { reason: reason.clone() }).inc();
    }
    for reason in &d.disrupted_attempts {
        ctx.metrics.attempts_disrupted.get_or_create(&ReasonLabel { reason: reason.clone() }).inc();
    }
    events::publish(ctx, job, &d.events);
    if d.delete_job {
        delete_job(ctx, job).await?;
        return Ok(Action::await_change());
    }
    let at = Timestamp::now();
    Ok(d.requeue_after.map(|wait| Action::requeue(wait_from(now, wait, at))).unwrap_or_else(Action::await_change))
}

/// Writes the decided status, only onto the version of the job it was decided from (its
/// resourceVersion is a precondition): a paused former leader, or a reconcile that read a stale
/// cache, cannot overwrite a newer status (a finished job's, say). False when the API server
/// refused it for that reason (409).
async fn record_status(ctx: &Context, job: &BackgroundJob, d: &Decision, now: Timestamp) -> Result<bool, Error> {
    if job.status.as_ref() == Some(&d.status) {
        return Ok(true);
    }
    let Some(written) = write_status(&ctx.client, &ctx.metrics, job, &d.status).await? else { return Ok(false) };
    let mut memory = ctx.memory();
    let entry = memory.jobs.entry(job.uid().unwrap_or_default()).or_default();
    entry.written = written.status.clone().map(|status| (resource_version(&written), status));
    if d.folded {
        entry.last_fold = Some(now);
    }
    debug!(phase = ?d.status.phase, "status written");
    Ok(true)
}

/// Releases concurrently (in batches that double, [`slow_start`]), and never twice: a lagging
/// cache still shows a released finalizer.
async fn release_finalizers(
    ctx: &Context,
    job: &BackgroundJob,
    pods: &[Arc<WorkerPod>],
    names: &[String],
) -> Result<(), Error> {
    if names.is_empty() {
        return Ok(());
    }
    let at = Instant::now();
    let todo: Vec<&Arc<WorkerPod>> = {
        let mut memory = ctx.memory();
        pods.iter()
            .filter(|p| names.iter().any(|n| p.metadata.name.as_ref() == Some(n)))
            .filter(|p| !memory.released.expects(&p.uid().unwrap_or_default(), at))
            .collect()
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let results = slow_start(todo.iter().map(|p| release(&api, p)).collect(), Result::is_err).await;
    for (pod, result) in todo.iter().zip(results) {
        // None: not sent, after an error that fails the reconcile (retried; the pod is released then).
        let Some(result) = result else { continue };
        result?;
        ctx.memory().released.expect(pod.uid().unwrap_or_default(), (), Instant::now());
    }
    Ok(())
}

/// Removes the tracking finalizer, guarded by a test so a stale index removes nothing else.
pub async fn release(api: &Api<Pod>, pod: &WorkerPod) -> Result<(), kube::Error> {
    let Some(index) = pod.finalizers().iter().position(|f| f == nightshift_api::FINALIZER_TRACKING) else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": nightshift_api::FINALIZER_TRACKING},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")}
    ]))
    .expect("a valid JSON patch");
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::<()>::Json(patch)).await {
        Ok(_) => Ok(()),
        // Gone, or the finalizers changed under us (released already): nothing to do.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the job (its TTL after finishing passed), if it is still the one decided on.
async fn delete_job(ctx: &Context, job: &BackgroundJob) -> Result<(), Error> {
    info!("ttlSecondsAfterFinished passed; deleting the job");
    let api: Api<BackgroundJob> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    delete_by_uid(&api, &job.name_any(), job.uid()).await?;
    Ok(())
}
