//! Proof that the test control plane is real: garbage collection, TokenRequest with RBAC,
//! CEL validation of CRDs, and the built-in Job controller.

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{ConfigMap, Pod, Secret, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams},
};
use serde_json::json;

use crate::support::{
    TestNamespace, WAIT, api_error, client, client_with_token, token, wait_default_service_account, wait_until,
};

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    let cms: Api<ConfigMap> = ns.api();
    let owner = cms.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "owner"}}))).await.unwrap();
    let uid = owner.metadata.uid.unwrap();
    cms.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "dependent", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ]}})),
    )
    .await
    .unwrap();

    cms.delete("owner", &DeleteParams::background()).await.unwrap();
    wait_until("the garbage collector to delete the dependent", WAIT, || async {
        match cms.get_opt("dependent").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn token_request_tokens_authenticate_and_rbac_judges_them() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "token").await;
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = ns.api();
    sas.create(&pp, &from_json(json!({"metadata": {"name": "reader"}}))).await.unwrap();
    ns.api::<Role>()
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": "configmap-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
            })),
        )
        .await
        .unwrap();
    ns.api::<RoleBinding>()
        .create(
            &pp,
            &from_json(json!({
                "metadata": {"name": "reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
            })),
        )
        .await
        .unwrap();

    let as_reader = client_with_token(&token(&client, &ns.name, "reader").await).await;
    let secrets: Api<Secret> = Api::namespaced(as_reader.clone(), &ns.name);
    let refused = secrets.list(&ListParams::default()).await.map(|_| ());
    match api_error(&refused) {
        Some((403, message)) => {
            assert!(message.contains(&format!("system:serviceaccount:{}:reader", ns.name)), "{message}");
        }
        _ => panic!("listing secrets with a configmap-only token should be forbidden, got {refused:?}"),
    }
    // RoleBindings take effect at once, but allow a moment for the authorizer's cache.
    let configmaps: Api<ConfigMap> = Api::namespaced(as_reader, &ns.name);
    wait_until("the token to be allowed to list configmaps", WAIT, || async {
        configmaps.list(&ListParams::default()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
}

#[tokio::test]
async fn crd_cel_rules_refuse_objects_with_the_rule_message() {
    let client = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = from_json(json!({
        "metadata": {"name": "ranges.celtest.nightshift.dev"},
        "spec": {
            "group": "celtest.nightshift.dev",
            "names": {"kind": "Range", "plural": "ranges", "singular": "range", "listKind": "RangeList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "spec.min must not exceed spec.max"}
                    ]
                }}}}
            }]
        }
    }));
    let created = crds.create(&PostParams::default(), &crd).await.map(|_| ());
    // 409: left by an earlier run on the same control plane.
    assert!(
        created.is_ok() || api_error(&created).is_some_and(|(code, _)| code == 409),
        "creating the CRD: {created:?}"
    );
    wait_until("the CRD to be established", WAIT, || async {
        let crd = crds.get("ranges.celtest.nightshift.dev").await.map_err(|e| e.to_string())?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established { Ok(()) } else { Err("not established".into()) }
    })
    .await;

    let ns = TestNamespace::new(&client, "cel").await;
    let gvk = GroupVersionKind::gvk("celtest.nightshift.dev", "v1", "Range");
    let ranges: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &ApiResource::from_gvk_with_plural(&gvk, "ranges"));
    let object = |name: &str, min: i64, max: i64| -> DynamicObject {
        from_json(json!({
            "apiVersion": "celtest.nightshift.dev/v1", "kind": "Range",
            "metadata": {"name": name}, "spec": {"min": min, "max": max}
        }))
    };
    // The discovery of a new CRD takes a moment; retry the good object until it is served.
    wait_until("a valid object to be accepted", WAIT, || async {
        ranges.create(&PostParams::default(), &object("good", 1, 2)).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let refused = ranges.create(&PostParams::default(), &object("bad", 5, 2)).await.map(|_| ());
    match api_error(&refused) {
        Some((422, message)) => assert!(message.contains("spec.min must not exceed spec.max"), "{message}"),
        _ => panic!("an object breaking the CEL rule should be refused, got {refused:?}"),
    }
}

#[tokio::test]
async fn built_in_job_controller_creates_the_pod_of_a_job() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "job").await;
    wait_default_service_account(&ns).await;
    // The pod is only looked at: on the test's node (kwok's, held Pending), off the real node.
    ns.api::<Job>()
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": {"name": "hello"},
                "spec": {"template": crate::support::node::template(json!({
                    "restartPolicy": "Never",
                    "containers": [{"name": "hello", "image": "busybox", "command": ["true"]}]
                }))}
            })),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = ns.api();
    let pod = wait_until("the Job controller to create the job's pod", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=hello"))
            .await
            .map_err(|e| e.to_string())?;
        list.items.into_iter().next().ok_or_else(|| "no pod yet".to_string())
    })
    .await;
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Job", "hello"));
}
