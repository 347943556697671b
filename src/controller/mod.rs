//! Controllers and their wiring.

mod connection;
mod context;
mod fetch;
mod leader;
mod plan;
mod reconcile;
mod resolve;
mod restart;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use context::*;
pub use fetch::{AccountCache, Attempt, CachedFetch, MAX_IN_FLIGHT, Triggers};
use futures::future::{BoxFuture, Shared};
use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
pub use plan::{FORCE_DEBOUNCE, Validated, validate_spec};
pub use reconcile::{error_policy, reconcile};
pub use resolve::client_parts;
pub use restart::RESTARTED_AT_ANNOTATION;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, info, warn};

use crate::crd::{
    ClusterPipedreamConnection, ConnectedAccount, ConnectionKind, OWNER_ANNOTATION,
    PipedreamConnection, WATCH_LABEL,
};
use crate::identity::ConnectionId;
use crate::metrics::Metrics;
use crate::secret::MERGE_ANNOTATION_PREFIX;

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    /// Settings passed to reconciles.
    pub settings: Settings,
    /// Reconciles in flight per watched scope.
    pub concurrency: u16,
    /// Timeout of each Pipedream request.
    pub request_timeout: std::time::Duration,
    /// Pod name, for Event reporting and the leader-election identity.
    pub instance: Option<String>,
    /// Leader election (Lease name, duration), or none to always reconcile.
    pub leader_election: Option<(String, u64)>,
}

/// Keep only what the operator reads: managed fields and the last-applied annotation can be most of an object.
fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Whether a watch event concerns this shard (events without an object always do).
fn in_shard(shard: &crate::shard::Shard, e: &watcher::Event<ConnectedAccount>) -> bool {
    match e {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
            shard.owns(o.metadata.uid.as_deref().unwrap_or_default())
        }
        watcher::Event::Init | watcher::Event::InitDone => true,
    }
}

fn reflect<K>(
    api: Api<K>,
    on_delete: impl Fn(&K) + Send + 'static,
) -> (Store<K>, BoxFuture<'static, ()>)
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
    let fut = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .for_each(move |r| {
            match r {
                Ok(watcher::Event::Delete(obj)) => on_delete(&obj),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "connection watch failed"),
            }
            future::ready(())
        });
    (store, Box::pin(fut))
}

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

