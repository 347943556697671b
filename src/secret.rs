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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConnectedAccountSpec, TargetSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn ca(policy: CreationPolicy, deletion: DeletionPolicy) -> ConnectedAccount {
        let mut spec: ConnectedAccountSpec =
            serde_json::from_value(serde_json::json!({"accountId": "apn_A1"})).unwrap();
        spec.target = TargetSpec {
            creation_policy: policy,
            deletion_policy: deletion,
            labels: [("team".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        let mut ca = ConnectedAccount::new("gh", spec);
        ca.metadata.namespace = Some("team-a".into());
        ca.metadata.uid = Some("uid-1".into());
        ca
    }

    fn data() -> BTreeMap<String, Vec<u8>> {
        [("token".to_string(), b"v1".to_vec())].into()
    }

    #[test]
    fn hash_is_order_independent_and_value_sensitive() {
        let a: BTreeMap<String, Vec<u8>> =
            [("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())].into();
        let h = data_hash(a.iter().map(|(k, v)| (k, v.as_slice())));
        assert!(h.starts_with("sha256:") && h.len() == 71);
        let rev: Vec<(String, Vec<u8>)> = a.clone().into_iter().rev().collect();
        assert_eq!(h, data_hash(rev.iter().map(|(k, v)| (k, v.as_slice()))));
        // "a"+"b1" must not collide with "ab"+"1".
        let x: BTreeMap<String, Vec<u8>> = [("ab".into(), b"1".to_vec())].into();
        let y: BTreeMap<String, Vec<u8>> = [("a".into(), b"b1".to_vec())].into();
        assert_ne!(
            data_hash(x.iter().map(|(k, v)| (k, v.as_slice()))),
            data_hash(y.iter().map(|(k, v)| (k, v.as_slice())))
        );
    }

    #[test]
    fn owner_policy_sets_controller_ref_labels_and_annotations() {
        let ca = ca(CreationPolicy::Owner, DeletionPolicy::Delete);
        let s = desired_secret(&ca, &data(), Some("2026-11-22T10:00:00Z"));
        let o = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.uid.as_str(), o.controller),
            ("ConnectedAccount", "uid-1", Some(true))
        );
        let l = s.metadata.labels.as_ref().unwrap();
        assert_eq!(l[MANAGED_BY_LABEL], MANAGER);
        assert_eq!(l["team"], "a");
        let a = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[OWNER_ANNOTATION], "team-a/gh");
        assert_eq!(a[EXPIRES_AT_ANNOTATION], "2026-11-22T10:00:00Z");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert!(up_to_date(&s, &s));
        // Retain: no ownerReference, so garbage collection keeps it.
        assert!(
            desired_secret(
                &self::ca(CreationPolicy::Owner, DeletionPolicy::Retain),
                &data(),
                None
            )
            .metadata
            .owner_references
            .is_none()
        );
    }

    #[test]
    fn foreign_secrets_are_refused_unless_merge() {
        let mine = ca(CreationPolicy::Owner, DeletionPolicy::Delete);
        let mut foreign = Secret::default();
        foreign.metadata.name = Some("gh".into());
        assert!(
            check_ownership(&mine, &foreign)
                .unwrap_err()
                .0
                .contains("not managed")
        );
        assert!(
            check_ownership(&ca(CreationPolicy::Merge, DeletionPolicy::Retain), &foreign).is_ok()
        );
        foreign.metadata.owner_references = Some(vec![OwnerReference {
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "other".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert!(
            check_ownership(&mine, &foreign)
                .unwrap_err()
                .0
                .contains("Deployment web")
        );
        // Our own Secret, by ownerReference or by managed-by label plus owner annotation.
        let own = desired_secret(&mine, &data(), None);
        assert!(check_ownership(&mine, &own).is_ok());
        let retained = desired_secret(
            &ca(CreationPolicy::Owner, DeletionPolicy::Retain),
            &data(),
            None,
        );
        assert!(
            check_ownership(
                &ca(CreationPolicy::Owner, DeletionPolicy::Retain),
                &retained
            )
            .is_ok()
        );
        // Written by another ConnectedAccount: refused even with Merge.
        let mut other = ca(CreationPolicy::Merge, DeletionPolicy::Retain);
        other.metadata.name = Some("other".into());
        assert!(
            check_ownership(&other, &retained)
                .unwrap_err()
                .0
                .contains("team-a/gh")
        );
    }

    #[test]
    fn up_to_date_detects_data_label_and_owner_changes() {
        let c = ca(CreationPolicy::Owner, DeletionPolicy::Delete);
        let want = desired_secret(&c, &data(), None);
        let mut edited = want.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("token".into(), ByteString(b"hand-edited".to_vec()));
        assert!(!up_to_date(&edited, &want));
        let mut extra = want.clone();
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("stale".into(), ByteString(b"x".to_vec()));
        assert!(!up_to_date(&extra, &want));
        let mut unlabeled = want.clone();
        unlabeled.metadata.labels = None;
        assert!(!up_to_date(&unlabeled, &want));
        let retain = desired_secret(
            &ca(CreationPolicy::Owner, DeletionPolicy::Retain),
            &data(),
            None,
        );
        assert!(
            !up_to_date(&want, &retain),
            "ownerReference must be dropped when switching to Retain"
        );
    }
}
