//! Templates (spec.templateRef, spec.parameters) against the real control plane: a job that
//! names a template not there yet waits, starts once it is created, takes what it leaves unset
//! from it (frozen: a later edit of the template changes nothing), and its workers get the
//! parameters. The test plays the node, except for the last test, on the real node.

use crate::support::node;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use nightshift_api::{BackgroundJobTemplate, Phase, ResolvedTemplate};
use serde_json::json;

use crate::support::{Fixture, TempFile, WAIT, fixture, job_fixture, kubeconfig_path, plugin, wait_until};

/// Creates a job as an app would send it: only the fields written (the typed `BackgroundJob`
/// would send every field with its default, leaving the template nothing to fill).
async fn create_as_written(f: &Fixture, job: serde_json::Value) {
    let jobs: Api<DynamicObject> =
        Api::namespaced_with(f.client.clone(), &f.ns.name, &ApiResource::erase::<nightshift_api::BackgroundJob>(&()));
    jobs.create(&PostParams::default(), &serde_json::from_value(job).unwrap()).await.unwrap();
}

fn template(image: &str) -> BackgroundJobTemplate {
    serde_json::from_value(json!({
        "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJobTemplate",
        "metadata": {"name": "bulk-import"},
        "spec": {
            "template": node::template(json!({
                "restartPolicy": "Never",
                "containers": [{"name": "import", "image": image}]
            })),
            "shards": 3,
            "workers": {"min": 1, "max": 3},
            "retry": {"limit": 1},
            "parameters": {"BATCH_SIZE": "500", "MODE": "full"}
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn a_job_waits_for_its_template_then_runs_with_its_fields_and_parameters() {
    let (f, _operator) = fixture("templates").await;
    // What an app sends: a name, a template, parameters. Nothing else.
    let spec = json!({"templateRef": {"name": "bulk-import"}, "workers": {"max": 2}, "parameters": {"FILE": "uploads/42.csv", "MODE": "delta"}});
    let job = job_fixture::job("import-42", spec).manifest();
    create_as_written(&f, job).await;
    let waiting = f.wait_phase("import-42", Phase::Queued).await;
    let admitted = waiting.conditions.iter().find(|c| c.type_ == "Admitted").unwrap();
    assert_eq!((admitted.status.as_str(), admitted.reason.as_str()), ("False", "WaitingForTemplate"));
    assert!(admitted.message.contains("BackgroundJobTemplate bulk-import does not exist"), "{}", admitted.message);
    assert!(f.all_pods("import-42").await.is_empty());

    // The template appears: the job is woken, reads it and starts.
    let templates = f.ns.api::<BackgroundJobTemplate>();
    templates.create(&PostParams::default(), &template("importer:1")).await.unwrap();
    let pods = f.wait_live("import-42", 2).await;
    let resolved = f.jobs.get("import-42").await.unwrap();
    assert_eq!(resolved.spec.shards, 3, "from the template");
    assert_eq!(resolved.spec.workers.max, 2, "the job's own, over the template's 3");
    assert_eq!(resolved.spec.retry.limit, 1, "from the template");
    assert_eq!(resolved.spec.parameters["BATCH_SIZE"], "500");
    assert_eq!(resolved.spec.parameters["MODE"], "delta", "the job's own value wins");
    let status = f.status("import-42").await;
    assert_eq!(status.resolved_template, Some(ResolvedTemplate { name: "bulk-import".into(), generation: 1 }));

    let pod = f.pods.get(&pods[0]).await.unwrap();
    let container = &pod.spec.unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("importer:1"));
    let env: Vec<(String, String)> =
        container.env.clone().unwrap().into_iter().map(|v| (v.name, v.value.unwrap_or_default())).collect();
    for (name, value) in [
        ("NIGHTSHIFT_PARAM_FILE", "uploads/42.csv"),
        ("NIGHTSHIFT_PARAM_MODE", "delta"),
        ("NIGHTSHIFT_PARAM_BATCH_SIZE", "500"),
    ] {
        assert!(env.contains(&(name.to_string(), value.to_string())), "{name}={value} in {env:?}");
    }

    // A new image in the template changes no job that has read it.
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "import", "image": "importer:2"}]}}}});
    let edited = templates.patch("bulk-import", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    assert_eq!(edited.metadata.generation, Some(2));
    f.run_to_success("import-42").await;
    for pod in f.all_pods("import-42").await {
        assert_eq!(pod.spec.unwrap().containers[0].image.as_deref(), Some("importer:1"));
    }
    assert_eq!(f.status("import-42").await.resolved_template.unwrap().generation, 1);
}

