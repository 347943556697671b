//! Which connection a ConnectedAccount uses, whether it may, and the connection's dispatcher.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource};

use super::Context;
use super::fetch::Dispatcher;
use super::hosts::HostRefused;
use crate::access::{self, Admission};
use crate::controller::Error;
use crate::crd::{
    AccessRule, ClusterPipedreamConnection, ConnectionKind, ConnectionRef, ConnectionSettings,
    PipedreamConnection, SecretKeyRef,
};
use crate::identity::{ConnectionId, ConnectionKey};
use crate::pipedream::{
    ApiMode, AuthMaterial, ClientSettings, CredentialsError, MaterialLoader, PipedreamClient,
    SecretString,
};
use crate::reason::{Reason, SyncFailure};
use crate::rules::plan::Usable;

/// A usable connection.
pub struct Resolved {
    /// Its client and fetch queue.
    pub dispatcher: Arc<Dispatcher>,
    /// What a pass's plan needs of it: the narrowing the fetched account must satisfy, and its name.
    pub usable: Usable,
    /// The connection's resourceVersion (a failure caused by the connection is retried when it changes).
    pub version: Option<String>,
}

impl Resolved {
    /// The connection's identity and fingerprint: every cache is keyed by it.
    pub fn key(&self) -> &Arc<ConnectionKey> {
        &self.dispatcher.key
    }
}

/// A connection that cannot be used: why, and its resourceVersion when it exists (a failure it caused is retried
/// when it changes).
pub struct Unusable {
    /// Why.
    pub failure: SyncFailure,
    /// The connection's resourceVersion.
    pub version: Option<String>,
}

fn unusable(failure: SyncFailure, version: Option<String>) -> Unusable {
    Unusable { failure, version }
}

/// Outcome of resolution: a Kubernetes API failure aborts the reconcile; an unusable connection goes to status.
pub type ResolveResult = Result<Result<Resolved, Unusable>, Error>;

/// The connection a ConnectedAccount in namespace `ns` names in `spec.connectionRef` (or the default one).
pub fn connection_of(
    ns: &str,
    named: Option<&ConnectionRef>,
    ctx: &Context,
) -> Result<ConnectionId, SyncFailure> {
    match named {
        Some(r) if r.kind == ConnectionKind::PipedreamConnection => {
            Ok(ConnectionId::namespaced(ns, &r.name))
        }
        Some(r) => Ok(ConnectionId::cluster(&r.name)),
        None => match &ctx.settings.default_connection {
            Some(n) => Ok(ConnectionId::cluster(n)),
            None => Err(SyncFailure::new(
                Reason::ConnectionNotFound,
                "spec.connectionRef is not set and the operator has no --default-connection",
            )),
        },
    }
}

/// The resourceVersion of the connection a ConnectedAccount names, from the local stores.
pub fn connection_version(
    ns: &str,
    named: Option<&ConnectionRef>,
    ctx: &Context,
) -> Option<String> {
    let id = connection_of(ns, named, ctx).ok()?;
    match &id.namespace {
        Some(ns) => ctx
            .connections
            .get(&Some(ns.clone()))
            .or_else(|| ctx.connections.get(&None))?
            .get(&ObjectRef::new(&id.name).within(ns))?
            .meta()
            .resource_version
            .clone(),
        None => ctx
            .cluster_connections
            .get(&ObjectRef::new(&id.name))?
            .meta()
            .resource_version
            .clone(),
    }
}

/// Resolve `spec.connectionRef` (or the default connection) of a ConnectedAccount in namespace `ns`.
pub async fn resolve(ns: &str, named: Option<&ConnectionRef>, ctx: &Context) -> ResolveResult {
    let ns = ns.to_string();
    let id = match connection_of(&ns, named, ctx) {
        Ok(id) => id,
        Err(f) => return Ok(Err(unusable(f, None))),
    };
    let not_found = |m: String| {
        Ok(Err(unusable(
            SyncFailure::new(Reason::ConnectionNotFound, m),
            None,
        )))
    };
    let name = id.name.clone();
    // The connection found, and which accounts it admits for this namespace: asked before its dispatcher is made.
    let (found, admission) = match id.kind {
        ConnectionKind::PipedreamConnection => {
            let store = ctx
                .connections
                .get(&Some(ns.clone()))
                .or_else(|| ctx.connections.get(&None));
            let Some(conn) = store.and_then(|s| s.get(&ObjectRef::new(&name).within(&ns))) else {
                return not_found(format!(
                    "spec.connectionRef: PipedreamConnection {ns}/{name} not found"
                ));
            };
            (Found::Namespaced(conn), Admission::Unrestricted)
        }
        ConnectionKind::ClusterPipedreamConnection if ctx.settings.cluster_connections_disabled => {
            return not_found(format!(
                "ClusterPipedreamConnection {name}: this installation is namespace-scoped and does not use cluster connections; reference a PipedreamConnection in spec.connectionRef"
            ));
        }
        ConnectionKind::ClusterPipedreamConnection => {
            let Some(conn) = ctx.cluster_connections.get(&ObjectRef::new(&name)) else {
                return not_found(format!(
                    "ClusterPipedreamConnection {name} not found (spec.connectionRef or --default-connection)"
                ));
            };
            let admission = admit(ctx, &conn, &ns).await?;
            if admission == Admission::Denied {
                let m = format!(
                    "namespace {ns} is not admitted by the access rules of ClusterPipedreamConnection {name}"
                );
                let version = conn.meta().resource_version.clone();
                return Ok(Err(unusable(
                    SyncFailure::new(Reason::AccessDenied, m),
                    version,
                )));
            }
            (Found::Cluster(conn), admission)
        }
    };
    let (spec, version): (&dyn ConnectionSettings, _) = match &found {
        Found::Namespaced(c) => (&c.spec, c.meta().resource_version.clone()),
        Found::Cluster(c) => (&c.spec, c.meta().resource_version.clone()),
    };
    Ok(usable(ctx, id, spec, admission, version))
}

