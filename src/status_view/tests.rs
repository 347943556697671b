use super::*;
use serde_json::json;

fn ca(status: serde_json::Value) -> ConnectedAccount {
    serde_json::from_value(json!({
        "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
        "metadata": {"name": "gh", "namespace": "team-a"},
        "spec": {"accountId": "apn_X"},
        "status": status,
    }))
    .unwrap()
}

#[test]
fn rows_show_expiry_horizon_reason_and_next_sync() {
    let now: Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
    let r = row(
        &ca(
            json!({"expiresAt": "2026-11-22T09:54:00Z", "nextSyncTime": "2026-11-22T09:49:05Z",
            "secretName": "gh", "conditions": [{"type": "Ready", "status": "True", "reason": "SecretSynced",
            "message": "", "lastTransitionTime": "2026-11-22T08:00:00Z"}]}),
        ),
        now,
    );
    assert_eq!(
        (
            r.ready.as_str(),
            r.reason.as_str(),
            r.expires_in.as_str(),
            r.next_sync.as_str()
        ),
        ("True", "SecretSynced", "54m", "49m")
    );
    let r = row(
        &ca(
            json!({"expiresAt": "2026-11-22T08:57:00Z", "nextSyncTime": "2026-11-22T08:59:59Z",
            "conditions": [{"type": "Ready", "status": "False", "reason": "StaleCredentials",
            "message": "", "lastTransitionTime": "2026-11-22T08:00:00Z"}]}),
        ),
        now,
    );
    assert_eq!(
        (r.expires_in.as_str(), r.next_sync.as_str()),
        ("expired 3m ago", "due")
    );
    let r = row(&ca(json!({})), now);
    assert_eq!((r.ready.as_str(), r.expires_in.as_str()), ("Unknown", "-"));
    let t = table(std::slice::from_ref(&r));
    assert!(
        t.starts_with(
            "NAMESPACE   NAME   ACCOUNT   READY     REASON   EXPIRES IN   NEXT SYNC   SECRET\n"
        ),
        "{t}"
    );
}

#[test]
fn humanize_keeps_two_units() {
    assert_eq!(humanize(42), "42s");
    assert_eq!(humanize(5 * 60 + 3), "5m3s");
    assert_eq!(humanize(3600 + 120), "1h2m");
    assert_eq!(humanize(2 * 86_400 + 3 * 3600 + 5), "2d3h");
    assert_eq!(humanize(-90), "1m30s");
}

#[test]
fn the_detail_keeps_key_names_and_drops_values() {
    let now: Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
    let c = ca(
        json!({"expiresAt": "2026-11-22T09:54:00Z", "secretName": "gh",
        "connection": "ClusterPipedreamConnection/default",
        "conditions": [{"type": "Ready", "status": "True", "reason": "SecretSynced", "message": "ok",
        "lastTransitionTime": "2026-11-22T08:00:00Z"}]}),
    );
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "gh", "annotations": {EXPIRES_AT_ANNOTATION: "2026-11-22T09:54:00Z"}},
        "data": {"oauth_access_token": "c2VjcmV0LXRva2Vu"}}))
    .unwrap();
    let d = Detail::build(
        &c,
        SecretState::of("gh", Some(&secret)),
        ConnectionState::of::<String>("ClusterPipedreamConnection/default", Ok(None)),
        Vec::new(),
        now,
    );
    let text = describe(&d);
    let yaml = serde_saphyr::to_string(&d).unwrap();
    for out in [&text, &yaml] {
        assert!(out.contains("oauth_access_token"), "{out}");
        assert!(
            !out.contains("c2VjcmV0LXRva2Vu") && !out.contains("secret-token"),
            "{out}"
        );
    }
    assert!(text.contains("Ready=NotFound"), "{text}");
    assert!(yaml.contains("reason: SecretSynced"), "{yaml}");
}
