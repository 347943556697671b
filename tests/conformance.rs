//! Conformance of the test kit's API emulator, written from the Kubernetes API conventions and the API server's
//! documented behaviour (sig-architecture/api-conventions.md, "Kubernetes API Concepts", the CRD and server-side
//! apply documentation), not from the emulator's code. Each test is one row of the table in docs/contributing.md
//! ("The emulator: conformance"); the older rows live in `tests/emulator.rs`. Where the emulator intentionally
//! differs, the test asserts what it does instead and says so, and the simplifications list in
//! docs/contributing.md names it.
//!
//! Requests are raw HTTP, so the wire shape (status codes, `Status` bodies, headers, watch lines) is what is
//! checked, not what a client library makes of it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pdso_testkit::apiserver::ApiServer;
use pdso_testkit::controlplane::{ADMIN, ControlPlane};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One server under test: a fresh emulator, or the binary's shared real API server with a namespace of the
/// test's own.
struct Server {
    /// Keeps the emulator running.
    _emulator: Option<ApiServer>,
    real: bool,
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// The test's namespace.
    ns: String,
    configmaps: String,
    widgets_path: String,
}

impl Server {
    async fn emulator() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = ApiServer::start().await.unwrap();
        api.apply_crd_dir(std::path::Path::new("crds")).unwrap();
        let base = api.url();
        Self::new(Some(api), false, base, None, reqwest::Client::new()).await
    }

    /// `None` (the test returns) when no control plane binaries exist and `CI` is not `true`.
    async fn real() -> Option<Self> {
        let cp = ControlPlane::shared()?;
        let token = cp.token(ADMIN).to_string();
        Some(
            Self::new(
                None,
                true,
                cp.url().to_string(),
                Some(token),
                cp.http_client(),
            )
            .await,
        )
    }

    async fn new(
        emulator: Option<ApiServer>,
        real: bool,
        base: String,
        token: Option<String>,
        http: reqwest::Client,
    ) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let ns = format!("conformance-{}", SEQ.fetch_add(1, Ordering::SeqCst));
        let me = Self {
            _emulator: emulator,
            real,
            base,
            token,
            http,
            configmaps: format!("/api/v1/namespaces/{ns}/configmaps"),
            widgets_path: format!("/apis/conformance.test/v1/namespaces/{ns}/widgets"),
            ns,
        };
        let (code, v) = me
            .post(
                "/api/v1/namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": me.ns}}),
            )
            .await;
        assert!(
            code.is_success(),
            "creating namespace {}: {code} {v}",
            me.ns
        );
        me
    }

    /// A path in the test's namespace: `ns("/api/v1", "leases")`.
    fn ns_path(&self, prefix: &str, plural: &str) -> String {
        format!("{prefix}/namespaces/{}/{plural}", self.ns)
    }

    /// A request to `path`, authenticated where the server needs it.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// One request; the body is sent as `content_type` (JSON unless told otherwise).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        content_type: &str,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, path, None, "").await;
        (s, v)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(Method::POST, path, Some(body), "application/json")
            .await;
        (s, v)
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(Method::PUT, path, Some(body), "application/json")
            .await;
        (s, v)
    }

    async fn patch(&self, path: &str, ct: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::PATCH, path, Some(body), ct).await;
        (s, v)
    }

    async fn delete(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(Method::DELETE, path, body, "application/json")
            .await;
        (s, v)
    }

    /// Install the conformance CRD (group `conformance.test`, kind `Widget`) unless it is there, and wait until it
    /// is served (a real API server establishes a CRD asynchronously).
    async fn widgets(&self) {
        let (s, v) = self
            .post(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                widget_crd(),
            )
            .await;
        assert!(
            s == StatusCode::CREATED || s == StatusCode::CONFLICT,
            "{s} {v}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get(&self.widgets_path).await.0 != StatusCode::OK {
            assert!(Instant::now() < deadline, "widgets never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET `path` until the answer satisfies `done` (garbage collection is asynchronous on a real server), for at
    /// most 30 s; returns the last answer.
    async fn until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = self.get(path).await;
            if done(&v) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A CRD using the schema features the conventions name: defaults, pruning, `x-kubernetes-preserve-unknown-fields`,
/// int-or-string, a list-map, and a CEL transition rule with `oldSelf`.
fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.conformance.test"},
        "spec": {"group": "conformance.test", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object",
                        "x-kubernetes-validations": [
                            {"rule": "self.size >= oldSelf.size", "message": "size may only grow"}],
                        "properties": {
                            "size": {"type": "integer", "default": 1},
                            "port": {"x-kubernetes-int-or-string": true},
                            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["name"],
                                "items": {"type": "object", "required": ["name"], "properties": {
                                    "name": {"type": "string"}, "number": {"type": "integer"}}}}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}}}}]}
    })
}

