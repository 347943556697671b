//! HTTP client for one Pipedream connection: token cache, rate limiter, both auth modes. (Over 400 lines: token
//! minting, both account endpoints, body caps and error mapping share one set of request helpers.)

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Account, CredentialsError, PipedreamError, SecretString, TokenResponse};
use crate::crd::{CredentialsPath, PipedreamEnvironment, RateLimit};
use crate::identity::ConnectionId;
use crate::metrics::Metrics;

/// Where a client reports: the metrics and the connection it serves.
pub type Reporting = Option<(Arc<Metrics>, ConnectionId)>;

/// Refresh the OAuth token this long before it expires (the official SDKs use the same buffer).
const TOKEN_REFRESH_BUFFER: Duration = Duration::from_secs(120);
/// `expires_in` assumed when the token answer omits it (Pipedream documents 1 h).
const DEFAULT_TOKEN_LIFETIME: u64 = 3600;
/// A token is refreshed at least this often, whatever lifetime Pipedream claims.
const MAX_TOKEN_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Token lifetimes above this are not believed: the answer is malformed.
const ABSURD_TOKEN_LIFETIME: u64 = 366 * 24 * 3600;
/// A token that fails with 401 is dropped and re-minted at most this often (a 401 on one bad account must not
/// mint a token per fetch).
const FORCED_REMINT_INTERVAL: Duration = Duration::from_secs(30);
/// Largest response body read from Pipedream.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest server-imposed wait honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Pause before the single quick retry of a transient failure.
const TRANSIENT_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Secret material a connection authenticates with, read from Kubernetes Secrets.
#[derive(Clone, Debug)]
pub enum AuthMaterial {
    /// OAuth client credentials.
    OAuth {
        /// Client ID (not secret).
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
    },
    /// Workspace API key.
    ApiKey(SecretString),
}

/// Loads the connection's secret material; called again after a 401 so rotations are picked up.
pub type MaterialLoader =
    Arc<dyn Fn() -> BoxFuture<'static, Result<AuthMaterial, CredentialsError>> + Send + Sync>;

/// Which API the connection speaks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ApiMode {
    /// Connect API with OAuth client credentials.
    Connect {
        /// `proj_…`.
        project_id: String,
        /// Sent as `x-pd-environment`.
        environment: PipedreamEnvironment,
    },
    /// Workspace API key on `/v1/accounts/{id}`.
    ApiKey {
        /// Which path returns credentials.
        path: CredentialsPath,
    },
}

/// Settings of one connection client. Equal settings mean the client can be reused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientSettings {
    /// Base URL without trailing slash.
    pub api_url: String,
    /// API flavour.
    pub mode: ApiMode,
    /// Client-side rate limit of the connection.
    pub rate_limit: RateLimit,
    /// This client's share of it: one of this many shards, each with a client of its own (1 unsharded).
    pub rate_share: u32,
}

