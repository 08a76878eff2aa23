//! Time helpers of the core: API times from `now`, deadlines, and how long to wait for them.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{RoundMode, SignedDuration, Timestamp, TimestampRound, Unit},
};

/// An API time (metav1.Time) of `t`, in whole seconds: the precision the API server stores, so
/// that a status decided again from the same facts compares equal to the one it read back.
pub fn time(t: Timestamp) -> Time {
    Time(whole(t))
}

/// `t` without its fraction of a second (the second it falls in).
pub fn whole(t: Timestamp) -> Timestamp {
    t.round(TimestampRound::new().smallest(Unit::Second).mode(RoundMode::Floor)).unwrap_or(t)
}

/// `t` plus `secs` seconds (the latest time rather than overflow).
pub fn plus(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs)).unwrap_or(Timestamp::MAX)
}

/// How long from `now` until `t`: at least a second, so a wait never spins.
pub fn until(now: Timestamp, t: Timestamp) -> Duration {
    let secs = t.duration_since(now).as_secs().max(0) as u64;
    Duration::from_secs(secs.max(1))
}

/// How long from the whole second of `at` until `t`, to the nanosecond (none if `t` is earlier):
/// a wait decided at the instant `at` and counted, like every other, from `whole(at)`.
pub fn until_exact(at: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(whole(at))).unwrap_or_default()
}

/// The sooner of an optional wait and `b`.
pub fn min_opt(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}
