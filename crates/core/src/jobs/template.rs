//! Templates: a job that names a BackgroundJobTemplate (spec.templateRef) takes from it each
//! field it leaves unset, once, before it is admitted; the result is written into the job.

use serde_json::{Map, Value, json};

use nightshift_api::{ANNOTATION_TEMPLATE, BackgroundJob, BackgroundJobTemplateSpec, ResolvedTemplate};

/// The fields of a job's spec a template fills when the job leaves them unset.
pub const FIELDS: [&str; 7] =
    ["template", "shards", "workers", "timeouts", "retry", "heartbeat", "ttlSecondsAfterFinished"];

/// Which template (and generation) the job was resolved from: None while it has not been.
pub fn resolved(job: &BackgroundJob) -> Option<ResolvedTemplate> {
    let (name, generation) = job.metadata.annotations.as_ref()?.get(ANNOTATION_TEMPLATE)?.rsplit_once('/')?;
    Some(ResolvedTemplate { name: name.to_string(), generation: generation.parse().ok()? })
}

/// The job still has to read its template.
pub fn unresolved(job: &BackgroundJob) -> bool {
    job.spec.template_ref.is_some() && resolved(job).is_none()
}

/// The JSON merge patch (RFC 7386) that writes `template` into a job whose spec is `job_spec`
/// as stored (without defaults: a field present is a field the user set): each of [`FIELDS`] the
/// job lacks, the template's parameters under keys the job lacks, and the annotation that
/// records the template's name and generation. `resource_version`, when given, makes the patch
/// apply only to the job as read.
pub fn merge_patch(
    job_spec: &Value,
    name: &str,
    generation: i64,
    template: &BackgroundJobTemplateSpec,
    resource_version: Option<&str>,
) -> Value {
    let from = serde_json::to_value(template).expect("a template serializes");
    let mut spec = Map::new();
    for field in FIELDS {
        if let Some(value) = from.get(field).filter(|_| job_spec.get(field).is_none()) {
            spec.insert(field.to_string(), value.clone());
        }
    }
    let params: Map<String, Value> = template
        .parameters
        .iter()
        .filter(|(k, _)| job_spec.get("parameters").and_then(|p| p.get(k.as_str())).is_none())
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !params.is_empty() {
        spec.insert("parameters".into(), Value::Object(params));
    }
    let mut metadata = json!({"annotations": {ANNOTATION_TEMPLATE: format!("{name}/{generation}")}});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({"metadata": metadata, "spec": spec})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> BackgroundJobTemplateSpec {
        serde_json::from_value(json!({
            "template": {"spec": {"containers": [{"name": "import", "image": "importer:1"}]}},
            "shards": 8,
            "workers": {"min": 1, "max": 4},
            "retry": {"limit": 5},
            "parameters": {"BATCH": "500", "MODE": "full"}
        }))
        .unwrap()
    }

    #[test]
    fn the_template_fills_what_the_job_leaves_unset_and_no_more() {
        let job = json!({"templateRef": {"name": "bulk-import"}, "shards": 2, "parameters": {"MODE": "delta", "FILE": "a.csv"}});
        let patch = merge_patch(&job, "bulk-import", 3, &template(), Some("42"));
        let spec = &patch["spec"];
        assert_eq!(spec.get("shards"), None, "the job's own shards stay");
        assert_eq!(spec["workers"], json!({"min": 1, "max": 4}));
        assert_eq!(spec["template"]["spec"]["containers"][0]["image"], "importer:1");
        assert_eq!(spec["retry"]["limit"], 5);
        assert_eq!(spec.get("heartbeat"), None, "the template has none");
        assert_eq!(spec["parameters"], json!({"BATCH": "500"}), "the job's MODE wins; its FILE stays");
        assert_eq!(patch["metadata"]["annotations"][ANNOTATION_TEMPLATE], "bulk-import/3");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        // The patch applied to the job gives the merged spec, which reads back as resolved.
        let mut merged = json!({
            "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJob",
            "metadata": {"name": "import-1"}, "spec": job
        });
        json_patch::merge(&mut merged, &patch);
        let merged: BackgroundJob = serde_json::from_value(merged).unwrap();
        assert_eq!(merged.spec.shards, 2);
        assert_eq!(merged.spec.workers.max, 4);
        assert_eq!(merged.spec.parameters.len(), 3);
        assert_eq!(resolved(&merged), Some(ResolvedTemplate { name: "bulk-import".into(), generation: 3 }));
        assert!(!unresolved(&merged));
    }

    #[test]
    fn a_job_with_everything_set_takes_only_the_annotation() {
        let job = serde_json::to_value(
            serde_json::from_value::<nightshift_api::BackgroundJobSpec>(json!({
                "templateRef": {"name": "t"}, "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}},
                "heartbeat": {}, "ttlSecondsAfterFinished": 60, "parameters": {"BATCH": "1", "MODE": "x"}
            }))
            .unwrap(),
        )
        .unwrap();
        let patch = merge_patch(&job, "t", 1, &template(), None);
        assert_eq!(patch["spec"], json!({}));
        assert_eq!(patch["metadata"].get("resourceVersion"), None);
    }
}
