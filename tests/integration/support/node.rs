//! The tests' node, where no kubelet should run the pods: the test itself writes their status,
//! as a kubelet would. Moved here from the operator binary (`nightshift simulate` is gone: the
//! shipped binary holds nothing test-only); the benchmark's pods run on kwok's fake node instead.
//!
//! It plays only pods whose `spec.schedulerName` is [`SCHEDULER_NAME`]: no scheduler of that name
//! runs, so kube-scheduler never binds them to the real node and no kubelet fights the test over
//! their status; a job for this node says so in its pod template (the fixture's jobs do).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use nightshift_worker::{Heartbeat, WorkerEnv};
use serde_json::json;

/// The `spec.schedulerName` of the pods the tests play. No scheduler of that name exists.
pub const SCHEDULER_NAME: &str = "nightshift-test-node";

/// Marks a pod Running and Ready, as a kubelet would once its containers started.
pub async fn mark_running(api: &Api<Pod>, pod: &str) -> Result<Pod, kube::Error> {
    let now = Timestamp::now().to_string();
    let statuses: Vec<_> = container_names(api, pod)
        .await?
        .iter()
        .map(|c| {
            json!({"name": c, "image": "played", "imageID": "", "ready": true, "restartCount": 0,
                   "started": true, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let patch = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now}
        ],
        "containerStatuses": statuses
    }});
    api.patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch)).await
}

/// Marks a pod finished: Succeeded for exit code 0, Failed otherwise.
pub async fn mark_finished(api: &Api<Pod>, pod: &str, exit_code: i32) -> Result<Pod, kube::Error> {
    let now = Timestamp::now().to_string();
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    let statuses: Vec<_> = container_names(api, pod)
        .await?
        .iter()
        .map(|c| {
            json!({"name": c, "image": "played", "imageID": "", "ready": false, "restartCount": 0,
                   "started": false, "state": {"terminated": {"exitCode": exit_code, "reason": reason,
                   "startedAt": now, "finishedAt": now}}})
        })
        .collect();
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    let patch = json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
        ],
        "containerStatuses": statuses
    }});
    api.patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch)).await
}

async fn container_names(api: &Api<Pod>, pod: &str) -> Result<Vec<String>, kube::Error> {
    let pod = api.get(pod).await?;
    Ok(pod.spec.map(|s| s.containers.into_iter().map(|c| c.name).collect()).unwrap_or_default())
}

/// Plays every new pod of `namespace` on this node until dropped (the returned task is
/// aborted): Running, renewing its shard's Lease with the worker API when the operator gave it
/// one (progress to 100 units, then a result), and Succeeded after `run_for`.
pub fn play_all(client: Client, namespace: &str, run_for: Duration) -> AbortOnDrop {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("spec.schedulerName={SCHEDULER_NAME}"));
    AbortOnDrop(tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut pods = watcher(api.clone(), config).default_backoff().applied_objects().boxed();
        while let Some(pod) = pods.next().await {
            // A watch error is retried by the watcher (with backoff): play on.
            let Ok(pod) = pod else { continue };
            let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
            if pending && pod.metadata.deletion_timestamp.is_none() && seen.insert(pod.uid().unwrap_or_default()) {
                tokio::spawn(play(api.clone(), pod, run_for));
            }
        }
    }))
}

async fn play(api: Api<Pod>, pod: Pod, run_for: Duration) {
    let name = pod.name_any();
    if mark_running(&api, &name).await.is_err() {
        return;
    }
    match worker_env(&pod) {
        Some(env) => {
            let heartbeat = Heartbeat::start(api.clone().into_client(), &env);
            let steps = run_for.as_secs().max(1);
            for step in 1..=steps {
                tokio::time::sleep(Duration::from_secs(1)).await;
                heartbeat.progress(100 * step / steps, 100, "played");
                if heartbeat.is_fenced() {
                    break;
                }
            }
            let _ = heartbeat.result(json!({"units": 100}));
            heartbeat.stop().await;
        }
        None => tokio::time::sleep(run_for).await,
    }
    let _ = mark_finished(&api, &name, 0).await;
}

/// The heartbeat settings the operator put in the pod's first container, if any.
fn worker_env(pod: &Pod) -> Option<WorkerEnv> {
    let env = pod.spec.as_ref()?.containers.first()?.env.clone().unwrap_or_default();
    let vars: HashMap<String, String> = env.into_iter().filter_map(|v| Some((v.name, v.value?))).collect();
    WorkerEnv::from_lookup(|k| vars.get(k).map(Into::into)).ok().flatten()
}

/// A background task that ends with its owner.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
