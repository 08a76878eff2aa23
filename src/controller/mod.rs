//! The imperative shell around [`nightshift_core`]: the watches, and a controller per kind that
//! carries the core's decisions out.
//!
//! - `watches.rs`: every watch and cache, what each change wakes, and `run_with_metrics`, which
//!   starts them with both controllers.
//! - `jobs/`: the BackgroundJob controller, observe → decide → act → record (`jobs/reconcile.rs`).
//! - `schedules/`: the BackgroundJobSchedule controller, which shares the job watch.
//! - Shared by both: `writes.rs` (the fenced status write, read-your-writes, delete by uid),
//!   `events.rs`, `expectations.rs`, `triggers.rs` (watch events to keys), `owners.rs` (the pod
//!   and Lease caches indexed by job), `error_policy`.

mod events;
mod expectations;
pub(crate) mod jobs;
mod lean;
mod owners;
pub(crate) mod schedules;
mod triggers;
mod watches;
mod writes;

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt, runtime::controller::Action};
use nightshift_core::whole;
use tracing::warn;

use crate::operator::{Metrics, metrics::ErrorLabel};

use nightshift_api::BackgroundJobSchedule;

use nightshift_core::jobs::queue::Budget;

pub use jobs::observe::{lease_view, pod_view};
pub use watches::{run, run_with_metrics};
pub use writes::fenced_status;

/// Everything that can go wrong in a reconcile. Each is retried; none stops the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
        }
    }
}

/// Options of `nightshift run` that the controller itself uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace (all when None).
    pub namespace: Option<String>,
    /// How long to gather triggers for one job before reconciling it.
    pub debounce: Duration,
    /// How long a job's pods' changes are gathered, from the first, before they wake it.
    pub pod_batch: Duration,
    /// How many jobs are reconciled at once.
    pub concurrency: u16,
    /// The image holding the nightshift binary, copied into workers that ask for the agent.
    pub agent_image: Option<String>,
    /// Heartbeats alone change a job's status at most once per this many seconds.
    pub fold_seconds: i64,
    /// Caps on live worker pods, operator-wide and per namespace.
    pub budget: Budget,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: None,
            debounce: Duration::from_millis(50),
            pod_batch: Duration::from_secs(1),
            concurrency: 64,
            agent_image: None,
            fold_seconds: nightshift_core::FOLD_SECONDS,
            budget: Budget::default(),
        }
    }
}

/// A controller's context, as the shared [`error_policy`] reads it.
pub(crate) trait Reconciles {
    fn metrics(&self) -> &Metrics;
}

impl Reconciles for jobs::context::Context {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Reconciles for schedules::ScheduleContext {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Both controllers' answer to a failed reconcile: counted by error, logged, retried in 5 s.
fn error_policy<K: Resource<DynamicType = ()>, C: Reconciles>(object: Arc<K>, error: &Error, ctx: Arc<C>) -> Action {
    ctx.metrics().reconcile_errors.get_or_create(&ErrorLabel { error: error.metric_label().into() }).inc();
    let (namespace, name) = (object.namespace().unwrap_or_default(), object.name_any());
    if K::kind(&()) == BackgroundJobSchedule::kind(&()) {
        warn!(%namespace, schedule = %name, error = %error, "reconcile failed; retrying in 5s");
    } else {
        warn!(%namespace, job = %name, error = %error, "reconcile failed; retrying in 5s");
    }
    Action::requeue(Duration::from_secs(5))
}

/// `now`, in whole seconds: the precision of the times in the status, so that an unchanged
/// status compares equal.
pub fn now() -> Timestamp {
    whole(Timestamp::now())
}

/// A wait decided at `now` (the whole second the reconcile judged at, see [`now`]), counted from
/// that instant rather than from `at`, when the reconcile ends: neither the second's fraction nor
/// the time the writes took is waited on top (a silent worker's timeout would fire up to a second
/// late, more under load). Never early: what the wait is for falls due at `now + wait` (a whole
/// second, or for a heartbeat the very instant its timeout passes), so a reconcile woken then
/// judges it due.
pub fn wait_from(now: Timestamp, wait: Duration, at: Timestamp) -> Duration {
    wait.saturating_sub(Duration::try_from(at.duration_since(now)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_wait_counts_from_the_decisions_now_not_from_the_end_of_the_reconcile() {
        let now = at("2026-12-05T10:00:20Z");
        // Decided at 20 (the reconcile ran at 20.7 and ended at 20.9): due at 60, not 60.9.
        assert_eq!(
            wait_from(now, Duration::from_secs(40), at("2026-12-05T10:00:20.9Z")),
            Duration::from_millis(39_100)
        );
        // Writes that took 3 s come off the wait; a wait already over is no wait.
        assert_eq!(wait_from(now, Duration::from_secs(15), at("2026-12-05T10:00:23Z")), Duration::from_secs(12));
        assert_eq!(wait_from(now, Duration::from_secs(1), at("2026-12-05T10:00:22Z")), Duration::ZERO);
        // A clock seen going back changes nothing.
        assert_eq!(wait_from(now, Duration::from_secs(5), at("2026-12-05T10:00:19Z")), Duration::from_secs(5));
    }
}
