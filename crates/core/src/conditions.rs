//! Conditions on any object the core writes a status for (jobs and schedules): set one, or hold
//! one while a cause lasts.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};

use super::time::time;
use nightshift_api::reasons::{ConditionType, Reason};

/// Sets a condition, keeping lastTransitionTime when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: bool,
    reason: Reason,
    message: String,
    now: Timestamp,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    match conditions.iter_mut().find(|c| c.type_ == type_.as_str()) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = time(now);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: time(now),
            observed_generation: generation,
        }),
    }
}

/// A condition that holds while a cause does: True with the cause's reason and message; once
/// the cause is gone, a True condition turns False with `cleared` (an absent one stays absent).
/// Returns whether it turned True now.
pub fn hold_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    cause: Option<(Reason, String)>,
    cleared: (Reason, &str),
    now: Timestamp,
    generation: Option<i64>,
) -> bool {
    let was = conditions.iter().any(|c| c.type_ == type_.as_str() && c.status == "True");
    let turned = !was && cause.is_some();
    match cause {
        Some((reason, message)) => set_condition(conditions, type_, true, reason, message, now, generation),
        None if was => set_condition(conditions, type_, false, cleared.0, cleared.1.into(), now, generation),
        None => {}
    }
    turned
}
