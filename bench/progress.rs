//! How a side's progress is watched: its pods and jobs as a watch sees them, and the instants
//! when all pods existed, all jobs finished and everything settled.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::DynamicObject,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::Value;

use crate::*;

#[derive(Default)]
pub(crate) struct Marks {
    /// Pod name -> done (Succeeded and no finalizers).
    pub(crate) pods: HashMap<String, bool>,
    /// Job name -> finished (Some(true) succeeded, Some(false) failed).
    pub(crate) jobs: HashMap<String, Option<bool>>,
    pub(crate) all_pods: Option<Instant>,
    pub(crate) all_finished: Option<Instant>,
    pub(crate) settled: Option<Instant>,
    pub(crate) pods_ready: bool,
    pub(crate) jobs_ready: bool,
    /// The largest job seen, as JSON (managedFields included), and its status alone.
    pub(crate) max_object_bytes: usize,
    pub(crate) max_status_bytes: usize,
}

pub(crate) fn finished(side: Side, obj: &DynamicObject) -> Option<bool> {
    let status = obj.data.get("status")?;
    match side {
        Side::Nightshift => match status.get("phase")?.as_str()? {
            "Succeeded" => Some(true),
            "Failed" => Some(false),
            _ => None,
        },
        _ => status.get("conditions")?.as_array()?.iter().find_map(|c| {
            (c["status"] == "True").then_some(())?;
            match c["type"].as_str()? {
                "Complete" => Some(true),
                "Failed" => Some(false),
                _ => None,
            }
        }),
    }
}

pub(crate) fn watch(client: Client, side: Side, pods_wanted: usize, jobs_wanted: usize) -> Arc<Mutex<Marks>> {
    let marks = Arc::new(Mutex::new(Marks::default()));
    let ns = side.namespace();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let m = marks.clone();
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let mut m = m.lock().unwrap();
            match ev {
                Ok(watcher::Event::InitDone) => m.pods_ready = true,
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let done = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                        && p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty());
                    m.pods.insert(p.metadata.name.unwrap_or_default(), done);
                }
                _ => continue,
            }
            if m.all_pods.is_none() && m.pods.len() >= pods_wanted && pods_wanted > 0 {
                m.all_pods = Some(Instant::now());
            }
            if m.settled.is_none() && m.pods.len() >= pods_wanted && m.pods.values().all(|d| *d) {
                m.settled = Some(Instant::now());
            }
        }
    });
    if jobs_wanted > 0 {
        let ar = if side == Side::Job { job_resource() } else { bgj_resource() };
        let jobs: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
        let m = marks.clone();
        tokio::spawn(async move {
            let mut stream = watcher(jobs, watcher::Config::default()).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let mut m = m.lock().unwrap();
                match ev {
                    Ok(watcher::Event::InitDone) => m.jobs_ready = true,
                    Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => {
                        let f = finished(side, &j);
                        let bytes = |v: &Value| serde_json::to_string(v).map_or(0, |s| s.len());
                        m.max_object_bytes = m.max_object_bytes.max(serde_json::to_vec(&j).map_or(0, |v| v.len()));
                        m.max_status_bytes = m.max_status_bytes.max(j.data.get("status").map_or(0, bytes));
                        m.jobs.insert(j.metadata.name.clone().unwrap_or_default(), f);
                    }
                    _ => continue,
                }
                if m.all_finished.is_none()
                    && m.jobs.len() >= jobs_wanted
                    && m.jobs.values().filter(|f| f.is_some()).count() >= jobs_wanted
                {
                    m.all_finished = Some(Instant::now());
                }
            }
        });
    } else {
        marks.lock().unwrap().jobs_ready = true;
    }
    marks
}
