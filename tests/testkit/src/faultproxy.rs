//! A fault-injecting reverse proxy in front of a real API server: plain HTTP on loopback towards the client, TLS
//! towards the API server, every header (the client's bearer token included) passed through. It takes the same
//! faults as the emulator ([`ApiFault`], also over HTTP at `/_emulator/faults`): answers with a status, added
//! latency, watches that end after a while, a `410 Gone` watch event. [`FaultProxy::partition`] cuts the client
//! off entirely (open watches end, every request fails), as a network partition of one replica would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use futures::StreamExt;
use serde_json::json;

use crate::apiserver::ApiFault;

/// Headers that describe one hop, not the message.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

struct Shared {
    upstream: String,
    http: reqwest::Client,
    faults: Mutex<Vec<ApiFault>>,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    /// (when, verb, path) of every request a fault was applied to.
    faulted: Mutex<Vec<(jiff::Timestamp, String, String)>>,
    partitioned: std::sync::atomic::AtomicBool,
    /// Bumped to end every open watch.
    cut: tokio::sync::watch::Sender<u64>,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listen on an ephemeral loopback port and forward to `upstream` (`https://…`), trusting `ca_pem` only.
    pub async fn start(upstream: &str, ca_pem: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: crate::controlplane::http_client(ca_pem),
            faults: Mutex::default(),
            counts: Mutex::default(),
            faulted: Mutex::default(),
            partitioned: Default::default(),
            cut: tokio::sync::watch::channel(0).0,
        });
        let app = Router::new()
            .route("/_emulator/faults", post(add_fault).delete(clear_faults))
            .fallback(any(forward))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig through this proxy with a bearer token.
    pub fn kubeconfig(&self, token: &str, namespace: Option<&str>) -> String {
        crate::controlplane::kubeconfig(&self.url(), None, token, namespace)
    }

    /// Add a fault.
    pub fn add_fault(&self, f: ApiFault) {
        lock(&self.shared.faults).push(f);
    }

    /// Remove every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Cut the client off (`true`): open watches end and every request is answered 503 before reaching the API
    /// server, as if the network between them were down. `false` heals it.
    pub fn partition(&self, on: bool) {
        self.shared
            .partitioned
            .store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            self.shared.cut.send_modify(|g| *g += 1);
        }
    }

    /// End every open watch now (clients re-watch).
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// (when, verb, path) of every request a fault was applied to, in order.
    pub fn faulted(&self) -> Vec<(jiff::Timestamp, String, String)> {
        lock(&self.shared.faulted).clone()
    }

    /// Requests forwarded or failed so far, by (verb, resource[/subresource]).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        lock(&self.shared.counts).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn add_fault(
    State(s): State<Arc<Shared>>,
    axum::Json(f): axum::Json<ApiFault>,
) -> StatusCode {
    lock(&s.faults).push(f);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.faults).clear();
    StatusCode::NO_CONTENT
}

/// The Kubernetes verb and resource of a request, as the API server's audit names them.
pub fn classify(method: &Method, path: &str, query: &str) -> (&'static str, String) {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match seg.first() {
        Some(&"api") if seg.len() > 2 => &seg[2..],
        Some(&"apis") if seg.len() > 3 => &seg[3..],
        _ => return ("", String::new()),
    };
    let (mut watch, rest) = match rest.first() {
        Some(&"watch") => (true, &rest[1..]),
        _ => (false, rest),
    };
    // `namespaces/{ns}/…` scopes a resource, except a namespace's own subresources.
    let own_sub = rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    let rest = if rest.len() > 2 && rest[0] == "namespaces" && !own_sub {
        &rest[2..]
    } else {
        rest
    };
    let plural = rest.first().copied().unwrap_or_default();
    let named = rest.len() > 1;
    watch |= query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    };
    let resource = match rest.get(2) {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_string(),
    };
    (verb, resource)
}

fn take_fault(s: &Shared, verb: &str, resource: &str) -> Option<ApiFault> {
    *lock(&s.counts)
        .entry((verb.to_string(), resource.to_string()))
        .or_insert(0) += 1;
    let mut faults = lock(&s.faults);
    let f = faults.iter_mut().find(|f| {
        (f.verb.is_empty() || f.verb == verb)
            && (f.resource.is_empty() || f.resource == resource)
            && f.count != Some(0)
    })?;
    if let Some(c) = f.count.as_mut() {
        *c -= 1;
    }
    Some(f.clone())
}

