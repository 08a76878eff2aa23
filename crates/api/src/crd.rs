//! The CRDs as installed (BackgroundJob, BackgroundJobTemplate, BackgroundJobSchedule): kube's
//! generated schemas plus what derive cannot express (rules on the embedded pod template,
//! transition rules, CEL) and minus the pod template's field descriptions, which would push the
//! CRD past what `kubectl apply` can store.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use super::{BackgroundJob, BackgroundJobSchedule, BackgroundJobTemplate, MAX_SCHEDULE_NAME_LENGTH, time_zones};

/// Longest job name: it is part of worker pod names (`NAME-SHARD-ATTEMPT`) and label values (63).
pub const MAX_NAME_LENGTH: usize = 52;
/// Most shards a job with heartbeats may have: its workers' Role lists every shard's Lease by name.
pub const MAX_SHARDS_WITH_HEARTBEAT: i32 = 2000;

/// The CRDs, exactly as `crds/nightshift.yaml` and the Helm chart hold them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![crd(), template_crd(), schedule_crd()]
}

/// The CRDs as one YAML stream, for `nightshift crd` and `crds/`.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|c| serde_yaml_ng::to_string(c).expect("a CRD serializes to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The BackgroundJob CRD.
///
/// spec.shards and spec.onlyShards cannot change once a job is admitted: the operator counts
/// the job's work by them, and a job resharded while it runs would have finished shards counted
/// out and their pods let go of (lost work). That holds wherever the CRD is installed, so it is a
/// rule here. What else an admitted job was started with (parameters, after, template) is frozen
/// by the chart's admission policy `admitted-jobs` (`charts/nightshift/templates/admission-policy.yaml`)
/// instead: a root rule reading `oldSelf` is evaluated on every status write too, the operator's
/// most frequent request, and those three there cost the API server 1.5 to 2.5 ms of CPU per
/// status write of 9 to 11 (measured; the two kept here, under 0.4 ms), where the policy is
/// evaluated only on updates of the job itself.
pub fn crd() -> CustomResourceDefinition {
    edited(BackgroundJob::crd(), |schema| {
        let unchanged = |field: &str| {
            format!(
                "!has(oldSelf.status) || !has(oldSelf.status.startTime) || (has(self.spec.{field}) == has(oldSelf.spec.{field}) && (!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field}))"
            )
        };
        let frozen =
            |field: &str| format!("spec.{field} cannot change once the job is admitted (status.startTime is set)");
        add_rules(
            schema,
            &[
                (
                    format!("size(self.metadata.name) <= {MAX_NAME_LENGTH}"),
                    format!(
                        "metadata.name must be at most {MAX_NAME_LENGTH} characters: it is part of the worker pod names"
                    ),
                ),
                (unchanged("shards"), frozen("shards")),
                (unchanged("onlyShards"), frozen("onlyShards")),
                (
                    "!has(self.spec.after) || !(self.metadata.name in self.spec.after)".into(),
                    "spec.after must not name the job itself (metadata.name): a job cannot wait for its own success"
                        .into(),
                ),
            ],
        );
        job_spec_rules(&mut schema["properties"]["spec"], "spec", true);
    })
}

/// The BackgroundJobTemplate CRD.
pub fn template_crd() -> CustomResourceDefinition {
    edited(BackgroundJobTemplate::crd(), |schema| job_spec_rules(&mut schema["properties"]["spec"], "spec", false))
}

