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
    let s = desired_secret(
        &Writer::of(&ca),
        &ca.spec.target,
        &data(),
        Some("2026-11-22T10:00:00Z"),
    );
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
    assert_eq!(Writer::of(&ca).field_manager(), MANAGER);
    let retain = self::ca(CreationPolicy::Owner, DeletionPolicy::Retain);
    assert!(
        desired_secret(&Writer::of(&retain), &retain.spec.target, &data(), None)
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
        check_ownership(&Writer::of(&mine), &foreign)
            .unwrap_err()
            .0
            .contains("not managed")
    );
    assert!(
        check_ownership(
            &Writer::of(&ca(CreationPolicy::Merge, DeletionPolicy::Retain)),
            &foreign
        )
        .is_ok()
    );
    foreign.metadata.owner_references = Some(vec![OwnerReference {
        kind: "Deployment".into(),
        name: "web".into(),
        uid: "other".into(),
        controller: Some(true),
        ..Default::default()
    }]);
    assert!(
        check_ownership(&Writer::of(&mine), &foreign)
            .unwrap_err()
            .0
            .contains("Deployment web")
    );
    let own = desired_secret(&Writer::of(&mine), &mine.spec.target, &data(), None);
    assert!(check_ownership(&Writer::of(&mine), &own).is_ok());
    let retain = ca(CreationPolicy::Owner, DeletionPolicy::Retain);
    let retained = desired_secret(&Writer::of(&retain), &retain.spec.target, &data(), None);
    assert!(check_ownership(&Writer::of(&retain), &retained).is_ok());
    // Written by another ConnectedAccount: refused, even with Merge.
    let other = named(
        ca(CreationPolicy::Merge, DeletionPolicy::Retain),
        "other",
        "uid-2",
    );
    assert!(
        check_ownership(&Writer::of(&other), &retained)
            .unwrap_err()
            .0
            .contains("team-a/gh")
    );
    // An owned Secret is not adopted by a same-named label alone.
    let mut labelled = foreign.clone();
    labelled.metadata.owner_references = None;
    labelled.metadata.labels = Some([(MANAGED_BY_LABEL.to_string(), MANAGER.to_string())].into());
    assert!(check_ownership(&Writer::of(&mine), &labelled).is_err());
}

/// Regression (issue 7): two ConnectedAccounts merging into one Secret shared the operator's field manager and
/// removed each other's keys on alternate passes. Each has its own manager.
#[test]
fn merge_writers_have_their_own_managers() {
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
    assert_ne!(
        Writer::of(&a).field_manager(),
        Writer::of(&b).field_manager()
    );
    assert_eq!(Writer::of(&a).field_manager(), "pipedream-secrets.io/uid-a");
    let mut target = secret(
        &[("helm-key", "x"), ("A_TOKEN", "t")],
        vec![
            owns("helm", &["helm-key"]),
            owns("pipedream-secrets.io/uid-a", &["A_TOKEN"]),
        ],
    );
    target.metadata.annotations =
        Some([(Writer::of(&a).merge_annotation(), "a".to_string())].into());
    assert!(check_ownership(&Writer::of(&b), &target).is_ok());
    assert_eq!(merge_writer_name(&target, "uid-a"), Some("a"));
}