/// Run every controller until `shutdown` resolves. `ready` turns true once all caches have synced.
pub async fn run(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> Result<(), String> {
    let http = crate::pipedream::http_client(config.request_timeout)
        .map_err(|e| format!("building HTTP client: {e}"))?;
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let mut triggers = Triggers::default();
    let trigger_streams: Vec<_> = scopes
        .iter()
        .map(|s| triggers.subscribe(s.clone()))
        .collect();
    // The context exists before the connection watches (they report deletions to it).
    let ctx_cell: Arc<std::sync::OnceLock<std::sync::Weak<Context>>> = Arc::default();
    let forget = {
        let cell = ctx_cell.clone();
        move |id: ConnectionId| {
            if let Some(ctx) = cell.get().and_then(std::sync::Weak::upgrade) {
                ctx.fetcher.remove(&id);
                ctx.metrics.forget_connection(&id);
            }
        }
    };
    let mut background: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut connections = BTreeMap::new();
    for scope in &scopes {
        let api: Api<PipedreamConnection> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let forget = forget.clone();
        let (store, fut) = reflect(api, move |c: &PipedreamConnection| {
            forget(ConnectionId::namespaced(
                c.namespace().unwrap_or_default(),
                c.name_any(),
            ))
        });
        connections.insert(scope.clone(), store);
        background.push(fut);
    }
    let cluster_store = if config.settings.cluster_connections_disabled {
        // An empty, complete store: nothing cluster-scoped is watched.
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    } else {
        let forget = forget.clone();
        let (store, fut) = reflect(
            Api::<ClusterPipedreamConnection>::all(client.clone()),
            move |c: &ClusterPipedreamConnection| forget(ConnectionId::cluster(c.name_any())),
        );
        background.push(fut);
        store
    };

    let ctx = Context::new(
        client.clone(),
        config.settings.clone(),
        connections.clone(),
        cluster_store.clone(),
        http,
        metrics.clone(),
        Clock::System,
        config.instance.clone(),
        triggers,
    );
    let _ = ctx_cell.set(Arc::downgrade(&ctx));

    let mut controllers: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut ca_stores = Vec::new();
    for (scope, trigger) in scopes.iter().zip(trigger_streams) {
        let (cas, secrets, conns): (
            Api<ConnectedAccount>,
            Api<PartialObjectMeta<Secret>>,
            Api<PipedreamConnection>,
        ) = match scope {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
        let (store, writer) = reflector::store();
        let shard = config.settings.shard;
        let accounts = watcher(cas, watcher::Config::default().any_semantic())
            .default_backoff()
            // Another shard's accounts are never cached, triggered or reconciled here.
            .try_filter(move |e| future::ready(in_shard(&shard, e)))
            .modify(strip)
            .reflect(writer)
            .applied_objects();
        ca_stores.push(store.clone());
        let s1 = store.clone();
        let s2 = store.clone();
        let secret_events = watcher(
            secrets,
            watcher::Config::default().labels(&format!("{WATCH_LABEL}=true")),
        )
        .default_backoff()
        .touched_objects();
        let c = Controller::for_stream(accounts, store)
            // Metadata-only and label-selected: no cache of Secrets, and only ours cause events.
            .watches_stream(secret_events, |s| accounts_of_secret(&s))
            .watches(
                conns,
                watcher::Config::default(),
                move |conn: PipedreamConnection| {
                    referencing(
                        &s1,
                        ConnectionKind::PipedreamConnection,
                        conn.namespace(),
                        &conn.name_any(),
                    )
                },
            )
            .reconcile_on(UnboundedReceiverStream::new(trigger));
        let c = if config.settings.cluster_connections_disabled {
            c
        } else {
            c.watches(
                Api::<ClusterPipedreamConnection>::all(client.clone()),
                watcher::Config::default(),
                move |conn: ClusterPipedreamConnection| {
                    referencing(
                        &s2,
                        ConnectionKind::ClusterPipedreamConnection,
                        None,
                        &conn.name_any(),
                    )
                },
            )
        };
        let c = c
            .with_config(controller::Config::default().concurrency(config.concurrency))
            .graceful_shutdown_on(shutdown.clone());
        let ctx = ctx.clone();
        controllers.push(Box::pin(
            c.run(reconcile, error_policy, ctx).for_each(log_result),
        ));
    }
    *ctx.accounts.lock().unwrap_or_else(|p| p.into_inner()) = ca_stores.clone();

    // One shard writes connection status; the others only read connections.
    let connection_scopes: &[Option<String>] = if config.settings.shard.checks_connections() {
        &scopes
    } else {
        &[]
    };
    for scope in connection_scopes {
        let conns: Api<PipedreamConnection> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        controllers.push(Box::pin(
            Controller::new(conns, watcher::Config::default().any_semantic())
                .graceful_shutdown_on(shutdown.clone())
                .run(
                    connection::reconcile_namespaced,
                    connection::error_policy,
                    ctx.clone(),
                )
                .for_each(log_result),
        ));
    }
    if scopes == vec![None]
        && !config.settings.cluster_connections_disabled
        && config.settings.shard.checks_connections()
    {
        // Cluster connections are cluster-scoped: only a cluster-wide install checks them.
        controllers.push(Box::pin(
            Controller::new(
                Api::<ClusterPipedreamConnection>::all(client.clone()),
                watcher::Config::default().any_semantic(),
            )
            .graceful_shutdown_on(shutdown.clone())
            .run(
                connection::reconcile_cluster,
                connection::error_policy,
                ctx.clone(),
            )
            .for_each(log_result),
        ));
    }

    // Reflectors run in the background; controllers start only once the connection stores are complete, so the
    // first reconciles never see a half-filled store (and report a connection as missing).
    let reflectors: Vec<_> = background.into_iter().map(tokio::spawn).collect();
    let mut shutdown_wait = shutdown.clone();
    for s in connections.values() {
        tokio::select! {
            r = s.wait_until_ready() => { let _ = r; }
            _ = &mut shutdown_wait => return Ok(()),
        }
    }
    tokio::select! {
        r = cluster_store.wait_until_ready() => { let _ = r; }
        _ = &mut shutdown_wait => return Ok(()),
    }
    // Standbys are ready once the connection caches are warm; the leader additionally lists ConnectedAccounts.
    let mut leadership = None;
    if let Some((lease, duration)) = &config.leader_election {
        ready.store(true, Ordering::SeqCst);
        let identity = config
            .instance
            .clone()
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        match leader::acquire(
            client.clone(),
            &config.settings.operator_namespace,
            lease,
            &identity,
            *duration,
            shutdown.clone(),
        )
        .await?
        {
            Some(l) => leadership = Some(l),
            None => return Ok(()),
        }
    }
    metrics.set_leader(true);
    let readiness = {
        let ready = ready.clone();
        async move {
            for s in &ca_stores {
                let _ = s.wait_until_ready().await;
            }
            ready.store(true, Ordering::SeqCst);
            info!("caches synced; ready");
            future::pending::<()>().await;
        }
    };
    let outcome = {
        let lost = async {
            match leadership.as_mut() {
                Some(l) => l.lost().await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            _ = future::join_all(controllers) => Ok(()),
            _ = readiness => Ok(()),
            _ = lost => Err("lost the leader-election Lease; exiting so that only one replica writes".to_string()),
        }
    };
    metrics.set_leader(false);
    ready.store(false, Ordering::SeqCst);
    if let Some(l) = leadership
        && outcome.is_ok()
    {
        l.release().await;
    }
    for r in reflectors {
        r.abort();
    }
    outcome
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pipedream-secrets-operator".into())
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

fn referencing(
    store: &Store<ConnectedAccount>,
    kind: ConnectionKind,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<ConnectedAccount>> {
    store
        .state()
        .into_iter()
        .filter(|ca| {
            let (k, n) = match &ca.spec.connection_ref {
                Some(r) => (r.kind, r.name.as_str()),
                None => (ConnectionKind::ClusterPipedreamConnection, ""),
            };
            let by_default = ca.spec.connection_ref.is_none()
                && kind == ConnectionKind::ClusterPipedreamConnection;
            (by_default || (k == kind && n == name))
                && (namespace.is_none() || ca.namespace() == namespace)
        })
        .map(|ca| ObjectRef::from_obj(&*ca))
        .collect()
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
pub(crate) mod tests;
