//! Events for people: logged, merged to one per kind per reconcile (three workers started is
//! one event, not three; the workers a job starts with are part of its Admitted event), and sent
//! in the background behind every other request (`operator::limit`), so they never slow the
//! work down.
//!
//! Sent by [`Recorder`], not kube's: its notes are the core's, each said once on the transition
//! it names, so kube's cache of every event sent in the last six minutes (to count a repeat into
//! its first event's series, keeping that first note) held 35 MiB after a first start on 10,000
//! jobs (`make bench`, the memory run) for nothing, and was scanned on every event.

use std::sync::Arc;

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod},
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, api::PostParams};
use tracing::{debug, info, warn};

use super::jobs::context::Context;
use crate::operator::Metrics;
use nightshift_api::{BackgroundJob, BackgroundJobTemplate, reasons::EventReason};
use nightshift_core::{EventNote, Related};

/// Creates events (events.k8s.io/v1) as this operator: the controller and this replica.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
}

impl Recorder {
    /// `instance`: this replica (its pod's name), else the controller's name.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let controller = nightshift_api::MANAGER.to_string();
        Self { client, instance: instance.unwrap_or_else(|| controller.clone()), controller }
    }

    /// One event about `regarding`, named as kubectl and the kubelet name theirs: the object's
    /// name and the time in hexadecimal nanoseconds.
    async fn create(&self, note: EventNote, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let name = regarding.name.as_deref().unwrap_or(&self.controller);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(note.reason.to_string()),
            reason: Some(note.reason.to_string()),
            note: Some(note.note),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: note.related.map(|related| related_reference(related, regarding)),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), regarding.namespace.as_deref().unwrap_or("default"));
        api.create(&PostParams::default(), &event).await.map(|_| ())
    }
}

/// A merged note stops growing at this many bytes; the next starts an event of its own.
const MERGE_UP_TO: usize = 512;

pub fn publish(ctx: &Arc<Context>, job: &BackgroundJob, notes: &[EventNote]) {
    for note in notes {
        if note.reason == EventReason::WorkerStarted {
            ctx.metrics.attempts_started.inc();
        }
    }
    send(&ctx.recorder, &ctx.metrics, job.object_ref(&()), notes);
}

/// Logs the notes, and publishes them merged on the object `reference` names, in the background.
pub fn send(recorder: &Recorder, metrics: &Arc<Metrics>, reference: ObjectReference, notes: &[EventNote]) {
    for note in notes {
        if note.warning {
            warn!(reason = %note.reason, "{}", note.note);
        } else {
            info!(reason = %note.reason, "{}", note.note);
        }
    }
    let events = merge(notes);
    if events.is_empty() {
        return;
    }
    let (recorder, metrics) = (recorder.clone(), metrics.clone());
    metrics.events_pending.inc_by(events.len() as i64);
    tokio::spawn(async move {
        for note in events {
            let _sent = Pending(&metrics);
            if let Err(e) = recorder.create(note, &reference).await {
                debug!(error = %e, "publishing an event");
            }
        }
    });
}

/// The reference of an event's related object, in the namespace of the object it is on.
fn related_reference(related: Related, on: &ObjectReference) -> ObjectReference {
    let (api_version, kind, name) = match related {
        Related::Pod(name) => (Pod::api_version(&()), Pod::kind(&()), name),
        Related::Job(name) => (BackgroundJob::api_version(&()), BackgroundJob::kind(&()), name),
        Related::Template(name) => (BackgroundJobTemplate::api_version(&()), BackgroundJobTemplate::kind(&()), name),
    };
    ObjectReference {
        api_version: Some(api_version.into_owned()),
        kind: Some(kind.into_owned()),
        name: Some(name),
        namespace: on.namespace.clone(),
        ..Default::default()
    }
}

/// Notes in a row of one reason (and type) become one; workers started right after a job's
/// Admitted or Resumed join that note.
pub fn merge(notes: &[EventNote]) -> Vec<EventNote> {
    let mut events: Vec<EventNote> = Vec::new();
    for note in notes {
        match events.last_mut() {
            Some(last)
                if last.reason == note.reason && last.warning == note.warning && last.note.len() < MERGE_UP_TO =>
            {
                last.note = format!("{}; {}", last.note, note.note);
            }
            Some(last)
                if matches!(last.reason, EventReason::Admitted | EventReason::Resumed)
                    && note.reason == EventReason::WorkerStarted
                    && last.note.len() < MERGE_UP_TO =>
            {
                last.note = format!("{}; started {}", last.note, note.note);
            }
            _ => events.push(note.clone()),
        }
    }
    events
}

/// An event on its way out: no longer pending once sent (or given up on).
struct Pending<'a>(&'a Metrics);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.events_pending.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(pod: &str) -> EventNote {
        EventNote::normal(EventReason::WorkerStarted, format!("on pod {pod}")).about(Related::Pod(pod.into()))
    }

    #[test]
    fn workers_started_with_the_job_join_its_admitted_event() {
        let notes = [EventNote::normal(EventReason::Admitted, "admitted"), started("j-0-1"), started("j-1-1")];
        let merged = merge(&notes);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].note, "admitted; started on pod j-0-1; started on pod j-1-1");
    }

    #[test]
    fn different_reasons_and_types_stay_apart() {
        let failed = EventNote::warning(EventReason::AttemptFailed, "shard 0 failed");
        let notes = [started("j-0-2"), failed.clone(), failed, EventNote::normal(EventReason::Succeeded, "done")];
        let merged = merge(&notes);
        let reasons: Vec<EventReason> = merged.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, [EventReason::WorkerStarted, EventReason::AttemptFailed, EventReason::Succeeded]);
        assert_eq!(merged[1].note, "shard 0 failed; shard 0 failed");
    }

    #[test]
    fn a_long_note_stops_merging() {
        let notes: Vec<EventNote> = (0..100).map(|i| started(&format!("job-with-a-long-name-{i}-1"))).collect();
        let merged = merge(&notes);
        assert!(merged.len() > 1, "one event per ~{MERGE_UP_TO} bytes");
        assert!(merged.iter().all(|e| e.note.len() < MERGE_UP_TO + 64));
    }
}
