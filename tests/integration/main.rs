//! Integration tests against the real local control plane (`make cluster-up`).

mod control_plane;
mod jobs;
mod support;
