//! What both controllers share to report: deterministic conditions (a transition time that moves only when the
//! status does), status applies, Events, and the count of failed passes per object.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::Context;
use super::resolve::kube_error_summary;
use crate::crd::MANAGER;

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

/// Server-side apply of `status` to object `name` (as the operator's one field manager). The API server answers
/// with the whole object, which a tenant can fill up to the 1.5 MiB object limit (labels, annotations): the answer
/// is read and dropped as it streams in, never parsed, so concurrent status writes cost no memory.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let request = kube::core::Request::new(api.resource_url())
        .patch_subresource(
            "status",
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .map_err(kube::Error::BuildRequest)?;
    let mut answer = api.clone().into_client().request_stream(request).await?;
    futures::io::copy(&mut answer, &mut futures::io::sink())
        .await
        .map_err(kube::Error::ReadEvents)?;
    Ok(())
}

/// Publish an Event about `obj`; a failure is logged, never fatal.
pub async fn publish(
    ctx: &Context,
    obj: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&ev, obj).await {
        warn!(error = %kube_error_summary(&e), "publishing an Event failed");
    }
}

/// The Event type for a Ready condition.
pub fn event_type(ready: bool) -> EventType {
    if ready {
        EventType::Normal
    } else {
        EventType::Warning
    }
}
