//! The desired Secret, its data hash, and whether the operator may write an existing Secret. Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{
    ACCOUNT_ID_ANNOTATION, ConnectedAccount, CreationPolicy, DeletionPolicy, EXPIRES_AT_ANNOTATION,
    MANAGED_BY_LABEL, MANAGER, OWNER_ANNOTATION,
};

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

/// Hash of the keys of `existing` that the operator writes (all of them, unless `Merge`).
pub fn existing_hash(existing: &Secret, keys: Option<&BTreeMap<String, Vec<u8>>>) -> String {
    let data = existing.data.clone().unwrap_or_default();
    match keys {
        Some(ours) => data_hash(
            data.iter()
                .filter(|(k, _)| ours.contains_key(*k))
                .map(|(k, v)| (k, v.0.as_slice())),
        ),
        None => data_hash(data.iter().map(|(k, v)| (k, v.0.as_slice()))),
    }
}

/// The `namespace/name` value of the owner annotation.
pub fn owner_id(ca: &ConnectedAccount) -> String {
    format!("{}/{}", ca.namespace().unwrap_or_default(), ca.name_any())
}

/// Whether the Secret should carry a controller ownerReference (and so be garbage-collected with the CR).
pub fn wants_owner_ref(ca: &ConnectedAccount) -> bool {
    ca.spec.target.creation_policy == CreationPolicy::Owner
        && ca.spec.target.deletion_policy == DeletionPolicy::Delete
}

/// The Secret to server-side apply: only the fields the operator owns.
pub fn desired_secret(
    ca: &ConnectedAccount,
    data: &BTreeMap<String, Vec<u8>>,
    expires_at: Option<&str>,
) -> Secret {
    let target = &ca.spec.target;
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    let mut annotations = target.annotations.clone();
    annotations.insert(OWNER_ANNOTATION.into(), owner_id(ca));
    annotations.insert(ACCOUNT_ID_ANNOTATION.into(), ca.spec.account_id.clone());
    if let Some(exp) = expires_at {
        annotations.insert(EXPIRES_AT_ANNOTATION.into(), exp.to_string());
    }
    let owner_references =
        wants_owner_ref(ca).then(|| ca.controller_owner_ref(&()).into_iter().collect());
    let merge = target.creation_policy == CreationPolicy::Merge;
    Secret {
        metadata: ObjectMeta {
            name: Some(ca.secret_name()),
            namespace: ca.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references,
            ..Default::default()
        },
        // A Merge target's type belongs to whoever created it.
        type_: if merge {
            None
        } else {
            Some(target.type_.clone().unwrap_or_else(|| "Opaque".into()))
        },
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

/// May this ConnectedAccount write `existing`?
pub fn check_ownership(ca: &ConnectedAccount, existing: &Secret) -> Result<(), Conflict> {
    let name = existing.name_any();
    let uid = ca.uid();
    let controller = existing
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    if let Some(c) = controller
        && Some(&c.uid) == uid.as_ref()
    {
        return Ok(());
    }
    let ours = existing.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER)
        && existing.annotations().get(OWNER_ANNOTATION) == Some(&owner_id(ca));
    if let Some(c) = controller {
        // Someone else controls it; only Merge may add keys, and never to a Secret another ConnectedAccount writes.
        if ca.spec.target.creation_policy == CreationPolicy::Merge && c.kind != "ConnectedAccount" {
            return Ok(());
        }
        return Err(Conflict(format!(
            "Secret {name} is controlled by {} {}",
            c.kind, c.name
        )));
    }
    if ours {
        return Ok(());
    }
    if let Some(other) = existing.annotations().get(OWNER_ANNOTATION) {
        return Err(Conflict(format!(
            "Secret {name} is written by ConnectedAccount {other}"
        )));
    }
    if ca.spec.target.creation_policy == CreationPolicy::Merge {
        return Ok(());
    }
    Err(Conflict(format!(
        "Secret {name} already exists and is not managed by this ConnectedAccount; delete it, pick another spec.target.name, or set creationPolicy: Merge"
    )))
}

/// True when `existing` already matches `desired` in every field the operator writes.
pub fn up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let data_ok = desired.data.as_ref().is_none_or(|want| {
        let have = existing.data.clone().unwrap_or_default();
        want.iter().all(|(k, v)| have.get(k) == Some(v))
            && (desired.type_.is_none() || have.keys().all(|k| want.contains_key(k)))
    });
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
        && desired
            .type_
            .as_ref()
            .is_none_or(|t| existing.type_.as_deref().unwrap_or("Opaque") == t)
}
