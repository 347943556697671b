// kube-derive takes one printcolumn(...) per column, which clippy reads as repeated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Go-style duration accepted by `refresh.*` and `minRestartInterval` (e.g. `30s`, `5m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(s|m|h))+$";

/// Which Pipedream account to sync into which Secret, and when to refresh it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pipedream-secrets.io",
    version = "v1alpha1",
    kind = "ConnectedAccount",
    namespaced,
    status = "ConnectedAccountStatus",
    shortname = "pdca",
    category = "pipedream",
    doc = "A Pipedream connected account whose credentials the operator keeps fresh in a Kubernetes Secret.",
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.accountId"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Connection",
        type_ = "string",
        json_path = ".status.connection",
        priority = "1"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "Expiry of the credentials in the Secret (RFC 3339; a date column would print future times as <invalid>)"
    ),
    printcolumn(
        name = "Next Sync",
        type_ = "string",
        json_path = ".status.nextSyncTime",
        description = "When the operator fetches next (RFC 3339)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedAccountSpec {
    /// Pipedream connected-account ID, `apn_` followed by letters and digits (e.g. `apn_Ab12Cd3`).
    #[schemars(regex(pattern = r"^apn_[A-Za-z0-9]+$"), length(max = 64))]
    pub account_id: String,
    /// Connection used to reach Pipedream. Default: the ClusterPipedreamConnection named by the operator's
    /// `--default-connection` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<ConnectionRef>,
    /// The Secret the credentials are written to.
    #[serde(default)]
    pub target: TargetSpec,
    /// When credentials are fetched again.
    #[serde(default)]
    pub refresh: RefreshSpec,
    /// Workloads in this namespace whose pods are restarted (pod-template annotation) when the Secret data changes.
    /// Only needed for workloads that read the Secret as environment variables or through `subPath` mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rollout_restart_targets: Vec<RolloutRestartTarget>,
    /// Least time between two rollout restarts of the same ConnectedAccount's targets (default `5m`).
    #[serde(default = "default_min_restart_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub min_restart_interval: String,
}

fn string_map(max: u32, value: serde_json::Value) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": max,
        "additionalProperties": value,
    })
}

fn label_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_map(
        64,
        serde_json::json!({"type": "string", "maxLength": 63,
                           "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}),
    )
}

fn annotation_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_map(
        64,
        serde_json::json!({"type": "string", "maxLength": 65536}),
    )
}

fn template_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_map(
        32,
        serde_json::json!({"type": "string", "maxLength": 16384}),
    )
}

fn default_min_restart_interval() -> String {
    "5m".into()
}

/// Reference to a PipedreamConnection (same namespace) or a ClusterPipedreamConnection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRef {
    /// `ClusterPipedreamConnection` (default) or `PipedreamConnection` (looked up in the ConnectedAccount's namespace).
    #[serde(default)]
    pub kind: ConnectionKind,
    /// Name of the connection.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kind of a connection resource.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
)]
pub enum ConnectionKind {
    /// A namespaced PipedreamConnection in the ConnectedAccount's own namespace.
    PipedreamConnection,
    /// A cluster-scoped ClusterPipedreamConnection, subject to its `access` rules.
    #[default]
    ClusterPipedreamConnection,
}

impl ConnectionKind {
    /// The kind's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PipedreamConnection => "PipedreamConnection",
            Self::ClusterPipedreamConnection => "ClusterPipedreamConnection",
        }
    }
}

