//! A Kubernetes API emulator on loopback, faithful enough for kube-rs and the real `kubectl`: discovery, CRDs
//! with schema + CEL admission, list/watch with resourceVersions, bookmarks and 410 Gone, get/create/replace/
//! merge-patch/JSON-patch/server-side apply, status subresource and generation, finalizers, ownerReference
//! garbage collection, server-side tables, metadata-only lists, fault injection and an audit of (verb, resource).

mod catalog;
mod openapi;
mod rbac;
mod select;
mod store;
mod table;
mod validate;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;

pub use catalog::Kind;
use select::{FieldSelector, LabelSelector};
pub use store::{ApiError, Store};

/// A fault for requests matching `verb` and `resource` (e.g. `patch`, `secrets`; empty matches all).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiFault {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, or empty for any.
    pub verb: String,
    /// Resource plural, optionally with `/status`; empty for any.
    pub resource: String,
    /// Answer with this HTTP status.
    pub status: Option<u16>,
    /// Delay before answering.
    pub latency_ms: Option<u64>,
    /// For watches: end the stream after this long.
    pub drop_watch_after_ms: Option<u64>,
    /// How many requests it applies to (none: until cleared).
    pub count: Option<u32>,
}

#[derive(Default)]
struct Extra {
    faults: Vec<ApiFault>,
    audit: BTreeSet<(String, String)>,
    /// (user, verb, group, resource) — the user is the bearer token of the request.
    audit_by_user: BTreeSet<(String, String, String, String)>,
    counts: std::collections::BTreeMap<(String, String), u64>,
    /// Service-account users are authorized by the stored RBAC objects (`enforce_rbac`).
    enforce_rbac: bool,
}

/// Handle to a running emulator.
#[derive(Clone)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    extra: Arc<Mutex<Extra>>,
    addr: SocketAddr,
    bookmark_interval: Duration,
}

impl ApiServer {
    /// Start on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Start on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let me = Self {
            store: Arc::new(Mutex::new(Store::new())),
            extra: Arc::default(),
            addr,
            bookmark_interval: Duration::from_secs(5),
        };
        let app = Router::new()
            .route("/version", get(|| async { axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-emulator", "platform": "linux/amd64"})) }))
            .route("/_emulator/faults", post(add_fault).delete(clear_faults))
            .route("/_emulator/compact", post(compact))
            .route("/_emulator/audit", get(audit))
            .fallback(any(handle))
            .with_state(me.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(me)
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for("emulator")
    }

    /// A kubeconfig whose requests are attributed to `user` in the audit.
    pub fn kubeconfig_for(&self, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\nusers:\n- name: emulator\n  user:\n    token: {}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: default\ncurrent-context: emulator\n",
            self.url(),
            user
        )
    }

    /// Write the kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Apply (create or replace) every `*.yaml` CRD in `dir`; returns how many.
    pub fn apply_crd_dir(&self, dir: &Path) -> Result<usize, String> {
        let mut n = 0;
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.path());
        for e in entries.iter().filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
        }) {
            let text = std::fs::read_to_string(e.path())
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
            let crd: Value = serde_saphyr::from_str(&text)
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
            let name = crd["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let body = serde_json::to_vec(&crd).map_err(|err| err.to_string())?;
            self.with_store(|st| {
                st.patch(
                    "apiextensions.k8s.io",
                    "customresourcedefinitions",
                    "",
                    &name,
                    "application/apply-patch+yaml",
                    &body,
                    "kube-emulator",
                    true,
                    false,
                )
            })
            .map_err(|err| format!("{}: {}", e.path().display(), err.message))?;
            n += 1;
        }
        Ok(n)
    }

    /// Direct access to the store (tests).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.store.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Authorize service-account users (`system:serviceaccount:<ns>:<name>` bearer tokens) by the stored Roles,
    /// ClusterRoles and bindings; other users stay unrestricted administrators.
    pub fn enforce_rbac(&self, on: bool) {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enforce_rbac = on;
    }

    /// Add a fault.
    pub fn add_fault(&self, f: ApiFault) {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .faults
            .push(f);
    }

    /// Remove all faults.
    pub fn clear_faults(&self) {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .faults
            .clear();
    }

    /// Every (verb, resource) requested so far.
    pub fn audit(&self) -> BTreeSet<(String, String)> {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .audit
            .clone()
    }

    /// Every (verb, group, resource) that requests authenticated as `user` made.
    pub fn audit_of(&self, user: &str) -> BTreeSet<(String, String, String)> {
        let x = self.extra.lock().unwrap_or_else(|p| p.into_inner());
        x.audit_by_user
            .iter()
            .filter(|a| a.0 == user)
            .map(|(_, v, g, r)| (v.clone(), g.clone(), r.clone()))
            .collect()
    }

    /// How many requests of `verb` on `resource` were made.
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Get an object as JSON (`group` "" for core).
    pub fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.with_store(|s| {
            let kind = s
                .kinds()
                .into_iter()
                .find(|k| k.group == group && k.plural == plural)?;
            s.get(&kind, ns, name).ok()
        })
    }

    fn take_fault(&self, verb: &str, resource: &str) -> Option<ApiFault> {
        let mut x = self.extra.lock().unwrap_or_else(|p| p.into_inner());
        x.audit.insert((verb.to_string(), resource.to_string()));
        *x.counts
            .entry((verb.to_string(), resource.to_string()))
            .or_insert(0) += 1;
        let pos = x.faults.iter().position(|f| {
            (f.verb.is_empty() || f.verb == verb)
                && (f.resource.is_empty() || f.resource == resource)
                && f.count != Some(0)
        })?;
        let f = &mut x.faults[pos];
        if let Some(c) = f.count.as_mut() {
            *c -= 1;
        }
        Some(f.clone())
    }
}

