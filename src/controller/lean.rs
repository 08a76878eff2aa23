//! What the operator's caches keep of an object: what its decisions read, and no more.

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::Resource;

use super::jobs::observe;

/// Drops managedFields before an object enters a cache: decisions never read them, and they are
/// often half of an object's size (measured: a BackgroundJob is 5.4 KB with them, 2.0 KB without).
pub(super) fn lean<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A worker pod as the operator keeps it: metadata and status. Nothing it decides reads the spec
/// (the pod view, the budget, the orphan release read labels, owners, finalizers and status),
/// and the spec is most of a worker pod (the user's containers, the agent, volumes): measured in
/// `make bench` (its memory run with 100,000 pods).
pub(super) fn lean_pod(pod: &mut Pod) {
    lean(pod);
    pod.spec = None;
}

/// A Lease as the operator keeps it: of its managedFields only when its renewTime last changed,
/// as the API server stamped it (see [`observe::renewal_stamp`]).
pub(super) fn lean_lease(lease: &mut Lease) {
    let stamp = observe::renewal_stamp(lease);
    lease.metadata.managed_fields = stamp.map(|time| vec![observe::stamp_entry(time)]);
}
