//! Opt-in rollout restarts of workloads that read the Secret as env vars or through `subPath` mounts: only when
//! the data hash changed, at most once per `minRestartInterval`, but never held back past the moment the pods'
//! credentials need replacing (their expiry less the propagation time, which covers the rollout). When a restart
//! is held back, the pass says when it is due ([`Restart::At`]) and the object is reconciled again then.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tracing::warn;

use super::Context;
use super::subject::Subject;
use crate::crd::{ConnectedAccountStatus, MANAGER, RolloutRestartTarget, WorkloadKind};
use crate::schedule::{add, format_ts, parse_ts, sub};

/// Pod-template annotation written on restart.
pub const RESTARTED_AT_ANNOTATION: &str = "pipedream-secrets.io/restartedAt";

/// A restart whose patches all failed is tried again this much later.
pub const RESTART_RETRY: Duration = Duration::from_secs(10);

/// A restart that happened.
#[derive(Debug, Clone)]
pub struct Restarted {
    /// When.
    pub at: Timestamp,
    /// Event text.
    pub note: String,
}

/// Whether the rollout restart targets are to be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Nothing pending (no targets, first sync, or the pods started with this data).
    None,
    /// Now.
    Now,
    /// Pending, held back by `minRestartInterval` until this time.
    At(Timestamp),
}

/// When the targets of an object with `status` are restarted for data `new_hash` (what the Secret holds after
/// this pass): pending while the pods started with other data (`restartedDataHash`); due when
/// `minRestartInterval` has passed since the last restart, or earlier when the credentials the pods hold
/// (`restartedExpiresAt`) would otherwise expire less than `propagation` after it. Pure.
pub fn due(
    status: &ConnectedAccountStatus,
    has_targets: bool,
    new_hash: Option<&str>,
    now: Timestamp,
    min_interval: Duration,
    propagation: Duration,
) -> Restart {
    if !has_targets {
        return Restart::None;
    }
    // First sync: pods that start now read the fresh Secret; no restart.
    let Some(seen) = status
        .restarted_data_hash
        .as_deref()
        .or(status.data_hash.as_deref())
    else {
        return Restart::None;
    };
    if new_hash.is_none_or(|h| h == seen) {
        return Restart::None;
    }
    let allowed = status
        .last_restart_time
        .as_deref()
        .and_then(parse_ts)
        .map(|last| add(last, min_interval));
    // The expiry of what the pods hold: `Err` when it cannot be known (written by a version that did not record
    // it, or unreadable), and then the debounce yields.
    let pods_expiry: Result<Option<Timestamp>, ()> =
        match (&status.restarted_data_hash, &status.restarted_expires_at) {
            (Some(_), Some(e)) => parse_ts(e).map(Some).ok_or(()),
            // Credentials without expiry.
            (Some(_), None) if status.expires_at.is_none() => Ok(None),
            (Some(_), None) => Err(()),
            // Never restarted: the pods started with the data the Secret held before this write.
            (None, _) => status
                .expires_at
                .as_deref()
                .map(|e| parse_ts(e).ok_or(()))
                .transpose(),
        };
    let must_by = match pods_expiry {
        Ok(Some(e)) => Some(sub(e, propagation)),
        Ok(None) => None,
        Err(()) => Some(now),
    };
    let at = match (allowed, must_by) {
        (Some(a), Some(m)) => a.min(m),
        (Some(a), None) => a,
        (None, _) => now,
    };
    if at <= now {
        Restart::Now
    } else {
        Restart::At(at)
    }
}

/// What a pass did about restarts.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// A restart done now.
    pub restarted: Option<Restarted>,
    /// Reconcile again by then: a restart held back until then, or one that failed.
    pub wake: Option<Timestamp>,
}

/// Restart `subject`'s targets if [`due`] says so now.
pub async fn maybe_restart(
    subject: &Subject<'_>,
    ctx: &Context,
    now: Timestamp,
    min_interval: Duration,
    propagation: Duration,
    new_hash: Option<&str>,
) -> Outcome {
    let targets = &subject.spec.rollout_restart_targets;
    match due(
        &subject.status,
        !targets.is_empty(),
        new_hash,
        now,
        min_interval,
        propagation,
    ) {
        Restart::None => Outcome::default(),
        Restart::At(at) => Outcome {
            restarted: None,
            wake: Some(at),
        },
        Restart::Now => match restart(&subject.namespace, targets, ctx, now).await {
            Some(r) => Outcome {
                restarted: Some(r),
                wake: None,
            },
            None => Outcome {
                restarted: None,
                wake: Some(add(now, RESTART_RETRY)),
            },
        },
    }
}