/// Where and how the Secret is written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.creationPolicy != 'Merge' || self.deletionPolicy == 'Retain'").message("creationPolicy Merge requires deletionPolicy Retain: the operator never deletes a Secret it does not own"))]
#[x_kube(validation = Rule::new("self.creationPolicy != 'Orphan' || self.deletionPolicy == 'Retain'").message("creationPolicy Orphan writes no ownerReference, so the Secret outlives the ConnectedAccount: set deletionPolicy Retain"))]
pub struct TargetSpec {
    /// Name of the Secret (default: the ConnectedAccount's name). Must be a DNS subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub name: Option<String>,
    /// Secret type, e.g. `Opaque` (default) or `kubernetes.io/basic-auth`. A Secret's type cannot change after
    /// creation. Types Kubernetes or Helm act on (`kubernetes.io/service-account-token`, bootstrap tokens,
    /// `helm.sh/…`) are refused: the credential types `Opaque`, `kubernetes.io/basic-auth`, `ssh-auth`, `tls`,
    /// `dockerconfigjson`, `dockercfg` and types of your own domain are allowed.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self in ['Opaque', 'kubernetes.io/basic-auth', 'kubernetes.io/ssh-auth', 'kubernetes.io/tls', 'kubernetes.io/dockerconfigjson', 'kubernetes.io/dockercfg'] || !self.matches('^([^/]*[.])?(kubernetes[.]io|k8s[.]io|helm[.]sh)/')").message("target.type: types Kubernetes or Helm act on (service-account tokens, bootstrap tokens, helm.sh/...) are not allowed; use Opaque, a kubernetes.io credential type or a type of your own domain"))]
    pub type_: Option<String>,
    /// Labels copied onto the Secret (not on a Merge target, which belongs to someone else). At most 64; keys at
    /// most 317 characters (a 253-character prefix, `/` and a 63-character name); values follow the label value
    /// syntax (63 characters of letters, digits, `-`, `_`, `.`). Keys of the operator's own domain
    /// (`pipedream-secrets.io`) are refused: they decide which Secrets the operator watches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "label_map")]
    #[x_kube(validation = Rule::new("self.all(k, !k.matches('^([^/]*[.])?pipedream-secrets[.]io/'))").message("target.labels: keys of the pipedream-secrets.io domain belong to the operator"))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 317)").message("target.labels: keys are at most 317 characters (253 of prefix, '/', 63 of name)"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations copied onto the Secret (not on a Merge target). At most 64, 64 KiB in all (keys and values).
    /// Keys of the operator's domain (`pipedream-secrets.io`) and of Kubernetes (`kubernetes.io`, `k8s.io` and
    /// their subdomains, e.g. `kubernetes.io/service-account.name`) are refused, except `app.kubernetes.io/…`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "annotation_map")]
    #[x_kube(validation = Rule::new("self.all(k, !k.matches('^([^/]*[.])?pipedream-secrets[.]io/') && (k.startsWith('app.kubernetes.io/') || !k.matches('^([^/]*[.])?(kubernetes[.]io|k8s[.]io)/')))").message("target.annotations: keys of the pipedream-secrets.io, kubernetes.io and k8s.io domains are not allowed (app.kubernetes.io is)"))]
    #[x_kube(validation = Rule::new("self.map(k, size(k) + size(self[k])).sum() <= 65536").message("target.annotations may hold at most 64 KiB in all"))]
    pub annotations: BTreeMap<String, String>,
    /// `Owner` (default): the Secret gets an ownerReference and is garbage-collected with the ConnectedAccount.
    /// `Orphan`: no ownerReference (requires `deletionPolicy: Retain`). `Merge`: write the keys into an existing
    /// Secret the operator does not own (requires `deletionPolicy: Retain`).
    #[serde(default)]
    pub creation_policy: CreationPolicy,
    /// `Delete` (default): the Secret goes with the ConnectedAccount (garbage collection through its
    /// ownerReference). `Retain`: the Secret carries no ownerReference (an existing one is removed) and is kept.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Shapes the Secret data. Without it every credential field becomes one key, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSpec>,
}

/// How the operator creates (or adopts) the target Secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CreationPolicy {
    /// Create the Secret with a controller ownerReference to the ConnectedAccount.
    #[default]
    Owner,
    /// Create the Secret without an ownerReference.
    Orphan,
    /// Write keys into an existing Secret owned by something else; never delete it.
    Merge,
}

/// What happens to the Secret when the ConnectedAccount is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Delete the Secret with the ConnectedAccount.
    #[default]
    Delete,
    /// Keep the Secret (the ownerReference is removed first).
    Retain,
}

/// Templates for the Secret data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// Secret key -> template string (Jinja syntax, minijinja engine). The context holds `credentials` (the
    /// credential fields), `account` (`id`, `name`, `external_id`, `healthy`, `dead`, `app.id`, `app.name_slug`,
    /// `app.name`, `app.auth_type`)
    /// and `expires_at` (RFC 3339 or none). Filters include `tojson` and `b64encode`. Undefined variables are
    /// errors. At most 32 keys, 64 KiB in all.
    #[serde(default)]
    #[schemars(schema_with = "template_map")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[-._a-zA-Z0-9]+$') && k != '.' && k != '..' && !k.startsWith('..'))").message("template keys must be valid Secret keys (letters, digits, '-', '_', '.'; not '.', '..' or starting with '..')"))]
    #[x_kube(validation = Rule::new("self.map(k, size(k) + size(self[k])).sum() <= 65536").message("target.template.data may hold at most 64 KiB in all"))]
    pub data: BTreeMap<String, String>,
}

