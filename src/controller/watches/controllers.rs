//! The controllers: one ConnectedAccount controller per watched scope, and the connection status controllers.

use std::sync::Arc;

use futures::future::{BoxFuture, Shared};
use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{WatchEvent, WatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, warn};

use super::stores::strip_connection;
use super::{RunConfig, Scope, Task};
use crate::controller::cached::CachedAccount;
use crate::controller::context::Context;
use crate::controller::{connection, reconcile};
use crate::crd::{
    ClusterPipedreamConnection, ConnectedAccount, ConnectionKind, ConnectionRef, OWNER_ANNOTATION,
    PipedreamConnection,
};
use crate::secret::MERGE_ANNOTATION_PREFIX;

/// Whether a watch event concerns this shard (events without an object always do).
fn in_shard(shard: &crate::shard::Shard, e: &watcher::Event<CachedAccount>) -> bool {
    match e {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
            shard.owns(o.uid().as_deref().unwrap_or_default())
        }
        watcher::Event::Init | watcher::Event::InitDone => true,
    }
}

/// Objects listed in pages of this many where the API server cannot stream the list.
const LIST_PAGE: u32 = 25;

/// How every watch takes its initial list. Streamed where the API server can (WatchList, on by default since
/// Kubernetes 1.32): objects then arrive one at a time, and each is dropped (another shard's) or cut down
/// ([`CachedAccount`], [`strip_connection`]) before the next is parsed, where a list page is parsed whole first
/// (500 of the largest ConnectedAccounts, PipedreamConnections or Secrets' metadata a namespace editor can create
/// are most of a GiB). Elsewhere in small pages.
pub(super) async fn list_config(client: &kube::Client, scopes: &[Scope]) -> watcher::Config {
    let api: Api<ConnectedAccount> = match scopes.first().cloned().flatten() {
        Some(ns) => Api::namespaced(client.clone(), &ns),
        None => Api::all(client.clone()),
    };
    // A server that streams lists ends the initial events with a marked bookmark; one that does not either refuses
    // the parameter or ignores it and never sends the mark. The selector matches nothing, so the mark comes at once.
    let probe = WatchParams::streaming_lists()
        .labels("pipedream-secrets.io/list-probe=none")
        .timeout(5);
    let streams = match api.watch(&probe, "0").await {
        Ok(events) => tokio::time::timeout(std::time::Duration::from_secs(6), async {
            let mut events = std::pin::pin!(events);
            while let Some(Ok(e)) = events.next().await {
                if let WatchEvent::Bookmark(b) = e
                    && b.metadata
                        .annotations
                        .contains_key("k8s.io/initial-events-end")
                {
                    return Ok(());
                }
            }
            Err("no end-of-initial-events bookmark".to_string())
        })
        .await
        .unwrap_or_else(|_| Err("no end-of-initial-events bookmark in 6 s".into())),
        Err(e) => Err(e.to_string()),
    };
    match streams {
        Ok(()) => watcher::Config::default().streaming_lists(),
        Err(e) => {
            warn!(error = %e, page = LIST_PAGE, "the API server does not stream lists; listing in pages");
            watcher::Config::default().page_size(LIST_PAGE)
        }
    }
}

