//! Server-side printing (`Accept: application/json;as=Table`), as `kubectl get` asks for it.

use serde_json::{Value, json};
use serde_json_path::JsonPath;

use super::catalog::Kind;

/// Computes one cell of a row.
type Getter = Box<dyn Fn(&Value) -> Value>;

fn col(name: &str, type_: &str, priority: i64, description: &str) -> Value {
    json!({"name": name, "type": type_, "format": if name == "Name" { "name" } else { "" }, "description": description, "priority": priority})
}

fn eval(path: &str, obj: &Value) -> Value {
    let Ok(p) = JsonPath::parse(&format!("${path}")) else {
        return Value::Null;
    };
    p.query(obj)
        .all()
        .first()
        .map(|v| (*v).clone())
        .unwrap_or(Value::Null)
}

/// The API server's rendering of `date` cells: time since, as `kubectl` shows it (`<invalid>` for the future).
pub fn human_since(v: &Value) -> Value {
    let Some(t) = v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) else {
        return if v.is_null() {
            Value::String("<unknown>".into())
        } else {
            v.clone()
        };
    };
    let s = jiff::Timestamp::now().duration_since(t).as_secs();
    let text = if s < -1 {
        "<invalid>".to_string()
    } else if s < 120 {
        format!("{}s", s.max(0))
    } else if s < 600 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s < 3 * 3600 {
        format!("{}m", s / 60)
    } else if s < 8 * 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else if s < 8 * 86400 {
        format!("{}d{}h", s / 86400, (s % 86400) / 3600)
    } else {
        format!("{}d", s / 86400)
    };
    Value::String(text)
}

/// A Table of `objects` with the kind's columns.
pub fn table(kind: &Kind, objects: &[Value], rv: u64) -> Value {
    let mut cols = vec![col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    )];
    let mut getters: Vec<Getter> = vec![Box::new(|o: &Value| o["metadata"]["name"].clone())];
    if kind.schema.is_some() {
        let mut printer = kind.printer_columns.clone();
        if printer.is_empty() {
            printer.push(
                json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
            );
        }
        for c in printer {
            cols.push(col(
                c["name"].as_str().unwrap_or_default(),
                c["type"].as_str().unwrap_or("string"),
                c["priority"].as_i64().unwrap_or(0),
                c["description"].as_str().unwrap_or_default(),
            ));
            let path = c["jsonPath"].as_str().unwrap_or_default().to_string();
            if c["type"] == "date" {
                getters.push(Box::new(move |o: &Value| human_since(&eval(&path, o))));
            } else {
                getters.push(Box::new(move |o: &Value| eval(&path, o)));
            }
        }
    } else {
        if kind.plural == "secrets" {
            cols.push(col("Type", "string", 0, ""));
            getters.push(Box::new(|o: &Value| o["type"].clone()));
            cols.push(col("Data", "string", 0, ""));
            getters.push(Box::new(|o: &Value| {
                json!(o["data"].as_object().map_or(0, |m| m.len()))
            }));
        }
        cols.push(col("Age", "date", 0, ""));
        getters.push(Box::new(|o: &Value| {
            human_since(&o["metadata"]["creationTimestamp"])
        }));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({"cells": getters.iter().map(|g| g(o)).collect::<Vec<_>>(),
                   "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": cols, "rows": rows})
}
