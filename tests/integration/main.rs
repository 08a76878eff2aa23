//! Integration tests against the real local control plane (`make cluster-up`).

mod control_plane;
mod crd_validation;
mod jobs;
mod support;
