//! What the operator's caches keep of an object: what its decisions read, and no more.

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ContainerState, PodCondition},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use serde::Deserialize;

use super::jobs::observe;

/// Drops managedFields before an object enters a cache: decisions never read them, and they are
/// often half of an object's size (measured: a BackgroundJob is 5.4 KB with them, 2.0 KB without).
pub(super) fn lean<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A worker pod as the operator's cache keeps it: its metadata and the part of its status that
/// decisions read (the pod view, the worker budget, the orphan release). Read straight from the
/// API server's JSON, the rest skipped as it is parsed: a k8s-openapi `Pod` takes 2,464 bytes
/// before any of its content, 1,488 of them the spec's fields (there even when the spec is
/// dropped), and a container's status 752 (its image, ids, resources...); at 100,000 pods that
/// alone was a quarter of a GiB. Only ever read: writes go through `Api<Pod>` by name.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkerPod {
    pub metadata: ObjectMeta,
    pub status: Option<WorkerPodStatus>,
    /// Its shard and attempt, from its labels (which the cache then drops: a map of three labels
    /// takes over 700 bytes, a third of a cached pod); None when they do not say.
    #[serde(skip)]
    pub worker: Option<Worker>,
}

/// Which shard, and which attempt of it, a worker pod runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Worker {
    pub shard: i32,
    pub attempt: i32,
}

impl Worker {
    fn of(meta: &ObjectMeta) -> Option<Self> {
        let labels = meta.labels.as_ref()?;
        let number = |key: &str| labels.get(key)?.parse().ok();
        Some(Worker { shard: number(nightshift_api::LABEL_SHARD)?, attempt: number(nightshift_api::LABEL_ATTEMPT)? })
    }
}

/// The status fields decisions read.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPodStatus {
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Only Ready and DisruptionTarget are kept.
    pub conditions: Option<Vec<PodCondition>>,
    pub container_statuses: Option<Vec<ContainerEnd>>,
    pub init_container_statuses: Option<Vec<ContainerEnd>>,
}

/// A container's name and state (waiting: why; terminated: the exit code and its last words).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ContainerEnd {
    #[serde(default)]
    pub name: String,
    pub state: Option<ContainerState>,
}

impl k8s_openapi::Resource for WorkerPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for WorkerPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Conditions the pod view reads.
const CONDITIONS_READ: [&str; 2] = ["Ready", "DisruptionTarget"];

/// A worker pod on its way into the cache: no managedFields, no annotations (nothing reads a
/// pod's), only the conditions the pod view reads.
pub(super) fn lean_pod(pod: &mut WorkerPod) {
    lean(pod);
    pod.worker = Worker::of(&pod.metadata);
    pod.metadata.labels = None;
    pod.metadata.annotations = None;
    if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        conditions.retain(|c| CONDITIONS_READ.contains(&c.type_.as_str()));
    }
}

