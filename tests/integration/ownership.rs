//! Objects that only share a name with what a job or a schedule would make are never taken
//! over: another app's Lease keeps its holder, a Role its rules, neither gains an owner (which
//! would let the garbage collector delete it with the job); a user's job named like a
//! scheduled run is neither deleted nor counted as the run. The job or schedule says why.

use k8s_openapi::{
    api::{coordination::v1::Lease, rbac::v1::Role},
    jiff::{SignedDuration, Timestamp, tz::TimeZone},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use nightshift_api::{
    ANNOTATION_SCHEDULED_AT, BackgroundJob, BackgroundJobSchedule, BackgroundJobStatus, LABEL_SCHEDULE,
    reasons::ConditionType,
};
use serde_json::json;

use crate::support::{Fixture, WAIT, fixture, job_fixture, kubectl, node, wait_until};

/// A job with heartbeats: it needs a Lease per shard and its workers' RBAC.
fn heartbeat_job() -> serde_json::Value {
    json!({"shards": 2, "heartbeat": {"intervalSeconds": 5, "timeoutSeconds": 60}})
}

/// Waits for the job's WorkersBlocked condition with reason ObjectNotOwned; returns its message.
async fn wait_not_owned(f: &Fixture, job: &str) -> String {
    wait_until(&format!("{job} to say an object is not its own"), WAIT, || async {
        let status: BackgroundJobStatus = f.status(job).await;
        let blocked = status.conditions.iter().find(|c| c.type_ == ConditionType::WorkersBlocked.as_str());
        match blocked {
            Some(c) if c.status == "True" && c.reason == "ObjectNotOwned" => Ok(c.message.clone()),
            _ => Err(format!("{status:?}")),
        }
    })
    .await
}

#[tokio::test]
async fn someone_elses_lease_and_role_are_left_untouched_and_the_job_says_why() {
    let (f, _operator) = fixture("not-owned").await;
    let leases: Api<Lease> = f.ns.api();
    let roles: Api<Role> = f.ns.api();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "leased-0", "labels": {"app": "other"}},
        "spec": {"holderIdentity": "other-app-7", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]);
    let role: Role =
        serde_json::from_value(json!({"metadata": {"name": "ruled-worker"}, "rules": rules.clone()})).unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();

    f.create("leased", heartbeat_job()).await;
    f.create("ruled", heartbeat_job()).await;
    let message = wait_not_owned(&f, "leased").await;
    assert!(message.starts_with("Lease leased-0 exists and belongs to something else"), "{message}");
    let message = wait_not_owned(&f, "ruled").await;
    assert!(message.starts_with("Role ruled-worker exists and belongs to something else"), "{message}");
    f.wait_event("leased", "ObjectNotOwned", "Lease leased-0").await;
    f.wait_event("ruled", "ObjectNotOwned", "Role ruled-worker").await;
    assert!(f.all_pods("leased").await.is_empty() && f.all_pods("ruled").await.is_empty(), "no worker started");

    let lease = leases.get("leased-0").await.unwrap();
    assert_eq!(lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), Some("other-app-7"));
    assert!(lease.owner_references().is_empty(), "{:?}", lease.owner_references());
    assert_eq!(lease.labels().len(), 1, "{:?}", lease.labels());
    let role = roles.get("ruled-worker").await.unwrap();
    assert_eq!(serde_json::to_value(&role.rules).unwrap(), rules);
    assert!(role.owner_references().is_empty(), "{:?}", role.owner_references());

    // The job waits, and starts once the name is free (after the 30 s pause of its next try).
    leases.delete("leased-0", &DeleteParams::default()).await.unwrap();
    wait_until("leased to start its workers once the Lease is gone", WAIT, || async {
        let pods = f.live_pods("leased").await.len();
        if pods == 2 { Ok(()) } else { Err(format!("{pods} live pods")) }
    })
    .await;
    let lease = leases.get("leased-0").await.unwrap();
    assert_eq!(lease.owner_references()[0].name, "leased", "now the job's own");
}