/// The BackgroundJobSchedule CRD.
pub fn schedule_crd() -> CustomResourceDefinition {
    edited(BackgroundJobSchedule::crd(), |schema| {
        add_rules(
            schema,
            &[(
                format!("size(self.metadata.name) <= {MAX_SCHEDULE_NAME_LENGTH}"),
                format!(
                    "metadata.name must be at most {MAX_SCHEDULE_NAME_LENGTH} characters: the names of its jobs add 11 (\"-\" and the scheduled minute)"
                ),
            )],
        );
        let spec = &mut schema["properties"]["spec"]["properties"];
        add_rules(
            &mut spec["schedule"],
            &[(
                format!("self.matches('{}')", cron_regex()),
                "spec.schedule must be 5 cron fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT; each *, a value, a range, a list, with /step) or @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually".into(),
            )],
        );
        let zones: Vec<String> = time_zones().available().map(|z| z.to_string()).collect();
        add_rules(
            &mut spec["timeZone"],
            &[(
                format!("self in {}", serde_json::to_string(&zones).expect("names serialize")),
                "spec.timeZone must be a time zone of the IANA database, like Europe/Berlin".into(),
            )],
        );
        // The job's spec: what a BackgroundJob's allows, checked as for a job.
        job_spec_rules(&mut spec["jobTemplate"]["properties"]["spec"], "spec.jobTemplate.spec", true);
    })
}

/// `crd` with its (first version's) schema changed by `edit`.
fn edited(crd: CustomResourceDefinition, edit: impl FnOnce(&mut Value)) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(crd).expect("the CRD serializes");
    edit(&mut value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
    serde_json::from_value(value).expect("the edited CRD deserializes")
}

/// A regular expression (RE2, for CEL) of the 5-field cron schedules and macros CronJob takes.
/// An approximation: the controller's parser is the final judge (a date that never comes, like
/// "0 0 31 2 *", passes here and is reported in the schedule's Scheduling condition).
fn cron_regex() -> String {
    const MONTHS: &str = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC";
    const DAYS: &str = "SUN|MON|TUE|WED|THU|FRI|SAT";
    let field = |value: &str, wildcard: &str| {
        let item = format!("({wildcard}|({value})(-({value}))?)(/[0-9]+)?");
        format!("{item}(,{item})*")
    };
    let fields = [
        field("[0-5]?[0-9]", "[*]"),
        field("[01]?[0-9]|2[0-3]", "[*]"),
        field("0?[1-9]|[12][0-9]|3[01]", "[*?]"),
        field(&format!("0?[1-9]|1[0-2]|{MONTHS}"), "[*]"),
        field(&format!("[0-7]|{DAYS}"), "[*?]"),
    ];
    format!(
        "^(?i)( *@(yearly|annually|monthly|weekly|daily|midnight|hourly) *| *{} *)$",
        fields.map(|f| format!("({f})")).join(" +")
    )
}

/// The rules of a BackgroundJob's spec wherever one is written (a job, a template, a schedule's
/// jobTemplate): `spec` is its schema, `path` where it is, for the messages; `needs_pod`: it must
/// name its pod, in `template` or `templateRef` (a template always has one).
fn job_spec_rules(spec: &mut Value, path: &str, needs_pod: bool) {
    // The fields a BackgroundJobTemplate may fill have no default in the schema: a job that
    // leaves one out takes the template's, else the default its description names (the
    // operator applies it).
    for field in ["shards", "workers", "timeouts", "retry"] {
        spec["properties"][field].as_object_mut().expect("a field").remove("default");
    }
    let mut rules = vec![
        (
            format!("!has(self.heartbeat) || !has(self.shards) || self.shards <= {MAX_SHARDS_WITH_HEARTBEAT}"),
            format!(
                "{path}.shards must be at most {MAX_SHARDS_WITH_HEARTBEAT} with spec.heartbeat: the workers' Role names each shard's Lease"
            ),
        ),
        (
            "!has(self.heartbeat) || !has(self.heartbeat.injectAgent) || !self.heartbeat.injectAgent || !has(self.template) || has(self.template.spec.containers[0].command)".into(),
            format!("{path}.template.spec.containers[0].command must be set when spec.heartbeat.injectAgent is true: the agent wraps it"),
        ),
    ];
    if needs_pod {
        rules.push((
            "has(self.template) || has(self.templateRef)".into(),
            format!("{path}.template or {path}.templateRef must be set: the worker pod, or a BackgroundJobTemplate that has it"),
        ));
    }
    add_rules(spec, &rules);
    if needs_pod {
        // Every index below spec.shards (1 when unset and no template fills it). Each number is
        // found by a regex, not split and parsed, to stay within CEL's cost budget; six digits
        // at most (the schema's shards are at most 100000) so int() never overflows.
        let rule = "!has(self.onlyShards) || (!has(self.shards) && has(self.templateRef)) || self.onlyShards.findAll('[0-9]+').all(n, size(n) <= 6 && int(n) < (has(self.shards) ? self.shards : 1))";
        let list = spec["x-kubernetes-validations"].as_array_mut().expect("rules were added");
        list.push(json!({
            "rule": rule,
            "message": format!("{path}.onlyShards must name only shards that exist: every index must be below {path}.shards (indexes run from 0 to shards-1)"),
            "fieldPath": ".onlyShards",
        }));
    }
    tighten_pod_template(&mut spec["properties"]["template"], &format!("{path}.template"));
}