fn widget(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "conformance.test/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

/// Errors are `Status` objects: kind, apiVersion, status Failure, a reason and the same code as the response.
fn assert_status(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// Discovery: `/api` and `/apis` list versions and groups (with a preferred version); a group version lists its
/// resources with kind, scope, verbs and subresources as `<plural>/<sub>`.
async fn discovery_names_groups_versions_resources_verbs_and_subresources(s: &Server) {
    let (code, api) = s.get("/api").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(api["kind"], "APIVersions");
    assert!(api["versions"].as_array().unwrap().contains(&json!("v1")));
    let (_, groups) = s.get("/apis").await;
    assert_eq!(groups["kind"], "APIGroupList");
    let ours = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "pipedream-secrets.io")
        .expect("our group is discovered");
    assert_eq!(
        ours["preferredVersion"]["groupVersion"],
        "pipedream-secrets.io/v1alpha1"
    );
    let (_, rl) = s.get("/apis/pipedream-secrets.io/v1alpha1").await;
    assert_eq!(rl["kind"], "APIResourceList");
    assert_eq!(rl["groupVersion"], "pipedream-secrets.io/v1alpha1");
    let res = rl["resources"].as_array().unwrap();
    let ca = res
        .iter()
        .find(|r| r["name"] == "connectedaccounts")
        .unwrap();
    assert_eq!(ca["kind"], "ConnectedAccount");
    assert_eq!(ca["namespaced"], true);
    for verb in [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ] {
        assert!(
            ca["verbs"].as_array().unwrap().contains(&json!(verb)),
            "{verb}: {ca}"
        );
    }
    assert!(
        res.iter().any(|r| r["name"] == "connectedaccounts/status"),
        "status subresource is discovered: {rl}"
    );
    let cluster = res
        .iter()
        .find(|r| r["name"] == "clusterpipedreamconnections")
        .unwrap();
    assert_eq!(cluster["namespaced"], false);
    // What nothing serves: under `/apis` the API server's HTTP mux answers a plain-text 404 (found by the
    // differential run: the emulator used to answer a `Status`); under `/api` it is a `Status`.
    for path in [
        "/apis/no.such.group/v1",
        "/apis/no.such.group",
        "/apis/pipedream-secrets.io/v1alpha1/nopes",
    ] {
        let (code, v) = s.get(path).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(v, json!("404 page not found\n"), "{path}");
    }
    let (code, v) = s.get("/api/v1/nopes").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&v, 404, "NotFound");
}

