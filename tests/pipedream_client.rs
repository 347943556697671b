//! The Pipedream client against a local HTTP server: endpoints, envelopes, failures, token lifecycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use pipedream_secrets_operator::crd::{CredentialsPath, PipedreamEnvironment, RateLimit};
use pipedream_secrets_operator::pipedream::{
    ApiMode, AuthMaterial, ClientSettings, Credentials, CredentialsError, MaterialLoader,
    PipedreamClient, PipedreamError, SecretString, http_client, parse_account, retry_after,
};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn account_body(token: &str) -> serde_json::Value {
    json!({
        "id": "apn_Fake0001", "name": null, "external_id": "tenant-42", "healthy": true, "dead": null,
        "app": {"id": "oa_Fake001", "name_slug": "github", "name": "GitHub", "auth_type": "oauth", "unknown_app_field": 1},
        "credentials": {"oauth_access_token": token, "oauth_uid": 12345, "extra": {"k": "v"}, "oauth_refresh_token": null},
        "expires_at": "2024-08-01T05:04:03.000Z", "error": null, "last_refreshed_at": null,
        "next_refresh_at": "2024-08-01T04:47:33.000Z", "project_id": 279440
    })
}

struct Loader {
    calls: Arc<AtomicUsize>,
    secrets: Vec<&'static str>,
}

fn oauth_loader(secrets: Vec<&'static str>) -> (MaterialLoader, Arc<AtomicUsize>) {
    let l = Arc::new(Loader {
        calls: Arc::new(AtomicUsize::new(0)),
        secrets,
    });
    let calls = l.calls.clone();
    let loader: MaterialLoader = Arc::new(move || {
        let l = l.clone();
        async move {
            let n = l.calls.fetch_add(1, Ordering::SeqCst);
            let s = l.secrets[n.min(l.secrets.len() - 1)];
            Ok(AuthMaterial::OAuth {
                client_id: "cid".into(),
                client_secret: SecretString::new(s),
            })
        }
        .boxed()
    });
    (loader, calls)
}

fn key_loader() -> MaterialLoader {
    Arc::new(|| async { Ok(AuthMaterial::ApiKey(SecretString::new("pd_key_1"))) }.boxed())
}

fn connect(server: &MockServer, loader: MaterialLoader, timeout: Duration) -> PipedreamClient {
    PipedreamClient::new(
        http_client(timeout, &[]).unwrap(),
        ClientSettings {
            api_url: format!("{}/", server.uri()),
            mode: ApiMode::Connect {
                project_id: "proj_P1".into(),
                environment: PipedreamEnvironment::Development,
            },
            rate_limit: RateLimit {
                requests_per_second: 1000,
                burst: 1000,
            },
            rate_share: 1,
        },
        loader,
        None,
    )
}

async fn mount_token(server: &MockServer, secret: &str, token: &str, expires_in: u64) {
    Mock::given(method("POST"))
        .and(path("/v1/oauth/token"))
        .and(body_json(json!({"grant_type": "client_credentials", "client_id": "cid", "client_secret": secret})))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in, "created_at": 1700000000}),
        ))
        .mount(server)
        .await;
}

fn count(reqs: &[Request], p: &str) -> usize {
    reqs.iter().filter(|r| r.url.path() == p).count()
}

#[tokio::test]
async fn connect_retrieve_sends_token_environment_and_include_credentials_and_caches_the_token() {
    let server = MockServer::start().await;
    mount_token(&server, "s1", "tok-1", 3600).await;
    Mock::given(method("GET"))
        .and(path("/v1/connect/proj_P1/accounts/apn_Fake0001"))
        .and(query_param("include_credentials", "true"))
        .and(header("authorization", "Bearer tok-1"))
        .and(header("x-pd-environment", "development"))
        .respond_with(ResponseTemplate::new(200).set_body_json(account_body("acc-tok")))
        .mount(&server)
        .await;
    let (loader, loads) = oauth_loader(vec!["s1"]);
    let c = connect(&server, loader, Duration::from_secs(5));
    let a = c.fetch_account("apn_Fake0001").await.unwrap();
    let b = c.fetch_account("apn_Fake0001").await.unwrap();
    assert_eq!(a.account.id, "apn_Fake0001");
    assert_eq!(a.account.app_slug(), Some("github"));
    assert_eq!(a.account.dead, None);
    let creds = a.account.credentials.as_ref().unwrap().expose();
    assert_eq!(creds["oauth_access_token"], "acc-tok");
    assert_eq!(creds["oauth_uid"], 12345);
    assert_eq!(
        b.account.expires_at.as_deref(),
        Some("2024-08-01T05:04:03.000Z")
    );
    assert!(
        a.server_time.is_some(),
        "Date header is captured for skew correction"
    );
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(
        count(&reqs, "/v1/oauth/token"),
        1,
        "one token for both calls"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn data_envelope_is_accepted_on_connect_too() {
    let server = MockServer::start().await;
    mount_token(&server, "s1", "tok-1", 3600).await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"data": account_body("enveloped")})),
        )
        .mount(&server)
        .await;
    let c = connect(&server, oauth_loader(vec!["s1"]).0, Duration::from_secs(5));
    let a = c.fetch_account("apn_Fake0001").await.unwrap();
    assert_eq!(
        a.account.credentials.unwrap().expose()["oauth_access_token"],
        "enveloped"
    );
}

