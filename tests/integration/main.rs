//! Integration tests against the real local control plane (`make cluster-up`).

mod agent;
mod control_plane;
mod crd_validation;
mod heartbeats;
mod helm;
mod jobs;
mod operator;
mod queue;
mod support;
