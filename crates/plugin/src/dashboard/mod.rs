//! `kubectl nightshift dashboard`: a read-only web page on 127.0.0.1, with the user's own
//! credentials. A watch of the jobs feeds the page through server-sent events (`/events`); a
//! job's page fetches its grid, events and workers' last log lines (`/api/jobs/NS/NAME`) when
//! that job changes. Plain HTML, CSS and JavaScript from the binary: nothing is fetched from
//! anywhere else. Only the page opened from the printed address gets answers ([`guard`]).

mod guard;
mod state;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response,
    body::{Bytes, Frame},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::core::v1::{Event, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, LogParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{Error, Outcome, Target, describe::duration, logs};
use guard::{Guard, Pass};
use nightshift_api::{BackgroundJob, LABEL_JOB};
pub use state::{Cell, Row, grid};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The jobs as last seen, and the changes for the pages that listen.
struct Hub {
    target: Target,
    jobs: Mutex<BTreeMap<String, BackgroundJob>>,
    changes: broadcast::Sender<String>,
    guard: Guard,
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves the dashboard on 127.0.0.1:`port`, or on a free port when None (a fixed default
/// port would be one more thing for a hostile page to guess).
pub async fn dashboard(target: &Target, port: Option<u16>) -> Result<Outcome, Error> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port.unwrap_or(0)));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {address}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Error::Input(e.to_string()))?;
    let guard = Guard::new(bound.port())
        .map_err(|e| Error::Input(format!("cannot read /dev/urandom for the dashboard's token: {e}")))?;
    let url = guard.url();
    let (changes, _) = broadcast::channel(256);
    let hub = Arc::new(Hub { target: target.clone(), jobs: Mutex::default(), changes, guard });
    tokio::spawn(watch_jobs(hub.clone()));
    let place =
        if target.all_namespaces { "every namespace".to_string() } else { format!("namespace {}", target.namespace) };
    println!("serving the dashboard of {place} on {url} (Ctrl-C to stop)");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let hub = hub.clone();
                async move { Ok::<_, Infallible>(route(&hub, req).await) }
            });
            // A page closing its event stream ends the connection: nothing to report.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Keeps `hub.jobs` current and tells the pages: `snapshot` (every row) once the list is in and
/// after each reconnect, `job` (a row) and `delete` on changes, `trouble` when the cluster
/// cannot be watched.
async fn watch_jobs(hub: Arc<Hub>) {
    let stream = watcher(hub.target.jobs(), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut troubled = false;
    loop {
        let event = stream.try_next().await;
        let now = Timestamp::now();
        let change = match event {
            Ok(Some(watcher::Event::Init)) => None,
            Ok(Some(watcher::Event::InitApply(job))) => {
                hub.jobs.lock().expect("never poisoned").insert(state::key(&job), job);
                None
            }
            Ok(Some(watcher::Event::InitDone)) => Some(frame("snapshot", &snapshot(&hub, now))),
            Ok(Some(watcher::Event::Apply(job))) => {
                let row = Row::of(&job, now);
                hub.jobs.lock().expect("never poisoned").insert(row.key.clone(), job);
                Some(frame("job", &row))
            }
            Ok(Some(watcher::Event::Delete(job))) => {
                let key = state::key(&job);
                hub.jobs.lock().expect("never poisoned").remove(&key);
                Some(frame("delete", &json!({"key": key})))
            }
            Ok(None) => return,
            Err(e) => {
                troubled = true;
                let _ =
                    hub.changes.send(frame("trouble", &json!({"message": format!("watching backgroundjobs: {e}")})));
                continue;
            }
        };
        if std::mem::take(&mut troubled) {
            let _ = hub.changes.send(frame("snapshot", &snapshot(&hub, now)));
        }
        if let Some(change) = change {
            // No page listening is no error.
            let _ = hub.changes.send(change);
        }
    }
}

fn snapshot(hub: &Hub, now: Timestamp) -> Value {
    let jobs = hub.jobs.lock().expect("never poisoned");
    json!({"rows": jobs.values().map(|j| Row::of(j, now)).collect::<Vec<_>>()})
}

/// One server-sent event.
fn frame(event: &str, data: &impl serde::Serialize) -> String {
    format!("event: {event}\ndata: {}\n\n", serde_json::to_string(data).expect("serializes"))
}

/// Answers a request that passes the guard; one that brought the token in its address gets the
/// cookie, so that the page's own requests carry it.
async fn route(hub: &Arc<Hub>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let pass = match hub.guard.check(&req) {
        Ok(pass) => pass,
        Err(refusal) => return text(403, &refusal.to_string()),
    };
    let mut response = answer(hub, req).await;
    if pass == Pass::Query {
        let cookie = hub.guard.set_cookie().parse().expect("a header value");
        response.headers_mut().insert(hyper::header::SET_COOKIE, cookie);
    }
    response
}

async fn answer(hub: &Arc<Hub>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(405, "the dashboard is read-only: GET only");
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/" | "/index.html" => file("text/html; charset=utf-8", INDEX),
        "/app.js" => file("text/javascript; charset=utf-8", SCRIPT),
        "/style.css" => file("text/css; charset=utf-8", STYLE),
        "/events" => events(hub),
        "/api/jobs" => data(&snapshot(hub, Timestamp::now())),
        _ => match path.strip_prefix("/api/jobs/").and_then(|rest| rest.split_once('/')) {
            Some((namespace, name)) => match details(hub, namespace, name).await {
                Ok(Some(details)) => data(&details),
                Ok(None) => text(404, &format!("backgroundjob {namespace}/{name} not found")),
                Err(e) => text(502, &e.to_string()),
            },
            None => text(404, "not found"),
        },
    }
}

