//! The worker budget and the queue: which jobs may start or grow, and by how many workers.
//!
//! Pure arithmetic over a snapshot of every job's claim. The budget is counted from the pods
//! that exist (plus those being created right now), never from a tally a crash would forget.
//! Order: higher priority first, then older, then by namespace and name. A job is admitted
//! when `workers.min` workers fit (or all it needs, if fewer); admitted jobs grow toward
//! `workers.max` as the budget frees up. A job that does not fit holds back every job behind it
//! under the same budget (no overtaking, so a large job is never starved), and nothing is
//! preempted: live workers always count, whatever their job's place.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use nightshift_api::{BackgroundJob, Phase, reasons::Reason};

/// The worker budget: live worker pods allowed operator-wide and per namespace. None: no budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub total: Option<i32>,
    pub per_namespace: Option<i32>,
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.total.is_none() && self.per_namespace.is_none()
    }
}

/// One job's claim on workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub priority: i32,
    pub created: Timestamp,
    /// Running already: admitted, and not suspended since (a resumed job queues again).
    pub admitted: bool,
    /// Live worker pods, including those being created.
    pub live: i32,
    /// Workers it would run now without a budget: min(workers.max, shards left).
    pub wants: i32,
    /// workers.min.
    pub min: i32,
}

impl Claim {
    /// The claim of `job`, which has `live` worker pods (existing or being created); None for a
    /// job that claims nothing (finished, suspended or being deleted).
    pub fn of(job: &BackgroundJob, live: i32) -> Option<Claim> {
        let status = job.status.as_ref();
        let phase = status.and_then(|s| s.phase);
        if job.metadata.deletion_timestamp.is_some() || job.spec.suspend || phase.is_some_and(|p| p.is_finished()) {
            return None;
        }
        // Waiting for its template or the jobs of spec.after: not for workers.
        if super::template::unresolved(job) {
            return None;
        }
        if status.and_then(|s| s.waiting_for()) == Some(Reason::WaitingForDependencies.as_str()) {
            return None;
        }
        let left = status.and_then(|s| s.shards.as_ref()).map_or(job.spec.shards, |s| s.total - s.succeeded - s.failed);
        Some(Claim {
            namespace: job.namespace().unwrap_or_default(),
            name: job.name_any(),
            priority: job.spec.priority,
            created: job.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            admitted: phase == Some(Phase::Running),
            live,
            wants: left.min(job.spec.workers.max).max(0),
            min: job.spec.workers.min,
        })
    }
}

/// What one job may do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Workers it may add now.
    pub extra: i32,
    /// For a job that may not start: its place among the waiting jobs (1 = next) and why it waits.
    pub waiting: Option<(usize, String)>,
}

