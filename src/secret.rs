//! The desired Secret, its data hash, and whether the operator may write an existing Secret. Pure functions.
//!
//! Owner and Orphan Secrets are the operator's: one field manager (`pipedream-secrets-operator`), the
//! `managed-by` label and an owner annotation naming the ConnectedAccount. A Merge target belongs to someone else:
//! each ConnectedAccount applies with a field manager of its own (`pipedream-secrets.io/<uid>`), so server-side
//! apply keeps every writer's keys, and touches only its keys, one annotation naming it and the watch label.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::core::Status;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{
    ACCOUNT_ID_ANNOTATION, ConnectedAccount, CreationPolicy, DeletionPolicy, EXPIRES_AT_ANNOTATION,
    MANAGED_BY_LABEL, MANAGER, OWNER_ANNOTATION, TargetSpec, WATCH_LABEL,
};
use crate::reason::{Reason, SyncFailure};

/// Prefix of a Merge writer's annotation: `merge.pipedream-secrets.io/<uid>: <name>`.
pub const MERGE_ANNOTATION_PREFIX: &str = "merge.pipedream-secrets.io/";
/// Prefix of a Merge writer's field manager: `pipedream-secrets.io/<uid>`.
pub const MERGE_MANAGER_PREFIX: &str = "pipedream-secrets.io/";

/// `sha256:<hex>` over the data, keys sorted, each key and value length-prefixed.
pub fn data_hash<'a>(data: impl IntoIterator<Item = (&'a String, &'a [u8])>) -> String {
    let mut sorted: Vec<_> = data.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (k, v) in sorted {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A ConnectedAccount as the Secrets it writes know it: the owner annotation, the field manager, the
/// ownerReference. Taken off the object once, so that writing a Secret needs no more of it.
#[derive(Clone, Debug)]
pub struct Writer {
    /// The ConnectedAccount's uid.
    pub uid: String,
    /// Its namespace, the Secret's.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The Secret's name (`spec.target.name`, else the ConnectedAccount's).
    pub secret: String,
    /// `spec.accountId`.
    pub account_id: String,
    /// `spec.target.creationPolicy`.
    pub creation: CreationPolicy,
    /// The Secret is garbage-collected with the ConnectedAccount (`Owner` + `Delete`): it carries `reference`.
    owned: bool,
    /// The controller ownerReference to the ConnectedAccount (`None` before it has a uid).
    reference: Option<OwnerReference>,
}

impl Writer {
    /// The writer `ca` is.
    pub fn of(ca: &ConnectedAccount) -> Self {
        let target = &ca.spec.target;
        Self {
            uid: ca.uid().unwrap_or_default(),
            namespace: ca.namespace().unwrap_or_default(),
            name: ca.name_any(),
            secret: ca.secret_name(),
            account_id: ca.spec.account_id.clone(),
            creation: target.creation_policy,
            owned: target.creation_policy == CreationPolicy::Owner
                && target.deletion_policy == DeletionPolicy::Delete,
            reference: ca.controller_owner_ref(&()),
        }
    }

    /// It adds keys to someone else's Secret.
    pub fn merges(&self) -> bool {
        self.creation == CreationPolicy::Merge
    }

    /// The field manager it writes its Secret with.
    pub fn field_manager(&self) -> String {
        if self.merges() {
            format!("{MERGE_MANAGER_PREFIX}{}", self.uid)
        } else {
            MANAGER.to_string()
        }
    }

    /// The `namespace/name` value of the owner annotation.
    pub fn owner_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its Merge annotation key.
    pub fn merge_annotation(&self) -> String {
        format!("{MERGE_ANNOTATION_PREFIX}{}", self.uid)
    }

    /// Whether the Secret should carry a controller ownerReference (and so be garbage-collected with the CR).
    pub fn wants_owner_ref(&self) -> bool {
        self.owned
    }
}

/// The data keys `manager` owns in `existing`, from its managed fields; `None` when the server reported none.
pub fn keys_owned_by(existing: &Secret, manager: &str) -> Option<BTreeSet<String>> {
    let entries = existing.metadata.managed_fields.as_ref()?;
    if entries.is_empty() {
        return None;
    }
    Some(
        entries
            .iter()
            .filter(|e| e.manager.as_deref() == Some(manager))
            .filter_map(|e| e.fields_v1.as_ref()?.0.get("f:data")?.as_object())
            .flat_map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_prefix("f:").map(str::to_string))
            })
            .collect(),
    )
}

