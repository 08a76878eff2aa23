//! The shards waiting for a retry, as the status keeps them: the lowest
//! [`MAX_RETRYING_LISTED`] one by one (status.retrying), the others as ranges grouped by what
//! they have used up (status.retryingGroups). A job whose thousands of shards all fail would
//! otherwise list each of them, and a status past etcd's object size limit can no longer be
//! written: the job could then never even fail.
//!
//! A grouped shard keeps its exact failures and disruptions (they decide its retries); its next
//! attempt number and time are its group's highest, so it never reuses an attempt's pod name
//! and never retries early. Past [`MAX_RETRYING_GROUPS`] the last group takes the rest with
//! the highest of each value: those shards then have fewer retries left, never more.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use nightshift_api::{MAX_RETRYING_GROUPS, MAX_RETRYING_LISTED, Ranges, RetryingGroup, RetryingShard};

/// Every shard of `listed` and `groups`, each grouped one with its group's values.
pub fn unpack(listed: &[RetryingShard], groups: &[RetryingGroup]) -> BTreeMap<i32, RetryingShard> {
    let mut all: BTreeMap<i32, RetryingShard> = BTreeMap::new();
    for group in groups {
        for shard in Ranges::parse(&group.shards).iter() {
            let entry = RetryingShard {
                shard,
                attempt: group.attempt,
                failures: group.failures,
                disruptions: group.disruptions,
                next_retry_time: group.next_retry_time.clone(),
                last_failure: None,
            };
            all.insert(shard, entry);
        }
    }
    // A shard in both (a hand-edited status) counts as listed: that entry is the more precise.
    all.extend(listed.iter().map(|r| (r.shard, r.clone())));
    all
}

/// The status form of `retrying`: the lowest shards listed, the rest grouped.
pub fn pack(retrying: BTreeMap<i32, RetryingShard>) -> (Vec<RetryingShard>, Vec<RetryingGroup>) {
    let mut rest = retrying.into_values();
    let listed: Vec<RetryingShard> = rest.by_ref().take(MAX_RETRYING_LISTED).collect();
    let mut groups: BTreeMap<(i32, i32), (Ranges, RetryingGroup)> = BTreeMap::new();
    for r in rest {
        let (shards, group) = groups.entry((r.failures, r.disruptions)).or_insert_with(|| {
            let group = RetryingGroup {
                shards: String::new(),
                count: 0,
                attempt: r.attempt,
                failures: r.failures,
                disruptions: r.disruptions,
                next_retry_time: None,
            };
            (Ranges::default(), group)
        });
        shards.insert(r.shard);
        merge(group, r.attempt, r.next_retry_time.as_ref());
    }
    let mut groups: Vec<(Ranges, RetryingGroup)> = groups.into_values().collect();
    if groups.len() > MAX_RETRYING_GROUPS {
        let tail = groups.split_off(MAX_RETRYING_GROUPS - 1);
        let mut last = tail[0].clone();
        for (shards, group) in &tail[1..] {
            last.0.union(shards);
            last.1.failures = last.1.failures.max(group.failures);
            last.1.disruptions = last.1.disruptions.max(group.disruptions);
            merge(&mut last.1, group.attempt, group.next_retry_time.as_ref());
        }
        groups.push(last);
    }
    let groups = groups
        .into_iter()
        .map(|(shards, group)| RetryingGroup { shards: shards.to_string(), count: shards.len() as i32, ..group })
        .collect();
    (listed, groups)
}

/// The highest attempt and the latest time (a time beats none: none means at once).
fn merge(group: &mut RetryingGroup, attempt: i32, next: Option<&Time>) {
    group.attempt = group.attempt.max(attempt);
    if let Some(t) = next
        && group.next_retry_time.as_ref().is_none_or(|g| g.0 < t.0)
    {
        group.next_retry_time = Some(t.clone());
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use proptest::prelude::*;

    use super::*;

    fn entry(shard: i32, failures: i32, disruptions: i32, at: Option<i64>) -> RetryingShard {
        RetryingShard {
            shard,
            attempt: failures + disruptions + 1,
            failures,
            disruptions,
            next_retry_time: at.map(|s| Time(Timestamp::from_second(s).unwrap())),
            last_failure: None,
        }
    }

    #[test]
    fn the_lowest_are_listed_and_the_rest_grouped_by_failures() {
        let all: BTreeMap<i32, RetryingShard> =
            (0..100).map(|s| (s, entry(s, 1 + s % 2, 0, Some(1_000 + i64::from(s))))).collect();
        let (listed, groups) = pack(all.clone());
        assert_eq!(listed.iter().map(|r| r.shard).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].failures, groups[0].count), (1, 40));
        assert!(groups[0].shards.starts_with("20,22,24"), "{}", groups[0].shards);
        // The latest time of the group: no shard retries before its own time.
        assert_eq!(groups[1].next_retry_time.as_ref().unwrap().0.as_second(), 1_099);
        let back = unpack(&listed, &groups);
        assert_eq!(back.len(), 100);
        for (shard, before) in &all {
            let after = &back[shard];
            assert_eq!((after.failures, after.disruptions), (before.failures, before.disruptions), "shard {shard}");
            assert!(after.attempt >= before.attempt && after.next_retry_time >= before.next_retry_time);
        }
    }

    proptest! {
        /// Whatever the shards and their counts: at most 20 listed and 20 groups, every shard
        /// kept, none with fewer failures or disruptions, an earlier attempt or time.
        #[test]
        fn packing_is_bounded_and_never_gives_more_retries(
            shards in prop::collection::btree_set(0..100_000i32, 0..3_000),
            seed in any::<u64>(),
        ) {
            let all: BTreeMap<i32, RetryingShard> = shards
                .iter()
                .map(|&s| {
                    let h = (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
                    let at = (!h.is_multiple_of(3)).then_some(1_000 + (h % 600) as i64);
                    (s, entry(s, (h % 101) as i32, ((h >> 8) % 40) as i32, at))
                })
                .collect();
            let (listed, groups) = pack(all.clone());
            prop_assert!(listed.len() <= MAX_RETRYING_LISTED && groups.len() <= MAX_RETRYING_GROUPS);
            let back = unpack(&listed, &groups);
            prop_assert_eq!(back.len(), all.len());
            for (shard, before) in &all {
                let after = &back[shard];
                prop_assert!(after.failures >= before.failures && after.disruptions >= before.disruptions);
                prop_assert!(after.attempt >= before.attempt);
                prop_assert!(before.next_retry_time.is_none() || after.next_retry_time >= before.next_retry_time);
            }
        }
    }
}
