//! The BackgroundJob controller: reconciles each job as observe → decide → act → record.
//!
//! A reading order: `reconcile.rs` (the pipeline), `act.rs` and `record.rs` (the API calls),
//! then `context.rs` (what reconciles share and the operator remembers), `observe.rs` (objects
//! to views), `access.rs` (claiming the workers' Lease and RBAC), `orphans.rs`, `chains.rs`
//! (spec.after), `templates.rs` (spec.templateRef).

mod access;
mod act;
pub(crate) mod chains;
pub(crate) mod context;
pub(crate) mod observe;
pub(crate) mod orphans;
pub(crate) mod reconcile;
mod record;
pub(crate) mod templates;