/// The ConnectedAccount controller of one scope: its own objects (this shard's), the Secrets they write, the
/// connections they name, and the dispatchers' "answer is in" triggers. A deleted object is forgotten at once.
/// Long because it lists every source that triggers a pass in one place (objects, Secrets, connections, fetch
/// answers), each with the mapping back to the objects it concerns.
pub(super) fn account_controller(
    ctx: &Arc<Context>,
    config: &RunConfig,
    scope: &Scope,
    list: watcher::Config,
    trigger: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<ConnectedAccount>>,
    secret_events: futures::stream::BoxStream<
        'static,
        Result<PartialObjectMeta<Secret>, watcher::Error>,
    >,
    shutdown: &Shared<BoxFuture<'static, ()>>,
) -> (Store<CachedAccount>, Task) {
    let client = ctx.client.clone();
    let (cas, conns): (Api<CachedAccount>, Api<PipedreamConnection>) = match scope {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let conns = watcher(conns, list.clone())
        .default_backoff()
        .modify(strip_connection)
        .touched_objects();
    let (store, writer) = reflector::store();
    let shard = config.settings.shard;
    let forget = Arc::downgrade(ctx);
    let accounts = watcher(cas, list.clone())
        .default_backoff()
        // The watcher has read the resourceVersion: from here on the object is keyed by namespace and name.
        .map_ok(|e| e.modify(CachedAccount::settle))
        // Another shard's accounts are never cached, triggered or reconciled here.
        .try_filter(move |e| future::ready(in_shard(&shard, e)))
        .map_ok(move |e| {
            if let (watcher::Event::Delete(ca), Some(ctx)) = (&e, forget.upgrade()) {
                ctx.forget(ca.uid().as_deref().unwrap_or_default());
            }
            e
        })
        .reflect(writer)
        .applied_objects();
    let (s1, s2) = (store.clone(), store.clone());
    let default_connection = config.settings.default_connection.clone();
    let c = Controller::for_stream(accounts, store.clone())
        .watches_stream(secret_events, |s| {
            accounts_of_secret(&s)
                .into_iter()
                .map(|r| r.into_kind_unchecked(()))
        })
        .watches_stream(conns, move |conn: PipedreamConnection| {
            referencing(
                &s1,
                ConnectionKind::PipedreamConnection,
                conn.namespace(),
                &conn.name_any(),
                None,
            )
        })
        .reconcile_on(UnboundedReceiverStream::new(trigger).map(|r| r.into_kind_unchecked(())));
    let c = if config.settings.cluster_connections_disabled {
        c
    } else {
        let cluster = watcher(Api::<ClusterPipedreamConnection>::all(client), list)
            .default_backoff()
            .modify(strip_connection)
            .touched_objects();
        c.watches_stream(cluster, move |conn: ClusterPipedreamConnection| {
            referencing(
                &s2,
                ConnectionKind::ClusterPipedreamConnection,
                None,
                &conn.name_any(),
                default_connection.as_deref(),
            )
        })
    };
    let task = c
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown.clone())
        .run(
            reconcile::reconcile_cached,
            reconcile::error_policy_cached,
            ctx.clone(),
        )
        .for_each(log_result);
    (store, Box::pin(task))
}

/// The connection status controllers: shard 0 only (the others only read connections); cluster connections
/// only in a cluster-wide install.
pub(super) fn connection_controllers(
    ctx: &Arc<Context>,
    config: &RunConfig,
    scopes: &[Scope],
    list: &watcher::Config,
    shutdown: &Shared<BoxFuture<'static, ()>>,
) -> Vec<Task> {
    let mut out: Vec<Task> = Vec::new();
    if !config.settings.shard.checks_connections() {
        return out;
    }
    for scope in scopes {
        let conns: Api<PipedreamConnection> = match scope {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        };
        // A change to a Secret a connection reads wakes its check (see `credentials`).
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        ctx.credential_watch.wake_namespaced_via(scope.clone(), tx);
        out.push(Box::pin(
            stripped_controller(conns, list)
                .reconcile_on(UnboundedReceiverStream::new(rx))
                .graceful_shutdown_on(shutdown.clone())
                .run(
                    connection::reconcile_namespaced,
                    connection::error_policy,
                    ctx.clone(),
                )
                .for_each(log_result),
        ));
    }
    if scopes == [None] && !config.settings.cluster_connections_disabled {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        ctx.credential_watch.wake_cluster_via(tx);
        out.push(Box::pin(
            stripped_controller(
                Api::<ClusterPipedreamConnection>::all(ctx.client.clone()),
                list,
            )
            .reconcile_on(UnboundedReceiverStream::new(rx))
            .graceful_shutdown_on(shutdown.clone())
            .run(
                connection::reconcile_cluster,
                connection::error_policy,
                ctx.clone(),
            )
            .for_each(log_result),
        ));
    }
    out
}

/// A controller of connections whose cache keeps them as [`strip_connection`] leaves them (`Controller::new` would
/// keep each whole, labels and managed fields included).
fn stripped_controller<K>(api: Api<K>, list: &watcher::Config) -> Controller<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let objects = watcher(api, list.clone().any_semantic())
        .default_backoff()
        .modify(strip_connection)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(objects, store)
        .with_config(controller::Config::default().concurrency(CONNECTION_CONCURRENCY))
}

/// Connection checks in flight at once: a tenant's hundred connections must not put a hundred status writes (each
/// of an object up to 1.5 MiB) before the API server at once.
const CONNECTION_CONCURRENCY: u16 = 4;

