//! Object storage: resourceVersions, watch history (with compaction → 410 Gone), field ownership for server-side
//! apply, generation, finalizers and ownerReference garbage collection.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::catalog::{Kind, builtins, from_crd};
use super::validate;

/// History kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 5000;

/// An API error, rendered as a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, …
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// Field causes (for `Invalid`), as (field, message).
    pub causes: Vec<(String, String)>,
    /// The causes' reason (`FieldValueInvalid` unless set: `FieldManagerConflict` for a refused apply).
    pub cause_reason: Option<&'static str>,
    /// (group, kind, name) of the object concerned.
    pub details: Option<Box<(String, String, String)>>,
}

impl ApiError {
    /// New error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            causes: vec![],
            cause_reason: None,
            details: None,
        }
    }
    /// Name the object concerned in `details` (group, resource, name), as the API server does for NotFound,
    /// AlreadyExists and Conflict.
    pub fn about(mut self, kind: &Kind, name: &str) -> Self {
        self.details = Some(Box::new((
            kind.group.clone(),
            kind.plural.clone(),
            name.to_string(),
        )));
        self
    }

    /// `metav1.Status` JSON.
    pub fn status(&self) -> Value {
        let mut details = json!({"causes": self.causes.iter().map(|(f, m)| json!({"field": f, "message": m, "reason": self.cause_reason.unwrap_or("FieldValueInvalid")})).collect::<Vec<_>>()});
        if let Some(d) = &self.details {
            let (group, kind, name) = &**d;
            if !group.is_empty() {
                details["group"] = json!(group);
            }
            details["kind"] = json!(kind);
            details["name"] = json!(name);
        }
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
            "reason": self.reason, "code": self.code, "details": details})
    }
}

/// Identity of a stored object.
pub type Key = (String, String, String, String); // group, plural, namespace ("" = cluster), name

/// A change, as sent to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    /// resourceVersion of the change.
    pub rv: u64,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub type_: &'static str,
    /// group, plural.
    pub resource: (String, String),
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// The object after the change.
    pub object: Value,
}

