// Handlers return ready-made axum Responses as their error values; their size does not matter here.
#![allow(clippy::result_large_err)]

//! A fake Pipedream following `pipedream-api.md`: OAuth client-credentials tokens (JSON and form bodies), Connect
//! retrieve and list, API-key `/v1/accounts/{id}` and `/credentials`, per-account token lifetimes with Pipedream's
//! own refresh schedule on a controllable clock, request counters and log (no secrets), rate limiting and faults.
//! Admin API under `/_fake/…`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// One connected account of the fake.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FakeAccount {
    /// `apn_…`.
    pub id: String,
    /// Project it belongs to (Connect); API-key reads ignore it.
    pub project_id: String,
    /// `production` or `development`.
    pub environment: String,
    /// End-user id.
    pub external_id: Option<String>,
    /// App slug, e.g. `github`.
    pub app: String,
    /// `oauth` or `keys`.
    pub auth_type: String,
    /// Health flags and error text.
    pub healthy: bool,
    /// Dead flag.
    pub dead: bool,
    /// Error message when unhealthy or dead.
    pub error: Option<String>,
    /// Credential fields. For OAuth apps `oauth_access_token` gets a `-g<generation>` suffix per refresh.
    pub credentials: Map<String, Value>,
    /// False: credentials are never returned (a Pipedream-OAuth, non-BYOA account).
    pub credentials_available: bool,
    /// Token lifetime in seconds; none = credentials do not expire.
    pub lifetime_secs: Option<u64>,
    /// Pipedream refreshes this long before expiry (`next_refresh_at = expires_at − lead`).
    pub refresh_lead_secs: u64,
    /// Pipedream's refresh runs this long after `next_refresh_at` (more than the lead: the token expires first).
    pub refresh_late_secs: u64,
    /// When the current credentials were issued (fake clock). Set on insert.
    pub issued_at: Option<Timestamp>,
    /// Refresh count so far.
    pub generation: u64,
}

impl Default for FakeAccount {
    fn default() -> Self {
        Self {
            id: "apn_Fake0001".into(),
            project_id: "proj_Fake1".into(),
            environment: "production".into(),
            external_id: Some("tenant-42".into()),
            app: "github".into(),
            auth_type: "oauth".into(),
            healthy: true,
            dead: false,
            error: None,
            credentials: Map::new(),
            credentials_available: true,
            lifetime_secs: Some(3600),
            refresh_lead_secs: 600,
            refresh_late_secs: 0,
            issued_at: None,
            generation: 1,
        }
    }
}

impl FakeAccount {
    /// Pipedream's own refresh: advance generations until the current credentials are before their refresh time.
    fn roll(&mut self, now: Timestamp) {
        let Some(life) = self.lifetime_secs else {
            return;
        };
        let issued = *self.issued_at.get_or_insert(now);
        let lead = self.refresh_lead_secs.min(life.saturating_sub(1));
        let period = SignedDuration::from_secs(
            (life - lead).saturating_add(self.refresh_late_secs).max(1) as i64,
        );
        let mut at = issued;
        while now >= at + period {
            at += period;
            self.generation += 1;
        }
        self.issued_at = Some(at);
    }

    fn expires_at(&self) -> Option<Timestamp> {
        Some(self.issued_at? + SignedDuration::from_secs(self.lifetime_secs? as i64))
    }

    /// The credentials as served now (after `roll`).
    pub fn current_credentials(&self) -> Map<String, Value> {
        let mut c = self.credentials.clone();
        if let Some(Value::String(t)) = c.get("oauth_access_token").cloned() {
            c.insert(
                "oauth_access_token".into(),
                Value::String(format!("{t}-g{}", self.generation)),
            );
        }
        c
    }

