//! Connection status: `Ready` says whether the operator can authenticate to Pipedream with the connection.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::Context;
use super::resolve::{ConnectionSettingsSerialize, build};
use super::status::{ready_of, upsert_condition};
use crate::crd::{ClusterPipedreamConnection, ConnectionStatus, MANAGER, PipedreamConnection};
use crate::reason::{Error, Reason, SyncFailure};
use crate::schedule;

/// Re-check a healthy connection this often (the token is cached, so this costs a call about once an hour).
pub const RECHECK: Duration = Duration::from_secs(600);

/// Reconcile a ClusterPipedreamConnection.
pub async fn reconcile_cluster(
    conn: Arc<ClusterPipedreamConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let id = format!("ClusterPipedreamConnection/{}", conn.name_any());
    let api: Api<ClusterPipedreamConnection> = Api::all(ctx.client.clone());
    check(
        &*conn,
        &conn.spec,
        conn.status.as_ref(),
        id,
        None,
        api,
        &ctx,
    )
    .await
}

/// Reconcile a namespaced PipedreamConnection.
pub async fn reconcile_namespaced(
    conn: Arc<PipedreamConnection>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = conn.namespace().unwrap_or_default();
    let id = format!("PipedreamConnection/{ns}/{}", conn.name_any());
    let api: Api<PipedreamConnection> = Api::namespaced(ctx.client.clone(), &ns);
    check(
        &*conn,
        &conn.spec,
        conn.status.as_ref(),
        id,
        Some(&ns),
        api,
        &ctx,
    )
    .await
}

async fn check<K, S>(
    obj: &K,
    spec: &S,
    old: Option<&ConnectionStatus>,
    id: String,
    namespace: Option<&str>,
    api: Api<K>,
    ctx: &Context,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: ConnectionSettingsSerialize,
{
    let now = ctx.clock.now();
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let oauth = spec.auth().oauth.is_some();
    let outcome: Result<(), SyncFailure> = match build(ctx, id, spec, namespace) {
        Ok(client) => client.check_auth().await.map_err(SyncFailure::from),
        Err(f) => Err(f),
    };
    let old = old.cloned().unwrap_or_default();
    let mut st = old.clone();
    let generation = obj.meta().generation;
    st.observed_generation = generation;
    st.auth_mode = Some(if oauth { "oauth" } else { "apiKey" }.to_string());
    let (action, event) = match &outcome {
        Ok(()) => {
            ctx.clear_failures(&uid);
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
                "Ready",
                true,
                reason,
                msg,
                generation,
                now,
            );
            (
                Action::requeue(RECHECK),
                (EventType::Normal, reason.to_string(), msg.to_string()),
            )
        }
        Err(f) => {
            let attempt = ctx.record_failure(&uid);
            let delay = schedule::error_backoff(
                now,
                attempt - 1,
                None,
                f.retry_after,
                f.reason.needs_intervention(),
            );
            let reason = if f.reason == Reason::ConnectionNotReady {
                "ConnectionNotReady"
            } else {
                f.reason.as_str()
            };
            upsert_condition(
                &mut st.conditions,
                "Ready",
                false,
                reason,
                &f.message,
                generation,
                now,
            );
            (
                Action::requeue(delay),
                (EventType::Warning, reason.to_string(), f.message.clone()),
            )
        }
    };
    if st != old {
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": Wrapper(&st),
        });
        api.patch_status(
            &obj.meta().name.clone().unwrap_or_default(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(Error::WriteStatus)?;
    }
    if ready_of(&old.conditions) != ready_of(&st.conditions) {
        let ev = Event {
            type_: event.0,
            reason: event.1,
            note: Some(event.2),
            action: "CheckConnection".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %super::resolve::kube_error_summary(&e), "publishing an Event failed");
        }
    }
    Ok(action)
}

#[derive(Serialize)]
#[serde(transparent)]
struct Wrapper<'a>(&'a ConnectionStatus);

/// Backoff for Kubernetes API failures on connections.
pub fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let attempt = ctx.record_failure(&uid);
    let delay = schedule::error_backoff(ctx.clock.now(), attempt - 1, None, None, false);
    warn!(error = %err, attempt, "connection reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::tests::Harness;

    #[tokio::test]
    async fn connection_status_reports_authentication() {
        let h = Harness::new().await;
        let conn = h.ctx.cluster_connections.state()[0].clone();
        let action = reconcile_cluster(conn.clone(), h.ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::requeue(RECHECK));
        let reqs = h.api.take();
        let status = reqs
            .iter()
            .find(|r| {
                r.path
                    .ends_with("/clusterpipedreamconnections/default/status")
            })
            .expect("status patch");
        assert_eq!(
            status.body["status"]["conditions"][0]["reason"],
            "Authenticated"
        );
        assert_eq!(status.body["status"]["authMode"], "oauth");
        // Pipedream refuses the client: AuthFailed.
        h.pd.reset().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(wiremock::ResponseTemplate::new(401))
            .mount(&h.pd)
            .await;
        let h2 = Harness::new().await;
        h2.pd.reset().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(wiremock::ResponseTemplate::new(401))
            .mount(&h2.pd)
            .await;
        let conn2 = h2.ctx.cluster_connections.state()[0].clone();
        reconcile_cluster(conn2, h2.ctx.clone()).await.unwrap();
        let reqs = h2.api.take();
        let status = reqs.iter().find(|r| r.path.ends_with("/status")).unwrap();
        assert_eq!(
            status.body["status"]["conditions"][0]["reason"],
            "AuthFailed"
        );
        assert!(
            reqs.iter()
                .any(|r| r.method == "POST" && r.body["reason"] == "AuthFailed")
        );
    }
}