/// Hash of the keys of `existing` that `manager` owns (every key when the server reports no managed fields).
/// Keys another manager added are not ours to restore, so they do not count as drift.
pub fn existing_hash(existing: &Secret, manager: &str) -> String {
    let data = existing.data.clone().unwrap_or_default();
    let ours = keys_owned_by(existing, manager);
    data_hash(
        data.iter()
            .filter(|(k, _)| ours.as_ref().is_none_or(|o| o.contains(*k)))
            .map(|(k, v)| (k, v.0.as_slice())),
    )
}

/// The Secret to server-side apply: only the fields this ConnectedAccount owns.
pub fn desired_secret(
    w: &Writer,
    target: &TargetSpec,
    data: &BTreeMap<String, Vec<u8>>,
    expires_at: Option<&str>,
) -> Secret {
    let merge = w.merges();
    let mut labels = BTreeMap::from([(WATCH_LABEL.to_string(), "true".to_string())]);
    let mut annotations = BTreeMap::new();
    if merge {
        annotations.insert(w.merge_annotation(), w.name.clone());
    } else {
        labels.extend(target.labels.clone());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
        annotations.extend(target.annotations.clone());
        annotations.insert(OWNER_ANNOTATION.into(), w.owner_id());
        annotations.insert(ACCOUNT_ID_ANNOTATION.into(), w.account_id.clone());
        if let Some(exp) = expires_at {
            annotations.insert(EXPIRES_AT_ANNOTATION.into(), exp.to_string());
        }
    }
    // blockOwnerDeletion, as controller-runtime sets it: a foreground deletion of the ConnectedAccount waits for the
    // Secret. (Clusters enforcing OwnerReferencesPermissionEnforcement require update on
    // connectedaccounts/finalizers for it; the chart grants it.)
    let owner_references = w.wants_owner_ref().then(|| {
        w.reference
            .clone()
            .map(|mut o| {
                o.block_owner_deletion = Some(true);
                o
            })
            .into_iter()
            .collect()
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(w.secret.clone()),
            namespace: Some(w.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references,
            ..Default::default()
        },
        type_: desired_type(w, target).map(str::to_string),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Why an existing Secret must not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict(pub String);

fn merge_writers(existing: &Secret) -> impl Iterator<Item = (&str, &String)> {
    existing
        .annotations()
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(MERGE_ANNOTATION_PREFIX)?, v)))
}

/// May this ConnectedAccount write `existing`?
pub fn check_ownership(w: &Writer, existing: &Secret) -> Result<(), Conflict> {
    let name = existing.name_any();
    let controller = existing
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    if controller.is_some_and(|c| c.uid == w.uid) {
        return Ok(());
    }
    let owner = existing.annotations().get(OWNER_ANNOTATION);
    if w.merges() {
        // Someone else's Secret: add keys, unless another ConnectedAccount owns it outright.
        if let Some(c) = controller.filter(|c| c.kind == "ConnectedAccount") {
            return Err(Conflict(format!(
                "Secret {name} is controlled by ConnectedAccount {}",
                c.name
            )));
        }
        if let Some(other) = owner {
            return Err(Conflict(format!(
                "Secret {name} is written by ConnectedAccount {other}"
            )));
        }
        return Ok(());
    }
    if let Some(c) = controller {
        return Err(Conflict(format!(
            "Secret {name} is controlled by {} {}",
            c.kind, c.name
        )));
    }
    // Ours by the annotation naming this ConnectedAccount (the managed-by label is shared and may be restored
    // by others, so it is not proof).
    if owner == Some(&w.owner_id()) {
        return Ok(());
    }
    if let Some(other) = owner {
        return Err(Conflict(format!(
            "Secret {name} is written by ConnectedAccount {other}"
        )));
    }
    if let Some((_, other)) = merge_writers(existing).next() {
        return Err(Conflict(format!(
            "Secret {name} belongs to someone else; ConnectedAccount {other} merges keys into it (use creationPolicy: Merge)"
        )));
    }
    Err(Conflict(format!(
        "Secret {name} already exists and is not managed by this ConnectedAccount; delete it, pick another spec.target.name, or set creationPolicy: Merge"
    )))
}

/// One field another field manager holds: as the API server named it refusing a non-forced apply, or a
/// `stringData` key read off the Secret's managed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    /// The field manager (`helm`, `kubectl-create`, `before-first-apply`, `pipedream-secrets.io/<uid>`, ...).
    pub manager: String,
    /// The field path: `.data.<key>` (or `.stringData.<key>`), `.metadata.labels.<key>`, ...
    pub field: String,
}

impl FieldConflict {
    /// The Secret key, when the field is one.
    pub fn key(&self) -> Option<&str> {
        self.field
            .strip_prefix(".data.")
            .or_else(|| self.field.strip_prefix(".stringData."))
    }
}

