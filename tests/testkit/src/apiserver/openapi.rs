//! `/openapi/v3`: enough for kubectl to see that the server validates fields itself (a PATCH operation per kind
//! with a `fieldValidation` parameter) and to `kubectl explain` custom resources (their schemas as components).

use serde_json::{Map, Value, json};

use super::catalog::Kind;

fn gv_path(k: &Kind) -> String {
    if k.group.is_empty() {
        format!("api/{}", k.version)
    } else {
        format!("apis/{}/{}", k.group, k.version)
    }
}

/// The root document listing every group-version.
pub fn root(kinds: &[Kind]) -> Value {
    let mut paths = Map::new();
    for k in kinds {
        let p = gv_path(k);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=emulator")}),
        );
    }
    json!({"paths": paths})
}

fn component_name(k: &Kind) -> String {
    let g: Vec<&str> = if k.group.is_empty() {
        vec!["core"]
    } else {
        k.group.split('.').rev().collect()
    };
    format!("{}.{}.{}", g.join("."), k.version, k.kind)
}

/// The document of one group-version, or `None` if nothing is served there.
pub fn group_version(kinds: &[Kind], gv: &str) -> Option<Value> {
    let served: Vec<&Kind> = kinds.iter().filter(|k| gv_path(k) == gv).collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for k in served {
        let gvk = json!([{"group": k.group, "version": k.version, "kind": k.kind}]);
        let base = if k.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", k.plural)
        } else {
            format!("/{gv}/{}", k.plural)
        };
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
        ]);
        let op = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk[0], "parameters": params, "responses": {"200": {"description": "OK"}}});
        paths.insert(format!("{base}/{{name}}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
        paths.insert(base, json!({"get": op("list"), "post": op("post")}));
        let mut schema = k.schema.clone().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = gvk;
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props
                .entry("metadata")
                .or_insert(json!({"type": "object", "description": "Standard object's metadata."}));
        }
        schemas.insert(component_name(k), schema);
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": schemas}}),
    )
}

/// `/openapi/v2` as JSON: custom resource schemas as definitions tagged with their group-version-kind.
pub fn v2_json(kinds: &[Kind]) -> Value {
    let mut defs = Map::new();
    for k in kinds {
        if let Some(schema) = &k.schema {
            let mut d = schema.clone();
            d["x-kubernetes-group-version-kind"] =
                json!([{"group": k.group, "version": k.version, "kind": k.kind}]);
            defs.insert(component_name(k), d);
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": defs})
}

/// `/openapi/v2` as kubectl asks for it (gnostic `openapi_v2.Document` protobuf): `swagger` and `info` only.
/// kubectl reads it to check `fieldValidation` support and to validate `kind: List` items client-side; with no
/// definitions it skips the client-side check and the server validates each item (a documented simplification).
pub fn v2_protobuf() -> Vec<u8> {
    fn string_field(tag: u8, s: &str) -> Vec<u8> {
        let mut out = vec![tag, s.len() as u8];
        out.extend_from_slice(s.as_bytes());
        out
    }
    let info: Vec<u8> = [
        string_field(0x0a, "Kubernetes"),
        string_field(0x12, "v1.33.0"),
    ]
    .concat();
    let mut doc = string_field(0x0a, "2.0");
    doc.push(0x12);
    doc.push(info.len() as u8);
    doc.extend(info);
    doc
}