/// Issue 25 (5): the API server's refusal of a non-forced apply, exactly as kube-apiserver 1.36 sent it for a
/// Secret whose keys an apply manager (`helm`) and an Update manager (`kubectl-create`) own, is read from its
/// structured causes: manager and field of each, keys with dots included.
#[test]
fn field_conflicts_are_read_from_the_status_causes() {
    let status: Status = serde_json::from_value(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Apply failed with 3 conflicts: conflicts with \"helm\":\n- .data.config.json\nconflicts with \"kubectl-create\" using v1:\n- .data.B\n- .data.TOKEN",
        "reason": "Conflict",
        "details": {"causes": [
            {"reason": "FieldManagerConflict", "message": "conflict with \"helm\"", "field": ".data.config.json"},
            {"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-create\" using v1", "field": ".data.B"},
            {"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-create\" using v1", "field": ".data.TOKEN"},
            {"reason": "FieldValueInvalid", "message": "not a conflict", "field": ".data.X"}
        ]},
        "code": 409
    }))
    .unwrap();
    let got = field_conflicts(&status).unwrap();
    let pairs: Vec<(&str, &str, Option<&str>)> = got
        .iter()
        .map(|c| (c.manager.as_str(), c.field.as_str(), c.key()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("helm", ".data.config.json", Some("config.json")),
            ("kubectl-create", ".data.B", Some("B")),
            ("kubectl-create", ".data.TOKEN", Some("TOKEN")),
        ]
    );
    // A manager name Go quoted with escapes; a field that is not a key.
    let odd: Status = serde_json::from_value(json!({"code": 409, "reason": "Conflict", "details": {"causes": [
        {"reason": "FieldManagerConflict", "message": "conflict with \"we\\\"ird\\\\\" with subresource \"status\"",
         "field": ".metadata.labels.pipedream-secrets.io/managed"}]}}))
    .unwrap();
    let c = &field_conflicts(&odd).unwrap()[0];
    assert_eq!(c.manager, "we\"ird\\");
    assert_eq!(c.key(), None);
    // The 409 of a stale resourceVersion names no field owners: not a conflict to report.
    let stale: Status = serde_json::from_value(json!({"code": 409, "reason": "Conflict",
        "message": "Operation cannot be fulfilled on secrets \"s8\": the object has been modified; please apply your changes to the latest version and try again",
        "details": {"name": "s8", "kind": "secrets"}}))
    .unwrap();
    assert_eq!(field_conflicts(&stale), None);
}

/// Issue 25 (5): Merge read key owners from `f:data` only. A key an apply manager wrote through `stringData` is
/// recorded as `f:stringData` (which the API server does not hold against an apply of the data key), and a
/// Secret without managed fields had no owners at all (the API server counts its keys as `before-first-apply`'s).
#[test]
fn key_owners_include_string_data_and_secrets_without_managed_fields() {
    let m = named(
        ca(CreationPolicy::Merge, DeletionPolicy::Retain),
        "m",
        "uid-m",
    );
    let mut target = secret(
        &[("SSA_KEY", "from-helm"), ("CREATED", "x"), ("MINE", "y")],
        vec![],
    );
    target.metadata.managed_fields = Some(vec![
        ManagedFieldsEntry {
            manager: Some("helm".into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(json!({"f:stringData": {"f:SSA_KEY": {}}}))),
            ..Default::default()
        },
        owns("kubectl-create", &["CREATED"]),
        owns("pipedream-secrets.io/uid-m", &["MINE"]),
    ]);
    let keys: Vec<String> = ["SSA_KEY", "CREATED", "MINE", "NEW"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    let got: Vec<(String, String)> = key_owners(&Writer::of(&m), &target, &keys)
        .into_iter()
        .map(|c| (c.manager, c.field))
        .collect();
    let pair = |m: &str, f: &str| (m.to_string(), f.to_string());
    assert_eq!(
        got,
        [
            pair("helm", ".stringData.SSA_KEY"),
            pair("kubectl-create", ".data.CREATED")
        ],
        "its own key and a new one are free"
    );
    target.metadata.managed_fields = None;
    let got: Vec<(String, String)> = key_owners(&Writer::of(&m), &target, &keys)
        .into_iter()
        .map(|c| (c.manager, c.field))
        .collect();
    assert_eq!(
        got,
        [
            pair("before-first-apply", ".data.SSA_KEY"),
            pair("before-first-apply", ".data.CREATED"),
            pair("before-first-apply", ".data.MINE"),
        ]
    );
}

/// A refused Merge names every key by its owner: a ConnectedAccount by its name, other managers by theirs.
#[test]
fn a_merge_conflict_names_each_key_and_its_owner() {
    let mut target = secret(&[], vec![]);
    target.metadata.annotations = Some(
        [(
            format!("{MERGE_ANNOTATION_PREFIX}uid-a"),
            "first".to_string(),
        )]
        .into(),
    );
    let c = |manager: &str, field: &str| FieldConflict {
        manager: manager.into(),
        field: field.into(),
    };
    let m = merge_conflict(
        Some(&target),
        "shared",
        &[
            c("pipedream-secrets.io/uid-a", ".data.TOKEN"),
            c("kubectl-create", ".data.A"),
            c("kubectl-create", ".data.B"),
            c("before-first-apply", ".data.OLD"),
            c("helm", ".stringData.S"),
            c("helm", ".metadata.labels.x"),
        ],
    )
    .0;
    for part in [
        "Secret shared:",
        "key TOKEN already written by ConnectedAccount first",
        "keys A, B owned by field manager kubectl-create",
        "key OLD owned by field manager before-first-apply (the Secret had no field owners recorded",
        "keys S (stringData), field .metadata.labels.x owned by field manager helm",
    ] {
        assert!(m.contains(part), "{part:?} in {m}");
    }
}

/// Regression (issue 7): Merge force-applied `app.kubernetes.io/managed-by`, replacing the owner's value; when
/// Helm restored it the ConnectedAccount locked itself out ("written by ConnectedAccount <its own name>"). Merge
/// now touches only its keys, its own annotation and the watch label.
#[test]
fn merge_leaves_the_owners_labels_alone_and_survives_them_being_restored() {
    let m = ca(CreationPolicy::Merge, DeletionPolicy::Retain);
    let d = desired_secret(
        &Writer::of(&m),
        &m.spec.target,
        &data(),
        Some("2026-11-22T10:00:00Z"),
    );
    let labels = d.metadata.labels.clone().unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), vec![WATCH_LABEL]);
    let ann = d.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann.keys().cloned().collect::<Vec<_>>(),
        vec![Writer::of(&m).merge_annotation()]
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
    assert!(check_ownership(&Writer::of(&m), &helm_owned).is_ok());
    assert!(up_to_date(&helm_owned, &d, &Writer::of(&m).field_manager()));
}