/// Patch every target's pod template; `None` when no patch succeeded.
async fn restart(
    ns: &str,
    targets: &[RolloutRestartTarget],
    ctx: &Context,
    now: Timestamp,
) -> Option<Restarted> {
    let stamp = format_ts(now);
    let patch = serde_json::json!({
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT_ANNOTATION: stamp } } } }
    });
    let mut done = Vec::new();
    for t in targets {
        let client = ctx.client.clone();
        let res = match t.kind {
            WorkloadKind::Deployment => {
                patch_template::<Deployment>(client, ns, &t.name, &patch).await
            }
            WorkloadKind::StatefulSet => {
                patch_template::<StatefulSet>(client, ns, &t.name, &patch).await
            }
            WorkloadKind::DaemonSet => {
                patch_template::<DaemonSet>(client, ns, &t.name, &patch).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-11-22T09:00:00Z";
    const MIN: Duration = Duration::from_secs(300);
    const P: Duration = Duration::from_secs(100);

    fn restarted(last: &str, pods_expire: Option<&str>) -> ConnectedAccountStatus {
        ConnectedAccountStatus {
            data_hash: Some("sha256:new".into()),
            restarted_data_hash: Some("sha256:old".into()),
            last_restart_time: Some(last.into()),
            restarted_expires_at: pods_expire.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_is_restarted_without_targets_on_first_sync_or_for_the_data_pods_started_with() {
        let now = ts(NOW);
        let st = restarted("2026-11-22T08:00:00Z", Some("2026-11-22T10:00:00Z"));
        assert_eq!(
            due(&st, false, Some("sha256:x"), now, MIN, P),
            Restart::None
        );
        assert_eq!(
            due(
                &ConnectedAccountStatus::default(),
                true,
                Some("sha256:x"),
                now,
                MIN,
                P
            ),
            Restart::None
        );
        assert_eq!(
            due(&st, true, Some("sha256:old"), now, MIN, P),
            Restart::None
        );
        assert_eq!(due(&st, true, None, now, MIN, P), Restart::None);
    }

    #[test]
    fn the_debounce_holds_a_restart_back_while_the_pods_credentials_last() {
        let now = ts(NOW);
        // Restarted a minute ago; the pods' token expires in an hour: wait for the debounce.
        let st = restarted("2026-11-22T08:59:00Z", Some("2026-11-22T10:00:00Z"));
        assert_eq!(
            due(&st, true, Some("sha256:new"), now, MIN, P),
            Restart::At(ts("2026-11-22T09:04:00Z"))
        );
        // The debounce is over.
        let st = restarted("2026-11-22T08:50:00Z", Some("2026-11-22T10:00:00Z"));
        assert_eq!(
            due(&st, true, Some("sha256:new"), now, MIN, P),
            Restart::Now
        );
    }

    /// Issue 24: a 5 m debounce held a restart back past the expiry of the token the running pods held (a
    /// Deployment ran 106 s on an expired token).
    #[test]
    fn the_debounce_yields_to_the_expiry_of_the_credentials_the_pods_hold() {
        let now = ts(NOW);
        // Restarted a minute ago; the pods' token expires in 3 minutes: due 100 s before that.
        let st = restarted("2026-11-22T08:59:00Z", Some("2026-11-22T09:03:00Z"));
        assert_eq!(
            due(&st, true, Some("sha256:new"), now, MIN, P),
            Restart::At(ts("2026-11-22T09:01:20Z"))
        );
        // Already inside the propagation time of that expiry: now.
        let st = restarted("2026-11-22T08:59:00Z", Some("2026-11-22T09:01:00Z"));
        assert_eq!(
            due(&st, true, Some("sha256:new"), now, MIN, P),
            Restart::Now
        );
        // Expiry unknown (status written before restartedExpiresAt existed, or unreadable): now.
        let mut st = restarted("2026-11-22T08:59:00Z", None);
        st.expires_at = Some("2026-11-22T10:00:00Z".into());
        assert_eq!(
            due(&st, true, Some("sha256:new"), now, MIN, P),
            Restart::Now
        );
        st.restarted_expires_at = Some("garbage".into());
        assert_eq!(
            due(&st, true, Some("sha256:new"), now, MIN, P),
            Restart::Now
        );
    }

    #[test]
    fn credentials_without_expiry_are_held_back_by_the_debounce_only() {
        let now = ts(NOW);
        let st = restarted("2026-11-22T08:59:00Z", None);
        assert_eq!(
            due(&st, true, Some("sha256:new"), now, MIN, P),
            Restart::At(ts("2026-11-22T09:04:00Z"))
        );
    }

    #[test]
    fn the_second_write_restarts_pods_started_with_the_first_data() {
        // Never restarted: the pods started with the first data (status.expiresAt before this write).
        let now = ts(NOW);
        let st = ConnectedAccountStatus {
            data_hash: Some("sha256:first".into()),
            expires_at: Some("2026-11-22T09:30:00Z".into()),
            ..Default::default()
        };
        assert_eq!(
            due(&st, true, Some("sha256:second"), now, MIN, P),
            Restart::Now
        );
    }
}