async fn add_fault(State(s): State<ApiServer>, axum::Json(f): axum::Json<ApiFault>) -> StatusCode {
    s.add_fault(f);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(s): State<ApiServer>) -> StatusCode {
    s.clear_faults();
    StatusCode::NO_CONTENT
}

async fn compact(State(s): State<ApiServer>) -> StatusCode {
    s.with_store(Store::compact);
    StatusCode::NO_CONTENT
}

async fn audit(State(s): State<ApiServer>) -> axum::Json<Vec<Value>> {
    let x = s.extra.lock().unwrap_or_else(|p| p.into_inner());
    axum::Json(
        x.audit_by_user
            .iter()
            .map(|(u, v, g, r)| json!({"user": u, "verb": v, "group": g, "resource": r}))
            .collect(),
    )
}

fn json_response(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

/// What kube-apiserver answers for a path under `/apis` that no group, version or resource serves: its HTTP mux's
/// plain-text 404, not a `Status` (under `/api` it is a `Status`).
fn page_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

fn not_found_under(path: &str) -> Response {
    if path.starts_with("/apis") || !path.starts_with("/api/") {
        page_not_found()
    } else {
        error(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ))
    }
}

/// Parsed request path.
struct Route {
    group: String,
    version: String,
    ns: String,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

enum Parsed {
    Root(&'static str),
    Group(String),
    GroupVersion(String, String),
    Resource(Route),
}

fn parse(path: &str) -> Option<Parsed> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Some(Parsed::Root("api")),
        ["apis"] => return Some(Parsed::Root("apis")),
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g] => return Some(Parsed::Group(g.to_string())),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let route = |ns: &str, plural: &str, name: Option<&&str>, sub: Option<&&str>| Route {
        group: group.clone(),
        version: version.clone(),
        ns: ns.to_string(),
        plural: plural.to_string(),
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    };
    Some(match rest {
        [] => Parsed::GroupVersion(group.clone(), version.clone()),
        ["namespaces", name] if group.is_empty() => {
            Parsed::Resource(route("", "namespaces", Some(name), None))
        }
        ["namespaces", name, sub]
            if group.is_empty() && (*sub == "status" || *sub == "finalize") =>
        {
            Parsed::Resource(route("", "namespaces", Some(name), Some(sub)))
        }
        ["namespaces", ns, plural, more @ ..] => {
            Parsed::Resource(route(ns, plural, more.first(), more.get(1)))
        }
        [plural, more @ ..] => Parsed::Resource(route("", plural, more.first(), more.get(1))),
    })
}

