//! What a job's workers need besides their pods, applied with server-side apply: the Lease of
//! each shard, and the ServiceAccount, Role and RoleBinding that let a worker touch only its
//! job's Leases. All of it is owned by the job and goes with it.

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::ServiceAccount,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tracing::warn;

use crate::{
    api::{self, BackgroundJob},
    decision::pod::{lease_name, worker_account},
};

fn apply_params() -> PatchParams {
    PatchParams::apply(api::MANAGER).force()
}

/// Points shard `shard`'s Lease at `pod`, the attempt starting now, and clears what the
/// previous attempt reported but its checkpoint, which it returns: the new attempt resumes from
/// it. From this write on, the previous attempt is fenced, so no later checkpoint of its can
/// land: the one returned is the last.
pub async fn apply_lease(
    client: &Client,
    job: &BackgroundJob,
    shard: i32,
    pod: &str,
    now: Timestamp,
) -> Result<Option<String>, kube::Error> {
    let name = job.name_any();
    let lease_name = lease_name(&name, shard);
    let timeout = job.spec.heartbeat.as_ref().map(|h| h.timeout_seconds).unwrap_or(40);
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name,
            "labels": {api::LABEL_JOB: name, api::LABEL_SHARD: shard.to_string()},
            "annotations": {
                api::ANNOTATION_SHARD: shard.to_string(),
                api::ANNOTATION_PROGRESS: "",
                api::ANNOTATION_PROGRESS_MESSAGE: "",
                api::ANNOTATION_RESULT: "",
            },
            "ownerReferences": [job.controller_owner_ref(&())],
        },
        "spec": {
            "holderIdentity": pod,
            "leaseDurationSeconds": timeout,
            "acquireTime": MicroTime(now),
        }
    });
    let api: Api<Lease> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    // The checkpoint annotations are not in the applied object, so the apply keeps them.
    let applied = api.patch(&lease_name, &apply_params(), &Patch::Apply(&lease)).await?;
    let checkpoint = applied.annotations().get(api::ANNOTATION_CHECKPOINT).filter(|c| !c.is_empty());
    match checkpoint {
        Some(c) if c.len() > api::MAX_CHECKPOINT_BYTES => {
            warn!(
                lease = lease_name,
                size = c.len(),
                "the checkpoint in the Lease is longer than {} bytes; the next attempt starts without it",
                api::MAX_CHECKPOINT_BYTES
            );
            Ok(None)
        }
        checkpoint => Ok(checkpoint.cloned()),
    }
}

/// The workers' ServiceAccount (unless the template names its own), a Role allowing get,
/// update and patch on this job's Leases only, and the binding between them.
pub async fn apply_account(client: &Client, job: &BackgroundJob) -> Result<(), kube::Error> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let account = worker_account(&name);
    let owner = job.controller_owner_ref(&());
    let labels = json!({api::LABEL_JOB: name});
    let named = job.spec.pod_template().spec.and_then(|s| s.service_account_name).filter(|s| !s.is_empty());
    if named.is_none() {
        let sa = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "labels": labels, "ownerReferences": [owner]},
        });
        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .patch(&account, &apply_params(), &Patch::Apply(&sa))
            .await?;
    }
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
    Api::<Role>::namespaced(client.clone(), &ns).patch(&account, &apply_params(), &Patch::Apply(&role)).await?;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": account, "labels": labels, "ownerReferences": [owner]},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": named.unwrap_or(account.clone()), "namespace": ns}],
    });
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .patch(&account, &apply_params(), &Patch::Apply(&binding))
        .await?;
    Ok(())
}
