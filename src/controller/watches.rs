//! Wiring: the stores and watches every controller reads, the ConnectedAccount controllers (one per watched
//! scope), the connection status controllers, and leadership.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::{BoxFuture, Shared};
use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, info, warn};

use super::context::{Clock, Context, Settings};
use super::fetch::Triggers;
use super::targets::SecretIndex;
use super::{connection, leader, reconcile};
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

type Scope = Option<String>;
type Task = BoxFuture<'static, ()>;

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
    let scopes: Vec<Scope> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let mut triggers = Triggers::default();
    let trigger_streams: Vec<_> = scopes
        .iter()
        .map(|s| triggers.subscribe(s.clone()))
        .collect();
    // The context exists before the watches that report deletions to it.
    let ctx_cell: Arc<std::sync::OnceLock<std::sync::Weak<Context>>> = Arc::default();
    let on_ctx = {
        let cell = ctx_cell.clone();
        move |f: &dyn Fn(&Context)| {
            if let Some(ctx) = cell.get().and_then(std::sync::Weak::upgrade) {
                f(&ctx);
            }
        }
    };
    let mut background: Vec<Task> = Vec::new();
    let connections = connection_stores(&client, &scopes, on_ctx.clone(), &mut background);
    let cluster = cluster_store(&client, &config.settings, on_ctx.clone(), &mut background);
    let ctx = Context::new(
        client.clone(),
        config.settings.clone(),
        connections.clone(),
        cluster.clone(),
        http,
        metrics.clone(),
        Clock::System,
        config.instance.clone(),
        triggers,
    );
    let _ = ctx_cell.set(Arc::downgrade(&ctx));
    let secrets = secret_watch(&client, &scopes, ctx.secrets.clone());
    let mut controllers: Vec<Task> = Vec::new();
    let mut account_stores = Vec::new();
    for ((scope, trigger), secret_events) in scopes.iter().zip(trigger_streams).zip(secrets) {
        let (store, c) =
            account_controller(&ctx, &config, scope, trigger, secret_events, &shutdown);
        account_stores.push(store);
        controllers.push(c);
    }
    *ctx.accounts.lock().unwrap_or_else(|p| p.into_inner()) = account_stores.clone();
    controllers.extend(connection_controllers(&ctx, &config, &scopes, &shutdown));

    // Reflectors run in the background; controllers start only once the connection stores and the Secret index
    // are complete, so the first passes neither report a connection as missing nor read every Secret.
    let reflectors: Vec<_> = background.into_iter().map(tokio::spawn).collect();
    let caches_ready = async {
        for s in connections.values() {
            let _ = s.wait_until_ready().await;
        }
        let _ = cluster.wait_until_ready().await;
    };
    tokio::select! {
        _ = caches_ready => {}
        _ = shutdown.clone() => return Ok(()),
    }
    let mut leadership = None;
    if let Some((lease, duration)) = &config.leader_election {
        // Standbys are ready once the connection caches are warm; the leader additionally lists ConnectedAccounts.
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
        let (ready, index) = (ready.clone(), ctx.secrets.clone());
        async move {
            for s in &account_stores {
                let _ = s.wait_until_ready().await;
            }
            while !index.is_ready() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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

/// Keep only what the operator reads: managed fields and the last-applied annotation can be most of an object.
fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A reflector of `api`, calling `on_delete` for each deleted object.
fn reflect<K>(api: Api<K>, on_delete: impl Fn(&K) + Send + 'static) -> (Store<K>, Task)
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

/// Namespaced connections, one store per scope; a deleted one's dispatcher and metrics go with it.
fn connection_stores(
    client: &Client,
    scopes: &[Scope],
    on_ctx: impl Fn(&dyn Fn(&Context)) + Clone + Send + Sync + 'static,
    background: &mut Vec<Task>,
) -> BTreeMap<Scope, Store<PipedreamConnection>> {
    let mut stores = BTreeMap::new();
    for scope in scopes {
        let api: Api<PipedreamConnection> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let on_ctx = on_ctx.clone();
        let (store, fut) = reflect(api, move |c: &PipedreamConnection| {
            let id = ConnectionId::namespaced(c.namespace().unwrap_or_default(), c.name_any());
            on_ctx(&|ctx| ctx.forget_connection(&id));
        });
        stores.insert(scope.clone(), store);
        background.push(fut);
    }
    stores
}

/// Cluster connections (an empty, complete store when they are disabled).
fn cluster_store(
    client: &Client,
    settings: &Settings,
    on_ctx: impl Fn(&dyn Fn(&Context)) + Send + Sync + 'static,
    background: &mut Vec<Task>,
) -> Store<ClusterPipedreamConnection> {
    if settings.cluster_connections_disabled {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        return store;
    }
    let (store, fut) = reflect(
        Api::<ClusterPipedreamConnection>::all(client.clone()),
        move |c: &ClusterPipedreamConnection| {
            let id = ConnectionId::cluster(c.name_any());
            on_ctx(&|ctx| ctx.forget_connection(&id));
        },
    );
    background.push(fut);
    store
}

/// The label-selected, metadata-only Secret watch of each scope: it feeds the Secret index and maps each event
/// to the ConnectedAccounts it concerns.
fn secret_watch(
    client: &Client,
    scopes: &[Scope],
    index: SecretIndex,
) -> Vec<futures::stream::BoxStream<'static, Result<PartialObjectMeta<Secret>, watcher::Error>>> {
    scopes
        .iter()
        .map(|scope| {
            let api: Api<PartialObjectMeta<Secret>> = match scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (index, scope) = (index.clone(), scope.clone());
            watcher(
                api,
                watcher::Config::default().labels(&format!("{WATCH_LABEL}=true")),
            )
            .default_backoff()
            .map_ok(move |e| {
                index.apply(&scope, &e);
                e
            })
            .touched_objects()
            .boxed()
        })
        .collect()
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

/// The ConnectedAccount controller of one scope: its own objects (this shard's), the Secrets they write, the
/// connections they name, and the dispatchers' "answer is in" triggers. A deleted object is forgotten at once.
fn account_controller(
    ctx: &Arc<Context>,
    config: &RunConfig,
    scope: &Scope,
    trigger: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<ConnectedAccount>>,
    secret_events: futures::stream::BoxStream<
        'static,
        Result<PartialObjectMeta<Secret>, watcher::Error>,
    >,
    shutdown: &Shared<BoxFuture<'static, ()>>,
) -> (Store<ConnectedAccount>, Task) {
    let client = ctx.client.clone();
    let (cas, conns): (Api<ConnectedAccount>, Api<PipedreamConnection>) = match scope {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (store, writer) = reflector::store();
    let shard = config.settings.shard;
    let forget = Arc::downgrade(ctx);
    let accounts = watcher(cas, watcher::Config::default().any_semantic())
        .default_backoff()
        // Another shard's accounts are never cached, triggered or reconciled here.
        .try_filter(move |e| future::ready(in_shard(&shard, e)))
        .map_ok(move |e| {
            if let (watcher::Event::Delete(ca), Some(ctx)) = (&e, forget.upgrade()) {
                ctx.forget(
                    ca.metadata.uid.as_deref().unwrap_or_default(),
                    &ca.namespace().unwrap_or_default(),
                    &ca.name_any(),
                );
            }
            e
        })
        .modify(strip)
        .reflect(writer)
        .applied_objects();
    let (s1, s2) = (store.clone(), store.clone());
    let c = Controller::for_stream(accounts, store.clone())
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
            Api::<ClusterPipedreamConnection>::all(client),
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
    let task = c
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(log_result);
    (store, Box::pin(task))
}

/// The connection status controllers: shard 0 only (the others only read connections); cluster connections
/// only in a cluster-wide install.
fn connection_controllers(
    ctx: &Arc<Context>,
    config: &RunConfig,
    scopes: &[Scope],
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
        out.push(Box::pin(
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
    if scopes == [None] && !config.settings.cluster_connections_disabled {
        out.push(Box::pin(
            Controller::new(
                Api::<ClusterPipedreamConnection>::all(ctx.client.clone()),
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
    out
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

/// The ConnectedAccounts of `store` that use connection `kind`/`namespace`/`name` (by name, or by default).
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
