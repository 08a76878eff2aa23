//! Heartbeats judged: a running worker that went silent, or heartbeats without progress.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::view::{LeaseView, PodPhase, PodView};
use crate::time::{min_opt, plus, until_exact};
use nightshift_api::{ActiveShard, Failure, Heartbeat, reasons::AttemptReason};

/// Fails a running attempt whose worker went silent (HeartbeatTimeout) or stopped making
/// progress (Stalled); otherwise asks to look again when that could next happen. Judged at the
/// instant `at`, to the nanosecond, like the renewals it counts from: a timeout is neither
/// rounded up to the next second nor down.
pub(super) fn heartbeat_failure(
    heartbeat: Option<&Heartbeat>,
    entry: &ActiveShard,
    pod: &PodView,
    lease: Option<&LeaseView>,
    at: Timestamp,
    requeue_after: &mut Option<Duration>,
) -> Option<Failure> {
    let hb = heartbeat?;
    // A pod that is not running yet (pulling its image, say) cannot heartbeat.
    if pod.phase != PodPhase::Running {
        return None;
    }
    let baseline = pod.running_since.unwrap_or(at).max(entry.start_time.0);
    let lease = lease.filter(|l| l.holder.as_deref() == Some(pod.name.as_str()));
    let beat = last_beat(lease, baseline, entry.start_time.0);
    let silent_at = plus(beat, i64::from(hb.timeout_seconds));
    if at >= silent_at {
        return Some(Failure {
            reason: AttemptReason::HeartbeatTimeout.into(),
            message: format!(
                "no heartbeat for {}s (spec.heartbeat.timeoutSeconds is {})",
                at.duration_since(beat).as_secs(),
                hb.timeout_seconds
            ),
            exit_code: None,
        });
    }
    *requeue_after = min_opt(*requeue_after, until_exact(at, silent_at));
    if let Some(stall) = hb.stall_seconds {
        let moved = lease.and_then(|l| l.progress_since).map_or(baseline, |p| p.max(baseline));
        let stalled_at = plus(moved, i64::from(stall));
        if at >= stalled_at {
            return Some(Failure {
                reason: AttemptReason::Stalled.into(),
                message: format!(
                    "heartbeats but no progress for {}s (spec.heartbeat.stallSeconds is {stall})",
                    at.duration_since(moved).as_secs()
                ),
                exit_code: None,
            });
        }
        *requeue_after = min_opt(*requeue_after, until_exact(at, stalled_at));
    }
    None
}

/// When the worker last renewed, as far as the operator can tell, or else `baseline` (when the
/// operator saw its pod start running: a worker gets a full timeout for its first renewal). A
/// renewal the operator saw happen counts when it saw it (its own clock, to the nanosecond). One
/// it only found already there (it started since: a leader change) counts when the API server
/// stamped it, never later than it was found nor before the attempt started: the renewal shows
/// the worker ran then, so neither the first sight of the renewal nor of the running pod restarts
/// a silent worker's timeout, and a worker's clock plays no part. The stamp is a whole second
/// (metav1.Time) the renewal happened within: it counts from that second's end, never early.
fn last_beat(lease: Option<&LeaseView>, baseline: Timestamp, started: Timestamp) -> Timestamp {
    let Some(seen) = lease.and_then(|l| l.last_renewal) else { return baseline };
    match lease.and_then(|l| l.renewal_stamp_at_first_sight) {
        Some(stamped) => plus(stamped, 1).min(seen).max(started),
        None => seen.max(baseline),
    }
}
