//! Heartbeats judged: a running worker that went silent, or heartbeats without progress.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::view::{LeaseView, PodPhase, PodView};
use crate::{
    api::{ActiveShard, Failure, Heartbeat, reasons::AttemptReason},
    decision::time::{min_opt, plus, until},
};

/// Fails a running attempt whose worker went silent (HeartbeatTimeout) or stopped making
/// progress (Stalled); otherwise asks to look again when that could next happen.
pub(super) fn heartbeat_failure(
    heartbeat: Option<&Heartbeat>,
    entry: &ActiveShard,
    pod: &PodView,
    lease: Option<&LeaseView>,
    now: Timestamp,
    requeue_after: &mut Option<Duration>,
) -> Option<Failure> {
    let hb = heartbeat?;
    // A pod that is not running yet (pulling its image, say) cannot heartbeat.
    if pod.phase != PodPhase::Running {
        return None;
    }
    let baseline = pod.running_since.unwrap_or(now).max(entry.start_time.0);
    let lease = lease.filter(|l| l.holder.as_deref() == Some(pod.name.as_str()));
    let beat = lease.and_then(|l| last_beat(l, hb)).map_or(baseline, |b| b.max(baseline));
    let silent_at = plus(beat, i64::from(hb.timeout_seconds));
    if now >= silent_at {
        return Some(Failure {
            reason: AttemptReason::HeartbeatTimeout.into(),
            message: format!(
                "no heartbeat for {}s (spec.heartbeat.timeoutSeconds is {})",
                now.duration_since(beat).as_secs(),
                hb.timeout_seconds
            ),
            exit_code: None,
        });
    }
    *requeue_after = min_opt(*requeue_after, until(now, silent_at));
    if let Some(stall) = hb.stall_seconds {
        let moved = lease.and_then(|l| l.progress_since).map_or(baseline, |p| p.max(baseline));
        let stalled_at = plus(moved, i64::from(stall));
        if now >= stalled_at {
            return Some(Failure {
                reason: AttemptReason::Stalled.into(),
                message: format!(
                    "heartbeats but no progress for {}s (spec.heartbeat.stallSeconds is {stall})",
                    now.duration_since(moved).as_secs()
                ),
                exit_code: None,
            });
        }
        *requeue_after = min_opt(*requeue_after, until(now, stalled_at));
    }
    None
}

/// When the worker last renewed, as far as the operator can tell. A renewal it saw happen counts
/// when it saw it (its own clock). One it only found already there (it started since: a leader
/// change) counts when the worker wrote it, on the worker's clock, but never later than it was
/// found, nor earlier than two heartbeat intervals before the timeout from then: a silent worker
/// is not given a fresh timeout by every new leader, and a live worker whose clock runs behind
/// keeps two intervals to renew where the operator sees it.
pub(super) fn last_beat(lease: &LeaseView, hb: &Heartbeat) -> Option<Timestamp> {
    let seen = lease.last_renewal?;
    let Some(written) = lease.first_sight_renew_time else { return Some(seen) };
    let grace = (2 * i64::from(hb.interval_seconds)).min(i64::from(hb.timeout_seconds));
    let earliest = plus(seen, grace - i64::from(hb.timeout_seconds));
    Some(written.max(earliest).min(seen))
}
