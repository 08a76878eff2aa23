//! The BackgroundJob CRD as installed: kube's generated schema plus what derive cannot express
//! (rules on the embedded pod template, transition rules) and minus the pod template's field
//! descriptions, which would push the CRD past what `kubectl apply` can store.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use super::BackgroundJob;

/// Longest job name: it is part of worker pod names (`NAME-SHARD-ATTEMPT`) and label values (63).
pub const MAX_NAME_LENGTH: usize = 52;
/// Most shards a job with heartbeats may have: its workers' Role lists every shard's Lease by name.
pub const MAX_SHARDS_WITH_HEARTBEAT: i32 = 2000;

/// The CRD, exactly as `crds/` and the Helm chart hold it.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(BackgroundJob::crd()).expect("the CRD serializes");
    let schema = &mut value["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    add_rules(
        schema,
        &[
            (
                format!("size(self.metadata.name) <= {MAX_NAME_LENGTH}"),
                format!(
                    "metadata.name must be at most {MAX_NAME_LENGTH} characters: it is part of the worker pod names"
                ),
            ),
            (
                "!has(oldSelf.status) || !has(oldSelf.status.startTime) || self.spec.shards == oldSelf.spec.shards"
                    .into(),
                "spec.shards cannot change once the job is admitted (status.startTime is set)".into(),
            ),
            (
                "!has(oldSelf.status) || !has(oldSelf.status.startTime) || (has(self.spec.onlyShards) == has(oldSelf.spec.onlyShards) && (!has(self.spec.onlyShards) || self.spec.onlyShards == oldSelf.spec.onlyShards))"
                    .into(),
                "spec.onlyShards cannot change once the job is admitted (status.startTime is set)".into(),
            ),
            (
                "!has(self.spec.after) || !(self.metadata.name in self.spec.after)".into(),
                "spec.after must not name the job itself (metadata.name): a job cannot wait for its own success".into(),
            ),
            (
                "!has(oldSelf.status) || !has(oldSelf.status.startTime) || (has(self.spec.after) == has(oldSelf.spec.after) && (!has(self.spec.after) || self.spec.after == oldSelf.spec.after))"
                    .into(),
                "spec.after cannot change once the job is admitted (status.startTime is set)".into(),
            ),
            (
                format!("!has(self.spec.heartbeat) || self.spec.shards <= {MAX_SHARDS_WITH_HEARTBEAT}"),
                format!(
                    "spec.shards must be at most {MAX_SHARDS_WITH_HEARTBEAT} with spec.heartbeat: the workers' Role names each shard's Lease"
                ),
            ),
            (
                "!has(self.spec.heartbeat) || !has(self.spec.heartbeat.injectAgent) || !self.spec.heartbeat.injectAgent || has(self.spec.template.spec.containers[0].command)".into(),
                "spec.template.spec.containers[0].command must be set when spec.heartbeat.injectAgent is true: the agent wraps it".into(),
            ),
            (
                "!has(oldSelf.status) || !has(oldSelf.status.startTime) || self.spec.template == oldSelf.spec.template"
                    .into(),
                "spec.template cannot change once the job is admitted (status.startTime is set)".into(),
            ),
        ],
    );
    let template = &mut schema["properties"]["spec"]["properties"]["template"];
    strip_descriptions(template, true);
    add_rules(
        &mut template["properties"]["spec"],
        &[(
            "!has(self.restartPolicy) || self.restartPolicy == 'Never'".into(),
            "spec.template.spec.restartPolicy must be Never: a failed shard is retried as a new pod under spec.retry"
                .into(),
        )],
    );
    // A template without a spec, or without a container, is no worker at all.
    template["required"] = json!(["spec"]);
    let pod_spec = &mut template["properties"]["spec"]["properties"];
    pod_spec["containers"]["minItems"] = json!(1);
    // The Job API would refuse a container without an image only when the pod is created;
    // refusing it at `kubectl apply` names the field (`...containers[0].image: Required value`).
    // Ephemeral containers are never in a template that creates a pod.
    for list in ["containers", "initContainers"] {
        require(&mut pod_spec[list]["items"], &["name", "image"]);
    }
    serde_json::from_value(value).expect("the edited CRD deserializes")
}

/// The CRD as YAML, for `nightshift crd` and `crds/`.
pub fn crd_yaml() -> String {
    serde_yaml_ng::to_string(&crd()).expect("the CRD serializes to YAML")
}

fn add_rules(schema: &mut Value, rules: &[(String, String)]) {
    let list =
        schema.as_object_mut().expect("a schema object").entry("x-kubernetes-validations").or_insert_with(|| json!([]));
    for (rule, message) in rules {
        list.as_array_mut().unwrap().push(json!({"rule": rule, "message": message}));
    }
}

