//! `nightshift.dev/v1alpha1` BackgroundJobTemplate: what a platform team owns of a kind of job
//! (the worker pod and defaults), so that an app starts one with a name and a few parameters.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Heartbeat, PodTemplate, Retry, Timeouts, Workers};

/// The worker pod and defaults of a kind of BackgroundJob, which jobs name in spec.templateRef.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nightshift.dev",
    version = "v1alpha1",
    kind = "BackgroundJobTemplate",
    plural = "backgroundjobtemplates",
    singular = "backgroundjobtemplate",
    shortname = "bgjt",
    category = "nightshift",
    namespaced,
    derive = "PartialEq",
    doc = "The worker pod and defaults of a kind of BackgroundJob; a job names it in spec.templateRef and passes parameters.",
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards", description = "default shards"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundJobTemplateSpec {
    /// The worker pod, as a BackgroundJob's spec.template (restartPolicy Never).
    #[schemars(with = "PodTemplateSpec")]
    pub template: PodTemplate,
    /// Default spec.shards of the jobs that use this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub shards: Option<i32>,
    /// Default spec.workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    /// Default spec.timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Default spec.retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Default spec.heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
    /// Default spec.ttlSecondsAfterFinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Default parameters: a job's spec.parameters adds to them and wins on the same key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]{0,62}$'))",
         "message": "spec.parameters: keys must be letters, digits and underscores, not start with a digit, and be at most 63 characters (each becomes NIGHTSHIFT_PARAM_<key>)"}
    ]))]
    #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": 4096}))]
    pub parameters: BTreeMap<String, String>,
}

/// Which BackgroundJobTemplate a job takes its pod and defaults from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// The BackgroundJobTemplate's name, in the job's namespace.
    #[schemars(regex(pattern = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"), length(min = 1, max = 253))]
    pub name: String,
}

/// The template a job was resolved from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedTemplate {
    /// The BackgroundJobTemplate's name.
    pub name: String,
    /// Its metadata.generation when the job read it.
    pub generation: i64,
}