/// Refresh timing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.beforeExpiry) >= duration('5s')").message("refresh.beforeExpiry must be at least 5s"))]
#[x_kube(validation = Rule::new("duration(self.interval) >= duration('10s')").message("refresh.interval must be at least 10s"))]
#[x_kube(validation = Rule::new("!has(self.propagationTime) || duration(self.propagationTime) <= duration('1h')").message("refresh.propagationTime must be at most 1h"))]
pub struct RefreshSpec {
    /// Renew this long before the credentials' `expires_at` (default `5m`, minimum `5s`). A value below
    /// `propagationTime` acts as `propagationTime`.
    #[serde(default = "default_before_expiry")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub before_expiry: String,
    /// Re-check cadence for credentials without `expires_at` (default `1h`, minimum `10s`).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub interval: String,
    /// How long a Secret write takes to reach every pod that consumes it (default: the operator's
    /// `--propagation-time`, `100s`). A mounted volume sees a change on the kubelet's next pod sync: its
    /// `syncFrequency` (1m by default) plus up to half of it as jitter, so 90s with the defaults; environment
    /// variables and `subPath` mounts see it in the new pods a rollout restart starts. Fetches, retries and rollout
    /// restarts leave pods this much time before the credentials they hold expire, and a Pipedream that refreshes
    /// later than this before expiry is reported (condition `PodsAtRisk`). `0s` for clients that read the
    /// Secret through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub propagation_time: Option<String>,
}

fn default_before_expiry() -> String {
    "5m".into()
}
fn default_interval() -> String {
    "1h".into()
}

impl Default for RefreshSpec {
    fn default() -> Self {
        Self {
            before_expiry: default_before_expiry(),
            interval: default_interval(),
            propagation_time: None,
        }
    }
}

/// A workload whose pods are restarted when the Secret data changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,
    /// Name of the workload, in the ConnectedAccount's namespace (a DNS subdomain, as the API server requires).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Kinds of workloads that can be restarted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// Observed state of a ConnectedAccount. Never contains credential values.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedAccountStatus {
    /// `Ready` (reason: `SecretSynced`, `InvalidSpec`, `ConnectionNotFound`, `ConnectionNotReady`, `AccessDenied`,
    /// `AuthFailed`, `AccountNotFound`, `AccountUnhealthy`, `AccountDead`, `CredentialsUnavailable`, `RateLimited`,
    /// `UpstreamError`, `SecretConflict`, `StaleCredentials`, `SecretWriteFailed`), `Expired` (True with reason
    /// `CredentialsExpired` while the Secret holds credentials past their expiry, else False with `Fresh`) and
    /// `PodsAtRisk` (True with reason `RefreshTooLate` when Pipedream refreshes, or the last new credentials were
    /// written, less than `spec.refresh.propagationTime` before expiry: pods may read expired credentials; else
    /// False with `InTime`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Name of the Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The connection used, as `Kind/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Expiry of the credentials now in the Secret (RFC 3339); absent when they do not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Last time the Secret data was written or confirmed against Pipedream (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// When the operator fetches next (RFC 3339). Persisted so restarts do not re-fetch fresh credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync_time: Option<String>,
    /// What Pipedream reported about the account at the last fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountSummary>,
    /// `sha256:<hex>` of the Secret data the operator last wrote (drift detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// The Secret's `metadata.resourceVersion` when the operator last wrote or read it. While the Secret still has
    /// it, it is as written and is not read again (also after a restart); another one means something changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    /// The last `pipedream-secrets.io/force-sync` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_force_sync: Option<String>,
    /// Last time the rollout restart targets were restarted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_time: Option<String>,
    /// The data hash the rollout restart targets last started with; a restart is pending while it differs from
    /// `dataHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_data_hash: Option<String>,
    /// Expiry of the credentials in the data the rollout restart targets last started with (`restartedDataHash`):
    /// a pending restart is never held back by `minRestartInterval` past this time less `propagationTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_expires_at: Option<String>,
    /// How long before the credentials they replaced expired the last new credentials were written (seconds).
    /// Pods need at least `spec.refresh.propagationTime`; below it the `PodsAtRisk` condition is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub refresh_lead_seconds: Option<i64>,
}

/// Non-secret facts about the Pipedream account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountSummary {
    /// App name slug, e.g. `github`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The account's external user ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Pipedream's `healthy` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Pipedream's `dead` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead: Option<bool>,
}

impl ConnectedAccount {
    /// Name of the target Secret.
    pub fn secret_name(&self) -> String {
        self.spec
            .target
            .name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The Ready condition, if any.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == crate::crd::READY)
    }
}
