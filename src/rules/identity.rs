//! Identities as types. A connection is its kind, namespace and name; a connection *as used* is that plus a
//! fingerprint of everything that decides whose data it returns. Every cache, single-flight slot and token is
//! keyed by these types, so an account fetched through one tenant's connection can never be served to another.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::crd::{ConnectionKind, ConnectionSettings};

/// Which connection resource: kind, namespace (namespaced kind only) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    /// Kind of the resource.
    pub kind: ConnectionKind,
    /// Namespace of a `PipedreamConnection`; `None` for a `ClusterPipedreamConnection`.
    pub namespace: Option<String>,
    /// Name of the resource.
    pub name: String,
}

impl ConnectionId {
    /// A `ClusterPipedreamConnection`.
    pub fn cluster(name: impl Into<String>) -> Self {
        Self {
            kind: ConnectionKind::ClusterPipedreamConnection,
            namespace: None,
            name: name.into(),
        }
    }

    /// A `PipedreamConnection` in `namespace`.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: ConnectionKind::PipedreamConnection,
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    /// Whether a tenant (not the cluster admin) controls this connection's spec, `apiUrl` included.
    pub fn tenant_controlled(&self) -> bool {
        self.kind == ConnectionKind::PipedreamConnection
    }

    /// `Kind/name`, as written to a ConnectedAccount's status (a namespaced connection is always in the
    /// ConnectedAccount's own namespace).
    pub fn status_ref(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.name)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.kind.as_str(), self.name),
            None => write!(f, "{}/{}", self.kind.as_str(), self.name),
        }
    }
}

/// SHA-256 (truncated) of what decides whose data a connection returns: API URL and the whole auth block
/// (client id or its Secret ref, client-secret ref, project, environment, API-key ref, credentials path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// Fingerprint of a connection spec.
    pub fn of(spec: &(impl ConnectionSettings + ?Sized)) -> Self {
        let mut h = Sha256::new();
        h.update(spec.api_url().trim_end_matches('/').as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(spec.auth()).unwrap_or_default());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        Self(out)
    }
}

/// A connection as the operator uses it. Two keys are equal only when kind, namespace, name, API URL and auth
/// are all equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    /// The resource.
    pub id: ConnectionId,
    /// Its spec's fingerprint.
    pub fingerprint: Fingerprint,
}

impl ConnectionKey {
    /// The key of connection `id` with `spec`.
    pub fn new(id: ConnectionId, spec: &(impl ConnectionSettings + ?Sized)) -> Self {
        Self {
            id,
            fingerprint: Fingerprint::of(spec),
        }
    }
}

/// One Pipedream account as seen through one connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    /// The connection it is fetched through (shared: one per connection, not one per account).
    pub connection: std::sync::Arc<ConnectionKey>,
    /// `apn_…`.
    pub account_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PipedreamConnectionSpec;

    fn spec(url: &str, project: &str) -> PipedreamConnectionSpec {
        serde_json::from_value(serde_json::json!({"apiUrl": url, "auth": {"oauth": {
            "clientId": "c", "clientSecretRef": {"name": "s", "key": "k"}, "projectId": project}}}))
        .unwrap()
    }

    #[test]
    fn same_name_in_two_namespaces_or_kinds_are_different_connections() {
        let a = ConnectionId::namespaced("team-a", "pd");
        let b = ConnectionId::namespaced("team-b", "pd");
        let c = ConnectionId::cluster("pd");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "PipedreamConnection/team-a/pd");
        assert_eq!(c.to_string(), "ClusterPipedreamConnection/pd");
        assert_eq!(a.status_ref(), "PipedreamConnection/pd");
        assert!(a.tenant_controlled() && !c.tenant_controlled());
    }

    #[test]
    fn fingerprint_covers_url_and_auth_but_not_a_trailing_slash() {
        let s = spec("https://api.pipedream.com", "proj_A");
        assert_eq!(
            Fingerprint::of(&s),
            Fingerprint::of(&spec("https://api.pipedream.com/", "proj_A"))
        );
        assert_ne!(
            Fingerprint::of(&s),
            Fingerprint::of(&spec("https://evil.example", "proj_A"))
        );
        assert_ne!(
            Fingerprint::of(&s),
            Fingerprint::of(&spec("https://api.pipedream.com", "proj_B"))
        );
        let id = ConnectionId::namespaced("team-a", "pd");
        assert_ne!(
            ConnectionKey::new(id.clone(), &s),
            ConnectionKey::new(id, &spec("https://evil.example", "proj_A"))
        );
    }
}
