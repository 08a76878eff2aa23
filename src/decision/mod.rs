//! The decision core: from what is observed (the job, its pods and Leases, the last act's
//! refusal) and `now` to what should be done (pods to create and delete, finalizers to release,
//! events) and the new status. Pure functions only; the controller carries the decisions out.
//!
//! A reading order: `view` (what `decide` is given), `step` (the pipeline), `book` (the shards'
//! states and the phases that move them), `status` (the status written from the book), `fold` (what reaches it at a bounded rate).

mod book;
pub mod chain;
mod fold;
mod heartbeat;
mod outcome;
pub mod pod;
pub mod queue;
pub mod ranges;
mod retrying;
pub mod schedule;
mod status;
mod step;
pub mod template;
mod view;

pub use step::{Decision, EventNote, Related, backoff_seconds, decide};
pub use view::{FOLD_SECONDS, FORBIDDEN_PAUSE_SECONDS, LeaseView, Observed, PodPhase, PodView, Refusal};

#[cfg(test)]
mod tests;
