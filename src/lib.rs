//! nightshift, the operator: the controllers and the process around them.
//!
//! From `kubectl apply` to a worker pod: [`nightshift_api`] defines the BackgroundJob; the
//! watches (`controller/watches.rs`) wake the job controller (`controller/jobs/reconcile.rs`),
//! which asks [`nightshift_core::decide`] what to do; [`nightshift_core::build::pod`] builds the
//! worker pod, which `controller/jobs/act.rs` creates.
//!
//! The workspace, by concern:
//! - `nightshift-api` (crates/api): the types, the CRD, the words of conditions and events,
//!   shard ranges; depends on no other crate of ours;
//! - `nightshift-core` (crates/core): the pure core — `jobs/` and `schedules/` decide, `build/`
//!   builds every object the operator writes;
//! - `nightshift` (this crate): [`controller`], the shell — the watches, a controller per kind
//!   (`jobs/`, `schedules/`); [`operator`], the process around them (rate-limited client,
//!   metrics, leader election and its loop, logging);
//! - `nightshift-worker` (crates/worker): the side of the heartbeat protocol that runs in worker
//!   pods (a Rust API and `nightshift agent`);
//! - `nightshift-plugin` (crates/plugin): `kubectl nightshift` and its dashboard, the tool a
//!   person uses on their own kubeconfig; it depends on the API crate only.

pub mod controller;
pub mod operator;
