//! Commands that change jobs: `suspend`, `resume`, `cancel`, `rerun` and `submit`.

use kube::{
    ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::{Error, Outcome, Target, watch};
use nightshift_api::{BackgroundJob, BackgroundJobSpec, GROUP, Ranges, crd::MAX_NAME_LENGTH};

/// Label on a job made by `rerun`: the job it reruns.
pub const LABEL_RERUN_OF: &str = "nightshift.dev/rerun-of";

/// `suspend` (on) or `resume` (off): one patch of spec.suspend, and what it does in one line.
pub async fn suspend(target: &Target, name: &str, on: bool) -> Result<Outcome, Error> {
    let what = if on { "suspend" } else { "resume" };
    patch_spec(target, name, what, json!({"suspend": on})).await?;
    if on {
        println!(
            "backgroundjob.{GROUP}/{name} suspended: its workers get SIGTERM and their grace period to checkpoint; \
             progress is kept (kubectl nightshift resume {name})"
        );
    } else {
        println!(
            "backgroundjob.{GROUP}/{name} resumed: its unfinished shards run again, each from its last checkpoint"
        );
    }
    Ok(Outcome::Done)
}

/// `cancel`: spec.cancel, which the operator turns into a Failed job with reason Cancelled.
pub async fn cancel(target: &Target, name: &str) -> Result<Outcome, Error> {
    patch_spec(target, name, "cancel", json!({"cancel": true})).await?;
    println!(
        "backgroundjob.{GROUP}/{name} cancelled: its workers get SIGTERM and it ends Failed with reason Cancelled; \
         its status stays (kubectl delete backgroundjob {name} removes it)"
    );
    Ok(Outcome::Done)
}

/// Merges `spec` into the job's spec, unless the job has ended (nothing to `what` then).
async fn patch_spec(target: &Target, name: &str, what: &str, spec: serde_json::Value) -> Result<(), Error> {
    let job = target.job(name).await?;
    if let Some(phase) = job.status.as_ref().and_then(|s| s.phase).filter(|p| p.is_finished()) {
        return Err(Error::Input(format!("backgroundjob {name:?} has already ended ({phase}): nothing to {what}")));
    }
    target
        .namespaced::<BackgroundJob>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&json!({"spec": spec})))
        .await
        .map_err(|e| Error::from_kube(e, target))?;
    Ok(())
}

/// `rerun`: a new job like the ended one, with only the shards that did not succeed
/// (`failed_only`) or all of its shards, linked to it by a label. Prints the new job's name.
pub async fn rerun(target: &Target, name: &str, failed_only: bool, wait: bool) -> Result<Outcome, Error> {
    let job = target.job(name).await?;
    let phase = job.status.as_ref().and_then(|s| s.phase);
    if !phase.is_some_and(|p| p.is_finished()) {
        let phase = phase.map(|p| p.to_string()).unwrap_or_else(|| "not started".into());
        return Err(Error::Input(format!(
            "backgroundjob {name:?} is {phase}: rerun it once it has ended (kubectl nightshift cancel {name} ends it now)"
        )));
    }
    let rerun = rerun_of(&job, failed_only).map_err(Error::Input)?;
    let created = target
        .namespaced::<BackgroundJob>()
        .create(&PostParams::default(), &rerun)
        .await
        .map_err(|e| Error::from_kube(e, target))?;
    let new = created.name_any();
    println!("{new}");
    if !wait {
        return Ok(Outcome::Done);
    }
    watch::watch(target, &[new], false).await
}

/// The job that reruns `job` (pure): its spec, with `onlyShards` set to the shards that did not
/// succeed when `failed_only`, neither suspended nor cancelled; named after it, and labelled.
pub fn rerun_of(job: &BackgroundJob, failed_only: bool) -> Result<BackgroundJob, String> {
    let name = job.name_any();
    let mut only_shards = job.spec.only_shards.clone();
    if failed_only {
        let limit = job.spec.shards;
        let run = match &job.spec.only_shards {
            Some(only) => Ranges::parse(only),
            None => Ranges::parse(&format!("0-{}", limit - 1)),
        };
        let succeeded = Ranges::from_opt(job.status.as_ref().and_then(|s| s.succeeded_shards.as_ref()));
        let left: Ranges = run.iter().take_while(|&s| s < limit).filter(|&s| !succeeded.contains(s)).collect();
        if left.is_empty() {
            return Err(format!("backgroundjob {name:?}: every shard succeeded; nothing to rerun with --failed"));
        }
        only_shards = Some(left.to_string());
    }
    let mut labels = job.labels().clone();
    labels.insert(LABEL_RERUN_OF.into(), name.clone());
    // generateName adds 5 characters; the name must leave room for the pods' suffixes.
    let base = format!("{}-rerun-", nightshift_api::truncate(&name, MAX_NAME_LENGTH - 5 - "-rerun-".len()));
    Ok(BackgroundJob {
        metadata: ObjectMeta {
            generate_name: Some(base),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: None,
            ..Default::default()
        },
        spec: BackgroundJobSpec { only_shards, suspend: false, cancel: false, ..job.spec.clone() },
        status: None,
    })
}

