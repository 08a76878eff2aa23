//! The imperative shell around [`nightshift_core`]: the watches, and a controller per kind that
//! carries the core's decisions out.
//!
//! - `watches.rs`: every watch and cache, what each change wakes, and `run_with_metrics`, which
//!   starts them with both controllers.
//! - `jobs/`: the BackgroundJob controller, observe → decide → act → record (`jobs/reconcile.rs`).
//! - `schedules/`: the BackgroundJobSchedule controller, which shares the job watch.
//! - Shared by both: `writes.rs` (the fenced status write, read-your-writes, delete by uid),
//!   `events.rs`, `expectations.rs`, `triggers.rs` (watch events to keys), `error_policy`.

mod events;
mod expectations;
pub(crate) mod jobs;
mod lean;
pub(crate) mod schedules;
mod triggers;
mod watches;
mod writes;

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt, runtime::controller::Action};
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
    Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time")
}
