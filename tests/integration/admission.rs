//! The chart's ValidatingAdmissionPolicies (templates/admission-policy.yaml) as the real API server
//! evaluates them: writing a pod template requires the right to create pods, a worker pod's
//! token writes its own shard's Lease only, and an admitted job's template, parameters and after
//! are frozen. The chart is installed with `helm`, as users do.

use k8s_openapi::{
    api::{
        authentication::v1::TokenRequest,
        coordination::v1::Lease,
        core::v1::{Pod, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use nightshift_api::{BackgroundJob, BackgroundJobSchedule, BackgroundJobTemplate};
use nightshift_worker::{Report, renewal_patch};
use serde_json::{Value, json};

use crate::{
    helm::{Release, account_bound_to},
    support::{TestNamespace, WAIT, api_error, client, client_with_token, install_crd, token, wait_until},
};

/// Objects of kind K in `namespace`, written as JSON exactly as given (a typed client would add
/// fields, and a field is what the policy judges).
pub(crate) fn dynamic<K: Resource<DynamicType = ()>>(client: Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &ApiResource::erase::<K>(&()))
}

/// Waits until creating `object` is refused with 403 and a message containing `text`, and returns
/// the message. The API server takes a moment to enforce a new policy and binding: an object
/// accepted before that is deleted and created again.
pub(crate) async fn refused_with(api: &Api<DynamicObject>, object: &Value, text: &str) -> String {
    let name = object["metadata"]["name"].as_str().expect("a name").to_string();
    let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    wait_until(&format!("creating {name} to be refused saying {text:?}"), WAIT, || async {
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                let _ = api.delete(&name, &DeleteParams::default()).await;
                Err("accepted (the policy is not enforced yet?)".to_string())
            }
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(text) => Ok(s.message),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// Waits until creating `object` is accepted (RBAC takes a moment to see a new binding).
async fn accepted(api: &Api<DynamicObject>, object: &Value) {
    let name = object["metadata"]["name"].as_str().expect("a name").to_string();
    let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    wait_until(&format!("creating {name} to be accepted"), WAIT, || async {
        api.create(&PostParams::default(), &object).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
}

fn pod_template() -> Value {
    crate::support::node::template(json!({"containers": [{"name": "w", "image": "w"}]}))
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "nightshift.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

/// A token of `account` bound to `pod`, as the kubelet mounts it: the API server puts the pod's
/// name into the user's extra (authentication.kubernetes.io/pod-name).
async fn token_bound_to(client: &Client, namespace: &str, account: &str, pod: &Pod) -> String {
    let request: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": [], "expirationSeconds": 3600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()}
    }}))
    .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let response = sas.create_token_request(account, &PostParams::default(), &request).await.unwrap();
    response.status.and_then(|s| s.token).expect("a token")
}

/// One renewal as a worker sends it (the agent's JSON patch, fenced on `holder`).
async fn renew(leases: &Api<Lease>, lease: &str, holder: &str) -> kube::Result<Lease> {
    let patch = renewal_patch(holder, Timestamp::now(), &Report::default());
    leases.patch(lease, &PatchParams::default(), &Patch::<()>::Json(patch)).await
}

/// A 403 whose message contains `text`, or a panic naming `what`.
fn assert_refused<T: std::fmt::Debug>(result: kube::Result<T>, text: &str, what: &str) {
    match api_error(&result) {
        Some((403, message)) if message.contains(text) => {}
        _ => panic!("{what} should be refused (403) saying {text:?}: {result:?}"),
    }
}

#[tokio::test]
async fn writing_a_pod_template_requires_the_right_to_create_pods() {
    let client = client().await;
    install_crd(&client).await;
    let ops = TestNamespace::new(&client, "vap-ops").await;
    // Every namespace: the policies are bound cluster-wide (the operator pods stay parked).
    let release = Release::install(&ops, &["--set", "replicas=1"]).await;
    let ns = TestNamespace::new(&client, "vap-app").await;
    account_bound_to(&ns, "app", &format!("{}-edit", release.fullname())).await;
    let app = client_with_token(&token(&client, &ns.name, "app").await).await;
    let (jobs, templates, schedules) = (
        dynamic::<BackgroundJob>(app.clone(), &ns.name),
        dynamic::<BackgroundJobTemplate>(app.clone(), &ns.name),
        dynamic::<BackgroundJobSchedule>(app.clone(), &ns.name),
    );
    let instead = |field: &str| format!("; name a BackgroundJobTemplate in {field} instead");
    let namespace = format!("requires permission to create pods in namespace {}", ns.name);

    // The edit role alone: no inline pod template, in any of the three kinds.
    let inline = object("BackgroundJob", "inline", json!({"template": pod_template()}));
    let message = refused_with(&jobs, &inline, "creating a BackgroundJob").await;
    let want = format!(
        "denied request: creating a BackgroundJob with an inline pod template (spec.template) {namespace}{}",
        instead("spec.templateRef")
    );
    assert!(message.ends_with(&want), "{message}");
    let template = object("BackgroundJobTemplate", "bulk", json!({"template": pod_template()}));
    let message = refused_with(&templates, &template, "creating a BackgroundJobTemplate").await;
    assert!(message.contains(&format!("(spec.template) {namespace}")), "{message}");
    let schedule = |name: &str, job: Value| {
        object("BackgroundJobSchedule", name, json!({"schedule": "0 3 * * *", "jobTemplate": {"spec": job}}))
    };
    let message = refused_with(&schedules, &schedule("nightly", json!({"template": pod_template()})), "creating").await;
    assert!(message.contains(&format!("(spec.jobTemplate.spec.template) {namespace}")), "{message}");
    assert!(message.ends_with(&instead("spec.jobTemplate.spec.templateRef")), "{message}");

    // Naming a template is enough for a job and a schedule.
    dynamic::<BackgroundJobTemplate>(client.clone(), &ns.name)
        .create(&PostParams::default(), &serde_json::from_value(template).unwrap())
        .await
        .expect("the admin writes the template");
    let by_ref = json!({"templateRef": {"name": "bulk"}, "parameters": {"UPLOAD_ID": "42"}});
    accepted(&jobs, &object("BackgroundJob", "templated", by_ref.clone())).await;
    accepted(&schedules, &schedule("nightly", by_ref)).await;

    // A job the admin wrote: suspending it leaves its template as it was and passes; changing
    // the template does not.
    let admin_jobs = dynamic::<BackgroundJob>(client.clone(), &ns.name);
    admin_jobs.create(&PostParams::default(), &serde_json::from_value(inline.clone()).unwrap()).await.unwrap();
    jobs.patch("inline", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}})))
        .await
        .expect("suspending a job whose template does not change");
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "w", "image": "other"}]}}}});
    let changed = jobs.patch("inline", &PatchParams::default(), &Patch::Merge(image)).await;
    assert_refused(changed, "changing the inline pod template (spec.template) of a BackgroundJob", "a new image");
    admin_jobs.delete("inline", &DeleteParams::default()).await.unwrap();

    // The operator's own writes pass: its account may create pods. A job created from a schedule's
    // inline jobTemplate is this create, by the operator's token.
    let operator = client_with_token(&token(&client, &ops.name, &release.fullname()).await).await;
    accepted(
        &dynamic::<BackgroundJob>(operator, &ns.name),
        &object("BackgroundJob", "scheduled", json!({"template": pod_template()})),
    )
    .await;

    // With the right to create pods, the same job is accepted.
    let role = json!({"metadata": {"name": "pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]});
    ns.api::<Role>().create(&PostParams::default(), &serde_json::from_value(role).unwrap()).await.unwrap();
    let binding = json!({"metadata": {"name": "pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns.name}]});
    ns.api::<RoleBinding>().create(&PostParams::default(), &serde_json::from_value(binding).unwrap()).await.unwrap();
    accepted(&jobs, &inline).await;
}

#[tokio::test]
async fn a_worker_pods_token_writes_its_own_shards_lease_only() {
    let client = client().await;
    install_crd(&client).await;
    let ops = TestNamespace::new(&client, "vap-lease-ops").await;
    let _release = Release::install(&ops, &["--set", "replicas=1"]).await;
    let ns = TestNamespace::new(&client, "vap-lease").await;
    // Job x's worker account, allowed (by RBAC) to update all its Leases, as the operator's Role does.
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "x-worker"}})).unwrap())
        .await
        .unwrap();
    let role = json!({"metadata": {"name": "x-worker"}, "rules": [{"apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"], "resourceNames": ["x-1", "x-10"], "verbs": ["get", "update", "patch"]}]});
    ns.api::<Role>().create(&PostParams::default(), &serde_json::from_value(role).unwrap()).await.unwrap();
    let binding = json!({"metadata": {"name": "x-worker"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x-worker"},
        "subjects": [{"kind": "ServiceAccount", "name": "x-worker", "namespace": ns.name}]});
    ns.api::<RoleBinding>().create(&PostParams::default(), &serde_json::from_value(binding).unwrap()).await.unwrap();
    // Shard 1's and shard 10's Leases and pods (parked: no node runs them), as the operator makes them.
    let admin_leases: Api<Lease> = ns.api();
    for shard in [1, 10] {
        let lease = json!({"metadata": {"name": format!("x-{shard}"),
            "labels": {"nightshift.dev/job": "x", "nightshift.dev/shard": shard.to_string()},
            "annotations": {"nightshift.dev/shard": shard.to_string()}},
            "spec": {"holderIdentity": format!("x-{shard}-1")}});
        admin_leases.create(&PostParams::default(), &serde_json::from_value(lease).unwrap()).await.unwrap();
    }
    let mut pod = crate::support::node::template(json!({"serviceAccountName": "x-worker",
        "containers": [{"name": "w", "image": "w"}]}));
    pod["metadata"]["name"] = json!("x-1-1");
    let pod = ns.api::<Pod>().create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();
    let worker = client_with_token(&token_bound_to(&client, &ns.name, "x-worker", &pod).await).await;
    let leases: Api<Lease> = Api::namespaced(worker, &ns.name);

    // Its own Lease: renewed. Shard 10's, which RBAC allows and whose name starts with "x-1":
    // refused by the policy, which may take a moment to be enforced.
    wait_until("shard 1's pod to renew its own Lease", WAIT, || async {
        renew(&leases, "x-1", "x-1-1").await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    wait_until("shard 10's Lease to be refused to shard 1's pod", WAIT, || async {
        match api_error(&renew(&leases, "x-10", "x-10-1").await) {
            Some((403, m)) if m.contains("may write only the Lease of its own shard") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let merge = |patch: Value| {
        let leases = leases.clone();
        async move { leases.patch("x-1", &PatchParams::default(), &Patch::Merge(patch)).await }
    };
    let shard = merge(json!({"metadata": {"annotations": {"nightshift.dev/shard": "10"}}})).await;
    assert_refused(shard, "may not change the labels, the ownerReferences or the nightshift.dev/shard", "the shard");
    let label = merge(json!({"metadata": {"labels": {"nightshift.dev/job": "y"}}})).await;
    assert_refused(label, "may not change the labels", "the job label");
    let holder = merge(json!({"spec": {"holderIdentity": "x-1-2"}})).await;
    assert_refused(holder, "worker pod x-1-1 may not change spec.holderIdentity of Lease x-1", "a new holder");

    // The operator starts attempt 2: attempt 1's token is fenced by the server, whatever it sends.
    admin_leases
        .patch("x-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"holderIdentity": "x-1-2"}})))
        .await
        .unwrap();
    let stale = merge(json!({"metadata": {"annotations": {"nightshift.dev/result": "{\"forged\": true}"}}})).await;
    assert_refused(stale, "Lease x-1 is held by x-1-2, not by worker pod x-1-1", "a superseded attempt");
    let lease = admin_leases.get("x-1").await.unwrap();
    assert!(!lease.annotations().contains_key("nightshift.dev/result"), "{:?}", lease.annotations());
}

/// Shard workers that report progress, then wait for /scratch/done (bounded: 300 s).
const WAITING_WORKER: &str = "echo '::nightshift:: progress 1/2 waiting'; i=0; \
    while [ ! -e /scratch/done ] && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done; \
    echo '::nightshift:: progress 2/2 done'";

/// On the real node, with the chart's operator running in the cluster (its own pod-bound token):
/// an account with the edit role alone starts a job from a template (the operator writes the
/// template into it, past the pod-template policy); the injected agents renew their Leases past
/// the Lease policy; shard 1's mounted token is refused on shard 0's Lease, which its Role allows.
#[tokio::test]
async fn on_the_node_a_workers_mounted_token_renews_its_own_lease_and_not_its_siblings() {
    use nightshift_api::Phase;
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "vap-node").await;
    crate::support::wait_default_service_account(&ns).await;
    let values = format!("replicas=1,statusFoldSeconds=1,watchNamespaces={{{}}}", ns.name);
    let release = Release::install_running(&ns, &["--set", &values]).await;
    let template = object(
        "BackgroundJobTemplate",
        "pair",
        json!({
            "shards": 2, "workers": {"min": 1, "max": 2}, "retry": {"limit": 0},
            "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 30, "injectAgent": true},
            "template": {"spec": {
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "worker", "image": crate::node::example_image(),
                    "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", WAITING_WORKER],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]
            }}
        }),
    );
    dynamic::<BackgroundJobTemplate>(client.clone(), &ns.name)
        .create(&PostParams::default(), &serde_json::from_value(template).unwrap())
        .await
        .unwrap();
    account_bound_to(&ns, "app", &format!("{}-edit", release.fullname())).await;
    let app = client_with_token(&token(&client, &ns.name, "app").await).await;
    let job = object("BackgroundJob", "pair", json!({"templateRef": {"name": "pair"}}));
    accepted(&dynamic::<BackgroundJob>(app, &ns.name), &job).await;

    // Both workers run and their progress reaches the status: the agents' renewals passed.
    let jobs: Api<BackgroundJob> = ns.api();
    let status =
        || async { jobs.get_status("pair").await.map_err(|e| e.to_string()).map(|j| j.status.unwrap_or_default()) };
    wait_until("both shards' progress in the status", WAIT * 2, || async {
        let s = status().await?;
        let reported = s.active.iter().filter(|a| a.progress.as_ref().is_some_and(|p| p.done == 1)).count();
        if reported == 2 { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;

    // Shard 1's own mounted token, read inside its container.
    let path = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    let (code, token, err) =
        crate::support::kubectl(&ns.name, &["exec", "pair-1-1", "-c", "worker", "--", "cat", path], "").await;
    assert_eq!(code, 0, "{err}");
    let leases: Api<Lease> = Api::namespaced(client_with_token(token.trim()).await, &ns.name);
    renew(&leases, "pair-1", "pair-1-1").await.expect("shard 1's token renews shard 1's Lease");
    let sibling = renew(&leases, "pair-0", "pair-0-1").await;
    assert_refused(sibling, "worker pod pair-1-1 may write only the Lease of its own shard", "shard 0's Lease");
    let role = ns.api::<Role>().get("pair-worker").await.unwrap();
    let names = role.rules.unwrap_or_default().into_iter().flat_map(|r| r.resource_names.unwrap_or_default());
    assert!(names.collect::<Vec<_>>().contains(&"pair-0".to_string()), "RBAC alone would allow it");

    // The workers end: the job succeeds, each shard's final report accepted.
    for pod in ["pair-0-1", "pair-1-1"] {
        let (code, _, err) =
            crate::support::kubectl(&ns.name, &["exec", pod, "-c", "worker", "--", "touch", "/scratch/done"], "").await;
        assert_eq!(code, 0, "{err}");
    }
    let done = wait_until("the job to succeed", WAIT * 2, || async {
        let s = status().await?;
        if s.phase == Some(Phase::Succeeded) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    assert_eq!(done.shards.map(|s| (s.succeeded, s.failed)), Some((2, 0)));
}

#[tokio::test]
async fn template_parameters_and_after_are_frozen_once_the_job_is_admitted() {
    let client = client().await;
    install_crd(&client).await;
    let ops = TestNamespace::new(&client, "vap-frozen-ops").await;
    let _release = Release::install(&ops, &["--set", "replicas=1"]).await;
    let ns = TestNamespace::new(&client, "vap-frozen").await;
    let jobs: Api<BackgroundJob> = ns.api();
    let job = object("BackgroundJob", "frozen", json!({"shards": 2, "template": pod_template()}));
    jobs.create(&PostParams::default(), &serde_json::from_value(job).unwrap()).await.expect("creating the job");
    let pp = PatchParams::default();
    let image = |tag: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": "w", "image": tag}]}}}});

    // Before admission the user may still change their mind.
    let changed = jobs.patch("frozen", &pp, &Patch::Merge(image("w:2"))).await;
    let changed = changed.expect("changing spec.template of a job not yet admitted");
    assert_eq!(changed.spec.pod_template().spec.unwrap().containers[0].image.as_deref(), Some("w:2"));

    // Admit it, as the controller does: a status write, which the policy does not judge.
    let start = json!({"status": {"startTime": Time(Timestamp::now())}});
    let admitted = jobs.patch_status("frozen", &pp, &Patch::Merge(start)).await.expect("setting status.startTime");
    assert!(admitted.status.and_then(|s| s.start_time).is_some(), "status.startTime is stored");

    // The API server takes a moment to enforce a new policy: a dry run changes nothing meanwhile.
    let new_image = Patch::Merge(image("w:3"));
    let message = wait_until("changing the template of an admitted job to be refused", WAIT, || async {
        match api_error(&jobs.patch("frozen", &PatchParams::default().dry_run(), &new_image).await) {
            Some((422, message)) => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        message.ends_with("spec.template cannot change once the job is admitted (status.startTime is set)"),
        "{message}"
    );
    for (field, patch) in [
        ("template", image("w:3")),
        ("template", json!({"spec": {"template": {"metadata": {"labels": {"team": "catalog"}}}}})),
        ("parameters", json!({"spec": {"parameters": {"UPLOAD_ID": "7"}}})),
        ("after", json!({"spec": {"after": ["earlier"]}})),
    ] {
        let refused = jobs.patch("frozen", &pp, &Patch::Merge(patch.clone())).await;
        match api_error(&refused) {
            Some((422, message)) => assert!(message.contains(&format!("spec.{field} cannot change")), "{message}"),
            _ => panic!("{patch} on an admitted job must be refused with 422, got {refused:?}"),
        }
    }

    // The policy freezes only those: the rest of the spec stays editable, and status writes pass.
    let suspended = jobs
        .patch("frozen", &pp, &Patch::Merge(json!({"spec": {"suspend": true, "workers": {"max": 2}}})))
        .await
        .expect("suspend and workers may change after admission");
    assert!(suspended.spec.suspend);
    let template = suspended.spec.pod_template();
    assert_eq!(template.spec.unwrap().containers[0].image.as_deref(), Some("w:2"));
    assert!(template.metadata.and_then(|m| m.labels).is_none());
    assert!(suspended.spec.after.is_empty() && suspended.spec.parameters.is_empty());
    jobs.patch_status("frozen", &pp, &Patch::Merge(json!({"status": {"observedGeneration": 9}})))
        .await
        .expect("a status write of an admitted job");
}
