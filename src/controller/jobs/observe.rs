//! Turns a worker pod into what the decision core needs to know of it.

use k8s_openapi::{
    api::coordination::v1::Lease,
    apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;

use crate::controller::lean::{Worker, WorkerPod};

use nightshift_api::{Failure, ShardProgress};

use nightshift_core::{LeaseView, PodPhase, PodView};

/// What the operator remembers of a Lease between events: when it saw it change, on its own clock.
#[derive(Clone, Debug, Default)]
pub struct LeaseMemory {
    holder: Option<String>,
    renew: Option<String>,
    renewed_at: Option<Timestamp>,
    /// When the API server stamped the renewal found at first sight, until a renewal is seen.
    first_sight: Option<Timestamp>,
    done: Option<i64>,
    progress_at: Option<Timestamp>,
}

impl LeaseMemory {
    /// Takes in the Lease as seen at `now`. The first sight of a renewed Lease (after a restart)
    /// counts as a renewal now, and keeps the renewTime written in it for the core to credit.
    pub fn observe(&mut self, lease: &Lease, now: Timestamp) {
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.clone());
        let renew = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string());
        let done = progress(lease).map(|p| p.done);
        if holder != self.holder {
            // A new attempt: what the Lease holds from the one before is no heartbeat of this one.
            let first_sight = self.holder.is_none() && self.renew.is_none();
            let stamp = lease.managed_fields().iter().find_map(|m| m.time.as_ref()).map(|t| t.0);
            *self = LeaseMemory {
                holder,
                renewed_at: if first_sight { renew.as_ref().map(|_| now) } else { None },
                first_sight: stamp.filter(|_| first_sight && renew.is_some()),
                renew,
                done,
                progress_at: None,
            };
            return;
        }
        if renew != self.renew {
            self.renew = renew;
            self.renewed_at = self.renew.as_ref().map(|_| now);
            self.first_sight = None;
        }
        if done != self.done {
            self.done = done;
            self.progress_at = Some(now);
        }
    }
}

/// When the API server last stamped a change of the Lease's renewTime: the time of the
/// managedFields entry that owns `spec.renewTime` (the server sets it, on its clock, whenever that
/// manager's write changed a field; a worker's clock plays no part). None when no entry owns it.
pub fn renewal_stamp(lease: &Lease) -> Option<Timestamp> {
    lease
        .managed_fields()
        .iter()
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0["f:spec"].get("f:renewTime").is_some()))
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max()
}

/// The one managedFields entry a cached Lease keeps: the renewal's stamp, nothing else.
pub fn stamp_entry(time: Timestamp) -> ManagedFieldsEntry {
    ManagedFieldsEntry { time: Some(Time(time)), ..Default::default() }
}

/// The view of shard S's Lease of job `job`, or None when it is not one the operator made: its
/// name must be JOB-S, and its holder a pod of that shard, JOB-S-ATTEMPT, as the operator writes
/// it. The shard comes from the name, which no worker can change (an annotation or holder
/// rewritten by a worker must not move its report to another shard).
pub fn lease_view(job: &str, lease: &Lease, memory: Option<&LeaseMemory>) -> Option<LeaseView> {
    let name = lease.name_any();
    let shard = number_after(job, &name)?;
    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
    number_after(&name, holder.as_deref()?)?;
    let memory = memory.filter(|m| m.holder == holder);
    let result = lease
        .annotations()
        .get(nightshift_api::ANNOTATION_RESULT)
        .filter(|r| !r.is_empty() && r.len() <= nightshift_api::MAX_RESULT_BYTES)
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .filter(|v| v.is_object());
    Some(LeaseView {
        shard,
        holder,
        last_renewal: memory.and_then(|m| m.renewed_at),
        renewal_stamp_at_first_sight: memory.and_then(|m| m.first_sight),
        progress: progress(lease),
        progress_since: memory.and_then(|m| m.progress_at),
        result,
    })
}

/// N when `name` is exactly `prefix-N` (N a number written as the operator writes it: no sign,
/// no leading zero), so that `job-1`'s pods are never taken for `job-10`'s.
fn number_after(prefix: &str, name: &str) -> Option<i32> {
    let n: i32 = name.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()?;
    (n >= 0 && name.len() == prefix.len() + 1 + n.to_string().len()).then_some(n)
}