#[tokio::test]
async fn api_key_mode_uses_both_paths_without_environment_header() {
    for (mode, expected_path) in [
        (
            CredentialsPath::IncludeCredentials,
            "/v1/accounts/apn_Fake0003",
        ),
        (
            CredentialsPath::Credentials,
            "/v1/accounts/apn_Fake0003/credentials",
        ),
    ] {
        let server = MockServer::start().await;
        let mut m = Mock::given(method("GET"))
            .and(path(expected_path))
            .and(header("authorization", "Bearer pd_key_1"));
        if mode == CredentialsPath::IncludeCredentials {
            m = m.and(query_param("include_credentials", "1"));
        }
        let mut body = account_body("key-tok");
        body["id"] = json!("apn_Fake0003");
        m.respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": body})))
            .mount(&server)
            .await;
        let c = PipedreamClient::new(
            http_client(Duration::from_secs(5), &[]).unwrap(),
            ClientSettings {
                api_url: server.uri(),
                mode: ApiMode::ApiKey { path: mode },
                rate_limit: RateLimit::default(),
                rate_share: 1,
            },
            key_loader(),
            None,
        );
        let a = c.fetch_account("apn_Fake0003").await.unwrap();
        assert_eq!(
            a.account.credentials.unwrap().expose()["oauth_access_token"],
            "key-tok"
        );
        let reqs = server.received_requests().await.unwrap();
        assert!(
            reqs.iter()
                .all(|r| !r.headers.contains_key("x-pd-environment"))
        );
        assert_eq!(count(&reqs, "/v1/oauth/token"), 0);
    }
}

#[tokio::test]
async fn a_401_drops_the_token_rereads_the_secret_and_retries_once() {
    let server = MockServer::start().await;
    mount_token(&server, "old-secret", "tok-old", 3600).await;
    mount_token(&server, "new-secret", "tok-new", 3600).await;
    Mock::given(method("GET"))
        .and(header("authorization", "Bearer tok-old"))
        .respond_with(ResponseTemplate::new(401).set_body_string(""))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", "Bearer tok-new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(account_body("fresh")))
        .mount(&server)
        .await;
    let (loader, loads) = oauth_loader(vec!["old-secret", "new-secret"]);
    let c = connect(&server, loader, Duration::from_secs(5));
    let a = c.fetch_account("apn_Fake0001").await.unwrap();
    assert_eq!(
        a.account.credentials.unwrap().expose()["oauth_access_token"],
        "fresh"
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "the rotated client secret was read again"
    );
}

#[tokio::test]
async fn persistent_401_and_bad_client_credentials_are_unauthorized() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({})))
        .mount(&server)
        .await;
    let c = connect(&server, oauth_loader(vec!["bad"]).0, Duration::from_secs(5));
    assert_eq!(
        c.fetch_account("apn_Fake0001").await.unwrap_err(),
        PipedreamError::Unauthorized {
            endpoint: "token",
            status: 401
        }
    );
    assert!(matches!(
        c.check_auth().await,
        Err(PipedreamError::Unauthorized { .. })
    ));
}

async fn answer(status: u16, body: ResponseTemplate) -> PipedreamError {
    let _ = status;
    let server = MockServer::start().await;
    mount_token(&server, "s1", "tok-1", 3600).await;
    Mock::given(method("GET"))
        .respond_with(body)
        .mount(&server)
        .await;
    connect(
        &server,
        oauth_loader(vec!["s1"]).0,
        Duration::from_millis(500),
    )
    .fetch_account("apn_Fake0001")
    .await
    .unwrap_err()
}

