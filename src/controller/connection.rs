//! Connection status: `Ready` says whether the operator can authenticate to Pipedream with the connection.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use super::outcome::{ready_changed, upsert_condition};
use super::resolve::{credentials_version, dispatcher};
use super::status::{apply_status, event_type, publish};
use super::{Context, ObjectState};
use crate::controller::Error;
use crate::crd::{
    ClusterPipedreamConnection, ConnectionSettings, ConnectionStatus, PipedreamConnection,
};
use crate::identity::ConnectionId;
use crate::reason::SyncFailure;
use crate::schedule::{self, FailureClass};

/// Re-check a healthy connection this often (the token is cached, so this costs a call about once an hour).
pub const RECHECK: Duration = Duration::from_secs(600);
/// How often the resourceVersion of a credentials Secret the watch does not cover is looked at while the
/// connection fails (one metadata GET per Secret), so a fixed Secret is used within seconds.
pub const CREDENTIALS_POLL: Duration = Duration::from_secs(5);
/// The same while the connection works: a rotation is picked up within a minute (or at the first 401).
pub const CREDENTIALS_POLL_HEALTHY: Duration = Duration::from_secs(60);

/// Ready reason of an OAuth connection Pipedream issued a token for.
pub const AUTHENTICATED: &str = "Authenticated";
/// Ready reason of an API-key connection whose key was read.
pub const CREDENTIALS_LOADED: &str = "CredentialsLoaded";

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

/// What a check knows before it talks to Pipedream.
struct Gathered {
    /// The credentials watch covers every Secret the connection reads (else they are polled).
    watched: bool,
    /// The credentials Secrets' resourceVersions.
    credentials_version: String,
    /// They changed since the last check.
    rotated: bool,
    /// The operator's memory of the connection.
    mem: ObjectState,
}

/// What a check came to: the status, when to check again, the Event of a Ready change, the failures in a row.
struct Checked {
    status: ConnectionStatus,
    delay: Duration,
    event: (EventType, &'static str, String),
    failures: u32,
}

/// Authenticate with the connection (the cached token, or a new one), note its credentials' version, and report:
/// gather, hold, authenticate, [`checked`] (pure), then one memory change, the status and the Event.
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
    let g = gather(ctx, spec, &id, &uid, &old).await;
    // Between checks (healthy: every RECHECK; failed: its retry time) nothing is sent to Pipedream, and its own
    // status write does not trigger another token request.
    if old.observed_generation == generation
        && !g.rotated
        && let Some(at) = g.mem.retry_at.filter(|t| now < *t)
    {
        let due = schedule::until(now, at);
        return Ok(Action::requeue(next_check(
            g.watched,
            g.mem.failures == 0,
            due,
        )));
    }
    if g.rotated {
        info!(connection = %id, "the connection's credentials Secret changed; checking it again");
    }
    let outcome = authenticate(ctx, &id, spec, g.rotated).await;
    let oauth = spec.auth().oauth.is_some();
    let c = checked(&old, generation, &g, oauth, &outcome, now);
    ctx.update_object(&uid, |o| {
        o.failures = c.failures;
        o.retry_at = Some(schedule::add(now, c.delay));
    });
    ctx.metrics.set_connection_ready(&id, outcome.is_ok());
    if c.status != old {
        let name = obj.meta().name.clone().unwrap_or_default();
        apply_status(&api, &name, &Wrapper(&c.status))
            .await
            .map_err(Error::WriteStatus)?;
    }
    if ready_changed(&old.conditions, &c.status.conditions) {
        let ((kind, reason, note), about) = (c.event, obj.object_ref(&()));
        publish(ctx, &about, kind, reason, "CheckConnection", note).await;
    }
    Ok(Action::requeue(next_check(
        g.watched,
        outcome.is_ok(),
        c.delay,
    )))
}

/// Whether the watch covers the connection's Secrets, their version, whether they changed, and the memory.
async fn gather(
    ctx: &Context,
    spec: &impl ConnectionSettings,
    id: &ConnectionId,
    uid: &str,
    old: &ConnectionStatus,
) -> Gathered {
    let watched = super::credentials::secrets_read(spec, id.namespace.as_deref())
        .iter()
        .all(|(ns, _)| ctx.credential_watch.covers(ns));
    // Rotated credentials: the Secrets' resourceVersions, compared with those the last check saw.
    let credentials_version = credentials_version(&ctx.client, spec, id.namespace.as_deref()).await;
    let rotated = old
        .credentials_version
        .as_ref()
        .is_some_and(|v| *v != credentials_version);
    Gathered {
        watched,
        credentials_version,
        rotated,
        mem: ctx.object(uid),
    }
}

/// Authenticate with the connection's client (its cached token, or a new one; new credentials when `rotated`).
async fn authenticate(
    ctx: &Context,
    id: &ConnectionId,
    spec: &impl ConnectionSettings,
    rotated: bool,
) -> Result<(), SyncFailure> {
    let d = dispatcher(ctx, id.clone(), spec).map_err(|e| e.for_connection())?;
    if rotated {
        d.client.credentials_changed();
    }
    d.client.check_auth().await.map_err(SyncFailure::from)
}

/// The status a check leads to, when to check again, its Event and the failures in a row. Pure.
fn checked(
    old: &ConnectionStatus,
    generation: Option<i64>,
    g: &Gathered,
    oauth: bool,
    outcome: &Result<(), SyncFailure>,
    now: jiff::Timestamp,
) -> Checked {
    let mut status = old.clone();
    status.observed_generation = generation;
    status.credentials_version = Some(g.credentials_version.clone());
    status.auth_mode = Some(if oauth { "oauth" } else { "apiKey" }.to_string());
    let (ready, reason, message, delay, failures) = match outcome {
        Ok(()) if oauth => (
            true,
            AUTHENTICATED,
            "Pipedream issued an OAuth token for this client",
            RECHECK,
            0,
        ),
        Ok(()) => (
            true,
            CREDENTIALS_LOADED,
            "the API key was read; Pipedream checks it on the first account fetch",
            RECHECK,
            0,
        ),
        Err(f) => {
            let attempt = g.mem.failures.saturating_add(1);
            let delay = schedule::after_failure(
                now,
                attempt - 1,
                None,
                Duration::ZERO,
                f.reason.class(),
                f.retry_after,
            )
            .delay;
            (false, f.reason.as_str(), f.message.as_str(), delay, attempt)
        }
    };
    upsert_condition(
        &mut status.conditions,
        crate::crd::READY,
        ready,
        reason,
        message,
        generation,
        now,
    );
    Checked {
        status,
        delay,
        event: (event_type(ready), reason, message.to_string()),
        failures,
    }
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
