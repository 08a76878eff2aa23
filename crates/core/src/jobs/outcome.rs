//! How an attempt that ended without succeeding moves its shard: interrupted by a suspend,
//! taken away by the cluster, or failed — retried under spec.retry, or, by an exit-code rule,
//! failing the job, failing the shard alone, or retried without counting.

use super::book::Book;
use crate::{
    EventNote, Related,
    time::{plus, time},
};
use nightshift_api::{
    ActiveShard, ExitCodeAction, Failure, MAX_SHARD_FAILURES, RetryingShard, ShardFailure,
    reasons::{EventReason, Reason},
};

impl Book<'_> {
    /// A shard whose attempt was stopped by a suspend: not a failure; it runs again on resume.
    pub(super) fn interrupt(&mut self, entry: &ActiveShard) {
        self.active.remove(&entry.shard);
        self.retrying.insert(
            entry.shard,
            RetryingShard {
                shard: entry.shard,
                attempt: entry.attempt + 1,
                failures: entry.failures,
                disruptions: entry.disruptions,
                next_retry_time: None,
                last_failure: None,
            },
        );
    }

    /// Records a failed attempt. An exit code a spec.retry.exitCodes rule names is judged by it;
    /// any other failure makes the shard wait for its retry, or fail for good (and with it the
    /// job) once spec.retry.limit is used up.
    pub(super) fn fail_attempt(&mut self, entry: &ActiveShard, failure: Failure) {
        let (shard, spec) = (entry.shard, &self.job.spec);
        self.active.remove(&shard);
        self.d.failed_attempts.push(failure.reason.clone());
        let what = describe(&failure);
        let rule = failure.exit_code.and_then(|code| {
            let mut rules = spec.retry.exit_codes.iter().enumerate();
            rules.find(|(_, r)| r.codes.contains(&code)).map(|(i, r)| (i, r.action))
        });
        let attempt = entry.attempt;
        let note = match rule {
            Some((i, action)) => {
                let code = failure.exit_code.unwrap_or_default();
                let named = format!("spec.retry.exitCodes[{i}] ({action})");
                match action {
                    ExitCodeAction::FailJob => {
                        let message = format!(
                            "shard {shard} attempt {attempt} exited with code {code}, which {named} says fails the job: {what}"
                        );
                        self.job_failure.get_or_insert((Reason::ExitCodeRule, message));
                        let note = format!("shard {shard} attempt {attempt} failed ({what}); by {named} the job fails");
                        self.fail_shard(entry, failure, Some(named));
                        note
                    }
                    ExitCodeAction::FailShard => {
                        let note = format!(
                            "shard {shard} attempt {attempt} failed ({what}); by {named} the shard fails, no retry"
                        );
                        self.fail_shard(entry, failure, Some(named));
                        note
                    }
                    ExitCodeAction::Ignore => {
                        let wait = spec.retry.backoff.initial_seconds;
                        self.retry(entry, entry.failures, wait, failure);
                        format!(
                            "shard {shard} attempt {attempt} failed ({what}); by {named} retrying in {wait}s, not counted"
                        )
                    }
                }
            }
            None => {
                let (limit, failures) = (spec.retry.limit, entry.failures + 1);
                if failures > limit {
                    self.job_failure.get_or_insert((
                        Reason::RetriesExhausted,
                        format!(
                            "shard {shard} failed {failures} times (spec.retry.limit is {limit}); last failure: {what}"
                        ),
                    ));
                    self.fail_shard(entry, failure, None);
                    format!("shard {shard} attempt {attempt} failed ({what}); no retries left")
                } else {
                    let wait = backoff_seconds(&spec.retry.backoff, failures);
                    self.retry(entry, failures, wait, failure);
                    format!("shard {shard} attempt {attempt} failed ({what}); retrying in {wait}s")
                }
            }
        };
        self.d.events.push(EventNote::warning(EventReason::AttemptFailed, note).about(Related::Pod(entry.pod.clone())));
    }

    /// The shard waits `wait` seconds for its next attempt, with `failures` counted so far.
    fn retry(&mut self, entry: &ActiveShard, failures: i32, wait: i64, failure: Failure) {
        let next = RetryingShard {
            shard: entry.shard,
            attempt: entry.attempt + 1,
            failures,
            disruptions: entry.disruptions,
            next_retry_time: Some(time(plus(self.now, wait))),
            last_failure: Some(failure),
        };
        self.retrying.insert(entry.shard, next);
    }

    /// The shard failed for good: into the failed ranges, and why into status.shardFailures.
    fn fail_shard(&mut self, entry: &ActiveShard, failure: Failure, rule: Option<String>) {
        self.failed.insert(entry.shard);
        if self.shard_failures.len() < MAX_SHARD_FAILURES && !self.shard_failures.iter().any(|f| f.shard == entry.shard)
        {
            self.shard_failures.push(ShardFailure { shard: entry.shard, attempt: entry.attempt, failure, rule });
        }
    }

    /// Records an attempt the cluster took away (evicted, drained, preempted, ...): not the
    /// worker's fault, so it runs again at once and uses no retry — up to
    /// spec.retry.disruptionLimit times per shard; after that each disruption is a failure.
    pub(super) fn disrupt_attempt(&mut self, entry: &ActiveShard, cause: Failure) {
        let (shard, limit) = (entry.shard, self.job.spec.retry.disruption_limit);
        let what = describe(&cause);
        if entry.disruptions >= limit {
            let message = format!("{what} (disrupted more than spec.retry.disruptionLimit, {limit}, times)");
            return self.fail_attempt(entry, Failure { message, ..cause });
        }
        self.active.remove(&shard);
        self.disruptions += 1;
        self.d.disrupted_attempts.push(cause.reason.clone());
        let disruptions = entry.disruptions + 1;
        self.retrying.insert(
            shard,
            RetryingShard {
                shard,
                attempt: entry.attempt + 1,
                failures: entry.failures,
                disruptions,
                next_retry_time: None,
                last_failure: Some(cause),
            },
        );
        let note = format!(
            "shard {shard} attempt {} was taken away by the cluster ({what}); running it again at once, no retry used \
             (disruption {disruptions} of spec.retry.disruptionLimit {limit})",
            entry.attempt
        );
        self.d
            .events
            .push(EventNote::normal(EventReason::AttemptDisrupted, note).about(Related::Pod(entry.pod.clone())));
    }

    /// When every shard has ended and some failed for good without failing the job (by a
    /// FailShard rule): how the job ends — Failed naming them, unless
    /// spec.retry.allowFailedShards.
    pub(super) fn failed_shards_verdict(&self) -> Option<(Reason, String)> {
        if self.failed.is_empty() || self.job.spec.retry.allow_failed_shards {
            return None;
        }
        let mut message = format!(
            "{} of {} shards failed ({}) and spec.retry.allowFailedShards is false",
            self.failed.len(),
            self.total,
            self.failed.abbreviated(MESSAGE_RANGES)
        );
        if let Some(first) = self.shard_failures.first() {
            let rule = first.rule.as_deref().map(|r| format!(" by {r}")).unwrap_or_default();
            message += &format!("; shard {} failed{rule}: {}", first.shard, describe(&first.failure));
        }
        Some((Reason::ShardsFailed, message))
    }
}

/// About how long shard ranges in a condition or event message get (see [`nightshift_api::Ranges::abbreviated`]).
pub(super) const MESSAGE_RANGES: usize = 200;

pub(super) fn describe(f: &Failure) -> String {
    let mut s = f.reason.clone();
    if let Some(code) = f.exit_code {
        s = format!("exit code {code}, {s}");
    }
    if !f.message.is_empty() {
        s = format!("{s}: {}", f.message);
    }
    s
}

/// Seconds to wait before the retry that follows the `failures`-th failure of a shard.
pub fn backoff_seconds(backoff: &nightshift_api::Backoff, failures: i32) -> i64 {
    let exp = (failures - 1).clamp(0, 62);
    let secs = backoff.initial_seconds as f64 * backoff.factor.max(1.0).powi(exp);
    if secs.is_finite() { (secs as i64).min(backoff.max_seconds).max(0) } else { backoff.max_seconds }
}