/// A `Status` answer like the API server's.
fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn copy_headers(from: &HeaderMap, skip_length: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in from {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || (skip_length && name == "content-length") {
            continue;
        }
        if let Ok(k) = HeaderName::from_bytes(k.as_ref()) {
            out.append(k, v.clone());
        }
    }
    out
}

async fn forward(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let (verb, resource) = classify(&parts.method, &path, &query);
    if s.partitioned.load(std::sync::atomic::Ordering::SeqCst) {
        return status(503, "ServiceUnavailable", "partitioned (fault proxy)");
    }
    let fault = take_fault(&s, verb, &resource);
    if fault.is_some() {
        lock(&s.faulted).push((jiff::Timestamp::now(), verb.to_string(), path.clone()));
    }
    if let Some(ms) = fault.as_ref().and_then(|f| f.latency_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fault_status = fault.as_ref().and_then(|f| f.status);
    if verb == "watch" && fault_status == Some(410) {
        // What a real API server sends for an expired resourceVersion: a 200 stream with one ERROR event.
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version (injected)", "reason": "Expired",
            "code": 410}});
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{gone}\n"),
        )
            .into_response();
    }
    if let Some(code) = fault_status {
        let reason = if code == 410 {
            "Expired"
        } else {
            "InternalError"
        };
        return status(code, reason, &format!("injected fault ({code})"));
    }
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return status(
            400,
            "BadRequest",
            "request body too large for the fault proxy",
        );
    };
    let url = format!(
        "{}{}",
        s.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let request = s
        .http
        .request(parts.method.clone(), url)
        .headers(copy_headers(&parts.headers, true))
        .body(bytes);
    let resp = match request.send().await {
        Ok(r) => r,
        Err(e) => return status(502, "InternalError", &format!("fault proxy: upstream: {e}")),
    };
    let code = resp.status();
    let streaming = verb == "watch";
    let headers = copy_headers(resp.headers(), streaming);
    let mut out = if streaming {
        let mut cut = s.cut.subscribe();
        let drop_after = fault.and_then(|f| f.drop_watch_after_ms);
        let end = async move {
            match drop_after {
                Some(ms) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                        _ = cut.changed() => {}
                    }
                }
                None => {
                    let _ = cut.changed().await;
                }
            }
        };
        Response::new(Body::from_stream(
            resp.bytes_stream().take_until(Box::pin(end)),
        ))
    } else {
        match resp.bytes().await {
            Ok(b) => Response::new(Body::from(b)),
            Err(e) => {
                return status(
                    502,
                    "InternalError",
                    &format!("fault proxy: upstream body: {e}"),
                );
            }
        }
    };
    *out.status_mut() = code;
    *out.headers_mut() = headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_as_the_audit_names_them() {
        let c = |m: Method, p: &str, q: &str| {
            let (v, r) = classify(&m, p, q);
            format!("{v} {r}")
        };
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/a/secrets/s", ""),
            "get secrets"
        );
        assert_eq!(
            c(
                Method::GET,
                "/api/v1/namespaces/a/secrets",
                "watch=true&x=1"
            ),
            "watch secrets"
        );
        assert_eq!(
            c(Method::GET, "/api/v1/secrets", "labelSelector=x"),
            "list secrets"
        );
        assert_eq!(c(Method::GET, "/api/v1/namespaces/a", ""), "get namespaces");
        assert_eq!(c(Method::GET, "/api/v1/namespaces", ""), "list namespaces");
        assert_eq!(
            c(Method::PUT, "/api/v1/namespaces/a/finalize", ""),
            "update namespaces/finalize"
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/pipedream-secrets.io/v1alpha1/namespaces/a/connectedaccounts/x/status",
                ""
            ),
            "patch connectedaccounts/status"
        );
        assert_eq!(
            c(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/o/leases/l",
                ""
            ),
            "update leases"
        );
        assert_eq!(
            c(
                Method::GET,
                "/apis/pipedream-secrets.io/v1alpha1/clusterpipedreamconnections",
                "watch=1"
            ),
            "watch clusterpipedreamconnections"
        );
        assert_eq!(c(Method::GET, "/apis/events.k8s.io/v1", ""), " ");
        assert_eq!(c(Method::GET, "/version", ""), " ");
    }
}
