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
    // A template without a spec is no worker at all.
    template["required"] = json!(["spec"]);
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
