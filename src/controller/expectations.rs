//! What the operator did that its caches have not shown yet, after the Job controller's
//! `ControllerExpectations`: a pod being created, or created and not yet in the pod cache; a
//! finalizer removed that the cache still shows. A reconcile that reads the cache must not do
//! such a thing twice, nor forget that it counts (a pod being created takes a worker from the
//! budget). An expectation ends when the cache shows its effect, when its request fails, or —
//! should the watch never show it — `ttl` after its request returned. The clock is an argument.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct Expectations<V> {
    ttl: Duration,
    entries: HashMap<String, Expected<V>>,
}

#[derive(Debug)]
struct Expected<V> {
    value: V,
    /// When the request returned; None while it is on its way (which never expires).
    since: Option<Instant>,
}

impl<V> Expectations<V> {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: HashMap::new() }
    }

    /// A request is on its way: its effect is expected, with no expiry until it returns.
    pub fn sending(&mut self, key: String, value: V) {
        self.entries.insert(key, Expected { value, since: None });
    }

    /// The request for `key` returned: its effect should show within the ttl from `now`.
    pub fn sent(&mut self, key: &str, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.since = Some(now);
        }
    }

    /// A request that returned at `now`, its effect expected from then on.
    pub fn expect(&mut self, key: String, value: V, now: Instant) {
        self.entries.insert(key, Expected { value, since: Some(now) });
    }

    /// The effect was seen, or the request failed: nothing more to expect.
    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets `key` if its request never returned (the reconcile that sent it ended early).
    pub fn forget_unsent(&mut self, key: &str) {
        if self.entries.get(key).is_some_and(|e| e.since.is_none()) {
            self.entries.remove(key);
        }
    }

    /// Whether `key` is still expected at `now`.
    pub fn expects(&mut self, key: &str, now: Instant) -> bool {
        self.expire(now);
        self.entries.contains_key(key)
    }

    /// Every expectation still open at `now`.
    pub fn open(&mut self, now: Instant) -> impl Iterator<Item = (&String, &V)> {
        self.expire(now);
        self.entries.iter().map(|(k, e)| (k, &e.value))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries.retain(|_, e| e.since.is_none_or(|at| now.saturating_duration_since(at) < ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn an_expectation_lasts_until_seen() {
        let (mut e, t0) = (Expectations::new(TTL), Instant::now());
        e.expect("ns/pod".into(), "job".to_string(), t0);
        assert!(e.expects("ns/pod", t0 + Duration::from_secs(59)));
        e.forget("ns/pod");
        assert!(!e.expects("ns/pod", t0 + Duration::from_secs(1)));
    }

    #[test]
    fn an_expectation_never_seen_ends_after_the_ttl() {
        let (mut e, t0) = (Expectations::new(TTL), Instant::now());
        e.expect("a".into(), (), t0);
        assert!(e.expects("a", t0 + TTL - Duration::from_millis(1)));
        assert!(!e.expects("a", t0 + TTL));
        assert!(e.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn a_request_on_its_way_never_expires_and_its_ttl_starts_when_it_returns() {
        let (mut e, t0) = (Expectations::new(TTL), Instant::now());
        e.sending("a".into(), 1);
        assert!(e.expects("a", t0 + TTL * 10), "a slow request still counts");
        e.sent("a", t0 + TTL * 10);
        assert!(e.expects("a", t0 + TTL * 11 - Duration::from_millis(1)));
        assert!(!e.expects("a", t0 + TTL * 11));
    }

    #[test]
    fn forget_unsent_keeps_requests_that_returned() {
        let (mut e, t0) = (Expectations::new(TTL), Instant::now());
        e.sending("on-its-way".into(), 1);
        e.sending("returned".into(), 2);
        e.sent("returned", t0);
        e.forget_unsent("on-its-way");
        e.forget_unsent("returned");
        let open: Vec<(String, i32)> = e.open(t0).map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(open, vec![("returned".to_string(), 2)]);
    }
}
