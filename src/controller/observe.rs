//! Turns a worker pod into what the decision core needs to know of it.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::{
    api::{self, Failure},
    decision::{PodPhase, PodView},
};

/// The view of a worker pod, or None when its labels do not say which shard and attempt it is.
pub fn pod_view(pod: &Pod) -> Option<PodView> {
    let labels = pod.labels();
    let shard = labels.get(api::LABEL_SHARD)?.parse().ok()?;
    let attempt = labels.get(api::LABEL_ATTEMPT)?.parse().ok()?;
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let failure = (phase == PodPhase::Failed).then(|| {
        let terminated = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
            .find(|t| t.exit_code != 0);
        Failure {
            reason: status
                .and_then(|s| s.reason.clone())
                .or_else(|| terminated.and_then(|t| t.reason.clone()))
                .unwrap_or_else(|| "Error".into()),
            message: status
                .and_then(|s| s.message.clone())
                .or_else(|| terminated.and_then(|t| t.message.clone()))
                .map(|m| truncate(&m, 256))
                .unwrap_or_default(),
            exit_code: terminated.map(|t| t.exit_code),
        }
    });
    Some(PodView {
        name: pod.name_any(),
        shard,
        attempt,
        phase,
        deleting: pod.metadata.deletion_timestamp.is_some(),
        tracked: pod.finalizers().iter().any(|f| f == api::FINALIZER_TRACKING),
        ready,
        failure,
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
