//! Admission for custom resources: schema defaults, OpenAPI structural validation (jsonschema) and CEL rules
//! (`x-kubernetes-validations`, kube-cel), with messages shaped like the API server's.

use jsonschema::error::ValidationErrorKind;
use serde_json::{Map, Value};

use super::catalog::Kind;

/// Turn an OpenAPI v3 structural schema into a JSON Schema draft 4 document: `nullable` becomes a `null` type,
/// `format` is dropped (the API server checks few formats), int-or-string is an integer or a string.
fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                match k.as_str() {
                    "format" | "x-kubernetes-validations" | "default" | "description" => {}
                    "properties" | "patternProperties" => {
                        let props = val.as_object().map(|p| {
                            p.iter()
                                .map(|(k, s)| (k.clone(), to_json_schema(s)))
                                .collect()
                        });
                        out.insert(k.clone(), Value::Object(props.unwrap_or_default()));
                    }
                    _ => {
                        out.insert(k.clone(), to_json_schema(val));
                    }
                }
            }
            if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                out.insert("type".into(), serde_json::json!(["integer", "string"]));
            }
            if m.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = out.get("type").cloned()
            {
                out.insert(
                    "type".into(),
                    Value::Array(vec![Value::String(t), Value::String("null".into())]),
                );
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

fn field(pointer: &str) -> String {
    let p = pointer.trim_start_matches('/').replace('/', ".");
    if p.is_empty() { "<root>".into() } else { p }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}...", &s[..80])
    } else {
        s
    }
}

/// One admission failure: (field path, message).
pub type Cause = (String, String);