async fn handle(
    State(s): State<ApiServer>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path().trim_end_matches('/') == "/openapi/v2" {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if accept.contains("protobuf") {
            return (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )],
                openapi::v2_protobuf(),
            )
                .into_response();
        }
        let kinds = s.with_store(|st| st.kinds());
        return json_response(200, &openapi::v2_json(&kinds));
    }
    if let Some(rest) = uri.path().strip_prefix("/openapi/v3") {
        let kinds = s.with_store(|st| st.kinds());
        let rest = rest.trim_matches('/');
        let doc = if rest.is_empty() {
            Some(openapi::root(&kinds))
        } else {
            openapi::group_version(&kinds, rest)
        };
        return match doc {
            Some(d) => json_response(200, &d),
            None => error(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        };
    }
    let Some(parsed) = parse(uri.path()) else {
        return not_found_under(uri.path());
    };
    match parsed {
        Parsed::Root(r) => discovery_root(&s, r),
        Parsed::Group(g) => {
            let kinds = s.with_store(|st| st.kinds());
            match kinds.iter().find(|k| k.group == g) {
                Some(k) => json_response(200, &group_json(&k.group, &k.version)),
                None => page_not_found(),
            }
        }
        Parsed::GroupVersion(g, v) => {
            let kinds: Vec<Kind> = s
                .with_store(|st| st.kinds())
                .into_iter()
                .filter(|k| k.group == g && k.version == v)
                .collect();
            if kinds.is_empty() {
                return if g.is_empty() {
                    not_found_under("/api/")
                } else {
                    page_not_found()
                };
            }
            let resources: Vec<Value> = kinds.iter().flat_map(Kind::discovery).collect();
            let gv = if g.is_empty() { v } else { format!("{g}/{v}") };
            json_response(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            )
        }
        Parsed::Resource(r) => resource(s, method, r, q, headers, body).await,
    }
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv], "preferredVersion": gv})
}