#[tokio::test]
async fn a_template_that_does_not_fit_the_job_fails_it_naming_the_template() {
    let (f, _operator) = fixture("template-misfit").await;
    let mut t = template("importer:1");
    t.spec.shards = Some(5000); // with the job's heartbeat: over the 2000 shards a heartbeat allows
    f.ns.api::<BackgroundJobTemplate>().create(&PostParams::default(), &t).await.unwrap();
    let job = job_fixture::job("misfit", json!({"templateRef": {"name": "bulk-import"}, "heartbeat": {}})).manifest();
    create_as_written(&f, job).await;
    let status = wait_until("the misfit job to fail", WAIT, || async {
        let s = f.status("misfit").await;
        if s.phase == Some(Phase::Failed) { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "InvalidTemplate");
    assert!(
        failed.message.contains("bulk-import") && failed.message.contains("spec.shards must be at most 2000"),
        "{}",
        failed.message
    );
}

#[tokio::test]
async fn kubectl_nightshift_submit_sends_a_templated_job_as_written() {
    let (f, _operator) = fixture("template-submit").await;
    f.ns.api::<BackgroundJobTemplate>().create(&PostParams::default(), &template("importer:1")).await.unwrap();
    let manifest = "apiVersion: nightshift.dev/v1alpha1\nkind: BackgroundJob\nmetadata: {name: from-plugin}\nspec:\n  templateRef: {name: bulk-import}\n  parameters: {FILE: a.csv}\n";
    let file = TempFile::new(&format!("{}-submit.yaml", f.ns.name), manifest);
    let (code, out, err) = plugin(&kubeconfig_path(), &f.ns.name, &["submit", file.0.to_str().unwrap()]).await;
    assert_eq!((code, out.trim()), (0, "from-plugin"), "{err}");
    f.wait_live("from-plugin", 3).await;
    let job = f.jobs.get("from-plugin").await.unwrap();
    assert_eq!((job.spec.shards, job.spec.retry.limit), (3, 1), "the template's, not the defaults");
}

/// On the real node: the worker process gets the parameters as NIGHTSHIFT_PARAM_<key>, the job's
/// value over the template's, the template's where the job sets none; it exits 0 only if so
/// (else 3, and the job fails with the environment it saw in its message).
#[tokio::test]
async fn the_worker_process_gets_the_parameters_as_environment_variables() {
    let (f, _operator) = crate::node::node("template-env").await;
    let check = r#"test "$NIGHTSHIFT_PARAM_UPLOAD_ID" = 42 && test "$NIGHTSHIFT_PARAM_MODE" = "delta run" || { env | grep NIGHTSHIFT_PARAM; exit 3; }"#;
    let template: BackgroundJobTemplate = serde_json::from_value(json!({
        "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJobTemplate",
        "metadata": {"name": "import"},
        "spec": {
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 10,
                "containers": [{"name": "import", "image": crate::node::example_image(),
                                "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", check]}]
            }},
            "retry": {"limit": 0},
            "parameters": {"UPLOAD_ID": "0", "MODE": "delta run"}
        }
    }))
    .unwrap();
    f.ns.api::<BackgroundJobTemplate>().create(&PostParams::default(), &template).await.unwrap();
    let job = |name: &str, upload: &str| {
        job_fixture::job(name, json!({"templateRef": {"name": "import"}, "parameters": {"UPLOAD_ID": upload}}))
            .manifest()
    };
    create_as_written(&f, job("upload-42", "42")).await;
    create_as_written(&f, job("upload-7", "7")).await;
    f.wait_phase("upload-42", Phase::Succeeded).await;
    let failed = f.wait_phase("upload-7", Phase::Failed).await;
    assert!(format!("{failed:?}").contains("NIGHTSHIFT_PARAM_UPLOAD_ID=7"), "{failed:?}");
}
