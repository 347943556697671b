use super::*;
use crate::crd::{ConnectedAccountSpec, TargetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, OwnerReference,
};
use serde_json::json;

fn ca(policy: CreationPolicy, deletion: DeletionPolicy) -> ConnectedAccount {
    let mut spec: ConnectedAccountSpec =
        serde_json::from_value(json!({"accountId": "apn_A1"})).unwrap();
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

fn named(mut c: ConnectedAccount, name: &str, uid: &str) -> ConnectedAccount {
    c.metadata.name = Some(name.into());
    c.metadata.uid = Some(uid.into());
    c
}

fn data() -> BTreeMap<String, Vec<u8>> {
    [("token".to_string(), b"v1".to_vec())].into()
}

fn owns(manager: &str, keys: &[&str]) -> ManagedFieldsEntry {
    let fields: serde_json::Map<String, serde_json::Value> =
        keys.iter().map(|k| (format!("f:{k}"), json!({}))).collect();
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Apply".into()),
        fields_v1: Some(FieldsV1(json!({"f:data": fields}))),
        ..Default::default()
    }
}

fn secret(data: &[(&str, &str)], managed: Vec<ManagedFieldsEntry>) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some("gh".into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    s.metadata.managed_fields = Some(managed);
    s
}

#[test]
fn hash_is_order_independent_and_value_sensitive() {
    let a: BTreeMap<String, Vec<u8>> =
        [("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())].into();
    let h = data_hash(a.iter().map(|(k, v)| (k, v.as_slice())));
    assert!(h.starts_with("sha256:") && h.len() == 71);
    let rev: Vec<(String, Vec<u8>)> = a.clone().into_iter().rev().collect();
    assert_eq!(h, data_hash(rev.iter().map(|(k, v)| (k, v.as_slice()))));
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
    assert_eq!(l[WATCH_LABEL], "true");
    assert_eq!(l["team"], "a");
    let a = s.metadata.annotations.as_ref().unwrap();
    assert_eq!(a[OWNER_ANNOTATION], "team-a/gh");
    assert_eq!(a[EXPIRES_AT_ANNOTATION], "2026-11-22T10:00:00Z");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert!(up_to_date(&s, &s, MANAGER));
    assert_eq!(field_manager(&ca), MANAGER);
    let retain = self::ca(CreationPolicy::Owner, DeletionPolicy::Retain);
    assert!(
        desired_secret(&retain, &data(), None)
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
    assert!(check_ownership(&ca(CreationPolicy::Merge, DeletionPolicy::Retain), &foreign).is_ok());
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
    let own = desired_secret(&mine, &data(), None);
    assert!(check_ownership(&mine, &own).is_ok());
    let retain = ca(CreationPolicy::Owner, DeletionPolicy::Retain);
    let retained = desired_secret(&retain, &data(), None);
    assert!(check_ownership(&retain, &retained).is_ok());
    // Written by another ConnectedAccount: refused, even with Merge.
    let other = named(
        ca(CreationPolicy::Merge, DeletionPolicy::Retain),
        "other",
        "uid-2",
    );
    assert!(
        check_ownership(&other, &retained)
            .unwrap_err()
            .0
            .contains("team-a/gh")
    );
    // An owned Secret is not adopted by a same-named label alone.
    let mut labelled = foreign.clone();
    labelled.metadata.owner_references = None;
    labelled.metadata.labels = Some([(MANAGED_BY_LABEL.to_string(), MANAGER.to_string())].into());
    assert!(check_ownership(&mine, &labelled).is_err());
}

/// Regression (issue 7): every Merge ConnectedAccount applied with the same field manager, so two of them on one
/// Secret removed each other's keys on alternate passes. Each has its own manager, and a second writer of the
/// same key is refused while the first still exists.
#[test]
fn merge_writers_have_their_own_managers_and_cannot_share_a_key() {
    let a = named(
        ca(CreationPolicy::Merge, DeletionPolicy::Retain),
        "a",
        "uid-a",
    );
    let b = named(
        ca(CreationPolicy::Merge, DeletionPolicy::Retain),
        "b",
        "uid-b",
    );
    assert_ne!(field_manager(&a), field_manager(&b));
    assert_eq!(field_manager(&a), "pipedream-secrets.io/uid-a");
    let mut target = secret(
        &[("helm-key", "x"), ("A_TOKEN", "t")],
        vec![
            owns("helm", &["helm-key"]),
            owns("pipedream-secrets.io/uid-a", &["A_TOKEN"]),
        ],
    );
    target.metadata.annotations = Some([(merge_annotation(&a), "a".to_string())].into());
    assert!(check_ownership(&b, &target).is_ok());
    let wants = ["B_TOKEN".to_string()];
    assert!(foreign_key_owners(&b, &target, &wants).is_empty());
    let clash = ["A_TOKEN".to_string()];
    let owners = foreign_key_owners(&b, &target, &clash);
    assert_eq!(
        owners,
        vec![(
            "A_TOKEN".to_string(),
            KeyOwner::ConnectedAccount {
                uid: "uid-a".into(),
                name: Some("a".into())
            }
        )]
    );
    let c = key_conflict("shared", "A_TOKEN", &owners[0].1, true).unwrap();
    assert!(
        c.0.contains("A_TOKEN") && c.0.contains("ConnectedAccount a"),
        "{c:?}"
    );
    assert!(
        key_conflict("shared", "A_TOKEN", &owners[0].1, false).is_none(),
        "a deleted writer's keys are free"
    );
    assert!(
        foreign_key_owners(&a, &target, &clash).is_empty(),
        "its own key"
    );
}

/// Issue 17 (7): Merge force-applied into any Secret it did not control, taking over a key Helm (or any other
/// field manager) owned, and later removing it. A key another field manager owns is refused.
#[test]
fn merge_refuses_a_key_another_field_manager_owns() {
    let m = named(
        ca(CreationPolicy::Merge, DeletionPolicy::Retain),
        "m",
        "uid-m",
    );
    let target = secret(&[("token", "helm's")], vec![owns("helm", &["token"])]);
    let owners = foreign_key_owners(&m, &target, &["token".to_string(), "other".to_string()]);
    assert_eq!(
        owners,
        vec![("token".to_string(), KeyOwner::Manager("helm".into()))]
    );
    let c = key_conflict("s", "token", &owners[0].1, true).unwrap();
    assert!(c.0.contains("field manager helm"), "{c:?}");
}

/// Regression (issue 7): Merge force-applied `app.kubernetes.io/managed-by`, replacing the owner's value; when
/// Helm restored it the ConnectedAccount locked itself out ("written by ConnectedAccount <its own name>"). Merge
/// now touches only its keys, its own annotation and the watch label.
#[test]
fn merge_leaves_the_owners_labels_alone_and_survives_them_being_restored() {
    let m = ca(CreationPolicy::Merge, DeletionPolicy::Retain);
    let d = desired_secret(&m, &data(), Some("2026-11-22T10:00:00Z"));
    let labels = d.metadata.labels.clone().unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), vec![WATCH_LABEL]);
    let ann = d.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann.keys().cloned().collect::<Vec<_>>(),
        vec![merge_annotation(&m)]
    );
    assert!(d.type_.is_none());
    let mut helm_owned = d.clone();
    helm_owned.metadata.labels = Some(
        [
            (MANAGED_BY_LABEL.to_string(), "Helm".to_string()),
            (WATCH_LABEL.to_string(), "true".to_string()),
        ]
        .into(),
    );
    assert!(check_ownership(&m, &helm_owned).is_ok());
    assert!(up_to_date(&helm_owned, &d, &field_manager(&m)));
}