/// All state. Cloned to run a `dryRun=All` request against a copy.
#[derive(Clone)]
pub struct Store {
    kinds: BTreeMap<(String, String), Kind>,
    objects: BTreeMap<Key, Value>,
    managed: HashMap<Key, BTreeMap<String, BTreeSet<Vec<String>>>>,
    /// Per object and manager: the last operation (`Apply` or `Update`) and its time, for `managedFields`.
    manager_ops: HashMap<Key, BTreeMap<String, (&'static str, String)>>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    /// Oldest resourceVersion a watch may resume from.
    pub compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
    uid: u64,
    /// The current request asked for `fieldValidation=Strict` (unknown fields are errors, not pruned).
    pub strict: bool,
    /// Warnings of the current request (pruned unknown fields), sent as `Warning` headers.
    pub warnings: Vec<String>,
    /// The current request is `dryRun=All`: nothing reaches watchers (the caller restores a snapshot after).
    pub dry_run: bool,
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Store {
    /// A store with the built-in kinds and the `default`, `kube-system` namespaces.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(8192);
        let mut s = Self {
            kinds: builtins()
                .into_iter()
                .map(|k| ((k.group.clone(), k.plural.clone()), k))
                .collect(),
            objects: BTreeMap::new(),
            managed: HashMap::new(),
            manager_ops: HashMap::new(),
            rv: 100,
            history: VecDeque::new(),
            compacted: 100,
            tx,
            uid: 0,
            strict: false,
            warnings: Vec::new(),
            dry_run: false,
        };
        for ns in ["default", "kube-system"] {
            let _ = s.create(
                "",
                "namespaces",
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "emulator",
            );
        }
        s
    }

    /// Subscribe to changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Changes after `rv`, or `None` if that history was compacted away.
    pub fn since(&self, rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.compacted {
            return None;
        }
        Some(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// Drop all watch history (the next resume from an older version gets 410 Gone).
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Every kind, sorted.
    pub fn kinds(&self) -> Vec<Kind> {
        self.kinds.values().cloned().collect()
    }

    /// The kind served at group/version/plural.
    pub fn kind(&self, group: &str, version: &str, plural: &str) -> Option<Kind> {
        self.kinds
            .get(&(group.to_string(), plural.to_string()))
            .filter(|k| k.version == version)
            .cloned()
    }

    fn key(kind: &Kind, ns: &str, name: &str) -> Key {
        (
            kind.group.clone(),
            kind.plural.clone(),
            if kind.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    /// One object.
    pub fn get(&self, kind: &Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(kind, ns, name))
            .cloned()
            .ok_or_else(|| not_found(kind, name))
    }

    /// How many objects of `kind` in `ns` (all namespaces when empty) satisfy `pred`, without copying them.
    pub fn count(&self, kind: &Kind, ns: &str, pred: impl Fn(&Value) -> bool) -> usize {
        self.objects
            .iter()
            .filter(|((g, p, n, _), v)| {
                *g == kind.group && *p == kind.plural && (ns.is_empty() || n == ns) && pred(v)
            })
            .count()
    }

    /// Objects of a kind in a namespace (or all, with `ns == ""`), sorted by namespace and name.
    pub fn list(&self, kind: &Kind, ns: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((g, p, n, _), _)| {
                *g == kind.group && *p == kind.plural && (ns.is_empty() || n == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn kind_or_err(&self, group: &str, plural: &str) -> Result<Kind, ApiError> {
        self.kinds
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("the server could not find the requested resource ({plural}.{group})"),
                )
            })
    }

    /// Create.
    pub fn create(
        &mut self,
        group: &str,
        plural: &str,
        ns: &str,
        mut obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let kind = self.kind_or_err(group, plural)?;
        if obj["metadata"]["name"].as_str().is_none() {
            if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
                self.uid += 1;
                obj["metadata"]["name"] = json!(format!("{prefix}{:05x}", self.uid));
            } else {
                return Err(invalid(
                    &kind,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = Self::key(&kind, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.resource_name()),
            )
            .about(&kind, &name));
        }
        self.check_namespace(&kind, ns)?;
        let leaves = leaves_of(&obj, false);
        self.managed
            .entry(key.clone())
            .or_default()
            .insert(manager.to_string(), leaves);
        self.touch(&key, manager, "Update");
        let out = self.commit(&kind, key.clone(), None, obj, false);
        if out.is_err() {
            self.forget_managers(&key);
        }
        out
    }

    /// Record `manager`'s latest operation on `key` (shown in `metadata.managedFields`).
    fn touch(&mut self, key: &Key, manager: &str, op: &'static str) {
        self.manager_ops
            .entry(key.clone())
            .or_default()
            .insert(manager.to_string(), (op, now()));
    }

    fn forget_managers(&mut self, key: &Key) {
        self.managed.remove(key);
        self.manager_ops.remove(key);
    }

    /// `metadata.managedFields` as a real server writes it: one entry per manager owning fields, `FieldsV1` trees.
    fn managed_fields(&self, key: &Key, api_version: &str) -> Vec<Value> {
        let Some(owners) = self.managed.get(key) else {
            return Vec::new();
        };
        let ops = self.manager_ops.get(key);
        owners
            .iter()
            .filter(|(_, paths)| !paths.is_empty())
            .map(|(mgr, paths)| {
                let mut tree = Value::Object(Map::new());
                for p in paths {
                    let fp: Vec<String> = p.iter().map(|s| format!("f:{s}")).collect();
                    set_path(&mut tree, &fp, json!({}));
                }
                let (op, time) = ops
                    .and_then(|o| o.get(mgr))
                    .cloned()
                    .unwrap_or(("Update", now()));
                json!({"manager": mgr, "operation": op, "apiVersion": api_version, "time": time,
                       "fieldsType": "FieldsV1", "fieldsV1": tree})
            })
            .collect()
    }

    fn check_namespace(&self, kind: &Kind, ns: &str) -> Result<(), ApiError> {
        if kind.namespaced
            && !self.objects.contains_key(&(
                String::new(),
                "namespaces".into(),
                String::new(),
                ns.to_string(),
            ))
        {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            ));
        }
        Ok(())
    }

    /// Replace (PUT), optionally of the status subresource. A stale `metadata.resourceVersion` is a conflict.
    #[allow(clippy::too_many_arguments)]
    pub fn replace(
        &mut self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        obj: Value,
        status: bool,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let kind = self.kind_or_err(group, plural)?;
        let key = Self::key(&kind, ns, name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(&kind, name))?;
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.resource_name()
                ),
            )
            .about(&kind, name));
        }
        self.take_ownership(&key, manager, &old, &obj, status);
        self.touch(&key, manager, "Update");
        self.commit(&kind, key, Some(old), obj, status)
    }

    /// JSON merge patch, JSON patch, strategic merge (treated as merge) or server-side apply.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        content_type: &str,
        body: &[u8],
        manager: &str,
        force: bool,
        status: bool,
    ) -> Result<Value, ApiError> {
        let kind = self.kind_or_err(group, plural)?;
        let key = Self::key(&kind, ns, name);
        let old = self.objects.get(&key).cloned();
        let bad = |e: String| ApiError::new(400, "BadRequest", e);
        if content_type.starts_with("application/apply-patch") {
            let text = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
            let mut applied: Value = serde_saphyr::from_str(text)
                .map_err(|e| bad(format!("error decoding YAML: {e}")))?;
            // As the API server checks an applied object against its URL (found by the differential run: the
            // emulator took a nameless apply that creates). A nameless apply to an existing object or its status
            // takes the name from the URL.
            match applied["metadata"]["name"].as_str() {
                None | Some("") if old.is_some() || status => {}
                None | Some("") => {
                    return Err(bad(format!(
                        "the name of the object ({name} based on URL) was undeterminable: name must be provided"
                    )));
                }
                Some(n) if n != name => {
                    return Err(bad(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                Some(_) => {}
            }
            if applied["metadata"]["namespace"]
                .as_str()
                .is_some_and(|n| !n.is_empty() && n != ns)
            {
                return Err(bad(
                    "the namespace of the provided object does not match the namespace sent on the request"
                        .into(),
                ));
            }
            normalize(&mut applied);
            return self.apply(&kind, key, old, applied, manager, force, status, ns);
        }
        if content_type.starts_with("application/strategic-merge-patch") && kind.schema.is_some() {
            // Custom resources have no patch strategy metadata; the API server refuses (kubectl falls back to
            // a merge patch).
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
                     (strategic merge patch is not supported for custom resources: {content_type})"
                ),
            ));
        }
        let old = old.ok_or_else(|| not_found(&kind, name))?;
        let mut new = old.clone();
        if content_type.starts_with("application/json-patch+json") {
            let mut ops: Vec<Value> =
                serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
            // Like the API server's json-patch library: `test` of a missing path against null succeeds
            // (kube-rs's finalizer helper relies on it).
            ops.retain(|op| {
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && op["path"]
                        .as_str()
                        .is_some_and(|p| new.pointer(p).is_none()))
            });
            let p: json_patch::Patch =
                serde_json::from_value(Value::Array(ops)).map_err(|e| bad(e.to_string()))?;
            json_patch::patch(&mut new, &p)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
        } else {
            let p: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
            json_patch::merge(&mut new, &p);
        }
        if let Some(rv) = serde_json::from_slice::<Value>(body).ok().and_then(|b| {
            b["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string)
        }) && Some(rv.as_str()) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.resource_name()
                ),
            )
            .about(&kind, name));
        }
        self.take_ownership(&key, manager, &old, &new, status);
        self.touch(&key, manager, "Update");
        self.commit(&kind, key, Some(old), new, status)
    }

    fn take_ownership(&mut self, key: &Key, manager: &str, old: &Value, new: &Value, status: bool) {
        let (o, n) = (leaf_values(old, status), leaf_values(new, status));
        let changed: BTreeSet<Vec<String>> = n
            .iter()
            .filter(|(p, v)| o.get(*p) != Some(v))
            .map(|(p, _)| p.clone())
            .collect();
        let m = self.managed.entry(key.clone()).or_default();
        for (mgr, owned) in m.iter_mut() {
            if mgr != manager {
                owned.retain(|p| !changed.contains(p));
            }
        }
        m.entry(manager.to_string()).or_default().extend(changed);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        kind: &Kind,
        key: Key,
        old: Option<Value>,
        applied: Value,
        manager: &str,
        force: bool,
        status: bool,
        ns: &str,
    ) -> Result<Value, ApiError> {
        let name = key.3.clone();
        if applied["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != name)
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        let applied_leaves = leaf_values(&applied, status);
        let Some(old) = old else {
            if status {
                return Err(not_found(kind, &name));
            }
            self.check_namespace(kind, ns)?;
            let mut obj = applied;
            obj["metadata"]["name"] = json!(name);
            self.managed.entry(key.clone()).or_default().insert(
                manager.to_string(),
                applied_leaves.keys().cloned().collect(),
            );
            self.touch(&key, manager, "Apply");
            let out = self.commit(kind, key.clone(), None, obj, false);
            if out.is_err() {
                self.forget_managers(&key);
            }
            return out;
        };
        // A resourceVersion in the applied object is a precondition.
        if let Some(rv) = applied["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.resource_name()
                ),
            )
            .about(kind, &name));
        }
        let existing = leaf_values(&old, status);
        let ops = self.manager_ops.get(&key).cloned().unwrap_or_default();
        let api_version = kind.api_version();
        let owners = self.managed.entry(key.clone()).or_default();
        let mut conflicts = Vec::new();
        for (p, v) in &applied_leaves {
            for (mgr, owned) in owners.iter() {
                if mgr != manager && owned.contains(p) && existing.get(p) != Some(v) {
                    if std::env::var_os("KUBE_EMULATOR_DEBUG").is_some() {
                        eprintln!(
                            "conflict at {}:\n  have {}\n  want {}",
                            p.join("."),
                            existing.get(p).map(|x| x.to_string()).unwrap_or_default(),
                            v
                        );
                    }
                    // As the API server prints a manager: ` using <apiVersion>` for an Update entry.
                    let using = match ops.get(mgr) {
                        Some(("Update", _)) => format!(" using {api_version}"),
                        _ => String::new(),
                    };
                    conflicts.push((
                        format!(".{}", p.join(".")),
                        format!("conflict with \"{mgr}\"{using}"),
                    ));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let mut e = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts
                        .iter()
                        .map(|(p, m)| format!("{m}: {p}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
            e.causes = conflicts;
            e.cause_reason = Some("FieldManagerConflict");
            return Err(e);
        }
        let mine: BTreeSet<Vec<String>> = owners.get(manager).cloned().unwrap_or_default();
        for (mgr, owned) in owners.iter_mut() {
            if mgr != manager {
                owned.retain(|p| !applied_leaves.contains_key(p));
            }
        }
        let others: BTreeSet<Vec<String>> = owners
            .iter()
            .filter(|(m, _)| *m != manager)
            .flat_map(|(_, o)| o.iter().cloned())
            .collect();
        let mut new = old.clone();
        for p in mine
            .iter()
            .filter(|p| !applied_leaves.contains_key(*p) && !others.contains(*p))
        {
            remove_path(&mut new, p);
        }
        for (p, v) in &applied_leaves {
            set_path(&mut new, p, v.clone());
        }
        owners.insert(
            manager.to_string(),
            applied_leaves.keys().cloned().collect(),
        );
        self.touch(&key, manager, "Apply");
        self.commit(kind, key, Some(old), new, status)
    }

    /// Delete; with finalizers only marks `deletionTimestamp`. Dependents are garbage-collected unless orphaned.
    pub fn delete(
        &mut self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        orphan: bool,
    ) -> Result<Value, ApiError> {
        let kind = self.kind_or_err(group, plural)?;
        let key = Self::key(&kind, ns, name);
        let mut obj = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(&kind, name))?;
        if obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                return self.store(&kind, key, obj, "MODIFIED");
            }
            return Ok(obj);
        }
        self.remove(&kind, key, orphan)
    }

    fn remove(&mut self, kind: &Kind, key: Key, orphan: bool) -> Result<Value, ApiError> {
        let Some(mut obj) = self.objects.remove(&key) else {
            return Err(not_found(kind, &key.3));
        };
        self.forget_managers(&key);
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit("DELETED", kind, &key.2, obj.clone());
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Garbage collection of dependents (background), or orphaning.
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dk in dependents {
            let Some(dkind) = self.kinds.get(&(dk.0.clone(), dk.1.clone())).cloned() else {
                continue;
            };
            if orphan {
                if let Some(mut d) = self.objects.get(&dk).cloned() {
                    let refs: Vec<Value> = d["metadata"]["ownerReferences"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r| r["uid"] != json!(uid))
                        .collect();
                    d["metadata"]["ownerReferences"] = json!(refs);
                    let _ = self.store(&dkind, dk, d, "MODIFIED");
                }
            } else {
                let _ = self.delete(&dk.0, &dk.1, &dk.2, &dk.3, false);
            }
        }
        if kind.plural == "namespaces" && kind.group.is_empty() {
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.2 == key.3)
                .cloned()
                .collect();
            for k in inside {
                let _ = self.delete(&k.0, &k.1, &k.2, &k.3, false);
            }
        }
        if kind.plural == "customresourcedefinitions" {
            let group = obj["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plural = obj["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.kinds.remove(&(group, plural));
        }
        Ok(obj)
    }

    /// Common write path: subresource rules, admission, metadata, no-op detection, storage, events.
    fn commit(
        &mut self,
        kind: &Kind,
        key: Key,
        old: Option<Value>,
        mut new: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        normalize(&mut new);
        new["apiVersion"] = json!(kind.api_version());
        new["kind"] = json!(kind.kind);
        if let Some(old) = &old {
            if status {
                let s = new.get("status").cloned();
                new = old.clone();
                match s {
                    Some(s) if !s.is_null() => new["status"] = s,
                    _ => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            } else if kind.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            for f in [
                "uid",
                "creationTimestamp",
                "name",
                "namespace",
                "generation",
            ] {
                new["metadata"][f] = old["metadata"][f].clone();
            }
            if !old["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = old["metadata"]["deletionTimestamp"].clone();
            }
        } else if kind.status_subresource && kind.schema.is_some() {
            // Status is ignored on create for kinds with a status subresource.
            if let Some(m) = new.as_object_mut() {
                m.remove("status");
            }
        }
        if kind.namespaced {
            new["metadata"]["namespace"] = json!(key.2);
        } else if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if kind.group.is_empty() && kind.plural == "secrets" {
            fold_string_data(&mut new);
            validate::secret(&new, old.as_ref()).map_err(|c| invalid(kind, &key.3, c))?;
        }
        if kind.schema.is_some() {
            let unknown = validate::prune(kind, &mut new);
            if self.strict && !unknown.is_empty() {
                let detail = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!(".{}: strict decoding error: {detail}", kind.kind),
                ));
            }
            self.warnings
                .extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
            new =
                validate::admit(kind, &new, old.as_ref()).map_err(|c| invalid(kind, &key.3, c))?;
        } else if let Some(n) = new["metadata"]["name"].as_str()
            && !validate::valid_name(n)
        {
            return Err(invalid(
                kind,
                n,
                vec![(
                    "metadata.name".into(),
                    format!("Invalid value: {n:?}: must be a lowercase RFC 1123 subdomain"),
                )],
            ));
        }
        if kind.plural == "customresourcedefinitions" {
            let kinds =
                from_crd(&new).map_err(|m| invalid(kind, &key.3, vec![("spec".into(), m)]))?;
            for k in kinds {
                self.kinds.insert((k.group.clone(), k.plural.clone()), k);
            }
            new["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()}],
                "acceptedNames": new["spec"]["names"].clone(), "storedVersions": [new["spec"]["versions"][0]["name"].clone()]});
        }
        match &old {
            None => {
                self.uid += 1;
                new["metadata"]["uid"] =
                    json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
                new["metadata"]["creationTimestamp"] = json!(now());
                new["metadata"]["generation"] = json!(1);
            }
            Some(old) => {
                if strip(&new) == strip(old) {
                    return Ok(old.clone());
                }
                if spec_of(&new) != spec_of(old) {
                    new["metadata"]["generation"] =
                        json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
                }
            }
        }
        if !new["metadata"]["deletionTimestamp"].is_null()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
        {
            self.objects.insert(key.clone(), new);
            return self.remove(kind, key, false);
        }
        self.store(
            kind,
            key,
            new,
            if old.is_some() { "MODIFIED" } else { "ADDED" },
        )
    }

    fn store(
        &mut self,
        kind: &Kind,
        key: Key,
        mut obj: Value,
        type_: &'static str,
    ) -> Result<Value, ApiError> {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let mf = self.managed_fields(&key, &kind.api_version());
        if let Some(m) = obj["metadata"].as_object_mut() {
            if mf.is_empty() {
                m.remove("managedFields");
            } else {
                m.insert("managedFields".into(), Value::Array(mf));
            }
        }
        let ns = key.2.clone();
        self.objects.insert(key, obj.clone());
        self.emit(type_, kind, &ns, obj.clone());
        Ok(obj)
    }

    fn emit(&mut self, type_: &'static str, kind: &Kind, ns: &str, object: Value) {
        if self.dry_run {
            return;
        }
        let change = Arc::new(Change {
            rv: self.rv,
            type_,
            resource: (kind.group.clone(), kind.plural.clone()),
            namespace: ns.to_string(),
            object,
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY {
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
        let _ = self.tx.send(change);
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn not_found(kind: &Kind, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.resource_name()),
    )
    .about(kind, name)
}

fn invalid(kind: &Kind, name: &str, causes: Vec<(String, String)>) -> ApiError {
    let detail = causes
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!(
            "{}.{} \"{name}\" is invalid: {detail}",
            kind.kind, kind.group
        ),
    );
    if kind.group.is_empty() {
        e.message = format!("{} \"{name}\" is invalid: {detail}", kind.kind);
    }
    e.causes = causes;
    e.details = Some(Box::new((
        kind.group.clone(),
        kind.kind.clone(),
        name.to_string(),
    )));
    e
}

fn fold_string_data(obj: &mut Value) {
    let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    if let Some(m) = sd.as_object() {
        for (k, v) in m {
            let enc =
                base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
            obj["data"][k] = json!(enc);
        }
    }
}

/// Numbers compare by value, as in the API server (Go decodes JSON numbers alike): `1000.0` is stored as `1000`.
pub fn normalize(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15)
            {
                *v = json!(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::Object(m) => m.values_mut().for_each(normalize),
        _ => {}
    }
}

/// The object without volatile metadata (for no-op detection).
fn strip(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_of(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Leaf paths of an applied object, with their values. Maps recurse; lists are atomic. For metadata only labels,
/// annotations, ownerReferences and finalizers count. With `status`, only the status.
pub fn leaf_values(v: &Value, status: bool) -> BTreeMap<Vec<String>, Value> {
    let mut out = BTreeMap::new();
    let Some(m) = v.as_object() else { return out };
    for (k, val) in m {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "status" if !status => {}
            "metadata" if !status => {
                for f in ["labels", "annotations"] {
                    if let Some(mm) = val[f].as_object() {
                        for (lk, lv) in mm {
                            out.insert(vec!["metadata".into(), f.into(), lk.clone()], lv.clone());
                        }
                    }
                }
                for f in ["ownerReferences", "finalizers"] {
                    if !val[f].is_null() {
                        out.insert(vec!["metadata".into(), f.into()], val[f].clone());
                    }
                }
            }
            _ if status && k != "status" => {}
            _ => walk(val, vec![k.clone()], &mut out),
        }
    }
    out
}

fn walk(v: &Value, path: Vec<String>, out: &mut BTreeMap<Vec<String>, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(val, p, out);
            }
        }
        other => {
            out.insert(path, other.clone());
        }
    }
}

fn leaves_of(v: &Value, status: bool) -> BTreeSet<Vec<String>> {
    leaf_values(v, status).into_keys().collect()
}

fn set_path(v: &mut Value, path: &[String], val: Value) {
    let mut cur = v;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let m = cur.as_object_mut().expect("object");
        if i == path.len() - 1 {
            m.insert(seg.clone(), val);
            return;
        }
        cur = m
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn remove_path(v: &mut Value, path: &[String]) {
    fn rec(v: &mut Value, path: &[String]) -> bool {
        let Some(m) = v.as_object_mut() else {
            return false;
        };
        if path.len() == 1 {
            m.remove(&path[0]);
        } else if let Some(child) = m.get_mut(&path[0])
            && rec(child, &path[1..])
        {
            m.remove(&path[0]);
        }
        m.is_empty()
    }
    rec(v, path);
}
