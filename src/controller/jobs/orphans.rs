//! Pods of a deleted job: the garbage collector deletes them, and their tracking finalizer,
//! which no reconcile of the (gone) job will release, is released here. The pod watch only
//! queues them; the API calls happen in this task of their own, so they never hold up the
//! shared watch (and with it every job's reconciles).

use std::sync::Arc;

use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
use k8s_openapi::api::core::v1::Pod;

use crate::controller::lean::WorkerPod;
use kube::{Api, ResourceExt, runtime::reflector::Store};
use tracing::warn;

use super::{context::Context, record::release};
use nightshift_api::BackgroundJob;

/// A pod worth a look: being deleted and still tracked.
pub fn candidate(pod: &WorkerPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        && pod.finalizers().iter().any(|f| f == nightshift_api::FINALIZER_TRACKING)
}

/// Releases the queued pods whose job is gone (or going), one at a time, until the queue closes.
pub async fn release_orphans(ctx: Arc<Context>, mut queue: UnboundedReceiver<WorkerPod>) {
    ctx.filled.wait().await;
    while let Some(pod) = queue.next().await {
        if owner_alive(&ctx.jobs, &pod) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        if let Err(e) = release(&api, &pod).await {
            warn!(pod = %pod.name_any(), error = %e, "releasing the finalizer of an orphaned worker pod");
        }
    }
}

fn owner_alive(jobs: &Store<BackgroundJob>, pod: &WorkerPod) -> bool {
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "BackgroundJob");
    owner.is_some_and(|o| {
        jobs.state()
            .iter()
            .any(|j| j.metadata.uid.as_deref() == Some(o.uid.as_str()) && j.metadata.deletion_timestamp.is_none())
    })
}