/// A connection found in the stores.
enum Found {
    Namespaced(Arc<PipedreamConnection>),
    Cluster(Arc<ClusterPipedreamConnection>),
}

/// Whether namespace `ns` may use cluster connection `conn` (its labels read only for selector rules).
async fn admit(
    ctx: &Context,
    conn: &ClusterPipedreamConnection,
    ns: &str,
) -> Result<Admission, Error> {
    let labels = if access::needs_namespace_labels(&conn.spec.access) {
        ctx.namespace_labels(ns)
            .await
            .map_err(Error::ReadNamespace)?
    } else {
        None
    };
    Ok(access::admit_namespace(
        &conn.spec.access,
        ns,
        |rule| selects(rule, labels.as_ref()),
        &ctx.settings.operator_namespace,
    ))
}

/// A found connection with its dispatcher, or why none can be made.
fn usable(
    ctx: &Context,
    id: ConnectionId,
    spec: &(impl ConnectionSettings + ?Sized),
    admission: Admission,
    version: Option<String>,
) -> Result<Resolved, Unusable> {
    match dispatcher(ctx, id, spec) {
        Ok(dispatcher) => Ok(Resolved {
            usable: Usable {
                admission,
                name: dispatcher.key.id.to_string(),
            },
            dispatcher,
            version,
        }),
        Err(e) => Err(unusable(e.for_account(), version)),
    }
}

/// The dispatcher (client and fetch queue) of connection `id` with `spec`, rebuilt when the spec changed. A
/// tenant's own connection may only name an allowed Pipedream host.
pub(super) fn dispatcher(
    ctx: &Context,
    id: ConnectionId,
    spec: &(impl ConnectionSettings + ?Sized),
) -> Result<Arc<Dispatcher>, DispatcherError> {
    if id.tenant_controlled() {
        ctx.settings
            .allowed_api_hosts
            .admit(spec.api_url())
            .map_err(|source| DispatcherError::HostRefused {
                id: id.clone(),
                source,
            })?;
    }
    let (mut settings, loader) = client_parts(ctx.client.clone(), spec, id.namespace.as_deref())
        .map_err(|source| DispatcherError::Credentials {
            id: id.clone(),
            source,
        })?;
    // Every shard has its own client: together they stay within the connection's rate.
    settings.rate_share = ctx.settings.shard.count();
    let key = ConnectionKey::new(id.clone(), spec);
    Ok(ctx.fetcher.dispatcher(&key, settings.rate_limit, || {
        PipedreamClient::new(
            ctx.http.clone(),
            settings,
            loader,
            Some((ctx.metrics.clone(), id)),
        )
    }))
}

/// Why a connection's dispatcher cannot be made. Named after what failed; its message starts with the connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum DispatcherError {
    /// A tenant's connection names a Pipedream host the operator may not call.
    #[error("{id}: {source}")]
    HostRefused {
        id: ConnectionId,
        #[source]
        source: HostRefused,
    },
    /// Its credentials settings cannot be used.
    #[error("{id}: {source}")]
    Credentials {
        id: ConnectionId,
        #[source]
        source: CredentialsError,
    },
}

impl DispatcherError {
    /// As a ConnectedAccount reports it: its connection is not ready.
    pub(super) fn for_account(&self) -> SyncFailure {
        SyncFailure::new(Reason::ConnectionNotReady, self.to_string())
    }

    /// As the connection reports itself: a refused host is a fault of its own spec.
    pub(super) fn for_connection(&self) -> SyncFailure {
        let reason = match self {
            Self::HostRefused { .. } => Reason::InvalidSpec,
            Self::Credentials { .. } => Reason::ConnectionNotReady,
        };
        SyncFailure::new(reason, self.to_string())
    }
}

