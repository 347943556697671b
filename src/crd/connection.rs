// kube-derive takes one printcolumn(...) per column, which clippy reads as repeated attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Default Pipedream API base URL.
pub const DEFAULT_API_URL: &str = "https://api.pipedream.com";

/// How to reach Pipedream, for ConnectedAccounts in the same namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pipedream-secrets.io",
    version = "v1alpha1",
    kind = "PipedreamConnection",
    namespaced,
    status = "ConnectionStatus",
    shortname = "pdconn",
    category = "pipedream",
    doc = "How to reach Pipedream (API URL and credentials), for ConnectedAccounts in the same namespace.",
    validation = Rule::new("!has(self.spec.auth.oauth) || !has(self.spec.auth.oauth.clientSecretRef.__namespace__)").message("spec.auth.oauth.clientSecretRef.namespace is not allowed on a PipedreamConnection: it reads Secrets of its own namespace"),
    validation = Rule::new("!has(self.spec.auth.oauth) || !has(self.spec.auth.oauth.clientIdSecretRef) || !has(self.spec.auth.oauth.clientIdSecretRef.__namespace__)").message("spec.auth.oauth.clientIdSecretRef.namespace is not allowed on a PipedreamConnection"),
    validation = Rule::new("!has(self.spec.auth.apiKey) || !has(self.spec.auth.apiKey.secretRef.__namespace__)").message("spec.auth.apiKey.secretRef.namespace is not allowed on a PipedreamConnection: it reads Secrets of its own namespace"),
    printcolumn(name = "Auth", type_ = "string", json_path = ".status.authMode"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PipedreamConnectionSpec {
    /// Pipedream API base URL (default `https://api.pipedream.com`).
    #[serde(default = "default_api_url")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub api_url: String,
    /// How the operator authenticates to Pipedream: exactly one of `oauth` or `apiKey`.
    pub auth: ConnectionAuth,
    /// Client-side rate limit for requests to Pipedream through this connection.
    #[serde(default)]
    pub rate_limit: RateLimit,
}

/// How to reach Pipedream, for ConnectedAccounts in the namespaces its `access` rules admit.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pipedream-secrets.io",
    version = "v1alpha1",
    kind = "ClusterPipedreamConnection",
    status = "ConnectionStatus",
    shortname = "cpdconn",
    category = "pipedream",
    doc = "How to reach Pipedream, shared by ConnectedAccounts in the namespaces its access rules admit.",
    validation = Rule::new("!has(self.spec.auth.oauth) || has(self.spec.auth.oauth.clientSecretRef.__namespace__)").message("spec.auth.oauth.clientSecretRef.namespace is required on a ClusterPipedreamConnection"),
    validation = Rule::new("!has(self.spec.auth.oauth) || !has(self.spec.auth.oauth.clientIdSecretRef) || has(self.spec.auth.oauth.clientIdSecretRef.__namespace__)").message("spec.auth.oauth.clientIdSecretRef.namespace is required on a ClusterPipedreamConnection"),
    validation = Rule::new("!has(self.spec.auth.apiKey) || has(self.spec.auth.apiKey.secretRef.__namespace__)").message("spec.auth.apiKey.secretRef.namespace is required on a ClusterPipedreamConnection"),
    printcolumn(name = "Auth", type_ = "string", json_path = ".status.authMode"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPipedreamConnectionSpec {
    /// Pipedream API base URL (default `https://api.pipedream.com`).
    #[serde(default = "default_api_url")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub api_url: String,
    /// How the operator authenticates to Pipedream: exactly one of `oauth` or `apiKey`. Secret refs must name
    /// their namespace.
    pub auth: ConnectionAuth,
    /// Client-side rate limit for requests to Pipedream through this connection.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Who may use this connection. Empty (default): only ConnectedAccounts in the operator's own namespace.
    /// A ConnectedAccount is admitted by the first rule matching its namespace whose narrowing the fetched account
    /// satisfies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
}

fn default_api_url() -> String {
    DEFAULT_API_URL.into()
}

/// Credentials for Pipedream. Exactly one member is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.oauth) != has(self.apiKey)").message("exactly one of auth.oauth or auth.apiKey must be set"))]
pub struct ConnectionAuth {
    /// Connect API with OAuth client credentials (a Pipedream "OAuth client").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthAuth>,
    /// Workspace API key (`/v1/accounts/{id}` flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
}

/// OAuth client credentials for the Pipedream Connect API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientId) != has(self.clientIdSecretRef)").message("exactly one of oauth.clientId or oauth.clientIdSecretRef must be set"))]
pub struct OAuthAuth {
    /// OAuth client ID (not secret). Alternatively `clientIdSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id: Option<String>,
    /// Secret key holding the OAuth client ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the OAuth client secret. Rotations are picked up without a restart.
    pub client_secret_ref: SecretKeyRef,
    /// Pipedream project ID (`proj_…`).
    #[schemars(regex(pattern = r"^proj_[A-Za-z0-9]+$"), length(max = 64))]
    pub project_id: String,
    /// Pipedream environment sent as `x-pd-environment`: `production` (default) or `development`.
    #[serde(default)]
    pub environment: PipedreamEnvironment,
}

/// Pipedream Connect environment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum PipedreamEnvironment {
    /// The production environment.
    #[default]
    Production,
    /// The development environment.
    Development,
}

impl PipedreamEnvironment {
    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Development => "development",
        }
    }
}