/// What the pod template of a job (or of a job template) must hold, beyond the PodTemplateSpec
/// schema, and without its field descriptions, which would push the CRD past what `kubectl apply`
/// can store.
fn tighten_pod_template(template: &mut Value, path: &str) {
    strip_descriptions(template, true);
    // On the field itself, not on the pod spec (`!has(self.restartPolicy) || ...`): a rule is
    // evaluated on every status write too, and each field it reads on an object costs the API
    // server a copy of that object's schema properties, forty for a pod spec.
    add_rules(
        &mut template["properties"]["spec"]["properties"]["restartPolicy"],
        &[(
            "self == 'Never'".into(),
            format!("{path}.spec.restartPolicy must be Never: a failed shard is retried as a new pod under spec.retry"),
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
    fn checked_in_crds_match_the_code() {
        let checked_in = include_str!("../../../crds/nightshift.yaml");
        assert!(checked_in == crds_yaml(), "crds/nightshift.yaml is stale: run `make crd` and commit the result");
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
        // A job names its pod in spec.template or spec.templateRef (a CEL rule says which).
        assert_eq!(spec.get("required"), None);
        let props = &spec["properties"];
        assert_eq!(props["shards"]["minimum"].as_f64(), Some(1.0));
        // What a template may fill has no default in the schema (the operator applies it), and
        // the description says the default.
        for (field, says) in
            [("shards", "Default 1"), ("workers", "Default 1"), ("timeouts", "Default 10800"), ("retry", "Default 3")]
        {
            assert_eq!(props[field].get("default"), None, "spec.{field}");
            assert!(serde_json::to_string(&props[field]).unwrap().contains(says), "spec.{field} says {says}");
        }
        assert_eq!(props["workers"]["properties"]["max"]["default"], 3);
        assert_eq!(props["retry"]["properties"]["limit"]["default"], 3);
        assert_eq!(props["parameters"]["maxProperties"], 32);
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
        let template = serde_json::to_string(&props["template"]).unwrap();
        assert_eq!(template.matches("\"description\"").count(), 1, "only the template itself is described");
    }

    /// Every field of ours, in every CRD, is described (the pod templates' fields are not: size;
    /// metav1.Condition's come described from k8s-openapi), and each CRD fits `kubectl apply`.
    #[test]
    fn every_crd_is_described_and_fits_kubectl_apply() {
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
        for crd in crds() {
            let crd = serde_json::to_value(crd).unwrap();
            let name = crd["metadata"]["name"].as_str().unwrap().to_string();
            let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut missing = Vec::new();
            for part in ["spec", "status"] {
                if let Some(schema) = root["properties"].get(part) {
                    undescribed(schema, part, &mut missing);
                }
            }
            assert!(missing.is_empty(), "{name}: fields without a description: {missing:?}");
            let size = serde_json::to_string(&crd).unwrap().len();
            assert!(size < 200 * 1024, "{name} must fit kubectl apply's 256 KiB annotation: {size} bytes");
        }
    }

    /// The schedule's CRD: CronJob's names and columns, every field of ours described, the pod
    /// template without descriptions, rules that name the fields, and a size kubectl can apply.
    #[test]
    fn schedule_schema_golden() {
        let crd = serde_json::to_value(schedule_crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(crd["metadata"]["name"], "backgroundjobschedules.nightshift.dev");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["bgjs"]));
        assert_eq!(crd["spec"]["names"]["categories"], json!(["nightshift"]));
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(version["subresources"], json!({"status": {}}));
        let columns: Vec<(&str, &str)> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Schedule", ".spec.schedule"),
                ("Timezone", ".spec.timeZone"),
                ("Suspend", ".spec.suspend"),
                ("Active", ".status.active[*].name"),
                ("Last Schedule", ".status.lastScheduleTime"),
                ("Age", ".metadata.creationTimestamp")
            ]
        );
        let root = &version["schema"]["openAPIV3Schema"];
        let spec = &root["properties"]["spec"];
        assert_eq!(spec["required"], json!(["jobTemplate", "schedule"]));
        let props = &spec["properties"];
        assert_eq!(props["concurrencyPolicy"]["enum"], json!(["Allow", "Forbid", "Replace"]));
        assert_eq!(props["concurrencyPolicy"]["default"], "Allow");
        assert_eq!(props["suspend"]["default"], false);
        assert_eq!(props["successfulJobsHistoryLimit"]["default"], 3);
        assert_eq!(props["failedJobsHistoryLimit"]["default"], 1);
        assert_eq!(props["startingDeadlineSeconds"]["minimum"].as_f64(), Some(0.0));
        assert!(props["timeZone"]["description"].as_str().unwrap().contains("UTC"));
        let rule = |schema: &Value| schema["x-kubernetes-validations"][0]["message"].as_str().unwrap().to_string();
        assert!(rule(root).starts_with("metadata.name must be at most 41"));
        assert!(rule(&props["schedule"]).starts_with("spec.schedule must be"));
        assert!(rule(&props["timeZone"]).starts_with("spec.timeZone must be a time zone of the IANA database"));
        // Every zone jiff knows, so the schema and Cadence::parse agree.
        let zones = props["timeZone"]["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
        assert!(
            zones.contains("\"Europe/Berlin\"") && zones.contains("\"America/New_York\"") && !zones.contains("Mars")
        );
        // The job's spec is a BackgroundJob's, its template-fillable fields without defaults.
        let job = &props["jobTemplate"]["properties"]["spec"];
        for field in ["shards", "workers", "timeouts", "retry"] {
            assert_eq!(job["properties"][field].get("default"), None, "{field}");
        }
        assert_eq!(job["properties"]["template"]["required"], json!(["spec"]));
        let template = serde_json::to_string(&job["properties"]["template"]).unwrap();
        assert_eq!(template.matches("\"description\"").count(), 1, "only the template itself is described");
    }

    /// The cron rule's regular expression against the schedules CronJob takes and refuses (RE2
    /// and Rust's regex agree on this subset).
    #[test]
    fn cron_regex_approximates_cron() {
        let re = regex::Regex::new(&cron_regex()).unwrap();
        for good in [
            "* * * * *",
            "*/5 * * * *",
            "0 9-17/2 * * MON-FRI",
            "30 2 1,15 * ?",
            "0 0 1 jan sun",
            "@hourly",
            "@annually",
            " 0 0 * * 7 ",
        ] {
            assert!(re.is_match(good), "{good}");
        }
        for bad in [
            "61 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "0 * * * * *",
            "@every 5m",
            "TZ=UTC * * * * *",
            "",
        ] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
