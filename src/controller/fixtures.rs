//! A mocked Kubernetes API server (tower-test) that stores Secrets, records every request, and can inject faults.
//! (Over 400 lines: one fake serves every controller test: Secrets, ConnectedAccounts and their status, Events,
//! watch events for the index and faults, each a few lines.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Recorded {
    /// `METHOD path` for sequence assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct State {
    secrets: BTreeMap<(String, String), Value>,
    applied_keys: BTreeMap<(String, String), BTreeSet<String>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    requests: Vec<Recorded>,
    faults: Vec<(String, String, u16)>,
    status: BTreeMap<String, Value>,
    /// The last resourceVersion handed out.
    rv: u64,
    /// Other ConnectedAccounts that exist, by (namespace, name): their UID.
    cas: BTreeMap<(String, String), String>,
}

impl State {
    fn bump(&mut self, obj: &mut Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
    }
}

/// The mock server's shared state.
#[derive(Clone, Default)]
pub struct MockApi(Arc<Mutex<State>>);

fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code})
}

impl MockApi {
    /// A kube Client whose requests this mock answers.
    pub fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or_default().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, out) = me.handle(&method, &path, &query, body);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        Client::new(svc, "default")
    }

    /// Long because it is the mock API server's route table: one arm per request the controller tests send.
    fn handle(&self, method: &str, path: &str, query: &str, body: Value) -> (u16, Value) {
        let mut st = self.0.lock().unwrap();
        st.requests.push(Recorded {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            body: body.clone(),
        });
        if let Some((_, p, code)) = st
            .faults
            .iter()
            .find(|(m, p, _)| m == method && path.contains(p.as_str()))
        {
            let mut body = status_body(*code, "InjectedFault");
            if *code == 422 && p.contains("secrets") {
                body["message"] = json!(
                    "Secret \"gh\" is invalid: metadata.labels: Invalid value: \"bad value!\": a valid label must be an empty string or consist of alphanumeric characters"
                );
                body["reason"] = json!("Invalid");
                // As kube-apiserver answers an invalid object: each field error is a cause naming its field.
                body["details"] = json!({"name": "gh", "kind": "secrets", "causes": [{
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: \"bad value!\": a valid label must be an empty string or consist of alphanumeric characters",
                    "field": "metadata.labels"}]});
            }
            return (*code, body);
        }
        let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, seg.as_slice()) {
            ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                match st.secrets.get(&(ns.to_string(), name.to_string())) {
                    Some(s) => (200, s.clone()),
                    None => (404, status_body(404, "NotFound")),
                }
            }
            ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if st.secrets.contains_key(&(ns.to_string(), name.clone())) {
                    return (409, status_body(409, "AlreadyExists"));
                }
                let manager = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("fieldManager="))
                    .unwrap_or_default()
                    .to_string();
                let (_, mut obj) = apply_secret(&mut st, ns, &name, &body);
                // A create records its fields as an Update of its field manager.
                obj["metadata"]["managedFields"] = json!([{"manager": manager, "operation": "Update",
                    "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {}}]);
                (201, obj)
            }
            // The managedFields rewrite after a create (a merge patch, not an apply).
            ("PATCH", ["api", "v1", "namespaces", ns, "secrets", name])
                if body["metadata"].get("managedFields").is_some() =>
            {
                match st.secrets.get(&(ns.to_string(), name.to_string())) {
                    Some(s) => (200, s.clone()),
                    None => (404, status_body(404, "NotFound")),
                }
            }
            ("PATCH", ["api", "v1", "namespaces", ns, "secrets", name]) => {
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                        .unwrap_or_default()
                        .replace("%2F", "/")
                };
                let (manager, force) = (param("fieldManager"), param("force") == "true");
                let key = (ns.to_string(), name.to_string());
                if let Some(refused) = apply_refused(st.secrets.get(&key), &body, &manager, force) {
                    return refused;
                }
                if !force && let Some(obj) = st.secrets.get_mut(&key) {
                    record_apply(obj, &body, &manager);
                }
                apply_secret(&mut st, ns, name, &body)
            }
            (
                "PATCH",
                [
                    "apis",
                    "pipedream-secrets.io",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "connectedaccounts",
                    name,
                    "status",
                ],
            ) => {
                st.status.insert(name.to_string(), body["status"].clone());
                (
                    200,
                    json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                    "metadata": {"name": name, "namespace": ns}, "spec": {"accountId": "apn_A1"}, "status": body["status"]}),
                )
            }
            (
                "PATCH",
                [
                    "apis",
                    "pipedream-secrets.io",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "connectedaccounts",
                    name,
                ],
            ) => (
                200,
                json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                    "metadata": {"name": name, "namespace": ns, "uid": "uid-gh"}, "spec": {"accountId": "apn_A1"}}),
            ),
            (
                "PATCH",
                [
                    "apis",
                    "pipedream-secrets.io",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "pipedreamconnections",
                    name,
                    "status",
                ],
            ) => (
                200,
                json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "PipedreamConnection",
                    "metadata": {"name": name, "namespace": ns}, "spec": {"auth": {"apiKey": {"secretRef": {"name": "x", "key": "k"}}}}, "status": body["status"]}),
            ),
            (
                "PATCH",
                [
                    "apis",
                    "pipedream-secrets.io",
                    "v1alpha1",
                    "clusterpipedreamconnections",
                    name,
                    "status",
                ],
            ) => (
                200,
                json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ClusterPipedreamConnection",
                    "metadata": {"name": name}, "spec": {"auth": {"apiKey": {"secretRef": {"name": "x", "key": "k"}}}}, "status": body["status"]}),
            ),
            ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => (201, body),
            ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => (200, body),
            (
                "GET",
                [
                    "apis",
                    "pipedream-secrets.io",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "connectedaccounts",
                    name,
                ],
            ) => match st.cas.get(&(ns.to_string(), name.to_string())) {
                Some(uid) => (
                    200,
                    json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                        "metadata": {"name": name, "namespace": ns, "uid": uid}, "spec": {"accountId": "apn_A1"}}),
                ),
                None => (404, status_body(404, "NotFound")),
            },
            ("GET", ["api", "v1", "namespaces", ns]) => match st.namespaces.get(*ns) {
                Some(labels) => (
                    200,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
                ),
                None => (404, status_body(404, "NotFound")),
            },
            ("PATCH", ["apis", "apps", "v1", "namespaces", ns, plural, name]) => {
                let kind = match *plural {
                    "deployments" => "Deployment",
                    "statefulsets" => "StatefulSet",
                    _ => "DaemonSet",
                };
                (
                    200,
                    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}}),
                )
            }
            _ => (404, status_body(404, "NotFound")),
        }
    }

    /// Store a Secret as if someone created or changed it (a new resourceVersion).
    pub fn put_secret(&self, ns: &str, s: &Secret) {
        let mut v = serde_json::to_value(s).unwrap();
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Secret");
        v["metadata"]["namespace"] = json!(ns);
        let name = s.metadata.name.clone().unwrap();
        let mut st = self.0.lock().unwrap();
        st.bump(&mut v);
        st.secrets.insert((ns.into(), name), v);
    }

    /// Store a Secret exactly as given, resourceVersion included (the same object seen by another process).
    pub fn restore_secret(&self, ns: &str, s: &Secret) {
        let mut v = serde_json::to_value(s).unwrap();
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Secret");
        let name = s.metadata.name.clone().unwrap();
        let mut st = self.0.lock().unwrap();
        let rv: u64 = s
            .metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        st.rv = st.rv.max(rv);
        st.secrets.insert((ns.into(), name), v);
    }

    /// What the label-selected Secret watch (the Secrets the operator writes into) would deliver on a listing now.
    pub fn watch_events(
        &self,
    ) -> Vec<kube::runtime::watcher::Event<kube::core::PartialObjectMeta<Secret>>> {
        use kube::runtime::watcher::Event;
        let st = self.0.lock().unwrap();
        let mut out = vec![Event::Init];
        for s in st.secrets.values() {
            if s["metadata"]["labels"]["pipedream-secrets.io/managed"] == "true" {
                let meta = serde_json::from_value(json!({"metadata": s["metadata"]})).unwrap();
                out.push(Event::InitApply(meta));
            }
        }
        out.push(Event::InitDone);
        out
    }

    /// Remove a Secret (as a user deleting it).
    pub fn delete_secret(&self, ns: &str, name: &str) {
        self.0
            .lock()
            .unwrap()
            .secrets
            .remove(&(ns.into(), name.into()));
    }

    /// A stored Secret.
    pub fn secret(&self, ns: &str, name: &str) -> Option<Secret> {
        let v = self
            .0
            .lock()
            .unwrap()
            .secrets
            .get(&(ns.into(), name.into()))
            .cloned()?;
        serde_json::from_value(v).ok()
    }

    /// Another ConnectedAccount exists (as the API server would answer a GET of it).
    pub fn put_ca(&self, ns: &str, name: &str, uid: &str) {
        self.0
            .lock()
            .unwrap()
            .cas
            .insert((ns.into(), name.into()), uid.into());
    }

    /// Set a namespace's labels.
    pub fn put_namespace(&self, ns: &str, labels: BTreeMap<String, String>) {
        self.0.lock().unwrap().namespaces.insert(ns.into(), labels);
    }

    /// Fail requests whose method matches and path contains `path_part`.
    pub fn fail(&self, method: &str, path_part: &str, code: u16) {
        self.0
            .lock()
            .unwrap()
            .faults
            .push((method.into(), path_part.into(), code));
    }

    /// Stop failing.
    pub fn heal(&self) {
        self.0.lock().unwrap().faults.clear();
    }

    /// Requests so far, then forget them.
    pub fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.0.lock().unwrap().requests)
    }

    /// The last status written for ConnectedAccount `name`.
    pub fn status_of(&self, name: &str) -> Option<Value> {
        self.0.lock().unwrap().status.get(name).cloned()
    }
}