/// Regression (issue 7): a key another field manager added to an owned Secret could not be removed by server-side
/// apply, never matched the hash, and caused a false DriftCorrected (and a re-fetch after restart) on every pass.
#[test]
fn keys_added_by_others_are_not_drift() {
    let mine = ca(CreationPolicy::Owner, DeletionPolicy::Delete);
    let desired = desired_secret(&mine, &data(), None);
    let mut existing = secret(
        &[("token", "v1"), ("added-by-hand", "x")],
        vec![
            owns(MANAGER, &["token"]),
            owns("kubectl-edit", &["added-by-hand"]),
        ],
    );
    existing.metadata.labels = desired.metadata.labels.clone();
    existing.metadata.annotations = desired.metadata.annotations.clone();
    existing.metadata.owner_references = desired.metadata.owner_references.clone();
    existing.type_ = Some("Opaque".into());
    let ours = data_hash(data().iter().map(|(k, v)| (k, v.as_slice())));
    assert_eq!(existing_hash(&existing, MANAGER), ours);
    assert!(up_to_date(&existing, &desired, MANAGER));
    // A key of ours edited by hand moves to the editor's manager: that is drift.
    let mut edited = existing.clone();
    edited
        .data
        .as_mut()
        .unwrap()
        .insert("token".into(), ByteString(b"hand".to_vec()));
    edited.metadata.managed_fields = Some(vec![owns("kubectl-edit", &["token", "added-by-hand"])]);
    assert_ne!(existing_hash(&edited, MANAGER), ours);
    assert!(!up_to_date(&edited, &desired, MANAGER));
    // A key we wrote before and no longer want: applying again removes it.
    let mut stale = existing.clone();
    stale
        .data
        .as_mut()
        .unwrap()
        .insert("old".into(), ByteString(b"o".to_vec()));
    stale.metadata.managed_fields = Some(vec![owns(MANAGER, &["token", "old"])]);
    assert!(!up_to_date(&stale, &desired, MANAGER));
    // Without managed fields (some servers, mocks): every key counts.
    let mut bare = existing.clone();
    bare.metadata.managed_fields = None;
    assert_ne!(existing_hash(&bare, MANAGER), ours);
}

#[test]
fn a_changed_type_is_reported_instead_of_written() {
    let mut c = ca(CreationPolicy::Owner, DeletionPolicy::Delete);
    c.spec.target.type_ = Some("kubernetes.io/basic-auth".into());
    let desired = desired_secret(&c, &data(), None);
    let mut existing = desired.clone();
    existing.type_ = Some("Opaque".into());
    let m = type_conflict(&existing, &desired).unwrap();
    assert!(
        m.starts_with("spec.target.type:") && m.contains("Opaque"),
        "{m}"
    );
    assert!(!up_to_date(&existing, &desired, MANAGER));
    assert_eq!(data_size(&data()), 7);
}
