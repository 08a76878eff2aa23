//! Chains: whether a job whose spec.after names other jobs may start, waits, or fails.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;

use nightshift_api::{Phase, reasons::Reason};

use crate::time::plus;

/// How long a job named in spec.after may be missing before the job that waits for it fails:
/// jobs applied together in one `kubectl apply -f` arrive in any order.
pub const MISSING_DEPENDENCY_SECONDS: i64 = 60;

/// What the controller found of the jobs a job's spec.after names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// The phase of each job spec.after names that exists (one without a status yet counts as
    /// Queued); a name not here has no job.
    pub phases: BTreeMap<String, Phase>,
    /// A cycle through this job, when spec.after leads back to it: the names along it.
    pub cycle: Option<Vec<String>>,
}

/// What a chain allows a job that has not started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Start,
    /// Wait (phase Queued); look again at `recheck` at the latest (a missing job's time is up).
    Wait {
        message: String,
        /// The first job waited for.
        first: String,
        recheck: Option<Timestamp>,
    },
    Fail {
        reason: Reason,
        message: String,
    },
}

/// Judges a job's chain (`after`, its spec.after) at `now`; `queued` is when the job was first seen.
pub fn judge(after: &[String], chain: &Chain, queued: Timestamp, now: Timestamp) -> Verdict {
    if let Some(cycle) = &chain.cycle {
        let message = format!("spec.after makes a cycle ({}): none of these jobs can start", cycle.join(" → "));
        return Verdict::Fail { reason: Reason::DependencyCycle, message };
    }
    let give_up = plus(queued, MISSING_DEPENDENCY_SECONDS);
    let mut waiting: Vec<(&String, String)> = Vec::new();
    let mut recheck = None;
    for name in after {
        match chain.phases.get(name) {
            Some(Phase::Succeeded) => {}
            Some(Phase::Failed) => {
                let message = format!("spec.after: job {name} failed, so this job will not run");
                return Verdict::Fail { reason: Reason::DependencyFailed, message };
            }
            None if now >= give_up => {
                let message = format!(
                    "spec.after: job {name} does not exist (waited {MISSING_DEPENDENCY_SECONDS}s for it; was it deleted?), so this job will not run"
                );
                return Verdict::Fail { reason: Reason::DependencyFailed, message };
            }
            None => {
                waiting.push((name, format!("{name} (not created yet)")));
                recheck = Some(give_up);
            }
            Some(phase) => waiting.push((name, format!("{name} ({phase})"))),
        }
    }
    let Some((first, _)) = waiting.first() else {
        return Verdict::Start;
    };
    let message =
        format!("waiting for {} to succeed", waiting.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join(", "));
    Verdict::Wait { message, first: first.to_string(), recheck }
}