fn discovery_root(s: &ApiServer, which: &str) -> Response {
    if which == "api" {
        return json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": s.addr.to_string()}]}),
        );
    }
    let mut groups: Vec<(String, String)> = s
        .with_store(|st| st.kinds())
        .into_iter()
        .filter(|k| !k.group.is_empty())
        .map(|k| (k.group, k.version))
        .collect();
    groups.dedup();
    let groups: Vec<Value> = groups.iter().map(|(g, v)| group_json(g, v)).collect();
    json_response(
        200,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

fn verb_of(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn metadata_only(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

async fn resource(
    s: ApiServer,
    method: Method,
    r: Route,
    q: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = verb_of(&method, r.name.is_some(), watch);
    let audit_resource = match &r.sub {
        Some(sub) => format!("{}/{sub}", r.plural),
        None => r.plural.clone(),
    };
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("anonymous")
        .to_string();
    let enforce = {
        let mut extra = s.extra.lock().unwrap_or_else(|p| p.into_inner());
        extra.audit_by_user.insert((
            user.clone(),
            verb.to_string(),
            r.group.clone(),
            audit_resource.clone(),
        ));
        extra.enforce_rbac
    };
    if enforce {
        let req = rbac::Request {
            user: &user,
            verb,
            group: &r.group,
            resource: &r.plural,
            subresource: r.sub.as_deref(),
            namespace: &r.ns,
            name: r.name.as_deref(),
        };
        if let Err(e) = s.with_store(|st| rbac::authorize(st, &req)) {
            return error(&e);
        }
    }
    let fault = s.take_fault(verb, &audit_resource);
    if let Some(ms) = fault.as_ref().and_then(|f| f.latency_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if verb == "watch" && fault.as_ref().and_then(|f| f.status) == Some(410) {
        // Like a real API server: an expired resourceVersion is a 200 stream with one ERROR event.
        let gone = ApiError::new(410, "Expired", "too old resource version (injected)");
        let line = format!("{}\n", json!({"type": "ERROR", "object": gone.status()}));
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            line,
        )
            .into_response();
    }
    if let Some(code) = fault.as_ref().and_then(|f| f.status) {
        return error(&ApiError::new(
            code,
            if code == 410 {
                "Expired"
            } else {
                "InternalError"
            },
            format!("injected fault ({code})"),
        ));
    }
    let Some(kind) = s.with_store(|st| st.kind(&r.group, &r.version, &r.plural)) else {
        return if r.group.is_empty() {
            not_found_under("/api/")
        } else {
            page_not_found()
        };
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|u| u.split('/').next())
            .unwrap_or("unknown")
            .to_string()
    });
    let status = r.sub.as_deref() == Some("status");
    let ns = r.ns.clone();
    let strict = q.get("fieldValidation").map(String::as_str) == Some("Strict");
    s.with_store(|st| st.strict = strict);
    // DeleteOptions may carry it in the body (`{"dryRun": ["All"]}`), as kube-rs and client-go send it.
    let body_dry_run = method == Method::DELETE
        && serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|o| o["dryRun"].as_array().cloned())
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let dry_run = match q.get("dryRun").map(String::as_str) {
        _ if body_dry_run => true,
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return error(&ApiError::new(
                400,
                "BadRequest",
                format!("Invalid dryRun value: {other:?}: valid values are \"All\""),
            ));
        }
    };
    // A write: with dryRun=All it runs against a snapshot that is then restored, so admission, defaulting,
    // conflicts and the response are real and nothing persists or reaches a watcher.
    let warnings = std::cell::RefCell::new(Vec::new());
    let write = |f: &mut dyn FnMut(&mut Store) -> Result<Value, ApiError>| {
        s.with_store(|st| {
            st.warnings.clear();
            let out = if dry_run {
                let snapshot = st.clone();
                st.dry_run = true;
                let out = f(st);
                *st = snapshot;
                out
            } else {
                f(st)
            };
            warnings
                .borrow_mut()
                .extend(std::mem::take(&mut st.warnings));
            out
        })
    };
    let mut response = match (method.as_str(), &r.name) {
        ("GET", None) if watch => watch_stream(
            &s,
            &kind,
            &ns,
            &q,
            &accept,
            fault.and_then(|f| f.drop_watch_after_ms),
        ),
        ("GET", None) => list(&s, &kind, &ns, &q, &accept),
        ("GET", Some(name)) => match s.with_store(|st| st.get(&kind, &ns, name)) {
            Ok(v) if accept.contains("as=Table") => {
                json_response(200, &table::table(&kind, &[v], s.with_store(|st| st.rv())))
            }
            Ok(v) if accept.contains("as=PartialObjectMetadata") => {
                json_response(200, &metadata_only(&v))
            }
            Ok(v) => json_response(200, &v),
            Err(e) => error(&e),
        },
        ("POST", None) => {
            let obj = match parse_body(&body) {
                Ok(v) => v,
                Err(e) => return error(&e),
            };
            let mut obj = Some(obj);
            respond(
                write(&mut |st| {
                    st.create(
                        &kind.group,
                        &kind.plural,
                        &ns,
                        obj.take().unwrap_or_default(),
                        &manager,
                    )
                }),
                201,
            )
        }
        ("PUT", Some(name)) => {
            let obj = match parse_body(&body) {
                Ok(v) => v,
                Err(e) => return error(&e),
            };
            let mut obj = Some(obj);
            respond(
                write(&mut |st| {
                    let obj = obj.take().unwrap_or_default();
                    st.replace(&kind.group, &kind.plural, &ns, name, obj, status, &manager)
                }),
                200,
            )
        }
        ("PATCH", Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/merge-patch+json")
                .to_string();
            let force = matches!(q.get("force").map(String::as_str), Some("true" | "1"));
            let existed = s.with_store(|st| st.get(&kind, &ns, name).is_ok());
            let res = write(&mut |st| {
                st.patch(
                    &kind.group,
                    &kind.plural,
                    &ns,
                    name,
                    &ct,
                    &body,
                    &manager,
                    force,
                    status,
                )
            });
            respond(res, if existed { 200 } else { 201 })
        }
        ("DELETE", Some(name)) => {
            let opts: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let orphan = opts["propagationPolicy"] == json!("Orphan")
                || q.get("propagationPolicy").map(String::as_str) == Some("Orphan");
            respond(
                write(&mut |st| st.delete(&kind.group, &kind.plural, &ns, name, orphan)),
                200,
            )
        }
        _ => error(&ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    };
    // As the API server sends them: `299 - "<text>"`, one header per warning.
    for w in warnings.take() {
        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - {w:?}")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// A request body: JSON, or YAML (which kubectl may send).
fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_str(&String::from_utf8_lossy(body)))
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid body: {e}")))
}

