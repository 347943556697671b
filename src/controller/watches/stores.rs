//! The stores every pass reads (connections, cluster connections) and the Secret watch feeding the index.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt, future};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use super::{Scope, Task};
use crate::controller::context::{Context, Settings};
use crate::controller::targets::SecretIndex;
use crate::crd::{ClusterPipedreamConnection, PipedreamConnection, WATCH_LABEL};
use crate::identity::ConnectionId;

/// Keep only what the operator reads: managed fields and the last-applied annotation can be most of an object.
fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Keep of a connection's metadata nothing a tenant can fill: nothing reads a connection's labels or annotations,
/// and a namespaced PipedreamConnection is any namespace editor's to create (labels up to the 1.5 MiB object
/// limit).
pub(super) fn strip_connection<K: Resource>(obj: &mut K) {
    strip(obj);
    let meta = obj.meta_mut();
    meta.labels = None;
    meta.annotations = None;
}

/// A reflector of `api` (connections, kept as [`strip_connection`] leaves them), calling `on_delete` for each
/// deleted object.
fn reflect<K>(
    api: Api<K>,
    list: &watcher::Config,
    on_delete: impl Fn(&K) + Send + 'static,
) -> (Store<K>, Task)
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
    let fut = watcher(api, list.clone().any_semantic())
        .default_backoff()
        .modify(strip_connection)
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
pub(super) fn connection_stores(
    client: &Client,
    scopes: &[Scope],
    list: &watcher::Config,
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
        let (store, fut) = reflect(api, list, move |c: &PipedreamConnection| {
            let id = ConnectionId::namespaced(c.namespace().unwrap_or_default(), c.name_any());
            let uid = c.uid().unwrap_or_default();
            on_ctx(&|ctx| ctx.forget_connection(&id, &uid));
        });
        stores.insert(scope.clone(), store);
        background.push(fut);
    }
    stores
}

/// Cluster connections (an empty, complete store when they are disabled).
pub(super) fn cluster_store(
    client: &Client,
    settings: &Settings,
    list: &watcher::Config,
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
        list,
        move |c: &ClusterPipedreamConnection| {
            let id = ConnectionId::cluster(c.name_any());
            let uid = c.uid().unwrap_or_default();
            on_ctx(&|ctx| ctx.forget_connection(&id, &uid));
        },
    );
    background.push(fut);
    store
}

/// The label-selected, metadata-only Secret watch of each scope: it feeds the Secret index and maps each event
/// to the ConnectedAccounts it concerns.
pub(super) fn secret_watch(
    client: &Client,
    scopes: &[Scope],
    list: &watcher::Config,
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
            watcher(api, list.clone().labels(&format!("{WATCH_LABEL}=true")))
                .default_backoff()
                .map_ok(move |e| {
                    index.apply_event(&scope, &e);
                    e
                })
                .touched_objects()
                .boxed()
        })
        .collect()
}

/// The credentials watch of each scope: metadata of the Secrets the operator does not manage, without a store;
/// each event is looked up against the connections (see `credentials`), which keep the version of a Secret only
/// while a connection reads it. Nothing is kept of the others.
pub(super) fn credentials_watch(
    client: &Client,
    scopes: &[Scope],
    list: &watcher::Config,
    on_ctx: impl Fn(&dyn Fn(&Context)) + Clone + Send + Sync + 'static,
    background: &mut Vec<Task>,
) {
    use crate::controller::credentials::SecretEvent;
    for scope in scopes {
        let api: Api<PartialObjectMeta<Secret>> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let on_ctx = on_ctx.clone();
        let fut = watcher(api, list.clone().labels(&format!("{WATCH_LABEL}!=true")))
            .default_backoff()
            .for_each(move |r| {
                let seen = |m: &PartialObjectMeta<Secret>, e: SecretEvent| {
                    let (ns, name) = (m.namespace().unwrap_or_default(), m.name_any());
                    on_ctx(&|ctx| ctx.credentials_secret_event(&ns, &name, e.clone()));
                };
                let rv = |m: &PartialObjectMeta<Secret>| m.resource_version().unwrap_or_default();
                match r {
                    Ok(watcher::Event::Apply(m)) => seen(&m, SecretEvent::Changed(rv(&m))),
                    Ok(watcher::Event::InitApply(m)) => seen(&m, SecretEvent::Listed(rv(&m))),
                    Ok(watcher::Event::Delete(m)) => seen(&m, SecretEvent::Deleted),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "credentials Secret watch failed"),
                }
                future::ready(())
            });
        background.push(Box::pin(fut));
    }
}
