//! Time helpers of the core: API times from `now`, deadlines, and how long to wait for them.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};

/// An API time (metav1.Time) of `t`.
pub fn time(t: Timestamp) -> Time {
    Time(t)
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

/// The sooner of an optional wait and `b`.
pub fn min_opt(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}
