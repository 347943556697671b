//! A hostile tenant against the real operator binary. Team A (the victim) and team B (the attacker) each have a
//! `PipedreamConnection` named `pd`. A's points at the fake Pipedream; B's at a server B controls, which answers
//! with giant and endless bodies, absurd expiries, 29-second tarpits, and A's account id with B's own token. B
//! also tries a host outside the allowed list and templates built to exhaust memory and time.
//!
//! A's Secrets must keep refreshing before every expiry and never hold B's data; the operator must never restart
//! and its memory must stay bounded; B's objects must report what is wrong with them.

mod support;

use std::time::Duration;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pdso_testkit::pipedream::FakeAccount;
use serde_json::{Value, json};
use support::{Env, secret_value};

fn victim_account(id: &str) -> FakeAccount {
    FakeAccount {
        id: id.into(),
        project_id: "proj_sys".into(),
        credentials: json!({"oauth_access_token": format!("tok-{id}")})
            .as_object()
            .unwrap()
            .clone(),
        lifetime_secs: Some(20),
        refresh_lead_secs: 8,
        ..Default::default()
    }
}

/// B's server. Account ids pick the attack.
async fn hostile(Path(id): Path<String>) -> Response {
    let far = "9000-01-01T00:00:00Z";
    let body = |creds: Value, expires: &str| {
        axum::Json(json!({"data": {"id": id, "healthy": true, "credentials": creds, "expires_at": expires}}))
            .into_response()
    };
    match id.as_str() {
        "apn_Giant1" => (
            [("content-type", "application/json")],
            format!(
                r#"{{"data": {{"id": "{id}", "credentials": {{"k": "{}"}}}}}}"#,
                "x".repeat(3 << 20)
            ),
        )
            .into_response(),
        "apn_Endless1" => {
            let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
            let s = futures::stream::repeat_with(move || {
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            axum::body::Body::from_stream(s).into_response()
        }
        "apn_Limited1" => (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1e20")],
            "slow down",
        )
            .into_response(),
        "apn_Huge1" => body(json!({"k": "v"}), far),
        "apn_Absurd1" => body(json!({"k": "v"}), "9999-12-31T23:59:59Z"),
        "apn_Wide1" => {
            let creds: serde_json::Map<String, Value> = (0..2000)
                .map(|i| (format!("k{i}"), json!("y".repeat(200))))
                .collect();
            body(Value::Object(creds), "2099-01-01T00:00:00Z")
        }
        "apn_Vic1" | "apn_Vic2" => body(json!({"oauth_access_token": "EVIL"}), far),
        tarpit if tarpit.starts_with("apn_Tarpit") => {
            tokio::time::sleep(Duration::from_secs(29)).await;
            body(json!({"k": "late"}), far)
        }
        _ => body(json!({"k": "v"}), "2099-01-01T00:00:00Z"),
    }
}

async fn ca(env: &Env, ns: &str, name: &str, spec: Value) {
    let mut s = json!({"accountId": "apn_Vic1", "connectionRef": {"kind": "PipedreamConnection", "name": "pd"},
                       "refresh": {"beforeExpiry": "5s"}});
    s.as_object_mut()
        .unwrap()
        .extend(spec.as_object().cloned().unwrap_or_default());
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some(ns),
        name,
        json!({"spec": s}),
    )
    .await;
}

async fn connection(env: &Env, ns: &str, name: &str, url: &str) {
    env.apply(
        "v1",
        "Secret",
        Some(ns),
        "pd-key",
        json!({"stringData": {"api_key": format!("key-{ns}")}}),
    )
    .await;
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "PipedreamConnection",
        Some(ns),
        name,
        json!({"spec": {"apiUrl": url, "auth": {"apiKey": {"secretRef": {"name": "pd-key", "key": "api_key"}}}}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_cannot_read_poison_starve_or_crash_the_operator() {
    // Alone in its binary: a cluster-wide operator on the shared control plane, as the chart installs it.
    let options = support::Options {
        cluster_wide: true,
        alone_in_binary: true,
        ..Default::default()
    };
    let victims = vec![victim_account("apn_Vic1"), victim_account("apn_Vic2")];
    let mut env = env_or_skip!(Env::start_with(victims, options));
    env.pd.add_api_key("key-team-a");
    let app = axum::Router::new()
        .route("/v1/accounts/{id}", get(hostile))
        .fallback(|| async { axum::Json(json!({"error": "record not found"})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A second server B may not reach: only 127.0.0.1 is allowed, not "localhost".
    let ssrf_hits = hits.clone();
    let ssrf = axum::Router::new().fallback(move || {
        ssrf_hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { "internal" }
    });
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = l2.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l2, ssrf).await });

    connection(&env, "team-a", "pd", &env.pd.url()).await;
    connection(&env, "team-b", "pd", &format!("http://{evil}")).await;
    // Each attack that slows its own connection (tarpits, a 429 that pauses it) gets its own.
    connection(&env, "team-b", "tarpit", &format!("http://{evil}")).await;
    connection(&env, "team-b", "limited", &format!("http://{evil}")).await;
    connection(
        &env,
        "team-b",
        "ssrf",
        &format!("http://localhost:{}", internal.port()),
    )
    .await;
    env.extra_args = vec!["--allowed-api-hosts".into(), "127.0.0.1".into()];
    env.start_operator();
    let pid = env.operator_pids()[0];

    // The attack, all at once.
    for id in [
        "apn_Giant1",
        "apn_Endless1",
        "apn_Huge1",
        "apn_Absurd1",
        "apn_Vic1",
        "apn_Vic2",
    ] {
        ca(
            &env,
            "team-b",
            &id.to_lowercase().replace('_', "-"),
            json!({"accountId": id}),
        )
        .await;
    }
    ca(
        &env,
        "team-b",
        "apn-limited1",
        json!({"accountId": "apn_Limited1",
        "connectionRef": {"kind": "PipedreamConnection", "name": "limited"}}),
    )
    .await;
    for i in 0..8 {
        ca(
            &env,
            "team-b",
            &format!("tarpit-{i}"),
            json!({"accountId": format!("apn_Tarpit{i}"),
            "connectionRef": {"kind": "PipedreamConnection", "name": "tarpit"}}),
        )
        .await;
    }
    ca(
        &env,
        "team-b",
        "ssrf",
        json!({"connectionRef": {"kind": "PipedreamConnection", "name": "ssrf"}}),
    )
    .await;
    ca(
        &env,
        "team-b",
        "bomb",
        json!({"accountId": "apn_Other1",
        "target": {"template": {"data": {"K": "{{ 'x' * 100000000 }}"}}}}),
    )
    .await;
    ca(&env, "team-b", "loop", json!({"accountId": "apn_Wide1",
        "target": {"template": {"data": {"K": "{% for a in credentials %}{% for b in credentials %}{{ credentials[a] ~ credentials[b] }}{% endfor %}{% endfor %}"}}}}))
    .await;
    // The victim.
    ca(&env, "team-a", "vic1", json!({"accountId": "apn_Vic1"})).await;
    ca(&env, "team-a", "vic2", json!({"accountId": "apn_Vic2"})).await;

    let started = std::time::Instant::now();
    let mut tokens = std::collections::BTreeSet::new();
    let mut peak_rss = 0;
    while started.elapsed() < Duration::from_secs(45) {
        for name in ["vic1", "vic2"] {
            let Some(s) = env.secret("team-a", name).await else {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{name} not synced in 15 s"
                );
                continue;
            };
            let token = secret_value(&s, "oauth_access_token").unwrap();
            assert!(
                !token.contains("EVIL"),
                "team B's data reached team A's Secret {name}"
            );
            let exp = support::secret_expiry(&s).unwrap();
            assert!(
                exp > jiff::Timestamp::now(),
                "{name} holds a token that expired at {exp}"
            );
            tokens.insert(token);
        }
        peak_rss = peak_rss.max(env.operator_rss_kib(pid).unwrap_or(0));
        assert!(
            env.operators_alive(),
            "the operator exited:\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // 20 s tokens refreshed 8 s early, for 45 s: each victim account went through several tokens.
    assert!(tokens.len() >= 6, "victim tokens seen: {tokens:?}");
    assert_eq!(env.logs().matches("\"starting\"").count(), 1, "no restart");
    // A 3 MiB and an endless body were never held whole; a debug build stays well below this.
    eprintln!("operator peak RSS under attack: {peak_rss} KiB");
    assert!(peak_rss < 96 * 1024, "peak RSS {peak_rss} KiB");

    // B's objects say what is wrong, and B's own answers went only to B's Secrets.
    let reason = async |n: &str| env.ready_in("team-b", n).await.unwrap_or_default();
    assert_eq!(reason("apn-giant1").await, "False/UpstreamError");
    assert_eq!(reason("apn-endless1").await, "False/UpstreamError");
    assert_eq!(reason("apn-limited1").await, "False/RateLimited");
    assert_eq!(reason("apn-huge1").await, "True/SecretSynced");
    // Year 9000 is not believed (issue 25): no expiry, checked every refresh.interval, and logged.
    let huge = env.ca_in("team-b", "apn-huge1").await.unwrap();
    assert!(huge["status"]["expiresAt"].is_null(), "{huge}");
    assert!(
        env.logs()
            .contains("is more than a year ahead and is not believed")
    );
    assert_eq!(reason("apn-absurd1").await, "False/UpstreamError");
    assert_eq!(reason("ssrf").await, "False/ConnectionNotReady");
    assert_eq!(reason("bomb").await, "False/InvalidSpec");
    assert_eq!(reason("loop").await, "False/InvalidSpec");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the disallowed host was never called"
    );
    let b_vic = env
        .secret("team-b", "apn-vic1")
        .await
        .expect("B's own Secret");
    assert_eq!(
        secret_value(&b_vic, "oauth_access_token").as_deref(),
        Some("EVIL")
    );
    let conn = env
        .get(
            "pipedream-secrets.io/v1alpha1",
            "PipedreamConnection",
            Some("team-b"),
            "ssrf",
        )
        .await
        .unwrap();
    assert_eq!(conn["status"]["conditions"][0]["reason"], "InvalidSpec");
    let logs = env.logs();
    assert!(
        !logs.contains("tok-apn_Vic") && !logs.contains("EVIL"),
        "no credential in logs"
    );
}