fn respond(r: Result<Value, ApiError>, code: u16) -> Response {
    match r {
        Ok(v) => json_response(code, &v),
        Err(e) => error(&e),
    }
}

fn selectors(
    q: &HashMap<String, String>,
    kind: &Kind,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let l = LabelSelector::parse(
        q.get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::new(400, "BadRequest", e))?;
    let f = FieldSelector::parse(
        q.get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::new(400, "BadRequest", e))?;
    f.check_supported(kind)
        .map_err(|e| ApiError::new(400, "BadRequest", e))?;
    Ok((l, f))
}

/// `ListOptions` the API server refuses: 422 Invalid naming the field, as kube-apiserver's validation answers.
fn invalid_list_options(message: &str) -> ApiError {
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: {message}"),
    );
    e.causes = vec![("resourceVersionMatch".into(), message.into())];
    e.details = Some(Box::new((
        "meta.k8s.io".into(),
        "ListOptions".into(),
        String::new(),
    )));
    e
}

/// `resourceVersion` / `resourceVersionMatch` of a list. The emulator keeps no history: `Exact` works only at the
/// current version (older is 410, as for a compacted version); `NotOlderThan` a version not reached yet is 504, as
/// the API server answers after waiting for it.
fn list_version_check(q: &HashMap<String, String>, current: u64) -> Result<(), ApiError> {
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let m = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    if m.is_empty() {
        return Ok(());
    }
    if rv.is_empty() {
        return Err(invalid_list_options(
            "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    let wanted: Option<u64> = rv.parse().ok();
    match (m, wanted) {
        ("Exact" | "NotOlderThan", None) => Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "invalid resource version: resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
            ),
        )),
        ("Exact", Some(0)) => Err(invalid_list_options(
            "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        )),
        ("Exact" | "NotOlderThan", Some(v)) if v > current => Err(ApiError::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {v}, current: {current}"),
        )),
        ("Exact", Some(v)) if v < current => Err(ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {v} ({current})"),
        )),
        ("Exact" | "NotOlderThan", Some(_)) => Ok(()),
        (other, _) => Err(invalid_list_options(&format!(
            "Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
        ))),
    }
}

fn list(
    s: &ApiServer,
    kind: &Kind,
    ns: &str,
    q: &HashMap<String, String>,
    accept: &str,
) -> Response {
    let (ls, fs) = match selectors(q, kind) {
        Ok(x) => x,
        Err(e) => return error(&e),
    };
    let (items, rv) = s.with_store(|st| (st.list(kind, ns), st.rv()));
    if let Err(e) = list_version_check(q, rv) {
        return error(&e);
    }
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| ls.matches(o) && fs.matches(o))
        .collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let start: usize = q
        .get("continue")
        .and_then(|c| b64.decode(c).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let next = (start.saturating_add(limit) < items.len())
        .then(|| b64.encode((start + limit).to_string()));
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = next {
        meta["continue"] = json!(c);
        meta["remainingItemCount"] = json!(items.len() - start - limit);
    }
    if accept.contains("as=Table") {
        // kubectl's chunked `get` follows the Table's own `metadata.continue`.
        let mut t = table::table(kind, &page, rv);
        t["metadata"] = meta;
        return json_response(200, &t);
    }
    if accept.contains("as=PartialObjectMetadataList") {
        let items: Vec<Value> = page.iter().map(metadata_only).collect();
        return json_response(
            200,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
        );
    }
    json_response(
        200,
        &json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(), "metadata": meta, "items": page}),
    )
}

