//! What wakes a reconcile: each watch's events, once in its store, fanned out as keys into the
//! controllers' `reconcile_on` channels.
//!
//! kube-runtime's shared stores (`store_shared` + `subscribe`) lose wake-ups: in 5.0.0 a
//! `ReflectHandle` that takes a key whose object is already gone from the store (deleted between
//! the broadcast and the poll, e.g. an `InitDone` of a job deleted just after the initial LIST)
//! answers `Pending` without registering a waker, so the controller never polls that trigger
//! again; its broadcast then fills and blocks the watch itself (tested below). So each watch here
//! has a plain store, and its `for_each` sends keys, never objects (a queued object would pin a
//! stale copy), through unbounded channels: no consumer can block a watch.
//!
//! Memory stays bounded by the number of objects, not of events: the controller's scheduler drains
//! its trigger channels on every poll, also while all reconcile slots are busy, into a map keyed by
//! object, so 10,000 jobs queue at most 10,000 keys (a few hundred bytes each) however many events
//! arrive.

use std::{collections::HashSet, time::Duration};

use futures::{StreamExt, channel::mpsc::UnboundedSender, future};
use kube::{
    Resource,
    runtime::{
        reflector::{ObjectRef, Store},
        scheduler::{ScheduleRequest, scheduler},
        watcher,
    },
};

/// Sends the keys that a watch's events wake, through `route`: from an object of the watch to the
/// object to reconcile (itself, or its owner).
pub struct Fanout<K: Resource<DynamicType = ()> + 'static, T: Resource<DynamicType = ()>> {
    store: Store<K>,
    route: fn(&K) -> Option<ObjectRef<T>>,
    tx: UnboundedSender<ObjectRef<T>>,
    /// Whether a deletion wakes its route too (an owner: yes; the object itself: nothing to do).
    deletions: bool,
    /// During a relist: the routes of the objects the store held before it, since an object
    /// deleted while the watch was down leaves no Delete event, only its absence from the list.
    before: std::sync::Mutex<HashSet<ObjectRef<T>>>,
}

impl<K, T> Fanout<K, T>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    T: Resource<DynamicType = ()>,
{
    /// `store` must be the store the watch's events have already been applied to.
    pub fn new(store: Store<K>, route: fn(&K) -> Option<ObjectRef<T>>, tx: UnboundedSender<ObjectRef<T>>) -> Self {
        Self { store, route, tx, deletions: true, before: Default::default() }
    }

    /// Deletions wake nothing.
    pub fn changes_only(self) -> Self {
        Self { deletions: false, ..self }
    }

    /// Wakes what `event` concerns: the object's route on a change (and a deletion); after a (re)list,
    /// the route of every object in the store, and (with deletions) of every object it held
    /// before, once each: a relist (after a watch expired, say) may have missed changes and
    /// deletions alike.
    pub fn send(&self, event: &watcher::Event<K>) {
        let routes = || self.store.state().iter().filter_map(|o| (self.route)(o)).collect::<HashSet<_>>();
        let keys: HashSet<ObjectRef<T>> = match event {
            watcher::Event::Apply(object) => (self.route)(object).into_iter().collect(),
            watcher::Event::Delete(object) if self.deletions => (self.route)(object).into_iter().collect(),
            watcher::Event::Delete(_) => HashSet::new(),
            // The store still holds what it held before the relist until InitDone.
            watcher::Event::Init if self.deletions => {
                *self.before.lock().expect("no panic holding it") = routes();
                HashSet::new()
            }
            watcher::Event::InitDone => {
                let mut keys = routes();
                keys.extend(std::mem::take(&mut *self.before.lock().expect("no panic holding it")));
                keys
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => HashSet::new(),
        };
        for key in keys {
            // Closed only when the controller has stopped, and then nothing is left to wake.
            let _ = self.tx.unbounded_send(key);
        }
    }
}

/// A sender whose keys reach `tx` `period` after the first of them for each key, once: what else
/// is sent for that key meanwhile rides along. The changes of one job's pods (created, bound,
/// running, finished, a finalizer gone) wake it once, not each; kube-controller-manager's Job
/// controller gathers its pods' changes the same way (`syncJobBatchPeriod`, 1 s). Unlike a
/// debounce, a steady stream of changes does not put the wake off. The future forwards; it ends
/// when every sender is gone. Memory: a key per object at most.
pub fn batched<T: Resource<DynamicType = ()>>(
    period: Duration,
    tx: UnboundedSender<ObjectRef<T>>,
) -> (UnboundedSender<ObjectRef<T>>, impl Future<Output = ()>) {
    let (batch_tx, batch_rx) = futures::channel::mpsc::unbounded();
    let requests =
        batch_rx.map(move |key| ScheduleRequest { message: key, run_at: tokio::time::Instant::now() + period });
    let forward = scheduler(requests).for_each(move |key| {
        // Closed only when the controller has stopped, and then nothing is left to wake.
        let _ = tx.unbounded_send(key);
        future::ready(())
    });
    (batch_tx, forward)
}

/// The route of an object to itself.
pub fn itself<K: Resource<DynamicType = ()>>(object: &K) -> Option<ObjectRef<K>> {
    Some(ObjectRef::from_obj(object))
}

/// The route of an object to its controller of kind `T`, in its namespace.
pub fn controller_of<K: Resource, T: Resource<DynamicType = ()>>(object: &K) -> Option<ObjectRef<T>> {
    let owner = object.meta().owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    (owner.kind == T::kind(&()) && owner.api_version == T::api_version(&()))
        .then(|| ObjectRef::new(&owner.name).within(object.meta().namespace.as_deref().unwrap_or_default()))
}

#[cfg(test)]
pub(super) mod tests {
    use std::{
        pin::pin,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        task::{Context, Wake, Waker},
    };

