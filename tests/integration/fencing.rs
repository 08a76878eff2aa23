//! Status writes are fenced on the version they were decided from (issue 22, parts 0 and 5): the
//! very body the operator sends (`controller::fenced_status`) is refused by the API server once
//! the object has changed, so a paused former leader or a decision from a stale cache cannot
//! overwrite a newer status. For both kinds whose status the operator writes.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use nightshift::controller::fenced_status;
use nightshift_api::{BackgroundJob, BackgroundJobSchedule};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::support::{TestNamespace, api_error, client, install_crd, job_fixture};

/// Creates `object`, writes `first` onto it, then `stale` decided from the version before that
/// write: the second is refused with 409 and the status stays `first`.
async fn a_stale_write_is_refused<K>(api: Api<K>, object: K, first: serde_json::Value, stale: serde_json::Value)
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams { field_manager: Some(nightshift_api::MANAGER.into()), ..PatchParams::default() };
    let created = api.create(&PostParams::default(), &object).await.unwrap();
    let name = created.name_any();
    api.patch_status(&name, &params, &Patch::<()>::Json(fenced_status(&created, &first))).await.unwrap();
    let refused = api.patch_status(&name, &params, &Patch::<()>::Json(fenced_status(&created, &stale))).await;
    let (code, message) =
        api_error(&refused).unwrap_or_else(|| panic!("a stale status write went through: {refused:?}"));
    assert_eq!(code, 409, "{message}");
    let now = serde_json::to_value(api.get(&name).await.unwrap()).unwrap();
    for (field, value) in first.as_object().unwrap() {
        assert_eq!(&now["status"][field], value, "status.{field} after the refused write: {now}");
    }
}

#[tokio::test]
async fn a_status_decided_from_an_older_version_is_refused() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "fencing").await;
    let spec = json!({"shards": 2, "template": {"spec": {"restartPolicy": "Never",
                       "containers": [{"name": "w", "image": "busybox"}]}}});
    let job: BackgroundJob = job_fixture::job("fenced", spec).build();
    let finished = json!({"phase": "Succeeded", "succeededShards": "0-1", "result": {"imported": 7000}});
    let stale = json!({"phase": "Running", "succeededShards": "0", "result": {"imported": 3500}});
    a_stale_write_is_refused(ns.api::<BackgroundJob>(), job, finished, stale).await;

    let schedule: BackgroundJobSchedule = serde_json::from_value(json!({
        "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJobSchedule",
        "metadata": {"name": "fenced"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"templateRef": {"name": "t"}}}}
    }))
    .unwrap();
    let newer = json!({"lastScheduleTime": "2026-12-05T10:01:00Z"});
    let older = json!({"lastScheduleTime": "2026-12-05T10:00:00Z"});
    a_stale_write_is_refused(ns.api::<BackgroundJobSchedule>(), schedule, newer, older).await;
}
