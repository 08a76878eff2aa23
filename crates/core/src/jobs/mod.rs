//! A BackgroundJob's step: from the observed job (its pods and Leases, the last act's refusal)
//! and `now` to the pods to create and delete, finalizers to release, events, and the new status.
//!
//! A reading order: `view` (what `decide` is given), `decide` (the pipeline), `settle` (the
//! job's phase and the attempts it starts), `book` (the shards' states and the phases that move
//! them), `outcome` (attempts that ended), `summary` (the status written from the book), `fold`
//! (what reaches it at a bounded rate). Beside it: `queue` (the worker budget across jobs),
//! `chain` (spec.after), and `template` (spec.templateRef).

mod book;
pub mod chain;
mod decide;
mod fold;
mod heartbeat;
mod outcome;
pub mod queue;
mod retrying;
mod settle;
mod summary;
pub mod template;
mod view;

pub use decide::decide;
pub use outcome::backoff_seconds;
pub use view::{FOLD_SECONDS, FORBIDDEN_PAUSE_SECONDS, LeaseView, Observed, PodPhase, PodView, Refusal};

pub use super::decided::{Decision, EventNote, Related};

#[cfg(test)]
mod tests;