/// OpenAPI v3: `/openapi/v3` lists one document per group version; a CRD's document carries its schema with
/// `x-kubernetes-group-version-kind` (what `kubectl explain` reads).
async fn openapi_v3_serves_a_document_per_group_version_with_crd_schemas(s: &Server) {
    let (code, root) = s.get("/openapi/v3").await;
    assert_eq!(code, StatusCode::OK);
    let url = root["paths"]["apis/pipedream-secrets.io/v1alpha1"]["serverRelativeURL"]
        .as_str()
        .expect("our group version is listed")
        .to_string();
    let (code, doc) = s.get(&url).await;
    assert_eq!(code, StatusCode::OK);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let ca = schemas
        .values()
        .find(|sch| {
            sch["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["kind"] == "ConnectedAccount"))
        })
        .expect("ConnectedAccount schema");
    assert!(ca["properties"]["spec"]["properties"]["accountId"].is_object());
}

/// Create of an existing name is 409 AlreadyExists; get of a missing object is 404 NotFound; both `Status` bodies
/// name the object in `details`.
async fn create_conflicts_and_missing_objects_answer_with_status_details(s: &Server) {
    let cm = s.configmaps.as_str();
    let (code, created) = s.post(cm, config_map("a", json!({"k": "v"}))).await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(created["metadata"]["uid"].as_str().is_some());
    assert!(created["metadata"]["creationTimestamp"].as_str().is_some());
    let (code, v) = s.post(cm, config_map("a", json!({"k": "v"}))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_status(&v, 409, "AlreadyExists");
    assert_eq!(v["details"]["name"], "a");
    assert_eq!(v["details"]["kind"], "configmaps");
    let (code, v) = s.get(&format!("{cm}/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&v, 404, "NotFound");
    assert_eq!(v["details"]["name"], "nope");
    // A name that is not a DNS subdomain is Invalid (422), with the field named.
    let (code, v) = s.post(cm, config_map("Not_A_Name", json!({}))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_status(&v, 422, "Invalid");
    assert!(
        v["message"].as_str().unwrap().contains("metadata.name"),
        "{v}"
    );
}

/// An invalid Secret is refused (422 Invalid) with one cause per field error, each naming its field as the
/// operator maps it back to the spec (`refused_write`): `data[<key>]` for a key, `type` for a changed type.
async fn an_invalid_secret_names_each_refused_field_in_its_causes(s: &Server) {
    let secrets = s.ns_path("/api/v1", "secrets");
    let secret = |data: Value, ty: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gh"}, "type": ty, "data": data});
    let fields = |v: &Value| -> Vec<String> {
        let mut f: Vec<String> = v["details"]["causes"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["field"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        f.sort();
        f
    };
    let (code, v) = s
        .post(&secrets, secret(json!({"a b": "eA=="}), "Opaque"))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_status(&v, 422, "Invalid");
    assert_eq!(fields(&v), ["data[a b]"], "{v}");
    let (code, v) = s
        .post(&secrets, secret(json!({"k": "eA=="}), "Opaque"))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let mut changed = secret(json!({"k": "eA=="}), "example.com/other");
    changed["metadata"]["resourceVersion"] = v["metadata"]["resourceVersion"].clone();
    let (code, v) = s.put(&format!("{secrets}/gh"), changed).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_status(&v, 422, "Invalid");
    assert_eq!(fields(&v), ["type"], "{v}");
}

/// Optimistic concurrency: an update carrying a stale `resourceVersion` is 409 Conflict and changes nothing; each
/// write changes `resourceVersion`; a write that changes nothing keeps it.
async fn updates_with_a_stale_resource_version_conflict(s: &Server) {
    let cm = s.configmaps.as_str();
    let (_, v1) = s.post(cm, config_map("a", json!({"k": "1"}))).await;
    let mut next = v1.clone();
    next["data"]["k"] = json!("2");
    let (code, v2) = s.put(&format!("{cm}/a"), next.clone()).await;
    assert_eq!(code, StatusCode::OK, "{v2}");
    assert_ne!(
        v2["metadata"]["resourceVersion"],
        v1["metadata"]["resourceVersion"]
    );
    // The same stale body again: rejected, and the stored object keeps "2".
    next["data"]["k"] = json!("3");
    let (code, v) = s.put(&format!("{cm}/a"), next).await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_status(&v, 409, "Conflict");
    assert_eq!(v["details"]["name"], "a", "{v}");
    let (_, now) = s.get(&format!("{cm}/a")).await;
    assert_eq!(now["data"]["k"], "2");
    // A no-op patch does not bump the resourceVersion.
    let (_, same) = s
        .patch(
            &format!("{cm}/a"),
            "application/merge-patch+json",
            json!({"data": {"k": "2"}}),
        )
        .await;
    assert_eq!(
        same["metadata"]["resourceVersion"],
        now["metadata"]["resourceVersion"]
    );
}

/// Patches: merge patch (RFC 7386: `null` deletes), JSON patch (RFC 6902, a failed `test` changes nothing),
/// strategic merge on a built-in kind; custom resources refuse strategic merge with 415.
async fn merge_json_and_strategic_patches_follow_their_rfcs(s: &Server) {
    let cm = s.configmaps.as_str();
    let widgets = s.widgets_path.as_str();
    s.post(cm, config_map("a", json!({"keep": "1", "drop": "2"})))
        .await;
    let a = format!("{cm}/a");
    let (code, v) = s
        .patch(
            &a,
            "application/merge-patch+json",
            json!({"data": {"drop": null, "new": "3"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"], json!({"keep": "1", "new": "3"}));
    let (code, v) = s
        .patch(
            &a,
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/keep", "value": "1"},
                   {"op": "replace", "path": "/data/keep", "value": "9"}]),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["keep"], "9");
    let (code, v) = s
        .patch(
            &a,
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/keep", "value": "1"},
                   {"op": "remove", "path": "/data/keep"}]),
        )
        .await;
    assert!(
        code.is_client_error(),
        "a failed test op is refused: {code} {v}"
    );
    assert_eq!(
        s.get(&a).await.1["data"]["keep"],
        "9",
        "and changes nothing"
    );
    // Strategic merge on a built-in map field merges like a merge patch.
    let (code, v) = s
        .patch(
            &a,
            "application/strategic-merge-patch+json",
            json!({"data": {"s": "4"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"], json!({"keep": "9", "new": "3", "s": "4"}));
    s.widgets().await;
    s.post(widgets, widget("w", json!({}))).await;
    let (code, v) = s
        .patch(
            &format!("{widgets}/w"),
            "application/strategic-merge-patch+json",
            json!({"spec": {"size": 2}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    assert_status(&v, 415, "UnsupportedMediaType");
}

/// A refused server-side apply names each conflict in `details.causes` (reason `FieldManagerConflict`, the field
/// path with a leading dot, a map key with dots as it is, and `conflict with "<manager>"`, with ` using <apiVersion>`
/// when that manager's entry is an Update), which the operator reads to report who owns a Merge key. A
/// `metadata.resourceVersion` in the applied object is a precondition: a stale one is a plain 409 Conflict (no
/// field causes) and changes nothing.
async fn a_refused_apply_names_each_conflict_and_a_resource_version_guards_it(s: &Server) {
    let cm = format!("{}/guarded", s.configmaps);
    let ssa = "application/apply-patch+yaml";
    let body = |data: Value, rv: Option<&str>| {
        let mut v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "guarded"}, "data": data});
        if let Some(rv) = rv {
            v["metadata"]["resourceVersion"] = json!(rv);
        }
        v
    };
    let (code, v) = s
        .patch(
            &format!("{cm}?fieldManager=a"),
            ssa,
            body(json!({"x": "1", "k.y": "1"}), None),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (code, v) = s
        .patch(
            &format!("{cm}?fieldManager=u"),
            "application/merge-patch+json",
            json!({"data": {"z": "1"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let read = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, v) = s
        .patch(
            &format!("{cm}?fieldManager=b"),
            ssa,
            body(json!({"x": "2", "k.y": "2", "z": "2", "free": "2"}), None),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_status(&v, 409, "Conflict");
    let mut causes: Vec<(String, String, String)> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (f("field"), f("reason"), f("message"))
        })
        .collect();
    causes.sort();
    let cause = |field: &str, message: &str| {
        (
            field.to_string(),
            "FieldManagerConflict".to_string(),
            message.to_string(),
        )
    };
    assert_eq!(
        causes,
        [
            cause(".data.k.y", "conflict with \"a\""),
            cause(".data.x", "conflict with \"a\""),
            cause(".data.z", "conflict with \"u\" using v1"),
        ],
        "{v}"
    );
    // A stale resourceVersion: refused as a modified object, nothing applied.
    let (_, v) = s
        .patch(
            &format!("{cm}?fieldManager=a"),
            ssa,
            body(json!({"x": "1", "k.y": "1", "w": "1"}), None),
        )
        .await;
    let current = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(current, read);
    let (code, v) = s
        .patch(
            &format!("{cm}?fieldManager=b"),
            ssa,
            body(json!({"free": "2"}), Some(&read)),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_status(&v, 409, "Conflict");
    assert!(
        v["details"]["causes"]
            .as_array()
            .is_none_or(|c| c.iter().all(|c| c["reason"] != "FieldManagerConflict")),
        "{v}"
    );
    assert!(s.get(&cm).await.1["data"].get("free").is_none());
    // The current one: applied.
    let (code, v) = s
        .patch(
            &format!("{cm}?fieldManager=b"),
            ssa,
            body(json!({"free": "2"}), Some(&current)),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["free"], "2");
}

/// Server-side apply: each manager owns the fields it applied; a second manager changing an owned field gets 409
/// Conflict naming the owner unless it forces; a manager that stops applying a field removes it only if nobody
/// else owns it. (Intentional difference: lists are atomic. The API server merges `x-kubernetes-list-type: map`
/// items by key and tracks ownership per item; in the emulator a second manager applying another item of the
/// same list conflicts with the list's owner. The operator never co-owns a list.)
async fn server_side_apply_owns_fields_per_manager_with_atomic_lists(s: &Server) {
    let widgets = s.widgets_path.as_str();
    s.widgets().await;
    let w = format!("{widgets}/w");
    let apply = |mgr: &str, force: bool| {
        format!(
            "{w}?fieldManager={mgr}{}",
            if force { "&force=true" } else { "" }
        )
    };
    let ssa = "application/apply-patch+yaml";
    let (code, v) = s
        .patch(
            &apply("a", false),
            ssa,
            widget(
                "w",
                json!({"size": 3, "ports": [{"name": "http", "number": 80}]}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    // b adds a field nobody owns: no conflict, both fields stay.
    let (code, v) = s
        .patch(
            &apply("b", false),
            ssa,
            widget("w", json!({"port": "http"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["size"], 3);
    let managers: Vec<&str> = v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["a", "b"], "{v}");
    // b changes a's field: conflict naming the owner, nothing changes.
    let (code, v) = s
        .patch(
            &apply("b", false),
            ssa,
            widget("w", json!({"port": "http", "size": 4})),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_status(&v, 409, "Conflict");
    assert!(v["message"].as_str().unwrap().contains("\"a\""), "{v}");
    assert_eq!(s.get(&w).await.1["spec"]["size"], 3);
    // Forced, b takes the field over; a no longer owns it, so a's next apply without it does not remove it.
    let (code, v) = s
        .patch(
            &apply("b", true),
            ssa,
            widget("w", json!({"port": "http", "size": 4})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["size"], 4);
    let (_, v) = s
        .patch(
            &apply("a", false),
            ssa,
            widget("w", json!({"ports": [{"name": "http", "number": 80}]})),
        )
        .await;
    assert_eq!(v["spec"]["size"], 4, "b's field stays: {v}");
    // a stops applying the list it owns alone: it is removed.
    let (_, v) = s
        .patch(&apply("a", false), ssa, widget("w", json!({})))
        .await;
    assert!(v["spec"].get("ports").is_none(), "{v}");
    // The difference: another item of a list a owns is a conflict here (the API server would merge by key).
    s.patch(
        &apply("a", false),
        ssa,
        widget("w", json!({"ports": [{"name": "http", "number": 80}]})),
    )
    .await;
    let (code, v) = s
        .patch(
            &apply("c", false),
            ssa,
            widget("w", json!({"ports": [{"name": "metrics", "number": 9090}]})),
        )
        .await;
    if s.real {
        // The API server merges the items of a `map` list by key and tracks ownership per item.
        assert_eq!(code, StatusCode::OK, "{v}");
        let ports: Vec<&str> = v["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(ports, ["http", "metrics"], "{v}");
    } else {
        assert_eq!(
            code,
            StatusCode::CONFLICT,
            "atomic list (emulator simplification): {v}"
        );
    }
}

/// CRD schema admission: defaults applied, unknown fields pruned (with a warning) unless under
/// `x-kubernetes-preserve-unknown-fields`, refused with `fieldValidation=Strict`; int-or-string takes both; a CEL
/// transition rule sees `oldSelf` on update only.
async fn crd_schemas_default_prune_preserve_and_check_transition_rules(s: &Server) {
    let widgets = s.widgets_path.as_str();
    s.widgets().await;
    let (code, v, headers) = s
        .call(
            Method::POST,
            widgets,
            Some(widget(
                "w",
                json!({"port": "http", "bogus": 1, "free": {"any": {"thing": true}}}),
            )),
            "application/json",
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["size"], 1, "defaulted: {v}");
    assert_eq!(v["spec"]["port"], "http");
    assert!(v["spec"].get("bogus").is_none(), "pruned: {v}");
    assert_eq!(v["spec"]["free"]["any"]["thing"], true, "preserved: {v}");
    let warning = headers
        .get("warning")
        .and_then(|w| w.to_str().ok())
        .unwrap_or_default();
    assert!(
        warning.starts_with("299 - ")
            && warning.contains("unknown field")
            && warning.contains("spec.bogus"),
        "{warning:?}"
    );
    let (code, v, _) = s
        .call(
            Method::POST,
            &format!("{widgets}?fieldValidation=Strict"),
            Some(widget("x", json!({"bogus": 1}))),
            "application/json",
        )
        .await;
    assert!(code.is_client_error(), "{code} {v}");
    assert!(v["message"].as_str().unwrap().contains("bogus"), "{v}");
    let (code, v) = s.post(widgets, widget("n", json!({"port": 8080}))).await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "int-or-string takes an integer: {v}"
    );
    let (code, v) = s.post(widgets, widget("b", json!({"port": [1]}))).await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "but not a list: {v}"
    );
    // Transition rule: size may only grow.
    let w = format!("{widgets}/w");
    let (code, v) = s
        .patch(
            &w,
            "application/merge-patch+json",
            json!({"spec": {"size": 5}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (code, v) = s
        .patch(
            &w,
            "application/merge-patch+json",
            json!({"spec": {"size": 2}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_status(&v, 422, "Invalid");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("size may only grow"),
        "{v}"
    );
}

/// List `resourceVersion` semantics: unset = most recent; `0` = any; `resourceVersionMatch` needs a
/// `resourceVersion` (422 Invalid ListOptions); `NotOlderThan` a version not yet reached is 504; a version that is
/// not a number is 400. (Intentional difference: the emulator keeps no history, so `Exact` works only at the
/// current version and is 410 Gone below it; the real server reads older versions from etcd until compaction.)
async fn list_resource_version_and_match_semantics(s: &Server) {
    let cm = s.configmaps.as_str();
    s.post(cm, config_map("a", json!({}))).await;
    let (code, list) = s.get(cm).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "ConfigMapList");
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (code, _) = s.get(&format!("{cm}?resourceVersion=0")).await;
    assert_eq!(code, StatusCode::OK);
    let (code, v) = s
        .get(&format!("{cm}?resourceVersionMatch=NotOlderThan"))
        .await;
    // ListOptions are validated like objects: 422 Invalid naming the field (the emulator said 400 until the
    // differential run).
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_status(&v, 422, "Invalid");
    assert_eq!(v["details"]["kind"], "ListOptions", "{v}");
    assert_eq!(
        v["details"]["causes"][0]["field"], "resourceVersionMatch",
        "{v}"
    );
    let at = |version: u64, how: &str| {
        format!("{cm}?resourceVersion={version}&resourceVersionMatch={how}")
    };
    let (code, v) = s.get(&at(rv, "Exact")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    s.post(cm, config_map("b", json!({}))).await;
    let (code, v) = s.get(&at(rv, "Exact")).await;
    if s.real {
        // The API server reads an older version from etcd (until compaction): the list as it was.
        assert_eq!(code, StatusCode::OK, "{v}");
        assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    } else {
        assert_eq!(code, StatusCode::GONE, "no history kept: {v}");
        assert_status(&v, 410, "Expired");
    }
    let (code, v) = s.get(&at(rv, "NotOlderThan")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let (code, v) = s.get(&at(rv + 1000, "NotOlderThan")).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_status(&v, 504, "Timeout");
    let (code, v) = s
        .get(&format!(
            "{cm}?resourceVersion=0&resourceVersionMatch=Sometimes"
        ))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Unsupported value: \"Sometimes\""),
        "{v}"
    );
    let (code, v) = s
        .get(&format!(
            "{cm}?resourceVersion=abc&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert_status(&v, 400, "BadRequest");
}

/// Watch: `timeoutSeconds` ends the stream; with `allowWatchBookmarks` a BOOKMARK carries the latest
/// resourceVersion shortly before it ends (the watch cache sends one 2 s before the deadline); events are
/// ADDED/MODIFIED/DELETED with the object.
async fn watches_end_at_their_timeout_with_a_bookmark(s: &Server) {
    let cm = s.configmaps.as_str();
    let (_, list) = s.get(cm).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let watch = s.request(
        Method::GET,
        &format!("{cm}?watch=true&resourceVersion={rv}&timeoutSeconds=4&allowWatchBookmarks=true"),
    );
    let started = Instant::now();
    let watch = tokio::spawn(async move { watch.send().await.unwrap().text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.post(cm, config_map("a", json!({}))).await;
    s.patch(
        &format!("{cm}/a"),
        "application/merge-patch+json",
        json!({"data": {"k": "v"}}),
    )
    .await;
    s.delete(&format!("{cm}/a"), None).await;
    let body = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch ends at its timeout")
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(3500), "{took:?}");
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(&types[..3], ["ADDED", "MODIFIED", "DELETED"], "{body}");
    assert!(
        events[..3]
            .iter()
            .all(|e| e["object"]["metadata"]["name"] == "a")
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "BOOKMARK", "{body}");
    assert_eq!(
        last["object"]["metadata"]["resourceVersion"],
        events[2]["object"]["metadata"]["resourceVersion"],
        "the bookmark carries the latest version"
    );
}

/// Streaming lists (WatchList, `sendInitialEvents=true`): every current object as ADDED, then one BOOKMARK marked
/// `k8s.io/initial-events-end` at the list's version; later bookmarks carry no mark. The operator takes its
/// ConnectedAccount list this way and probes for the mark with a selector that matches nothing.
async fn streaming_lists_send_the_objects_then_a_marked_bookmark(s: &Server) {
    let cm = s.configmaps.as_str();
    for n in ["s1", "s2"] {
        s.post(cm, config_map(n, json!({"k": n}))).await;
    }
    let url = |extra: &str| {
        format!(
            "{cm}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=2{extra}"
        )
    };
    let body = s
        .request(Method::GET, &url(""))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let end = events
        .iter()
        .position(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark");
    let names: Vec<&str> = events[..end]
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "ADDED", "{body}");
            e["object"]["metadata"]["name"].as_str().unwrap()
        })
        .collect();
    assert!(names.contains(&"s1") && names.contains(&"s2"), "{body}");
    assert_eq!(
        events[end]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true",
        "{body}"
    );
    assert!(
        events[end + 1..]
            .iter()
            .all(|e| e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"].is_null()),
        "only the first bookmark is marked: {body}"
    );
    // Nothing matches: the marked bookmark is the first event.
    let probe = s
        .request(Method::GET, &url("&labelSelector=probe%3Dnone"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let e: Value = serde_json::from_str(probe.lines().next().expect("an event")).unwrap();
    assert_eq!(e["type"], "BOOKMARK", "{probe}");
    assert_eq!(
        e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

/// A create records its fields as an `Update` of its field manager, which a later apply by the same manager does
/// not remove; rewritten as `Apply` (with the create's resourceVersion) they are the apply's own. The operator's
/// create-only first write relies on this.
async fn a_created_objects_fields_handed_to_apply_are_removed_when_applied_no_more(s: &Server) {
    let cm = s.configmaps.as_str();
    let mgr = "conformance-writer";
    let created = s
        .request(Method::POST, &format!("{cm}?fieldManager={mgr}"))
        .json(&config_map("handed", json!({"a": "1", "b": "2"})))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let mut fields = created["metadata"]["managedFields"].clone();
    assert_eq!(fields[0]["operation"], "Update", "{created}");
    for f in fields.as_array_mut().unwrap() {
        f["operation"] = json!("Apply");
    }
    s.patch(
        &format!("{cm}/handed"),
        "application/merge-patch+json",
        json!({"metadata": {"managedFields": fields, "resourceVersion": created["metadata"]["resourceVersion"]}}),
    )
    .await;
    let applied = s
        .request(
            Method::PATCH,
            &format!("{cm}/handed?fieldManager={mgr}&force=true"),
        )
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_string(&config_map("handed", json!({"a": "1"}))).unwrap())
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(applied["data"], json!({"a": "1"}), "{applied}");
    let ops: Vec<&str> = applied["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["Apply"], "{applied}");
}

/// Deletion propagation: Background deletes dependents; Orphan keeps them and drops their ownerReference;
/// Foreground keeps the owner, marked with the `foregroundDeletion` finalizer, until the dependents that block it
/// are gone. Garbage collection is asynchronous on a real server (kube-controller-manager), so outcomes are
/// awaited. (Intentional difference: the emulator collects inside the delete, so its owner is gone at once and
/// `blockOwnerDeletion` blocks nothing.)
async fn delete_propagation_background_orphan_and_foreground(s: &Server) {
    let cm = s.configmaps.as_str();
    let (owner_path, dep_path) = (format!("{cm}/owner"), format!("{cm}/dep"));
    let gone = |v: &Value| v["code"] == 404;
    for policy in ["Background", "Orphan", "Foreground"] {
        let (_, owner) = s.post(cm, config_map("owner", json!({}))).await;
        let uid = owner["metadata"]["uid"].clone();
        let mut dep = config_map("dep", json!({}));
        dep["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
            "name": "owner", "uid": uid, "blockOwnerDeletion": true}]);
        if policy == "Foreground" {
            // Holds the dependent, so the owner's wait can be seen.
            dep["metadata"]["finalizers"] = json!(["conformance.test/hold"]);
        }
        s.post(cm, dep).await;
        let (code, v) = s
            .delete(
                &owner_path,
                Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy})),
            )
            .await;
        assert!(code.is_success(), "{policy}: {code} {v}");
        match policy {
            "Background" => {
                assert!(gone(&s.until(&owner_path, gone).await), "{policy}: owner");
                assert!(gone(&s.until(&dep_path, gone).await), "{policy}: collected");
            }
            "Orphan" => {
                assert!(gone(&s.until(&owner_path, gone).await), "{policy}: owner");
                let unowned = |v: &Value| {
                    v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_none_or(|r| r.is_empty())
                };
                let dep = s.until(&dep_path, unowned).await;
                assert!(unowned(&dep) && !gone(&dep), "orphaned: {dep}");
                s.delete(&dep_path, None).await;
            }
            _ => {
                if s.real {
                    let (code, owner) = s.get(&owner_path).await;
                    assert_eq!(code, StatusCode::OK, "the owner waits: {owner}");
                    assert!(
                        owner["metadata"]["deletionTimestamp"].is_string(),
                        "{owner}"
                    );
                    assert!(
                        owner["metadata"]["finalizers"]
                            .as_array()
                            .is_some_and(|f| f.contains(&json!("foregroundDeletion"))),
                        "{owner}"
                    );
                    let deleting = |v: &Value| v["metadata"]["deletionTimestamp"].is_string();
                    assert!(
                        deleting(&s.until(&dep_path, deleting).await),
                        "dependent deleted"
                    );
                } else {
                    assert!(
                        gone(&s.get(&owner_path).await.1),
                        "emulator: the owner goes at once"
                    );
                }
                s.patch(
                    &dep_path,
                    "application/merge-patch+json",
                    json!({"metadata": {"finalizers": null}}),
                )
                .await;
                assert!(gone(&s.until(&dep_path, gone).await), "{policy}: collected");
                assert!(gone(&s.until(&owner_path, gone).await), "{policy}: owner");
            }
        }
    }
}

/// Label selectors (equality and set-based) and field selectors (`metadata.name`, `metadata.namespace`); a field
/// selector on an unsupported field is 400.
async fn selectors_filter_by_label_sets_and_supported_fields(s: &Server) {
    let cm = s.configmaps.as_str();
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "cache")] {
        let mut o = config_map(name, json!({}));
        o["metadata"]["labels"] = json!({"tier": tier});
        s.post(cm, o).await;
    }
    s.post(cm, config_map("d", json!({}))).await;
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let q = |sel: &str| format!("{cm}?labelSelector={}", urlencode(sel));
    assert_eq!(names(&s.get(&q("tier=web")).await.1), ["a"]);
    assert_eq!(names(&s.get(&q("tier!=web")).await.1), ["b", "c", "d"]);
    assert_eq!(names(&s.get(&q("tier in (db,cache)")).await.1), ["b", "c"]);
    assert_eq!(
        names(&s.get(&q("tier notin (db)")).await.1),
        ["a", "c", "d"]
    );
    assert_eq!(names(&s.get(&q("tier")).await.1), ["a", "b", "c"]);
    assert_eq!(names(&s.get(&q("!tier")).await.1), ["d"]);
    let (_, v) = s
        .get(&format!("{cm}?fieldSelector=metadata.name%3Db"))
        .await;
    assert_eq!(names(&v), ["b"]);
    let (_, v) = s
        .get(&format!(
            "/api/v1/configmaps?fieldSelector=metadata.namespace%3D{},metadata.name!%3Da",
            s.ns
        ))
        .await;
    assert_eq!(names(&v), ["b", "c", "d"]);
    let (code, v) = s.get(&format!("{cm}?fieldSelector=data.k%3Dv")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert_status(&v, 400, "BadRequest");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Events: the operator writes `events.k8s.io/v1` Events; they are stored and listed per namespace, and a field
/// selector on `metadata.name` finds one.
async fn events_are_stored_and_listed_per_namespace(s: &Server) {
    let ev = |name: &str, regarding: &str| {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": name},
            "eventTime": "2026-11-23T00:00:00.000000Z", "reportingController": "pdso", "reportingInstance": "pdso-0",
            "action": "Sync", "reason": "Synced", "type": "Normal", "note": "ok",
            "regarding": {"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                "namespace": s.ns, "name": regarding}})
    };
    let evs = &s.ns_path("/apis/events.k8s.io/v1", "events");
    let (code, v) = s.post(evs, ev("e1", "ca-1")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["regarding"]["name"], "ca-1");
    s.post(evs, ev("e2", "ca-2")).await;
    let (_, v) = s.get(evs).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = s
        .get(&format!("{evs}?fieldSelector=metadata.name%3De2"))
        .await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["regarding"]["name"], "ca-2");
    let (_, v) = s
        .get("/apis/events.k8s.io/v1/namespaces/no-such-namespace/events")
        .await;
    assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
}

/// Leases: leader election's compare-and-swap. An update carrying the holder's resourceVersion wins; a
/// concurrent one with the old version gets 409 and the holder stays.
async fn lease_updates_are_compare_and_swap(s: &Server) {
    let leases = &s.ns_path("/apis/coordination.k8s.io/v1", "leases");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}});
    let (code, held) = s.post(leases, lease).await;
    assert_eq!(code, StatusCode::CREATED, "{held}");
    let mut b = held.clone();
    b["spec"]["holderIdentity"] = json!("b");
    let mut c = held.clone();
    c["spec"]["holderIdentity"] = json!("c");
    let (code, _) = s.put(&format!("{leases}/l"), b).await;
    assert_eq!(code, StatusCode::OK);
    let (code, v) = s.put(&format!("{leases}/l"), c).await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        s.get(&format!("{leases}/l")).await.1["spec"]["holderIdentity"],
        "b"
    );
}

/// The status subresource of a custom resource: a write to the main resource ignores `status`, a write to
/// `/status` changes only status and leaves `metadata.generation` alone.
async fn status_writes_go_through_the_subresource_only(s: &Server) {
    let widgets = s.widgets_path.as_str();
    s.widgets().await;
    let mut w = widget("w", json!({"size": 1}));
    w["status"] = json!({"phase": "ignored"});
    let (_, v) = s.post(widgets, w).await;
    assert!(
        v.get("status").is_none_or(|st| st.get("phase").is_none()),
        "{v}"
    );
    assert_eq!(v["metadata"]["generation"], 1);
    let (code, v) = s
        .patch(
            &format!("{widgets}/w/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": "Ready"}, "spec": {"size": 9}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["phase"], "Ready");
    assert_eq!(v["spec"]["size"], 1, "spec untouched through /status");
    assert_eq!(v["metadata"]["generation"], 1);
}

/// Each conformance behaviour runs against both servers: `emulator::<name>` and `real_api_server::<name>`. Where
/// they differ on purpose, the test says so and asserts each server's own behaviour (`s.real`); the list of
/// simplifications in docs/contributing.md names every such difference.
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        mod emulator {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Server::emulator().await).await;
                }
            )*
        }
        mod real_api_server {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(s) = super::Server::real().await else {
                        return;
                    };
                    super::$name(&s).await;
                }
            )*
        }
    };
}

against_both!(
    discovery_names_groups_versions_resources_verbs_and_subresources,
    openapi_v3_serves_a_document_per_group_version_with_crd_schemas,
    create_conflicts_and_missing_objects_answer_with_status_details,
    an_invalid_secret_names_each_refused_field_in_its_causes,
    updates_with_a_stale_resource_version_conflict,
    merge_json_and_strategic_patches_follow_their_rfcs,
    server_side_apply_owns_fields_per_manager_with_atomic_lists,
    a_refused_apply_names_each_conflict_and_a_resource_version_guards_it,
    crd_schemas_default_prune_preserve_and_check_transition_rules,
    list_resource_version_and_match_semantics,
    watches_end_at_their_timeout_with_a_bookmark,
    streaming_lists_send_the_objects_then_a_marked_bookmark,
    a_created_objects_fields_handed_to_apply_are_removed_when_applied_no_more,
    delete_propagation_background_orphan_and_foreground,
    selectors_filter_by_label_sets_and_supported_fields,
    events_are_stored_and_listed_per_namespace,
    lease_updates_are_compare_and_swap,
    status_writes_go_through_the_subresource_only,
);