/// The field conflicts of a refused server-side apply, from the Status's `details.causes` (reason
/// `FieldManagerConflict`, message `conflict with "<manager>"`, with ` using <apiVersion>` when the manager's
/// entry is an Update). `None` when the refusal is not about field owners (a 409 for a stale resourceVersion
/// has no such causes).
pub fn field_conflicts(status: &Status) -> Option<Vec<FieldConflict>> {
    if status.code != 409 {
        return None;
    }
    let found: Vec<FieldConflict> = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .filter(|c| c.reason == "FieldManagerConflict")
        .map(|c| FieldConflict {
            manager: quoted(&c.message).unwrap_or_else(|| c.message.clone()),
            field: c.field.clone(),
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// The first Go-quoted (`%q`) string in `message`, unescaped.
fn quoted(message: &str) -> Option<String> {
    let rest = &message[message.find('"')? + 1..];
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// Who else owns the keys of `keys` in `existing`, read off its managed fields: any field manager but this
/// ConnectedAccount's, through `f:data` or through `f:stringData` (the API server records an applied `stringData`
/// key there, not as the data key it becomes, and does not hold it against an apply of that data key); in a
/// Secret without managed fields, `before-first-apply` owns every key it holds, as the API server counts them.
/// Read from the Secret a Merge apply is then guarded by (its resourceVersion), so this is what the API server
/// applies to; it also refuses keys the API server would let two managers share while their values happen to be
/// equal (the co-owner's next different value would then conflict).
pub fn key_owners<'a>(
    w: &Writer,
    existing: &Secret,
    keys: impl IntoIterator<Item = &'a String>,
) -> Vec<FieldConflict> {
    let me = w.field_manager();
    let entries = existing
        .metadata
        .managed_fields
        .as_deref()
        .unwrap_or_default();
    let held = existing.data.as_ref();
    let mut out = Vec::new();
    for key in keys {
        if entries.is_empty() {
            if held.is_some_and(|d| d.contains_key(key)) {
                out.push(FieldConflict {
                    manager: "before-first-apply".into(),
                    field: format!(".data.{key}"),
                });
            }
            continue;
        }
        let field = format!("f:{key}");
        for e in entries {
            let Some(manager) = e.manager.as_deref().filter(|m| *m != me) else {
                continue;
            };
            let fields = e.fields_v1.as_ref().map(|f| &f.0);
            for (set, path) in [("f:data", ".data."), ("f:stringData", ".stringData.")] {
                let owns = fields
                    .and_then(|f| f.get(set)?.as_object())
                    .is_some_and(|d| d.contains_key(&field));
                if owns {
                    out.push(FieldConflict {
                        manager: manager.to_string(),
                        field: format!("{path}{key}"),
                    });
                }
            }
        }
    }
    out
}

/// The name a Merge writer's annotation on `existing` gives ConnectedAccount `uid`.
pub fn merge_writer_name<'a>(existing: &'a Secret, uid: &str) -> Option<&'a str> {
    merge_writers(existing)
        .find(|(u, _)| *u == uid)
        .map(|(_, n)| n.as_str())
}

/// Why a Merge write into Secret `secret` is refused: each conflicting key (or other field) by its owner, another
/// ConnectedAccount (named by its Merge annotation on `existing`) or any other field manager.
pub fn merge_conflict(
    existing: Option<&Secret>,
    secret: &str,
    conflicts: &[FieldConflict],
) -> Conflict {
    let mut by_owner: Vec<(&str, Vec<String>)> = Vec::new();
    for c in conflicts {
        let what = match c.key() {
            Some(k) if c.field.starts_with(".stringData.") => format!("{k} (stringData)"),
            Some(k) => k.to_string(),
            None => format!("field {}", c.field),
        };
        match by_owner.iter_mut().find(|(m, _)| *m == c.manager) {
            Some((_, list)) => list.push(what),
            None => by_owner.push((&c.manager, vec![what])),
        }
    }
    let parts: Vec<String> = by_owner
        .iter()
        .map(|(manager, what)| {
            let what = format!(
                "{} {}",
                if what.len() == 1 { "key" } else { "keys" },
                what.join(", ")
            );
            match manager.strip_prefix(MERGE_MANAGER_PREFIX) {
                Some(uid) => {
                    let name = existing.and_then(|e| merge_writer_name(e, uid)).unwrap_or(uid);
                    format!("{what} already written by ConnectedAccount {name}")
                }
                None if *manager == "before-first-apply" => format!(
                    "{what} owned by field manager before-first-apply (the Secret had no field owners recorded: the keys it held then are someone else's)"
                ),
                None => format!("{what} owned by field manager {manager}"),
            }
        })
        .collect();
    Conflict(format!(
        "Secret {secret}: {}; Merge writes only keys no one else owns (pick another key, or remove the key from the Secret and from whatever writes it to hand it over)",
        parts.join("; ")
    ))
}

/// The type the Secret `w` writes has: `spec.target.type` (`Opaque` if unset); `None` for a Merge target, whose
/// type belongs to whoever created it.
pub fn desired_type<'a>(w: &Writer, target: &'a TargetSpec) -> Option<&'a str> {
    (!w.merges()).then(|| target.type_.as_deref().unwrap_or("Opaque"))
}

