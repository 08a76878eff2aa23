//! Tests of the worker side: the renewal patch, reports, the environment, the heartbeat loop,
//! the agent's reading of a real command's output.

use std::collections::HashMap;

use super::*;

fn now() -> Timestamp {
    "2026-11-22T23:10:00.123456789Z".parse().unwrap()
}

fn ops(patch: &json_patch::Patch) -> Value {
    serde_json::to_value(patch).unwrap()
}

#[test]
fn renewal_without_reports_tests_the_holder_and_renews() {
    let patch = renewal_patch("job-0-1", now(), &Report::default());
    assert_eq!(
        ops(&patch),
        json!([
            {"op": "test", "path": "/spec/holderIdentity", "value": "job-0-1"},
            {"op": "add", "path": "/spec/renewTime", "value": "2026-11-22T23:10:00.123456Z"},
        ])
    );
}

#[test]
fn renew_time_has_microseconds_even_on_a_whole_second() {
    let patch = renewal_patch("p", "2026-11-22T23:10:00Z".parse().unwrap(), &Report::default());
    assert_eq!(ops(&patch)[1]["value"], "2026-11-22T23:10:00.000000Z");
}

#[test]
fn renewal_carries_progress_message_and_result() {
    let report = Report {
        progress: Some(ShardProgress { done: 40, total: 100, message: "loading rows".into() }),
        result: Some(r#"{"created":3}"#.into()),
        checkpoint: None,
    };
    assert_eq!(
        ops(&renewal_patch("job-0-1", now(), &report)),
        json!([
            {"op": "test", "path": "/spec/holderIdentity", "value": "job-0-1"},
            {"op": "add", "path": "/spec/renewTime", "value": "2026-11-22T23:10:00.123456Z"},
            {"op": "add", "path": "/metadata/annotations/nightshift.dev~1progress", "value": "40/100"},
            {"op": "add", "path": "/metadata/annotations/nightshift.dev~1progress-message", "value": "loading rows"},
            {"op": "add", "path": "/metadata/annotations/nightshift.dev~1result", "value": "{\"created\":3}"},
        ])
    );
}

#[test]
fn renewal_carries_only_what_was_reported() {
    let result_only = Report { result: Some("{}".into()), ..Report::default() };
    assert_eq!(
        ops(&renewal_patch("p", now(), &result_only))[2],
        json!({"op": "add", "path": "/metadata/annotations/nightshift.dev~1result", "value": "{}"})
    );
    assert_eq!(ops(&renewal_patch("p", now(), &result_only)).as_array().unwrap().len(), 3);
    let progress_only =
        Report { progress: Some(ShardProgress { done: 0, total: 7, message: String::new() }), ..Report::default() };
    let patch = ops(&renewal_patch("p", now(), &progress_only));
    assert_eq!(patch.as_array().unwrap().len(), 4);
    assert_eq!(patch[2]["value"], "0/7");
    assert_eq!(patch[3]["value"], "");
}

#[test]
fn the_patch_applies_to_a_lease_held_by_the_pod_and_fails_on_another_holder() {
    let lease = json!({
        "metadata": {"name": "job-0", "annotations": {"nightshift.dev/shard": "0"}},
        "spec": {"holderIdentity": "job-0-2"}
    });
    let report = Report {
        progress: Some(ShardProgress { done: 1, total: 2, message: "half".into() }),
        result: Some(r#"{"ok":true}"#.into()),
        checkpoint: Some(Checkpoint {
            text: "row=250".into(),
            progress: Some(ShardProgress { done: 1, total: 2, message: String::new() }),
        }),
    };
    let mut held = lease.clone();
    json_patch::patch(&mut held, &renewal_patch("job-0-2", now(), &report)).unwrap();
    assert_eq!(held["spec"]["renewTime"], "2026-11-22T23:10:00.123456Z");
    assert_eq!(
        held["metadata"]["annotations"],
        json!({"nightshift.dev/shard": "0", "nightshift.dev/progress": "1/2",
               "nightshift.dev/progress-message": "half", "nightshift.dev/result": "{\"ok\":true}",
               "nightshift.dev/checkpoint": "row=250", "nightshift.dev/checkpoint-progress": "1/2"})
    );
    let mut stale = lease.clone();
    assert!(json_patch::patch(&mut stale, &renewal_patch("job-0-1", now(), &report)).is_err());
}

#[test]
fn a_checkpoint_carries_the_progress_it_was_saved_at() {
    let without_progress =
        Report { checkpoint: Some(Checkpoint { text: "x".into(), progress: None }), ..Report::default() };
    let patch = ops(&renewal_patch("p", now(), &without_progress));
    assert_eq!(
        patch.as_array().unwrap()[2..],
        [
            json!({"op": "add", "path": "/metadata/annotations/nightshift.dev~1checkpoint", "value": "x"}),
            json!({"op": "add", "path": "/metadata/annotations/nightshift.dev~1checkpoint-progress", "value": ""}),
        ]
    );
}

#[test]
fn annotation_paths_escape_the_pointer() {
    assert_eq!(annotation_path("a/b~c"), "/metadata/annotations/a~1b~0c");
}

#[test]
fn results_must_be_small_objects() {
    assert_eq!(encode_result(&json!({"created": 3, "names": ["a"]})).unwrap(), r#"{"created":3,"names":["a"]}"#);
    assert!(matches!(encode_result(&json!([1])), Err(Error::ResultNotObject("an array"))));
    assert!(matches!(encode_result(&json!(null)), Err(Error::ResultNotObject("null"))));
    assert!(matches!(encode_result(&json!("x")), Err(Error::ResultNotObject("a string"))));
    // {"k":"…"} is 8 bytes of JSON around the string.
    let at_limit = json!({"k": "x".repeat(nightshift_api::MAX_RESULT_BYTES - 8)});
    assert_eq!(encode_result(&at_limit).unwrap().len(), nightshift_api::MAX_RESULT_BYTES);
    let over = json!({"k": "x".repeat(nightshift_api::MAX_RESULT_BYTES - 7)});
    match encode_result(&over) {
        Err(Error::ResultTooLarge { size, max }) => {
            assert_eq!((size, max), (nightshift_api::MAX_RESULT_BYTES + 1, 4096))
        }
        other => panic!("expected ResultTooLarge, got {other:?}"),
    }
}

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let vars: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
    move |name| vars.get(name).cloned()
}

const FULL: [(&str, &str); 4] = [
    (env::LEASE, "job-3"),
    (env::NAMESPACE, "imports"),
    (env::POD, "job-3-1"),
    (env::HEARTBEAT_INTERVAL_SECONDS, "15"),
];

#[test]
fn env_with_everything_set() {
    assert_eq!(
        WorkerEnv::from_lookup(lookup(&FULL)).unwrap(),
        Some(WorkerEnv {
            lease: "job-3".into(),
            namespace: "imports".into(),
            pod: "job-3-1".into(),
            interval: Duration::from_secs(15),
            checkpoint: None,
        })
    );
    // A checkpoint is opaque: kept as written, spaces included; empty is none.
    let with = |text: &str| {
        let vars: Vec<(&str, &str)> = FULL.iter().copied().chain([(env::CHECKPOINT, text)]).collect();
        WorkerEnv::from_lookup(lookup(&vars)).unwrap().unwrap().checkpoint
    };
    assert_eq!(with(" row=250 "), Some(" row=250 ".into()));
    assert_eq!(with(""), None);
}

#[test]
fn env_without_a_lease_asks_for_no_heartbeat() {
    assert_eq!(WorkerEnv::from_lookup(lookup(&[])).unwrap(), None);
    assert_eq!(WorkerEnv::from_lookup(lookup(&FULL[1..])).unwrap(), None);
    assert_eq!(WorkerEnv::from_lookup(lookup(&[(env::LEASE, "")])).unwrap(), None);
}

fn env_error(vars: &[(&str, &str)]) -> String {
    WorkerEnv::from_lookup(lookup(vars)).unwrap_err().to_string()
}

#[test]
fn env_errors_name_the_variable() {
    for missing in [env::NAMESPACE, env::POD, env::HEARTBEAT_INTERVAL_SECONDS] {
        let vars: Vec<_> = FULL.iter().copied().filter(|(k, _)| *k != missing).collect();
        assert_eq!(env_error(&vars), format!("{missing} is not set (required with NIGHTSHIFT_LEASE)"));
    }
    for bad in ["0", "-5", "1.5", "ten", "10s"] {
        let mut vars = FULL.to_vec();
        vars[3].1 = bad;
        assert_eq!(
            env_error(&vars),
            format!("NIGHTSHIFT_HEARTBEAT_INTERVAL_SECONDS must be a whole number of seconds, at least 1; got {bad:?}")
        );
    }
}

#[test]
fn env_rejects_non_utf8() {
    use std::os::unix::ffi::OsStringExt;
    let error = WorkerEnv::from_lookup(|name| {
        if name == env::POD { Some(OsString::from_vec(vec![0xff])) } else { lookup(&FULL)(name) }
    })
    .unwrap_err();
    assert!(error.to_string().starts_with("NIGHTSHIFT_POD is not valid UTF-8"), "{error}");
}

/// A client for a server that is not there: renewals fail as network errors.
fn unreachable_client() -> Client {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    Client::try_from(config).unwrap()
}

fn test_env() -> WorkerEnv {
    WorkerEnv {
        lease: "job-0".into(),
        namespace: "default".into(),
        pod: "job-0-1".into(),
        interval: Duration::from_secs(1),
        checkpoint: None,
    }
}

#[tokio::test]
async fn reports_are_kept_for_the_next_renewal_and_bad_results_refused() {
    let heartbeat = Heartbeat::start(unreachable_client(), &test_env());
    heartbeat.progress(12, 10, &"m".repeat(300));
    heartbeat.result(json!({"created": 3})).unwrap();
    assert!(heartbeat.result(json!([1])).is_err());
    let report = heartbeat.report();
    assert_eq!(report.progress, Some(ShardProgress { done: 10, total: 10, message: "m".repeat(256) }));
    assert_eq!(report.result.as_deref(), Some(r#"{"created":3}"#));
    assert_eq!(heartbeat.lease(), "job-0");
    // A checkpoint takes the progress reported before it; a too long one is refused and the
    // previous one stays.
    heartbeat.progress(7, 10, "seven");
    heartbeat.checkpoint("row=7").unwrap();
    heartbeat.progress(8, 10, "eight");
    let too_long = "x".repeat(nightshift_api::MAX_CHECKPOINT_BYTES + 1);
    assert!(matches!(heartbeat.checkpoint(&too_long), Err(Error::CheckpointTooLarge { size: 1025, max: 1024 })));
    let checkpoint = heartbeat.report().checkpoint.unwrap();
    assert_eq!(checkpoint.text, "row=7");
    assert_eq!(checkpoint.progress.map(|p| p.done), Some(7));
    heartbeat.stop().await;
}

#[tokio::test]
async fn network_errors_do_not_fence_and_stop_ends_the_loop() {
    let heartbeat = Heartbeat::start(unreachable_client(), &test_env());
    let observer = heartbeat.clone();
    tokio::time::timeout(Duration::from_secs(30), heartbeat.stop()).await.expect("stop returns");
    assert!(!observer.is_fenced());
    // fenced() must not resolve for a heartbeat that was stopped, not fenced.
    assert!(tokio::time::timeout(Duration::from_millis(50), observer.fenced()).await.is_err());
}

/// Where the agent's pump writes in the test: counts what it is given, keeps the end of it, and
/// the largest single write (what the pump held at once to pass through).
#[derive(Default)]
struct Recorder {
    bytes: usize,
    largest_write: usize,
    tail: Vec<u8>,
}

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.bytes += buf.len();
        self.largest_write = self.largest_write.max(buf.len());
        self.tail.extend_from_slice(buf);
        let keep = self.tail.len().saturating_sub(256);
        self.tail.drain(..keep);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn the_agent_reads_50_mb_without_a_newline_in_bounded_memory_and_still_sees_the_directive() {
    const BAR: usize = 50_000_000;
    // A progress bar gone wrong: 50 MB of `\r` and not one newline, then a directive line.
    let script = format!("head -c {BAR} /dev/zero | tr '\\0' '\\r'; printf '\\n::nightshift:: progress 4/5 almost\\n'");
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sh starts");
    let stdout = child.stdout.take().unwrap();
    let heartbeat = Heartbeat::start(unreachable_client(), &test_env());
    let mut out = Recorder::default();
    let pumped = agent::pump(stdout, &mut out, Some(heartbeat.clone()));
    let longest = tokio::time::timeout(Duration::from_secs(60), pumped).await.expect("the output is read to its end");
    assert!(child.wait().await.unwrap().success());

    let directive = b"\n::nightshift:: progress 4/5 almost\n";
    assert_eq!(heartbeat.report().progress, Some(ShardProgress { done: 4, total: 5, message: "almost".into() }));
    assert_eq!(out.bytes, BAR + directive.len(), "every byte passed through");
    assert!(out.tail.ends_with(directive), "passed through unchanged: {:?}", String::from_utf8_lossy(&out.tail));
    assert!(out.tail[..out.tail.len() - directive.len()].iter().all(|b| *b == b'\r'));
    // Memory: the line kept is capped, and the output is passed on as it is read, never held.
    assert_eq!(longest, lines::MAX_LINE_BYTES, "the 50 MB line was kept up to the cap, no further");
    assert!(out.largest_write <= lines::MAX_LINE_BYTES, "written {} bytes at once", out.largest_write);
    heartbeat.stop().await;
}
