//! The pod and Lease caches, indexed by the job that controls each object: a reconcile reads its
//! own job's pods and Leases, not every cached one (with 10,000 jobs and 100,000 pods, a scan of
//! the whole cache per reconcile is a billion comparisons when every job wakes at start).
//!
//! The index is kept from the same watch events as the reflector's store, just before the store
//! applies them, with the same relist semantics: a relist builds a new index and swaps it in at
//! `InitDone`, when the store swaps too. Between the two steps of one event the index may name an
//! object the store does not hold yet (or no longer): [`Cached::owned_by`] reads the objects from
//! the store and checks their owner again, so it never returns what the store would not.

use std::{
    collections::{HashMap, HashSet},
    ops::Deref,
    sync::{Arc, RwLock},
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

/// A reflector store, with which job controls each of its objects.
#[derive(Clone)]
pub struct Cached<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    owners: Arc<RwLock<Owners>>,
}

impl<K> Cached<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// A cache of `api`'s objects (made `lean` on the way in), and the watch that fills it and
    /// its index.
    pub fn watch(
        api: Api<K>,
        config: watcher::Config,
        lean: fn(&mut K),
    ) -> (Self, impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>) {
        let (store, writer) = reflector::store();
        let owners = Arc::new(RwLock::new(Owners::default()));
        let index = owners.clone();
        let watch = watcher(api, config)
            .default_backoff()
            .modify(lean)
            .inspect(move |event| {
                if let Ok(event) = event {
                    index.write().unwrap_or_else(|e| e.into_inner()).apply(event);
                }
            })
            .reflect(writer);
        (Self::new(store, owners), watch)
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cached<K> {
    fn new(store: Store<K>, owners: Arc<RwLock<Owners>>) -> Self {
        Self { store, owners }
    }

    /// The cached objects in `namespace` whose controller is the object of `uid`.
    pub fn owned_by(&self, namespace: &str, uid: &str) -> Vec<Arc<K>> {
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        let Some(keys) = owners.current.by_owner.get(uid) else { return Vec::new() };
        keys.iter()
            .filter_map(|key| key.split_once('/'))
            .filter(|(ns, _)| *ns == namespace)
            .filter_map(|(ns, name)| self.store.get(&ObjectRef::new(name).within(ns)))
            .filter(|o| controller_uid(o.as_ref()) == Some(uid))
            .collect()
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Deref for Cached<K> {
    type Target = Store<K>;
    fn deref(&self) -> &Store<K> {
        &self.store
    }
}

/// Owner uid → the objects it controls; kept from a watch's events.
#[derive(Default)]
pub struct Owners {
    current: Index,
    /// A relist in progress: its objects so far (swapped in at `InitDone`).
    relist: Option<Index>,
}

/// Objects by "namespace/name"; each key and owner uid allocated once, shared by both maps (an
/// entry costs about a hundred bytes: 10 MB at 100,000 pods).
#[derive(Default)]
struct Index {
    by_owner: HashMap<Arc<str>, HashSet<Arc<str>>>,
    owner_of: HashMap<Arc<str>, Arc<str>>,
}

fn key_of<K: Resource>(object: &K) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

impl Index {
    fn insert<K: Resource>(&mut self, object: &K) {
        let key = key_of(object);
        self.remove(&key);
        let Some(uid) = controller_uid(object) else { return };
        let uid = match self.by_owner.get_key_value(uid) {
            Some((uid, _)) => uid.clone(),
            None => Arc::from(uid),
        };
        let key: Arc<str> = Arc::from(key);
        self.by_owner.entry(uid.clone()).or_default().insert(key.clone());
        self.owner_of.insert(key, uid);
    }

    fn remove(&mut self, key: &str) {
        let Some(uid) = self.owner_of.remove(key) else { return };
        if let Some(keys) = self.by_owner.get_mut(&uid) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_owner.remove(&uid);
            }
        }
    }
}

impl Owners {
    /// Takes in one watch event, as the reflector's store does.
    pub fn apply<K: Resource>(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(o) => self.current.insert(o),
            watcher::Event::Delete(o) => self.current.remove(&key_of(o)),
            watcher::Event::Init => self.relist = Some(Index::default()),
            watcher::Event::InitApply(o) => self.relist.get_or_insert_with(Index::default).insert(o),
            watcher::Event::InitDone => {
                if let Some(index) = self.relist.take() {
                    self.current = index;
                }
            }
        }
    }
}

