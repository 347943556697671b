//! What both controllers share to report: status applies and Events (the conditions they carry are built in
//! [`outcome`](super::outcome)).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::Context;
use super::resolve::kube_error_summary;
use crate::crd::MANAGER;

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