/// Adds `fields` to the schema's `required` list (keeping those already there, in order).
fn require(schema: &mut Value, fields: &[&str]) {
    let obj = schema.as_object_mut().expect("a schema object");
    let list = obj.entry("required").or_insert_with(|| json!([])).as_array_mut().expect("required is a list");
    for field in fields {
        if !list.iter().any(|f| f == field) {
            list.push(json!(field));
        }
    }
}

/// Removes `description` from a schema and every schema below it, keeping the top one.
fn strip_descriptions(schema: &mut Value, keep_own: bool) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if !keep_own {
        obj.remove("description");
    }
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for child in props.values_mut() {
            strip_descriptions(child, false);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = obj.get_mut(key) {
            strip_descriptions(child, false);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(children)) = obj.get_mut(key) {
            for child in children {
                strip_descriptions(child, false);
            }
        }
    }
}

/// Schema of a free-form JSON object (the workers' result summary).
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "A small summary the workers reported (for example counts of rows created and failed)."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` must be what `nightshift crd` prints: regenerate it with `make crd`.
    #[test]
    fn checked_in_crd_matches_the_code() {
        let checked_in = include_str!("../../crds/backgroundjob.yaml");
        assert!(checked_in == crd_yaml(), "crds/backgroundjob.yaml is stale: run `make crd` and commit the result");
    }

    /// The parts of the schema users depend on, spelled out so a change is a visible diff.
    #[test]
    fn schema_golden() {
        let crd = serde_json::to_value(crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["metadata"]["name"], "backgroundjobs.nightshift.dev");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["bgj", "bgjob"]));
        assert_eq!(crd["spec"]["names"]["categories"], json!(["nightshift"]));
        assert_eq!(version["subresources"], json!({"status": {}}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Phase", "Workers", "Shards", "Progress", "ETA", "Heartbeat", "Age"]);
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], json!(["template"]));
        let props = &spec["properties"];
        assert_eq!(props["shards"]["default"], 1);
        assert_eq!(props["shards"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(props["workers"]["default"], json!({"min": 1, "max": 3}));
        assert_eq!(props["timeouts"]["default"], json!({"jobSeconds": 10800}));
        assert_eq!(
            props["retry"]["default"],
            json!({"limit": 3, "disruptionLimit": 10, "backoff": {"initialSeconds": 10, "factor": 2.0, "maxSeconds": 600}})
        );
        assert_eq!(props["timeouts"]["properties"]["attemptSeconds"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(props["timeouts"]["properties"]["jobSeconds"]["minimum"].as_f64(), Some(1.0));
        // The pod template: a spec with at least one container, and every container (init ones
        // too) with a name and an image.
        let template = &props["template"];
        assert_eq!(template["required"], json!(["spec"]));
        let pod_spec = &template["properties"]["spec"];
        assert_eq!(pod_spec["required"], json!(["containers"]));
        assert_eq!(pod_spec["properties"]["containers"]["minItems"], 1);
        for list in ["containers", "initContainers"] {
            let items = &pod_spec["properties"][list]["items"];
            assert_eq!(items["required"], json!(["name", "image"]), "{list}");
            assert_eq!(items["properties"]["image"]["type"], "string", "{list}");
        }
        // Every field of ours is described; the pod template's fields are not (size).
        fn undescribed(schema: &Value, path: &str, out: &mut Vec<String>) {
            if path.ends_with(".template") {
                return;
            }
            if schema.get("description").is_none() {
                out.push(path.to_string());
            }
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (k, v) in props {
                    undescribed(v, &format!("{path}.{k}"), out);
                }
            }
            // Items of a list of plain values (exit codes) are described by the list.
            if let Some(items) = schema.get("items").filter(|i| i.get("properties").is_some()) {
                undescribed(items, &format!("{path}[]"), out);
            }
        }
        let mut missing = Vec::new();
        let root = &version["schema"]["openAPIV3Schema"];
        undescribed(&root["properties"]["spec"], "spec", &mut missing);
        undescribed(&root["properties"]["status"], "status", &mut missing);
        // metav1.Condition's own fields come described from k8s-openapi.
        assert!(missing.is_empty(), "fields without a description: {missing:?}");
        let template = serde_json::to_string(&props["template"]).unwrap();
        assert_eq!(template.matches("\"description\"").count(), 1, "only the template itself is described");
        let size = serde_json::to_string(&crd).unwrap().len();
        assert!(size < 200 * 1024, "the CRD must fit kubectl apply's 256 KiB annotation: {size} bytes");
    }
}