/// Apply defaults, then validate. Returns the defaulted object or the causes of rejection.
pub fn admit(kind: &Kind, obj: &Value, old: Option<&Value>) -> Result<Value, Vec<Cause>> {
    let mut causes = Vec::new();
    if let Some(name) = obj["metadata"]["name"].as_str()
        && !valid_name(name)
    {
        causes.push(("metadata.name".to_string(), format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")));
    }
    let Some(schema) = &kind.schema else {
        return if causes.is_empty() {
            Ok(obj.clone())
        } else {
            Err(causes)
        };
    };
    // Metadata is validated by the API server itself, not by the CRD schema.
    let mut body = obj.clone();
    let metadata = body.as_object_mut().and_then(|m| m.remove("metadata"));
    let mut defaulted = kube_cel::apply_defaults(schema, &body);
    let js = to_json_schema(schema);
    match jsonschema::draft4::new(&js) {
        Ok(validator) => {
            for e in validator.iter_errors(&defaulted) {
                let path = field(e.instance_path().as_str());
                let msg = match e.kind() {
                    ValidationErrorKind::Pattern { pattern } => {
                        format!(
                            "Invalid value: {}: {path} in body should match '{pattern}'",
                            short(e.instance())
                        )
                    }
                    ValidationErrorKind::Enum { options } => {
                        let opts: Vec<String> = options
                            .as_array()
                            .map(|a| a.iter().map(|o| o.to_string()).collect())
                            .unwrap_or_default();
                        format!(
                            "Unsupported value: {}: supported values: {}",
                            short(e.instance()),
                            opts.join(", ")
                        )
                    }
                    ValidationErrorKind::Required { property } => {
                        let p = property.as_str().unwrap_or_default();
                        let full = if path == "<root>" {
                            p.to_string()
                        } else {
                            format!("{path}.{p}")
                        };
                        causes.push((full, "Required value".into()));
                        continue;
                    }
                    ValidationErrorKind::Type { .. } => {
                        format!(
                            "Invalid value: {}: {path} in body has the wrong type ({e})",
                            short(e.instance())
                        )
                    }
                    _ => format!("Invalid value: {}: {e}", short(e.instance())),
                };
                causes.push((path, msg));
            }
        }
        Err(e) => causes.push((
            "<schema>".into(),
            format!("the CRD schema cannot be compiled: {e}"),
        )),
    }
    if causes.is_empty() {
        let old_body = old.map(|o| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("metadata");
            }
            o
        });
        let validator = kube_cel::Validator::new();
        let ctx = kube_cel::RootContext {
            api_version: kind.api_version(),
            api_group: kind.group.clone(),
            kind: kind.kind.clone(),
        };
        let mut with_meta = defaulted.clone();
        if let (Some(m), Some(meta)) = (with_meta.as_object_mut(), metadata.clone()) {
            m.insert("metadata".into(), meta);
        }
        if let Err(errs) =
            validator.validate_with_context(schema, &with_meta, old_body.as_ref(), Some(&ctx))
        {
            for e in errs.iter() {
                let path = if e.field_path.is_empty() {
                    "<nil>".to_string()
                } else {
                    e.field_path.clone()
                };
                causes.push((path, format!("Invalid value: \"object\": {}", e.message)));
            }
        }
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    if let (Some(m), Some(meta)) = (defaulted.as_object_mut(), metadata) {
        m.insert("metadata".into(), meta);
    }
    Ok(defaulted)
}

/// RFC 1123 subdomain.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Remove fields the schema does not declare (the API server's pruning); returns their paths.
pub fn prune(kind: &Kind, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let Some(schema) = &kind.schema else {
        return unknown;
    };
    if let Some(m) = obj.as_object_mut() {
        for (k, v) in m.iter_mut() {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match schema["properties"].get(k) {
                Some(s) => prune_rec(s, v, k.clone(), &mut unknown),
                None => unknown.push(k.clone()),
            }
        }
        let keep: Vec<String> = m
            .keys()
            .filter(|k| {
                matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    || schema["properties"].get(*k).is_some()
            })
            .cloned()
            .collect();
        m.retain(|k, _| keep.contains(k));
    }
    unknown
}

fn prune_rec(schema: &Value, v: &mut Value, path: String, unknown: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object() {
                let extra: Vec<String> = m
                    .keys()
                    .filter(|k| !props.contains_key(*k))
                    .cloned()
                    .collect();
                for k in extra {
                    unknown.push(format!("{path}.{k}"));
                    m.remove(&k);
                }
                for (k, child) in m.iter_mut() {
                    prune_rec(&props[k], child, format!("{path}.{k}"), unknown);
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in m.iter_mut() {
                    prune_rec(ap, child, format!("{path}.{k}"), unknown);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter_mut().enumerate() {
                prune_rec(&schema["items"], child, format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// A Secret as the API server validates it: keys `[-._a-zA-Z0-9]+`, base64 values, at most 1 MiB of data in all,
/// `type` fixed once set, `data` fixed once `immutable: true`. Field paths and messages as the server writes them.
pub fn secret(new: &Value, old: Option<&Value>) -> Result<(), Vec<(String, String)>> {
    use base64::Engine;
    let mut causes = Vec::new();
    let mut total = 0usize;
    if let Some(data) = new["data"].as_object() {
        for (k, v) in data {
            let key_ok = !k.is_empty()
                && k.len() <= 253
                && k != "."
                && k != ".."
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !key_ok {
                causes.push((
                    format!("data[{k}]"),
                    format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
                ));
            }
            match v
                .as_str()
                .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
            {
                Some(Ok(bytes)) => total += bytes.len(),
                _ => causes.push((
                    format!("data[{k}]"),
                    "Invalid value: illegal base64 data".to_string(),
                )),
            }
        }
    }
    if total > 1024 * 1024 {
        causes.push((
            "data".to_string(),
            format!("Too long: may not be more than {} bytes", 1024 * 1024),
        ));
    }
    if let Some(old) = old {
        let ty = |v: &Value| v["type"].as_str().unwrap_or("Opaque").to_string();
        if ty(new) != ty(old) {
            causes.push((
                "type".to_string(),
                format!("Invalid value: {:?}: field is immutable", ty(new)),
            ));
        }
        if old["immutable"] == true {
            if new["data"] != old["data"] {
                causes.push((
                    "data".to_string(),
                    "Forbidden: field is immutable when `immutable` is set".to_string(),
                ));
            }
            if new["immutable"] != true {
                causes.push((
                    "immutable".to_string(),
                    "Forbidden: field is immutable when `immutable` is set".to_string(),
                ));
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}
