//! Controllers and their wiring.

mod connection;
mod context;
mod leader;
mod reconcile;
mod resolve;
mod restart;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use context::*;
use futures::future::{BoxFuture, Shared};
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
pub use reconcile::{error_policy, reconcile, validate_spec};
pub use resolve::client_parts;
pub use restart::RESTARTED_AT_ANNOTATION;
use tracing::{debug, info, warn};

use crate::crd::{
    ClusterPipedreamConnection, ConnectedAccount, ConnectionKind, MANAGED_BY_LABEL, MANAGER,
    PipedreamConnection,
};
use crate::metrics::Metrics;

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

fn reflect<K>(api: Api<K>) -> (Store<K>, BoxFuture<'static, ()>)
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
    let fut = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .applied_objects()
    .for_each(|r| {
        if let Err(e) = r {
            warn!(error = %e, "connection watch failed");
        }
        future::ready(())
    });
    (store, Box::pin(fut))
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

    let mut background: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut connections = BTreeMap::new();
    for scope in &scopes {
        let api: Api<PipedreamConnection> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (store, fut) = reflect(api);
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
        let (store, fut) = reflect(Api::<ClusterPipedreamConnection>::all(client.clone()));
        background.push(fut);
        store
    };

    let ctx = Arc::new(Context::new(
        client.clone(),
        config.settings.clone(),
        connections.clone(),
        cluster_store.clone(),
        http,
        metrics,
        Clock::System,
        config.instance.clone(),
    ));

    let mut controllers: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut ca_stores = Vec::new();
    for scope in &scopes {
        let (cas, secrets, conns): (Api<ConnectedAccount>, Api<Secret>, Api<PipedreamConnection>) =
            match scope {
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
        let c = Controller::new(cas, watcher::Config::default().any_semantic());
        let store = c.store();
        ca_stores.push(store.clone());
        let s1 = store.clone();
        let s2 = store.clone();
        let c = c
            // Metadata-only, label-selected: no cache of unrelated Secrets.
            .owns(
                secrets,
                watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}")),
            )
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
            );
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

    for scope in &scopes {
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
    if scopes == vec![None] && !config.settings.cluster_connections_disabled {
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