#[tokio::test]
async fn status_codes_map_to_typed_errors() {
    assert!(matches!(
        answer(404, ResponseTemplate::new(404)).await,
        PipedreamError::NotFound { status: 404, .. }
    ));
    let e = answer(
        400,
        ResponseTemplate::new(400).set_body_json(json!({"error": "record not found"})),
    )
    .await;
    assert_eq!(
        e,
        PipedreamError::NotFound {
            status: 400,
            message: Some("record not found".into())
        }
    );
    let e = answer(
        400,
        ResponseTemplate::new(400)
            .set_body_json(json!({"error": {"account": ["account and user mismatch"]}})),
    )
    .await;
    match e {
        PipedreamError::Status {
            status: 400,
            message: Some(m),
            ..
        } => assert!(m.contains("account and user mismatch")),
        other => panic!("{other:?}"),
    }
    let e = answer(
        503,
        ResponseTemplate::new(503).set_body_string("<html>bad gateway</html>"),
    )
    .await;
    assert_eq!(
        e,
        PipedreamError::Status {
            endpoint: "connect_account",
            status: 503,
            message: None
        }
    );
    let e = answer(
        429,
        ResponseTemplate::new(429).insert_header("retry-after", "7"),
    )
    .await;
    assert_eq!(
        e,
        PipedreamError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    let e = answer(429, ResponseTemplate::new(429)).await;
    assert_eq!(e, PipedreamError::RateLimited { retry_after: None });
}

#[tokio::test]
async fn malformed_bodies_and_timeouts_are_reported_without_quoting_the_body() {
    let e = answer(
        200,
        ResponseTemplate::new(200)
            .set_body_string("{\"id\": \"apn_x\", \"credentials\": {\"t\": \"SECRET-VALUE"),
    )
    .await;
    assert!(matches!(e, PipedreamError::Malformed { .. }), "{e:?}");
    assert!(!e.to_string().contains("SECRET-VALUE"));
    let e = answer(
        200,
        ResponseTemplate::new(200).set_body_json(json!(["not", "an", "object"])),
    )
    .await;
    assert!(matches!(e, PipedreamError::Malformed { .. }));
    let e = answer(
        200,
        ResponseTemplate::new(200).set_body_json(json!({"data": {"no_id": true}})),
    )
    .await;
    assert!(matches!(e, PipedreamError::Malformed { .. }));
    let e = answer(
        200,
        ResponseTemplate::new(200)
            .set_delay(Duration::from_secs(3))
            .set_body_json(account_body("x")),
    )
    .await;
    assert_eq!(
        e,
        PipedreamError::Transport {
            endpoint: "connect_account",
            message: "timeout".into()
        }
    );
}

#[tokio::test]
async fn a_transient_5xx_is_retried_once() {
    let server = MockServer::start().await;
    mount_token(&server, "s1", "tok-1", 3600).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(account_body("ok")))
        .mount(&server)
        .await;
    let c = connect(&server, oauth_loader(vec!["s1"]).0, Duration::from_secs(5));
    assert!(c.fetch_account("apn_Fake0001").await.is_ok());
}

#[tokio::test]
async fn malformed_token_answer_and_missing_secret_are_errors() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("not json"))
        .mount(&server)
        .await;
    let c = connect(&server, oauth_loader(vec!["s1"]).0, Duration::from_secs(5));
    assert!(matches!(
        c.check_auth().await,
        Err(PipedreamError::Malformed {
            endpoint: "token",
            ..
        })
    ));
    let failing: MaterialLoader =
        Arc::new(|| async { Err(CredentialsError::NotFound("ops/pd-oauth".into())) }.boxed());
    let c = connect(&server, failing, Duration::from_secs(5));
    assert_eq!(
        c.check_auth().await,
        Err(PipedreamError::LoadCredentials(CredentialsError::NotFound(
            "ops/pd-oauth".into()
        )))
    );
}

#[tokio::test]
async fn token_is_refreshed_before_expiry_with_a_single_refresh_in_flight() {
    let server = MockServer::start().await;
    // A 2 s token is refreshed at half-life (1 s); a slow token endpoint shows callers queue on one refresh.
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(200))
                .set_body_json(json!({"access_token": "tok", "expires_in": 2})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(account_body("x")))
        .mount(&server)
        .await;
    let c = Arc::new(connect(
        &server,
        oauth_loader(vec!["s1"]).0,
        Duration::from_secs(5),
    ));
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.fetch_account("apn_Fake0001").await })
        })
        .collect();
    for h in calls {
        h.await.unwrap().unwrap();
    }
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(
        count(&reqs, "/v1/oauth/token"),
        1,
        "ten concurrent callers share one token request"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.fetch_account("apn_Fake0001").await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(
        count(&reqs, "/v1/oauth/token"),
        2,
        "refreshed before the 2 s expiry"
    );
}

