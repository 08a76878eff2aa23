//! `nightshift.dev/v1alpha1` BackgroundJobSchedule: a BackgroundJob started on a cron schedule,
//! as a CronJob starts Jobs.

use std::collections::BTreeMap;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::tz::TimeZoneDatabase,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::BackgroundJobSpec;

/// Longest schedule name: job names are at most 52 characters (crate::crd::MAX_NAME_LENGTH)
/// and the suffix takes 11 ("-" and up to 10 digits).
pub const MAX_SCHEDULE_NAME_LENGTH: usize = 41;

/// The time zones a schedule may name: the IANA database bundled into the binary, never the
/// machine's /usr/share/zoneinfo, so the CRD's list (`nightshift crd`) and the parser agree on
/// every machine, the image (which has no zoneinfo) included.
pub fn time_zones() -> TimeZoneDatabase {
    TimeZoneDatabase::bundled()
}

/// Starts a BackgroundJob from spec.jobTemplate at each time of spec.schedule.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nightshift.dev",
    version = "v1alpha1",
    kind = "BackgroundJobSchedule",
    plural = "backgroundjobschedules",
    singular = "backgroundjobschedule",
    shortname = "bgjs",
    category = "nightshift",
    namespaced,
    status = "BackgroundJobScheduleStatus",
    derive = "PartialEq",
    doc = "Starts a BackgroundJob from spec.jobTemplate at each time of spec.schedule, as a CronJob starts Jobs.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule", description = "the cron schedule"),
    printcolumn(
        name = "Timezone",
        type_ = "string",
        json_path = ".spec.timeZone",
        description = "the schedule's time zone (UTC when empty)"
    ),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend", description = "no runs while true"),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.active[*].name",
        description = "the schedule's jobs that have not finished"
    ),
    printcolumn(
        name = "Last Schedule",
        type_ = "date",
        json_path = ".status.lastScheduleTime",
        description = "when a job was last scheduled"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundJobScheduleSpec {
    /// When to start a job, in cron format: 5 fields (minute hour day-of-month month
    /// day-of-week, like "30 2 * * *") or one of @hourly, @daily (@midnight), @weekly, @monthly,
    /// @yearly (@annually). A time zone belongs in spec.timeZone, not here (no TZ= or CRON_TZ=).
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,

    /// The IANA time zone spec.schedule is read in, like Europe/Berlin. Unset: UTC (unlike a
    /// CronJob, whose default is the local time zone of its controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// What to do when a run is due while a job of this schedule is still active: Allow (start
    /// it beside), Forbid (skip it; it starts later if the active job finishes within
    /// spec.startingDeadlineSeconds of the run's time), Replace (delete the active jobs, then
    /// start it). Default Allow.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// A run that could not start within this many seconds of its scheduled time (the operator
    /// was down, or Forbid held it) is skipped. Unset: no deadline (a late run still starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,

    /// While true, no job is started (runs due meanwhile are missed); jobs already started are
    /// left alone. Default false.
    #[serde(default)]
    pub suspend: bool,

    /// How many succeeded jobs to keep; older ones are deleted. Default 3.
    #[serde(default = "default_successful_limit")]
    #[schemars(range(min = 0))]
    pub successful_jobs_history_limit: i32,

    /// How many failed jobs to keep; older ones are deleted. Default 1.
    #[serde(default = "default_failed_limit")]
    #[schemars(range(min = 0))]
    pub failed_jobs_history_limit: i32,

    /// The BackgroundJob to start at each scheduled time.
    pub job_template: JobTemplate,
}

fn default_successful_limit() -> i32 {
    3
}

fn default_failed_limit() -> i32 {
    1
}

/// How a run that is due meets the schedule's jobs still active.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start it beside the active jobs.
    #[default]
    Allow,
    /// Skip it while a job is active.
    Forbid,
    /// Delete the active jobs, then start it.
    Replace,
}

/// The BackgroundJob a schedule starts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// Labels and annotations of every job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<JobTemplateMetadata>,
    /// The job's spec, as a BackgroundJob's: spec.template, or spec.templateRef and
    /// spec.parameters. Kept as written: a field left out is filled when the job is created
    /// (from the BackgroundJobTemplate it names, else the BackgroundJob default).
    #[schemars(with = "BackgroundJobSpec")]
    pub spec: serde_json::Value,
}

/// Labels and annotations of the jobs a schedule starts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplateMetadata {
    /// Labels of every job (beside nightshift.dev/schedule, which names the schedule).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of every job (beside nightshift.dev/scheduled-at, its scheduled time).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the controller observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundJobScheduleStatus {
    /// The scheduled time of the latest job started (or the latest time skipped for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When a job of this schedule last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The jobs of this schedule that have not finished, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ActiveJob>,
    /// Scheduling: True while runs start on schedule; False with reason Suspended or
    /// InvalidSchedule (the message says what is wrong).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A job of the schedule that has not finished.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveJob {
    /// The BackgroundJob's name.
    pub name: String,
}