    fn to_json(&self, include_credentials: bool) -> Value {
        let fmt = |t: Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string();
        let exp = self.expires_at();
        let lead = SignedDuration::from_secs(self.refresh_lead_secs as i64);
        let mut v = json!({
            "id": self.id, "name": null, "external_id": self.external_id,
            "healthy": self.healthy, "dead": if self.dead { json!(true) } else { Value::Null },
            "app": {"id": format!("app_{}", self.app), "name_slug": self.app, "name": self.app, "auth_type": self.auth_type,
                    "img_src": "https://assets.example.test/app.png", "categories": [], "featured_weight": 1, "scope_profiles": []},
            "created_at": "2024-08-01T04:04:03.000Z", "updated_at": "2024-08-01T04:04:03.000Z",
            "authorized_scopes": [],
            "expires_at": exp.map(fmt), "error": self.error,
            "last_refreshed_at": self.issued_at.filter(|_| self.generation > 1).map(fmt),
            "next_refresh_at": exp.map(|e| fmt(e - lead)),
        });
        if include_credentials && self.credentials_available {
            v["credentials"] = Value::Object(self.current_credentials());
        }
        v
    }
}

/// A fault applied to matching requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FaultKind {
    /// Answer with this status and a JSON error body.
    Status { status: u16 },
    /// Wait this long before answering normally.
    Delay { ms: u64 },
    /// Answer 200 with a truncated JSON body.
    Malformed,
    /// Answer 200 with the other envelope (`{"data": …}` on Connect, bare on API-key paths).
    WrongEnvelope,
    /// Answer 200 with a body that is not JSON at all.
    NotJson,
    /// Answer normally, but send the body in 16-byte chunks `ms` apart.
    SlowBody { ms: u64 },
    /// Answer 429 with `Retry-After: secs`, written as seconds or (`http_date`) as an HTTP date.
    RateLimited { secs: u64, http_date: bool },
}

/// Fault rule: requests whose path contains `path` get `kind`, `count` times (none = until cleared).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    /// Substring of the request path.
    #[serde(default)]
    pub path: String,
    /// What happens.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it applies to.
    #[serde(default)]
    pub count: Option<u32>,
}

/// One logged request. Never holds secrets: no headers, no bodies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Endpoint label (`token`, `connect_account`, `connect_list`, `account`, `account_credentials`).
    pub endpoint: String,
    /// Status answered.
    pub status: u16,
    /// Fake-clock time.
    pub at: String,
    /// Account asked for, if any.
    pub account: Option<String>,
    /// The injected fault or rate limit this request got, if any (`Debug` of its [`FaultKind`], or
    /// `rate limit`).
    #[serde(default)]
    pub fault: Option<String>,
}

#[derive(Default)]
struct Inner {
    clock_offset: SignedDuration,
    clients: HashMap<String, String>,
    api_keys: HashSet<String>,
    token_lifetime: u64,
    tokens: HashMap<String, Timestamp>,
    token_counter: u64,
    accounts: BTreeMap<String, FakeAccount>,
    log: Vec<LoggedRequest>,
    faults: Vec<Fault>,
    rate_limit: Option<(u32, u64)>,
    window: (i64, u32),
}

/// Handle to a running fake (cheap to clone).
#[derive(Clone)]
pub struct FakePipedream {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

/// File format for `--accounts` (and the seed of [`FakePipedream::start_with`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Seed {
    /// OAuth client id → secret.
    pub clients: HashMap<String, String>,
    /// Valid API keys.
    pub api_keys: Vec<String>,
    /// OAuth token lifetime in seconds (default 3600).
    pub token_lifetime_secs: Option<u64>,
    /// Accounts.
    pub accounts: Vec<FakeAccount>,
}

