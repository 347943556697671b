//! Connection status: `Ready` says whether the operator can authenticate to Pipedream with the connection.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use super::Context;
use super::resolve::{credentials_version, dispatcher};
use super::status::{apply_status, publish, ready_changed, upsert_condition};
use crate::controller::Error;
use crate::crd::{
    ClusterPipedreamConnection, ConnectionSettings, ConnectionStatus, PipedreamConnection,
};
use crate::identity::ConnectionId;
use crate::reason::{Reason, SyncFailure};
use crate::schedule::{self, FailureClass};

/// Re-check a healthy connection this often (the token is cached, so this costs a call about once an hour).
pub const RECHECK: Duration = Duration::from_secs(600);
/// How often the resourceVersion of a credentials Secret the watch does not cover is looked at while the
/// connection fails (one metadata GET per Secret), so a fixed Secret is used within seconds.
pub const CREDENTIALS_POLL: Duration = Duration::from_secs(5);
/// The same while the connection works: a rotation is picked up within a minute (or at the first 401).
pub const CREDENTIALS_POLL_HEALTHY: Duration = Duration::from_secs(60);

/// When to check a connection again, `due` being its own recheck or retry time: a Secret the credentials watch
/// covers wakes the check when it changes; other Secrets are polled, often while failing, rarely while healthy.
fn next_check(watched: bool, healthy: bool, due: Duration) -> Duration {
    match (watched, healthy) {
        (true, _) => due,
        (false, true) => due.min(CREDENTIALS_POLL_HEALTHY),
        (false, false) => due.min(CREDENTIALS_POLL),
    }
}

/// Reconcile a ClusterPipedreamConnection (a `reconcile` span, as for ConnectedAccounts).
#[instrument(name = "reconcile", skip_all, fields(
    kind = "ClusterPipedreamConnection",
    object = conn.metadata.name.as_deref().unwrap_or_default(),
    pass = super::next_pass_id(),
))]
pub async fn reconcile_cluster(
    conn: Arc<ClusterPipedreamConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<ClusterPipedreamConnection> = Api::all(ctx.client.clone());
    let id = ConnectionId::cluster(conn.name_any());
    let out = check_connection(&*conn, &conn.spec, conn.status.as_ref(), id, api, &ctx).await;
    ctx.metrics
        .observe_reconcile("connection", out.is_ok(), started.elapsed());
    out
}

/// Reconcile a namespaced PipedreamConnection (a `reconcile` span, as for ConnectedAccounts).
#[instrument(name = "reconcile", skip_all, fields(
    kind = "PipedreamConnection",
    namespace = conn.metadata.namespace.as_deref().unwrap_or_default(),
    object = conn.metadata.name.as_deref().unwrap_or_default(),
    pass = super::next_pass_id(),
))]
pub async fn reconcile_namespaced(
    conn: Arc<PipedreamConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = conn.namespace().unwrap_or_default();
    let started = std::time::Instant::now();
    let api: Api<PipedreamConnection> = Api::namespaced(ctx.client.clone(), &ns);
    let id = ConnectionId::namespaced(ns, conn.name_any());
    let out = check_connection(&*conn, &conn.spec, conn.status.as_ref(), id, api, &ctx).await;
    ctx.metrics
        .observe_reconcile("connection", out.is_ok(), started.elapsed());
    out
}

