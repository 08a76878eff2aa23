//! A pod simulator that plays the node where no kubelet should (the local cluster, `make run`,
//! tests, the benchmark): it moves worker pods to Running, then to Succeeded or Failed.
//!
//! It plays only pods whose `spec.schedulerName` is [`SCHEDULER_NAME`]: kube-scheduler leaves
//! them alone, so no kubelet runs them, while pods meant for a real node never reach the
//! simulator. A job for the simulator says so in its pod template
//! (`spec.template.spec.schedulerName: nightshift-simulator`); a pod without a scheduler name
//! gets kube-scheduler's (`default-scheduler`) and is not played.
//!
//! A pod's template can steer it with annotations:
//! - `sim.nightshift.dev/run-seconds`: how long it "runs" (default: the simulator's setting);
//! - `sim.nightshift.dev/exit-code`: its exit code (default 0);
//! - `sim.nightshift.dev/fail-attempts`: attempts up to this number exit with code 1 (so a
//!   shard fails, is retried and then succeeds);
//! - `sim.nightshift.dev/work-units`: for a job with heartbeats, the simulator also plays the
//!   worker: it renews the shard's Lease with the crate's worker API and reports progress
//!   through this many units (default 100) over the run, then a result.

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
use serde_json::json;
use tracing::{info, warn};

use nightshift_api as api;

use nightshift_worker::{Heartbeat, WorkerEnv};

/// The `spec.schedulerName` of pods the simulator plays. No scheduler of that name exists:
/// kube-scheduler schedules only pods that name it (or none), so these pods are never bound to
/// a real node and no kubelet fights the simulator over their status; and the simulator
/// watches only pods with this name, so it never plays a pod a kubelet runs.
pub const SCHEDULER_NAME: &str = "nightshift-simulator";

pub const ANNOTATION_RUN_SECONDS: &str = "sim.nightshift.dev/run-seconds";
pub const ANNOTATION_EXIT_CODE: &str = "sim.nightshift.dev/exit-code";
pub const ANNOTATION_FAIL_ATTEMPTS: &str = "sim.nightshift.dev/fail-attempts";
pub const ANNOTATION_WORK_UNITS: &str = "sim.nightshift.dev/work-units";

/// Marks a pod Running and Ready, as a kubelet would once its containers started.
pub async fn mark_running(api: &Api<Pod>, pod: &str) -> Result<Pod, kube::Error> {
    let now = Timestamp::now().to_string();
    let containers = container_names(api, pod).await?;
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| {
            json!({"name": c, "image": "simulated", "imageID": "", "ready": true, "restartCount": 0,
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
    let containers = container_names(api, pod).await?;
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    let statuses: Vec<_> = containers
        .iter()
        .map(|c| {
            json!({"name": c, "image": "simulated", "imageID": "", "ready": false, "restartCount": 0,
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

/// The heartbeat settings the operator put in the pod's first container, if any.
fn worker_env(pod: &Pod) -> Option<WorkerEnv> {
    let env = pod.spec.as_ref()?.containers.first()?.env.clone().unwrap_or_default();
    let vars: HashMap<String, String> = env.into_iter().filter_map(|v| Some((v.name, v.value?))).collect();
    WorkerEnv::from_lookup(|k| vars.get(k).map(Into::into)).ok().flatten()
}

async fn container_names(api: &Api<Pod>, pod: &str) -> Result<Vec<String>, kube::Error> {
    let pod = api.get(pod).await?;
    Ok(pod.spec.map(|s| s.containers.into_iter().map(|c| c.name).collect()).unwrap_or_default())
}

/// Plays the node for every worker pod in `namespace` (all when None) until the process ends:
/// each new pod runs for `run_for` (or its annotation) and then exits.
/// `selector` picks the pods (a label selector; `nightshift.dev/job` for nightshift's workers,
/// `batch.kubernetes.io/job-name` for the built-in Job controller's); of those, only the pods
/// with `spec.schedulerName` [`SCHEDULER_NAME`] are played.
pub async fn simulate(client: Client, namespace: Option<String>, selector: &str, run_for: Duration) {
    let api: Api<Pod> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut seen: HashSet<String> = HashSet::new();
    let config = watcher::Config::default().labels(selector).fields(&format!("spec.schedulerName={SCHEDULER_NAME}"));
    let mut pods = watcher(api, config).default_backoff().applied_objects().boxed();
    info!(
        "pod simulator started: pods with schedulerName {SCHEDULER_NAME} run {}s unless annotated",
        run_for.as_secs()
    );
    while let Some(pod) = pods.next().await {
        let Ok(pod) = pod else { continue };
        let key =
            format!("{}/{}/{}", pod.namespace().unwrap_or_default(), pod.name_any(), pod.uid().unwrap_or_default());
        let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
        if !pending || pod.metadata.deletion_timestamp.is_some() || seen.contains(&key) {
            continue;
        }
        seen.insert(key);
        let client = client.clone();
        tokio::spawn(async move { play(client, pod, run_for).await });
    }
}

async fn play(client: Client, pod: Pod, run_for: Duration) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let annotations = pod.annotations();
    let number = |key: &str| annotations.get(key).and_then(|v| v.parse::<i64>().ok());
    let run_for = number(ANNOTATION_RUN_SECONDS).map(|s| Duration::from_secs(s.max(0) as u64)).unwrap_or(run_for);
    let attempt: i64 = pod.labels().get(api::LABEL_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(1);
    let exit_code = if number(ANNOTATION_FAIL_ATTEMPTS).is_some_and(|n| attempt <= n) {
        1
    } else {
        number(ANNOTATION_EXIT_CODE).unwrap_or(0) as i32
    };
    if let Err(e) = mark_running(&api, &name).await {
        warn!(pod = %name, error = %e, "simulator: could not start pod");
        return;
    }
    match worker_env(&pod) {
        Some(env) => {
            // Play the worker too: heartbeats and progress through the run.
            let units = number(ANNOTATION_WORK_UNITS).unwrap_or(100).max(1) as u64;
            let heartbeat = Heartbeat::start(api.clone().into_client(), &env);
            let steps = run_for.as_secs().max(1);
            for step in 1..=steps {
                tokio::time::sleep(Duration::from_secs(1)).await;
                heartbeat.progress(units * step / steps, units, &format!("unit {} of {units}", units * step / steps));
                if heartbeat.is_fenced() {
                    break;
                }
            }
            let _ = heartbeat.result(json!({"units": units, "errors": []}));
            heartbeat.stop().await;
        }
        None => tokio::time::sleep(run_for).await,
    }
    match mark_finished(&api, &name, exit_code).await {
        Ok(_) => info!(namespace = %ns, pod = %name, exit_code, "simulator: pod finished"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => warn!(pod = %name, error = %e, "simulator: could not finish pod"),
    }
}
