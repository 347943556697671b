//! Conformance of the test kit's API emulator, written from the Kubernetes API conventions and the API server's
//! documented behaviour (sig-architecture/api-conventions.md, "Kubernetes API Concepts", the CRD and server-side
//! apply documentation), not from the emulator's code. Each test is one row of the table in the README
//! ("The emulator: conformance"); the older rows live in `tests/emulator.rs`. Where the emulator intentionally
//! differs, the test asserts what it does instead and says so, and the README's simplifications list names it.
//!
//! Requests are raw HTTP, so the wire shape (status codes, `Status` bodies, headers, watch lines) is what is
//! checked, not what a client library makes of it.

use std::time::{Duration, Instant};

use pdso_testkit::apiserver::ApiServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Server {
    api: ApiServer,
    http: reqwest::Client,
}

impl Server {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = ApiServer::start().await.unwrap();
        api.apply_crd_dir(std::path::Path::new("crds")).unwrap();
        Self {
            api,
            http: reqwest::Client::new(),
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
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api.url()));
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

    /// Install the conformance CRD (group `conformance.test`, kind `Widget`).
    async fn widgets(&self) {
        let (s, v) = self
            .post(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                widget_crd(),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
}

const CM: &str = "/api/v1/namespaces/default/configmaps";
const WIDGETS: &str = "/apis/conformance.test/v1/namespaces/default/widgets";

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

fn cm(name: &str, data: Value) -> Value {
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
#[tokio::test]
async fn discovery_names_groups_versions_resources_verbs_and_subresources() {
    let s = Server::start().await;
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
    let (code, v) = s.get("/apis/no.such.group/v1").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&v, 404, "NotFound");
}

/// OpenAPI v3: `/openapi/v3` lists one document per group version; a CRD's document carries its schema with
/// `x-kubernetes-group-version-kind` (what `kubectl explain` reads).
#[tokio::test]
async fn openapi_v3_serves_a_document_per_group_version_with_crd_schemas() {
    let s = Server::start().await;
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
#[tokio::test]
async fn create_conflicts_and_missing_objects_answer_with_status_details() {
    let s = Server::start().await;
    let (code, created) = s.post(CM, cm("a", json!({"k": "v"}))).await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(created["metadata"]["uid"].as_str().is_some());
    assert!(created["metadata"]["creationTimestamp"].as_str().is_some());
    let (code, v) = s.post(CM, cm("a", json!({"k": "v"}))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_status(&v, 409, "AlreadyExists");
    assert_eq!(v["details"]["name"], "a");
    assert_eq!(v["details"]["kind"], "configmaps");
    let (code, v) = s.get(&format!("{CM}/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&v, 404, "NotFound");
    assert_eq!(v["details"]["name"], "nope");
    // A name that is not a DNS subdomain is Invalid (422), with the field named.
    let (code, v) = s.post(CM, cm("Not_A_Name", json!({}))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_status(&v, 422, "Invalid");
    assert!(
        v["message"].as_str().unwrap().contains("metadata.name"),
        "{v}"
    );
}

/// Optimistic concurrency: an update carrying a stale `resourceVersion` is 409 Conflict and changes nothing; each
/// write changes `resourceVersion`; a write that changes nothing keeps it.
#[tokio::test]
async fn updates_with_a_stale_resource_version_conflict() {
    let s = Server::start().await;
    let (_, v1) = s.post(CM, cm("a", json!({"k": "1"}))).await;
    let mut next = v1.clone();
    next["data"]["k"] = json!("2");
    let (code, v2) = s.put(&format!("{CM}/a"), next.clone()).await;
    assert_eq!(code, StatusCode::OK, "{v2}");
    assert_ne!(
        v2["metadata"]["resourceVersion"],
        v1["metadata"]["resourceVersion"]
    );
    // The same stale body again: rejected, and the stored object keeps "2".
    next["data"]["k"] = json!("3");
    let (code, v) = s.put(&format!("{CM}/a"), next).await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_status(&v, 409, "Conflict");
    assert_eq!(v["details"]["name"], "a", "{v}");
    let (_, now) = s.get(&format!("{CM}/a")).await;
    assert_eq!(now["data"]["k"], "2");
    // A no-op patch does not bump the resourceVersion.
    let (_, same) = s
        .patch(
            &format!("{CM}/a"),
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
#[tokio::test]
async fn merge_json_and_strategic_patches_follow_their_rfcs() {
    let s = Server::start().await;
    s.post(CM, cm("a", json!({"keep": "1", "drop": "2"}))).await;
    let a = format!("{CM}/a");
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
    s.post(WIDGETS, widget("w", json!({}))).await;
    let (code, v) = s
        .patch(
            &format!("{WIDGETS}/w"),
            "application/strategic-merge-patch+json",
            json!({"spec": {"size": 2}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    assert_status(&v, 415, "UnsupportedMediaType");
}

/// Server-side apply: each manager owns the fields it applied; a second manager changing an owned field gets 409
/// Conflict naming the owner unless it forces; a manager that stops applying a field removes it only if nobody
/// else owns it. (Intentional difference: lists are atomic. The API server merges `x-kubernetes-list-type: map`
/// items by key and tracks ownership per item; in the emulator a second manager applying another item of the
/// same list conflicts with the list's owner. The operator never co-owns a list.)
#[tokio::test]
async fn server_side_apply_owns_fields_per_manager_with_atomic_lists() {
    let s = Server::start().await;
    s.widgets().await;
    let w = format!("{WIDGETS}/w");
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
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "atomic list (emulator simplification): {v}"
    );
}

/// CRD schema admission: defaults applied, unknown fields pruned (with a warning) unless under
/// `x-kubernetes-preserve-unknown-fields`, refused with `fieldValidation=Strict`; int-or-string takes both; a CEL
/// transition rule sees `oldSelf` on update only.
#[tokio::test]
async fn crd_schemas_default_prune_preserve_and_check_transition_rules() {
    let s = Server::start().await;
    s.widgets().await;
    let (code, v, headers) = s
        .call(
            Method::POST,
            WIDGETS,
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
            &format!("{WIDGETS}?fieldValidation=Strict"),
            Some(widget("x", json!({"bogus": 1}))),
            "application/json",
        )
        .await;
    assert!(code.is_client_error(), "{code} {v}");
    assert!(v["message"].as_str().unwrap().contains("bogus"), "{v}");
    let (code, v) = s.post(WIDGETS, widget("n", json!({"port": 8080}))).await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "int-or-string takes an integer: {v}"
    );
    let (code, v) = s.post(WIDGETS, widget("b", json!({"port": [1]}))).await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "but not a list: {v}"
    );
    // Transition rule: size may only grow.
    let w = format!("{WIDGETS}/w");
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
/// `resourceVersion` (400); `Exact` at an older version than the emulator keeps is 410 Gone; `NotOlderThan` a
/// version not yet reached is refused. (Intentional difference: the emulator keeps no history, so `Exact` works
/// only at the current version; the real server serves recent history from its watch cache.)
#[tokio::test]
async fn list_resource_version_and_match_semantics() {
    let s = Server::start().await;
    s.post(CM, cm("a", json!({}))).await;
    let (code, list) = s.get(CM).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "ConfigMapList");
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (code, _) = s.get(&format!("{CM}?resourceVersion=0")).await;
    assert_eq!(code, StatusCode::OK);
    let (code, v) = s
        .get(&format!("{CM}?resourceVersionMatch=NotOlderThan"))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert_status(&v, 400, "BadRequest");
    let at = |version: u64, how: &str| {
        format!("{CM}?resourceVersion={version}&resourceVersionMatch={how}")
    };
    let (code, v) = s.get(&at(rv, "Exact")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    s.post(CM, cm("b", json!({}))).await;
    let (code, v) = s.get(&at(rv, "Exact")).await;
    assert_eq!(code, StatusCode::GONE, "no history kept: {v}");
    assert_status(&v, 410, "Expired");
    let (code, v) = s.get(&at(rv, "NotOlderThan")).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let (code, v) = s.get(&at(rv + 1000, "NotOlderThan")).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_status(&v, 504, "Timeout");
    let (code, v) = s
        .get(&format!(
            "{CM}?resourceVersion=0&resourceVersionMatch=Sometimes"
        ))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
}

/// Watch: `timeoutSeconds` ends the stream; with `allowWatchBookmarks` a BOOKMARK carries the latest
/// resourceVersion shortly before it ends (the watch cache sends one 2 s before the deadline); events are
/// ADDED/MODIFIED/DELETED with the object.
#[tokio::test]
async fn watches_end_at_their_timeout_with_a_bookmark() {
    let s = Server::start().await;
    let (_, list) = s.get(CM).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!(
        "{}{CM}?watch=true&resourceVersion={rv}&timeoutSeconds=4&allowWatchBookmarks=true",
        s.api.url()
    );
    let started = Instant::now();
    let watch = tokio::spawn({
        let http = s.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.post(CM, cm("a", json!({}))).await;
    s.patch(
        &format!("{CM}/a"),
        "application/merge-patch+json",
        json!({"data": {"k": "v"}}),
    )
    .await;
    s.delete(&format!("{CM}/a"), None).await;
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

/// Deletion propagation: Background deletes dependents; Orphan keeps them and drops the ownerReference;
/// Foreground removes dependents before the owner. (Intentional difference: the emulator's garbage collector runs
/// inside the delete, so the owner is never seen with the `foregroundDeletion` finalizer, and
/// `blockOwnerDeletion` has nothing to block.)
#[tokio::test]
async fn delete_propagation_background_orphan_and_foreground() {
    let s = Server::start().await;
    for policy in ["Background", "Orphan", "Foreground"] {
        let (_, owner) = s.post(CM, cm("owner", json!({}))).await;
        let uid = owner["metadata"]["uid"].clone();
        let mut dep = cm("dep", json!({}));
        dep["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
            "name": "owner", "uid": uid, "blockOwnerDeletion": true}]);
        s.post(CM, dep).await;
        let (code, v) = s
            .delete(
                &format!("{CM}/owner"),
                Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy})),
            )
            .await;
        assert!(code.is_success(), "{policy}: {code} {v}");
        let (owner_code, _) = s.get(&format!("{CM}/owner")).await;
        assert_eq!(owner_code, StatusCode::NOT_FOUND, "{policy}");
        let (dep_code, dep) = s.get(&format!("{CM}/dep")).await;
        if policy == "Orphan" {
            assert_eq!(dep_code, StatusCode::OK, "orphaned");
            assert!(
                dep["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(|r| r.is_empty()),
                "{dep}"
            );
            s.delete(&format!("{CM}/dep"), None).await;
        } else {
            assert_eq!(dep_code, StatusCode::NOT_FOUND, "{policy}: collected");
        }
    }
}

/// Label selectors (equality and set-based) and field selectors (`metadata.name`, `metadata.namespace`); a field
/// selector on an unsupported field is 400.
#[tokio::test]
async fn selectors_filter_by_label_sets_and_supported_fields() {
    let s = Server::start().await;
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "cache")] {
        let mut o = cm(name, json!({}));
        o["metadata"]["labels"] = json!({"tier": tier});
        s.post(CM, o).await;
    }
    s.post(CM, cm("d", json!({}))).await;
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let q = |sel: &str| format!("{CM}?labelSelector={}", urlencode(sel));
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
        .get(&format!("{CM}?fieldSelector=metadata.name%3Db"))
        .await;
    assert_eq!(names(&v), ["b"]);
    let (_, v) = s
        .get("/api/v1/configmaps?fieldSelector=metadata.namespace%3Ddefault,metadata.name!%3Da")
        .await;
    assert_eq!(names(&v), ["b", "c", "d"]);
    let (code, v) = s.get(&format!("{CM}?fieldSelector=data.k%3Dv")).await;
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
#[tokio::test]
async fn events_are_stored_and_listed_per_namespace() {
    let s = Server::start().await;
    let ev = |name: &str, regarding: &str| {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": name},
            "eventTime": "2026-11-23T00:00:00.000000Z", "reportingController": "pdso", "reportingInstance": "pdso-0",
            "action": "Sync", "reason": "Synced", "type": "Normal", "note": "ok",
            "regarding": {"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                "namespace": "default", "name": regarding}})
    };
    let evs = "/apis/events.k8s.io/v1/namespaces/default/events";
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
        .get("/apis/events.k8s.io/v1/namespaces/other/events")
        .await;
    assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
}

/// Leases: leader election's compare-and-swap. An update carrying the holder's resourceVersion wins; a
/// concurrent one with the old version gets 409 and the holder stays.
#[tokio::test]
async fn lease_updates_are_compare_and_swap() {
    let s = Server::start().await;
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
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
#[tokio::test]
async fn status_writes_go_through_the_subresource_only() {
    let s = Server::start().await;
    s.widgets().await;
    let mut w = widget("w", json!({"size": 1}));
    w["status"] = json!({"phase": "ignored"});
    let (_, v) = s.post(WIDGETS, w).await;
    assert!(
        v.get("status").is_none_or(|st| st.get("phase").is_none()),
        "{v}"
    );
    assert_eq!(v["metadata"]["generation"], 1);
    let (code, v) = s
        .patch(
            &format!("{WIDGETS}/w/status"),
            "application/merge-patch+json",
            json!({"status": {"phase": "Ready"}, "spec": {"size": 9}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["phase"], "Ready");
    assert_eq!(v["spec"]["size"], 1, "spec untouched through /status");
    assert_eq!(v["metadata"]["generation"], 1);
}
