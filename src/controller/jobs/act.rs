//! The act step: creates the decided worker pods (with their Leases, and the workers' access
//! on a job's first pods), before the status that names them is written. Reports how the API
//! server refused a pod, if it did; every other error fails the reconcile, which is retried.
//! The pods a decision stops are deleted after that status ([`delete_pods`], from `record.rs`).

use std::{sync::Arc, time::Instant};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{Api, ResourceExt, api::PostParams, runtime::reflector::ObjectRef};
use tracing::{info, warn};

use super::{access, context::Context, templates};
use crate::controller::lean::WorkerPod;
use crate::controller::{
    Error,
    watches::object_key,
    writes::{delete_by_uid, slow_start},
};
use nightshift_api::BackgroundJob;
use nightshift_core::{
    Decision, Refusal,
    build::{
        access::lease_name,
        pod::{pod_name, worker_pod},
    },
};

pub async fn act(ctx: &Context, job: &BackgroundJob, d: &Decision, now: Timestamp) -> Result<Option<Refusal>, Error> {
    if d.resolve.is_some() {
        return templates::resolve(ctx, job).await;
    }
    create_pods(ctx, job, &d.create, now).await
}

/// The job's workers cannot start beside an object that is someone else's: the refusal that
/// holds them back, naming it.
fn not_owned(not_owned: &access::NotOwned, now: Timestamp) -> Refusal {
    let message = not_owned.message();
    warn!("{message}");
    Refusal::NotOwned { message, at: now }
}

/// The Lease of `shard` as the cache shows it, when this job controls it.
fn our_lease(ctx: &Context, job: &BackgroundJob, shard: i32) -> Option<Arc<Lease>> {
    let (ns, uid) = (job.namespace().unwrap_or_default(), job.uid().unwrap_or_default());
    let lease = ctx.leases.get(&ObjectRef::new(&lease_name(&job.name_any(), shard)).within(&ns))?;
    lease.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid).then_some(lease)
}

/// What the workers of `create` need before their pods, for a job with heartbeats: the job's
/// ServiceAccount, Role and RoleBinding (once), and each shard's Lease pointed at its new attempt.
/// The checkpoints the attempts resume from; Err: an object they need is someone else's.
async fn claim_access(
    ctx: &Context,
    job: &BackgroundJob,
    create: &[(i32, i32)],
    now: Timestamp,
) -> Result<Result<Vec<Option<String>>, Refusal>, Error> {
    if job.spec.heartbeat.is_none() {
        return Ok(Ok(vec![None; create.len()]));
    }
    let uid = job.uid().unwrap_or_default();
    let applied = ctx.memory().jobs.get(&uid).is_some_and(|m| m.access_applied);
    if !applied {
        if let Err(e) = access::apply_account(&ctx.client, job).await? {
            return Ok(Err(not_owned(&e, now)));
        }
        ctx.memory().jobs.entry(uid).or_default().access_applied = true;
    }
    // The Lease names the new attempt before its pod exists: an older attempt still running is
    // fenced from this moment on, and the checkpoint it left is the one the new attempt gets.
    let claimed = futures::future::try_join_all(create.iter().map(|&(shard, attempt)| {
        let pod = pod_name(&job.name_any(), shard, attempt);
        let ours = our_lease(ctx, job, shard);
        async move { access::apply_lease(&ctx.client, job, shard, &pod, now, ours.as_deref()).await }
    }))
    .await?;
    // No worker starts while one Lease is someone else's: a worker's Role names every
    // shard's Lease, so even the others could write to it.
    Ok(claimed.into_iter().collect::<Result<Vec<_>, _>>().map_err(|e| not_owned(&e, now)))
}

/// Creates the pods concurrently, in batches that double ([`slow_start`]): a reconcile costs a
/// few round trips, not one per pod, and a refusal stops the burst.
async fn create_pods(
    ctx: &Context,
    job: &BackgroundJob,
    create: &[(i32, i32)],
    now: Timestamp,
) -> Result<Option<Refusal>, Error> {
    if create.is_empty() {
        return Ok(None);
    }
    let (ns, uid) = (job.namespace().unwrap_or_default(), job.uid().unwrap_or_default());
    let checkpoints = match claim_access(ctx, job, create, now).await? {
        Ok(checkpoints) => checkpoints,
        Err(refusal) => return Ok(Some(refusal)),
    };
    let agent_image = ctx.options.agent_image.as_deref();
    let pods: Vec<Pod> = create
        .iter()
        .zip(&checkpoints)
        .map(|(&(shard, attempt), checkpoint)| {
            if checkpoint.is_some() {
                info!(shard, attempt, "the attempt resumes from the checkpoint its shard's last attempt saved");
                ctx.metrics.attempts_resumed.inc();
            }
            worker_pod(job, shard, attempt, agent_image, checkpoint.as_deref())
        })
        .collect();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PostParams { field_manager: Some(nightshift_api::MANAGER.into()), ..Default::default() };
    let refused = |r: &Result<Pod, kube::Error>| matches!(r, Err(e) if !is_conflict(e));
    let results = slow_start(pods.iter().map(|pod| api.create(&params, pod)).collect(), refused).await;

    let (mut refusal, mut failure, mut created) = (None, None, false);
    let at = Instant::now();
    let mut memory = ctx.memory();
    for (pod, result) in pods.iter().zip(results) {
        let key = object_key(&ns, &pod.name_any());
        let refused = |message: &str| format!("the API server refused worker pod {}: {message}", pod.name_any());
        let Some(result) = result else {
            // Not sent: another was refused first. Decided again, it is created then.
            memory.creating.forget(&key);
            continue;
        };
        match result {
            Ok(_) => {
                created = true;
                memory.creating.sent(&key, at);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => memory.creating.sent(&key, at),
            Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                memory.creating.forget(&key);
                refusal = Some(Refusal::Invalid { message: refused(&e.message) });
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                // Quota or Pod Security: may pass later.
                memory.creating.forget(&key);
                warn!("{}", refused(&e.message));
                if refusal.is_none() {
                    refusal = Some(Refusal::Forbidden { message: refused(&e.message), at: now });
                }
            }
            Err(e) => {
                memory.creating.forget(&key);
                failure = Some(e);
            }
        }
    }
    if created {
        memory.jobs.entry(uid).or_default().refusal = None;
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(refusal),
    }
}

/// Deletes the pods by name and uid: a pod of that name created since (by someone else, or a
/// newer one) is never deleted in its place (409, and nothing to do).
pub async fn delete_pods(
    ctx: &Context,
    job: &BackgroundJob,
    pods: &[Arc<WorkerPod>],
    delete: &[String],
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    for name in delete {
        // The decision names only pods it was given, so each has its uid here.
        let Some(pod) = pods.iter().find(|p| p.metadata.name.as_ref() == Some(name)) else { continue };
        if delete_by_uid(&api, name, pod.uid()).await? {
            info!(pod = name, "deleted worker pod");
        }
    }
    Ok(())
}

/// 409: the object is there already (a create sent twice), or changed since (a precondition).
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
