//! The status stays far under etcd's object size limit (1.5 MiB) whatever the number of shards
//! and whatever their states: a status that cannot be written stops the job for good.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use nightshift_api::{BackgroundJobStatus, RetryingShard};

/// A failure as long as the controller lets one be (messages are clipped to 256 bytes).
fn long_failure() -> Failure {
    Failure { reason: "Error".into(), message: "x".repeat(256), exit_code: Some(1) }
}

/// A running job of `shards` shards, every one of `retrying` waiting for a retry an hour from
/// now, the others split between succeeded and failed by `seed`.
fn status_with(shards: i32, retrying: &[i32], seed: u64) -> BackgroundJobStatus {
    let mut done = Ranges::default();
    let mut failed = Ranges::default();
    let waiting: Ranges = retrying.iter().copied().collect();
    for s in (0..shards).filter(|s| !waiting.contains(*s)) {
        if (s as u64 ^ seed).count_ones().is_multiple_of(2) { done.insert(s) } else { failed.insert(s) }
    }
    let later = Time(at(3600));
    BackgroundJobStatus {
        phase: Some(Phase::Running),
        start_time: Some(Time(t0())),
        succeeded_shards: done.to_opt_string(),
        failed_shards: failed.to_opt_string(),
        retrying: retrying
            .iter()
            .map(|&shard| RetryingShard {
                shard,
                attempt: 2,
                failures: 1 + (shard % 3),
                disruptions: shard % 2,
                next_retry_time: Some(later.clone()),
                last_failure: Some(long_failure()),
            })
            .collect(),
        ..Default::default()
    }
}

fn size(status: &BackgroundJobStatus) -> usize {
    serde_json::to_vec(status).unwrap().len()
}

/// The case of the issue: 5,000 shards, every one of them failed once and waiting.
#[test]
fn five_thousand_retrying_shards_stay_small() {
    let mut j = job(5000, 3, json!({"retry": {"limit": 5}, "timeouts": {"jobSeconds": 100000}}));
    let all: Vec<i32> = (0..5000).collect();
    j.status = Some(status_with(5000, &all, 0));
    let d = decide(&Observed::new(&j, &[]), at(10));
    assert_eq!(d.status.retrying.len(), nightshift_api::MAX_RETRYING_LISTED);
    let grouped: i32 = d.status.retrying_groups.iter().map(|g| g.count).sum();
    assert_eq!(grouped as usize + d.status.retrying.len(), 5000, "every shard still waits");
    // Shards of six groups, interleaved: the worst ranges for 5,000 shards.
    assert!(size(&d.status) < 64 * 1024, "{} bytes", size(&d.status));
    // And the next step reads it back to the same state.
    j.status = Some(d.status.clone());
    assert_eq!(decide(&Observed::new(&j, &[]), at(11)).status, d.status);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Up to the schema's 100,000 shards and 1,000 workers, any shards retrying: under 1 MiB.
    #[test]
    fn the_status_is_bounded_for_any_number_of_shards(
        shards in 1..=100_000i32,
        workers in 1..=1000i32,
        share in 0.0..=1.0f64,
        seed in any::<u64>(),
    ) {
        let mut j = job(shards, workers, json!({"retry": {"limit": 5}, "timeouts": {"jobSeconds": 100000}}));
        let retrying: Vec<i32> =
            (0..shards).filter(|s| ((*s as u64).wrapping_mul(2654435761) ^ seed) % 1000 < (share * 1000.0) as u64).collect();
        j.status = Some(status_with(shards, &retrying, seed));
        let d = decide(&Observed::new(&j, &[]), at(10));
        prop_assert!(d.status.retrying.len() <= nightshift_api::MAX_RETRYING_LISTED);
        prop_assert!(size(&d.status) < 1024 * 1024, "{} bytes for {} shards", size(&d.status), shards);
    }
}
