//! What the dashboard shows, from the jobs alone (pure): a row per job, and a job's shards as
//! a grid of states.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use nightshift_api::{BackgroundJob, Phase, Ranges};

use crate::describe::Glance;

/// Jobs with more shards than this get no grid (the counts say enough).
pub const MAX_GRID_SHARDS: i32 = 5000;

/// A row of the jobs page.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// "namespace/name": the row's key and the job page's address.
    pub key: String,
    #[serde(flatten)]
    pub glance: Glance,
    /// When the job was created (sorting), and the latest heartbeat (so the page can tick its
    /// age), as RFC 3339.
    pub created: Option<String>,
    pub last_heartbeat: Option<String>,
    /// Active first: Running 0, Queued 1, Suspended 2, Pending 3, finished 4.
    pub order: u8,
}

impl Row {
    pub fn of(job: &BackgroundJob, now: Timestamp) -> Self {
        let glance = Glance::of(job, now);
        let status = job.status.as_ref();
        let order = match status.and_then(|s| s.phase) {
            Some(Phase::Running) => 0,
            Some(Phase::Queued) => 1,
            Some(Phase::Suspended) => 2,
            None => 3,
            Some(Phase::Succeeded | Phase::Failed) => 4,
        };
        Row {
            key: key(job),
            glance,
            created: job.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            last_heartbeat: status.and_then(|s| s.last_heartbeat_time.as_ref()).map(|t| t.0.to_string()),
            order,
        }
    }
}

pub fn key(job: &BackgroundJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// The state of a shard in the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    Succeeded,
    Failed,
    Running,
    Retrying,
    Pending,
    /// Not part of this run (spec.onlyShards).
    Skipped,
}

/// Each shard's state, by index; None for a job too large to draw.
pub fn grid(job: &BackgroundJob) -> Option<Vec<Cell>> {
    let shards = job.spec.shards;
    if shards > MAX_GRID_SHARDS {
        return None;
    }
    let status = job.status.clone().unwrap_or_default();
    let succeeded = Ranges::from_opt(status.succeeded_shards.as_ref());
    let failed = Ranges::from_opt(status.failed_shards.as_ref());
    let only = job.spec.only_shards.as_deref().map(Ranges::parse);
    let grouped: Ranges =
        status.retrying_groups.iter().flat_map(|g| Ranges::parse(&g.shards).iter().collect::<Vec<_>>()).collect();
    let mut cells = vec![Cell::Pending; shards.max(0) as usize];
    for (i, cell) in cells.iter_mut().enumerate() {
        let shard = i as i32;
        *cell = if only.as_ref().is_some_and(|o| !o.contains(shard)) {
            Cell::Skipped
        } else if succeeded.contains(shard) {
            Cell::Succeeded
        } else if failed.contains(shard) {
            Cell::Failed
        } else if status.active.iter().any(|a| a.shard == shard) {
            Cell::Running
        } else if status.retrying.iter().any(|r| r.shard == shard) || grouped.contains(shard) {
            Cell::Retrying
        } else {
            Cell::Pending
        };
    }
    Some(cells)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use nightshift_api::job_fixture;

    #[test]
    fn the_grid_colours_each_shard_by_its_state() {
        let spec = json!({"shards": 7, "onlyShards": "0-5", "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}});
        let job: BackgroundJob = job_fixture::job("import", spec)
            .namespace("shop")
            .metadata("creationTimestamp", json!("2026-11-23T12:00:00Z"))
            .status(json!({"phase": "Running", "succeededShards": "0-1", "failedShards": "2",
                           "active": [{"shard": 3, "attempt": 1, "pod": "import-3-1", "startTime": "2026-11-23T12:00:00Z"}],
                           "retrying": [{"shard": 4, "attempt": 2, "failures": 1}]}))
            .build();
        use Cell::*;
        assert_eq!(grid(&job).unwrap(), vec![Succeeded, Succeeded, Failed, Running, Retrying, Pending, Skipped]);
        let row = Row::of(&job, "2026-11-23T12:01:00Z".parse().unwrap());
        assert_eq!(
            (row.key.as_str(), row.order, row.created.as_deref()),
            ("shop/import", 0, Some("2026-11-23T12:00:00Z"))
        );
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["phase"], "Running", "the glance is flattened into the row: {json}");
    }
}