/// Client settings and a Secret-reading credential loader for a connection spec. `namespace` is the namespaced
/// connection's own namespace (None for a cluster connection, whose refs name theirs).
pub fn client_parts(
    client: Client,
    spec: &(impl ConnectionSettings + ?Sized),
    namespace: Option<&str>,
) -> Result<(ClientSettings, MaterialLoader), CredentialsError> {
    let auth = spec.auth();
    let (mode, refs) = match (&auth.oauth, &auth.api_key) {
        (Some(o), None) => (
            ApiMode::Connect {
                project_id: o.project_id.clone(),
                environment: o.environment,
            },
            Refs::OAuth {
                client_id: o.client_id.clone(),
                client_id_ref: o.client_id_secret_ref.clone(),
                secret: o.client_secret_ref.clone(),
            },
        ),
        (None, Some(k)) => (
            ApiMode::ApiKey {
                path: k.credentials_path,
            },
            Refs::ApiKey(k.secret_ref.clone()),
        ),
        _ => return Err(CredentialsError::AuthMethod),
    };
    let settings = ClientSettings {
        api_url: spec.api_url().to_string(),
        mode,
        rate_limit: spec.rate_limit(),
        rate_share: 1,
    };
    Ok((
        settings,
        loader(client, refs, namespace.map(str::to_string)),
    ))
}

/// The resourceVersions of the Secret(s) a connection's credentials come from, joined with `,` (`-` for a Secret
/// that cannot be read): a change means rotated credentials.
pub async fn credentials_version(
    client: &Client,
    spec: &(impl ConnectionSettings + ?Sized),
    namespace: Option<&str>,
) -> String {
    let mut versions = Vec::new();
    for (ns, name) in super::credentials::secrets_read(spec, namespace) {
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let v = match api.get_metadata_opt(&name).await {
            Ok(Some(m)) => m.metadata.resource_version.unwrap_or_default(),
            _ => "-".to_string(),
        };
        versions.push(v);
    }
    versions.join(",")
}

#[derive(Clone)]
enum Refs {
    OAuth {
        client_id: Option<String>,
        client_id_ref: Option<SecretKeyRef>,
        secret: SecretKeyRef,
    },
    ApiKey(SecretKeyRef),
}

/// Reads the connection's Secret(s) each time it is called, so rotated credentials are picked up.
fn loader(client: Client, refs: Refs, namespace: Option<String>) -> MaterialLoader {
    Arc::new(move || {
        let client = client.clone();
        let refs = refs.clone();
        let namespace = namespace.clone();
        async move {
            match refs {
                Refs::OAuth {
                    client_id,
                    client_id_ref,
                    secret,
                } => {
                    let client_id = match (client_id, client_id_ref) {
                        (Some(id), _) => id,
                        (None, Some(r)) => read_key(&client, &r, namespace.as_deref())
                            .await?
                            .expose()
                            .to_string(),
                        (None, None) => return Err(CredentialsError::NoClientId),
                    };
                    let client_secret = read_key(&client, &secret, namespace.as_deref()).await?;
                    Ok(AuthMaterial::OAuth {
                        client_id,
                        client_secret,
                    })
                }
                Refs::ApiKey(r) => Ok(AuthMaterial::ApiKey(
                    read_key(&client, &r, namespace.as_deref()).await?,
                )),
            }
        }
        .boxed()
    })
}

async fn read_key(
    client: &Client,
    r: &SecretKeyRef,
    own_namespace: Option<&str>,
) -> Result<SecretString, CredentialsError> {
    // A namespaced connection reads only its own namespace; a cluster connection's refs name theirs.
    let ns = own_namespace
        .or(r.namespace.as_deref())
        .ok_or_else(|| CredentialsError::NoNamespace(r.name.clone()))?;
    let secret = format!("{ns}/{}", r.name);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let found = api
        .get_opt(&r.name)
        .await
        .map_err(|e| CredentialsError::Read {
            secret: secret.clone(),
            summary: kube_error_summary(&e),
        })?
        .ok_or_else(|| CredentialsError::NotFound(secret.clone()))?;
    let key = |problem| CredentialsError::Key {
        secret: secret.clone(),
        key: r.key.clone(),
        problem,
    };
    let value = found
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| key("missing"))?;
    let text = String::from_utf8(value.0.clone()).map_err(|_| key("not UTF-8"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(key("empty"));
    }
    Ok(SecretString::new(text))
}

/// A short description of a Kubernetes API error.
pub fn kube_error_summary(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        other => other.to_string().chars().take(200).collect(),
    }
}

/// Whether `rule`'s `namespaceSelector` selects a namespace with `labels` (none read: no labels). A selector the
/// API would refuse selects nothing.
fn selects(rule: &AccessRule, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    rule.namespace_selector.as_ref().is_some_and(|sel| {
        Selector::try_from(sel.clone())
            .map(|s| s.matches(labels.unwrap_or(&empty)))
            .unwrap_or(false)
    })
}