/// The ConnectedAccounts a Secret event concerns: named by its owner annotation, its Merge annotations, or its
/// controller ownerReference. Works for Secrets without an ownerReference (Retain, Orphan, Merge).
pub fn accounts_of_secret(s: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<ConnectedAccount>> {
    let ns = s.namespace().unwrap_or_default();
    let mut out: Vec<ObjectRef<ConnectedAccount>> = Vec::new();
    for (k, v) in s.annotations() {
        if k == OWNER_ANNOTATION {
            if let Some((owner_ns, name)) = v.split_once('/')
                && owner_ns == ns
            {
                out.push(ObjectRef::new(name).within(&ns));
            }
        } else if k.starts_with(MERGE_ANNOTATION_PREFIX) {
            out.push(ObjectRef::new(v).within(&ns));
        }
    }
    for o in s.owner_references() {
        if o.kind == "ConnectedAccount" {
            out.push(ObjectRef::new(&o.name).within(&ns));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup();
    out
}

fn log_result<K: kube::Resource, E: std::error::Error, Q: std::error::Error>(
    res: Result<(ObjectRef<K>, kube::runtime::controller::Action), controller::Error<E, Q>>,
) -> future::Ready<()> {
    match res {
        Ok((obj, _)) => debug!(object = %obj, "reconciled"),
        Err(controller::Error::ObjectNotFound(obj)) => debug!(object = %obj, "object gone"),
        Err(e) => warn!(error = %e, "controller error"),
    }
    future::ready(())
}

/// The ConnectedAccounts of `store` that use connection `kind`/`namespace`/`name`: by name, or (a cluster
/// connection named like `--default-connection`) by default.
fn referencing(
    store: &Store<CachedAccount>,
    kind: ConnectionKind,
    namespace: Option<String>,
    name: &str,
    default_connection: Option<&str>,
) -> Vec<ObjectRef<CachedAccount>> {
    store
        .state()
        .into_iter()
        .filter(|ca| {
            uses(
                ca.connection_ref(),
                ca.meta().namespace.as_deref(),
                (kind, namespace.as_deref(), name),
                default_connection,
            )
        })
        .map(|ca| ObjectRef::from_obj(&*ca))
        .collect()
}

/// Whether an account in namespace `ns` naming `connection_ref` uses the connection `kind`/`namespace`/`name`.
fn uses(
    connection_ref: Option<&ConnectionRef>,
    ns: Option<&str>,
    (kind, namespace, name): (ConnectionKind, Option<&str>, &str),
    default_connection: Option<&str>,
) -> bool {
    let named = match connection_ref {
        Some(r) => r.kind == kind && r.name == name,
        None => {
            kind == ConnectionKind::ClusterPipedreamConnection && default_connection == Some(name)
        }
    };
    named && namespace.is_none_or(|want| ns == Some(want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ca(spec: serde_json::Value) -> ConnectedAccount {
        serde_json::from_value(
            json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "gh", "namespace": "team-a"}, "spec": spec}),
        )
        .unwrap()
    }

    fn uses_(
        ca: &ConnectedAccount,
        conn: (ConnectionKind, Option<&str>, &str),
        default_connection: Option<&str>,
    ) -> bool {
        let cached = CachedAccount::pack(ca.clone()).unwrap();
        uses(
            cached.connection_ref(),
            cached.meta().namespace.as_deref(),
            conn,
            default_connection,
        )
    }

    /// Issue 17 (10): every ClusterPipedreamConnection event re-reconciled every ConnectedAccount without a
    /// connectionRef, whichever connection changed.
    #[test]
    fn a_connection_event_maps_only_to_the_accounts_that_use_it() {
        let cluster = ConnectionKind::ClusterPipedreamConnection;
        let by_default = ca(json!({"accountId": "apn_A1"}));
        assert!(uses_(
            &by_default,
            (cluster, None, "default"),
            Some("default")
        ));
        assert!(!uses_(
            &by_default,
            (cluster, None, "other"),
            Some("default")
        ));
        assert!(!uses_(&by_default, (cluster, None, "default"), None));
        let named = ca(json!({"accountId": "apn_A1",
            "connectionRef": {"kind": "PipedreamConnection", "name": "pd"}}));
        let ns = ConnectionKind::PipedreamConnection;
        assert!(uses_(&named, (ns, Some("team-a"), "pd"), None));
        assert!(!uses_(&named, (ns, Some("team-b"), "pd"), None));
        assert!(!uses_(&named, (cluster, None, "pd"), Some("pd")));
    }
}
