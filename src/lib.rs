//! nightshift: a Kubernetes operator for long-running background jobs.
//!
//! From `kubectl apply` to a worker pod: [`api`] defines the BackgroundJob; [`controller`]
//! watches it and its pods and asks [`decision::decide`] what to do; [`decision::build::pod`] builds
//! the worker pod; [`sim`] plays the node where there is no kubelet; [`worker`] is the side of
//! the heartbeat protocol that runs in worker pods (a Rust API and `nightshift agent`); [`operator`]
//! is the process around the controller (rate-limited client, metrics, leader election);
//! [`plugin`] is `kubectl nightshift`, the tool a person uses on their own kubeconfig.

pub mod api;
pub mod controller;
pub mod decision;
pub mod operator;
pub mod plugin;
pub mod sim;
pub mod worker;