/// Grants for every claim, keyed by (namespace, name).
pub fn plan(budget: Budget, claims: &[Claim]) -> BTreeMap<(String, String), Grant> {
    let mut order: Vec<&Claim> = claims.iter().collect();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.created.cmp(&b.created))
            .then((&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    let live_total: i32 = claims.iter().map(|c| c.live).sum();
    let mut live_ns: BTreeMap<&str, i32> = BTreeMap::new();
    for c in claims {
        *live_ns.entry(c.namespace.as_str()).or_default() += c.live;
    }
    let mut free_total = budget.total.map(|t| (t - live_total).max(0));
    let mut free_ns: BTreeMap<&str, i32> = BTreeMap::new();
    if let Some(per) = budget.per_namespace {
        for (ns, live) in &live_ns {
            free_ns.insert(ns, (per - live).max(0));
        }
    }
    let mut blocked_total = false;
    let mut blocked_ns: BTreeSet<&str> = BTreeSet::new();
    let mut waiting = 0usize;
    let mut grants = BTreeMap::new();
    for c in order {
        let key = (c.namespace.clone(), c.name.clone());
        let extra_wanted = (c.wants - c.live).max(0);
        let need = if c.admitted { 1 } else { (c.min.min(c.wants) - c.live).max(1) };
        let ns_free = budget.per_namespace.map(|_| free_ns.get(c.namespace.as_str()).copied().unwrap_or(0));
        let avail = match (free_total, ns_free) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let held_back = blocked_total || blocked_ns.contains(c.namespace.as_str());
        if extra_wanted == 0 {
            grants.insert(key, Grant::default());
            continue;
        }
        let fits = !held_back && avail.is_none_or(|a| a >= need);
        if fits {
            let extra = avail.map_or(extra_wanted, |a| a.min(extra_wanted));
            if let Some(f) = free_total.as_mut() {
                *f -= extra;
            }
            if let Some(f) = free_ns.get_mut(c.namespace.as_str()) {
                *f -= extra;
            } else if let Some(per) = budget.per_namespace {
                free_ns.insert(c.namespace.as_str(), per - c.live - extra);
            }
            grants.insert(key, Grant { extra, waiting: None });
            continue;
        }
        if c.admitted {
            // Running jobs that cannot grow wait for nothing and hold no one back.
            grants.insert(key, Grant::default());
            continue;
        }
        waiting += 1;
        let reason = if held_back {
            "jobs ahead of it in the queue wait for workers first".to_string()
        } else if free_total.is_some_and(|f| f < need) {
            blocked_total = true;
            format!(
                "needs {need} worker{} to start; {} of the operator's {} workers are free",
                if need == 1 { "" } else { "s" },
                free_total.unwrap_or(0),
                budget.total.unwrap_or(0)
            )
        } else {
            blocked_ns.insert(c.namespace.as_str());
            format!(
                "needs {need} worker{} to start; {} of namespace {}'s {} workers are free",
                if need == 1 { "" } else { "s" },
                ns_free.unwrap_or(0),
                c.namespace,
                budget.per_namespace.unwrap_or(0)
            )
        };
        grants.insert(key, Grant { extra: 0, waiting: Some((waiting, reason)) });
    }
    grants
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn claim(name: &str, priority: i32, age: i64, admitted: bool, live: i32, wants: i32, min: i32) -> Claim {
        Claim {
            namespace: "ns".into(),
            name: name.into(),
            priority,
            created: Timestamp::from_second(1_800_000_000 - age).unwrap(),
            admitted,
            live,
            wants,
            min,
        }
    }

    fn get(g: &BTreeMap<(String, String), Grant>, name: &str) -> Grant {
        g[&("ns".to_string(), name.to_string())].clone()
    }

    #[test]
    fn higher_priority_then_older_goes_first() {
        let budget = Budget { total: Some(4), per_namespace: None };
        let claims = [
            claim("old-low", 0, 100, false, 0, 3, 1),
            claim("new-high", 5, 1, false, 0, 3, 1),
            claim("older-low", 0, 200, false, 0, 3, 1),
        ];
        let g = plan(budget, &claims);
        assert_eq!(get(&g, "new-high").extra, 3);
        assert_eq!(get(&g, "older-low").extra, 1);
        assert_eq!(
            get(&g, "old-low"),
            Grant {
                extra: 0,
                waiting: Some((1, "needs 1 worker to start; 0 of the operator's 4 workers are free".into()))
            }
        );
    }

    #[test]
    fn partial_admission_and_a_job_that_must_wait_for_its_minimum() {
        let budget = Budget { total: Some(4), per_namespace: None };
        // 2 of 4 busy: a min-1/max-3 job starts with 2; a min-3 job behind it waits.
        let claims = [
            claim("busy", 9, 300, true, 2, 2, 1),
            claim("flexible", 0, 200, false, 0, 3, 1),
            claim("rigid", 0, 100, false, 0, 3, 3),
        ];
        let g = plan(budget, &claims);
        assert_eq!(get(&g, "flexible").extra, 2);
        assert_eq!(get(&g, "rigid").waiting.map(|w| w.0), Some(1));
        // A min-3 job first in line, with 2 free, waits and holds back the rest.
        let claims = [
            claim("busy", 9, 300, true, 2, 2, 1),
            claim("rigid", 0, 200, false, 0, 3, 3),
            claim("small", 0, 100, false, 0, 1, 1),
        ];
        let g = plan(budget, &claims);
        assert_eq!(get(&g, "rigid").extra, 0);
        assert_eq!(get(&g, "small").waiting.map(|w| w.0), Some(2));
    }

    #[test]
    fn namespace_budgets_hold_back_only_their_namespace() {
        let budget = Budget { total: Some(10), per_namespace: Some(2) };
        let mut a = claim("a", 0, 300, false, 0, 3, 3);
        a.namespace = "team-a".into();
        let mut b = claim("b", 0, 200, false, 0, 3, 1);
        b.namespace = "team-b".into();
        let g = plan(budget, &[a, b]);
        assert_eq!(g[&("team-a".into(), "a".into())].extra, 0);
        assert_eq!(g[&("team-b".into(), "b".into())].extra, 2);
    }

    #[test]
    fn unlimited_budget_grants_everything() {
        let g = plan(Budget::default(), &[claim("a", 0, 1, false, 0, 3, 3)]);
        assert_eq!(get(&g, "a").extra, 3);
    }

    #[test]
    fn a_claim_wants_the_shards_left_up_to_workers_max() {
        let spec = serde_json::json!({"shards": 10, "workers": {"min": 2, "max": 4},
                                      "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}});
        let status = serde_json::json!({"phase": "Running", "shards": {"total": 10, "pending": 0, "running": 2, "succeeded": 7, "failed": 1, "summary": "7/10"}});
        let mut job: BackgroundJob = nightshift_api::job_fixture::job("j", spec).namespace("ns").status(status).build();
        let c = Claim::of(&job, 2).unwrap();
        assert_eq!((c.wants, c.min, c.live, c.admitted), (2, 2, 2, true), "10 - 7 - 1 shards left");
        job.spec.suspend = true;
        assert_eq!(Claim::of(&job, 2), None, "a suspended job claims nothing");
    }

    fn claims() -> impl Strategy<Value = Vec<Claim>> {
        prop::collection::vec((0..3i32, 0..1000i64, any::<bool>(), 0..4i32, 0..4i32, 1..4i32, 0..3u8), 0..12).prop_map(
            |v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (p, age, admitted, live, wants, min, ns))| {
                        let mut c = claim(&format!("j{i}"), p, age, admitted, live.min(wants), wants, min);
                        c.namespace = format!("ns{ns}");
                        c
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn grants_never_exceed_the_budget(total in 0..12i32, per in prop::option::of(0..6i32), claims in claims()) {
            let budget = Budget { total: Some(total), per_namespace: per };
            let g = plan(budget, &claims);
            let live: i32 = claims.iter().map(|c| c.live).sum();
            let granted: i32 = g.values().map(|g| g.extra).sum();
            prop_assert!(live.max(total) >= live + granted, "live {} + granted {} over budget {}", live, granted, total);
            if let Some(per) = per {
                let mut by_ns: BTreeMap<String, i32> = BTreeMap::new();
                for c in &claims {
                    *by_ns.entry(c.namespace.clone()).or_default() += c.live + g[&(c.namespace.clone(), c.name.clone())].extra;
                }
                for c in &claims {
                    let live_ns: i32 = claims.iter().filter(|o| o.namespace == c.namespace).map(|o| o.live).sum();
                    prop_assert!(by_ns[&c.namespace] <= live_ns.max(per));
                }
            }
            for c in &claims {
                let grant = &g[&(c.namespace.clone(), c.name.clone())];
                prop_assert!(grant.extra <= (c.wants - c.live).max(0), "never more than a job wants");
                // An unadmitted job starts with at least its minimum (or all it wants).
                if !c.admitted && grant.extra > 0 {
                    prop_assert!(c.live + grant.extra >= c.min.min(c.wants));
                }
            }
        }
    }
}
