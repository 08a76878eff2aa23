//! Integration tests against the real local cluster (`make cluster-up`): its control plane, and
//! (`node`, and `helm`'s last test) its real node.

mod admission;
mod agent;
mod bounds;
mod chains;
mod control_plane;
mod crd_validation;
mod dashboard;
mod fencing;
mod heartbeats;
mod helm;
mod jobs;
mod node;
mod operator;
mod ownership;
mod plugin;
mod queue;
mod schedules;
mod support;
mod templates;
mod wakeups;
