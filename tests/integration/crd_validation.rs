//! The BackgroundJob CRD as the real API server enforces it: bad manifests are refused at create
//! time with a message that names the field, defaults are applied, the shards and the pod template
//! are frozen once the job is admitted, and `kubectl explain` reads the field descriptions.

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use nightshift_api::BackgroundJob;
use serde_json::{Value, json};

use crate::support::{
    TestNamespace, WAIT, api_error, client, install_crd, job_fixture, kubeconfig_path, kubectl_path, wait_until,
};

/// BackgroundJobs as untyped objects, so that manifests `BackgroundJob` cannot represent (a string
/// for an integer, a missing template) reach the API server as they are.
fn dynamic_jobs(ns: &TestNamespace) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("nightshift.dev", "v1alpha1", "BackgroundJob");
    Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::from_gvk_with_plural(&gvk, "backgroundjobs"))
}

/// A valid job that leaves every defaulted field out.
fn valid_manifest(name: &str) -> Value {
    let spec = json!({
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "registry.example/import:1"}]
        }}
    });
    job_fixture::job(name, spec).manifest()
}

fn to_object(manifest: Value) -> DynamicObject {
    serde_json::from_value(manifest).expect("a manifest is a DynamicObject")
}

/// One manifest the CRD must refuse.
struct Bad {
    what: &'static str,
    /// JSON merge patch (RFC 7386) onto the valid manifest; null removes a field.
    patch: Value,
    /// Where the API server reports the error (`<field>: Invalid value ...`); None for rules on
    /// the whole object, which report no field of their own.
    field: Option<&'static str>,
    /// Further text the message must contain (the CEL rule's message, the bound broken).
    says: &'static [&'static str],
}