/// Workspace API key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Secret key holding the API key. Rotations are picked up without a restart.
    pub secret_ref: SecretKeyRef,
    /// `includeCredentials` (default): `GET /v1/accounts/{id}?include_credentials=1`. `credentials`:
    /// `GET /v1/accounts/{id}/credentials`.
    #[serde(default)]
    pub credentials_path: CredentialsPath,
}

/// Which API-key endpoint returns the credentials.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum CredentialsPath {
    /// `GET /v1/accounts/{id}?include_credentials=1`.
    #[default]
    IncludeCredentials,
    /// `GET /v1/accounts/{id}/credentials`.
    Credentials,
}

/// Client-side rate limit towards one Pipedream project.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (default 5; Pipedream allows 2,000 account reads per 5 minutes per project).
    #[serde(default = "default_rps")]
    // `format: int32`, not schemars' `uint32`: the API server knows no unsigned formats and warns on each apply.
    #[schemars(range(min = 1, max = 1000), extend("format" = "int32"))]
    pub requests_per_second: u32,
    /// Burst size (default 10).
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 10000), extend("format" = "int32"))]
    pub burst: u32,
}

fn default_rps() -> u32 {
    5
}
fn default_burst() -> u32 {
    10
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests_per_second: default_rps(),
            burst: default_burst(),
        }
    }
}

/// One access rule of a ClusterPipedreamConnection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.namespaces) > 0 || has(self.namespaceSelector)").message("an access rule needs namespaces or namespaceSelector"))]
pub struct AccessRule {
    /// Namespaces admitted by this rule (`*` admits every namespace).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces admitted by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Optional narrowing: the fetched account's `external_id` must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_user_ids: Vec<String>,
    /// Optional narrowing: the fetched account's app `name_slug` must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// Optional narrowing: the account ID must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub account_ids: Vec<String>,
}

/// Observed state of a connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// `Ready`: True once a Pipedream token (or API key) could be obtained; False with reason `InvalidSpec`,
    /// `ConnectionNotReady` (Secret missing), `AuthFailed`, `RateLimited` or `UpstreamError`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `oauth` or `apiKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mode: Option<String>,
    /// resourceVersion of the Secret(s) holding the connection's credentials when they were last checked. The
    /// operator looks at the Secret every few seconds: a change (a rotated client secret or API key) re-checks the
    /// connection and retries its failed ConnectedAccounts at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_version: Option<String>,
}

/// What the operator needs of either connection kind.
pub trait ConnectionSettings {
    /// API base URL.
    fn api_url(&self) -> &str;
    /// Auth settings.
    fn auth(&self) -> &ConnectionAuth;
    /// Rate limit.
    fn rate_limit(&self) -> RateLimit;
}

impl ConnectionSettings for PipedreamConnectionSpec {
    fn api_url(&self) -> &str {
        &self.api_url
    }
    fn auth(&self) -> &ConnectionAuth {
        &self.auth
    }
    fn rate_limit(&self) -> RateLimit {
        self.rate_limit
    }
}

impl ConnectionSettings for ClusterPipedreamConnectionSpec {
    fn api_url(&self) -> &str {
        &self.api_url
    }
    fn auth(&self) -> &ConnectionAuth {
        &self.auth
    }
    fn rate_limit(&self) -> RateLimit {
        self.rate_limit
    }
}
