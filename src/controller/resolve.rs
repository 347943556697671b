//! Which connection a ConnectedAccount uses, whether it may, and the Pipedream client for it.

use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};

use super::Context;
use crate::access::{self, Admission};
use crate::crd::{ConnectedAccount, ConnectionKind, ConnectionSettings, SecretKeyRef};
use crate::pipedream::{
    ApiMode, AuthMaterial, ClientSettings, MaterialLoader, PipedreamClient, SecretString,
};
use crate::reason::{Error, Reason, SyncFailure};

/// A usable connection.
pub struct Resolved {
    /// `Kind/name` (namespaced kind: `Kind/namespace/name`).
    pub id: String,
    /// The client.
    pub client: Arc<PipedreamClient>,
    /// Narrowing the fetched account must satisfy.
    pub admission: Admission,
}

/// Outcome of resolution: a Kubernetes API failure aborts the reconcile, a `SyncFailure` goes to status.
pub type ResolveResult = Result<Result<Resolved, SyncFailure>, Error>;

/// Resolve `spec.connectionRef` (or the default connection).
pub async fn resolve(ca: &ConnectedAccount, ctx: &Context) -> ResolveResult {
    let ns = ca.namespace().unwrap_or_default();
    let (kind, name) = match &ca.spec.connection_ref {
        Some(r) => (r.kind, r.name.clone()),
        None => match &ctx.settings.default_connection {
            Some(n) => (ConnectionKind::ClusterPipedreamConnection, n.clone()),
            None => {
                return Ok(Err(SyncFailure::new(
                    Reason::ConnectionNotFound,
                    "spec.connectionRef is not set and the operator has no --default-connection",
                )));
            }
        },
    };
    match kind {
        ConnectionKind::PipedreamConnection => {
            let store = ctx
                .connections
                .get(&Some(ns.clone()))
                .or_else(|| ctx.connections.get(&None));
            let Some(conn) = store.and_then(|s| s.get(&ObjectRef::new(&name).within(&ns))) else {
                return Ok(Err(SyncFailure::new(
                    Reason::ConnectionNotFound,
                    format!("spec.connectionRef: PipedreamConnection {ns}/{name} not found"),
                )));
            };
            let id = format!("PipedreamConnection/{ns}/{name}");
            Ok(
                build(ctx, id, &conn.spec, Some(&ns)).map(|client| Resolved {
                    id: format!("PipedreamConnection/{name}"),
                    client,
                    admission: Admission::Unrestricted,
                }),
            )
        }
        ConnectionKind::ClusterPipedreamConnection if ctx.settings.cluster_connections_disabled => {
            Ok(Err(SyncFailure::new(
                Reason::ConnectionNotFound,
                format!(
                    "ClusterPipedreamConnection {name}: this installation is namespace-scoped and does not use cluster connections; reference a PipedreamConnection in spec.connectionRef"
                ),
            )))
        }
        ConnectionKind::ClusterPipedreamConnection => {
            let Some(conn) = ctx.cluster_connections.get(&ObjectRef::new(&name)) else {
                return Ok(Err(SyncFailure::new(
                    Reason::ConnectionNotFound,
                    format!(
                        "ClusterPipedreamConnection {name} not found (spec.connectionRef or --default-connection)"
                    ),
                )));
            };
            let labels = if access::needs_namespace_labels(&conn.spec.access) {
                let api: Api<Namespace> = Api::all(ctx.client.clone());
                api.get_opt(&ns)
                    .await
                    .map_err(Error::ReadNamespace)?
                    .map(|n| n.labels().clone())
            } else {
                None
            };
            let admission = access::admit_namespace(
                &conn.spec.access,
                &ns,
                labels.as_ref(),
                &ctx.settings.operator_namespace,
            );
            if admission == Admission::Denied {
                return Ok(Err(SyncFailure::new(
                    Reason::AccessDenied,
                    format!(
                        "namespace {ns} is not admitted by the access rules of ClusterPipedreamConnection {name}"
                    ),
                )));
            }
            let id = format!("ClusterPipedreamConnection/{name}");
            Ok(
                build(ctx, id.clone(), &conn.spec, None).map(|client| Resolved {
                    id,
                    client,
                    admission,
                }),
            )
        }
    }
}

pub(super) fn build(
    ctx: &Context,
    id: String,
    spec: &impl ConnectionSettingsSerialize,
    namespace: Option<&str>,
) -> Result<Arc<PipedreamClient>, SyncFailure> {
    let (settings, loader) = client_parts(ctx.client.clone(), spec, namespace)
        .map_err(|m| SyncFailure::new(Reason::ConnectionNotReady, format!("{id}: {m}")))?;
    Ok(ctx.pipedream_client(&id, &spec.fingerprint(), settings, loader))
}

/// Client settings and a Secret-reading credential loader for a connection spec. `namespace` is the namespaced
/// connection's own namespace (None for a cluster connection, whose refs name theirs).
pub fn client_parts(
    client: Client,
    spec: &impl ConnectionSettings,
    namespace: Option<&str>,
) -> Result<(ClientSettings, MaterialLoader), String> {
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
        _ => return Err("spec.auth must set exactly one of oauth or apiKey".into()),
    };
    let settings = ClientSettings {
        api_url: spec.api_url().to_string(),
        mode,
        rate_limit: spec.rate_limit(),
    };
    Ok((
        settings,
        loader(client, refs, namespace.map(str::to_string)),
    ))
}

/// Connection specs serialize to a fingerprint: a changed spec means a new client.
pub trait ConnectionSettingsSerialize: ConnectionSettings + serde::Serialize {
    /// JSON of the spec.
    fn fingerprint(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
impl<T: ConnectionSettings + serde::Serialize> ConnectionSettingsSerialize for T {}

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
                Refs::OAuth { client_id, client_id_ref, secret } => {
                    let client_id = match (client_id, client_id_ref) {
                        (Some(id), _) => id,
                        (None, Some(r)) => read_key(&client, &r, namespace.as_deref()).await?.expose().to_string(),
                        (None, None) => return Err("spec.auth.oauth needs clientId or clientIdSecretRef".into()),
                    };
                    let client_secret = read_key(&client, &secret, namespace.as_deref()).await?;
                    Ok(AuthMaterial::OAuth { client_id, client_secret })
                }
                Refs::ApiKey(r) => Ok(AuthMaterial::ApiKey(read_key(&client, &r, namespace.as_deref()).await?)),
            }
        }
        .boxed()
    })
}

async fn read_key(
    client: &Client,
    r: &SecretKeyRef,
    own_namespace: Option<&str>,
) -> Result<SecretString, String> {
    // A namespaced connection reads only its own namespace; a cluster connection's refs name theirs.
    let ns = own_namespace
        .or(r.namespace.as_deref())
        .ok_or_else(|| format!("Secret ref {} has no namespace", r.name))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(|e| format!("reading Secret {ns}/{}: {}", r.name, kube_error_summary(&e)))?
        .ok_or_else(|| format!("Secret {ns}/{} not found", r.name))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| format!("Secret {ns}/{} has no key {}", r.name, r.key))?;
    let text = String::from_utf8(value.0.clone())
        .map_err(|_| format!("Secret {ns}/{} key {} is not UTF-8", r.name, r.key))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("Secret {ns}/{} key {} is empty", r.name, r.key));
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