/// A Lease as the operator keeps it: of its managedFields only when its renewTime last changed,
/// as the API server stamped it (see [`observe::renewal_stamp`]).
pub(super) fn lean_lease(lease: &mut Lease) {
    let stamp = observe::renewal_stamp(lease);
    lease.metadata.managed_fields = stamp.map(|time| vec![observe::stamp_entry(time)]);
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;
    use nightshift_core::PodPhase;
    use serde_json::json;

    use super::*;
    use crate::controller::jobs::{context::occupies_worker, observe::pod_view, orphans::candidate};

    /// A worker pod as the API server serves it: spec, managedFields, every condition, the
    /// container statuses in full.
    fn served(phase: &str, status: serde_json::Value) -> serde_json::Value {
        let mut status = status;
        status["phase"] = json!(phase);
        status["hostIP"] = json!("10.0.0.1");
        status["qosClass"] = json!("BestEffort");
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "import-2-1", "namespace": "shop", "uid": "u1",
                "labels": {nightshift_api::LABEL_JOB: "import", nightshift_api::LABEL_SHARD: "2", nightshift_api::LABEL_ATTEMPT: "1"},
                "annotations": {"team": "a".repeat(4000)},
                "finalizers": [nightshift_api::FINALIZER_TRACKING],
                "ownerReferences": [{"apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJob", "name": "import", "uid": "j1", "controller": true}],
                "creationTimestamp": "2026-12-05T10:00:00Z",
                "deletionTimestamp": "2026-12-05T10:05:00Z",
                "managedFields": [{"manager": "nightshift", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"containers": [{"name": "w", "image": "importer", "command": ["import", "--all"]}]},
            "status": status
        })
    }

    fn cached(pod: serde_json::Value) -> WorkerPod {
        let mut pod: WorkerPod = serde_json::from_value(pod).expect("a served pod reads as a WorkerPod");
        lean_pod(&mut pod);
        pod
    }

    fn container(state: serde_json::Value) -> serde_json::Value {
        json!({"name": "w", "image": "importer:1", "imageID": "sha256:abc", "containerID": "containerd://x",
               "ready": false, "restartCount": 0, "state": state, "lastState": {}})
    }

    #[test]
    fn the_cache_keeps_what_decisions_read_of_a_failed_pod() {
        let failed = served(
            "Failed",
            json!({
                "conditions": [
                    {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"},
                    {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "evicted"}
                ],
                "containerStatuses": [container(json!({"terminated": {"exitCode": 3, "reason": "Error", "message": "bad row 7"}}))]
            }),
        );
        let pod = cached(failed);
        let view = pod_view(&pod, None).expect("a worker pod");
        assert_eq!((view.shard, view.attempt, view.phase), (2, 1, PodPhase::Failed));
        let failure = view.failure.expect("a failure");
        assert_eq!(
            (failure.reason.as_str(), failure.message.as_str(), failure.exit_code),
            ("Error", "bad row 7", Some(3))
        );
        assert_eq!(view.disruption.map(|d| d.reason).as_deref(), Some("EvictionByEvictionAPI"));
        assert!(view.tracked && view.deletion.is_some() && view.created.is_some());
        // What the budget and the orphan release read.
        assert!(!occupies_worker(&pod) && candidate(&pod));
        assert_eq!(pod.owner_references()[0].uid, "j1");
        // And nothing else.
        assert_eq!((pod.metadata.annotations.as_ref(), pod.metadata.managed_fields.as_ref()), (None, None));
        // Its labels are read once, on the way in, and not kept.
        assert_eq!((pod.worker, pod.metadata.labels.as_ref()), (Some(Worker { shard: 2, attempt: 1 }), None));
        let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).expect("conditions");
        assert_eq!(conditions.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Ready", "DisruptionTarget"]);
    }

    #[test]
    fn the_cache_keeps_why_a_pending_pod_cannot_start_and_a_running_pods_readiness() {
        let waiting = json!({"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}});
        let pending = cached(served("Pending", json!({"initContainerStatuses": [container(waiting)]})));
        let view = pod_view(&pending, None).expect("a worker pod");
        let why = view.cannot_start.expect("cannot start");
        assert_eq!(why.reason, "ImagePullBackOff");
        assert!(why.message.contains("no such image"), "{}", why.message);

        let running = json!({"conditions": [{"type": "Ready", "status": "True"}],
                             "containerStatuses": [container(json!({"running": {"startedAt": "2026-12-05T10:00:01Z"}}))]});
        let view = pod_view(&cached(served("Running", running)), None).expect("a worker pod");
        assert!(view.ready && view.phase == PodPhase::Running && view.failure.is_none());
    }

    #[test]
    fn a_cached_pod_is_less_than_half_a_k8s_openapi_pod() {
        assert!(size_of::<WorkerPod>() * 2 < size_of::<Pod>(), "{} vs {}", size_of::<WorkerPod>(), size_of::<Pod>());
    }
}
