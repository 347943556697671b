//! Custom resource types of the `pipedream-secrets.io/v1alpha1` API group.

mod account;
mod connection;
mod reference;

pub use account::*;
pub use connection::*;
pub use reference::api_reference;

use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition type every kind reports its state in (its `True`/`False` status, reason and message).
pub const READY: &str = "Ready";
/// A ConnectedAccount's condition type saying whether its Secret's credentials have expired.
pub const EXPIRED: &str = "Expired";
/// A ConnectedAccount's condition type saying whether pods may read expired credentials (the last write came later
/// than the propagation time before the replaced credentials' expiry).
pub const PODS_AT_RISK: &str = "PodsAtRisk";
/// API group of every CRD this operator serves.
pub const GROUP: &str = "pipedream-secrets.io";
/// The one name this operator uses as SSA field manager, Event reporter and `managed-by` label value.
pub const MANAGER: &str = "pipedream-secrets-operator";
/// Label put on every Secret the operator writes; the Secret watch selects on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label (value `true`) on every Secret the operator writes into, owned or merged; the Secret watch selects on it.
pub const WATCH_LABEL: &str = "pipedream-secrets.io/managed";
/// Finalizer on ConnectedAccounts: on deletion the operator honours `deletionPolicy` and forgets its state.
pub const FINALIZER: &str = "pipedream-secrets.io/finalizer";
/// Annotation on a ConnectedAccount whose new value forces an immediate fetch.
pub const FORCE_SYNC_ANNOTATION: &str = "pipedream-secrets.io/force-sync";
/// Annotation on a written Secret naming the ConnectedAccount (`namespace/name`) that writes it.
pub const OWNER_ANNOTATION: &str = "pipedream-secrets.io/connected-account";
/// Annotation on a written Secret carrying the credentials' `expires_at` (absent when they do not expire).
pub const EXPIRES_AT_ANNOTATION: &str = "pipedream-secrets.io/expires-at";
/// Annotation on a written Secret carrying the Pipedream account ID.
pub const ACCOUNT_ID_ANNOTATION: &str = "pipedream-secrets.io/account-id";

/// Reference to one key of a Kubernetes Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Namespace of the Secret. Only allowed on a ClusterPipedreamConnection, where it is required; a namespaced
    /// PipedreamConnection always reads Secrets of its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Every CRD of this operator, in a stable order (used by `crd` and the drift test).
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        ConnectedAccount::crd(),
        PipedreamConnection::crd(),
        ClusterPipedreamConnection::crd(),
    ]
}

/// File name under `crds/` for a CRD (`<plural>.<group>.yaml`).
pub fn crd_file_name(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default())
}

/// Render one CRD as a YAML document.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}