fn bad_manifests() -> Vec<Bad> {
    const MIN_MAX: &str = "spec.workers.min must not exceed spec.workers.max";
    const BACKOFF: &str = "spec.retry.backoff.initialSeconds must not exceed spec.retry.backoff.maxSeconds";
    const RESTART: &str =
        "spec.template.spec.restartPolicy must be Never: a failed shard is retried as a new pod under spec.retry";
    const NAME: &str = "metadata.name must be at most 52 characters";
    vec![
        Bad {
            what: "workers.min > workers.max",
            patch: json!({"spec": {"workers": {"min": 5, "max": 2}}}),
            field: Some("spec.workers"),
            says: &[MIN_MAX],
        },
        Bad {
            what: "workers.min above the default max",
            patch: json!({"spec": {"workers": {"min": 4}}}),
            field: Some("spec.workers"),
            says: &[MIN_MAX],
        },
        Bad {
            what: "workers.min 0",
            patch: json!({"spec": {"workers": {"min": 0, "max": 2}}}),
            field: Some("spec.workers.min"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "workers.max 0",
            patch: json!({"spec": {"workers": {"max": 0}}}),
            field: Some("spec.workers.max"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "shards 0",
            patch: json!({"spec": {"shards": 0}}),
            field: Some("spec.shards"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "shards negative",
            patch: json!({"spec": {"shards": -3}}),
            field: Some("spec.shards"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "shards above the maximum",
            patch: json!({"spec": {"shards": 100_001}}),
            field: Some("spec.shards"),
            says: &["less than or equal to 100000"],
        },
        Bad {
            what: "shards of the wrong type",
            patch: json!({"spec": {"shards": "three"}}),
            field: Some("spec.shards"),
            says: &["must be of type integer"],
        },
        Bad {
            what: "timeouts.jobSeconds 0",
            patch: json!({"spec": {"timeouts": {"jobSeconds": 0}}}),
            field: Some("spec.timeouts.jobSeconds"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "timeouts.attemptSeconds negative",
            patch: json!({"spec": {"timeouts": {"attemptSeconds": -5}}}),
            field: Some("spec.timeouts.attemptSeconds"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "template.spec.restartPolicy Always",
            patch: json!({"spec": {"template": {"spec": {"restartPolicy": "Always"}}}}),
            field: Some("spec.template.spec.restartPolicy"),
            says: &[RESTART],
        },
        Bad {
            what: "template.spec.restartPolicy OnFailure",
            patch: json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}}),
            field: Some("spec.template.spec.restartPolicy"),
            says: &[RESTART],
        },
        Bad {
            what: "retry.limit negative",
            patch: json!({"spec": {"retry": {"limit": -1}}}),
            field: Some("spec.retry.limit"),
            says: &["greater than or equal to 0"],
        },
        Bad {
            what: "retry.backoff.factor below 1",
            patch: json!({"spec": {"retry": {"backoff": {"factor": 0.5}}}}),
            field: Some("spec.retry.backoff.factor"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "retry.backoff.initialSeconds > maxSeconds",
            patch: json!({"spec": {"retry": {"backoff": {"initialSeconds": 120, "maxSeconds": 60}}}}),
            field: Some("spec.retry.backoff"),
            says: &[BACKOFF],
        },
        Bad {
            what: "retry.backoff.initialSeconds above the default maxSeconds",
            patch: json!({"spec": {"retry": {"backoff": {"initialSeconds": 601}}}}),
            field: Some("spec.retry.backoff"),
            says: &[BACKOFF],
        },
        Bad {
            what: "ttlSecondsAfterFinished negative",
            patch: json!({"spec": {"ttlSecondsAfterFinished": -1}}),
            field: Some("spec.ttlSecondsAfterFinished"),
            says: &["greater than or equal to 0"],
        },
        Bad { what: "no spec", patch: json!({"spec": null}), field: Some("spec"), says: &["Required value"] },
        Bad {
            what: "template without spec",
            patch: json!({"spec": {"template": {"spec": null, "metadata": {"labels": {"app": "import"}}}}}),
            field: Some("spec.template.spec"),
            says: &["Required value"],
        },
        Bad {
            what: "template without containers",
            patch: json!({"spec": {"template": {"spec": {"containers": null}}}}),
            field: Some("spec.template.spec.containers"),
            says: &["Required value"],
        },
        Bad {
            what: "template with an empty container list",
            patch: json!({"spec": {"template": {"spec": {"containers": []}}}}),
            field: Some("spec.template.spec.containers"),
            says: &["should have at least 1 items"],
        },
        Bad {
            what: "container without image",
            // A merge patch replaces the whole list: its one container has a name only.
            patch: json!({"spec": {"template": {"spec": {"containers": [{"name": "worker"}]}}}}),
            field: Some("spec.template.spec.containers[0].image"),
            says: &["Required value"],
        },
        Bad {
            what: "init container without image",
            patch: json!({"spec": {"template": {"spec": {"initContainers": [{"name": "setup"}]}}}}),
            field: Some("spec.template.spec.initContainers[0].image"),
            says: &["Required value"],
        },
        Bad {
            what: "exit code 0 in a rule",
            patch: json!({"spec": {"retry": {"exitCodes": [{"codes": [0], "action": "FailJob"}]}}}),
            field: Some("spec.retry.exitCodes[0].codes[0]"),
            says: &["greater than or equal to 1"],
        },
        Bad {
            what: "exit code 256 in a rule",
            patch: json!({"spec": {"retry": {"exitCodes": [{"codes": [256], "action": "FailJob"}]}}}),
            field: Some("spec.retry.exitCodes[0].codes[0]"),
            says: &["less than or equal to 255"],
        },
        Bad {
            what: "an exit code in two rules",
            patch: json!({"spec": {"retry": {"exitCodes": [
                {"codes": [2, 3], "action": "FailJob"}, {"codes": [3], "action": "Ignore"}]}}}),
            field: Some("spec.retry.exitCodes"),
            says: &["spec.retry.exitCodes: an exit code may appear in one rule only"],
        },
        Bad {
            what: "an unknown exit-code action",
            patch: json!({"spec": {"retry": {"exitCodes": [{"codes": [3], "action": "Retry"}]}}}),
            field: Some("spec.retry.exitCodes[0].action"),
            says: &["FailJob", "FailShard", "Ignore"],
        },
        Bad {
            what: "onlyShards that are not ranges of indexes",
            patch: json!({"spec": {"onlyShards": "1,a-3"}}),
            field: Some("spec.onlyShards"),
            says: &["should match"],
        },
        Bad {
            what: "neither spec.template nor spec.templateRef",
            patch: json!({"spec": {"template": null}}),
            field: None,
            says: &["spec.template or spec.templateRef must be set"],
        },
        Bad {
            what: "a parameter key with a dash",
            patch: json!({"spec": {"parameters": {"csv-file": "a.csv"}}}),
            field: Some("spec.parameters"),
            says: &["spec.parameters: keys must be letters, digits and underscores"],
        },
        Bad {
            what: "a parameter value over 4096 characters",
            patch: json!({"spec": {"parameters": {"FILE": "x".repeat(4097)}}}),
            field: Some("spec.parameters.FILE"),
            says: &["4096"],
        },
        Bad {
            what: "a templateRef without a name",
            patch: json!({"spec": {"templateRef": {}}}),
            field: Some("spec.templateRef.name"),
            says: &["Required value"],
        },
        Bad {
            what: "spec.after naming the job itself",
            patch: json!({"metadata": {"name": "runs-after-itself"}, "spec": {"after": ["other", "runs-after-itself"]}}),
            field: None,
            says: &["spec.after must not name the job itself"],
        },
        Bad {
            what: "spec.after naming no possible job",
            patch: json!({"spec": {"after": ["Load_Catalog"]}}),
            field: Some("spec.after[0]"),
            says: &["should match"],
        },
        Bad {
            what: "metadata.name of 53 characters",
            patch: json!({"metadata": {"name": "n".repeat(53)}}),
            field: None,
            says: &[NAME, "it is part of the worker pod names"],
        },
    ]
}

#[tokio::test]
async fn bad_manifests_are_refused_with_the_field_named_and_defaults_are_applied() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "crd-validation").await;
    let jobs = dynamic_jobs(&ns);
    let pp = PostParams::default();

    // The valid base is accepted, and the API server fills in what it leaves out.
    let base = valid_manifest("valid");
    for field in ["shards", "workers", "timeouts", "retry"] {
        assert!(base["spec"].get(field).is_none(), "the base manifest must leave {field} to the defaults");
    }
    let created = jobs.create(&pp, &to_object(base)).await.expect("the valid base manifest is accepted");
    let stored = jobs.get("valid").await.expect("the accepted job is stored");
    // The fields a template may fill stay unset in the stored object (so a template can tell
    // them apart from a field the user set); the operator reads them with their defaults.
    for (source, job) in [("create response", &created), ("stored object", &stored)] {
        let spec = &job.data["spec"];
        for field in ["shards", "workers", "timeouts", "retry"] {
            assert!(spec.get(field).is_none(), "{source}: spec.{field} left unset in {spec}");
        }
        let typed: BackgroundJob = serde_json::from_value(serde_json::to_value(job).unwrap()).unwrap();
        assert_eq!((typed.spec.shards, typed.spec.workers.min, typed.spec.workers.max), (1, 1, 3), "{source}");
        assert_eq!((typed.spec.timeouts.job_seconds, typed.spec.retry.limit), (10800, 3), "{source}");
    }
    // Inside a field that is set, the API server fills in the defaults.
    let mut partial = valid_manifest("partial");
    partial["spec"]["retry"] = json!({"limit": 5});
    let partial = jobs.create(&pp, &to_object(partial)).await.expect("a partial retry is accepted");
    assert_eq!(partial.data["spec"]["retry"]["backoff"]["maxSeconds"], 600, "{}", partial.data["spec"]);
    // The longest name allowed is allowed: the rule is not off by one.
    let longest = "n".repeat(nightshift_api::crd::MAX_NAME_LENGTH);
    jobs.create(&pp, &to_object(valid_manifest(&longest))).await.expect("a 52-character name is accepted");

    let cases = bad_manifests();
    assert!(cases.len() >= 12);
    for (i, case) in cases.iter().enumerate() {
        let mut manifest = valid_manifest(&format!("bad-{i:02}"));
        json_patch::merge(&mut manifest, &case.patch);
        let object = to_object(manifest);
        let name = object.metadata.name.clone().unwrap();
        // Bounded retry only for a CRD that was just changed on a long-lived control plane, whose
        // new schema can take a moment to be served; a validation that is missing never passes.
        wait_until(
            &format!("{} to be refused with 422 naming the field", case.what),
            Duration::from_secs(15),
            || async {
                let result = jobs.create(&pp, &object).await;
                if result.is_ok() {
                    let _ = jobs.delete(&name, &DeleteParams::default()).await;
                    return Err("accepted".to_string());
                }
                let Some((code, message)) = api_error(&result) else {
                    return Err(format!("{result:?}"));
                };
                let mut missing: Vec<&str> = case.says.iter().copied().filter(|s| !message.contains(s)).collect();
                if let Some(field) = case.field.filter(|f| !reports_field(&message, f)) {
                    missing.push(field);
                }
                if code == 422 && missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("HTTP {code} {message:?}, lacking {missing:?}"))
                }
            },
        )
        .await;
    }

    // Nothing bad slipped in: only the three valid jobs exist.
    let mut names: Vec<String> =
        jobs.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|j| j.metadata.name).collect();
    names.sort();
    assert_eq!(names, [longest, "partial".to_string(), "valid".to_string()]);
}