/// The managed fields of a stored Secret; one with none has all its data keys owned by `before-first-apply`, as
/// the API server counts them on the first apply.
fn entries_of(obj: &Value) -> Vec<Value> {
    match obj["metadata"]["managedFields"].as_array() {
        Some(e) if !e.is_empty() => e.clone(),
        _ => {
            let keys: serde_json::Map<String, Value> = obj["data"]
                .as_object()
                .map(|d| d.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
                .unwrap_or_default();
            vec![
                json!({"manager": "before-first-apply", "operation": "Update",
                "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": keys}}),
            ]
        }
    }
}

/// Why the API server refuses a Secret apply, if it does: a stale resourceVersion in the body (the object was
/// modified), or, without force, data keys another field manager owns holding another value (with the
/// conflicts as the API server lists them in `details.causes`).
fn apply_refused(
    stored: Option<&Value>,
    body: &Value,
    manager: &str,
    force: bool,
) -> Option<(u16, Value)> {
    let obj = stored?;
    if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
        && obj["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        let mut st = status_body(409, "Conflict");
        st["message"] = json!(
            "Operation cannot be fulfilled on secrets: the object has been modified; please apply your changes to the latest version and try again"
        );
        return Some((409, st));
    }
    if force {
        return None;
    }
    let mut causes = Vec::new();
    for (k, v) in body["data"].as_object().into_iter().flatten() {
        if obj["data"][k] == *v {
            continue;
        }
        for e in entries_of(obj) {
            let m = e["manager"].as_str().unwrap_or_default();
            if m != manager && e["fieldsV1"]["f:data"].get(format!("f:{k}")).is_some() {
                let using = if e["operation"] == "Update" {
                    " using v1"
                } else {
                    ""
                };
                causes.push(json!({"reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{m}\"{using}"), "field": format!(".data.{k}")}));
            }
        }
    }
    if causes.is_empty() {
        return None;
    }
    let mut st = status_body(409, "Conflict");
    st["message"] = json!(format!("Apply failed with {} conflicts", causes.len()));
    st["details"] = json!({"causes": causes});
    Some((409, st))
}