pub struct Submit {
    pub file: String,
    pub name: Option<String>,
    pub generate_name: bool,
    pub set: Vec<String>,
    pub wait: bool,
}

/// Creates the job and prints its name at once; with `wait`, watches it to its end.
pub async fn submit(target: &Target, s: Submit) -> Result<Outcome, Error> {
    let text = if s.file == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| Error::Input(format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(&s.file).map_err(|e| Error::Input(format!("reading {}: {e}", s.file)))?
    };
    let manifest = manifest(&text, &s).map_err(|e| Error::Input(format!("{}: {e}", s.file)))?;
    let namespace = match manifest["metadata"]["namespace"].as_str() {
        Some(ns) if target.all_namespaces || ns == target.namespace => ns.to_string(),
        Some(ns) => {
            return Err(Error::Input(format!(
                "{}: metadata.namespace is {ns:?}, but the namespace asked for is {:?}",
                s.file, target.namespace
            )));
        }
        None => target.namespace.clone(),
    };
    // Checked as a BackgroundJob, but sent as written: the typed job would send every field with
    // its default, and so override what a spec.templateRef's template would fill in.
    serde_json::from_value::<BackgroundJob>(manifest.clone())
        .map_err(|e| Error::Input(format!("{}: not a valid BackgroundJob: {e}", s.file)))?;
    let job: kube::api::DynamicObject = serde_json::from_value(manifest)
        .map_err(|e| Error::Input(format!("{}: not a valid BackgroundJob: {e}", s.file)))?;
    let resource = kube::api::ApiResource::erase::<BackgroundJob>(&());
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(target.client.clone(), &namespace, &resource);
    let created = api.create(&PostParams::default(), &job).await.map_err(|e| Error::from_kube(e, target))?;
    let name = created.metadata.name.unwrap_or_default();
    println!("{name}");
    if !s.wait {
        return Ok(Outcome::Done);
    }
    let target = Target { namespace, all_namespaces: false, ..target.clone() };
    watch::watch(&target, &[name], false).await
}

/// The manifest as JSON, with the name options and `--set`s applied (pure).
pub fn manifest(text: &str, s: &Submit) -> Result<Value, String> {
    let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let kind = value["kind"].as_str().unwrap_or_default();
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    if kind != "BackgroundJob" || api_version.split('/').next() != Some(GROUP) {
        return Err(format!(
            "kind {kind:?} of apiVersion {api_version:?}: only BackgroundJob ({GROUP}/...) can be submitted"
        ));
    }
    for assignment in &s.set {
        let (path, raw) = assignment
            .split_once('=')
            .ok_or_else(|| format!("--set {assignment:?}: expected PATH=VALUE, for example spec.shards=20"))?;
        let parsed = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        set(&mut value, path, parsed).map_err(|e| format!("--set {path}: {e}"))?;
    }
    let metadata = value["metadata"].as_object_mut().ok_or("metadata must be an object")?;
    if let Some(name) = &s.name {
        metadata.insert("name".into(), name.clone().into());
        metadata.remove("generateName");
    }
    if s.generate_name {
        let base = metadata
            .remove("name")
            .and_then(|n| n.as_str().map(|n| format!("{n}-")))
            .or_else(|| metadata.get("generateName").and_then(Value::as_str).map(String::from))
            .ok_or("--generate-name needs metadata.name or metadata.generateName in the manifest")?;
        metadata.insert("generateName".into(), base.into());
    }
    if metadata.get("name").is_none() && metadata.get("generateName").is_none() {
        return Err("the job needs a name: metadata.name, --name or --generate-name".into());
    }
    Ok(value)
}