/// A schedule run daily at the minute an hour ago (so no minute boundary is waited for), with
/// Replace. Its own active job of two hours ago would be replaced by that run, whose name a
/// user's job has: the run is skipped, and both jobs stay as they are.
#[tokio::test]
async fn a_users_job_named_like_a_run_is_never_deleted_nor_counted() {
    let (f, _operator) = fixture("sched-not-owned").await;
    let schedules: Api<BackgroundJobSchedule> = f.ns.api();
    let now = Timestamp::now();
    let minute =
        |ago: i64| Timestamp::from_second((now - SignedDuration::from_hours(ago)).as_second() / 60 * 60).unwrap();
    let (run, earlier) = (minute(1), minute(2));
    let at = run.to_zoned(TimeZone::UTC);
    let manifest = format!(
        "apiVersion: nightshift.dev/v1alpha1\nkind: BackgroundJobSchedule\nmetadata: {{name: refresh}}\n\
         spec:\n  schedule: \"{} {} * * *\"\n  concurrencyPolicy: Replace\n  suspend: true\n  jobTemplate:\n    spec:\n      \
         template: {}\n",
        at.minute(),
        at.hour(),
        node::template(json!({"containers": [{"name": "w", "image": "registry.example/w:1"}]}))
    );
    let (code, out, err) = kubectl(&f.ns.name, &["apply", "-f", "-"], &manifest).await;
    assert_eq!(code, 0, "kubectl apply: {out}{err}");
    let schedule = schedules.get("refresh").await.unwrap();

    // The schedule's own run of two hours ago, still running.
    let own_name = format!("refresh-{}", earlier.as_second() / 60);
    let spec =
        json!({"template": node::template(json!({"containers": [{"name": "w", "image": "registry.example/w:1"}]}))});
    let mut own: BackgroundJob = job_fixture::job(&own_name, spec)
        .metadata("labels", json!({LABEL_SCHEDULE: "refresh"}))
        .metadata("annotations", json!({ANNOTATION_SCHEDULED_AT: earlier.to_string()}))
        .build();
    own.metadata.owner_references = Some(vec![schedule.controller_owner_ref(&()).unwrap()]);
    f.jobs.create(&PostParams::default(), &own).await.unwrap();
    // The user's job, named as the run due now.
    let users = format!("refresh-{}", run.as_second() / 60);
    f.create(&users, json!({"shards": 1})).await;

    let status = json!({"status": {"lastScheduleTime": earlier.to_string()}});
    schedules.patch_status("refresh", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    schedules
        .patch("refresh", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}})))
        .await
        .unwrap();

    let status = wait_until("the schedule to say the run's name is taken", WAIT, || async {
        let s = schedules.get_status("refresh").await.unwrap().status.unwrap_or_default();
        match s.conditions.iter().find(|c| c.type_ == "Scheduling") {
            Some(c) if c.reason == "ObjectNotOwned" => Ok(s.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let condition = status.conditions.iter().find(|c| c.type_ == "Scheduling").unwrap();
    assert_eq!(condition.status, "False");
    assert!(condition.message.starts_with(&format!("BackgroundJob {users} exists and belongs to something else")));
    f.wait_event("refresh", "ObjectNotOwned", &users).await;
    assert_eq!(status.last_schedule_time.map(|t| t.0), Some(run), "the run counts as passed");
    // Not counted as the run; the own job not replaced; the user's job untouched.
    let active: Vec<&str> = status.active.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(active, [own_name.as_str()]);
    for name in [&own_name, &users] {
        let job = f.jobs.get(name).await.unwrap();
        assert!(job.metadata.deletion_timestamp.is_none(), "{name} is being deleted");
    }
    assert!(f.jobs.get(&users).await.unwrap().owner_references().is_empty());
    assert!(!f.events("refresh").await.iter().any(|(r, _)| r == "SuccessfulDelete" || r == "SuccessfulCreate"));
}
