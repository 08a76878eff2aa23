//! What the core decides, for a job or a schedule: the [`Decision`] for one job, and the events
//! ([`EventNote`], about a [`Related`] object) both cores publish.

use std::time::Duration;

use nightshift_api::{BackgroundJobStatus, reasons::EventReason};

/// An Event to publish on the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: EventReason,
    pub note: String,
    /// The object it is about, if one besides the one it is on: the event's related object.
    pub related: Option<Related>,
}

/// An event's related object. It also keeps two events of one reason apart: the event recorder
/// (like client-go's for events.k8s.io) folds events of one reason and related object into one
/// series that keeps the first note, so "created job a", then "created job b" with no related
/// object would read "created job a" (x2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Related {
    Pod(String),
    Job(String),
    Template(String),
}

impl EventNote {
    pub fn normal(reason: EventReason, note: impl Into<String>) -> Self {
        Self { warning: false, reason, note: note.into(), related: None }
    }

    pub fn warning(reason: EventReason, note: impl Into<String>) -> Self {
        Self { warning: true, ..Self::normal(reason, note) }
    }

    pub fn about(self, related: Related) -> Self {
        Self { related: Some(related), ..self }
    }
}

/// What to do for one job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The status to write (the controller writes it only when it differs from the current one).
    pub status: BackgroundJobStatus,
    /// (shard, attempt) of worker pods to create.
    pub create: Vec<(i32, i32)>,
    /// Pods to delete.
    pub delete: Vec<String>,
    /// Pods whose tracking finalizer may go once `status` is written.
    pub release: Vec<String>,
    pub events: Vec<EventNote>,
    /// Look again after this long at the latest (a retry, a deadline, the TTL).
    pub requeue_after: Option<Duration>,
    /// The job's TTL after finishing has passed: delete it.
    pub delete_job: bool,
    /// `status` is to be written, with the current heartbeats: the caller notes `now` as the last fold.
    pub folded: bool,
    /// Reasons of the attempts this step found failed (for metrics).
    pub failed_attempts: Vec<String>,
    /// Reasons of the attempts this step found taken away by the cluster (for metrics).
    pub disrupted_attempts: Vec<String>,
    /// Write the job's BackgroundJobTemplate, of this generation, into its spec.
    pub resolve: Option<i64>,
}

impl Decision {
    /// Nothing to do but record outcomes: no pod to create or delete, nothing to tell.
    pub(crate) fn quiet(&self) -> bool {
        self.create.is_empty()
            && self.delete.is_empty()
            && self.events.is_empty()
            && self.failed_attempts.is_empty()
            && self.disrupted_attempts.is_empty()
    }
}