/// "DONE/TOTAL" and the message, as the worker wrote them; None when absent or unreadable. An
/// attempt that has reported nothing yet is where its checkpoint left the shard: a resumed
/// attempt's progress starts there, not at zero.
fn progress(lease: &Lease) -> Option<ShardProgress> {
    let annotations = lease.annotations();
    let reported = annotations.get(nightshift_api::ANNOTATION_PROGRESS).filter(|p| !p.is_empty());
    let Some(reported) = reported else {
        let (done, total) = done_total(annotations.get(nightshift_api::ANNOTATION_CHECKPOINT_PROGRESS)?)?;
        return Some(ShardProgress { done, total, message: String::new() });
    };
    let (done, total) = done_total(reported)?;
    let message =
        annotations.get(nightshift_api::ANNOTATION_PROGRESS_MESSAGE).map(|m| clip(m, 256)).unwrap_or_default();
    Some(ShardProgress { done, total, message })
}

/// "DONE/TOTAL" as two counts, None when unreadable or negative.
fn done_total(s: &str) -> Option<(i64, i64)> {
    let (done, total) = s.split_once('/')?;
    let (done, total) = (done.trim().parse::<i64>().ok()?, total.trim().parse::<i64>().ok()?);
    (done >= 0 && total >= 0).then_some((done, total))
}

/// The view of a worker pod, or None when its labels did not say which shard and attempt it is.
/// `running_since`: when the operator first saw it Running.
pub fn pod_view(pod: &WorkerPod, running_since: Option<Timestamp>) -> Option<PodView> {
    let Worker { shard, attempt } = pod.worker?;
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let failure = (phase == PodPhase::Failed).then(|| {
        let terminated = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
            .find(|t| t.exit_code != 0);
        Failure {
            reason: status
                .and_then(|s| s.reason.clone())
                .or_else(|| terminated.and_then(|t| t.reason.clone()))
                .unwrap_or_else(|| "Error".into()),
            // The pod's own message (an eviction, say), else the container's last words: the
            // end of its termination message, where a failing program says why.
            message: status
                .and_then(|s| s.message.as_deref())
                .map(|m| clip(m, 256))
                .or_else(|| terminated.and_then(|t| t.message.as_deref()).map(|m| clip_front(m.trim_end(), 256)))
                .unwrap_or_default(),
            exit_code: terminated.map(|t| t.exit_code),
        }
    });
    let cannot_start = (phase == PodPhase::Pending).then(|| cannot_start(pod)).flatten();
    let disruption = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget" && c.status == "True"))
        .map(|c| Failure {
            reason: c.reason.clone().unwrap_or_else(|| "DisruptionTarget".into()),
            message: c.message.as_deref().map(|m| clip(m, 256)).unwrap_or_default(),
            exit_code: None,
        });
    Some(PodView {
        name: pod.name_any(),
        shard,
        attempt,
        phase,
        deletion: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        tracked: pod.finalizers().iter().any(|f| f == nightshift_api::FINALIZER_TRACKING),
        ready,
        failure,
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        running_since,
        disruption,
        cannot_start,
    })
}

/// Waiting reasons of the kubelet after which a container does not start without a change
/// elsewhere: an image it cannot pull, a config it cannot build.
const CANNOT_START: [&str; 5] =
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"];

/// Why a container of a pending pod cannot start, in the kubelet's words.
fn cannot_start(pod: &WorkerPod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let mut containers =
        status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    containers.find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| CANNOT_START.contains(r))?;
        let message = waiting.message.as_deref().unwrap_or_default();
        Some(Failure {
            reason: reason.to_string(),
            message: clip(&format!("container {} cannot start: {message}", c.name), 256),
            exit_code: None,
        })
    })
}

/// At most the last `max` bytes of `s`, marked with "…" where it was cut.
fn clip_front(s: &str, max: usize) -> String {
    let cut = nightshift_api::truncate_start(s, max);
    if cut.len() < s.len() { format!("…{cut}") } else { cut.to_string() }
}

