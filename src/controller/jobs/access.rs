//! Writes what a job's workers need besides their pods (built by `decision::build::access`): the
//! Lease of each shard, and the ServiceAccount, Role and RoleBinding that let a worker touch only
//! its job's Leases. All of it is owned by the job and goes with it.
//!
//! Their names come from the job's (`JOB-SHARD`, `JOB-worker`), so an object of that name may
//! already be someone else's: another app's Lease, a Role with other rules. Each is therefore
//! created, and only one this job controls is applied over; any other is left untouched and
//! reported as [`NotOwned`] (the job then starts no worker, see `decision::Refusal::NotOwned`).

use std::fmt::Debug;

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::ServiceAccount,
        rbac::v1::{Role, RoleBinding},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tracing::warn;

use nightshift_api::BackgroundJob;

use nightshift_core::build::access::{self, lease_name};

/// An object of the name the job's workers need that this job does not control.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotOwned {
    pub kind: String,
    pub name: String,
    /// Its controller, "Kind name", if it has one.
    pub controller: Option<String>,
}

impl NotOwned {
    /// For the job's WorkersBlocked condition and its event.
    pub fn message(&self) -> String {
        let whose = match &self.controller {
            Some(c) => format!("it is controlled by {c}"),
            None => "it has no controller".into(),
        };
        format!(
            "{} {} exists and belongs to something else ({whose}, not this job): nightshift leaves it untouched and starts no worker; delete or rename it, or give the job another name",
            self.kind, self.name
        )
    }
}

/// Creates `object` (named `name`); if one of that name exists, applies `object` over it only
/// when `owner` (a uid) controls it. The inner Err: it exists and is someone else's.
pub async fn claim<K>(api: &Api<K>, owner: &str, name: &str, object: &Value) -> Result<Result<K, NotOwned>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let typed: K = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
    let params = PostParams { field_manager: Some(nightshift_api::MANAGER.into()), ..Default::default() };
    match api.create(&params, &typed).await {
        Ok(created) => return Ok(Ok(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let existing = api.get(name).await?;
    let controller = existing.owner_references().iter().find(|o| o.controller == Some(true));
    if controller.is_none_or(|c| c.uid != owner) {
        let controller = controller.map(|c| format!("{} {}", c.kind, c.name));
        return Ok(Err(NotOwned { kind: K::kind(&()).into_owned(), name: name.into(), controller }));
    }
    apply_over(api, name, object, &existing).await.map(Ok)
}

/// Applies `object` over `existing`, this job's, with its uid as a precondition: should it have
/// been replaced by someone else's since it was read, the API server refuses the apply.
pub async fn apply_over<K>(api: &Api<K>, name: &str, object: &Value, existing: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let mut object = object.clone();
    object["metadata"]["uid"] = json!(existing.meta().uid);
    api.patch(name, &apply_params(), &Patch::Apply(&object)).await
}

fn apply_params() -> PatchParams {
    PatchParams::apply(nightshift_api::MANAGER).force()
}

/// Points shard `shard`'s Lease at `pod`, the attempt starting now, and clears what the
/// previous attempt reported but its checkpoint, which it returns: the new attempt resumes from
/// it. From this write on, the previous attempt is fenced, so no later checkpoint of its can
/// land: the one returned is the last. `ours`: the Lease as the cache shows it, when this job
/// controls it (it is applied over at once; otherwise it is claimed).
pub async fn apply_lease(
    client: &Client,
    job: &BackgroundJob,
    shard: i32,
    pod: &str,
    now: Timestamp,
    ours: Option<&Lease>,
) -> Result<Result<Option<String>, NotOwned>, kube::Error> {
    let lease_name = lease_name(&job.name_any(), shard);
    let lease = access::lease(job, shard, pod, now);
    let api: Api<Lease> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    // The checkpoint annotations are not in the applied object, so the apply keeps them.
    let applied = match ours {
        // Already this attempt's: a repeated create (its pod not seen yet, or gone without our
        // finalizer) must not clear the progress and result the attempt reported.
        Some(existing) if existing.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(pod) => {
            existing.clone()
        }
        Some(existing) => apply_over(&api, &lease_name, &lease, existing).await?,
        None => match claim(&api, &job.uid().unwrap_or_default(), &lease_name, &lease).await? {
            Ok(lease) => lease,
            Err(not_owned) => return Ok(Err(not_owned)),
        },
    };
    match access::resumed_checkpoint(&applied) {
        Ok(checkpoint) => Ok(Ok(checkpoint)),
        Err(size) => {
            warn!(
                lease = lease_name,
                size,
                "the checkpoint in the Lease is longer than {} bytes; the next attempt starts without it",
                nightshift_api::MAX_CHECKPOINT_BYTES
            );
            Ok(Ok(None))
        }
    }
}

/// The workers' ServiceAccount (unless the template names its own), a Role allowing get,
/// update and patch on this job's Leases only, and the binding between them; each claimed, so
/// the first that is someone else's stops it (Err inside).
pub async fn apply_account(client: &Client, job: &BackgroundJob) -> Result<Result<(), NotOwned>, kube::Error> {
    let (ns, uid) = (job.namespace().unwrap_or_default(), job.uid().unwrap_or_default());
    let access = access::worker_access(job);
    if let Some(sa) = &access.service_account {
        let api = Api::<ServiceAccount>::namespaced(client.clone(), &ns);
        if let Err(not_owned) = claim(&api, &uid, &access.name, sa).await? {
            return Ok(Err(not_owned));
        }
    }
    let api = Api::<Role>::namespaced(client.clone(), &ns);
    if let Err(not_owned) = claim(&api, &uid, &access.name, &access.role).await? {
        return Ok(Err(not_owned));
    }
    let api = Api::<RoleBinding>::namespaced(client.clone(), &ns);
    Ok(claim(&api, &uid, &access.name, &access.binding).await?.map(|_| ()))
}