/// A non-forced apply: `manager` owns the data keys it sent, beside the other managers (shared where equal).
fn record_apply(obj: &mut Value, body: &Value, manager: &str) {
    let mut entries = entries_of(obj);
    entries.retain(|e| e["manager"] != manager);
    let keys: serde_json::Map<String, Value> = body["data"]
        .as_object()
        .map(|d| d.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
        .unwrap_or_default();
    entries.push(
        json!({"manager": manager, "operation": "Apply", "apiVersion": "v1",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": keys}}),
    );
    obj["metadata"]["managedFields"] = Value::Array(entries);
}

/// Server-side apply of a Secret, simplified: our fields replace, keys we stop applying go, others stay.
fn apply_secret(st: &mut State, ns: &str, name: &str, body: &Value) -> (u16, Value) {
    let key = (ns.to_string(), name.to_string());
    let previous_keys = st.applied_keys.get(&key).cloned().unwrap_or_default();
    let sent: BTreeSet<String> = body["data"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut obj = st.secrets.get(&key).cloned().unwrap_or_else(|| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns, "uid": format!("uid-secret-{name}")}})
    });
    // Server-side apply, simplified: our fields replace, keys we stop applying go, others stay.
    let mut data = obj["data"].as_object().cloned().unwrap_or_default();
    data.retain(|k, _| !previous_keys.contains(k) || sent.contains(k));
    if let Some(m) = body["data"].as_object() {
        data.extend(m.clone());
    }
    obj["data"] = Value::Object(data);
    for field in ["labels", "annotations"] {
        let mut merged = obj["metadata"][field]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(m) = body["metadata"][field].as_object() {
            merged.extend(m.clone());
        }
        obj["metadata"][field] = Value::Object(merged);
    }
    match body["metadata"].get("ownerReferences") {
        Some(o) => obj["metadata"]["ownerReferences"] = o.clone(),
        None => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("ownerReferences");
            }
        }
    }
    if let Some(t) = body.get("type") {
        obj["type"] = t.clone();
    }
    let before = st.secrets.get(&key).cloned();
    if before.as_ref() != Some(&obj) || before.is_none() {
        st.bump(&mut obj);
    }
    st.applied_keys.insert(key.clone(), sent);
    st.secrets.insert(key, obj.clone());
    (200, obj)
}
