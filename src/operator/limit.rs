//! The client-side limit on API requests: one token bucket for the whole operator (client-go's
//! scheme: `qps` tokens a second, at most `burst` saved up), in which Events go last. An event
//! takes a token only when no other request is waiting for one, so with a tight bucket the
//! work (pods, status, finalizers) goes first and events trail behind it; they are still sent,
//! and still count against the bucket.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use hyper::Request;
use tower::{Service, ServiceExt};

/// The bucket itself, on a clock passed in.
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Full: `burst` requests may go at once.
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { qps, burst, tokens: burst, at: now }
    }

    /// Takes a token, or says how long until one is free. An event (`urgent` false) yields to
    /// `others_waiting` urgent requests.
    pub fn take(&mut self, now: Instant, urgent: bool, others_waiting: bool) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.at = now;
        let one = Duration::from_secs_f64(1.0 / self.qps);
        if !urgent && others_waiting {
            return Err(one);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.qps).min(one))
        }
    }
}

/// The bucket shared by every request of a client. Requests of one kind wait in line (first
/// come, first served), and only the first in each line looks at the bucket, so a long queue
/// costs no CPU; the line of events also waits while any other request does.
#[derive(Debug)]
pub struct Limiter {
    bucket: Mutex<Bucket>,
    /// Requests other than events waiting for a token (or about to).
    urgent_waiting: AtomicUsize,
    /// The two lines: [events, everything else].
    lines: [tokio::sync::Mutex<()>; 2],
}

impl Limiter {
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            bucket: Mutex::new(Bucket::new(qps, burst, Instant::now())),
            urgent_waiting: AtomicUsize::new(0),
            lines: [tokio::sync::Mutex::new(()), tokio::sync::Mutex::new(())],
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self, urgent: bool) {
        let _counted = urgent.then(|| Waiting::new(&self.urgent_waiting));
        let _turn = self.lines[usize::from(urgent)].lock().await;
        loop {
            let others = self.urgent_waiting.load(Ordering::SeqCst) > 0;
            let taken = self.bucket.lock().unwrap().take(Instant::now(), urgent, others);
            match taken {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// A request other than an event, counted while it waits (however its waiting ends).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a request is about Events (`/api/v1/namespaces/NS/events...`,
/// `/apis/events.k8s.io/v1/namespaces/NS/events...`).
pub fn is_event(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    segments.iter().position(|s| *s == "namespaces").and_then(|i| segments.get(i + 2)) == Some(&"events")
}

/// A service whose requests wait for a token of `limiter` first.
#[derive(Clone)]
pub struct Limited<S> {
    pub inner: S,
    pub limiter: Arc<Limiter>,
}

impl<S, B> Service<Request<B>> for Limited<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    S::Response: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited on a clone, after the token: see `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let urgent = !is_event(request.uri().path());
        let (limiter, inner) = (self.limiter.clone(), self.inner.clone());
        Box::pin(async move {
            limiter.acquire(urgent).await;
            inner.oneshot(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_burst_go_at_once_then_qps() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5, t0);
        for _ in 0..5 {
            assert!(b.take(t0, true, false).is_ok());
        }
        let wait = b.take(t0, true, false).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // One second later ten tokens were earned, but the bucket holds at most burst.
        let t1 = t0 + Duration::from_secs(1);
        let granted = (0..20).filter(|_| b.take(t1, true, false).is_ok()).count();
        assert_eq!(granted, 5, "the bucket holds at most burst tokens");
        // Over a long run the rate is qps.
        let mut granted = 0;
        for ms in (0..10_000).step_by(10) {
            let now = t1 + Duration::from_millis(ms);
            while b.take(now, true, false).is_ok() {
                granted += 1;
            }
        }
        assert!((99..=101).contains(&granted), "{granted} in 10 s at 10 qps");
    }

    #[test]
    fn events_yield_to_waiting_work() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, 5, t0);
        assert!(b.take(t0, false, true).is_err(), "an event waits while work waits, even with tokens left");
        assert!(b.take(t0, false, false).is_ok(), "and goes when nothing else waits");
        assert!(b.take(t0, true, true).is_ok(), "work never yields");
    }

    #[test]
    fn event_paths_are_recognised() {
        assert!(is_event("/api/v1/namespaces/ns/events"));
        assert!(is_event("/apis/events.k8s.io/v1/namespaces/ns/events/job.18ea83ee598fed81"));
        assert!(!is_event("/api/v1/namespaces/ns/pods/events"), "a pod named events");
        assert!(!is_event("/api/v1/namespaces/events/pods"), "a namespace named events");
        assert!(!is_event("/apis/nightshift.dev/v1alpha1/namespaces/ns/backgroundjobs/j/status"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_waits_until_the_work_is_through() {
        let limiter = Arc::new(Limiter::new(10.0, 1));
        limiter.acquire(true).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, urgent) in [(0, false), (1, true), (2, true)] {
            let (limiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                limiter.acquire(urgent).await;
                order.lock().unwrap().push(i);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![1, 2, 0],
            "work first come, first served; the event, asked first, last"
        );
    }
}