/// Why a Secret of type `want` cannot be applied over `existing` as is: a Secret's `type` never changes.
pub fn type_conflict(existing: &Secret, want: Option<&str>) -> Option<String> {
    let want = want?;
    let have = existing.type_.as_deref().unwrap_or("Opaque");
    (have != want).then(|| {
        format!(
            "spec.target.type: Secret {} has type {have}, and a Secret's type cannot change; delete the Secret or set type {have}",
            existing.name_any()
        )
    })
}

/// A Secret's data as bytes.
pub fn data_of(s: &Secret) -> Option<BTreeMap<String, Vec<u8>>> {
    s.data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
}

/// Bytes of data a Secret would hold (Kubernetes allows about 1 MiB per Secret).
pub fn data_size(data: &BTreeMap<String, Vec<u8>>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// True when `existing` already matches `desired` in every field `manager` writes.
pub fn up_to_date(existing: &Secret, desired: &Secret, manager: &str) -> bool {
    let have = existing.data.clone().unwrap_or_default();
    let want = desired.data.clone().unwrap_or_default();
    let data_ok = want.iter().all(|(k, v)| have.get(k) == Some(v))
        // A key we wrote before and no longer want: applying again removes it.
        && keys_owned_by(existing, manager).is_none_or(|ours| ours.iter().all(|k| want.contains_key(k)))
        && (keys_owned_by(existing, manager).is_some()
            || desired.type_.is_none()
            || have.keys().all(|k| want.contains_key(k)));
    let subset = |want: &Option<BTreeMap<String, String>>, have: &BTreeMap<String, String>| {
        want.as_ref()
            .is_none_or(|w| w.iter().all(|(k, v)| have.get(k) == Some(v)))
    };
    let owner_ok = match &desired.metadata.owner_references {
        Some(want) => want
            .iter()
            .all(|w| existing.owner_references().iter().any(|h| h.uid == w.uid)),
        None => !existing
            .owner_references()
            .iter()
            .any(|o| o.kind == "ConnectedAccount" && o.controller == Some(true)),
    };
    data_ok
        && subset(&desired.metadata.labels, existing.labels())
        && subset(&desired.metadata.annotations, existing.annotations())
        && owner_ok
        && type_conflict(existing, desired.type_.as_deref()).is_none()
}

/// The API server refused the Secret: name the spec field that caused it, from the fields its answer names
/// (`details.causes[].field`, as for every validation error: `metadata.labels`, `type`, `data[key]`). Its message
/// names fields and keys, never data values.
pub fn refused_write(secret: &str, status: &kube::core::Status) -> SyncFailure {
    let code = status.code;
    let message: String = status.message.chars().take(300).collect();
    if code == 403 || code == 413 {
        return SyncFailure::new(
            Reason::SecretWriteFailed,
            format!("the API server refused to write Secret {secret} (HTTP {code}): {message}"),
        );
    }
    let causes = status.details.iter().flat_map(|d| d.causes.iter());
    let field = causes
        .map(|c| spec_field(&c.field))
        .find(|f| *f != "spec.target")
        .unwrap_or("spec.target");
    SyncFailure::new(
        Reason::InvalidSpec,
        format!("{field}: the API server refused Secret {secret}: {message}"),
    )
}

/// The spec field that sets a Secret field the API server named.
fn spec_field(secret_field: &str) -> &'static str {
    let under = |prefix: &str| {
        secret_field == prefix
            || secret_field.starts_with(&format!("{prefix}."))
            || secret_field.starts_with(&format!("{prefix}["))
    };
    if under("metadata.labels") {
        "spec.target.labels"
    } else if under("metadata.annotations") {
        "spec.target.annotations"
    } else if under("type") {
        "spec.target.type"
    } else if under("data") || under("stringData") {
        "spec.target.template.data"
    } else {
        "spec.target"
    }
}

#[cfg(test)]
mod tests;