/// The cycle through `start` that following spec.after finds, if any: `start`, the jobs along
/// it, and `start` again. `after_of` gives a job's spec.after (None: no such job).
pub fn find_cycle(start: &str, after_of: impl Fn(&str) -> Option<Vec<String>>) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    // Depth-first, with the path to each job on the stack beside it.
    let mut stack: Vec<Vec<String>> = vec![vec![start.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().expect("a path is never empty");
        for next in after_of(last).unwrap_or_default() {
            let mut longer = path.clone();
            longer.push(next.clone());
            if next == start {
                return Some(longer);
            }
            if seen.insert(next) {
                stack.push(longer);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;
    use proptest::prelude::*;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// spec.after and the chain the controller would find for it.
    fn chain(deps: &[(&str, Option<Phase>)]) -> (Vec<String>, Chain) {
        let after = deps.iter().map(|(n, _)| n.to_string()).collect();
        let phases = deps.iter().filter_map(|(n, p)| p.map(|p| (n.to_string(), p))).collect();
        (after, Chain { phases, cycle: None })
    }

    #[test]
    fn waits_until_every_dependency_succeeded() {
        let (after, c) = chain(&[
            ("other", Some(Phase::Succeeded)),
            ("load-catalog", Some(Phase::Running)),
            ("images", Some(Phase::Queued)),
        ]);
        let Verdict::Wait { message, first, recheck } = judge(&after, &c, at(0), at(5)) else { panic!() };
        assert_eq!(message, "waiting for load-catalog (Running), images (Queued) to succeed");
        assert_eq!(first, "load-catalog", "the first job waited for, the event's related object");
        assert_eq!(recheck, None, "a present job wakes its dependents when it changes: no timer");
        let (after, c) = chain(&[("load-catalog", Some(Phase::Succeeded))]);
        assert_eq!(judge(&after, &c, at(0), at(5)), Verdict::Start);
    }

    #[test]
    fn a_failed_dependency_fails_the_job() {
        let (after, c) = chain(&[("a", Some(Phase::Succeeded)), ("b", Some(Phase::Failed))]);
        let Verdict::Fail { reason, message } = judge(&after, &c, at(0), at(5)) else { panic!() };
        assert_eq!(reason, Reason::DependencyFailed);
        assert!(message.contains("job b failed"), "{message}");
    }

    #[test]
    fn a_missing_dependency_is_waited_for_a_minute() {
        let (after, c) = chain(&[("later", None)]);
        let Verdict::Wait { message, recheck, .. } = judge(&after, &c, at(0), at(10)) else { panic!() };
        assert!(message.contains("later (not created yet)"), "{message}");
        assert_eq!(recheck, Some(at(MISSING_DEPENDENCY_SECONDS)));
        let Verdict::Fail { reason, message } = judge(&after, &c, at(0), at(60)) else { panic!() };
        assert_eq!(reason, Reason::DependencyFailed);
        assert!(message.contains("job later does not exist"), "{message}");
    }

    #[test]
    fn a_cycle_fails_naming_it() {
        let graph: BTreeMap<&str, Vec<String>> =
            [("a", vec!["b".into()]), ("b", vec!["c".into(), "x".into()]), ("c", vec!["a".into()]), ("x", vec![])]
                .into();
        let after_of = |n: &str| graph.get(n).cloned();
        let cycle = find_cycle("a", after_of).unwrap();
        assert_eq!(cycle, ["a", "b", "c", "a"]);
        assert_eq!(find_cycle("x", after_of), None);
        let c = Chain { phases: [("b".to_string(), Phase::Queued)].into(), cycle: Some(cycle) };
        let Verdict::Fail { reason, message } = judge(&["b".into()], &c, at(0), at(0)) else { panic!() };
        assert_eq!(reason, Reason::DependencyCycle);
        assert!(message.contains("a → b → c → a"), "{message}");
    }

    proptest! {
        /// Over random graphs: a cycle is found exactly when `start` reaches itself, and what is
        /// returned is a real path along spec.after from `start` back to it.
        #[test]
        fn find_cycle_agrees_with_reachability(edges in proptest::collection::vec((0..8u8, 0..8u8), 0..20), start in 0..8u8) {
            let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (from, to) in &edges {
                graph.entry(from.to_string()).or_default().push(to.to_string());
            }
            let after_of = |n: &str| graph.get(n).cloned();
            // Reachability by a fixed point, independent of the search.
            let mut reach: BTreeSet<String> = graph.get(&start.to_string()).cloned().unwrap_or_default().into_iter().collect();
            loop {
                let more: BTreeSet<String> = reach.iter().flat_map(|n| after_of(n).unwrap_or_default()).collect();
                if more.is_subset(&reach) { break; }
                reach.extend(more);
            }
            let start = start.to_string();
            match find_cycle(&start, after_of) {
                Some(path) => {
                    prop_assert!(reach.contains(&start));
                    prop_assert_eq!(path.first(), Some(&start));
                    prop_assert_eq!(path.last(), Some(&start));
                    for pair in path.windows(2) {
                        prop_assert!(graph[&pair[0]].contains(&pair[1]));
                    }
                }
                None => prop_assert!(!reach.contains(&start)),
            }
        }

        /// A job never starts before every dependency succeeded, and never waits on a failed one.
        #[test]
        fn judge_starts_only_after_all_succeeded(phases in proptest::collection::vec(proptest::option::of(0..5u8), 1..6), secs in 0..120i64) {
            let all = [Phase::Queued, Phase::Running, Phase::Suspended, Phase::Succeeded, Phase::Failed];
            let deps: Vec<(String, Option<Phase>)> =
                phases.iter().enumerate().map(|(i, p)| (format!("j{i}"), p.map(|p| all[p as usize]))).collect();
            let after: Vec<String> = deps.iter().map(|(n, _)| n.clone()).collect();
            let c = Chain { phases: deps.iter().filter_map(|(n, p)| p.map(|p| (n.clone(), p))).collect(), cycle: None };
            let now = at(0) + SignedDuration::from_secs(secs);
            let verdict = judge(&after, &c, at(0), now);
            let all_ok = deps.iter().all(|(_, p)| *p == Some(Phase::Succeeded));
            let any_failed = deps.iter().any(|(_, p)| *p == Some(Phase::Failed))
                || (secs >= MISSING_DEPENDENCY_SECONDS && deps.iter().any(|(_, p)| p.is_none()));
            prop_assert_eq!(verdict == Verdict::Start, all_ok);
            prop_assert_eq!(matches!(verdict, Verdict::Fail { .. }), any_failed);
        }
    }
}
