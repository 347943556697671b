//! Response models. Every field but `id` may be absent or null; unknown fields are ignored.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A string that must never be printed: OAuth client secrets, API keys, access tokens. Held in a
/// [`secrecy::SecretString`], so its memory is zeroized when it is dropped.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretString(secrecy::SecretString);

impl SecretString {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(secrecy::SecretString::from(s.into()))
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretString {}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The `credentials` object of an account: app-specific keys, values of any JSON type. Debug/Display show only
/// how many fields there are.
///
/// Held as compact JSON text: every account's last answer stays in memory for drift repair, and a parsed map costs
/// several times its text (a B-tree node and a `Value` per field). It is parsed again only to build a Secret.
/// The text is a [`SecretString`](secrecy::SecretString): zeroed when dropped, so an answer replaced or evicted
/// does not linger in freed memory.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Compact JSON of the object; keys sorted, so equal maps have equal text.
    json: secrecy::SecretString,
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        self.json.expose_secret() == other.json.expose_secret()
    }
}

impl Credentials {
    /// Build from a JSON map (tests, `render`).
    pub fn from_map(map: Map<String, Value>) -> Self {
        // Serializing a map of JSON values cannot fail.
        // The map's own strings are not zeroed (serde_json owns them), but nothing keeps the map.
        let json = serde_json::to_string(&map).unwrap_or_default().into();
        Self { json }
    }
    /// The fields, for Secret building and templates only.
    pub fn expose(&self) -> Map<String, Value> {
        use secrecy::ExposeSecret;
        serde_json::from_str(self.json.expose_secret()).unwrap_or_default()
    }
    /// Bytes held.
    pub fn size(&self) -> usize {
        use secrecy::ExposeSecret;
        self.json.expose_secret().len()
    }
    /// True when there is no field with a non-null value.
    pub fn is_empty(&self) -> bool {
        self.expose().values().all(Value::is_null)
    }
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Map::<String, Value>::deserialize(d).map(Self::from_map)
    }
}

impl Serialize for Credentials {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.expose().serialize(s)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials(<{} fields redacted>)", self.expose().len())
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// App embedded in an account.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
pub struct App {
    /// `app_…` or `oa_…`.
    #[serde(default)]
    pub id: Option<String>,
    /// e.g. `github`.
    #[serde(default)]
    pub name_slug: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// `oauth`, `keys` or `none`.
    #[serde(default)]
    pub auth_type: Option<String>,
}

/// A connected account as Pipedream returns it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Account {
    /// `apn_…`.
    pub id: String,
    /// Custom account name.
    #[serde(default)]
    pub name: Option<String>,
    /// The end user's id.
    #[serde(default)]
    pub external_id: Option<String>,
    /// False: a possibly temporary problem.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// True: broken for good.
    #[serde(default)]
    pub dead: Option<bool>,
    /// The app.
    #[serde(default)]
    pub app: Option<App>,
    /// Present only with `include_credentials` and for BYO-OAuth or key-based apps.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Expiry of the credentials (RFC 3339); null = they do not expire.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Message when unhealthy or dead; may be a string or an object.
    #[serde(default)]
    pub error: Option<Value>,
    /// Pipedream's own refresh schedule.
    #[serde(default)]
    pub next_refresh_at: Option<String>,
    /// Last time Pipedream refreshed the credentials.
    #[serde(default)]
    pub last_refreshed_at: Option<String>,
}

impl Account {
    /// App name slug, if reported.
    pub fn app_slug(&self) -> Option<&str> {
        self.app.as_ref()?.name_slug.as_deref()
    }
}

/// Token endpoint answer.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: SecretString,
    /// Kept raw: a hostile or broken server may send anything here.
    #[serde(default)]
    pub expires_in: Option<Value>,
}