impl FakePipedream {
    /// Start on 127.0.0.1 with an ephemeral port.
    pub async fn start(seed: Seed) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), seed).await
    }

    /// Start on `addr`.
    pub async fn start_on(addr: SocketAddr, seed: Seed) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let me = Self {
            inner: Arc::default(),
            addr,
        };
        {
            let mut i = me.lock();
            i.token_lifetime = seed.token_lifetime_secs.unwrap_or(3600);
            i.clients = seed.clients;
            i.api_keys = seed.api_keys.into_iter().collect();
        }
        for a in seed.accounts {
            me.upsert_account(a);
        }
        let app = router(me.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(me)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fake clock.
    pub fn now(&self) -> Timestamp {
        Timestamp::now() + self.lock().clock_offset
    }

    /// Move the fake clock.
    pub fn advance(&self, d: Duration) {
        self.lock().clock_offset += SignedDuration::try_from(d).unwrap_or_default();
    }

    /// When OAuth access token `token` (as served: `<oauth_access_token>-g<generation>`) expires, on the fake's
    /// clock: the truth a check of what pods hold is judged against. `None` for a value no account issues.
    pub fn token_expiry(&self, token: &str) -> Option<Timestamp> {
        let (base, generation) = token.rsplit_once("-g")?;
        let generation: i64 = generation.parse().ok()?;
        let i = self.lock();
        let a = i.accounts.values().find(|a| {
            a.credentials
                .get("oauth_access_token")
                .and_then(Value::as_str)
                == Some(base)
        })?;
        let life = a.lifetime_secs?;
        let lead = a.refresh_lead_secs.min(life.saturating_sub(1));
        let period = (life - lead).saturating_add(a.refresh_late_secs).max(1) as i64;
        // Generations follow each other every `period` from the current one's issue time (see `roll`).
        let issued = a
            .issued_at?
            .checked_add(SignedDuration::from_secs(
                (generation - a.generation as i64).checked_mul(period)?,
            ))
            .ok()?;
        issued
            .checked_add(SignedDuration::from_secs(life as i64))
            .ok()
    }

    /// Add or replace an account (its credentials are issued now unless `issued_at` is set).
    pub fn upsert_account(&self, mut a: FakeAccount) {
        let now = self.now();
        a.issued_at.get_or_insert(now);
        self.lock().accounts.insert(a.id.clone(), a);
    }

    /// Change an account in place.
    pub fn update_account(&self, id: &str, f: impl FnOnce(&mut FakeAccount)) {
        if let Some(a) = self.lock().accounts.get_mut(id) {
            f(a);
        }
    }

    /// The account as it would be served now.
    pub fn account(&self, id: &str) -> Option<FakeAccount> {
        let now = self.now();
        let mut i = self.lock();
        let a = i.accounts.get_mut(id)?;
        a.roll(now);
        Some(a.clone())
    }

    /// Register (or rotate) an OAuth client's secret. Tokens issued before stay valid until they expire.
    pub fn set_client(&self, id: &str, secret: &str) {
        self.lock().clients.insert(id.into(), secret.into());
    }

    /// Rotate a client secret and revoke every token issued so far (so the old secret's tokens get 401).
    pub fn rotate_client(&self, id: &str, secret: &str) {
        let mut i = self.lock();
        i.clients.insert(id.into(), secret.into());
        i.tokens.clear();
    }

    /// Accept an API key.
    pub fn add_api_key(&self, key: &str) {
        self.lock().api_keys.insert(key.into());
    }

    /// Add a fault rule.
    pub fn add_fault(&self, f: Fault) {
        self.lock().faults.push(f);
    }

    /// Remove every fault rule.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Limit all API requests to `requests` per `window_secs` (429 with `Retry-After` beyond).
    pub fn set_rate_limit(&self, limit: Option<(u32, u64)>) {
        self.lock().rate_limit = limit;
    }

    /// The request log.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// Requests per endpoint label.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.lock().log.iter() {
            *m.entry(r.endpoint.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Requests to one endpoint label.
    pub fn count(&self, endpoint: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }
}

fn err(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({"error": msg}))).into_response()
}