/// Authenticate with the connection (the cached token, or a new one), note its credentials' version, and report.
async fn check_connection<K, S>(
    obj: &K,
    spec: &S,
    old: Option<&ConnectionStatus>,
    id: ConnectionId,
    api: Api<K>,
    ctx: &Context,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: ConnectionSettings,
{
    let now = ctx.clock.now();
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let old = old.cloned().unwrap_or_default();
    let generation = obj.meta().generation;
    let watched = super::credentials::secrets_read(spec, id.namespace.as_deref())
        .iter()
        .all(|(ns, _)| ctx.credential_watch.covers(ns));
    // Rotated credentials: the Secrets' resourceVersions, compared with those the last check saw.
    let credentials_version = credentials_version(&ctx.client, spec, id.namespace.as_deref()).await;
    let rotated = old
        .credentials_version
        .as_ref()
        .is_some_and(|v| *v != credentials_version);
    // Between checks (healthy: every RECHECK; failed: its retry time) nothing is sent to Pipedream, and its own
    // status write does not trigger another token request.
    let mem = ctx.object(&uid);
    if old.observed_generation == generation
        && !rotated
        && let Some(at) = mem.retry_at.filter(|t| now < *t)
    {
        return Ok(Action::requeue(next_check(
            watched,
            mem.failures == 0,
            schedule::until(now, at),
        )));
    }
    if rotated {
        info!(connection = %id, "the connection's credentials Secret changed; checking it again");
    }
    let oauth = spec.auth().oauth.is_some();
    let outcome: Result<(), SyncFailure> = match dispatcher(ctx, id.clone(), spec) {
        Ok(d) => {
            if rotated {
                d.client.credentials_changed();
            }
            d.client.check_auth().await.map_err(SyncFailure::from)
        }
        Err(f) => Err(f),
    };
    let now = ctx.clock.now();
    let mut st = old.clone();
    st.observed_generation = generation;
    st.credentials_version = Some(credentials_version);
    st.auth_mode = Some(if oauth { "oauth" } else { "apiKey" }.to_string());
    let (delay, event) = match &outcome {
        Ok(()) => {
            ctx.update_object(&uid, |o| {
                o.failures = 0;
                o.retry_at = Some(schedule::add(now, RECHECK));
            });
            let (reason, msg) = if oauth {
                (
                    "Authenticated",
                    "Pipedream issued an OAuth token for this client",
                )
            } else {
                (
                    "CredentialsLoaded",
                    "the API key was read; Pipedream checks it on the first account fetch",
                )
            };
            upsert_condition(
                &mut st.conditions,
                crate::crd::READY,
                true,
                reason,
                msg,
                generation,
                now,
            );
            (
                RECHECK,
                (EventType::Normal, reason.to_string(), msg.to_string()),
            )
        }
        Err(f) => {
            let attempt = ctx.record_failure(&uid);
            // A tenant's disallowed apiUrl is a spec problem of the connection itself.
            let reason =
                if f.reason == Reason::ConnectionNotReady && f.message.contains("spec.apiUrl") {
                    Reason::InvalidSpec
                } else {
                    f.reason
                };
            let class = match reason {
                Reason::RateLimited | Reason::UpstreamError => FailureClass::Transient,
                _ => FailureClass::Permanent,
            };
            let delay = schedule::after_failure(
                now,
                attempt - 1,
                None,
                Duration::ZERO,
                class,
                f.retry_after,
            )
            .delay;
            ctx.update_object(&uid, |o| o.retry_at = Some(schedule::add(now, delay)));
            upsert_condition(
                &mut st.conditions,
                crate::crd::READY,
                false,
                reason.as_str(),
                &f.message,
                generation,
                now,
            );
            (
                delay,
                (
                    EventType::Warning,
                    reason.as_str().to_string(),
                    f.message.clone(),
                ),
            )
        }
    };
    ctx.metrics.set_connection_ready(&id, outcome.is_ok());
    if st != old {
        let name = obj.meta().name.clone().unwrap_or_default();
        apply_status(&api, &name, &Wrapper(&st))
            .await
            .map_err(Error::WriteStatus)?;
    }
    if ready_changed(&old.conditions, &st.conditions) {
        publish(ctx, obj, event.0, &event.1, "CheckConnection", event.2).await;
    }
    Ok(Action::requeue(next_check(watched, outcome.is_ok(), delay)))
}

#[derive(Serialize)]
#[serde(transparent)]
struct Wrapper<'a>(&'a ConnectionStatus);

/// Backoff for Kubernetes API failures on connections.
pub fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let attempt = ctx.record_failure(&uid);
    let delay = schedule::after_failure(
        ctx.clock.now(),
        attempt - 1,
        None,
        Duration::ZERO,
        FailureClass::Transient,
        None,
    )
    .delay;
    warn!(error = %err, attempt, "connection reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests;
