//! Builds a worker pod from a job's template: deterministic name, labels, owner reference,
//! tracking finalizer and the NIGHTSHIFT_* environment. Pure: no client here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod, PodSpec};
use kube::{Resource, ResourceExt, api::ObjectMeta};

use super::access::{lease_name, worker_account};
use nightshift_api::BackgroundJob;

/// The worker pod of one attempt of one shard: `JOB-SHARD-ATTEMPT`. Deterministic, so creating
/// it twice (after a crash) is an AlreadyExists, never a second pod.
pub fn pod_name(job: &str, shard: i32, attempt: i32) -> String {
    format!("{job}-{shard}-{attempt}")
}

/// Where the agent binary is in the operator's image, and where the init container puts it.
pub const AGENT_IN_IMAGE: &str = "/nightshift";
pub const AGENT_DIR: &str = "/nightshift-agent";
const AGENT_VOLUME: &str = "nightshift-agent";

/// The pod for `shard`, attempt `attempt` of `job`. `agent_image` is the image the agent is
/// copied from when the job asks for injection; `checkpoint`, the one the shard's last attempt
/// saved.
pub fn worker_pod(
    job: &BackgroundJob,
    shard: i32,
    attempt: i32,
    agent_image: Option<&str>,
    checkpoint: Option<&str>,
) -> Pod {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let pod_template = job.spec.pod_template();
    let (labels, annotations) =
        labels_and_annotations(pod_template.metadata.unwrap_or_default(), &name, shard, attempt);

    let mut spec: PodSpec = pod_template.spec.unwrap_or_default();
    spec.restart_policy = Some("Never".into());
    let pod = pod_name(&name, shard, attempt);
    let params: Vec<(String, String)> = job
        .spec
        .parameters
        .iter()
        .map(|(k, v)| (format!("{}{k}", nightshift_api::env::PARAM_PREFIX), v.clone()))
        .collect();
    let mut env = vec![
        (nightshift_api::env::JOB, name.clone()),
        (nightshift_api::env::NAMESPACE, namespace.clone()),
        (nightshift_api::env::SHARD, shard.to_string()),
        (nightshift_api::env::SHARDS, job.spec.shards.to_string()),
        (nightshift_api::env::ATTEMPT, attempt.to_string()),
        (nightshift_api::env::POD, pod.clone()),
    ];
    match &job.spec.heartbeat {
        Some(hb) => {
            env.push((nightshift_api::env::LEASE, lease_name(&name, shard)));
            env.push((nightshift_api::env::HEARTBEAT_INTERVAL_SECONDS, hb.interval_seconds.to_string()));
            if let Some(checkpoint) = checkpoint {
                env.push((nightshift_api::env::CHECKPOINT, checkpoint.to_string()));
            }
            // Least privilege: the job's own account, which may touch only its Leases, unless the
            // template names one (which is then bound to the same Role).
            if spec.service_account_name.as_deref().unwrap_or("").is_empty() {
                spec.service_account_name = Some(worker_account(&name));
            }
            if hb.inject_agent
                && let Some(image) = agent_image
            {
                inject_agent(&mut spec, image);
            }
        }
        None => {
            // Workers that need not heartbeat need no API access at all.
            if spec.service_account_name.as_deref().unwrap_or("").is_empty()
                && spec.automount_service_account_token.is_none()
            {
                spec.automount_service_account_token = Some(false);
            }
        }
    }
    // A worker that fails says why in its last lines: they become its termination message (and
    // the failure's message in the status), unless the template chose otherwise.
    for container in spec.containers.iter_mut() {
        container.termination_message_policy.get_or_insert_with(|| "FallbackToLogsOnError".into());
    }
    set_env(&mut spec, &env, &params);

    Pod {
        metadata: ObjectMeta {
            name: Some(pod),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: job.controller_owner_ref(&()).map(|r| vec![r]),
            finalizers: Some(vec![nightshift_api::FINALIZER_TRACKING.into()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The pod template's labels and annotations, and ours: the job, shard and attempt labels, and the
/// annotations that keep autoscalers away.
fn labels_and_annotations(
    pod_meta: ObjectMeta,
    name: &str,
    shard: i32,
    attempt: i32,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels: BTreeMap<String, String> = pod_meta.labels.unwrap_or_default();
    labels.insert(nightshift_api::LABEL_JOB.into(), name.to_string());
    labels.insert(nightshift_api::LABEL_SHARD.into(), shard.to_string());
    labels.insert(nightshift_api::LABEL_ATTEMPT.into(), attempt.to_string());
    // A worker holds work that is lost if it is taken away: autoscalers should leave its node
    // alone while it runs (unless the template says otherwise). Disruptions that happen anyway
    // cost no retry (see `decision::jobs::book`).
    let mut annotations: BTreeMap<String, String> = pod_meta.annotations.unwrap_or_default();
    for (key, value) in nightshift_api::DO_NOT_DISRUPT {
        annotations.entry(key.into()).or_insert_with(|| value.into());
    }
    (labels, annotations)
}

/// Sets the NIGHTSHIFT_* variables and the job's parameters in every container, init ones too.
fn set_env(spec: &mut PodSpec, env: &[(&str, String)], params: &[(String, String)]) {
    for container in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        let vars = container.env.get_or_insert_with(Vec::new);
        // Ours win over a same-named variable in the template: the worker relies on them.
        let ours = env.iter().map(|(k, v)| (*k, v)).chain(params.iter().map(|(k, v)| (k.as_str(), v)));
        vars.retain(|v| !ours.clone().any(|(k, _)| v.name == k));
        vars.extend(ours.map(|(k, v)| EnvVar { name: k.into(), value: Some(v.clone()), ..Default::default() }));
    }
}

/// Copies the agent in with an init container and wraps the first container's command with it.
fn inject_agent(spec: &mut PodSpec, image: &str) {
    use k8s_openapi::api::core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, SeccompProfile, SecurityContext, Volume, VolumeMount,
    };
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: AGENT_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    let mount = |read_only| VolumeMount {
        name: AGENT_VOLUME.into(),
        mount_path: AGENT_DIR.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    spec.init_containers.get_or_insert_with(Vec::new).insert(
        0,
        Container {
            name: "nightshift-agent".into(),
            image: Some(image.into()),
            command: Some(vec![AGENT_IN_IMAGE.into(), "install-agent".into(), AGENT_DIR.into()]),
            volume_mounts: Some(vec![mount(false)]),
            // Passes the restricted Pod Security level on its own.
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    // When fenced, the agent gives the command what the kubelet would on a delete: SIGTERM, and
    // the pod's grace period (Kubernetes' default: 30 s) before SIGKILL.
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    if let Some(worker) = spec.containers.first_mut() {
        let mut command = vec![
            format!("{AGENT_DIR}/nightshift"),
            "agent".into(),
            "--grace-seconds".into(),
            grace.to_string(),
            "--".into(),
        ];
        command.extend(worker.command.take().unwrap_or_default());
        command.extend(worker.args.take().unwrap_or_default());
        worker.command = Some(command);
        worker.volume_mounts.get_or_insert_with(Vec::new).push(mount(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nightshift_api::job_fixture;

    fn job() -> BackgroundJob {
        let spec = serde_json::json!({"shards": 4, "template": {
            "metadata": {"labels": {"app": "importer"}},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "w", "image": "importer", "env": [{"name": "NIGHTSHIFT_SHARD", "value": "spoofed"}]}
            ]}
        }});
        let mut job: BackgroundJob =
            job_fixture::job("import", spec).namespace("shop").metadata("uid", serde_json::json!("u-1")).build();
        job.metadata.uid = Some("u-1".into());
        job
    }

    #[test]
    fn pod_carries_identity_owner_finalizer_and_environment() {
        let pod = worker_pod(&job(), 2, 3, None, None);
        assert_eq!(pod.metadata.name.as_deref(), Some("import-2-3"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["app"], "importer");
        assert_eq!(labels[nightshift_api::LABEL_SHARD], "2");
        assert_eq!(labels[nightshift_api::LABEL_ATTEMPT], "3");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("BackgroundJob", "u-1", Some(true)));
        assert_eq!(pod.metadata.finalizers.unwrap(), vec![nightshift_api::FINALIZER_TRACKING.to_string()]);
        let env = pod.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        let get = |k: &str| env.iter().filter(|v| v.name == k).map(|v| v.value.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(get("NIGHTSHIFT_SHARD"), vec!["2"]);
        assert_eq!(get("NIGHTSHIFT_SHARDS"), vec!["4"]);
        assert_eq!(get("NIGHTSHIFT_ATTEMPT"), vec!["3"]);
        assert_eq!(get("NIGHTSHIFT_NAMESPACE"), vec!["shop"]);
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(container.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
    }

    #[test]
    fn parameters_become_prefixed_variables_of_every_container() {
        let mut j = job();
        j.spec.parameters = [("file".to_string(), "uploads/7.csv".to_string()), ("BATCH".into(), "500".into())].into();
        let mut template = j.spec.pod_template();
        let spec = template.spec.as_mut().unwrap();
        spec.containers[0].env.as_mut().unwrap().push(EnvVar {
            name: "NIGHTSHIFT_PARAM_BATCH".into(),
            value: Some("spoofed".into()),
            ..Default::default()
        });
        spec.init_containers = Some(vec![spec.containers[0].clone()]);
        j.spec.template = Some(template.into());
        let pod = worker_pod(&j, 0, 1, None, None);
        let spec = pod.spec.unwrap();
        for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let env = container.env.clone().unwrap();
            let get =
                |k: &str| env.iter().filter(|v| v.name == k).map(|v| v.value.clone().unwrap()).collect::<Vec<_>>();
            assert_eq!(get("NIGHTSHIFT_PARAM_file"), ["uploads/7.csv"], "the key as written");
            assert_eq!(get("NIGHTSHIFT_PARAM_BATCH"), ["500"], "the job's value wins over the template's variable");
        }
    }

    #[test]
    fn pods_ask_autoscalers_to_leave_them_unless_the_template_says_otherwise() {
        let annotations = worker_pod(&job(), 0, 1, None, None).metadata.annotations.unwrap();
        assert_eq!(annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"], "false");
        assert_eq!(annotations["karpenter.sh/do-not-disrupt"], "true");
        let mut j = job();
        let mut template = j.spec.pod_template();
        let evictable = [("cluster-autoscaler.kubernetes.io/safe-to-evict".to_string(), "true".to_string())];
        template.metadata.get_or_insert_default().annotations = Some(evictable.into());
        j.spec.template = Some(template.into());
        let annotations = worker_pod(&j, 0, 1, None, None).metadata.annotations.unwrap();
        assert_eq!(annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"], "true", "the template's word wins");
        assert_eq!(annotations["karpenter.sh/do-not-disrupt"], "true");
    }

    #[test]
    fn pod_keeps_the_templates_scheduler_name() {
        let mut j = job();
        let mut template = j.spec.pod_template();
        template.spec.as_mut().unwrap().scheduler_name = Some("custom-scheduler".into());
        j.spec.template = Some(template.into());
        let spec = worker_pod(&j, 0, 1, None, None).spec.unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("custom-scheduler"));
        assert_eq!(worker_pod(&job(), 0, 1, None, None).spec.unwrap().scheduler_name, None);
    }
}

#[cfg(test)]
mod heartbeat_tests {
    use super::*;
    use nightshift_api::job_fixture;

    fn job(heartbeat: serde_json::Value, account: Option<&str>) -> BackgroundJob {
        let mut spec = serde_json::json!({"restartPolicy": "Never", "containers": [
            {"name": "w", "image": "importer", "command": ["python", "-m", "importer"], "args": ["--fast"]}
        ]});
        if let Some(a) = account {
            spec["serviceAccountName"] = a.into();
        }
        let spec = serde_json::json!({"shards": 4, "heartbeat": heartbeat, "template": {"spec": spec}});
        let mut job: BackgroundJob =
            job_fixture::job("import", spec).namespace("shop").metadata("uid", serde_json::json!("u-1")).build();
        job.metadata.uid = Some("u-1".into());
        job
    }

    #[test]
    fn heartbeat_jobs_get_their_lease_and_account() {
        let pod =
            worker_pod(&job(serde_json::json!({"intervalSeconds": 5, "timeoutSeconds": 20}), None), 1, 1, None, None);
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("import-worker"));
        let env = spec.containers[0].env.clone().unwrap();
        let get = |k: &str| env.iter().find(|v| v.name == k).and_then(|v| v.value.clone());
        assert_eq!(get("NIGHTSHIFT_LEASE").as_deref(), Some("import-1"));
        assert_eq!(get("NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS").as_deref(), Some("5"));
        assert_eq!(get("NIGHTSHIFT_CHECKPOINT"), None);
        let resumed = worker_pod(&job(serde_json::json!({"timeoutSeconds": 20}), None), 1, 2, None, Some("row=250"));
        let env = resumed.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(env.iter().any(|v| v.name == "NIGHTSHIFT_CHECKPOINT" && v.value.as_deref() == Some("row=250")));
    }

    #[test]
    fn a_named_account_is_kept() {
        let pod = worker_pod(&job(serde_json::json!({"timeoutSeconds": 20}), Some("mine")), 0, 1, None, None);
        assert_eq!(pod.spec.unwrap().service_account_name.as_deref(), Some("mine"));
    }

    #[test]
    fn workers_without_heartbeats_get_no_token() {
        let mut j = job(serde_json::json!({"timeoutSeconds": 20}), None);
        j.spec.heartbeat = None;
        let spec = worker_pod(&j, 0, 1, None, None).spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.service_account_name, None);
    }

    #[test]
    fn injection_wraps_the_command_with_the_agent() {
        let j = job(serde_json::json!({"timeoutSeconds": 20, "injectAgent": true}), None);
        let spec = worker_pod(&j, 0, 1, Some("nightshift:0.1.0"), None).spec.unwrap();
        let init = &spec.init_containers.unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("nightshift:0.1.0"));
        assert_eq!(init.command.clone().unwrap(), ["/nightshift", "install-agent", "/nightshift-agent"]);
        let worker = &spec.containers[0];
        assert_eq!(
            worker.command.clone().unwrap(),
            [
                "/nightshift-agent/nightshift",
                "agent",
                "--grace-seconds",
                "30",
                "--",
                "python",
                "-m",
                "importer",
                "--fast"
            ]
        );
        assert_eq!(worker.args, None);
        assert_eq!(spec.volumes.unwrap()[0].name, "nightshift-agent");
    }
}