/// The limiter's quota for one of `share` clients of a connection limited to `r`: one request every
/// `share / rate` seconds and `burst / share` at once (at least one), so the shards together stay within `r`.
/// (Whole requests per second per shard would floor at 1/s: 8 shards of a 5/s connection sent 8/s.)
pub fn quota(r: RateLimit, share: u32) -> Quota {
    let period = period(r, share);
    let share = share.max(1);
    let burst = NonZeroU32::new((r.burst / share).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// The sustained interval between requests of one of `share` clients of a connection limited to `r`.
pub fn period(r: RateLimit, share: u32) -> Duration {
    Duration::from_secs_f64(f64::from(share.max(1)) / f64::from(r.requests_per_second.max(1)))
}

/// An account answer with the timing needed to correct clock skew.
#[derive(Clone, Debug)]
pub struct FetchedAccount {
    /// The account.
    pub account: Account,
    /// Pipedream's `Date` header, if sent.
    pub server_time: Option<Timestamp>,
    /// How long the exchange that brought the answer took (the header was stamped somewhere within it).
    pub round_trip: Duration,
}

struct Token {
    value: SecretString,
    refresh_at: Instant,
    generation: u64,
    /// Fingerprint of the client credentials it was minted with.
    material: u64,
}

/// Client for one connection. Cheap to share (`Arc`).
pub struct PipedreamClient {
    http: reqwest::Client,
    settings: ClientSettings,
    loader: MaterialLoader,
    limiter: DefaultDirectRateLimiter,
    token: Mutex<Option<Token>>,
    api_key: Mutex<Option<SecretString>>,
    generation: std::sync::atomic::AtomicU64,
    /// Set when the connection's Secret may have changed: the next call re-reads it and mints only if the
    /// credentials differ from the held token's.
    stale: std::sync::atomic::AtomicBool,
    /// Keys the in-memory fingerprints (process-local, never shown).
    fingerprints: std::collections::hash_map::RandomState,
    last_forced_remint: std::sync::Mutex<Option<Instant>>,
    metrics: Reporting,
}

impl std::fmt::Debug for PipedreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipedreamClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Build the shared HTTP client (timeouts on every request).
///
/// TLS trusts the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` replace them) plus `extra_roots` (see
/// [`load_roots`]: a TLS-inspecting proxy's CA). Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`; the
/// allowed-hosts check judges the target URL, which a proxy never changes.
pub fn http_client(
    timeout: Duration,
    extra_roots: &[reqwest::Certificate],
) -> reqwest::Result<reqwest::Client> {
    // reqwest is built without a crypto provider; use the same ring provider as kube (no-op if already set).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_certs_merge(extra_roots.iter().cloned())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        // Never follow a redirect: it could lead past `--allowed-api-hosts` and carry the token request's client
        // secret to another host. A 3xx is reported as an upstream error naming its status.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "pipedream-secrets-operator/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
}

/// Why `--pipedream-ca-file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// Reading the file failed.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What reading it said.
        #[source]
        source: std::io::Error,
    },
    /// It is not a PEM bundle.
    #[error("{}: not a PEM certificate bundle: {source}", path.display())]
    NotPem {
        /// The file.
        path: std::path::PathBuf,
        /// What parsing it said.
        #[source]
        source: reqwest::Error,
    },
    /// It holds no certificate.
    #[error("{}: no certificate in it", path.display())]
    Empty {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// The certificates of a PEM bundle (`--pipedream-ca-file`), trusted for Pipedream besides the system's roots.
pub fn load_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let path_buf = || path.to_path_buf();
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path_buf(),
        source,
    })?;
    let roots =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| CaFileError::NotPem {
            path: path_buf(),
            source,
        })?;
    if roots.is_empty() {
        return Err(CaFileError::Empty { path: path_buf() });
    }
    Ok(roots)
}