/// Regression (issue 7): a key another field manager added to an owned Secret could not be removed by server-side
/// apply, never matched the hash, and caused a false DriftCorrected (and a re-fetch after restart) on every pass.
#[test]
fn keys_added_by_others_are_not_drift() {
    let mine = ca(CreationPolicy::Owner, DeletionPolicy::Delete);
    let desired = desired_secret(&Writer::of(&mine), &mine.spec.target, &data(), None);
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
    let desired = desired_secret(&Writer::of(&c), &c.spec.target, &data(), None);
    let mut existing = desired.clone();
    existing.type_ = Some("Opaque".into());
    let m = type_conflict(&existing, desired.type_.as_deref()).unwrap();
    assert!(
        m.starts_with("spec.target.type:") && m.contains("Opaque"),
        "{m}"
    );
    assert!(!up_to_date(&existing, &desired, MANAGER));
    assert_eq!(data_size(&data()), 7);
}

/// A refusal names the spec field from the causes the API server lists (their `field`), not from words in
/// its message. Bodies as kube-apiserver sends them for an invalid Secret.
#[test]
fn a_refused_write_names_the_spec_field_from_the_api_servers_causes() {
    let refused = |body: serde_json::Value| {
        let status: kube::core::Status = serde_json::from_value(body).unwrap();
        refused_write("gh", &status).message
    };
    let invalid = |field: &str, message: &str| {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
            "code": 422, "message": format!("Secret \"gh\" is invalid: {field}: {message}"),
            "details": {"name": "gh", "kind": "Secret",
                "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]}})
    };
    let m = refused(invalid("type", "Invalid value: \"x\": field is immutable"));
    assert!(m.starts_with("spec.target.type: "), "{m}");
    let m = refused(invalid(
        "metadata.labels",
        "Invalid value: \"bad value!\": a valid label must be ...",
    ));
    assert!(m.starts_with("spec.target.labels: "), "{m}");
    let m = refused(invalid(
        "data[a b]",
        "Invalid value: \"a b\": a valid config key must consist of ...",
    ));
    assert!(m.starts_with("spec.target.template.data: "), "{m}");
    let m = refused(invalid(
        "metadata.annotations",
        "Too long: may not be more than 262144 bytes",
    ));
    assert!(m.starts_with("spec.target.annotations: "), "{m}");
    // A type refused for another reason than immutability: matching words of the message, this was
    // "spec.target".
    let m = refused(invalid(
        "type",
        "Invalid value: \"a/b/c\": a qualified name must consist of ...",
    ));
    assert!(m.starts_with("spec.target.type: "), "{m}");
    // No causes: the target as a whole.
    let m = refused(
        serde_json::json!({"code": 400, "message": "the body of the request was in an unknown format", "reason": "BadRequest"}),
    );
    assert!(m.starts_with("spec.target: "), "{m}");
    let m = refused(
        serde_json::json!({"code": 403, "message": "secrets is forbidden", "reason": "Forbidden"}),
    );
    assert!(m.contains("(HTTP 403)"), "{m}");
}