/// Without the chart (its admission policy freezes the rest): the CRD alone refuses to reshard
/// an admitted job, since the operator counts the job's work by spec.shards and onlyShards.
#[tokio::test]
async fn shards_are_frozen_once_the_job_is_admitted() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "crd-immutable").await;
    let jobs: Api<BackgroundJob> = ns.api();
    let mut manifest = valid_manifest("frozen");
    json_patch::merge(&mut manifest, &json!({"spec": {"shards": 2}}));
    let job: BackgroundJob = serde_json::from_value(manifest).unwrap();
    jobs.create(&PostParams::default(), &job).await.expect("creating the job");
    let pp = PatchParams::default();

    // Before admission the user may still change their mind.
    let changed = jobs.patch("frozen", &pp, &Patch::Merge(json!({"spec": {"shards": 3}}))).await;
    assert_eq!(changed.expect("changing spec.shards of a job not yet admitted").spec.shards, 3);

    // Admit it, as the controller does.
    let start = json!({"status": {"startTime": Time(Timestamp::now())}});
    let admitted = jobs.patch_status("frozen", &pp, &Patch::Merge(start)).await.expect("setting status.startTime");
    assert!(admitted.status.and_then(|s| s.start_time).is_some(), "status.startTime is stored");

    for (field, patch) in
        [("shards", json!({"spec": {"shards": 4}})), ("onlyShards", json!({"spec": {"onlyShards": "0-1"}}))]
    {
        let refused = jobs.patch("frozen", &pp, &Patch::Merge(patch)).await;
        match api_error(&refused) {
            Some((422, message)) => assert!(
                message.contains(&format!(
                    "spec.{field} cannot change once the job is admitted (status.startTime is set)"
                )),
                "{message}"
            ),
            _ => panic!("changing spec.{field} of an admitted job must be refused with 422, got {refused:?}"),
        }
    }
    // The rest of the spec stays editable.
    let suspended = jobs
        .patch("frozen", &pp, &Patch::Merge(json!({"spec": {"suspend": true, "workers": {"max": 2}}})))
        .await
        .expect("suspend and workers may change after admission");
    assert!(suspended.spec.suspend);
    assert_eq!((suspended.spec.shards, suspended.spec.only_shards), (3, None));
}

