//! Noticing rotated connection credentials: a metadata watch of each scope's unmanaged Secrets (no store) is
//! looked up against the connections; a change to a Secret a connection reads marks that connection's client
//! stale (its next request re-reads the Secret and mints a token only if the credentials differ) and wakes the
//! connection's status check. Connections whose Secrets lie outside the watched scopes are polled instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::UnboundedSender;

use super::Context;
use crate::crd::{ClusterPipedreamConnection, ConnectionSettings, PipedreamConnection};
use crate::identity::ConnectionId;

type Scope = Option<String>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `namespace/name` of each Secret a connection spec reads (`own` is a namespaced connection's namespace;
/// a cluster connection's refs name theirs).
pub fn secrets_read(
    spec: &(impl ConnectionSettings + ?Sized),
    own: Option<&str>,
) -> Vec<(String, String)> {
    let auth = spec.auth();
    let refs = auth
        .oauth
        .iter()
        .flat_map(|o| o.client_id_secret_ref.iter().chain([&o.client_secret_ref]))
        .chain(auth.api_key.iter().map(|k| &k.secret_ref));
    refs.filter_map(|r| {
        let ns = own.or(r.namespace.as_deref())?;
        Some((ns.to_string(), r.name.clone()))
    })
    .collect()
}

/// One event of the credentials watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretEvent {
    /// Created or modified (a watch event): always a possible change.
    Changed(String),
    /// Listed (initial list or re-list after a watch restart): a change only if its resourceVersion moved.
    Listed(String),
    /// Deleted.
    Deleted,
}

/// State of the credentials watch.
#[derive(Default)]
pub struct CredentialWatch {
    /// The scopes watched; unset while no watch runs (then every connection polls).
    scopes: OnceLock<Vec<Scope>>,
    /// Last resourceVersion of each Secret some connection reads.
    versions: Mutex<HashMap<(String, String), String>>,
    namespaced: Mutex<BTreeMap<Scope, UnboundedSender<ObjectRef<PipedreamConnection>>>>,
    cluster: Mutex<Option<UnboundedSender<ObjectRef<ClusterPipedreamConnection>>>>,
}

impl CredentialWatch {
    /// The watch runs over `scopes`.
    pub fn started(&self, scopes: Vec<Scope>) {
        let _ = self.scopes.set(scopes);
    }

    /// Whether a change to Secrets in namespace `ns` reaches the operator by watch.
    pub fn covers(&self, ns: &str) -> bool {
        self.scopes.get().is_some_and(|s| {
            s.iter()
                .any(|scope| scope.as_deref().is_none_or(|w| w == ns))
        })
    }

    /// Where to wake the namespaced connection checks of `scope`.
    pub fn wake_namespaced_via(
        &self,
        scope: Scope,
        tx: UnboundedSender<ObjectRef<PipedreamConnection>>,
    ) {
        lock(&self.namespaced).insert(scope, tx);
    }

    /// Where to wake the cluster connection checks.
    pub fn wake_cluster_via(&self, tx: UnboundedSender<ObjectRef<ClusterPipedreamConnection>>) {
        *lock(&self.cluster) = Some(tx);
    }

    /// Secrets whose version is held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.versions).len()
    }

    /// Whether `event` on Secret `key`, which some connection reads, may be a change (and remember its version).
    fn changed(&self, key: (String, String), event: &SecretEvent) -> bool {
        let mut versions = lock(&self.versions);
        match event {
            SecretEvent::Changed(rv) => {
                versions.insert(key, rv.clone());
                true
            }
            SecretEvent::Listed(rv) => versions
                .insert(key, rv.clone())
                .is_some_and(|old| old != *rv),
            SecretEvent::Deleted => {
                versions.remove(&key);
                true
            }
        }
    }
}

