//! The writes both controllers make the same way: a status written only onto the version it was
//! decided from (fenced; 409 when the object changed since), read-your-writes while the cache
//! lags, and deletes by uid.

use std::{fmt::Debug, sync::Arc, time::Duration};

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::debug;

use crate::operator::Metrics;

use nightshift_api as api;

/// How soon an object whose status write was fenced off is decided again, should the newer
/// version not have woken it by then.
pub const FENCED_RETRY: Duration = Duration::from_secs(2);

/// Writes `status` onto `object` at the version it was decided from ([`fenced_status`]). None
/// when the API server refused it for that reason (409: the object changed since, counted in
/// `status_writes_fenced`): its newer version, on its way to the cache, wakes it again.
pub async fn write_status<K>(
    client: &Client,
    metrics: &Metrics,
    object: &K,
    status: &impl Serialize,
) -> Result<Option<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
{
    let patch = fenced_status(object, status);
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let params = PatchParams { field_manager: Some(api::MANAGER.into()), ..PatchParams::default() };
    match api.patch_status(&object.name_any(), &params, &Patch::<()>::Json(patch)).await {
        Ok(written) => {
            metrics.status_writes.inc();
            Ok(Some(written))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            metrics.status_writes_fenced.inc();
            let kind = K::kind(&());
            debug!(resource_version = ?object.resource_version(), "status write fenced off: the {kind} changed since");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Deletes `name` (in the background) only while it is the object of `uid`, a precondition: one
/// of that name created since is never deleted in its place. False when it was gone already or
/// is another object now (404, 409).
pub async fn delete_by_uid<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<bool, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid, resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// resourceVersions are etcd revisions: comparable as numbers in practice. Unparseable ones
/// count as newest, so the cache is then simply not used.
pub fn resource_version(object: &impl Resource) -> u64 {
    object.meta().resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// The JSON patch that writes `status` onto `object` only at the version it was decided from:
/// it sets the resourceVersion, which the API server then takes as a precondition and answers
/// 409 when the object changed since (a paused former leader, a decision from a stale cache).
/// The status is ours alone, so it is replaced whole. A JSON patch, not a server-side apply: the
/// API server allocates a fifth less for it (no YAML decoding of the body, no merge of the
/// applied fields; measured), and a status write is the most frequent request the operator makes.
pub fn fenced_status<K: Resource<DynamicType = ()>>(object: &K, status: &impl serde::Serialize) -> json_patch::Patch {
    serde_json::from_value(serde_json::json!([
        {"op": "replace", "path": "/metadata/resourceVersion", "value": object.meta().resource_version},
        {"op": "add", "path": "/status", "value": status},
    ]))
    .expect("a valid JSON patch")
}

/// Read-your-writes. `written` is the status this process last wrote to `object`, with the
/// resourceVersion that write produced: while the cache shows an older `object`, it gets that
/// status and resourceVersion (so a stale cache never undoes a decision, and the next write is
/// fenced on the version it was decided from); once the cache has caught up, `written` is
/// forgotten.
pub fn with_written<K: Resource + Clone, S: Clone>(
    object: Arc<K>,
    written: &mut Option<(u64, S)>,
    status: fn(&mut K) -> &mut Option<S>,
) -> Arc<K> {
    match written {
        Some((rv, latest)) if resource_version(&*object) < *rv => {
            let mut newer = (*object).clone();
            *status(&mut newer) = Some(latest.clone());
            newer.meta_mut().resource_version = Some(rv.to_string());
            Arc::new(newer)
        }
        _ => {
            *written = None;
            object
        }
    }
}

/// Sends `requests` in batches of 1, 2, 4, ... each batch at once (the Job controller's slow
/// start): once the API server refuses one (`refused`: a quota, a policy, too many requests),
/// the rest are not sent, so a burst of a thousand creates meets one refusal, not a thousand.
/// The results in the requests' order; None for a request not sent.
pub async fn slow_start<F: Future>(requests: Vec<F>, refused: fn(&F::Output) -> bool) -> Vec<Option<F::Output>> {
    let mut requests = requests.into_iter().peekable();
    let (mut results, mut batch) = (Vec::new(), 1);
    while requests.peek().is_some() {
        let sent = futures::future::join_all(requests.by_ref().take(batch)).await;
        let stop = sent.iter().any(&refused);
        results.extend(sent.into_iter().map(Some));
        if stop {
            break;
        }
        batch *= 2;
    }
    results.extend(requests.map(|_| None));
    results
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn slow_start_doubles_its_batches_and_stops_after_a_refusal() {
        // Ten requests, each noting how many were sent before it; the sixth (index 5) is refused.
        let sent = AtomicUsize::new(0);
        let request = |i: usize| {
            let sent = &sent;
            async move { (i, sent.fetch_add(1, Ordering::SeqCst)) }
        };
        let results = slow_start((0..10).map(request).collect(), |&(i, _)| i == 5).await;
        // Batches 0, 1-2, 3-6: the refusal is in the third, so 7-9 are never sent.
        assert_eq!(results.iter().filter(|r| r.is_some()).count(), 7);
        assert!(results[7..].iter().all(Option::is_none));
        assert_eq!(sent.load(Ordering::SeqCst), 7);
        // In order, whatever order a batch's requests ran in.
        assert!(results[..7].iter().enumerate().all(|(i, r)| r.unwrap().0 == i));
        // Nothing refused: all sent, in batches 1, 2, 4, 8 (15 requests).
        let all = slow_start((0..15).map(|i| async move { i }).collect(), |_| false).await;
        assert_eq!(all, (0..15).map(Some).collect::<Vec<_>>());
        assert!(slow_start(Vec::<std::future::Ready<()>>::new(), |_| true).await.is_empty());
    }
}
