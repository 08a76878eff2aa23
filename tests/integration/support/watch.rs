//! A watch on a namespace's worker pods that sees every event, for what polling would miss: the
//! most worker pods live at once, the order in which jobs got their first pod (the order of
//! creation: a watch delivers events in etcd revision order), and any moment a shard had two
//! running attempts.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, runtime::watcher};
use nightshift_api::{LABEL_JOB, LABEL_SHARD};

/// Watches until dropped.
pub struct PodWatch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Seen {
    /// Worker pods neither finished nor gone (a pod being deleted still holds its worker).
    live: BTreeSet<String>,
    max_live: usize,
    first_pod_order: Vec<String>,
    /// Per shard (JOB/SHARD): its live attempts that are not being deleted.
    running: BTreeMap<String, BTreeSet<String>>,
    doubled: Vec<String>,
}

impl PodWatch {
    pub fn start(pods: Api<Pod>) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut events = watcher(pods, watcher::Config::default().labels(LABEL_JOB)).boxed();
                while let Some(Ok(event)) = events.next().await {
                    let (pod, gone) = match event {
                        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
                        watcher::Event::Delete(p) => (p, true),
                        _ => continue,
                    };
                    seen.lock().unwrap().record(&pod, gone);
                }
            })
        };
        Self { seen, task }
    }

    /// Worker pods live now.
    pub fn live(&self) -> usize {
        self.seen.lock().unwrap().live.len()
    }

    /// The most worker pods live at once so far.
    pub fn max_live(&self) -> usize {
        self.seen.lock().unwrap().max_live
    }

    /// Jobs in the order they got their first pod.
    pub fn first_pod_order(&self) -> Vec<String> {
        self.seen.lock().unwrap().first_pod_order.clone()
    }

    /// Every moment a shard had two running attempts: "shard JOB/SHARD: {PODS}".
    pub fn doubled(&self) -> Vec<String> {
        self.seen.lock().unwrap().doubled.clone()
    }
}

impl Seen {
    fn record(&mut self, pod: &Pod, gone: bool) {
        let name = pod.name_any();
        let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        let job = pod.labels().get(LABEL_JOB).cloned().unwrap_or_default();
        if !self.first_pod_order.contains(&job) {
            self.first_pod_order.push(job.clone());
        }
        if gone || finished {
            self.live.remove(&name);
        } else {
            self.live.insert(name.clone());
        }
        self.max_live = self.max_live.max(self.live.len());

        let shard = format!("{job}/{}", pod.labels().get(LABEL_SHARD).cloned().unwrap_or_default());
        let running = self.running.entry(shard.clone()).or_default();
        if gone || finished || pod.metadata.deletion_timestamp.is_some() {
            running.remove(&name);
        } else {
            running.insert(name);
        }
        if running.len() > 1 {
            self.doubled.push(format!("shard {shard}: {running:?}"));
        }
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
