//! Property-based fuzzing of everything that parses tenant or upstream input: Pipedream answers, headers,
//! durations, templates, Secret building. A bounded number of cases runs in every `cargo test`
//! (`PROPTEST_CASES` raises it); the property is always "never panics, and stays within its stated bounds".

use std::collections::BTreeMap;
use std::time::Duration;

use pipedream_secrets_operator::crd::ConnectedAccount;
use pipedream_secrets_operator::pipedream::{MAX_RETRY_AFTER, parse_account, retry_after};
use pipedream_secrets_operator::{schedule, secret, template};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Arbitrary JSON, biased towards the shapes Pipedream sends.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("2026-11-22T10:00:00.000Z")),
        Just(json!("9999-12-31T23:59:59Z")),
        Just(json!("apn_Ab12")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_string()),
                    Just("data".to_string()),
                    Just("credentials".to_string()),
                    Just("expires_at".to_string()),
                    Just("next_refresh_at".to_string()),
                    Just("healthy".to_string()),
                    Just("dead".to_string()),
                    Just("app".to_string()),
                    Just("error".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn connected_account(policy: &str, keys: &BTreeMap<String, String>) -> ConnectedAccount {
    let deletion = if policy == "Owner" {
        "Delete"
    } else {
        "Retain"
    };
    let mut c: ConnectedAccount = serde_json::from_value(json!({
        "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
        "metadata": {"name": "gh", "namespace": "team-a", "uid": "uid-1"},
        "spec": {"accountId": "apn_A1", "target": {"creationPolicy": policy, "deletionPolicy": deletion}}
    }))
    .unwrap();
    c.spec.target.labels = keys.clone();
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn account_parsing_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_account("account", &body);
    }

    #[test]
    fn account_parsing_never_panics_on_json(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        if let Ok(a) = parse_account("account", &body) {
            // Whatever parsed is printable without credential values and usable by the template context.
            let _ = format!("{a:?}");
            if let Some(c) = &a.credentials {
                let t: BTreeMap<String, String> = [("K".to_string(), "{{ credentials | tojson }}".to_string())].into();
                let _ = template::render(&t, c, &a, a.expires_at.as_deref());
                let (data, _) = template::raw_data(c, None);
                prop_assert!(data.keys().all(|k| template::is_valid_secret_key(k)));
            }
        }
    }

    #[test]
    fn retry_after_is_bounded_for_any_header(
        name in prop_oneof![Just("retry-after"), Just("retry-after-ms"), Just("x-ratelimit-reset")],
        value in prop_oneof!["[ -~]{0,40}", any::<f64>().prop_map(|f| f.to_string()), any::<i64>().prop_map(|n| n.to_string())],
    ) {
        let mut h = reqwest::header::HeaderMap::new();
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            h.insert(name, v);
            let now: jiff::Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
            if let Some(d) = retry_after(&h, now) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }
    }

    #[test]
    fn durations_parse_or_refuse_without_panicking(s in "[0-9smh]{0,24}|.{0,24}") {
        let _ = schedule::parse_duration(&s);
    }

    #[test]
    fn durations_round_trip(h in 0u64..1000, m in 0u64..60, s in 0u64..60) {
        let text = format!("{h}h{m}m{s}s");
        prop_assert_eq!(schedule::parse_duration(&text), Some(Duration::from_secs(h * 3600 + m * 60 + s)));
    }

    /// Templates assembled from the language's own tokens: they parse or are refused, and a render never
    /// panics or exceeds the Secret size budget.
    #[test]
    fn templates_render_within_limits_or_fail_cleanly(
        parts in prop::collection::vec(prop_oneof![
            Just("{{ "), Just(" }}"), Just("{% for x in credentials %}"), Just("{% endfor %}"),
            Just("{% if credentials.k %}"), Just("{% endif %}"), Just("credentials.k"), Just("credentials.big"),
            Just(" ~ "), Just(" + "), Just(" * "), Just("|upper"), Just("|join(credentials.big)"),
            Just("|b64encode"), Just("|replace('y', 'yyyy')"), Just("|tojson"), Just("x"), Just("'lit'"),
            Just("{% set a = 1 %}"), Just("range(9)"), Just("("), Just(")"), Just("loop.index"),
        ], 0..24),
    ) {
        let src: String = parts.concat();
        let account: pipedream_secrets_operator::pipedream::Account = serde_json::from_value(json!({
            "id": "apn_A1", "credentials": {"k": "v", "big": "y".repeat(100_000)}})).unwrap();
        let t: BTreeMap<String, String> = [("K".to_string(), src)].into();
        if let Ok(d) = template::render(&t, account.credentials.as_ref().unwrap(), &account, None) {
            prop_assert!(d.values().map(Vec::len).sum::<usize>() <= template::MAX_SECRET_DATA_BYTES);
        }
    }

    /// Secret building and ownership decisions over arbitrary keys and data: no panic, and the hash depends only
    /// on the data.
    #[test]
    fn secret_building_is_total_and_deterministic(
        policy in prop_oneof![Just("Owner"), Just("Orphan"), Just("Merge")],
        labels in prop::collection::btree_map("[a-z./]{1,20}", "[a-z]{0,10}", 0..4),
        data in prop::collection::btree_map("[-._a-zA-Z0-9]{1,20}", prop::collection::vec(any::<u8>(), 0..64), 0..6),
    ) {
        let ca = connected_account(policy, &labels);
        let desired = secret::desired_secret(&secret::Writer::of(&ca), &ca.spec.target, &data, Some("2026-11-22T10:00:00Z"));
        let _ = secret::check_ownership(&secret::Writer::of(&ca), &desired);
        prop_assert!(secret::up_to_date(&desired, &desired, &secret::Writer::of(&ca).field_manager()));
        let h1 = secret::data_hash(data.iter().map(|(k, v)| (k, v.as_slice())));
        let h2 = secret::data_hash(data.iter().rev().map(|(k, v)| (k, v.as_slice())));
        prop_assert_eq!(h1, h2);
        // Keys owned by another manager are reported, with that manager; keys this account owns are not.
        let (theirs, mine): (Vec<&String>, Vec<&String>) = data.keys().partition(|k| k.len() % 2 == 0);
        let entry = |manager: String, keys: &[&String]| {
            let fields: serde_json::Map<String, serde_json::Value> =
                keys.iter().map(|k| (format!("f:{k}"), json!({}))).collect();
            json!({"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:data": fields}})
        };
        let mut existing = desired.clone();
        existing.metadata.managed_fields = Some(serde_json::from_value(json!([
            entry("helm".into(), &theirs), entry(secret::Writer::of(&ca).field_manager(), &mine)])).unwrap());
        let owners = secret::key_owners(&secret::Writer::of(&ca), &existing, data.keys());
        prop_assert_eq!(owners.iter().map(|c| c.key().unwrap_or_default()).collect::<Vec<_>>(), theirs);
        prop_assert!(owners.iter().all(|c| c.manager == "helm"));
    }
}