/// The event stream: a snapshot first, then every change; a comment every 15 s keeps idle
/// connections open.
fn events(hub: &Arc<Hub>) -> Response<Body> {
    let first = frame("snapshot", &snapshot(hub, Timestamp::now()));
    let receiver = hub.changes.subscribe();
    let stream = futures::stream::unfold((Some(first), receiver, hub.clone()), |(first, mut rx, hub)| async move {
        if let Some(first) = first {
            return Some((Ok(Frame::data(Bytes::from(first))), (None, rx, hub)));
        }
        let next = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Ok(frame)) => frame,
            // Too slow a page missed changes: start it over.
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => frame("snapshot", &snapshot(&hub, Timestamp::now())),
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            Err(_) => ": still here\n\n".to_string(),
        };
        Some((Ok(Frame::data(Bytes::from(next))), (None, rx, hub)))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let headers = response.headers_mut();
    headers.insert("content-type", "text/event-stream".parse().expect("a header value"));
    headers.insert("cache-control", "no-cache".parse().expect("a header value"));
    secure(response)
}

/// A job's page: its row, its shard grid, its latest events and its running workers' last log
/// lines. None when the dashboard does not know the job.
async fn details(hub: &Hub, namespace: &str, name: &str) -> Result<Option<Value>, Error> {
    let Some(job) = hub.jobs.lock().expect("never poisoned").get(&format!("{namespace}/{name}")).cloned() else {
        return Ok(None);
    };
    let now = Timestamp::now();
    let client = hub.target.client.clone();
    let selector = format!("involvedObject.kind=BackgroundJob,involvedObject.name={name}");
    let mut events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|e| Error::from_kube(e, &hub.target))?
        .items;
    events.sort_by_key(|e| {
        e.last_timestamp.as_ref().map(|t| t.0).or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    let events: Vec<Value> = events
        .iter()
        .rev()
        .take(10)
        .map(|e| {
            let at = e.last_timestamp.as_ref().map(|t| t.0).or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            json!({
                "age": at.map(|t| duration((now - t).get_seconds())),
                "type": e.type_, "reason": e.reason, "message": e.message,
            })
        })
        .collect();
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let running = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB}={name}")).fields("status.phase=Running"))
        .await
        .map_err(|e| Error::from_kube(e, &hub.target))?
        .items;
    let mut lines = Vec::new();
    for pod in running.iter().take(6) {
        let params = LogParams { tail_lines: Some(20), ..logs::params(pod, false) };
        if let Ok(text) = pods.logs(&pod.name_any(), &params).await {
            lines.extend(text.lines().map(|line| format!("{} {line}", logs::prefix(pod))));
        }
    }
    Ok(Some(json!({"row": Row::of(&job, now), "grid": grid(&job), "events": events, "logs": lines})))
}

fn file(content_type: &str, body: &'static str) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from_static(body.as_bytes()))));
    response.headers_mut().insert("content-type", content_type.parse().expect("a header value"));
    secure(response)
}

fn data(value: &Value) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from(value.to_string()))));
    response.headers_mut().insert("content-type", "application/json".parse().expect("a header value"));
    secure(response)
}

fn text(status: u16, message: &str) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from(message.to_string()))));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a status code");
    response.headers_mut().insert("content-type", "text/plain; charset=utf-8".parse().expect("a header value"));
    secure(response)
}

/// Nothing but our own files runs in the page; no content sniffing.
fn secure(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert("content-security-policy", "default-src 'self'".parse().expect("a header value"));
    headers.insert("x-content-type-options", "nosniff".parse().expect("a header value"));
    response
}