fn watch_stream(
    s: &ApiServer,
    kind: &Kind,
    ns: &str,
    q: &HashMap<String, String>,
    accept: &str,
    drop_after: Option<u64>,
) -> Response {
    let (ls, fs) = match selectors(q, kind) {
        Ok(x) => x,
        Err(e) => return error(&e),
    };
    let meta_only = accept.contains("as=PartialObjectMetadata");
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from: Option<u64> = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0);
    // A streaming list (WatchList): every current object as ADDED, then a bookmark marked as the end of the
    // initial events, then changes, as the API server does since 1.32.
    let initial_events = matches!(
        q.get("sendInitialEvents").map(String::as_str),
        Some("true" | "1")
    );
    let (mut sub, backlog, current, initial) = s.with_store(|st| {
        let sub = st.subscribe();
        let backlog = match from {
            Some(rv) if !initial_events => st.since(rv),
            _ => Some(vec![]),
        };
        let initial = if initial_events {
            st.list(kind, ns)
        } else {
            Vec::new()
        };
        (sub, backlog, st.rv(), initial)
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let kind = kind.clone();
    let ns = ns.to_string();
    let interval = s.bookmark_interval;
    let line = |type_: &str, obj: &Value| {
        let mut l = json!({"type": type_, "object": obj}).to_string();
        l.push('\n');
        Bytes::from(l)
    };
    tokio::spawn(async move {
        let Some(backlog) = backlog else {
            let gone = ApiError::new(
                410,
                "Expired",
                format!(
                    "too old resource version: {} ({current})",
                    from.unwrap_or(0)
                ),
            );
            let _ = tx.send(line("ERROR", &gone.status())).await;
            return;
        };
        let matches = |c: &store::Change| {
            c.resource == (kind.group.clone(), kind.plural.clone())
                && (ns.is_empty() || c.namespace == ns)
                && ls.matches(&c.object)
                && fs.matches(&c.object)
        };
        let render = |o: &Value| {
            if meta_only {
                metadata_only(o)
            } else {
                o.clone()
            }
        };
        let mut last = from.unwrap_or(current);
        if initial_events {
            last = current;
            for o in initial.iter().filter(|o| ls.matches(o) && fs.matches(o)) {
                if tx.send(line("ADDED", &render(o))).await.is_err() {
                    return;
                }
            }
            let end = json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": {
                "resourceVersion": last.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(line("BOOKMARK", &end)).await.is_err() {
                return;
            }
        }
        for c in backlog.iter().filter(|c| matches(c)) {
            if tx.send(line(c.type_, &render(&c.object))).await.is_err() {
                return;
            }
            last = last.max(c.rv);
        }
        let deadline = tokio::time::Instant::now()
            + drop_after
                .map(Duration::from_millis)
                .unwrap_or(timeout)
                .min(timeout);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        // Like the API server's watch cache: a bookmark roughly every interval, and one just before the watch
        // times out (2 s before its deadline), so the client resumes from the latest version.
        let before_timeout = tokio::time::sleep_until(
            deadline
                .checked_sub(Duration::from_secs(2))
                .unwrap_or(deadline)
                .max(tokio::time::Instant::now()),
        );
        tokio::pin!(before_timeout);
        let mut final_sent = drop_after.is_some();
        let bookmark = |last: u64| json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": {"resourceVersion": last.to_string()}});
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(line("BOOKMARK", &bookmark(last))).await.is_err() { return; }
                }
                _ = &mut before_timeout, if bookmarks && !final_sent => {
                    final_sent = true;
                    if tx.send(line("BOOKMARK", &bookmark(last))).await.is_err() { return; }
                }
                msg = sub.recv() => match msg {
                    Ok(c) => {
                        if c.rv <= last { continue; }
                        last = c.rv;
                        if matches(&c) && tx.send(line(c.type_, &render(&c.object))).await.is_err() { return; }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::new(410, "Expired", "watch fell behind");
                        let _ = tx.send(line("ERROR", &gone.status())).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