impl PipedreamClient {
    /// New client; no request is made until needed.
    pub fn new(
        http: reqwest::Client,
        mut settings: ClientSettings,
        loader: MaterialLoader,
        metrics: Reporting,
    ) -> Self {
        settings.api_url = settings.api_url.trim_end_matches('/').to_string();
        Self {
            http,
            limiter: RateLimiter::direct(quota(settings.rate_limit, settings.rate_share)),
            settings,
            loader,
            token: Mutex::new(None),
            api_key: Mutex::new(None),
            generation: 0.into(),
            stale: false.into(),
            fingerprints: Default::default(),
            last_forced_remint: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Prove the connection can authenticate: mints (or reuses) the OAuth token, or loads the API key.
    pub async fn check_auth(&self) -> Result<(), PipedreamError> {
        self.bearer().await.map(|_| ())
    }

    /// Retrieve one account with its credentials.
    pub async fn fetch_account(&self, account_id: &str) -> Result<FetchedAccount, PipedreamError> {
        self.fetch(account_id, false).await
    }

    /// The sustained interval between this client's requests (its share of the connection's rate).
    pub fn period(&self) -> Duration {
        period(self.settings.rate_limit, self.settings.rate_share)
    }

    /// Wait for the rate limiter's next slot and take it, for a request chosen once it may be sent
    /// ([`Self::fetch_account_paced`]).
    pub async fn pace(&self) {
        if self.limiter.check().is_err() {
            let waited = std::time::Instant::now();
            self.limiter.until_ready().await;
            if let Some((m, id)) = &self.metrics {
                m.count_rate_limit_wait(id, waited.elapsed());
            }
        }
    }

    /// [`Self::fetch_account`] whose first request uses the slot [`Self::pace`] took.
    pub async fn fetch_account_paced(
        &self,
        account_id: &str,
    ) -> Result<FetchedAccount, PipedreamError> {
        self.fetch(account_id, true).await
    }

    async fn fetch(&self, account_id: &str, paced: bool) -> Result<FetchedAccount, PipedreamError> {
        let mut paced = paced;
        let (endpoint, url) = self.account_url(account_id);
        let mut reauthed = false;
        let mut retried = false;
        loop {
            let (bearer, generation) = self.bearer().await?;
            let mut req = self
                .http
                .request(Method::GET, &url)
                .bearer_auth(bearer.expose());
            if let ApiMode::Connect { environment, .. } = &self.settings.mode {
                req = req.header("x-pd-environment", environment.as_str());
            }
            let sent = Instant::now();
            match self.send(endpoint, req, std::mem::take(&mut paced)).await {
                Ok((headers, body)) => {
                    let account = parse_account(endpoint, &body)?;
                    let server_time = headers
                        .get(reqwest::header::DATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_http_date);
                    return Ok(FetchedAccount {
                        account,
                        server_time,
                        round_trip: sent.elapsed(),
                    });
                }
                Err(e @ PipedreamError::Unauthorized { .. }) if !reauthed => {
                    // A rotated client secret or revoked token: drop what we hold and try once more.
                    reauthed = true;
                    if !self.invalidate(generation).await {
                        return Err(e);
                    }
                    self.count_retry(endpoint, "reauth");
                }
                Err(e) if e.is_transient() && !retried => {
                    retried = true;
                    self.count_retry(endpoint, "transient");
                    tokio::time::sleep(TRANSIENT_RETRY_DELAY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The endpoint (its metric label) and URL that answer with an account's credentials in this mode.
    fn account_url(&self, account_id: &str) -> (&'static str, String) {
        match &self.settings.mode {
            ApiMode::Connect { project_id, .. } => (
                "connect_account",
                format!(
                    "{}/v1/connect/{project_id}/accounts/{account_id}?include_credentials=true",
                    self.settings.api_url
                ),
            ),
            ApiMode::ApiKey {
                path: CredentialsPath::IncludeCredentials,
            } => (
                "account",
                format!(
                    "{}/v1/accounts/{account_id}?include_credentials=1",
                    self.settings.api_url
                ),
            ),
            ApiMode::ApiKey {
                path: CredentialsPath::Credentials,
            } => (
                "account_credentials",
                format!(
                    "{}/v1/accounts/{account_id}/credentials",
                    self.settings.api_url
                ),
            ),
        }
    }

    fn count_retry(&self, endpoint: &'static str, cause: &'static str) {
        if let Some((m, _)) = &self.metrics {
            m.count_pipedream_retry(endpoint, cause);
        }
    }

    /// The connection's Secret may have changed: the next call re-reads it, and a token is minted again only if
    /// the credentials differ from those the held token was minted with (a 401 may already have picked them up).
    pub fn credentials_changed(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn fingerprint(&self, m: &AuthMaterial) -> u64 {
        use std::hash::BuildHasher;
        match m {
            AuthMaterial::OAuth {
                client_id,
                client_secret,
            } => self
                .fingerprints
                .hash_one((client_id.as_str(), client_secret.expose())),
            AuthMaterial::ApiKey(k) => self.fingerprints.hash_one(k.expose()),
        }
    }

    /// Drop the credential that just got a 401 so the next call re-reads the Secret and re-authenticates; false
    /// (nothing dropped) when that already happened within [`FORCED_REMINT_INTERVAL`].
    async fn invalidate(&self, generation: u64) -> bool {
        {
            let mut last = self
                .last_forced_remint
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < FORCED_REMINT_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let mut token = self.token.lock().await;
        if token.as_ref().is_some_and(|t| t.generation == generation) {
            *token = None;
        }
        drop(token);
        *self.api_key.lock().await = None;
        true
    }

    async fn load(&self) -> Result<AuthMaterial, PipedreamError> {
        (self.loader)()
            .await
            .map_err(PipedreamError::LoadCredentials)
    }

    /// The bearer for account calls and the generation of the token it came from.
    async fn bearer(&self) -> Result<(SecretString, u64), PipedreamError> {
        let stale = self.stale.swap(false, std::sync::atomic::Ordering::SeqCst);
        match &self.settings.mode {
            ApiMode::ApiKey { .. } => {
                let mut key = self.api_key.lock().await;
                if key.is_none() || stale {
                    match self.load().await {
                        Ok(AuthMaterial::ApiKey(k)) => *key = Some(k),
                        Ok(AuthMaterial::OAuth { .. }) => {
                            return Err(PipedreamError::LoadCredentials(
                                CredentialsError::WrongMaterial("an API key"),
                            ));
                        }
                        // The Secret went bad: the key held still works; the connection's status reports it.
                        Err(_) if key.is_some() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((key.clone().unwrap_or_else(|| SecretString::new("")), 0))
            }
            ApiMode::Connect { environment, .. } => {
                // Holding the lock across the refresh makes it single-flight: waiters reuse the new token.
                let mut token = self.token.lock().await;
                let mut material = None;
                // Unreadable now: the held token still works, and the connection's status reports the Secret.
                if stale
                    && token.is_some()
                    && let Ok(m) = self.load().await
                {
                    let f = self.fingerprint(&m);
                    if token.as_ref().is_some_and(|t| t.material != f) {
                        *token = None;
                    }
                    material = Some(m);
                }
                if let Some(t) = token.as_ref().filter(|t| Instant::now() < t.refresh_at) {
                    return Ok((t.value.clone(), t.generation));
                }
                let material = match material {
                    Some(m) => m,
                    None => self.load().await?,
                };
                let fresh = self.mint_token(*environment, material).await?;
                let out = (fresh.value.clone(), fresh.generation);
                *token = Some(fresh);
                Ok(out)
            }
        }
    }

    async fn mint_token(
        &self,
        environment: PipedreamEnvironment,
        material: AuthMaterial,
    ) -> Result<Token, PipedreamError> {
        let fingerprint = self.fingerprint(&material);
        let (client_id, client_secret) = match material {
            AuthMaterial::OAuth {
                client_id,
                client_secret,
            } => (client_id, client_secret),
            AuthMaterial::ApiKey(_) => {
                return Err(PipedreamError::LoadCredentials(
                    CredentialsError::WrongMaterial("OAuth client credentials"),
                ));
            }
        };
        let body = serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret.expose(),
        });
        let url = format!("{}/v1/oauth/token", self.settings.api_url);
        let mut retried = false;
        let (_, bytes) = loop {
            let req = self
                .http
                .request(Method::POST, &url)
                .header("x-pd-environment", environment.as_str())
                .json(&body);
            match self.send("token", req, false).await {
                Ok(ok) => break ok,
                Err(e) if e.is_transient() && !retried => {
                    retried = true;
                    tokio::time::sleep(TRANSIENT_RETRY_DELAY).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (access_token, lifetime) = parse_token(&bytes)?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Some((m, id)) = &self.metrics {
            let at = Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(lifetime).unwrap_or_default())
                .ok();
            m.set_token_expiry(id, at);
        }
        Ok(Token {
            value: access_token,
            refresh_at: Instant::now()
                .checked_add(refresh_after(lifetime))
                .unwrap_or_else(Instant::now),
            generation,
            material: fingerprint,
        })
    }

    /// One HTTP exchange: rate limit (unless `paced` already took its slot), metrics, status mapping.
    async fn send(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
        paced: bool,
    ) -> Result<(HeaderMap, bytes::Bytes), PipedreamError> {
        if !paced {
            self.pace().await;
        }
        let started = std::time::Instant::now();
        let result = req.send().await;
        let (status, headers, body) = match result {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                match read_capped(resp, endpoint).await {
                    Ok(b) => (status, headers, b),
                    Err(e) => {
                        self.observe(endpoint, "error", started);
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                self.observe(endpoint, "error", started);
                return Err(PipedreamError::Transport {
                    endpoint,
                    message: transport_message(&e),
                });
            }
        };
        self.observe(endpoint, status_label(status), started);
        if status.is_success() {
            return Ok((headers, body));
        }
        Err(map_status(endpoint, status, &headers, &body))
    }

    fn observe(&self, endpoint: &'static str, status: &'static str, started: std::time::Instant) {
        if let Some((m, _)) = &self.metrics {
            m.observe_request(endpoint, status, started.elapsed());
        }
    }
}

/// When to refresh a token of the given lifetime: 2 min early, or at half-life for tokens under 4 min; at least
/// daily.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let at = if lifetime < TOKEN_REFRESH_BUFFER * 2 {
        lifetime / 2
    } else {
        lifetime - TOKEN_REFRESH_BUFFER
    };
    at.min(MAX_TOKEN_REFRESH)
}

/// The token answer's access token and lifetime; an answer that does not parse or holds an empty token is
/// malformed (the message names the JSON error's kind, never the body).
fn parse_token(bytes: &[u8]) -> Result<(SecretString, Duration), PipedreamError> {
    let parsed: TokenResponse =
        serde_json::from_slice(bytes).map_err(|e| PipedreamError::Malformed {
            endpoint: "token",
            message: format!("token answer: {}", e.classify_str()),
        })?;
    if parsed.access_token.expose().is_empty() {
        return Err(PipedreamError::Malformed {
            endpoint: "token",
            message: "empty access_token".into(),
        });
    }
    let lifetime = token_lifetime(parsed.expires_in.as_ref())?;
    Ok((parsed.access_token, lifetime))
}

/// The token's `expires_in`: absent means Pipedream's documented hour; negative, fractional-overflowing or
/// absurdly long lifetimes make the answer malformed.
fn token_lifetime(expires_in: Option<&Value>) -> Result<Duration, PipedreamError> {
    let secs = match expires_in {
        None | Some(Value::Null) => DEFAULT_TOKEN_LIFETIME,
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f <= ABSURD_TOKEN_LIFETIME as f64)
                    .map(|f| f as u64)
            })
            .filter(|s| *s <= ABSURD_TOKEN_LIFETIME)
            .ok_or_else(|| PipedreamError::Malformed {
                endpoint: "token",
                message: "expires_in is not a number of seconds below a year".into(),
            })?,
    };
    Ok(Duration::from_secs(secs))
}

/// Read a body of at most [`MAX_BODY_BYTES`], streamed: a longer one (declared or not) is a malformed answer and
/// is not read further.
async fn read_capped(
    mut resp: reqwest::Response,
    endpoint: &'static str,
) -> Result<bytes::Bytes, PipedreamError> {
    let too_big = || PipedreamError::Malformed {
        endpoint,
        message: format!("body larger than {MAX_BODY_BYTES} bytes"),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(PipedreamError::Transport {
                    endpoint,
                    message: transport_message(&e),
                });
            }
        }
    }
}

/// A bounded label for an HTTP status: the codes Pipedream documents, else the class.
pub fn status_label(status: StatusCode) -> &'static str {
    const KNOWN: [(u16, &str); 11] = [
        (200, "200"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (408, "408"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    let code = status.as_u16();
    match KNOWN.iter().find(|(c, _)| *c == code) {
        Some((_, label)) => label,
        None => match code / 100 {
            2 => "2xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        },
    }
}

fn transport_message(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body read failed"
    } else {
        "request failed"
    };
    // The URL holds no secret (bearer is a header), but keep the message short and stable.
    kind.to_string()
}

trait ClassifyStr {
    fn classify_str(&self) -> String;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> String {
        // serde_json messages can quote input fragments; keep only position and category.
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

/// Parse an account body in either envelope: bare `Account` or `{"data": Account}`.
pub fn parse_account(endpoint: &'static str, body: &[u8]) -> Result<Account, PipedreamError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| PipedreamError::Malformed {
        endpoint,
        message: format!("not JSON ({})", e.classify_str()),
    })?;
    let inner = match value {
        Value::Object(mut map) if !map.contains_key("id") && map.contains_key("data") => {
            map.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    };
    if !inner.is_object() {
        return Err(PipedreamError::Malformed {
            endpoint,
            message: "account is not a JSON object".into(),
        });
    }
    serde_json::from_value::<Account>(inner).map_err(|e| PipedreamError::Malformed {
        endpoint,
        message: format!("unexpected account shape ({})", e.classify_str()),
    })
}

fn error_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let text = match v.get("error")? {
        Value::String(s) => s.clone(),
        Value::Null => return None,
        other => other.to_string(),
    };
    // It reaches status and Events: printable characters only, and short.
    Some(
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect(),
    )
}

fn map_status(
    endpoint: &'static str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> PipedreamError {
    let code = status.as_u16();
    let message = error_text(body);
    match code {
        401 => PipedreamError::Unauthorized {
            endpoint,
            status: code,
        },
        // A 403 on the token endpoint refuses the client; on an account it concerns that account only.
        403 if endpoint == "token" => PipedreamError::Unauthorized {
            endpoint,
            status: code,
        },
        403 => PipedreamError::Forbidden {
            endpoint,
            status: code,
        },
        404 if endpoint != "token" => PipedreamError::NotFound {
            status: code,
            message,
        },
        400 if endpoint != "token"
            && message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("not found")) =>
        {
            PipedreamError::NotFound {
                status: code,
                message,
            }
        }
        429 => PipedreamError::RateLimited {
            retry_after: retry_after(headers, Timestamp::now()),
        },
        300..=399 => PipedreamError::Status {
            endpoint,
            status: code,
            message: Some("a redirect, which the operator does not follow".into()),
        },
        _ => PipedreamError::Status {
            endpoint,
            status: code,
            message,
        },
    }
}

/// `Retry-After` (seconds or HTTP date), then `retry-after-ms`, then `X-RateLimit-Reset` (epoch seconds), capped
/// at [`MAX_RETRY_AFTER`] like the official SDKs. Unparsable, negative or non-finite values are ignored.
pub fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let until =
        |at: Timestamp| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
    let raw = if let Some(v) = get("retry-after") {
        match v.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
            }
            Ok(_) => None,
            Err(_) => parse_http_date(v).map(until),
        }
    } else if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<u64>().ok()) {
        Some(Duration::from_millis(ms))
    } else {
        get("x-ratelimit-reset")
            .and_then(|v| v.parse::<i64>().ok())
            .map(|reset| Timestamp::from_second(reset).map_or(Duration::MAX, until))
    };
    raw.map(|d| d.min(MAX_RETRY_AFTER))
}

/// Parse an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_http_date(s: &str) -> Option<Timestamp> {
    // httpdate takes all three forms RFC 9110 requires a recipient to accept (IMF-fixdate, RFC 850, asctime).
    httpdate::parse_http_date(s.trim())
        .ok()
        .and_then(|t| Timestamp::try_from(t).ok())
}

#[cfg(test)]
mod ca_file_tests {
    use super::*;

    /// `--pipedream-ca-file` problems name the file and what is wrong with it (start-up stops with this message).
    #[test]
    fn an_unusable_ca_file_is_named_with_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("pdso-ca-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = load_roots(&missing).unwrap_err();
        assert!(matches!(err, CaFileError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", missing.display()))
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let err = load_roots(&empty).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no certificate in it", empty.display())
        );
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_roots(&broken).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "{}: not a PEM certificate bundle: ",
                broken.display()
            )),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