/// Sets `path` (dotted; list items by index) in `value`, making the objects on the way.
fn set(value: &mut Value, path: &str, new: Value) -> Result<(), String> {
    let mut at = value;
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("an empty part in the path".into());
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if at.is_null() {
            *at = json!({});
        }
        at = match at {
            Value::Object(map) => {
                if last {
                    map.insert(part.to_string(), new);
                    return Ok(());
                }
                map.entry(part.to_string()).or_insert(Value::Null)
            }
            Value::Array(items) => {
                let index: usize = part.parse().map_err(|_| format!("{part:?} is not an index of a list"))?;
                let len = items.len();
                let item =
                    items.get_mut(index).ok_or_else(|| format!("index {index} is past the list's {len} items"))?;
                if last {
                    *item = new;
                    return Ok(());
                }
                item
            }
            other => return Err(format!("{part:?} is inside {other}, which is not an object or a list")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nightshift_api::job_fixture;

    const JOB: &str = "apiVersion: nightshift.dev/v1alpha1
kind: BackgroundJob
metadata: {name: import}
spec:
  shards: 2
  template: {spec: {containers: [{name: w, image: busybox}]}}
";

    fn submit(name: Option<&str>, generate: bool, set: &[&str]) -> Submit {
        Submit {
            file: "job.yaml".into(),
            name: name.map(String::from),
            generate_name: generate,
            set: set.iter().map(|s| s.to_string()).collect(),
            wait: false,
        }
    }

    #[test]
    fn sets_reach_nested_fields_and_list_items_with_json_values() {
        let m = manifest(
            JOB,
            &submit(
                None,
                false,
                &[
                    "spec.shards=20",
                    "spec.workers.max=5",
                    "spec.template.spec.containers.0.image=app:2",
                    "spec.suspend=true",
                ],
            ),
        )
        .unwrap();
        assert_eq!(m["spec"]["shards"], 20);
        assert_eq!(m["spec"]["workers"]["max"], 5);
        assert_eq!(m["spec"]["template"]["spec"]["containers"][0]["image"], "app:2");
        assert_eq!(m["spec"]["suspend"], true);
        let err = manifest(JOB, &submit(None, false, &["spec.template.spec.containers.3.image=x"])).unwrap_err();
        assert_eq!(err, "--set spec.template.spec.containers.3.image: index 3 is past the list's 1 items");
        assert!(manifest(JOB, &submit(None, false, &["spec.shards"])).unwrap_err().contains("expected PATH=VALUE"));
    }

    #[test]
    fn a_rerun_of_the_failed_shards_takes_those_that_did_not_succeed() {
        let spec =
            json!({"shards": 6, "cancel": true, "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}});
        let mut job: BackgroundJob = job_fixture::job("import", spec)
            .namespace("shop")
            .metadata("labels", json!({"team": "data"}))
            .status(json!({"phase": "Failed", "succeededShards": "0-1,4", "failedShards": "2"}))
            .build();
        let rerun = rerun_of(&job, true).unwrap();
        assert_eq!(rerun.spec.only_shards.as_deref(), Some("2-3,5"), "failed, and stopped or never started");
        assert!(!rerun.spec.cancel);
        assert_eq!(rerun.metadata.generate_name.as_deref(), Some("import-rerun-"));
        let labels = rerun.metadata.labels.unwrap();
        assert_eq!((labels["team"].as_str(), labels[LABEL_RERUN_OF].as_str()), ("data", "import"));
        assert_eq!(rerun_of(&job, false).unwrap().spec.only_shards, None, "all shards");
        // A rerun of a rerun stays within its shards.
        job.spec.only_shards = Some("2-3,5".into());
        job.status.as_mut().unwrap().succeeded_shards = Some("2,5".into());
        assert_eq!(rerun_of(&job, true).unwrap().spec.only_shards.as_deref(), Some("3"));
        job.status.as_mut().unwrap().succeeded_shards = Some("2-5".into());
        assert!(rerun_of(&job, true).unwrap_err().contains("every shard succeeded"));
    }

    #[test]
    fn names_come_from_the_flags() {
        let m = manifest(JOB, &submit(Some("other"), false, &[])).unwrap();
        assert_eq!(m["metadata"]["name"], "other");
        let m = manifest(JOB, &submit(None, true, &[])).unwrap();
        assert_eq!(
            (m["metadata"]["name"].clone(), m["metadata"]["generateName"].clone()),
            (Value::Null, json!("import-"))
        );
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
        assert!(manifest(pod, &submit(None, false, &[])).unwrap_err().contains("only BackgroundJob"));
    }
}
