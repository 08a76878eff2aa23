//! nightshift: a Kubernetes operator for long-running background jobs.
//!
//! From `kubectl apply` to a worker pod: [`api`] defines the BackgroundJob; [`controller`]
//! watches it and its pods (`controller/watches.rs`) and its job controller
//! (`controller/jobs/reconcile.rs`) asks [`decision::decide`] what to do;
//! [`decision::build::pod`] builds the worker pod, which `controller/jobs/act.rs` creates.
//!
//! The modules, by concern:
//! - [`api`]: the types, the CRD, the words of conditions and events, shard ranges;
//! - [`decision`]: the pure core — `jobs/` and `schedules/` decide, `build/` builds every object
//!   the operator writes;
//! - [`controller`]: the shell — the watches, a controller per kind (`jobs/`, `schedules/`);
//! - [`operator`]: the process around the controllers (rate-limited client, metrics, leader
//!   election and its loop, logging);
//! - [`worker`]: the side of the heartbeat protocol that runs in worker pods (a Rust API and
//!   `nightshift agent`);
//! - [`plugin`]: `kubectl nightshift` and its dashboard, the tool a person uses on their own
//!   kubeconfig; [`sim`]: plays the node where there is no kubelet.

pub mod api;
pub mod controller;
pub mod decision;
pub mod operator;
pub mod plugin;
pub mod sim;
pub mod worker;
