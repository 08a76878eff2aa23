//! A job's result: each succeeded shard's summary merged in once, never recomputed from Leases.

use std::collections::BTreeSet;

use serde_json::json;

use super::*;

/// Shard `shard`'s Lease, held by its first attempt, reporting `rows` imported.
fn reported(shard: i32, rows: i64) -> LeaseView {
    LeaseView {
        shard,
        holder: Some(pod::pod_name("j", shard, 1)),
        result: Some(json!({"imported": rows, "errors": [format!("s{shard}")]})),
        ..Default::default()
    }
}

fn decide_with(job: &mut BackgroundJob, w: &mut World, leases: &[LeaseView], now: Timestamp) -> Decision {
    let d = decide(&Observed::new(job, &w.pods).leases(leases), now);
    w.apply(job, &d, now);
    d
}

#[test]
fn a_shards_result_is_merged_once_and_outlives_its_lease() {
    let mut job = job(3, 3, json!({}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    finish(&mut w, "j-0-1", true);
    let all = [reported(0, 500), reported(1, 500), reported(2, 500)];
    let d = decide_with(&mut job, &mut w, &all, at(1));
    assert_eq!(d.status.result, Some(json!({"imported": 500, "errors": ["s0"]})));
    // Seen again, and seen by a leader whose Lease cache is empty or has a forged Lease: the same.
    for leases in [&all[..], &[], &[reported(0, 9_999)]] {
        let d = decide_with(&mut job, &mut w, leases, at(2));
        assert_eq!(d.status.result, Some(json!({"imported": 500, "errors": ["s0"]})), "with {leases:?}");
        assert_eq!(d.status.result_shards.as_deref(), Some("0"));
    }
    // A shard whose Lease shows its result only after its success was recorded is merged then.
    finish(&mut w, "j-1-1", true);
    let d = decide_with(&mut job, &mut w, &[], at(3));
    assert_eq!(d.status.result_shards.as_deref(), Some("0"));
    let d = decide_with(&mut job, &mut w, &all[1..2], at(4));
    assert_eq!(d.status.result, Some(json!({"imported": 1000, "errors": ["s0", "s1"]})));
    finish(&mut w, "j-2-1", true);
    let d = decide_with(&mut job, &mut w, &all, at(5));
    assert_eq!(d.status.phase, Some(Phase::Succeeded));
    assert_eq!(d.status.result, Some(json!({"imported": 1500, "errors": ["s0", "s1", "s2"]})));
    assert_eq!(d.status.result_shards.as_deref(), Some("0-2"));
    // A finished job's status is final, whatever the Leases say.
    let before = job.status.clone();
    let d = decide_with(&mut job, &mut w, &[reported(0, 1), reported(2, 1)], at(6));
    assert_eq!(Some(d.status), before);
}

#[test]
fn a_result_dropped_for_its_size_stays_dropped() {
    let mut job = job(2, 2, json!({}));
    let mut w = World::default();
    step(&mut job, &mut w, t0());
    finish(&mut w, "j-0-1", true);
    let big = LeaseView { result: Some(json!({"note": "x".repeat(5_000)})), ..reported(0, 0) };
    let d = decide_with(&mut job, &mut w, &[big], at(1));
    assert_eq!((d.status.result, d.status.result_shards.as_deref()), (None, Some("0")));
    finish(&mut w, "j-1-1", true);
    let d = decide_with(&mut job, &mut w, &[reported(1, 5)], at(2));
    assert_eq!((d.status.result, d.status.result_shards.as_deref()), (None, Some("0-1")), "not a partial sum");
}

proptest! {
    /// Shards succeed in any order while each step sees any subset of the Leases (a new leader,
    /// a lagging cache, Leases deleted): the result counts each shard that is in resultShards
    /// exactly once, never loses one, and every shard seen with its result is in.
    #[test]
    fn every_shard_counts_exactly_once(
        order in Just((0..6).collect::<Vec<i32>>()).prop_shuffle(),
        seen in proptest::collection::vec(proptest::bits::u8::masked(0b11_1111), 12),
    ) {
        let mut job = job(6, 6, json!({}));
        let mut w = World::default();
        step(&mut job, &mut w, t0());
        let mut merged_before = BTreeSet::new();
        let mut finished = false;
        for (i, mask) in seen.iter().enumerate() {
            if let Some(&shard) = order.get(i) {
                finish(&mut w, &pod::pod_name("j", shard, 1), true);
            }
            let leases: Vec<LeaseView> =
                (0..6).filter(|s| mask & (1 << s) != 0).map(|s| reported(s, 1 << s)).collect();
            let d = decide_with(&mut job, &mut w, &leases, at(i as i64 + 1));
            let merged: BTreeSet<i32> = Ranges::from_opt(d.status.result_shards.as_ref()).iter().collect();
            let sum: i64 = merged.iter().map(|s| 1i64 << s).sum();
            let imported = d.status.result.as_ref().and_then(|r| r["imported"].as_i64()).unwrap_or(0);
            prop_assert_eq!(imported, sum, "merged {:?}", merged);
            prop_assert!(merged.is_superset(&merged_before), "lost a shard: {:?} then {:?}", merged_before, merged);
            let succeeded = Ranges::from_opt(d.status.succeeded_shards.as_ref());
            prop_assert!(merged.iter().all(|s| succeeded.contains(*s)), "merged before it succeeded: {:?}", merged);
            if !finished {
                let shown: Vec<i32> = leases.iter().map(|l| l.shard).filter(|s| succeeded.contains(*s)).collect();
                prop_assert!(shown.iter().all(|s| merged.contains(s)), "{:?} shown, {:?} merged", shown, merged);
            }
            finished = d.status.phase.is_some_and(|p| p.is_finished());
            merged_before = merged;
        }
    }
}
