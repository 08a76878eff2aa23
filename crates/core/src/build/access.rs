//! What a job's workers need besides their pods, as the operator writes them: the Lease of each
//! shard, and the ServiceAccount, Role and RoleBinding that let a worker touch only its job's
//! Leases. All of it is owned by the job and goes with it; the controller claims and applies
//! them (`controller::jobs::access`).

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use nightshift_api::BackgroundJob;

/// The Lease a shard's worker heartbeats on: `JOB-SHARD`, one per shard, whatever the attempt.
pub fn lease_name(job: &str, shard: i32) -> String {
    format!("{job}-{shard}")
}

/// The ServiceAccount, Role and RoleBinding of a job's workers: `JOB-worker`.
pub fn worker_account(job: &str) -> String {
    format!("{job}-worker")
}

/// Shard `shard`'s Lease pointed at `pod`, the attempt starting now, with what the previous
/// attempt reported cleared. The checkpoint annotations are not in it, so applying it keeps them.
pub fn lease(job: &BackgroundJob, shard: i32, pod: &str, now: Timestamp) -> Value {
    let name = job.name_any();
    let timeout =
        job.spec.heartbeat.as_ref().map_or(nightshift_api::DEFAULT_HEARTBEAT_TIMEOUT_SECONDS, |h| h.timeout_seconds);
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(&name, shard),
            "labels": {nightshift_api::LABEL_JOB: name, nightshift_api::LABEL_SHARD: shard.to_string()},
            "annotations": {
                nightshift_api::ANNOTATION_SHARD: shard.to_string(),
                nightshift_api::ANNOTATION_PROGRESS: "",
                nightshift_api::ANNOTATION_PROGRESS_MESSAGE: "",
                nightshift_api::ANNOTATION_RESULT: "",
            },
            "ownerReferences": [job.controller_owner_ref(&())],
        },
        "spec": {
            "holderIdentity": pod,
            "leaseDurationSeconds": timeout,
            "acquireTime": MicroTime(now),
        }
    })
}

/// The checkpoint a new attempt resumes from, read from its shard's Lease once it points at
/// the attempt: none when empty; `Err(size)` when it is longer than [`nightshift_api::MAX_CHECKPOINT_BYTES`]
/// (the attempt then starts without it).
pub fn resumed_checkpoint(lease: &Lease) -> Result<Option<String>, usize> {
    match lease.annotations().get(nightshift_api::ANNOTATION_CHECKPOINT).filter(|c| !c.is_empty()) {
        Some(c) if c.len() > nightshift_api::MAX_CHECKPOINT_BYTES => Err(c.len()),
        checkpoint => Ok(checkpoint.cloned()),
    }
}

/// The objects that let a job's workers touch its Leases, all named [`worker_account`].
pub struct WorkerAccess {
    pub name: String,
    /// The workers' ServiceAccount; none when the pod template names its own.
    pub service_account: Option<Value>,
    /// get, update and patch on this job's Leases only.
    pub role: Value,
    /// The Role bound to the workers' ServiceAccount (the template's own, if it names one).
    pub binding: Value,
}

/// A job's [`WorkerAccess`].
pub fn worker_access(job: &BackgroundJob) -> WorkerAccess {
    let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
    let account = worker_account(&name);
    let owner = job.controller_owner_ref(&());
    let labels = json!({nightshift_api::LABEL_JOB: name});
    let named = job.spec.pod_template().spec.and_then(|s| s.service_account_name).filter(|s| !s.is_empty());
    let service_account = named.is_none().then(|| {
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "labels": labels, "ownerReferences": [owner]},
        })
    });
    let leases: Vec<String> = (0..job.spec.shards).map(|s| lease_name(&name, s)).collect();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": account, "labels": labels, "ownerReferences": [owner]},
        "rules": [{
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": leases,
            "verbs": ["get", "update", "patch"],
        }],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": account, "labels": labels, "ownerReferences": [owner]},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": named.unwrap_or(account.clone()), "namespace": ns}],
    });
    WorkerAccess { name: account, service_account, role, binding }
}
