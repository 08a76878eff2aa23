//! The words of the status and of Events, in one place: condition types, their reasons, Event
//! reasons and the reasons an attempt fails. Users read and match them (`kubectl wait
//! --for=condition=Complete`, alerts on reasons), so each is part of the API.

/// An enum whose variants are written as their own names.
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant)),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// The conditions of a BackgroundJob's status.
    ConditionType {
        /// True once workers may start; False while the job waits in the queue.
        Admitted,
        /// True while spec.suspend holds the job.
        Suspended,
        /// True when every shard succeeded; False once the job failed.
        Complete,
        /// True when the job failed.
        Failed,
        /// True while the API server refuses the job's worker pods (quota, Pod Security), or an
        /// object its workers need belongs to something else.
        WorkersBlocked,
        /// True while the estimated completion is past the job's deadline (spec.timeouts.jobSeconds).
        DeadlineAtRisk,
        /// Of a BackgroundJobSchedule: True while its runs start on schedule.
        Scheduling,
    }
}

names! {
    /// Why a condition has its status; for Failed, why the job failed.
    Reason {
        Admitted,
        WaitingForWorkers,
        /// A job named in spec.after has not succeeded yet.
        WaitingForDependencies,
        /// A job named in spec.after failed, or does not exist.
        DependencyFailed,
        /// spec.after leads back to the job itself, through other jobs' spec.after.
        DependencyCycle,
        /// The BackgroundJobTemplate of spec.templateRef does not exist (yet).
        WaitingForTemplate,
        /// The BackgroundJobTemplate's fields, written into the job, were refused.
        InvalidTemplate,
        Suspended,
        Resumed,
        Succeeded,
        /// A shard failed more often than spec.retry.limit allows.
        RetriesExhausted,
        /// The job ran longer than spec.timeouts.jobSeconds.
        DeadlineExceeded,
        /// spec.cancel is true.
        Cancelled,
        /// A worker exited with a code a spec.retry.exitCodes rule says fails the job.
        ExitCodeRule,
        /// Every shard ended, some failed (by a FailShard rule), and spec.retry.allowFailedShards is false.
        ShardsFailed,
        /// The job asks for the agent, and the operator has no agent image.
        AgentImageUnset,
        /// spec.onlyShards names shards at or above spec.shards (the CRD refuses it where it can
        /// see spec.shards; a job that takes shards from its template is judged here).
        InvalidOnlyShards,
        /// The API server refused a worker pod as invalid.
        InvalidPodTemplate,
        /// The API server forbade a worker pod (403).
        PodCreationForbidden,
        /// Worker pods are no longer refused.
        PodCreationAllowed,
        /// An object of the job's name (a Lease, the workers' ServiceAccount, Role or RoleBinding;
        /// for a schedule, a run's BackgroundJob) exists and belongs to something else: the
        /// operator leaves it alone.
        ObjectNotOwned,
        /// The estimated completion is past the deadline.
        EstimatePastDeadline,
        /// The estimated completion is within the deadline again (or the job is no longer running).
        EstimateWithinDeadline,
        /// A schedule's runs start on schedule.
        Scheduled,
        /// A schedule's spec.schedule or spec.timeZone cannot be read.
        InvalidSchedule,
        /// A schedule's last run started late, passing over earlier scheduled times; until the
        /// next run on time.
        MissSchedule,
        /// As MissSchedule, over more than 100 scheduled times.
        TooManyMissedTimes,
    }
}

names! {
    /// Reasons of the Events published on a job.
    EventReason {
        Admitted,
        Resumed,
        Queued,
        Suspended,
        WorkerStarted,
        AttemptFailed,
        /// The cluster took an attempt away; it runs again at once.
        AttemptDisrupted,
        /// The estimate passed the job's deadline.
        DeadlineAtRisk,
        Succeeded,
        Failed,
        /// A schedule started a job.
        SuccessfulCreate,
        /// A schedule deleted a job (spec.concurrencyPolicy Replace, or beyond its history limits).
        SuccessfulDelete,
        /// A schedule skipped a run: a job of it is active and spec.concurrencyPolicy is Forbid.
        JobAlreadyActive,
        /// A schedule passed over scheduled times (the operator was down, or the schedule suspended).
        MissSchedule,
        /// A schedule passed over more than 100 scheduled times.
        TooManyMissedTimes,
        /// A schedule's spec.schedule or spec.timeZone cannot be read.
        InvalidSchedule,
        /// An object the operator would create exists and belongs to something else; it is left alone.
        ObjectNotOwned,
    }
}

names! {
    /// Why the operator ended an attempt (a pod that failed by itself says its own reason).
    AttemptReason {
        /// The pod failed without saying why.
        Error,
        PodDeleted,
        AttemptDeadlineExceeded,
        HeartbeatTimeout,
        Stalled,
    }
}

impl From<AttemptReason> for String {
    fn from(reason: AttemptReason) -> Self {
        reason.as_str().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_written_as_declared() {
        assert_eq!(ConditionType::WorkersBlocked.as_str(), "WorkersBlocked");
        assert_eq!(Reason::RetriesExhausted.to_string(), "RetriesExhausted");
        assert_eq!(String::from(AttemptReason::HeartbeatTimeout), "HeartbeatTimeout");
    }
}
