//! Conditions as both controllers report them: deterministic (a transition time that moves only when the status
//! does) and pure.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Set (or replace) condition `type_`, keeping `lastTransitionTime` when the status value is unchanged.
pub fn upsert_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status_str = if status { "True" } else { "False" };
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let transition = previous
        .map(|i| &conditions[i])
        .filter(|c| c.status == status_str)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(now.round(jiff::Unit::Second).unwrap_or(now)));
    let cond = Condition {
        type_: type_.to_string(),
        status: status_str.to_string(),
        reason: reason.to_string(),
        message: message.chars().take(1024).collect(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match previous {
        Some(i) => conditions[i] = cond,
        None => conditions.push(cond),
    }
}

/// The Ready condition's (status, reason), if any.
pub fn ready_of(conditions: &[Condition]) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == crate::crd::READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Whether Ready changed (status or reason) between two condition lists.
pub fn ready_changed(old: &[Condition], new: &[Condition]) -> bool {
    ready_of(old) != ready_of(new)
}

/// Whether condition `type_` is True.
pub fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}
