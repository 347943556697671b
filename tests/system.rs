//! Whole-system tests: the real operator binary against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager; `tests/support`) and the test kit's fake Pipedream, with API faults from a proxy.

mod support;

use std::time::Duration;

use pdso_testkit::apiserver::ApiFault;
use pdso_testkit::pipedream::{Fault, FaultKind};
use serde_json::json;
use support::{Env, oauth_account, secret_expiry, secret_value};

fn account_spec(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"accountId": "apn_Sys1", "refresh": {"beforeExpiry": "5s"}});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    json!({"spec": spec})
}

/// Set ConnectedAccount `name`'s (in team-a, spec `account_spec(extra)`) force-sync annotation to `value`.
async fn force_sync(env: &Env, name: &str, extra: serde_json::Value, value: &str) {
    let mut body = account_spec(extra);
    body["metadata"] = json!({"annotations": {"pipedream-secrets.io/force-sync": value}});
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        name,
        body,
    )
    .await;
}

/// Run `kubectl ARGS` with this build installed as the `kubectl-pipedream` plugin in `dir` (put first on `PATH`).
fn kubectl_with_plugin(
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let plugin = dir.join("kubectl-pipedream");
    if !plugin.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pipedream-secrets-operator"), &plugin)
            .unwrap();
    }
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .args(args)
        .env("PATH", &path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

async fn create_ca(env: &Env, name: &str, extra: serde_json::Value) {
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        name,
        account_spec(extra),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_writes_the_secret_with_keys_owner_and_annotations_then_gc_on_delete() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(&env, "gh", json!({"target": {"labels": {"team": "a"}}})).await;
    let s = env
        .wait("the Secret", 20, async || env.secret("team-a", "gh").await)
        .await;
    assert_eq!(
        secret_value(&s, "oauth_access_token").as_deref(),
        Some("tok-apn_Sys1-g1")
    );
    assert_eq!(
        secret_value(&s, "oauth_refresh_token").as_deref(),
        Some("refresh")
    );
    assert_eq!(
        s["metadata"]["ownerReferences"][0]["kind"],
        "ConnectedAccount"
    );
    assert_eq!(s["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(s["metadata"]["labels"]["team"], "a");
    assert_eq!(
        s["metadata"]["annotations"]["pipedream-secrets.io/connected-account"],
        format!("{}/gh", env.ns("team-a"))
    );
    assert!(s["metadata"]["annotations"]["pipedream-secrets.io/expires-at"].is_string());
    env.wait_synced("gh", 10).await;
    // Deleting the ConnectedAccount garbage-collects the Secret.
    env.delete(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        "gh",
    )
    .await;
    // The operator's finalizer goes first, then garbage collection takes the Secret.
    env.wait("the Secret to be garbage-collected", 20, async || {
        (env.ca("gh").await.is_none() && env.secret("team-a", "gh").await.is_none()).then_some(())
    })
    .await;
    // Retain keeps it.
    create_ca(
        &env,
        "kept",
        json!({"target": {"deletionPolicy": "Retain"}}),
    )
    .await;
    env.wait("the retained Secret", 20, async || {
        env.secret("team-a", "kept").await
    })
    .await;
    env.delete(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        "kept",
    )
    .await;
    env.wait("the retained ConnectedAccount to go", 20, async || {
        env.ca("kept").await.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        env.secret("team-a", "kept").await.is_some(),
        "Retain keeps the Secret"
    );
    let logs = env.logs();
    assert!(
        !logs.contains("tok-apn_Sys1") && !logs.contains(support::CLIENT_SECRET),
        "no secret in logs"
    );
    // A pass's lines carry its span: the object and the pass's number, so one pass can be followed.
    let synced: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "synced" && l["secret"] == "gh")
        .collect();
    let span = &synced.first().expect("a synced line")["span"];
    assert_eq!(span["name"], "reconcile", "{span}");
    assert_eq!(span["kind"], "ConnectedAccount", "{span}");
    assert_eq!(span["namespace"], env.ns("team-a").as_str(), "{span}");
    assert_eq!(span["object"], "gh", "{span}");
    assert!(span["pass"].as_u64().is_some_and(|p| p > 0), "{span}");
}

/// 20-second tokens that Pipedream refreshes 8 s before expiry, for about five cycles: the Secret never holds an
/// expired token, and the operator makes about one fetch per token lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_rotate_and_the_secret_never_holds_an_expired_one() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(20), 8)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait("the Secret", 20, async || env.secret("team-a", "gh").await)
        .await;
    let started = std::time::Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(55) {
        let s = env.secret("team-a", "gh").await.unwrap();
        let exp = secret_expiry(&s).unwrap();
        assert!(
            exp > jiff::Timestamp::now(),
            "the Secret holds a token that expired at {exp}"
        );
        seen.insert(secret_value(&s, "oauth_access_token").unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Pipedream refreshes every 12 s: 55 s show at least four distinct tokens.
    assert!(seen.len() >= 4, "tokens seen: {seen:?}");
    let fetches = env.pd.count("connect_account");
    assert!(
        fetches <= 2 * seen.len() + 2,
        "{fetches} fetches for {} tokens",
        seen.len()
    );
    assert_eq!(
        env.pd.count("token"),
        1,
        "one OAuth token for the whole run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_does_not_refetch_fresh_credentials() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    let before = env.pd.count("connect_account");
    env.stop_operator();
    env.start_operator();
    // Wait until the new process has reconciled (it reads the Secret), then some more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        env.logs().matches("caches synced").count() >= 2,
        "second operator started"
    );
    assert_eq!(
        env.pd.count("connect_account"),
        before,
        "fresh credentials are not fetched again after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipedream_outage_keeps_the_last_good_secret_and_recovers() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(20), 5)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait("the Secret", 20, async || env.secret("team-a", "gh").await)
        .await;
    env.pd.add_fault(Fault {
        path: "/accounts/".into(),
        kind: FaultKind::Status { status: 503 },
        count: None,
    });
    env.wait("UpstreamError", 30, async || {
        (env.ready_reason("gh").await.as_deref() == Some("False/UpstreamError")).then_some(())
    })
    .await;
    let during = env.secret("team-a", "gh").await.unwrap();
    assert!(
        secret_value(&during, "oauth_access_token").is_some_and(|t| !t.is_empty()),
        "never blanked"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.secret("team-a", "gh").await.unwrap()["data"],
        during["data"],
        "the last good data stays during the outage"
    );
    env.pd.clear_faults();
    env.wait_synced("gh", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_client_secret_is_picked_up_from_the_kubernetes_secret() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    // Issue 17 (10): the credentials Secret is watched, not polled (it was read every 5 s per connection).
    let secret_gets = |env: &Env| {
        env.proxy
            .counts()
            .get(&("get".to_string(), "secrets".to_string()))
            .copied()
            .unwrap_or(0)
    };
    let before = secret_gets(&env);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        secret_gets(&env),
        before,
        "no Secret read by a healthy, idle operator"
    );
    // Rotate at Pipedream (old tokens revoked) and in the cluster; the operator hears of it from its watch;
    // then force a sync.
    env.pd.rotate_client(support::CLIENT_ID, "rotated-secret");
    env.apply(
        "v1",
        "Secret",
        Some("ops"),
        "pd-oauth",
        json!({"stringData": {"client_secret": "rotated-secret"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    force_sync(&env, "gh", json!({}), "1").await;
    env.wait("a second token", 20, async || {
        (env.pd.count("token") >= 2).then_some(())
    })
    .await;
    env.wait("forced sync handled", 20, async || {
        let ca = env.ca("gh").await?;
        (ca["status"]["lastForceSync"] == "1"
            && env.ready_reason("gh").await.as_deref() == Some("True/SecretSynced"))
        .then_some(())
    })
    .await;
    // Issue 17 (3): the rotation cost two mints and a 401 (a request still sent the revoked token). The operator
    // knew the secret had changed before it asked: one mint, no failed request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = env.pd.requests();
    let failed: Vec<_> = log.iter().filter(|r| r.status >= 400).collect();
    assert!(failed.is_empty(), "no failed request: {failed:?}");
    assert_eq!(
        env.pd.count("token"),
        2,
        "one mint at start, one for the rotation"
    );
}

/// Issue 7: a `Retain` Secret (no ownerReference) edited or deleted by hand is repaired at once, from the last
/// answer and without a new Pipedream call: the label-selected metadata watch maps it back by its annotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_secret_edited_or_deleted_by_hand_is_repaired_promptly() {
    use k8s_openapi::api::core::v1::Secret;
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(
        &env,
        "kept",
        json!({"target": {"deletionPolicy": "Retain"}}),
    )
    .await;
    env.wait_synced("kept", 20).await;
    let s = env.secret("team-a", "kept").await.unwrap();
    assert!(
        s["metadata"]["ownerReferences"].is_null(),
        "Retain: no ownerReference"
    );
    let good = secret_value(&s, "oauth_access_token").unwrap();
    let fetches = env.pd.count("connect_account");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(env.client.clone(), &env.ns("team-a"));
    secrets
        .patch(
            "kept",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"oauth_access_token": "tampered"}})),
        )
        .await
        .unwrap();
    env.wait("the edit repaired", 10, async || {
        let s = env.secret("team-a", "kept").await?;
        (secret_value(&s, "oauth_access_token")? == good).then_some(())
    })
    .await;
    secrets.delete("kept", &Default::default()).await.unwrap();
    env.wait("the deleted Secret re-created", 10, async || {
        let s = env.secret("team-a", "kept").await?;
        (secret_value(&s, "oauth_access_token")? == good).then_some(())
    })
    .await;
    assert_eq!(
        env.pd.count("connect_account"),
        fetches,
        "repaired from the last answer"
    );
}

/// Regression (issue 8 soak): Pipedream rotated first, so accounts failed with AuthFailed and backed off for a
/// minute or more; updating the Kubernetes Secret afterwards changed nothing until then. The connection now looks
/// at its Secret every few seconds: the change re-checks it and retries its accounts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_updated_after_auth_failures_is_used_within_seconds() {
    // The connection's status (credentialsVersion) is kept by a cluster-wide install only.
    let options = support::Options {
        cluster_wide: true,
        ..Default::default()
    };
    let mut env = env_or_skip!(Env::start_with(
        vec![oauth_account("apn_Sys1", Some(3600), 600)],
        options
    ));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    let version = async |env: &Env| {
        env.get(
            "pipedream-secrets.io/v1alpha1",
            "ClusterPipedreamConnection",
            None,
            "default",
        )
        .await
        .and_then(|c| {
            c["status"]["credentialsVersion"]
                .as_str()
                .map(str::to_string)
        })
    };
    let before = env
        .wait("credentialsVersion", 20, async || version(&env).await)
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.pd.rotate_client(support::CLIENT_ID, "rotated-secret");
    force_sync(&env, "gh", json!({}), "1").await;
    env.wait("AuthFailed", 20, async || {
        (env.ready_reason("gh").await.as_deref() == Some("False/AuthFailed")).then_some(())
    })
    .await;
    env.apply(
        "v1",
        "Secret",
        Some("ops"),
        "pd-oauth",
        json!({"stringData": {"client_secret": "rotated-secret"}}),
    )
    .await;
    let updated = std::time::Instant::now();
    env.wait("Synced with the rotated secret", 15, async || {
        (env.ready_reason("gh").await.as_deref() == Some("True/SecretSynced")).then_some(())
    })
    .await;
    assert!(updated.elapsed() < Duration::from_secs(15));
    assert_ne!(
        version(&env).await,
        Some(before),
        "the connection recorded the new Secret version"
    );
    let logs = env.logs();
    assert!(!logs.contains("rotated-secret") && !logs.contains(support::CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_api_faults_do_not_lose_the_secret() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(20), 5)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait("the Secret", 20, async || env.secret("team-a", "gh").await)
        .await;
    // Secret writes fail and watches drop for a while; the operator retries and carries on.
    env.proxy.add_fault(ApiFault {
        verb: "patch".into(),
        resource: "secrets".into(),
        status: Some(500),
        count: Some(3),
        ..Default::default()
    });
    env.proxy.add_fault(ApiFault {
        verb: "watch".into(),
        drop_watch_after_ms: Some(500),
        count: Some(5),
        ..Default::default()
    });
    let first = secret_value(
        &env.secret("team-a", "gh").await.unwrap(),
        "oauth_access_token",
    )
    .unwrap();
    env.wait("a rotation despite faults", 45, async || {
        let s = env.secret("team-a", "gh").await?;
        (secret_value(&s, "oauth_access_token")? != first).then_some(())
    })
    .await;
}

/// Issue 25 (2): "is the name free" was answered from the operator's watch of Secrets and the first write was a
/// forced apply with a controller ownerReference, so a Secret created while that watch lagged was taken over
/// (and garbage-collected with the ConnectedAccount). The first write is create-only: the API server decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_write_never_takes_over_a_secret_the_operators_watch_has_not_seen() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    // The operator's Secret watches end and reopen only after 30 s: its view of Secrets lags.
    env.proxy.add_fault(ApiFault {
        verb: "watch".into(),
        resource: "secrets".into(),
        latency_ms: Some(30_000),
        ..Default::default()
    });
    env.proxy.drop_watches();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.apply(
        "v1",
        "Secret",
        Some("team-a"),
        "theirs",
        json!({"stringData": {"password": "their-password"}}),
    )
    .await;
    create_ca(&env, "mine", json!({"target": {"name": "theirs"}})).await;
    env.wait("SecretConflict", 25, async || {
        (env.ready_reason("mine").await.as_deref() == Some("False/SecretConflict")).then_some(())
    })
    .await;
    let s = env.secret("team-a", "theirs").await.unwrap();
    assert!(
        s["metadata"]["ownerReferences"].is_null(),
        "no ownerReference: {}",
        s["metadata"]
    );
    let keys: Vec<&String> = s["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["password"], "their data only");
    assert_eq!(
        secret_value(&s, "password").as_deref(),
        Some("their-password")
    );
    env.proxy.clear_faults();
    // Deleting the ConnectedAccount leaves their Secret alone.
    env.delete(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        "mine",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(env.secret("team-a", "theirs").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_connected_accounts_are_rejected_at_admission() {
    let env = env_or_skip!(Env::start(vec![]));
    let cases = [
        (
            json!({"spec": {"accountId": "not-an-id"}}),
            "spec.accountId",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"creationPolicy": "Sometimes"}}}),
            "spec.target.creationPolicy",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"creationPolicy": "Merge"}}}),
            "creationPolicy Merge requires deletionPolicy Retain",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "refresh": {"beforeExpiry": "1s"}}}),
            "refresh.beforeExpiry must be at least 5s",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "refresh": {"interval": "soon"}}}),
            "spec.refresh.interval",
        ),
        // Regression (issue 7): keys and values the API server refuses on the Secret only failed the write.
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"template": {"data": {"..x": "{{ expires_at }}"}}}}}),
            "template keys must be valid Secret keys",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"labels": {"team": "bad value!"}}}}),
            "spec.target.labels",
        ),
        // Issue 25 (9): Secret types and annotations that make Kubernetes act on the Secret. A
        // service-account-token Secret naming a ServiceAccount gets a long-lived token for it minted into it.
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"type": "kubernetes.io/service-account-token",
                   "annotations": {"kubernetes.io/service-account.name": "default"}}}}),
            "target.type",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"type": "bootstrap.kubernetes.io/token"}}}),
            "target.type",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"type": "helm.sh/release.v1"}}}),
            "target.type",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {
                   "annotations": {"kubernetes.io/service-account.name": "default"}}}}),
            "target.annotations",
        ),
        // The operator's own keys: a tenant's label could take its Secret out of the operator's watch, an
        // annotation could name another owner.
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"labels": {"pipedream-secrets.io/managed": "false"}}}}),
            "target.labels",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {
                   "annotations": {"merge.pipedream-secrets.io/0000": "x"}}}}),
            "target.annotations",
        ),
        // Issue 25 (1): totals, not only entries, are bounded: 64 annotations of 2 KiB pass each entry's limit.
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"annotations":
                   (0..64).map(|i| (format!("a{i}"), json!("x".repeat(2048)))).collect::<serde_json::Map<_, _>>()}}}),
            "target.annotations may hold at most 64 KiB",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"template": {"data":
                   (0..32).map(|i| (format!("k{i}"), json!("x".repeat(4096)))).collect::<serde_json::Map<_, _>>()}}}}),
            "target.template.data may hold at most 64 KiB",
        ),
        // Issue 25 (1): every string a tenant fills is bounded, so the worst-case object is bounded: durations
        // (only a pattern before, which `1s1s1s…` passes up to the object limit) and label keys.
        (
            json!({"spec": {"accountId": "apn_X1", "minRestartInterval": "1s".repeat(100_000)}}),
            "spec.minRestartInterval",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "refresh": {"interval": "1h".repeat(100)}}}),
            "spec.refresh.interval",
        ),
        (
            json!({"spec": {"accountId": "apn_X1", "target": {"labels": {format!("{}.example.com/k", "a".repeat(400)): "v"}}}}),
            "target.labels: keys are at most 317 characters",
        ),
    ];
    for (body, needle) in cases {
        let err = env
            .try_apply(
                "pipedream-secrets.io/v1alpha1",
                "ConnectedAccount",
                Some("team-a"),
                "bad",
                body,
            )
            .await
            .unwrap_err();
        let kube::Error::Api(status) = err else {
            panic!("{err:?}")
        };
        assert_eq!(status.code, 422, "{needle}");
        assert!(
            status.message.contains(needle),
            "{needle} not in {}",
            status.message
        );
    }
    assert!(env.ca("bad").await.is_none());
    // What stays allowed: credential types and your own, common annotations and app.kubernetes.io labels.
    for (name, target) in [
        ("ok-basic", json!({"type": "kubernetes.io/basic-auth"})),
        (
            "ok-docker",
            json!({"type": "kubernetes.io/dockerconfigjson"}),
        ),
        ("ok-custom", json!({"type": "example.com/token"})),
        (
            "ok-meta",
            json!({"labels": {"app.kubernetes.io/part-of": "shop"},
                           "annotations": {"reloader.stakater.com/match": "true",
                                           "app.kubernetes.io/description": "x".repeat(60000)}}),
        ),
    ] {
        env.try_apply(
            "pipedream-secrets.io/v1alpha1",
            "ConnectedAccount",
            Some("team-a"),
            name,
            json!({"spec": {"accountId": "apn_X1", "target": target}}),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A cluster connection's Secret ref without a namespace (CEL on a field named `namespace`).
    let err = env
        .try_apply("pipedream-secrets.io/v1alpha1", "ClusterPipedreamConnection", None, "nons", json!({"spec": {"auth": {"oauth": {
            "clientId": "c", "projectId": "proj_x", "clientSecretRef": {"name": "s", "key": "k"}}}}}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("clientSecretRef.namespace is required"),
        "{err}"
    );
    // A tenant's PipedreamConnection: its strings are bounded too (apiUrl was only a pattern).
    let err = env
        .try_apply(
            "pipedream-secrets.io/v1alpha1",
            "PipedreamConnection",
            Some("team-a"),
            "long",
            json!({"spec": {
            "apiUrl": format!("https://{}.example.com/", "a".repeat(100_000)),
            "auth": {"apiKey": {"secretRef": {"name": "s", "key": "k"}}}}}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.apiUrl"), "{err}");
}

/// Issue 25 (3): every replica applied the Lease with the same field manager, so two contenders that both saw
/// the Lease free both "won" it: the later apply silently replaced the first leader, and both wrote until the
/// first noticed. Here replica B reads the free Lease at the same moment as A, but its apply reaches the API
/// server 3 s after A's: B must lose the race (the API server refuses its apply), and A must never see its
/// Lease taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_a_free_lease_never_both_lead() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    // A free Lease, as a leader's graceful release leaves it: both replicas see it free and write at once.
    env.apply(
        "coordination.k8s.io/v1",
        "Lease",
        Some("ops"),
        "pipedream-secrets-operator",
        json!({"spec": {"leaseDurationSeconds": 15}}),
    )
    .await;
    let (a, b) = (env.operator_proxy().await, env.operator_proxy().await);
    for (proxy, delay) in [(&a, 1_000), (&b, 4_000)] {
        for verb in ["create", "update", "patch"] {
            proxy.add_fault(ApiFault {
                verb: verb.into(),
                resource: "leases".into(),
                latency_ms: Some(delay),
                count: Some(1),
                ..Default::default()
            });
        }
    }
    env.start_operator_behind(&a);
    env.start_operator_behind(&b);
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 30).await;
    // B's delayed write has landed (or been refused) by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let logs = env.logs();
    assert_eq!(
        logs.matches("became leader").count(),
        1,
        "exactly one leader:\n{logs}"
    );
    assert!(
        !logs.contains("the Lease is held by another replica") && !logs.contains("leadership lost"),
        "the leader kept its Lease:\n{logs}"
    );
    assert!(env.operators_alive(), "both replicas run");
}

/// Issue 25 (3): a standby whose wall clock runs 20 s ahead of the leader's (node clock skew, or a clock step)
/// judged the leader's Lease expired by `renewTime + 15 s < now` and took it while the leader was still renewing
/// it: two writers. Expiry is now timed on the standby's monotonic clock from when it saw the Lease change, so it
/// waits as long as the leader renews. The standby runs under libfaketime (wall clock only; monotonic time real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_clock_runs_ahead_never_takes_a_renewed_lease() {
    let Some(faketime) = support::libfaketime() else {
        return;
    };
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 30).await;
    env.extra_env = vec![
        ("LD_PRELOAD".into(), faketime.into()),
        ("FAKETIME".into(), "+20s".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ];
    env.start_operator();
    env.wait("the skewed standby to start", 20, async || {
        (env.logs().matches("waiting to become leader").count() >= 2).then_some(())
    })
    .await;
    // Three Lease durations with the leader renewing.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let logs = env.logs();
    assert_eq!(
        logs.matches("became leader").count(),
        1,
        "the skewed standby took a renewed Lease:\n{logs}"
    );
    assert!(
        !logs.contains("the Lease is held by another replica") && !logs.contains("leadership lost"),
        "the leader kept its Lease:\n{logs}"
    );
    // It still takes over when the leader really goes (its own Lease duration later, on its own clock).
    let leader = env.operator_pids()[0];
    env.kill_operator(leader);
    env.wait("the skewed standby to lead", 30, async || {
        (env.logs().matches("became leader").count() == 2).then_some(())
    })
    .await;
}

/// Two replicas: one leads; when it dies the standby takes the Lease and carries on without re-fetching fresh
/// credentials (the schedule lives in status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_takes_over_without_refetching() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    let leaders = |env: &Env| env.logs().matches("became leader").count();
    assert_eq!(leaders(&env), 1, "exactly one leader");
    let holder = env
        .lease_holder("pipedream-secrets-operator")
        .await
        .expect("Lease");
    let leader_pid = env
        .operator_pids()
        .into_iter()
        .find(|p| holder.ends_with(&format!("-{p}")))
        .expect("leader pid");
    let fetches = env.pd.count("connect_account");
    env.kill_operator(leader_pid);
    env.wait("the standby to lead", 20, async || {
        (leaders(&env) == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.pd.count("connect_account"),
        fetches,
        "no re-fetch of fresh credentials at takeover"
    );
    // The new leader works: a forced sync goes through it.
    force_sync(&env, "gh", json!({}), "after-failover").await;
    env.wait("a sync by the new leader", 20, async || {
        (env.ca("gh").await?["status"]["lastForceSync"] == "after-failover").then_some(())
    })
    .await;
}

/// Issue 17 (4): kube-lease-manager does not report a renewal that keeps failing, so a leader cut off from the API
/// server went on reconciling while the standby took the expired Lease (two writers once the partition healed).
/// With only the leader partitioned (its own proxy), it gives up leadership and exits before the standby leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_gives_up_before_the_standby_takes_over() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.extra_args = vec!["--leader-election-duration-seconds=6".into()];
    let proxies = [
        env.start_operator_behind_own_proxy().await,
        env.start_operator_behind_own_proxy().await,
    ];
    let pids = env.operator_pids();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    let holder = env
        .lease_holder("pipedream-secrets-operator")
        .await
        .expect("Lease");
    let leader = pids
        .iter()
        .position(|p| holder.ends_with(&format!("-{p}")))
        .expect("leader pid");
    proxies[leader].partition(true);
    let partitioned = std::time::Instant::now();
    env.wait("the standby to lead", 30, async || {
        (env.logs().matches("became leader").count() == 2).then_some(())
    })
    .await;
    let took_over = partitioned.elapsed();
    let logs = env.logs();
    let gave_up = logs
        .find("giving up leadership")
        .expect("the partitioned leader gives up");
    let second_leader = logs.rfind("became leader").unwrap();
    assert!(
        gave_up < second_leader,
        "the old leader gave up before the standby led"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while env.operator_running(pids[leader]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the partitioned leader exits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standby = 1 - leader;
    assert!(env.operator_running(pids[standby]));
    let new_holder = env
        .lease_holder("pipedream-secrets-operator")
        .await
        .unwrap();
    assert!(
        new_holder.ends_with(&format!("-{}", pids[standby])),
        "{new_holder}"
    );
    eprintln!("the standby led {took_over:?} after the partition");
    // Healed: the standby alone writes; a forced sync goes through it.
    proxies[leader].partition(false);
    force_sync(&env, "gh", json!({}), "after-partition").await;
    env.wait("a sync by the new leader", 20, async || {
        (env.ca("gh").await?["status"]["lastForceSync"] == "after-partition").then_some(())
    })
    .await;
}

/// Issue 27 (4): uninstalling the operator before deleting a `deletionPolicy: Retain` ConnectedAccount left it
/// pending deletion for ever (its finalizer waits for the operator). `uninstall`, which the chart's pre-delete
/// hook runs, refuses to touch anything while an operator pod still matches its selector, and otherwise removes
/// the finalizer: the ConnectedAccount deletes at once, its Secret stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_lets_retained_connectedaccounts_go_once_the_operator_is_stopped() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(
        &env,
        "kept",
        json!({"target": {"deletionPolicy": "Retain"}}),
    )
    .await;
    create_ca(&env, "plain", json!({})).await;
    env.wait_synced("kept", 20).await;
    env.wait_synced("plain", 20).await;
    for pid in env.operator_pids() {
        env.kill_operator(pid);
    }
    let finalizers = async |name: &str| -> Vec<String> {
        env.ca(name).await.map_or(Vec::new(), |ca| {
            serde_json::from_value(ca["metadata"]["finalizers"].clone()).unwrap_or_default()
        })
    };
    assert_eq!(finalizers("kept").await, ["pipedream-secrets.io/finalizer"]);
    let ops = env.ns("ops");
    let team_a = env.ns("team-a");
    let uninstall = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
            .args(["uninstall", "--operator-namespace", &ops, "-n", &team_a])
            .args(extra)
            .env("KUBECONFIG", &env.kubeconfig)
            .output()
            .unwrap()
    };
    // An operator pod still there (this control plane has no node: it stays Pending): nothing is touched.
    env.apply(
        "v1",
        "Pod",
        Some("ops"),
        "operator-0",
        json!({"metadata": {"labels": {"app": "pdso"}},
            "spec": {"containers": [{"name": "operator", "image": "example.invalid/pdso"}]}}),
    )
    .await;
    let out = uninstall(&["--operator-selector=app=pdso", "--timeout=2s"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("1 operator pod(s) matching app=pdso still running"),
        "{err}"
    );
    assert_eq!(
        finalizers("kept").await,
        ["pipedream-secrets.io/finalizer"],
        "nothing changed"
    );
    // The operator stopped: the finalizer goes.
    env.delete("v1", "Pod", Some("ops"), "operator-0").await;
    env.wait("the pod to go", 60, async || {
        env.get("v1", "Pod", Some("ops"), "operator-0")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let out = uninstall(&["--operator-selector=app=pdso"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "connectedaccount {team_a}/kept: finalizer removed"
        )),
        "{text}"
    );
    assert!(
        text.contains("1 of 2 ConnectedAccounts carried the finalizer"),
        "{text}"
    );
    assert!(finalizers("kept").await.is_empty());
    env.delete(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        "kept",
    )
    .await;
    env.wait(
        "the retained ConnectedAccount to go without an operator",
        20,
        async || env.ca("kept").await.is_none().then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        env.secret("team-a", "kept").await.is_some(),
        "Retain keeps the Secret"
    );
}

/// Issue 27 (10): behind an egress proxy (`HTTPS_PROXY` set, as in most corporate shells and pods), the operator
/// and every subcommand that talks to the cluster failed at once: kube-rs takes `HTTPS_PROXY` for
/// kubeconfig-based clients but was built without its proxy support ("kube/http-proxy"). Through the proxy: the
/// API server (CONNECT tunnels) and Pipedream (`HTTP_PROXY`; the fake Pipedream speaks plain HTTP) are reached,
/// `--allowed-api-hosts` still judges the target host (a refused host is never asked for through the proxy), and
/// `NO_PROXY` sends requests direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_and_the_cli_work_through_an_egress_proxy() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    let proxy = pdso_testkit::egressproxy::EgressProxy::start()
        .await
        .unwrap();
    let pd = env.pd.url();
    let pd_authority = pd.trim_start_matches("http://").to_string();
    // The operator reaches the API server through the fault proxy, the CLI directly (the admin's kubeconfig).
    let authority = |kubeconfig: &std::path::Path| {
        std::fs::read_to_string(kubeconfig)
            .unwrap()
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))
            .and_then(|u| {
                u.split("://")
                    .nth(1)
                    .map(|a| a.trim_end_matches('/').to_string())
            })
            .expect("the kubeconfig's server")
    };
    let (operator_api, cli_api) = (
        authority(&env.operator_kubeconfig),
        authority(&env.kubeconfig),
    );
    env.extra_env = vec![
        ("HTTPS_PROXY".into(), proxy.url()),
        ("HTTP_PROXY".into(), proxy.url()),
    ];
    env.extra_args = vec!["--allowed-api-hosts".into(), "127.0.0.1".into()];
    env.apply(
        "v1",
        "Secret",
        Some("team-a"),
        "pd-key",
        json!({"stringData": {"api_key": "key-a"}}),
    )
    .await;
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "PipedreamConnection",
        Some("team-a"),
        "elsewhere",
        json!({"spec": {"apiUrl": pd.replace("127.0.0.1", "localhost"),
            "auth": {"apiKey": {"secretRef": {"name": "pd-key", "key": "api_key"}}}}}),
    )
    .await;
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    create_ca(
        &env,
        "elsewhere",
        json!({"connectionRef": {"kind": "PipedreamConnection", "name": "elsewhere"}}),
    )
    .await;
    env.wait_synced("gh", 30).await;
    env.wait("the refused host reported", 30, async || {
        (env.ready_reason("elsewhere").await.as_deref() == Some("False/ConnectionNotReady"))
            .then_some(())
    })
    .await;
    let seen = proxy.seen();
    assert!(
        seen.iter().any(|s| s == &format!("CONNECT {operator_api}")),
        "the API server through the proxy: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with(&format!("POST {pd}/v1/oauth/token")))
            || seen
                .iter()
                .any(|s| s.starts_with(&format!("GET {pd}/v1/connect/"))),
        "Pipedream through the proxy: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.contains("localhost")),
        "a host --allowed-api-hosts refuses is never asked for: {seen:?}"
    );
    assert!(env.operators_alive(), "{}", env.logs());
    // The CLI, with the proxy in its environment; then with NO_PROXY, direct.
    let connection = env.cluster("default");
    let check = |no_proxy: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"));
        c.args([
            "check",
            "--connection",
            &connection,
            "--account",
            "apn_Sys1",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("HTTPS_PROXY", proxy.url())
        .env("HTTP_PROXY", proxy.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
        if let Some(n) = no_proxy {
            c.env("NO_PROXY", n);
        }
        c.output().unwrap()
    };
    let before = proxy.seen().len();
    let out = check(None);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let through: Vec<String> = proxy.seen()[before..].to_vec();
    assert!(
        through.iter().any(|s| s == &format!("CONNECT {cli_api}"))
            && through.iter().any(|s| s.contains(&pd_authority)),
        "{through:?}"
    );
    let before = proxy.seen().len();
    let out = check(Some("127.0.0.1"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proxy.seen().len(), before, "NO_PROXY: direct");
    // A TLS-inspecting proxy: Pipedream's answers under a CA no system trusts. Refused, until its CA is given.
    let front = pdso_testkit::egressproxy::TlsFront::start(&pd_authority)
        .await
        .unwrap();
    let mut spec = env
        .get(
            "pipedream-secrets.io/v1alpha1",
            "ClusterPipedreamConnection",
            None,
            "default",
        )
        .await
        .unwrap()["spec"]
        .clone();
    spec["apiUrl"] = json!(front.url());
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "ClusterPipedreamConnection",
        None,
        "inspected",
        json!({"spec": spec}),
    )
    .await;
    let ca = std::env::temp_dir().join(format!("pdso-egress-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, front.ca_pem()).unwrap();
    let inspected = env.cluster("inspected");
    let check_tls = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
            .args(["check", "--connection", &inspected])
            .args(extra)
            .env("KUBECONFIG", &env.kubeconfig)
            .env_remove("PIPEDREAM_CA_FILE")
            .output()
            .unwrap()
    };
    let refused = check_tls(&[]);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success() && err.contains("auth failed"),
        "{err}"
    );
    let ca_arg = format!("--pipedream-ca-file={}", ca.display());
    let trusted = check_tls(&[&ca_arg]);
    assert!(
        trusted.status.success(),
        "{}{}",
        String::from_utf8_lossy(&trusted.stdout),
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("auth          ok"));
    let _ = std::fs::remove_file(&ca);
}

/// Issue 27 (9): nothing waited for an install to be ready, and `version` showed no server side. `check --wait`
/// waits until the CRDs are served and the operator reports the connection Ready (without an operator it gives up
/// after `--timeout`, saying what it waited for); `version` shows the API server's and the operator Deployment's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_wait_waits_for_the_operator_and_version_shows_the_server_side() {
    // Cluster-wide, as the chart installs it: the operator reports on cluster connections.
    let options = support::Options {
        cluster_wide: true,
        ..Default::default()
    };
    let mut env = env_or_skip!(Env::start_with(
        vec![oauth_account("apn_Sys1", Some(3600), 600)],
        options
    ));
    let connection = env.cluster("default");
    let kubeconfig = env.kubeconfig.clone();
    let command = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"));
        c.args(args).env("KUBECONFIG", &kubeconfig);
        c
    };
    let wait = ["check", "--connection", &connection, "--wait"];
    let out = command(&wait).args(["--timeout", "2s"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "no operator yet: {err}");
    assert!(
        err.contains("not ready after 2s") && err.contains("is the operator running"),
        "{err}"
    );
    let waiting = command(&wait)
        .args(["--timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.start_operator();
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("ready         CRDs served") && text.contains("auth          ok"),
        "{text}"
    );
    // version: the client, the API server and the operator's Deployment (here an object only: no controller).
    env.apply(
        "apps/v1",
        "Deployment",
        Some("ops"),
        "pdso-pipedream-secrets-operator",
        json!({"metadata": {"labels": {"app.kubernetes.io/name": "pipedream-secrets-operator",
                "app.kubernetes.io/version": "9.9.9"}},
            "spec": {"selector": {"matchLabels": {"app": "pdso"}},
                "template": {"metadata": {"labels": {"app": "pdso"}},
                    "spec": {"containers": [{"name": "operator", "image": "ghcr.io/example/pdso:9.9.9"}]}}}}),
    )
    .await;
    let out = command(&["version"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "client        pipedream-secrets-operator {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("kubernetes    v1."), "{text}");
    assert!(
        text.contains(&format!(
            "operator      9.9.9 ({}/pdso-pipedream-secrets-operator, image ghcr.io/example/pdso:9.9.9)",
            env.ns("ops")
        )),
        "{text}"
    );
    let offline = std::process::Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
        .args(["version", "--client"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(offline.status.success());
}

/// `check` authenticates with a connection and reports an account's health and expiry, never its credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_health_and_expiry_without_secret_values() {
    let env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
            .arg("check")
            .args(args)
            .env("KUBECONFIG", &env.kubeconfig)
            .output()
            .unwrap()
    };
    let connection = env.cluster("default");
    let out = run(&["--connection", &connection, "--account", "apn_Sys1"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "auth          ok",
        "healthy       true",
        "expires at",
        "oauth_access_token",
        "values not shown",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    assert!(
        !text.contains("tok-apn_Sys1") && !text.contains(support::CLIENT_SECRET),
        "no secret values:\n{text}"
    );
    let missing = run(&["--connection", &connection, "--account", "apn_Nope1"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("account not found"));
    env.pd
        .rotate_client(support::CLIENT_ID, "someone-rotated-it");
    let refused = run(&["--connection", &connection]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("auth failed"));
}

/// Issue 27 (6): the objects the chart's Argo CD health checks are tested on
/// (`$CARGO_TARGET_TMPDIR/objects/<kind>-<state>.json`), as the API server serves them: a ConnectedAccount that
/// synced and one failing (AccountNotFound), the cluster connection both use (Ready) and one whose client secret is
/// missing (not Ready).
async fn record_objects(env: &Env) {
    const V: &str = "pipedream-secrets.io/v1alpha1";
    let ops = env.ns("ops");
    env.apply(
        V,
        "ClusterPipedreamConnection",
        None,
        "broken",
        json!({"spec": {"apiUrl": env.pd.url(), "auth": {"oauth": {"clientId": "oa_x", "projectId": "proj_x",
            "clientSecretRef": {"name": "absent", "key": "client_secret", "namespace": ops}}}}}),
    )
    .await;
    let broken = env
        .wait("the broken connection reported", 30, async || {
            let c = env
                .get(V, "ClusterPipedreamConnection", None, "broken")
                .await?;
            let ready = c["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "False");
            ready.then_some(c)
        })
        .await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("objects");
    std::fs::create_dir_all(&dir).unwrap();
    let objects = [
        ("connectedaccount-synced", env.ca("gh").await),
        ("connectedaccount-failing", env.ca("nope").await),
        (
            "clusterpipedreamconnection-ready",
            env.get(V, "ClusterPipedreamConnection", None, "default")
                .await,
        ),
        ("clusterpipedreamconnection-failing", Some(broken)),
    ];
    for (file, object) in objects {
        let object = object.unwrap_or_else(|| panic!("{file}: not found"));
        std::fs::write(
            dir.join(format!("{file}.json")),
            serde_json::to_string_pretty(&object).unwrap(),
        )
        .unwrap();
    }
}

/// Issue 11: a scrape during a whole-system run has every documented metric with its type and labels, and the
/// expiry timestamp equals the ConnectedAccount's `status.expiresAt`. The scrape is kept for the chart's dashboard
/// test (`$CARGO_TARGET_TMPDIR/metrics/scrape.txt`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_documented_names_types_and_labels() {
    // Connection metrics come from the connection status controller: a cluster-wide install.
    let options = support::Options {
        cluster_wide: true,
        ..Default::default()
    };
    let mut env = env_or_skip!(Env::start_with(
        vec![oauth_account("apn_Sys1", Some(3600), 600)],
        options
    ));
    let port = support::free_port();
    env.extra_args = vec![format!("--metrics-addr=127.0.0.1:{port}")];
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    // A failing account beside the synced one: the chart's alerts are tested on this scrape.
    create_ca(&env, "nope", json!({"accountId": "apn_Nope1"})).await;
    env.wait_synced("gh", 20).await;
    env.wait("AccountNotFound", 20, async || {
        (env.ready_reason("nope").await.as_deref() == Some("False/AccountNotFound")).then_some(())
    })
    .await;
    let scrape_now = async || {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let scrape = scrape_now().await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("scrape.txt"), &scrape).unwrap();
    record_objects(&env).await;
    // (name without prefix, type, label names of a sample) — the README's metric table.
    let documented: &[(&str, &str, &[&str])] = &[
        ("build_info", "info", &["version", "commit"]),
        ("leader", "gauge", &["shard"]),
        ("reconciles_in_flight", "gauge", &[]),
        ("reconcile_queue_depth", "gauge", &[]),
        (
            "reconcile_duration_seconds",
            "histogram",
            &["controller", "le"],
        ),
        ("reconciles_total", "counter", &["controller", "result"]),
        ("kubernetes_requests_total", "counter", &["method", "code"]),
        (
            "kubernetes_request_duration_seconds",
            "histogram",
            &["method", "le"],
        ),
        ("pipedream_retries_total", "counter", &["endpoint", "cause"]),
        ("syncs_total", "counter", &["result"]),
        (
            "pipedream_requests_total",
            "counter",
            &["endpoint", "status"],
        ),
        (
            "pipedream_request_duration_seconds",
            "histogram",
            &["endpoint", "le"],
        ),
        ("connection_ready", "gauge", &["kind", "namespace", "name"]),
        (
            "connection_token_expiration_timestamp_seconds",
            "gauge",
            &["kind", "namespace", "name"],
        ),
        (
            "connection_fetch_queue_depth",
            "gauge",
            &["kind", "namespace", "name"],
        ),
        (
            "connection_fetches_in_flight",
            "gauge",
            &["kind", "namespace", "name"],
        ),
        (
            "connectedaccount_credentials_expiration_timestamp_seconds",
            "gauge",
            &["namespace", "name", "connection_kind", "connection_name"],
        ),
        (
            "connectedaccount_next_sync_timestamp_seconds",
            "gauge",
            &["namespace", "name", "connection_kind", "connection_name"],
        ),
        (
            "connectedaccount_last_sync_timestamp_seconds",
            "gauge",
            &["namespace", "name", "connection_kind", "connection_name"],
        ),
        (
            "connectedaccount_ready_status",
            "gauge",
            &[
                "namespace",
                "name",
                "condition",
                "connection_kind",
                "connection_name",
            ],
        ),
        (
            "connectedaccount_ready_reason",
            "gauge",
            &[
                "namespace",
                "name",
                "reason",
                "connection_kind",
                "connection_name",
            ],
        ),
        (
            "connectedaccount_pods_at_risk",
            "gauge",
            &["namespace", "name", "connection_kind", "connection_name"],
        ),
        (
            "connectedaccount_syncs_total",
            "counter",
            &[
                "namespace",
                "name",
                "result",
                "connection_kind",
                "connection_name",
            ],
        ),
        ("credentials_cache_bytes", "gauge", &[]),
        ("credentials_cache_entries", "gauge", &[]),
    ];
    for (name, kind, labels) in documented {
        let full = format!("pipedream_secrets_{name}");
        let family = full
            .trim_end_matches("_total")
            .trim_end_matches("_info")
            .to_string();
        assert!(
            scrape.contains(&format!("# TYPE {family} {kind}\n")),
            "{full}: no `# TYPE {family} {kind}` in\n{scrape}"
        );
        let sample_prefix = if *kind == "histogram" {
            format!("{full}_bucket")
        } else {
            full.clone()
        };
        // Per-object series: the synced object's (it has resolved its connection).
        let samples: Vec<&str> = scrape
            .lines()
            .filter(|l| {
                l.starts_with(&format!("{sample_prefix}{{"))
                    || l.starts_with(&format!("{sample_prefix} "))
            })
            .collect();
        let sample = samples
            .iter()
            .find(|l| l.contains("name=\"gh\""))
            .or(samples.first())
            .unwrap_or_else(|| panic!("{full}: no sample in\n{scrape}"));
        let mut got: Vec<&str> = sample
            .split_once('{')
            .map(|(_, rest)| rest.split('}').next().unwrap_or(""))
            .unwrap_or("")
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .collect();
        got.sort();
        let mut want = labels.to_vec();
        want.sort();
        assert_eq!(got, want, "{full} labels: {sample}");
    }
    // Issue 19: what users expect beside our own families. Counters exist from 0 (an alert on `increase()` sees
    // the first failure), the Pipedream latency buckets reach past the 30 s request timeout, the operator's
    // requests to the API server are counted by method and code, and standard process metrics are there.
    let value_of = |prefix: &str| -> Option<f64> {
        scrape
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value_of("pipedream_secrets_syncs_total{result=\"AuthFailed\"}"),
        Some(0.0),
        "counters exist from 0"
    );
    assert!(
        value_of(
            "pipedream_secrets_reconciles_total{controller=\"connectedaccount\",result=\"success\"}"
        )
        .is_some_and(|v| v >= 2.0)
    );
    // Issue 27 (8): a sync counter per object, labelled with the connection it resolved (the failing one has
    // none yet: its first pass failed).
    let ns = env.ns("team-a");
    let connection = env.cluster("default");
    let per_object = |name: &str, result: &str| {
        value_of(&format!(
            "pipedream_secrets_connectedaccount_syncs_total{{namespace=\"{ns}\",name=\"{name}\",result=\"{result}\""
        ))
    };
    assert!(
        per_object("gh", "success").is_some_and(|v| v >= 1.0),
        "{scrape}"
    );
    assert_eq!(per_object("gh", "failure"), Some(0.0), "{scrape}");
    assert!(
        scrape.contains(&format!(
            "pipedream_secrets_connectedaccount_ready_reason{{namespace=\"{ns}\",name=\"gh\",reason=\"SecretSynced\",connection_kind=\"ClusterPipedreamConnection\",connection_name=\"{connection}\"}} 1"
        )),
        "{scrape}"
    );
    assert!(
        per_object("nope", "failure").is_some_and(|v| v >= 1.0),
        "{scrape}"
    );
    assert!(
        scrape.lines().any(|l| {
            l.starts_with("pipedream_secrets_pipedream_request_duration_seconds_bucket{")
                && l.split("le=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(|le| le.parse::<f64>().ok())
                    .is_some_and(|le| (30.0..f64::INFINITY).contains(&le))
        }),
        "a finite bucket at or past the 30 s timeout"
    );
    for (method, code) in [("GET", "200"), ("PATCH", "200")] {
        let series = format!(
            "pipedream_secrets_kubernetes_requests_total{{method=\"{method}\",code=\"{code}\"}}"
        );
        assert!(
            value_of(&series).is_some_and(|v| v >= 1.0),
            "{series} in\n{scrape}"
        );
    }
    let rss = value_of("process_resident_memory_bytes ").expect("process_resident_memory_bytes");
    assert!((1e6..2e9).contains(&rss), "rss {rss}");
    let fds = value_of("process_open_fds ").expect("process_open_fds");
    let max_fds = value_of("process_max_fds ").expect("process_max_fds");
    assert!(fds >= 3.0 && fds < max_fds, "{fds} of {max_fds}");
    let started = value_of("process_start_time_seconds ").expect("process_start_time_seconds");
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        (now - 600.0..=now + 5.0).contains(&started),
        "started {started}, now {now}"
    );
    assert!(value_of("process_cpu_seconds_total ").is_some_and(|v| v > 0.0));
    assert!(scrape.contains("# TYPE process_cpu_seconds counter\n"));
    let status_expiry: jiff::Timestamp = env.ca("gh").await.unwrap()["status"]["expiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let line = scrape
        .lines()
        .find(|l| {
            l.starts_with(
                "pipedream_secrets_connectedaccount_credentials_expiration_timestamp_seconds{",
            ) && l.contains("name=\"gh\"")
                && l.contains(&format!("namespace=\"{}\"", env.ns("team-a")))
        })
        .expect("expiry of team-a/gh");
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value as i64, status_expiry.as_second(), "{line}");
    // Issue 17 (1): a fixed series per object and condition status, 0/1, like cert-manager's ready_status.
    let team_a = env.ns("team-a");
    let value = |scrape: &str, prefix: &str| -> Option<f64> {
        scrape.lines().find_map(|l| {
            l.strip_prefix(prefix)?
                .split_once('}')?
                .1
                .trim()
                .parse()
                .ok()
        })
    };
    let ready = |scrape: &str, name: &str, condition: &str| {
        value(
            scrape,
            &format!(
                "pipedream_secrets_connectedaccount_ready_status{{namespace=\"{team_a}\",name=\"{name}\",condition=\"{condition}\""
            ),
        )
    };
    let reason = |scrape: &str, name: &str, reason: &str| {
        value(
            scrape,
            &format!(
                "pipedream_secrets_connectedaccount_ready_reason{{namespace=\"{team_a}\",name=\"{name}\",reason=\"{reason}\""
            ),
        ) == Some(1.0)
    };
    for (condition, want) in [("True", 1.0), ("False", 0.0), ("Unknown", 0.0)] {
        assert_eq!(
            ready(&scrape, "gh", condition),
            Some(want),
            "gh {condition}: {scrape}"
        );
    }
    for (condition, want) in [("True", 0.0), ("False", 1.0), ("Unknown", 0.0)] {
        assert_eq!(
            ready(&scrape, "nope", condition),
            Some(want),
            "nope {condition}: {scrape}"
        );
    }
    assert!(
        reason(&scrape, "gh", "SecretSynced") && reason(&scrape, "nope", "AccountNotFound"),
        "{scrape}"
    );
    // Right after a restart, before any pass (the failing account waits minutes for its retry), the series are
    // there: they come from the cached objects' status.
    env.stop_operator();
    env.start_operator();
    let restarted = env
        .wait("the restarted operator's series", 20, async || {
            let s = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            ready(&s, "nope", "False").is_some().then_some(s)
        })
        .await;
    assert_eq!(ready(&restarted, "nope", "False"), Some(1.0), "{restarted}");
    assert_eq!(ready(&restarted, "gh", "True"), Some(1.0), "{restarted}");
    assert!(reason(&restarted, "nope", "AccountNotFound"), "{restarted}");
    std::fs::write(dir.join("scrape-after-restart.txt"), &restarted).unwrap();
    assert!(scrape.contains("pipedream_secrets_leader 1"), "{scrape}");
    assert!(!scrape.contains("tok-apn_Sys1"), "no credential in metrics");
}

/// Issue 11: installed as `kubectl-pipedream` the binary is a kubectl plugin; `kubectl pipedream status` lists
/// ConnectedAccounts with Ready reason and expiry horizon, and never a secret value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_pipedream_status_lists_accounts_with_expiry_horizon() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    let dir = std::env::temp_dir().join(format!("pdso-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("kubectl-pipedream"));
    let run = |args: &[&str]| kubectl_with_plugin(&dir, &env.kubeconfig, args);
    let team_a = env.ns("team-a");
    let out = run(&["pipedream", "status", "-n", &team_a]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&team_a))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        &[team_a.as_str(), "gh", "apn_Sys1", "True", "SecretSynced"],
        "{text}"
    );
    assert!(
        cols[5] == "59m" || cols[5] == "1h",
        "expiry horizon of a fresh 1 h token: {text}"
    );
    assert!(!text.contains("tok-apn_Sys1"));
    let help = run(&["pipedream", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("kubectl pipedream"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--shard 0/2` and `--shard 1/2` split the ConnectedAccounts by UID: each account is fetched once, by its shard,
/// each shard leads on its own Lease, and a stopped shard's accounts wait for it while the other shard's go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_the_accounts_each_on_its_own_lease() {
    use pipedream_secrets_operator::shard::Shard;
    let n = 12;
    let ids: Vec<String> = (0..n).map(|i| format!("apn_Shard{i}")).collect();
    let accounts = ids
        .iter()
        .map(|id| oauth_account(id, Some(3600), 600))
        .collect();
    let mut env = env_or_skip!(Env::start(accounts));
    for s in ["0/2", "1/2"] {
        env.extra_args = vec!["--shard".into(), s.into()];
        env.start_operator();
    }
    let shard_pids = env.operator_pids();
    for (i, id) in ids.iter().enumerate() {
        create_ca(&env, &format!("ca-{i}"), json!({"accountId": id})).await;
    }
    for i in 0..n {
        env.wait_synced(&format!("ca-{i}"), 30).await;
    }
    assert_eq!(
        env.pd.count("connect_account"),
        n,
        "each account fetched once, by one shard"
    );
    let h0 = env
        .lease_holder("pipedream-secrets-operator-shard-0-of-2")
        .await
        .expect("shard 0 Lease");
    let h1 = env
        .lease_holder("pipedream-secrets-operator-shard-1-of-2")
        .await
        .expect("shard 1 Lease");
    assert!(h0.ends_with(&format!("-{}", shard_pids[0])), "{h0}");
    assert!(h1.ends_with(&format!("-{}", shard_pids[1])), "{h1}");
    // Which account is whose, from the UIDs the API server gave them.
    let one = Shard::new(1, 2).unwrap();
    let mut owned_by_1: Vec<usize> = Vec::new();
    for i in 0..n {
        let ca = env.ca(&format!("ca-{i}")).await.unwrap();
        if one.owns(ca["metadata"]["uid"].as_str().unwrap()) {
            owned_by_1.push(i);
        }
    }
    assert!(
        !owned_by_1.is_empty() && owned_by_1.len() < n,
        "both shards own some of {n} accounts: {owned_by_1:?}"
    );
    // Stop shard 1, then force-sync everything: only shard 0's accounts sync.
    env.kill_operator(shard_pids[1]);
    for (i, id) in ids.iter().enumerate() {
        force_sync(&env, &format!("ca-{i}"), json!({"accountId": id}), "one").await;
    }
    // Which of `indices` have handled the forced sync.
    let forced = async |env: &Env, indices: &[usize]| {
        let mut done = Vec::new();
        for i in indices {
            let ca = env.ca(&format!("ca-{i}")).await;
            if ca.is_some_and(|c| c["status"]["lastForceSync"] == "one") {
                done.push(*i);
            }
        }
        done
    };
    let owned_by_0: Vec<usize> = (0..n).filter(|i| !owned_by_1.contains(i)).collect();
    env.wait("shard 0's accounts to force-sync", 20, async || {
        (forced(&env, &owned_by_0).await.len() == owned_by_0.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        forced(&env, &owned_by_1).await,
        Vec::<usize>::new(),
        "these belong to the stopped shard 1"
    );
    // Shard 1 back: its accounts catch up.
    env.extra_args = vec!["--shard".into(), "1/2".into()];
    env.start_operator();
    env.wait("shard 1's accounts to force-sync", 30, async || {
        (forced(&env, &owned_by_1).await.len() == owned_by_1.len()).then_some(())
    })
    .await;
}

/// Issue 17 (6): answers stayed in memory for every account id ever tried, after the ConnectedAccount was deleted
/// or pointed elsewhere. Fat credentials (150 KB each) for 16 accounts: the answer cache holds them while they
/// are used, drops an account's answer when its only ConnectedAccount moves to another account, and returns to
/// empty once they are all deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_leave_memory_with_the_connected_accounts_that_used_them() {
    let n = 16;
    let fat = |id: &str| {
        let mut a = oauth_account(id, Some(3600), 600);
        a.credentials
            .insert("blob".into(), json!("b".repeat(150_000)));
        a
    };
    let mut accounts: Vec<_> = (0..n).map(|i| fat(&format!("apn_Mem{i}"))).collect();
    accounts.push(fat("apn_MemOther"));
    let mut env = env_or_skip!(Env::start(accounts));
    let port = support::free_port();
    env.extra_args = vec![format!("--metrics-addr=127.0.0.1:{port}")];
    env.start_operator();
    let gauge = async |name: &str| -> f64 {
        let scrape = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&format!("pipedream_secrets_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{scrape}"))
            .parse()
            .unwrap()
    };
    for i in 0..n {
        create_ca(
            &env,
            &format!("mem-{i}"),
            json!({"accountId": format!("apn_Mem{i}")}),
        )
        .await;
    }
    for i in 0..n {
        env.wait_synced(&format!("mem-{i}"), 60).await;
    }
    let (bytes, entries) = (
        gauge("credentials_cache_bytes").await,
        gauge("credentials_cache_entries").await,
    );
    let pid = env.operator_pids()[0];
    let rss_synced = env.operator_rss_kib(pid);
    assert_eq!(entries, n as f64);
    assert!(
        bytes >= (n * 150_000) as f64,
        "{bytes} bytes held for {n} fat answers"
    );
    // One ConnectedAccount moves to another account: its old answer goes, the new one comes.
    create_ca(&env, "mem-0", json!({"accountId": "apn_MemOther"})).await;
    env.wait("mem-0 to sync the other account", 30, async || {
        let ca = env.ca("mem-0").await?;
        (ca["status"]["observedGeneration"] == ca["metadata"]["generation"]
            && support::ready_of(&ca).as_deref() == Some("True/SecretSynced"))
        .then_some(())
    })
    .await;
    assert_eq!(
        gauge("credentials_cache_entries").await,
        n as f64,
        "apn_Mem0 replaced by apn_MemOther"
    );
    for i in 0..n {
        env.delete(
            "pipedream-secrets.io/v1alpha1",
            "ConnectedAccount",
            Some("team-a"),
            &format!("mem-{i}"),
        )
        .await;
    }
    env.wait("the answer cache to empty", 30, async || {
        (gauge("credentials_cache_entries").await == 0.0
            && gauge("credentials_cache_bytes").await == 0.0)
            .then_some(())
    })
    .await;
    eprintln!(
        "answer cache: {bytes} bytes for {n} accounts; RSS synced {rss_synced:?} KiB, after delete {:?} KiB",
        env.operator_rss_kib(pid)
    );
}

/// Issue 17 (8): changing the shard count ran old and new shards on different Leases side by side (a rollout
/// starts the new pods before the old ones stop), so two processes wrote the same accounts. The new shards hold
/// their Leases but wait, writing nothing, while the old leader's Lease is live; once it stops they take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_count_change_never_runs_two_writers() {
    // Twelve accounts: each new shard owns some (all in one shard: 2 in 4,096).
    let n = 12;
    let ids: Vec<String> = (0..n).map(|i| format!("apn_Resh{i}")).collect();
    let accounts = ids
        .iter()
        .map(|id| oauth_account(id, Some(3600), 600))
        .collect();
    let mut env = env_or_skip!(Env::start(accounts));
    let lease = ["--leader-election-duration-seconds=6".to_string()];
    env.extra_args = lease.to_vec();
    env.start_operator();
    let old = env.operator_pids()[0];
    for (i, id) in ids.iter().enumerate() {
        create_ca(&env, &format!("ca-{i}"), json!({"accountId": id})).await;
    }
    for i in 0..n {
        env.wait_synced(&format!("ca-{i}"), 30).await;
    }
    // The rollout to two shards: the new pods start while the old one still leads.
    let mut proxies = Vec::new();
    for s in ["0/2", "1/2"] {
        env.extra_args = [lease[0].clone(), "--shard".into(), s.into()].to_vec();
        proxies.push(env.start_operator_behind_own_proxy().await);
    }
    env.wait("both new shards to hold their Leases", 30, async || {
        for l in ["0-of-2", "1-of-2"] {
            env.lease_holder(&format!("pipedream-secrets-operator-shard-{l}"))
                .await?;
        }
        Some(())
    })
    .await;
    let force = async |env: &Env, token: &str| {
        for (i, id) in ids.iter().enumerate() {
            force_sync(env, &format!("ca-{i}"), json!({"accountId": id}), token).await;
        }
        env.wait(
            &format!("every account to handle force-sync {token}"),
            30,
            async || {
                for i in 0..n {
                    if env.ca(&format!("ca-{i}")).await?["status"]["lastForceSync"] != token {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    };
    force(&env, "during-rollout").await;
    // Only Lease traffic from the new shards while the old leader lives.
    let writes = |p: &pdso_testkit::faultproxy::FaultProxy| -> Vec<(String, String)> {
        p.counts()
            .into_keys()
            .filter(|(verb, resource)| {
                matches!(verb.as_str(), "create" | "update" | "patch" | "delete")
                    && resource != "leases"
            })
            .collect()
    };
    for p in &proxies {
        assert_eq!(
            writes(p),
            Vec::<(String, String)>::new(),
            "a waiting shard wrote"
        );
    }
    // The old pod stops (gracefully, releasing its Lease): the new shards take over.
    env.terminate_operator(old);
    env.wait("the new shards to start", 20, async || {
        (env.logs()
            .matches("the leaders of the other shard count have stopped")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    force(&env, "after-rollout").await;
    assert!(
        proxies.iter().all(|p| !writes(p).is_empty()),
        "both new shards write after the old one stopped"
    );
}

/// Issue 18, issue 25 (1): the operator keeps no names of Secrets it does not write; a first write is a create,
/// which the API server refuses when a Secret of that name exists. On the real API server: a Secret that existed
/// before the operator started, and one created while it runs, a moment before the ConnectedAccount naming it,
/// are both refused (SecretConflict) and left exactly as they were; a free name next to them is written. All three
/// name one account, so the free name's fetch, still fresh, serves the creates the API server refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_elses_secret_is_never_taken_over_by_a_first_write() {
    use base64::Engine;
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let foreign = |key: &str| json!({"data": {key: b64("theirs")}});
    env.apply("v1", "Secret", Some("team-a"), "before", foreign("A"))
        .await;
    env.start_operator();
    // Running, its caches synced.
    create_ca(&env, "free", json!({})).await;
    env.wait_synced("free", 20).await;
    env.apply("v1", "Secret", Some("team-a"), "during", foreign("B"))
        .await;
    let kept = |name: &'static str| {
        let env = &env;
        async move { env.secret("team-a", name).await.unwrap() }
    };
    let (before, during) = (kept("before").await, kept("during").await);
    for name in ["during", "before"] {
        create_ca(&env, name, json!({"target": {"name": name}})).await;
    }
    for name in ["before", "during"] {
        env.wait("SecretConflict", 20, async || {
            (env.ready_reason(name).await.as_deref() == Some("False/SecretConflict")).then_some(())
        })
        .await;
    }
    // Untouched: same resourceVersion, so no byte, label or field owner was added.
    assert_eq!(
        kept("before").await["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(
        kept("during").await["metadata"]["resourceVersion"],
        during["metadata"]["resourceVersion"]
    );
    assert_eq!(
        env.pd.count("connect_account"),
        1,
        "one fetch, the free name's, whose answer the refused creates reused"
    );
}

/// Issue 17 (7, 8): Merge force-applied into any Secret, taking keys Helm or another ConnectedAccount owned, and
/// across shards two ConnectedAccounts wrote the same key in turn. On the real field manager: a key another manager
/// owns is refused (SecretConflict naming it, value untouched), and of two ConnectedAccounts on different shards
/// merging the same key, the first keeps it and the Secret stops changing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_never_takes_a_key_another_manager_or_shard_owns() {
    use base64::Engine;
    use pipedream_secrets_operator::shard::Shard;
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    for s in ["0/2", "1/2"] {
        env.extra_args = vec!["--shard".into(), s.into()];
        env.start_operator();
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    env.apply(
        "v1",
        "Secret",
        Some("team-a"),
        "shared",
        json!({"data": {"HELM_KEY": b64("from-helm")}}),
    )
    .await;
    let merge = |target: &str, key: &str| {
        json!({"target": {"name": target, "creationPolicy": "Merge", "deletionPolicy": "Retain",
            "template": {"data": {key: "{{ credentials.oauth_access_token }}"}}}})
    };
    create_ca(&env, "takes-helm", merge("shared", "HELM_KEY")).await;
    create_ca(&env, "first", merge("shared", "TOKEN")).await;
    env.wait_synced("first", 20).await;
    env.wait("SecretConflict for the Helm key", 20, async || {
        (env.ready_reason("takes-helm").await.as_deref() == Some("False/SecretConflict"))
            .then_some(())
    })
    .await;
    let message = env.ca("takes-helm").await.unwrap()["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("HELM_KEY") && message.contains("system-test"),
        "{message}"
    );
    // A second writer of TOKEN on the other shard from `first`.
    let shard_of = |uid: &str| Shard::new(0, 2).unwrap().owns(uid);
    let first_uid = env.ca("first").await.unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut second = None;
    for k in 0..20 {
        let name = format!("second-{k}");
        // First on a Secret of its own, to learn its UID (so its shard) before it touches `shared`.
        create_ca(
            &env,
            &name,
            json!({"target": {"name": format!("scratch-{k}")}}),
        )
        .await;
        let uid = env.ca(&name).await.unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        if shard_of(&uid) != shard_of(&first_uid) {
            second = Some(name);
            break;
        }
        env.delete(
            "pipedream-secrets.io/v1alpha1",
            "ConnectedAccount",
            Some("team-a"),
            &name,
        )
        .await;
    }
    let second = second.expect("a ConnectedAccount on the other shard within 20 tries");
    create_ca(&env, &second, merge("shared", "TOKEN")).await;
    env.wait("SecretConflict for the second writer", 20, async || {
        (env.ready_reason(&second).await.as_deref() == Some("False/SecretConflict")).then_some(())
    })
    .await;
    let s = env.secret("team-a", "shared").await.unwrap();
    assert_eq!(secret_value(&s, "HELM_KEY").as_deref(), Some("from-helm"));
    assert_eq!(
        secret_value(&s, "TOKEN").as_deref(),
        Some("tok-apn_Sys1-g1")
    );
    // No write/repair loop between the shards: the Secret stays as it is.
    let rv = s["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = env.secret("team-a", "shared").await.unwrap();
    assert_eq!(
        later["metadata"]["resourceVersion"], rv,
        "the Secret stopped changing"
    );
    assert!(
        env.ready_reason("first")
            .await
            .unwrap()
            .starts_with("True/")
    );
    merge_never_takes_keys_written_through_string_data_or_before_managed_fields(&env).await;
}

/// Issue 25 (5): Merge judged key owners from `f:data` in the Secret's managedFields, then force-applied. A key an
/// apply manager wrote through `stringData` is recorded under `f:stringData` and was taken; so was every key of a
/// Secret without managedFields (created before server-side apply, or with them cleared). Now the API server
/// decides (a non-forced apply with the ConnectedAccount's own field manager): keys `kubectl create`/`apply` wrote
/// (Update managers) and a Secret without managedFields (the API server names its fields' owner
/// `before-first-apply`) conflict; `stringData` keys of an apply manager are refused from the Secret as read, the
/// apply carrying that resourceVersion. Refused Secrets stay exactly as they were.
async fn merge_never_takes_keys_written_through_string_data_or_before_managed_fields(env: &Env) {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams, PostParams};
    let ns = env.ns("team-a");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(env.client.clone(), &ns);
    let secret = |name: &str, body: serde_json::Value| -> Secret {
        let mut v = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}});
        v.as_object_mut()
            .unwrap()
            .extend(body.as_object().cloned().unwrap());
        serde_json::from_value(v).unwrap()
    };
    // An apply manager (Helm 4, `kubectl apply --server-side`) writing stringData.
    secrets
        .patch(
            "string-data",
            &PatchParams::apply("helm"),
            &Patch::Apply(secret(
                "string-data",
                json!({"stringData": {"SSA_KEY": "from-helm"}}),
            )),
        )
        .await
        .unwrap();
    // `kubectl create -f` of a Secret with stringData, then a `kubectl apply` (client-side) adding a key.
    let create = PostParams {
        field_manager: Some("kubectl-create".into()),
        ..Default::default()
    };
    secrets
        .create(
            &create,
            &secret(
                "from-kubectl",
                json!({"stringData": {"CREATED": "by-kubectl"}}),
            ),
        )
        .await
        .unwrap();
    secrets
        .patch(
            "from-kubectl",
            &PatchParams {
                field_manager: Some("kubectl-client-side-apply".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"stringData": {"PATCHED": "by-kubectl"}})),
        )
        .await
        .unwrap();
    // A Secret without managedFields.
    secrets
        .create(
            &PostParams::default(),
            &secret("unmanaged", json!({"stringData": {"OLD_KEY": "old"}})),
        )
        .await
        .unwrap();
    let cleared = secrets
        .patch(
            "unmanaged",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"managedFields": [{}]}})),
        )
        .await
        .unwrap();
    assert!(
        cleared.metadata.managed_fields.is_none(),
        "{:?}",
        cleared.metadata
    );
    let before = |name: &'static str| async move { env.secret("team-a", name).await.unwrap() };
    let (string_data, from_kubectl) = (before("string-data").await, before("from-kubectl").await);
    let merge = |target: &str, key: &str| {
        json!({"target": {"name": target, "creationPolicy": "Merge", "deletionPolicy": "Retain",
            "template": {"data": {key: "{{ credentials.oauth_access_token }}"}}}})
    };
    // (ConnectedAccount, Secret, key, the manager its conflict must name, or None: it merges)
    let cases = [
        ("takes-ssa-string", "string-data", "SSA_KEY", Some("helm")),
        (
            "takes-created",
            "from-kubectl",
            "CREATED",
            Some("kubectl-create"),
        ),
        (
            "takes-patched",
            "from-kubectl",
            "PATCHED",
            Some("kubectl-client-side-apply"),
        ),
        (
            "takes-unmanaged",
            "unmanaged",
            "OLD_KEY",
            Some("before-first-apply"),
        ),
        ("adds-to-unmanaged", "unmanaged", "NEW_KEY", None),
    ];
    for (name, target, key, _) in cases {
        create_ca(env, name, merge(target, key)).await;
    }
    let outcomes = env
        .wait("every Merge writer to report", 30, async || {
            let mut out = Vec::new();
            for (name, ..) in cases {
                let ca = env.ca(name).await?;
                let ready = support::ready_of(&ca)?;
                let message = ca["status"]["conditions"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                out.push((name, ready, message));
            }
            Some(out)
        })
        .await;
    let mut wrong = Vec::new();
    for ((name, _, key, manager), (_, ready, message)) in cases.iter().zip(&outcomes) {
        let ok = match manager {
            Some(m) => {
                ready == "False/SecretConflict" && message.contains(key) && message.contains(m)
            }
            None => ready == "True/SecretSynced",
        };
        if !ok {
            wrong.push(format!("{name}: {ready}: {message}"));
        }
    }
    let s = |name: &'static str| async move { env.secret("team-a", name).await.unwrap() };
    let (unmanaged, string_now, kubectl_now) = (
        s("unmanaged").await,
        s("string-data").await,
        s("from-kubectl").await,
    );
    let values = [
        (&string_now, "SSA_KEY", "from-helm"),
        (&kubectl_now, "CREATED", "by-kubectl"),
        (&kubectl_now, "PATCHED", "by-kubectl"),
        (&unmanaged, "OLD_KEY", "old"),
        (&unmanaged, "NEW_KEY", "tok-apn_Sys1-g1"),
    ];
    for (secret, key, want) in values {
        let got = secret_value(secret, key);
        if got.as_deref() != Some(want) {
            wrong.push(format!("{key}: {got:?}, not {want:?}"));
        }
    }
    for (was, now) in [(&string_data, &string_now), (&from_kubectl, &kubectl_now)] {
        if was["metadata"]["resourceVersion"] != now["metadata"]["resourceVersion"] {
            wrong.push(format!(
                "{} changed: {}",
                now["metadata"]["name"], now["metadata"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // A key only a ConnectedAccount that no longer exists owns is free: the API server's conflict names its
    // field manager, and the apply is forced over that alone (guarded by the version read).
    let mut gone = merge("unmanaged", "GONE_KEY");
    gone["target"]["template"]["data"]["GONE_KEY"] =
        json!("gone-{{ credentials.oauth_access_token }}");
    create_ca(env, "gone", gone).await;
    env.wait_synced("gone", 20).await;
    env.delete(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        "gone",
    )
    .await;
    env.wait("the ConnectedAccount gone", 20, async || {
        env.ca("gone").await.is_none().then_some(())
    })
    .await;
    create_ca(env, "after-gone", merge("unmanaged", "GONE_KEY")).await;
    env.wait_synced("after-gone", 20).await;
    let s = env.secret("team-a", "unmanaged").await.unwrap();
    assert_eq!(
        secret_value(&s, "GONE_KEY").as_deref(),
        Some("tok-apn_Sys1-g1")
    );
    assert!(
        env.logs()
            .contains("keys of ConnectedAccounts that no longer exist are taken over"),
        "taken over after the API server's conflict"
    );
}

/// Issue 17 (5): one namespace floods a shared ClusterPipedreamConnection (limited to one request per second) with
/// ConnectedAccounts naming accounts that do not exist, and edits another one's account id in a loop. The other
/// namespace's Secrets must keep refreshing before every expiry: due refreshes of tokens about to expire go first,
/// each namespace gets a fair share of the connection, and a failed object's spec edits are debounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_namespace_cannot_starve_another_on_a_shared_cluster_connection() {
    let victims = ["apn_Vic1", "apn_Vic2"];
    let mut env = env_or_skip!(Env::start(
        victims
            .iter()
            .map(|id| oauth_account(id, Some(20), 8))
            .collect(),
    ));
    let (team_a, team_b) = (env.ns("team-a"), env.ns("team-b"));
    env.apply_default_connection(json!({
        "rateLimit": {"requestsPerSecond": 1, "burst": 1},
        "access": [{"namespaces": [team_a, team_b]}]}))
        .await;
    env.start_operator();
    for (i, id) in victims.iter().enumerate() {
        create_ca(&env, &format!("v{i}"), json!({"accountId": id})).await;
    }
    for i in 0..victims.len() {
        env.wait_synced(&format!("v{i}"), 30).await;
    }
    let hostile = |name: String, id: String| {
        let env = &env;
        async move {
            env.apply(
                "pipedream-secrets.io/v1alpha1",
                "ConnectedAccount",
                Some("team-b"),
                &name,
                json!({"spec": {"accountId": id}}),
            )
            .await;
        }
    };
    for i in 0..40 {
        hostile(format!("h{i}"), format!("apn_Bogus{i}")).await;
    }
    let started = std::time::Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    let mut edits = 0;
    while started.elapsed() < Duration::from_secs(50) {
        for i in 0..victims.len() {
            let s = env.secret("team-a", &format!("v{i}")).await.unwrap();
            let exp = secret_expiry(&s).unwrap();
            assert!(
                exp > jiff::Timestamp::now(),
                "after {:?} v{i} holds a token that expired at {exp}",
                started.elapsed()
            );
            seen.insert((i, secret_value(&s, "oauth_access_token").unwrap()));
        }
        hostile("churn".into(), format!("apn_Churn{edits}")).await;
        edits += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Pipedream refreshes each victim token every 12 s: 50 s show at least three per account.
    for i in 0..victims.len() {
        let n = seen.iter().filter(|(v, _)| *v == i).count();
        assert!(n >= 3, "v{i} saw {n} tokens: {seen:?}");
    }
    // The attacker is served too, at its share: its objects report what is wrong with them.
    let b = env.ns("team-b");
    let mut answered = 0;
    for i in 0..40 {
        if env.ready_in(&b, &format!("h{i}")).await.as_deref() == Some("False/AccountNotFound") {
            answered += 1;
        }
    }
    assert!(
        answered >= 10,
        "only {answered} of the attacker's objects were answered"
    );
    // A failed object's spec edits are debounced: ~200 edits in 50 s cost a handful of Pipedream calls.
    let churn_calls = env
        .pd
        .requests()
        .iter()
        .filter(|r| {
            r.account
                .as_deref()
                .is_some_and(|a| a.starts_with("apn_Churn"))
        })
        .count();
    assert!(
        churn_calls <= 10,
        "{churn_calls} Pipedream calls for {edits} edits of one failing object"
    );
}

/// Issue 19: the CLI as users of cmctl expect it, run as `kubectl pipedream …`: `--context` picks the cluster and
/// its namespace is the default, `sync` makes the operator fetch again, `status NAME -o json|yaml` shows the
/// conditions, Events, the Secret's keys (never values) and the connection; `version` and `completion` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_pipedream_sync_and_status_name_work_with_a_named_context() {
    let mut env = env_or_skip!(Env::start(vec![oauth_account("apn_Sys1", Some(3600), 600)]));
    env.start_operator();
    create_ca(&env, "gh", json!({})).await;
    env.wait_synced("gh", 20).await;
    let team_a = env.ns("team-a");
    // Two contexts: the current one points nowhere; `real` is the cluster, with team-a as its namespace.
    let admin = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let mut kc = kube::config::Kubeconfig::from_yaml(&admin).unwrap();
    let real = kc.contexts[0].clone();
    let mut real_ctx = real.context.clone().unwrap();
    real_ctx.namespace = Some(team_a.clone());
    let mut broken_cluster = kc.clusters[0].clone();
    broken_cluster.name = "nowhere".into();
    broken_cluster.cluster.as_mut().unwrap().server = Some("https://127.0.0.1:1".into());
    let mut broken_ctx = real_ctx.clone();
    broken_ctx.cluster = "nowhere".into();
    kc.clusters.push(broken_cluster);
    let named = |name: &str, ctx| {
        let mut c = real.clone();
        c.name = name.into();
        c.context = Some(ctx);
        c
    };
    kc.contexts = vec![named("real", real_ctx), named("broken", broken_ctx)];
    kc.current_context = Some("broken".into());
    let dir = std::env::temp_dir().join(format!("pdso-cli-{}-{}", std::process::id(), env.ns("x")));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, serde_json::to_string(&kc).unwrap()).unwrap();
    let run = |args: &[&str]| {
        let out = kubectl_with_plugin(&dir, &kubeconfig, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, _) = run(&["pipedream", "status"]);
    assert!(!ok, "the current context points nowhere");
    let (ok, text, err) = run(&["pipedream", "status", "--context", "real"]);
    assert!(ok, "{text}{err}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{team_a} ")) && l.contains(" gh ")),
        "the context's namespace is the default: {text}"
    );
    // sync: one more fetch, acted upon (status.lastForceSync is the value set).
    let before = env.pd.count("connect_account");
    let (ok, text, err) = run(&["pipedream", "sync", "gh", "--context", "real"]);
    assert!(ok && text.contains("sync requested"), "{text}{err}");
    env.wait("the forced fetch", 20, async || {
        let ca = env.ca("gh").await?;
        let value = ca["metadata"]["annotations"]["pipedream-secrets.io/force-sync"]
            .as_str()?
            .to_string();
        (ca["status"]["lastForceSync"].as_str() == Some(value.as_str())).then_some(())
    })
    .await;
    assert_eq!(env.pd.count("connect_account"), before + 1);
    let (ok, _, err) = run(&["pipedream", "sync", "--context", "real"]);
    assert!(!ok && err.contains("--all"), "nothing named: {err}");
    // status NAME.
    let (ok, text, err) = run(&[
        "pipedream",
        "status",
        "gh",
        "--context",
        "real",
        "-o",
        "json",
    ]);
    assert!(ok, "{text}{err}");
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["reason"], "SecretSynced", "{d}");
    assert_eq!(
        d["secretState"]["keys"],
        json!(["oauth_access_token", "oauth_refresh_token"]),
        "{d}"
    );
    assert!(d["secretState"]["expiresAt"].is_string(), "{d}");
    assert_eq!(
        d["connection"]["name"],
        format!("ClusterPipedreamConnection/{}", env.cluster("default")),
        "{d}"
    );
    // A namespace-scoped install keeps no status on cluster connections: Unknown, not made up.
    assert_eq!(d["connection"]["ready"], "Unknown", "{d}");
    assert!(
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "SecretCreated"),
        "{d}"
    );
    let (ok, yaml, err) = run(&[
        "pipedream",
        "status",
        "gh",
        "--context",
        "real",
        "-o",
        "yaml",
    ]);
    assert!(
        ok && yaml.contains("reason: SecretSynced") && yaml.contains("- oauth_access_token"),
        "{yaml}{err}"
    );
    let (ok, described, err) = run(&["pipedream", "status", "gh", "--context", "real"]);
    assert!(
        ok && described.contains("Events:") && described.contains("SecretCreated"),
        "{described}{err}"
    );
    for out in [&text, &yaml, &described] {
        assert!(
            !out.contains("tok-apn_Sys1") && !out.contains("refresh\n"),
            "{out}"
        );
    }
    let (ok, version, _) = run(&["pipedream", "version", "--client"]);
    assert!(
        ok && version.contains(env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let (ok, completion, _) = run(&["pipedream", "completion", "bash"]);
    assert!(
        ok && completion.contains("complete") && completion.contains("sync"),
        "{completion}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