fn router(fake: FakePipedream) -> Router {
    Router::new()
        .route("/v1/oauth/token", post(token))
        .route("/v1/connect/{project}/accounts", get(connect_list))
        .route("/v1/connect/{project}/accounts/{id}", get(connect_retrieve))
        .route("/v1/accounts/{id}", get(key_account))
        .route("/v1/accounts/{id}/credentials", get(key_credentials))
        .route("/_fake/accounts", get(admin_accounts).post(admin_upsert))
        .route("/_fake/requests", get(admin_requests))
        .route("/_fake/stats", get(admin_stats))
        .route("/_fake/clock", post(admin_clock))
        .route(
            "/_fake/faults",
            post(admin_fault).delete(admin_clear_faults),
        )
        .route("/_fake/rate-limit", post(admin_rate_limit))
        .route("/_fake/clients", post(admin_client))
        .fallback(any(|| async {
            err(StatusCode::NOT_FOUND, "record not found")
        }))
        .with_state(fake)
}

/// Log, rate-limit and fault handling around every API endpoint.
async fn guarded(
    fake: &FakePipedream,
    method: &Method,
    uri: &Uri,
    endpoint: &str,
    account: Option<&str>,
    wrong_envelope: impl FnOnce(Value) -> Value,
    handler: impl FnOnce() -> Result<Value, Response>,
) -> Response {
    let now = fake.now();
    let path = uri.path().to_string();
    let mut resp_fault = None;
    let mut limited = None;
    {
        let mut i = fake.lock();
        if let Some((limit, window)) = i.rate_limit {
            let slot = now.as_second() / window.max(1) as i64;
            if i.window.0 != slot {
                i.window = (slot, 0);
            }
            i.window.1 += 1;
            if i.window.1 > limit {
                limited = Some(((slot + 1) * window as i64 - now.as_second()).max(1));
            }
        }
        if limited.is_none()
            && let Some(pos) = i
                .faults
                .iter()
                .position(|f| path.contains(&f.path) && f.count != Some(0))
        {
            let f = &mut i.faults[pos];
            if let Some(c) = f.count.as_mut() {
                *c -= 1;
            }
            resp_fault = Some(f.kind.clone());
        }
    }
    let fault_label = match (&limited, &resp_fault) {
        (Some(_), _) => Some("rate limit".to_string()),
        (None, Some(kind)) => Some(format!("{kind:?}")),
        (None, None) => None,
    };
    let resp = if let Some(secs) = limited {
        let mut r = err(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        r.headers_mut()
            .insert("retry-after", secs.to_string().parse().expect("header"));
        r
    } else {
        match resp_fault {
            Some(FaultKind::Status { status }) => err(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected fault",
            ),
            Some(FaultKind::NotJson) => (StatusCode::OK, "<html>gateway</html>").into_response(),
            Some(FaultKind::RateLimited { secs, http_date }) => {
                let mut r = err(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                let value = if http_date {
                    (Timestamp::now() + SignedDuration::from_secs(secs as i64))
                        .strftime("%a, %d %b %Y %H:%M:%S GMT")
                        .to_string()
                } else {
                    secs.to_string()
                };
                r.headers_mut()
                    .insert("retry-after", value.parse().expect("header"));
                r
            }
            other => {
                if let Some(FaultKind::Delay { ms }) = other {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                match handler() {
                    Ok(v) => match other {
                        Some(FaultKind::Malformed) => {
                            let s = v.to_string();
                            (StatusCode::OK, s[..s.len() / 2].to_string()).into_response()
                        }
                        Some(FaultKind::WrongEnvelope) => {
                            axum::Json(wrong_envelope(v)).into_response()
                        }
                        Some(FaultKind::SlowBody { ms }) => {
                            let bytes = v.to_string().into_bytes();
                            let chunks: Vec<Bytes> =
                                bytes.chunks(16).map(Bytes::copy_from_slice).collect();
                            let stream = futures::stream::iter(chunks).then(move |c| async move {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                Ok::<_, std::convert::Infallible>(c)
                            });
                            (
                                [("content-type", "application/json")],
                                axum::body::Body::from_stream(stream),
                            )
                                .into_response()
                        }
                        _ => axum::Json(v).into_response(),
                    },
                    Err(r) => r,
                }
            }
        }
    };
    fake.lock().log.push(LoggedRequest {
        method: method.to_string(),
        path,
        endpoint: endpoint.into(),
        status: resp.status().as_u16(),
        at: now.to_string(),
        account: account.map(str::to_string),
        fault: fault_label,
    });
    resp
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn token(
    State(fake): State<FakePipedream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let parsed: Option<TokenRequest> = if form {
        serde_urlencoded::from_bytes(&body).ok()
    } else {
        serde_json::from_slice(&body).ok()
    };
    guarded(&fake, &method, &uri, "token", None, |v| v, || {
        let Some(req) = parsed else { return Err(err(StatusCode::BAD_REQUEST, "invalid body")) };
        if req.grant_type.as_deref() != Some("client_credentials") {
            return Err(err(StatusCode::BAD_REQUEST, "unsupported grant_type"));
        }
        let mut i = fake.lock();
        let ok = req.client_id.as_ref().and_then(|id| i.clients.get(id)) == req.client_secret.as_ref()
            && req.client_secret.is_some();
        if !ok {
            return Err((StatusCode::UNAUTHORIZED, axum::Json(json!({}))).into_response());
        }
        i.token_counter += 1;
        let tok = format!("pdtok-{}", i.token_counter);
        let life = i.token_lifetime;
        let exp = Timestamp::now() + i.clock_offset + SignedDuration::from_secs(life as i64);
        i.tokens.insert(tok.clone(), exp);
        Ok(json!({"access_token": tok, "token_type": "Bearer", "expires_in": life, "created_at": Timestamp::now().as_second()}))
    })
    .await
}

/// Who the bearer is: an OAuth token (valid on the fake clock) or an API key.
fn bearer_ok(fake: &FakePipedream, headers: &HeaderMap, allow_api_key: bool) -> bool {
    let Some(b) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let now = fake.now();
    let i = fake.lock();
    i.tokens.get(b).is_some_and(|exp| *exp > now) || (allow_api_key && i.api_keys.contains(b))
}

/// The `x-pd-environment` header, lower-cased (the header is case-insensitive in Pipedream's docs).
fn environment(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-pd-environment")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
}

fn include_credentials(q: &HashMap<String, String>) -> bool {
    matches!(
        q.get("include_credentials").map(String::as_str),
        Some("true" | "1")
    )
}

async fn connect_retrieve(
    State(fake): State<FakePipedream>,
    Path((project, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let env = environment(&headers);
    let authed = bearer_ok(&fake, &headers, false);
    let acct = fake.account(&id);
    guarded(
        &fake,
        &method,
        &uri,
        "connect_account",
        Some(&id),
        |v| json!({"data": v}),
        || {
            if !authed {
                return Err(err(StatusCode::UNAUTHORIZED, "Unauthorized"));
            }
            match acct {
                Some(a)
                    if a.project_id == project
                        && env.as_deref() == Some(a.environment.as_str()) =>
                {
                    Ok(a.to_json(include_credentials(&q)))
                }
                _ => Err(err(StatusCode::NOT_FOUND, "record not found")),
            }
        },
    )
    .await
}

async fn connect_list(
    State(fake): State<FakePipedream>,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let env = environment(&headers);
    let authed = bearer_ok(&fake, &headers, false);
    let ids: Vec<String> = fake.lock().accounts.keys().cloned().collect();
    let all: Vec<FakeAccount> = ids.iter().filter_map(|id| fake.account(id)).collect();
    guarded(&fake, &method, &uri, "connect_list", None, |v| v, || {
        if !authed {
            return Err(err(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
        let app = q.get("app").or_else(|| q.get("app_id"));
        let filtered: Vec<&FakeAccount> = all
            .iter()
            .filter(|a| a.project_id == project && env.as_deref() == Some(a.environment.as_str()))
            .filter(|a| q.get("external_user_id").is_none_or(|e| a.external_id.as_ref() == Some(e)))
            .filter(|a| app.is_none_or(|x| &a.app == x))
            .collect();
        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10).clamp(1, 100);
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let after = q.get("after").and_then(|c| b64.decode(c).ok()).and_then(|b| String::from_utf8(b).ok());
        let start = after.map(|id| filtered.iter().position(|a| a.id == id).map_or(filtered.len(), |p| p + 1)).unwrap_or(0);
        let page: Vec<Value> = filtered.iter().skip(start).take(limit).map(|a| a.to_json(include_credentials(&q))).collect();
        let cursor = |v: Option<&Value>| v.and_then(|a| a["id"].as_str()).map(|id| b64.encode(id));
        Ok(json!({"data": page, "page_info": {"total_count": filtered.len(), "count": page.len(),
            "start_cursor": cursor(page.first()), "end_cursor": cursor(page.last())}}))
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn key_read(
    fake: FakePipedream,
    id: String,
    q: HashMap<String, String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    endpoint: &str,
    force_creds: bool,
) -> Response {
    let authed = bearer_ok(&fake, &headers, true);
    let acct = fake.account(&id);
    guarded(
        &fake,
        &method,
        &uri,
        endpoint,
        Some(&id),
        |v| v["data"].clone(),
        || {
            if !authed {
                return Err(err(StatusCode::UNAUTHORIZED, "Unauthorized"));
            }
            match acct {
                Some(a) => Ok(json!({"data": a.to_json(force_creds || include_credentials(&q))})),
                None => Err(err(StatusCode::NOT_FOUND, "record not found")),
            }
        },
    )
    .await
}

async fn key_account(
    State(fake): State<FakePipedream>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    key_read(fake, id, q, method, uri, headers, "account", false).await
}

async fn key_credentials(
    State(fake): State<FakePipedream>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    key_read(
        fake,
        id,
        q,
        method,
        uri,
        headers,
        "account_credentials",
        true,
    )
    .await
}

async fn admin_accounts(State(fake): State<FakePipedream>) -> Response {
    let ids: Vec<String> = fake.lock().accounts.keys().cloned().collect();
    axum::Json(
        ids.iter()
            .filter_map(|id| fake.account(id))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn admin_upsert(
    State(fake): State<FakePipedream>,
    axum::Json(a): axum::Json<FakeAccount>,
) -> Response {
    fake.upsert_account(a);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_requests(State(fake): State<FakePipedream>) -> Response {
    axum::Json(fake.requests()).into_response()
}

async fn admin_stats(State(fake): State<FakePipedream>) -> Response {
    axum::Json(json!({"counts": fake.counts(), "now": fake.now().to_string()})).into_response()
}

#[derive(Deserialize)]
struct Advance {
    advance_secs: u64,
}

async fn admin_clock(
    State(fake): State<FakePipedream>,
    axum::Json(a): axum::Json<Advance>,
) -> Response {
    fake.advance(Duration::from_secs(a.advance_secs));
    axum::Json(json!({"now": fake.now().to_string()})).into_response()
}

async fn admin_fault(
    State(fake): State<FakePipedream>,
    axum::Json(f): axum::Json<Fault>,
) -> Response {
    fake.add_fault(f);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_clear_faults(State(fake): State<FakePipedream>) -> Response {
    fake.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct RateLimitBody {
    requests: Option<u32>,
    window_secs: Option<u64>,
}

async fn admin_rate_limit(
    State(fake): State<FakePipedream>,
    axum::Json(r): axum::Json<RateLimitBody>,
) -> Response {
    fake.set_rate_limit(r.requests.map(|n| (n, r.window_secs.unwrap_or(60))));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ClientBody {
    client_id: String,
    client_secret: String,
    #[serde(default)]
    revoke_tokens: bool,
}

async fn admin_client(
    State(fake): State<FakePipedream>,
    axum::Json(c): axum::Json<ClientBody>,
) -> Response {
    if c.revoke_tokens {
        fake.rotate_client(&c.client_id, &c.client_secret);
    } else {
        fake.set_client(&c.client_id, &c.client_secret);
    }
    StatusCode::NO_CONTENT.into_response()
}