#[test]
fn retry_after_accepts_seconds_http_dates_ms_and_reset() {
    let now: jiff::Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
    let h = |k: &str, v: &str| {
        let mut m = reqwest::header::HeaderMap::new();
        m.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
        m
    };
    assert_eq!(
        retry_after(&h("retry-after", "30"), now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        retry_after(&h("retry-after", "Sun, 22 Nov 2026 09:00:45 GMT"), now),
        Some(Duration::from_secs(45))
    );
    // Capped at 60 s, like the official SDKs.
    assert_eq!(
        retry_after(&h("retry-after", "Sun, 22 Nov 2026 09:01:30 GMT"), now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        retry_after(&h("retry-after", "Sun, 22 Nov 2026 08:00:00 GMT"), now),
        Some(Duration::ZERO)
    );
    assert_eq!(
        retry_after(&h("retry-after-ms", "1500"), now),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        retry_after(&h("x-ratelimit-reset", "1795338030"), now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(retry_after(&h("retry-after", "soon"), now), None);
    // RFC 9110 §5.6.7: a recipient must also accept the obsolete RFC 850 and asctime forms.
    assert_eq!(
        retry_after(&h("retry-after", "Sunday, 22-Nov-26 09:00:45 GMT"), now),
        Some(Duration::from_secs(45))
    );
    assert_eq!(
        retry_after(&h("retry-after", "Sun Nov 22 09:00:45 2026"), now),
        Some(Duration::from_secs(45))
    );
}

#[test]
fn secret_types_never_print_their_values() {
    let s = SecretString::new("hunter2");
    assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
    let a: pipedream_secrets_operator::pipedream::Account =
        serde_json::from_value(account_body("TOKEN-VALUE")).unwrap();
    let printed = format!("{a:?} {}", a.credentials.as_ref().unwrap());
    assert!(!printed.contains("TOKEN-VALUE"), "{printed}");
    assert!(printed.contains("redacted"));
    let m = AuthMaterial::OAuth {
        client_id: "cid".into(),
        client_secret: SecretString::new("hunter2"),
    };
    assert!(!format!("{m:?}").contains("hunter2"));
}

/// Credentials are held as compact text (memory per account); every JSON type, nesting, key order, unicode and
/// huge numbers must come back exactly as Pipedream sent them, and equal answers must compare equal.
#[test]
fn credentials_come_back_exactly_as_pipedream_sent_them() {
    let sent = json!({
        "oauth_access_token": "tök\u{0}en\"\\/",
        "z_last": null,
        "a_first": 12345678901234567890u64,
        "neg": -1.5e-7,
        "flag": false,
        "scopes": ["read", {"nested": [1, 2, {"deep": "x"}]}],
        "empty": {},
    });
    let body = json!({"data": {"id": "apn_X", "credentials": sent}});
    let a = parse_account("account", body.to_string().as_bytes()).unwrap();
    let c = a.credentials.clone().unwrap();
    assert_eq!(Value::Object(c.expose()), sent);
    assert_eq!(serde_json::to_value(&c).unwrap(), sent);
    assert!(!c.is_empty());
    // Field order in the body does not matter.
    let reordered: serde_json::Map<String, Value> =
        serde_json::from_str(r#"{"empty":{},"flag":false,"a_first":12345678901234567890,"neg":-1.5e-7,"oauth_access_token":"tök\u0000en\"\\/","scopes":["read",{"nested":[1,2,{"deep":"x"}]}],"z_last":null}"#).unwrap();
    assert_eq!(Credentials::from_map(reordered), c);
    assert_eq!(format!("{c:?}"), "Credentials(<7 fields redacted>)");
    let all_null = Credentials::from_map(serde_json::from_str(r#"{"a":null}"#).unwrap());
    assert!(all_null.is_empty());
}

/// Issue 17 (2): a redirect from an allowed host was followed, to any host, re-sending the OAuth token request
/// body with the client secret (reqwest's default policy). Redirects are never followed: the answer is an upstream
/// error naming the status, and the other host hears nothing.
#[tokio::test]
async fn redirects_are_not_followed_and_the_client_secret_stays_home() {
    let elsewhere = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "stolen", "expires_in": 3600})),
        )
        .mount(&elsewhere)
        .await;
    let server = MockServer::start().await;
    for (m, p) in [
        ("POST", "/v1/oauth/token"),
        ("GET", "/v1/connect/proj_P1/accounts/apn_A1"),
    ] {
        Mock::given(method(m))
            .and(path(p))
            .respond_with(
                ResponseTemplate::new(307)
                    .insert_header("location", format!("{}{p}", elsewhere.uri()).as_str()),
            )
            .mount(&server)
            .await;
    }
    let c = connect(&server, oauth_loader(vec!["s1"]).0, Duration::from_secs(5));
    let err = c.check_auth().await.unwrap_err();
    assert!(
        matches!(
            err,
            PipedreamError::Status {
                status: 307,
                endpoint: "token",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("307"), "{err}");
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "the other host was called"
    );
}
