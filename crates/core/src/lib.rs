//! The decision core: from what is observed and `now` to what should be done and the new status.
//! Pure functions only (time comes in as `now`); the controllers carry the decisions out.
//!
//! - [`jobs`]: a BackgroundJob's step — `decide` (the pipeline), the shard book, the queue,
//!   chains and templates.
//! - [`schedules`]: a BackgroundJobSchedule's step — cron times, the jobs to start and to delete.
//! - [`build`]: every object the operator writes (worker pods, Leases, the workers' RBAC, a
//!   schedule's jobs), built from the decisions; the controllers only send them.
//! - [`decided`]: what both decide ([`Decision`], [`EventNote`], [`Related`]); `conditions` and
//!   `time`: the helpers both use.
//!
//! The workspace (README, "Development"): `nightshift-api` ← `nightshift-core` ← `nightshift`
//! (the operator, the root package); `nightshift-worker` and `nightshift-plugin` depend on the
//! API crate only; `nightshift-bench` on the API and the core.

pub mod build;
mod conditions;
pub mod decided;
pub mod jobs;
pub mod schedules;
mod time;

pub use decided::{Decision, EventNote, Related};
pub use jobs::{
    FOLD_SECONDS, FORBIDDEN_PAUSE_SECONDS, LeaseView, Observed, PodPhase, PodView, Refusal, backoff_seconds, decide,
};
pub use time::whole;