fn controller_uid<K: Resource>(object: &K) -> Option<&str> {
    object.meta().owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use serde_json::json;

    fn lease(name: &str, owner: Option<&str>) -> Lease {
        let owners = owner.map(|uid| {
            json!([{"apiVersion": "nightshift.dev/v1", "kind": "BackgroundJob", "name": "j", "uid": uid,
                    "controller": true}])
        });
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "ownerReferences": owners}}))
            .unwrap()
    }

    /// A store and its index, fed the same events (the index first, as the watch does).
    fn cache() -> (Cached<Lease>, impl FnMut(watcher::Event<Lease>)) {
        let (store, mut writer) = reflector::store();
        let owners = Arc::new(RwLock::new(Owners::default()));
        let cached = Cached::new(store, owners.clone());
        let feed = move |event: watcher::Event<Lease>| {
            owners.write().unwrap().apply(&event);
            writer.apply_watcher_event(&event);
        };
        (cached, feed)
    }

    fn names(objects: Vec<Arc<Lease>>) -> Vec<String> {
        let mut names: Vec<String> = objects.iter().map(|o| o.name_any()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_job_reads_only_the_objects_it_controls_as_they_come_and_go() {
        let (cached, mut feed) = cache();
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(lease("a-0", Some("a"))));
        feed(watcher::Event::InitApply(lease("b-0", Some("b"))));
        feed(watcher::Event::InitApply(lease("stray", None)));
        feed(watcher::Event::InitDone);
        assert_eq!(names(cached.owned_by("ns", "a")), ["a-0"]);
        feed(watcher::Event::Apply(lease("a-1", Some("a"))));
        assert_eq!(names(cached.owned_by("ns", "a")), ["a-0", "a-1"]);
        assert_eq!(names(cached.owned_by("other", "a")), Vec::<String>::new(), "another namespace's");
        // Its controller changed (an orphan taken by no one, here): no longer the job's.
        feed(watcher::Event::Apply(lease("a-0", None)));
        assert_eq!(names(cached.owned_by("ns", "a")), ["a-1"]);
        feed(watcher::Event::Delete(lease("a-1", Some("a"))));
        assert!(cached.owned_by("ns", "a").is_empty());
        assert_eq!(names(cached.owned_by("ns", "b")), ["b-0"]);
    }

    #[test]
    fn a_relist_replaces_the_index_when_it_is_done_as_the_store_does() {
        let (cached, mut feed) = cache();
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(lease("a-0", Some("a"))));
        feed(watcher::Event::InitDone);
        // A relist after a watch gap: a-0 went away meanwhile, a-2 came.
        feed(watcher::Event::Init);
        feed(watcher::Event::InitApply(lease("a-2", Some("a"))));
        assert_eq!(names(cached.owned_by("ns", "a")), ["a-0"], "until the relist is done, the old view");
        feed(watcher::Event::InitDone);
        assert_eq!(names(cached.owned_by("ns", "a")), ["a-2"]);
    }

    #[test]
    fn an_object_the_index_names_but_the_store_does_not_hold_is_not_returned() {
        let (store, _writer) = reflector::store::<Lease>();
        let owners = Arc::new(RwLock::new(Owners::default()));
        owners.write().unwrap().apply(&watcher::Event::Apply(lease("a-0", Some("a"))));
        assert!(Cached::new(store, owners).owned_by("ns", "a").is_empty());
    }
}