#[tokio::test]
async fn kubectl_explain_describes_the_retry_field() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "crd-explain").await;

    // What the CRD says about spec.retry, as one line (kubectl wraps it).
    let crd = serde_json::to_value(nightshift_api::crd::crd()).unwrap();
    let retry = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["retry"];
    let description = one_line(retry["description"].as_str().expect("spec.retry has a description"));
    assert!(description.split(' ').count() > 3, "spec.retry's description is too thin to check: {description:?}");

    let kubectl = kubectl_path().await;
    let cache_root =
        RemovedOnDrop(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kubectl-cache-{}", ns.name)));
    let mut attempt = 0;
    let out = wait_until("kubectl explain backgroundjob.spec.retry", WAIT, || {
        attempt += 1;
        // A cache of its own per attempt: a discovery taken before the CRD was served is not reused.
        let cache_dir = cache_root.0.join(attempt.to_string());
        let kubectl = kubectl.clone();
        let description = description.clone();
        async move {
            let output = tokio::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .arg("--cache-dir")
                .arg(&cache_dir)
                .args(["explain", "backgroundjob.spec.retry"])
                .output()
                .await
                .map_err(|e| format!("running {}: {e}", kubectl.display()))?;
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if !output.status.success() {
                return Err(format!("{}: {}{stdout}", output.status, String::from_utf8_lossy(&output.stderr)));
            }
            if one_line(&stdout).contains(&description)
                && names_field(&stdout, "limit")
                && names_field(&stdout, "backoff")
            {
                Ok(stdout)
            } else {
                Err(format!("output lacks the description or the fields limit and backoff:\n{stdout}"))
            }
        }
    })
    .await;
    assert!(out.contains("BackgroundJob"), "{out}");
}

/// A scratch folder, removed when the test ends, also when it fails.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether an API error message reports an error at `field` itself (`... invalid: spec.shards: ...`
/// or, among several, `[spec.shards: ...`), not merely at a field below or above it.
fn reports_field(message: &str, field: &str) -> bool {
    let at = format!("{field}: ");
    message.match_indices(&at).any(|(i, _)| i == 0 || matches!(message.as_bytes()[i - 1], b' ' | b'['))
}

/// Collapses all runs of whitespace to one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `kubectl explain` lists `field` among the FIELDS (`  limit\t<integer>`).
fn names_field(explain: &str, field: &str) -> bool {
    explain.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some(field) && words.next().is_some_and(|kind| kind.starts_with('<'))
    })
}
