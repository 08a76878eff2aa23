//! The BackgroundJob a schedule starts for one run.

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt, api::DynamicObject};
use serde_json::json;

use nightshift_api::{BackgroundJob, BackgroundJobSchedule};

/// The job of the run at `scheduled_at`: jobTemplate's spec as written (the API server and a
/// BackgroundJobTemplate fill in what it leaves out), its labels and annotations, ours, and the
/// schedule as its controlling owner.
pub fn job_of_run(schedule: &BackgroundJobSchedule, name: &str, scheduled_at: Timestamp) -> DynamicObject {
    let template = schedule.spec.job_template.metadata.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(nightshift_api::LABEL_SCHEDULE.into(), schedule.name_any());
    let mut annotations = template.annotations;
    annotations.insert(nightshift_api::ANNOTATION_SCHEDULED_AT.into(), scheduled_at.to_string());
    let job = json!({
        "apiVersion": BackgroundJob::api_version(&()),
        "kind": BackgroundJob::kind(&()),
        "metadata": {
            "name": name,
            "namespace": schedule.namespace(),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [schedule.controller_owner_ref(&())],
        },
        "spec": schedule.spec.job_template.spec,
    });
    serde_json::from_value(job).expect("a job is an object")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_the_template_spec_as_written_and_names_its_schedule() {
        let schedule: BackgroundJobSchedule = serde_json::from_value(json!({
            "apiVersion": "nightshift.dev/v1alpha1", "kind": "BackgroundJobSchedule",
            "metadata": {"name": "nightly", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "schedule": "@daily",
                "jobTemplate": {
                    "metadata": {"labels": {"team": "data"}, "annotations": {"note": "x"}},
                    "spec": {"templateRef": {"name": "export"}, "parameters": {"DAY": "today"}}
                }
            }
        }))
        .unwrap();
        let at: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let job = serde_json::to_value(job_of_run(&schedule, "nightly-28928160", at)).unwrap();
        // No default of the typed spec: the template named fills shards, workers, ...
        assert_eq!(job["spec"], json!({"templateRef": {"name": "export"}, "parameters": {"DAY": "today"}}));
        assert_eq!(job["metadata"]["labels"], json!({"team": "data", "nightshift.dev/schedule": "nightly"}));
        assert_eq!(job["metadata"]["annotations"]["nightshift.dev/scheduled-at"], "2025-01-01T00:00:00Z");
        assert_eq!(job["metadata"]["annotations"]["note"], "x");
        let owner = &job["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str(), owner["controller"].as_bool()),
            (Some("BackgroundJobSchedule"), Some("u-1"), Some(true))
        );
        assert_eq!(job["kind"], "BackgroundJob");
    }
}
