//! `kubectl nightshift logs JOB`: the worker containers' logs, every line prefixed with
//! `[SHARD/ATTEMPT]`; with `-f`, new lines and new attempts as they start, until the job ends.

use std::collections::BTreeSet;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, LogParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::{sync::mpsc, task::JoinSet};

use super::{Error, Outcome, Target};
use nightshift_api::{BackgroundJob, LABEL_ATTEMPT, LABEL_JOB, LABEL_SHARD};

pub struct Filter {
    pub follow: bool,
    pub shard: Option<i32>,
    pub attempt: Option<i32>,
}

pub async fn logs(target: &Target, name: &str, filter: Filter) -> Result<Outcome, Error> {
    let job = target.job(name).await?;
    let mut selector = format!("{LABEL_JOB}={name}");
    if let Some(shard) = filter.shard {
        selector += &format!(",{LABEL_SHARD}={shard}");
    }
    if let Some(attempt) = filter.attempt {
        selector += &format!(",{LABEL_ATTEMPT}={attempt}");
    }
    let pods: Api<Pod> = target.namespaced();
    if !filter.follow {
        let mut list =
            pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| Error::from_kube(e, target))?.items;
        list.sort_by_key(|p| (label(p, LABEL_SHARD), label(p, LABEL_ATTEMPT)));
        for pod in list.iter().filter(|p| started(p)) {
            match pods.logs(&pod.name_any(), &params(pod, false)).await {
                Ok(text) => {
                    for line in text.lines() {
                        println!("{} {line}", prefix(pod));
                    }
                }
                Err(e) => eprintln!("{} no logs: {}", prefix(pod), Error::from_kube(e, target)),
            }
        }
        return Ok(Outcome::Done);
    }
    follow(target, &job, pods, &selector).await
}

/// Streams every started pod's log as it grows, and new attempts' as they start, until the job
/// has ended and every stream is done.
async fn follow(target: &Target, job: &BackgroundJob, pods: Api<Pod>, selector: &str) -> Result<Outcome, Error> {
    let (lines, mut received) = mpsc::channel::<String>(1024);
    let mut streams = JoinSet::new();
    let mut streaming = BTreeSet::new();
    let pod_events =
        watcher(pods.clone(), watcher::Config::default().labels(selector)).default_backoff().applied_objects();
    let mut pod_events = std::pin::pin!(pod_events);
    let name = job.name_any();
    let job_events = watcher(
        target.namespaced::<BackgroundJob>(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .touched_objects();
    let mut job_events = std::pin::pin!(job_events);
    let ended = |job: &BackgroundJob| job.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished());
    let mut job_ended = ended(job);
    loop {
        tokio::select! {
            Some(line) = received.recv() => println!("{line}"),
            pod = pod_events.try_next() => match pod {
                Ok(Some(pod)) if started(&pod) && streaming.insert(pod.name_any()) => {
                    streams.spawn(stream(pods.clone(), pod, lines.clone()));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(watcher::Error::InitialListFailed(e)) => return Err(Error::from_kube(e, target)),
                Err(_) => {}
            },
            job = job_events.try_next() => match job {
                Ok(Some(job)) => job_ended = ended(&job),
                Ok(None) => break,
                Err(_) => {}
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
        if job_ended && streams.is_empty() {
            // The pod watch may lag behind the job's: read every started pod's log once more
            // before ending.
            let list =
                pods.list(&ListParams::default().labels(selector)).await.map_err(|e| Error::from_kube(e, target))?;
            for pod in list.items.into_iter().filter(started) {
                if streaming.insert(pod.name_any()) {
                    streams.spawn(stream(pods.clone(), pod, lines.clone()));
                }
            }
            if streams.is_empty() {
                break;
            }
        }
    }
    // Lines still on their way.
    drop(lines);
    while let Some(line) = received.recv().await {
        println!("{line}");
    }
    Ok(Outcome::Done)
}

/// Sends the pod's log, line by line and prefixed, until its container ends.
async fn stream(pods: Api<Pod>, pod: Pod, lines: mpsc::Sender<String>) {
    let prefix = prefix(&pod);
    let reader = match pods.log_stream(&pod.name_any(), &params(&pod, true)).await {
        Ok(reader) => reader,
        Err(e) => {
            let _ = lines.send(format!("{prefix} (no logs: {e})")).await;
            return;
        }
    };
    let mut reader = std::pin::pin!(reader.lines());
    while let Some(Ok(line)) = reader.next().await {
        if lines.send(format!("{prefix} {line}")).await.is_err() {
            return;
        }
    }
}

/// The worker container's log (the first container: the one the agent wraps).
pub(super) fn params(pod: &Pod, follow: bool) -> LogParams {
    let container = pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone());
    LogParams { container, follow, ..Default::default() }
}

/// Its container has started (or ended): there is a log to read.
fn started(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running" | "Succeeded" | "Failed"))
}

fn label(pod: &Pod, key: &str) -> i32 {
    pod.labels().get(key).and_then(|v| v.parse().ok()).unwrap_or(-1)
}

/// `[SHARD/ATTEMPT]`.
pub(super) fn prefix(pod: &Pod) -> String {
    format!("[{}/{}]", label(pod, LABEL_SHARD), label(pod, LABEL_ATTEMPT))
}