impl Context {
    /// The connections that read Secret `ns/name`.
    fn connections_reading(&self, ns: &str, name: &str) -> Vec<ConnectionId> {
        let wanted = (ns.to_string(), name.to_string());
        let mut out = Vec::new();
        for (scope, store) in &self.connections {
            if scope.as_deref().is_some_and(|s| s != ns) {
                continue;
            }
            for c in store.state() {
                if c.namespace().as_deref() == Some(ns)
                    && secrets_read(&c.spec, Some(ns)).contains(&wanted)
                {
                    out.push(ConnectionId::namespaced(ns, c.name_any()));
                }
            }
        }
        for c in self.cluster_connections.state() {
            if secrets_read(&c.spec, None).contains(&wanted) {
                out.push(ConnectionId::cluster(c.name_any()));
            }
        }
        out
    }

    /// An event of the credentials watch: a change to a Secret a connection reads marks that connection's
    /// client stale and wakes its check.
    pub fn credentials_secret_event(&self, ns: &str, name: &str, event: SecretEvent) {
        let ids = self.connections_reading(ns, name);
        let key = (ns.to_string(), name.to_string());
        if ids.is_empty() {
            lock(&self.credential_watch.versions).remove(&key);
            return;
        }
        if !self.credential_watch.changed(key, &event) {
            return;
        }
        for id in ids {
            if let Some(d) = self.fetcher.get(&id) {
                d.client.credentials_changed();
            }
            let w = &self.credential_watch;
            match &id.namespace {
                Some(conn_ns) => {
                    let senders = lock(&w.namespaced);
                    let tx = senders
                        .get(&Some(conn_ns.clone()))
                        .or_else(|| senders.get(&None));
                    if let Some(tx) = tx {
                        let _ = tx.send(ObjectRef::new(&id.name).within(conn_ns));
                    }
                }
                None => {
                    if let Some(tx) = lock(&w.cluster).as_ref() {
                        let _ = tx.send(ObjectRef::new(&id.name));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_reads_its_refs_in_its_own_namespace_or_the_named_one() {
        let namespaced: crate::crd::PipedreamConnectionSpec = serde_json::from_value(serde_json::json!({
            "auth": {"oauth": {"projectId": "proj_1", "clientIdSecretRef": {"name": "id", "key": "k"},
                               "clientSecretRef": {"name": "s", "key": "k"}}}}))
        .unwrap();
        assert_eq!(
            secrets_read(&namespaced, Some("team-a")),
            vec![
                ("team-a".to_string(), "id".to_string()),
                ("team-a".to_string(), "s".to_string())
            ]
        );
        let cluster: crate::crd::PipedreamConnectionSpec =
            serde_json::from_value(serde_json::json!({
            "auth": {"apiKey": {"secretRef": {"name": "key", "key": "k", "namespace": "ops"}}}}))
            .unwrap();
        assert_eq!(
            secrets_read(&cluster, None),
            vec![("ops".to_string(), "key".to_string())]
        );
    }

    #[test]
    fn a_relisted_secret_is_a_change_only_if_its_version_moved() {
        let w = CredentialWatch::default();
        let key = || ("ops".to_string(), "pd".to_string());
        assert!(
            !w.changed(key(), &SecretEvent::Listed("1".into())),
            "first sight"
        );
        assert!(!w.changed(key(), &SecretEvent::Listed("1".into())));
        assert!(w.changed(key(), &SecretEvent::Listed("2".into())));
        assert!(w.changed(key(), &SecretEvent::Changed("3".into())));
        assert!(w.changed(key(), &SecretEvent::Deleted));
        assert!(
            !w.changed(key(), &SecretEvent::Listed("4".into())),
            "after a delete: first sight"
        );
    }

    #[test]
    fn coverage_follows_the_watched_scopes() {
        let w = CredentialWatch::default();
        assert!(!w.covers("ops"), "no watch yet");
        w.started(vec![Some("team-a".into())]);
        assert!(w.covers("team-a") && !w.covers("ops"));
        let all = CredentialWatch::default();
        all.started(vec![None]);
        assert!(all.covers("ops"));
    }
}
