//! The decision core: from what is observed (the job, its pods) and `now` to what should be
//! done (pods to create and delete, finalizers to release, events) and the new status.
//! Pure functions only; the controller carries the decisions out.

pub mod pod;
pub mod queue;
pub mod ranges;
mod step;

pub use step::{
    Decision, EventNote, FOLD_SECONDS, LeaseView, Observed, PodPhase, PodView, backoff_seconds, decide, fail,
};

#[cfg(test)]
mod tests;
