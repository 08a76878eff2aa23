//! Builds a worker pod from a job's template: deterministic name, labels, owner reference,
//! tracking finalizer and the NIGHTSHIFT_* environment. Pure: no client here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod, PodSpec};
use kube::{Resource, ResourceExt, api::ObjectMeta};

use crate::api::{self, BackgroundJob};

/// The worker pod of one attempt of one shard: `JOB-SHARD-ATTEMPT`. Deterministic, so creating
/// it twice (after a crash) is an AlreadyExists, never a second pod.
pub fn pod_name(job: &str, shard: i32, attempt: i32) -> String {
    format!("{job}-{shard}-{attempt}")
}

/// The pod for `shard`, attempt `attempt` of `job`.
pub fn worker_pod(job: &BackgroundJob, shard: i32, attempt: i32) -> Pod {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let template = &job.spec.template;
    let tmeta = template.metadata.clone().unwrap_or_default();

    let mut labels: BTreeMap<String, String> = tmeta.labels.unwrap_or_default();
    labels.insert(api::LABEL_JOB.into(), name.clone());
    labels.insert(api::LABEL_SHARD.into(), shard.to_string());
    labels.insert(api::LABEL_ATTEMPT.into(), attempt.to_string());

    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    spec.restart_policy = Some("Never".into());
    let pod = pod_name(&name, shard, attempt);
    let env = [
        (api::env::JOB, name.clone()),
        (api::env::NAMESPACE, namespace.clone()),
        (api::env::SHARD, shard.to_string()),
        (api::env::SHARDS, job.spec.shards.to_string()),
        (api::env::ATTEMPT, attempt.to_string()),
        (api::env::POD, pod.clone()),
    ];
    for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        let vars = container.env.get_or_insert_with(Vec::new);
        // Ours win over a same-named variable in the template: the worker relies on them.
        vars.retain(|v| !env.iter().any(|(k, _)| v.name == *k));
        vars.extend(env.iter().map(|(k, v)| EnvVar {
            name: (*k).into(),
            value: Some(v.clone()),
            ..Default::default()
        }));
    }

    Pod {
        metadata: ObjectMeta {
            name: Some(pod),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: job.controller_owner_ref(&()).map(|r| vec![r]),
            finalizers: Some(vec![api::FINALIZER_TRACKING.into()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> BackgroundJob {
        let mut job: BackgroundJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJob",
            "metadata": {"name": "import", "namespace": "shop", "uid": "u-1"},
            "spec": {"shards": 4, "template": {
                "metadata": {"labels": {"app": "importer"}},
                "spec": {"restartPolicy": "Never", "containers": [
                    {"name": "w", "image": "importer", "env": [{"name": "NIGHTSHIFT_SHARD", "value": "spoofed"}]}
                ]}
            }}
        }))
        .unwrap();
        job.metadata.uid = Some("u-1".into());
        job
    }

    #[test]
    fn pod_carries_identity_owner_finalizer_and_environment() {
        let pod = worker_pod(&job(), 2, 3);
        assert_eq!(pod.metadata.name.as_deref(), Some("import-2-3"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["app"], "importer");
        assert_eq!(labels[api::LABEL_SHARD], "2");
        assert_eq!(labels[api::LABEL_ATTEMPT], "3");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("BackgroundJob", "u-1", Some(true)));
        assert_eq!(pod.metadata.finalizers.unwrap(), vec![api::FINALIZER_TRACKING.to_string()]);
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        let get = |k: &str| env.iter().filter(|v| v.name == k).map(|v| v.value.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(get("NIGHTSHIFT_SHARD"), vec!["2"]);
        assert_eq!(get("NIGHTSHIFT_SHARDS"), vec!["4"]);
        assert_eq!(get("NIGHTSHIFT_ATTEMPT"), vec!["3"]);
        assert_eq!(get("NIGHTSHIFT_NAMESPACE"), vec!["shop"]);
    }
}
