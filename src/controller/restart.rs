//! Opt-in rollout restarts of workloads that read the Secret as env vars: only when the data hash changed, at
//! most once per `minRestartInterval`.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use tracing::warn;

use super::Context;
use crate::crd::{ConnectedAccount, ConnectedAccountStatus, MANAGER, WorkloadKind};
use crate::schedule::{format_ts, parse_ts};

/// Pod-template annotation written on restart.
pub const RESTARTED_AT_ANNOTATION: &str = "pipedream-secrets.io/restartedAt";

/// A restart that happened.
#[derive(Debug, Clone)]
pub struct Restarted {
    /// When.
    pub at: Timestamp,
    /// Event text.
    pub note: String,
}

/// Restart the targets if the data changed since the last written hash and the debounce allows it.
pub async fn maybe_restart(
    ca: &ConnectedAccount,
    ctx: &Context,
    now: Timestamp,
    status: &ConnectedAccountStatus,
    min_interval: Duration,
    new_hash: Option<&str>,
) -> Option<Restarted> {
    if ca.spec.rollout_restart_targets.is_empty() {
        return None;
    }
    // First sync: pods that start now read the fresh Secret; no restart. A change skipped by the debounce stays
    // pending (restartedDataHash differs) and is restarted on a later pass.
    let seen = status
        .restarted_data_hash
        .as_deref()
        .or(status.data_hash.as_deref())?;
    if new_hash.is_none_or(|h| h == seen) {
        return None;
    }
    if let Some(last) = status.last_restart_time.as_deref().and_then(parse_ts) {
        let next_allowed = last
            .saturating_add(SignedDuration::try_from(min_interval).ok()?)
            .ok()?;
        if now < next_allowed {
            return None;
        }
    }
    let ns = ca.namespace().unwrap_or_default();
    let stamp = format_ts(now);
    let patch = serde_json::json!({
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT_ANNOTATION: stamp } } } }
    });
    let mut done = Vec::new();
    for t in &ca.spec.rollout_restart_targets {
        let client = ctx.client.clone();
        let res = match t.kind {
            WorkloadKind::Deployment => {
                patch_template::<Deployment>(client, &ns, &t.name, &patch).await
            }
            WorkloadKind::StatefulSet => {
                patch_template::<StatefulSet>(client, &ns, &t.name, &patch).await
            }
            WorkloadKind::DaemonSet => {
                patch_template::<DaemonSet>(client, &ns, &t.name, &patch).await
            }
        };
        match res {
            Ok(()) => done.push(format!("{:?}/{}", t.kind, t.name)),
            Err(e) => {
                warn!(kind = ?t.kind, name = %t.name, error = %super::resolve::kube_error_summary(&e), "rollout restart failed")
            }
        }
    }
    (!done.is_empty()).then(|| Restarted {
        at: now,
        note: format!(
            "restarted {} after the Secret data changed",
            done.join(", ")
        ),
    })
}

/// Merge-patch a workload's pod-template annotation.
async fn patch_template<K>(
    client: kube::Client,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client, ns)
        .patch(name, &PatchParams::apply(MANAGER), &Patch::Merge(patch))
        .await
        .map(|_| ())
}
