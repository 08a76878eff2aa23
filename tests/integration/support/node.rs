//! The tests' node, where no kubelet runs the pods: kwok's fake node `kwok-node` (started by
//! tests/cluster/cluster.sh beside the real node), with the stages of
//! tests/cluster/kwok-steered.yaml, through which the test chooses each pod's outcome.
//!
//! A pod template goes there by [`place`]: a node selector for the fake node and a toleration of
//! its taint (kube-scheduler binds the pods there, as to any node; no other pod lands there), and
//! the annotation [`PHASE`] = Pending, which keeps kwok's own stages away: the pod stays Pending
//! until the test sets [`PHASE`] ([`mark_running`], [`mark_finished`]), and kwok writes its status
//! as a kubelet would. Each mark waits (bounded) until kwok has. [`play_all`] plays every pod of a
//! namespace, renewing its shard's Lease as the worker would: that is the worker's part, not the
//! node's, so the test does it. The benchmark's pods run on the same fake node with kwok.yaml's
//! stages (no [`PHASE`] annotation).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, wait::await_condition, watcher},
};
use nightshift_worker::{Heartbeat, WorkerEnv};
use serde_json::{Value, json};

use super::WAIT;

/// The fake node kwok plays.
pub const NODE: &str = "kwok-node";
/// The pod annotation a test steers kwok with: Pending, Running, Succeeded or Failed.
pub const PHASE: &str = "kwok.nightshift.dev/phase";
/// The exit code of a pod's containers when [`PHASE`] is Failed (kwok's default: 1).
pub const EXIT_CODE: &str = "kwok.nightshift.dev/exit-code";

/// Puts a pod template (`{"metadata": ..., "spec": ...}`) on the fake node, held Pending for the
/// test: the node selector `type: kwok` (unless the template has one), a toleration of the node's
/// taint, and [`PHASE`] = Pending (unless set).
pub fn place(template: &mut Value) {
    let annotations = &mut template["metadata"]["annotations"];
    if annotations.get(PHASE).is_none() {
        annotations[PHASE] = json!("Pending");
    }
    let spec = &mut template["spec"];
    if spec.get("nodeSelector").is_none() {
        spec["nodeSelector"] = json!({"type": "kwok"});
    }
    if spec.get("tolerations").is_none() {
        spec["tolerations"] = json!([]);
    }
    let toleration = json!({"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"});
    spec["tolerations"].as_array_mut().expect("tolerations is a list").push(toleration);
}

/// A pod template with this pod spec, [`place`]d on the fake node.
pub fn template(spec: Value) -> Value {
    let mut template = json!({"spec": spec});
    place(&mut template);
    template
}

/// Makes a pod Running and Ready, as a kubelet would once its containers started.
pub async fn mark_running(api: &Api<Pod>, pod: &str) -> Result<Pod, kube::Error> {
    steer(api, pod, "Running", None).await
}

/// Makes a pod finish with this exit code: Succeeded for 0, Failed otherwise.
pub async fn mark_finished(api: &Api<Pod>, pod: &str, exit_code: i32) -> Result<Pod, kube::Error> {
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    steer(api, pod, phase, Some(exit_code)).await
}

/// Asks kwok for `phase` and waits until kwok wrote it (once kube-scheduler has bound the pod),
/// or the pod is being deleted or gone: then returns the pod as it is, or the API's 404. Fails
/// the test when kwok has not within [`WAIT`].
async fn steer(api: &Api<Pod>, pod: &str, phase: &str, exit_code: Option<i32>) -> Result<Pod, kube::Error> {
    let annotations = json!({PHASE: phase, EXIT_CODE: exit_code.map(|c| c.to_string())});
    api.patch(pod, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": annotations}}))).await?;
    let done =
        |p: Option<&Pod>| p.is_none_or(|p| phase_of(p) == Some(phase) || p.metadata.deletion_timestamp.is_some());
    match tokio::time::timeout(WAIT, await_condition(api.clone(), pod, done)).await {
        Ok(Ok(_)) => api.get(pod).await,
        Ok(Err(e)) => panic!("watching pod {pod} for kwok to make it {phase}: {e}"),
        Err(_) => {
            let now = api.get(pod).await.map(|p| (p.spec.and_then(|s| s.node_name), p.status));
            panic!("kwok did not make pod {pod} {phase} within {WAIT:?}; (node, status): {now:?}")
        }
    }
}

fn phase_of(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Plays every new pod of `namespace` on this node until dropped (the returned task is
/// aborted): Running, renewing its shard's Lease with the worker API when the operator gave it
/// one (progress to 100 units, then a result), and Succeeded after `run_for`.
pub fn play_all(client: Client, namespace: &str, run_for: Duration) -> AbortOnDrop {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    // Bound pods only: kwok plays a pod once kube-scheduler has bound it.
    let config = watcher::Config::default().fields(&format!("spec.nodeName={NODE}"));
    AbortOnDrop(tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut pods = watcher(api.clone(), config).default_backoff().applied_objects().boxed();
        while let Some(pod) = pods.next().await {
            // A watch error is retried by the watcher (with backoff): play on.
            let Ok(pod) = pod else { continue };
            let held = pod.annotations().get(PHASE).is_some_and(|p| p == "Pending");
            if held && pod.metadata.deletion_timestamp.is_none() && seen.insert(pod.uid().unwrap_or_default()) {
                tokio::spawn(play(api.clone(), pod, run_for));
            }
        }
    }))
}

async fn play(api: Api<Pod>, pod: Pod, run_for: Duration) {
    let name = pod.name_any();
    if !mark_running(&api, &name).await.is_ok_and(|p| phase_of(&p) == Some("Running")) {
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