/// At most `max` bytes of `s`, marked with "…" where it was cut.
fn clip(s: &str, max: usize) -> String {
    let cut = nightshift_api::truncate(s, max);
    if cut.len() < s.len() { format!("{cut}…") } else { cut.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, holder: Option<&str>, shard_annotation: &str) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {nightshift_api::ANNOTATION_SHARD: shard_annotation}},
            "spec": {"holderIdentity": holder},
        }))
        .unwrap()
    }

    #[test]
    fn the_shard_comes_from_the_lease_name_not_from_its_annotation() {
        let view = lease_view("job", &lease("job-1", Some("job-1-3"), "0"), None).expect("shard 1's Lease");
        assert_eq!((view.shard, view.holder.as_deref()), (1, Some("job-1-3")));
        assert_eq!(lease_view("job", &lease("job-10", Some("job-10-1"), "10"), None).map(|v| v.shard), Some(10));
        // Not this job's shard Leases: another job's (job-1's shard 0), a name that is no shard.
        for name in ["job-1-0", "other-0", "job-", "job-01", "job-+1", "job--1", "jobs-1"] {
            assert_eq!(lease_view("job", &lease(name, Some(&format!("{name}-1")), "1"), None), None, "{name}");
        }
    }

    #[test]
    fn a_lease_held_by_no_pod_of_its_shard_is_ignored() {
        assert!(lease_view("job", &lease("job-1", Some("job-1-1"), "1"), None).is_some());
        // Shard 1's Lease held by shard 10's or shard 0's pod, by another job's, by nobody.
        for holder in [Some("job-10-1"), Some("job-0-1"), Some("job-1"), Some("job-1-x"), Some("other-1-1"), None] {
            assert_eq!(lease_view("job", &lease("job-1", holder, "1"), None), None, "holder {holder:?}");
        }
    }

    /// A Lease the operator created (holder) and a worker renewed, as the API server records it.
    fn renewed(renew: &str, operator_at: &str, worker_at: &str) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "job-0", "managedFields": [
                {"manager": "nightshift", "operation": "Apply", "time": operator_at,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:holderIdentity": {}}}},
                {"manager": "agent", "operation": "Update", "time": worker_at,
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:renewTime": {}}, "f:metadata": {}}},
            ]},
            "spec": {"holderIdentity": "job-0-1", "renewTime": renew},
        }))
        .unwrap()
    }

    #[test]
    fn a_renewal_found_at_first_sight_carries_the_servers_stamp_until_one_is_seen() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        // The worker's clock says 1999: the stamp is the server's.
        let mut lease = renewed("1999-01-01T00:00:00.000000Z", "2026-12-05T10:00:00Z", "2026-12-05T10:00:05Z");
        assert_eq!(renewal_stamp(&lease), Some(at("2026-12-05T10:00:05Z")));
        crate::controller::lean::lean_lease(&mut lease);
        assert_eq!(lease.managed_fields().len(), 1, "the cache keeps the stamp alone");
        let mut memory = LeaseMemory::default();
        memory.observe(&lease, at("2026-12-05T10:00:20Z"));
        let view = lease_view("job", &lease, Some(&memory)).unwrap();
        assert_eq!(view.last_renewal, Some(at("2026-12-05T10:00:20Z")));
        assert_eq!(view.renewal_stamp_at_first_sight, Some(at("2026-12-05T10:00:05Z")));
        // The next renewal is seen happen: the operator's own clock from then on.
        let mut next = renewed("1999-01-01T00:00:03.000000Z", "2026-12-05T10:00:00Z", "2026-12-05T10:00:21Z");
        crate::controller::lean::lean_lease(&mut next);
        memory.observe(&next, at("2026-12-05T10:00:22Z"));
        let view = lease_view("job", &next, Some(&memory)).unwrap();
        assert_eq!(view.last_renewal, Some(at("2026-12-05T10:00:22Z")));
        assert_eq!(view.renewal_stamp_at_first_sight, None);
        // A Lease no one renewed yet (the operator's alone) has no stamp.
        let fresh: Lease = serde_json::from_value(serde_json::json!({"metadata": {"name": "job-0", "managedFields": [
            {"manager": "nightshift", "operation": "Apply", "time": "2026-12-05T10:00:00Z",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:holderIdentity": {}}}}]}}))
        .unwrap();
        assert_eq!(renewal_stamp(&fresh), None);
    }

    #[test]
    fn clipping_keeps_the_start_of_a_message_or_the_end_of_a_log() {
        assert_eq!(clip("short", 256), "short");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip_front("abcdef", 3), "…def");
        // Whole characters only: "é" is 2 bytes.
        assert_eq!(clip_front("aéé", 3), "…é");
        let log = format!("{}\nerror: row 17 is not an email", "progress line\n".repeat(50));
        assert!(clip_front(&log, 256).ends_with("error: row 17 is not an email"));
    }
}