    use futures::{StreamExt, stream};
    use k8s_openapi::{
        api::core::v1::Pod,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };
    use kube::runtime::{reflector, watcher::Event};

    use super::*;
    use nightshift_api::BackgroundJob;

    fn job(name: &str) -> BackgroundJob {
        let spec =
            serde_json::json!({"shards": 1, "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}});
        nightshift_api::job_fixture::job(name, spec).namespace("ns").build()
    }

    fn pod_of(job: &str, name: &str) -> Pod {
        let owner = OwnerReference {
            api_version: BackgroundJob::api_version(&()).into(),
            kind: BackgroundJob::kind(&()).into(),
            name: job.into(),
            uid: format!("uid-{job}"),
            controller: Some(true),
            ..Default::default()
        };
        let metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        };
        Pod { metadata, ..Default::default() }
    }

    /// A job in the initial LIST, deleted just after it; then another job changes.
    fn restart_events() -> Vec<watcher::Result<Event<BackgroundJob>>> {
        vec![
            Ok(Event::Init),
            Ok(Event::InitApply(job("a"))),
            Ok(Event::InitDone),
            Ok(Event::Delete(job("a"))),
            Ok(Event::Apply(job("b"))),
        ]
    }

    /// A waker's flag: whether anybody woke it.
    #[derive(Default)]
    pub(in crate::controller) struct Flag(AtomicBool);

    impl Flag {
        pub(in crate::controller) fn woken(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Polls `future` once with a waker of its own, expecting Pending; returns that waker's flag.
    pub(in crate::controller) fn poll_pending(future: std::pin::Pin<&mut impl Future>) -> Arc<Flag> {
        let flag = Arc::new(Flag::default());
        assert!(future.poll(&mut Context::from_waker(&Waker::from(flag.clone()))).is_pending());
        flag
    }

    /// What the fan-out `fanout` (given its store and sender) wakes for `events`, in order.
    async fn woken<K, T>(
        fanout: impl FnOnce(Store<K>, UnboundedSender<ObjectRef<T>>) -> Fanout<K, T>,
        events: Vec<watcher::Result<Event<K>>>,
    ) -> Vec<ObjectRef<T>>
    where
        K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
        T: Resource<DynamicType = ()>,
    {
        let (reader, writer) = reflector::store::<K>();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let fanout = fanout(reader, tx);
        reflector::reflector(writer, stream::iter(events))
            .for_each(|event| {
                fanout.send(&event.expect("no watch error"));
                async {}
            })
            .await;
        drop(fanout);
        rx.collect().await
    }

    /// Why the operator has no `ReflectHandle`: in kube-runtime 5.0.0 the handle, given the key of
    /// a job already gone, answers Pending without arranging a wake-up although the change of `b`
    /// is waiting in its channel. A controller polls a trigger again only when woken, so it would
    /// never see `b`, nor anything after it. (When this fails, kube-runtime has fixed it.)
    #[tokio::test]
    async fn a_reflect_handle_of_kube_runtime_5_loses_every_wake_up_after_a_deleted_key() {
        let (_reader, writer) = reflector::store_shared::<BackgroundJob>(16);
        let mut handle = pin!(writer.subscribe().expect("a shared store hands out subscribers"));
        reflector::reflector(writer, stream::iter(restart_events())).for_each(|_| async {}).await;

        let flag = poll_pending(pin!(handle.as_mut().next()));
        assert!(!flag.woken(), "the handle arranged a wake-up");
    }

    /// The same events through the fan-out: `a` (relisted) and then `b` are both woken; `a`'s
    /// deletion wakes nothing.
    #[tokio::test]
    async fn the_fanout_wakes_every_change_after_a_deleted_key() {
        let keys = woken(|store, tx| Fanout::new(store, itself, tx).changes_only(), restart_events()).await;
        let names: Vec<String> = keys.into_iter().map(|key| key.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    /// A job deleted while the watch was down (a relist after it expired) wakes its schedule
    /// too: it is missing from the new list, and no Delete event says so.
    #[tokio::test]
    async fn a_relist_wakes_the_owners_of_objects_gone_meanwhile() {
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(pod_of("a", "a-0-1"))),
            Ok(Event::InitApply(pod_of("b", "b-0-1"))),
            Ok(Event::InitDone),
            // The watch expired; b-0-1 was deleted before the relist.
            Ok(Event::Init),
            Ok(Event::InitApply(pod_of("a", "a-0-1"))),
            Ok(Event::InitDone),
        ];
        let keys = woken(|store, tx| Fanout::new(store, controller_of::<Pod, BackgroundJob>, tx), events).await;
        let mut names: Vec<String> = keys.into_iter().map(|key| key.name).collect();
        names[..2].sort();
        names[2..].sort();
        assert_eq!(names, ["a", "b", "a", "b"]);
    }

    /// Pods wake their job, once per job after a relist, also when they are deleted; a pod of no
    /// job wakes nothing.
    #[tokio::test]
    async fn pods_wake_their_controlling_job() {
        let stray =
            Pod { metadata: ObjectMeta { name: Some("stray".into()), ..Default::default() }, ..Default::default() };
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(pod_of("a", "a-0-1"))),
            Ok(Event::InitApply(pod_of("a", "a-1-1"))),
            Ok(Event::InitApply(stray)),
            Ok(Event::InitDone),
            Ok(Event::Delete(pod_of("b", "b-0-1"))),
        ];
        let keys = woken(|store, tx| Fanout::new(store, controller_of::<Pod, BackgroundJob>, tx), events).await;
        let named: Vec<(String, Option<String>)> = keys.into_iter().map(|key| (key.name, key.namespace)).collect();
        assert_eq!(named, [("a".to_string(), Some("ns".to_string())), ("b".to_string(), Some("ns".to_string()))]);
    }

    /// A batch: the key's wakes within the period reach the controller once, at the period after
    /// the first; one sent later starts a batch of its own; keys are batched apart.
    #[tokio::test(start_paused = true)]
    async fn a_batch_wakes_each_key_once_a_period_after_its_first_wake() {
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<ObjectRef<BackgroundJob>>();
        let (batch, forward) = batched(Duration::from_secs(1), tx);
        let forward = tokio::spawn(forward);
        let (a, b) = (ObjectRef::new("a").within("ns"), ObjectRef::new("b").within("ns"));
        let start = tokio::time::Instant::now();
        batch.unbounded_send(a.clone()).expect("open");
        // A key's batch starts when the forwarding takes it in: let it run before the clock moves.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(600)).await;
        batch.unbounded_send(a.clone()).expect("open");
        batch.unbounded_send(b.clone()).expect("open");

        // The queue's clock ticks in whole milliseconds.
        let at = |ms: u64| Duration::from_millis(ms)..=Duration::from_millis(ms + 2);
        assert_eq!(rx.next().await, Some(a.clone()));
        assert!(at(1000).contains(&start.elapsed()), "a's batch ended {:?} after its first wake", start.elapsed());
        assert_eq!(rx.next().await, Some(b));
        assert!(at(1600).contains(&start.elapsed()), "b's batch ended at {:?}", start.elapsed());
        batch.unbounded_send(a.clone()).expect("open");
        assert_eq!(rx.next().await, Some(a));
        assert!(at(2600).contains(&start.elapsed()), "a's second batch ended at {:?}", start.elapsed());

        drop(batch);
        forward.await.expect("the forwarding ends with its senders");
        assert_eq!(rx.next().await, None, "nothing woken twice");
    }
}
