//! A hostile or broken Pipedream (a tenant controls `apiUrl` of its PipedreamConnection): absurd numbers, giant and
//! endless bodies, per-account refusals. Nothing panics, nothing is read without bound, and one account's refusal
//! never costs the connection its shared token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use pipedream_secrets_operator::crd::{PipedreamEnvironment, RateLimit};
use pipedream_secrets_operator::pipedream::{
    ApiMode, AuthMaterial, ClientSettings, MAX_BODY_BYTES, MAX_RETRY_AFTER, PipedreamClient,
    PipedreamError, SecretString, http_client, retry_after,
};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(url: String) -> (PipedreamClient, Arc<AtomicUsize>) {
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let c = PipedreamClient::new(
        http_client(Duration::from_secs(5), &[]).unwrap(),
        ClientSettings {
            api_url: url,
            mode: ApiMode::Connect {
                project_id: "proj_P1".into(),
                environment: PipedreamEnvironment::Production,
            },
            rate_limit: RateLimit {
                requests_per_second: 1000,
                burst: 1000,
            },
            rate_share: 1,
        },
        Arc::new(move || {
            l.fetch_add(1, Ordering::SeqCst);
            async {
                Ok(AuthMaterial::OAuth {
                    client_id: "cid".into(),
                    client_secret: SecretString::new("s"),
                })
            }
            .boxed()
        }),
        None,
    );
    (c, loads)
}

async fn token(server: &MockServer, body: serde_json::Value) {
    Mock::given(method("POST"))
        .and(path("/v1/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

fn account(id: &str, creds: serde_json::Value) -> serde_json::Value {
    json!({"id": id, "healthy": true, "credentials": creds, "expires_at": "2099-01-01T00:00:00Z"})
}

/// Regression: `Instant::now() + Duration::from_secs(expires_in)` panicked for huge values, and the connection
/// controller checks auth at startup, so one such connection crash-looped the operator for every tenant.
#[tokio::test]
async fn huge_token_lifetimes_are_malformed_answers_not_panics() {
    for expires_in in [
        json!(u64::MAX),
        json!(1e300),
        json!(-5),
        json!(31_622_400_000u64),
    ] {
        let server = MockServer::start().await;
        token(
            &server,
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": expires_in}),
        )
        .await;
        let (c, _) = client(server.uri());
        let err = c.check_auth().await.unwrap_err();
        assert!(
            matches!(
                err,
                PipedreamError::Malformed {
                    endpoint: "token",
                    ..
                }
            ),
            "{expires_in}: {err:?}"
        );
    }
    // A lifetime of zero is usable once: it is simply refreshed on the next call.
    let server = MockServer::start().await;
    token(&server, json!({"access_token": "t", "expires_in": 0})).await;
    let (c, _) = client(server.uri());
    c.check_auth().await.unwrap();
}

/// Regression: `Retry-After: 1e20` reached `Duration::from_secs_f64` and panicked. Every form is capped at 60 s,
/// as the official SDKs do.
#[test]
fn absurd_retry_after_values_are_capped_not_panics() {
    let now: jiff::Timestamp = "2026-11-22T09:00:00Z".parse().unwrap();
    let h = |k: &str, v: &str| {
        let mut m = reqwest::header::HeaderMap::new();
        m.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
        m
    };
    for (k, v) in [
        ("retry-after", "1e20"),
        ("retry-after", "1e308"),
        ("retry-after", "18446744073709551616"),
        ("retry-after", "Wed, 01 Jan 2200 00:00:00 GMT"),
        ("retry-after-ms", "18446744073709551615"),
        ("x-ratelimit-reset", "253402300799"),
    ] {
        assert_eq!(
            retry_after(&h(k, v), now),
            Some(MAX_RETRY_AFTER),
            "{k}: {v}"
        );
    }
    for (k, v) in [
        ("retry-after", "NaN"),
        ("retry-after", "-1"),
        ("retry-after", "inf"),
        ("x-ratelimit-reset", "99999999999999999999"),
    ] {
        assert_eq!(retry_after(&h(k, v), now), None, "{k}: {v}");
    }
    assert_eq!(MAX_RETRY_AFTER, Duration::from_secs(60));
}

/// Regression: bodies were read whole (`resp.bytes()`), so a 200 MB answer could exhaust the pod's memory.
#[tokio::test]
async fn giant_bodies_are_refused_before_they_are_read_whole() {
    let server = MockServer::start().await;
    token(&server, json!({"access_token": "t", "expires_in": 3600})).await;
    let big = "x".repeat(MAX_BODY_BYTES + 1);
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(account("apn_Big1", json!({"k": big}))),
        )
        .mount(&server)
        .await;
    let (c, _) = client(server.uri());
    let err = c.fetch_account("apn_Big1").await.unwrap_err();
    assert!(
        matches!(&err, PipedreamError::Malformed { message, .. } if message.contains("larger than")),
        "{err:?}"
    );
    assert!(!err.to_string().contains("xxxx"));
}

/// The same without a Content-Length: an endless chunked body is cut off at the cap, long before the request
/// timeout.
#[tokio::test]
async fn endless_chunked_bodies_are_cut_off_at_the_cap() {
    use axum::routing::{get, post};
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let app = axum::Router::new()
        .route(
            "/v1/oauth/token",
            post(|| async { axum::Json(json!({"access_token": "t", "expires_in": 3600})) }),
        )
        .route(
            "/v1/connect/proj_P1/accounts/apn_Endless1",
            get(move || {
                let chunk = chunk.clone();
                async move {
                    let s = futures::stream::repeat_with(move || {
                        Ok::<_, std::convert::Infallible>(chunk.clone())
                    });
                    axum::body::Body::from_stream(s)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (c, _) = client(format!("http://{addr}"));
    let err = c.fetch_account("apn_Endless1").await.unwrap_err();
    assert!(
        matches!(&err, PipedreamError::Malformed { message, .. } if message.contains("larger than")),
        "{err:?}"
    );
}

/// Regression: a 403 on one account was mapped to Unauthorized and dropped the connection's shared token, so every
/// failing account re-minted it. A 403 is about that account; the token stays.
#[tokio::test]
async fn a_403_on_one_account_keeps_the_shared_token() {
    let server = MockServer::start().await;
    token(&server, json!({"access_token": "t", "expires_in": 3600})).await;
    Mock::given(method("GET"))
        .and(path("/v1/connect/proj_P1/accounts/apn_Forbidden1"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"error": "forbidden"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/connect/proj_P1/accounts/apn_Ok1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(account("apn_Ok1", json!({"k": "v"}))),
        )
        .mount(&server)
        .await;
    let (c, loads) = client(server.uri());
    for _ in 0..3 {
        let err = c.fetch_account("apn_Forbidden1").await.unwrap_err();
        assert!(
            matches!(err, PipedreamError::Forbidden { status: 403, .. }),
            "{err:?}"
        );
        c.fetch_account("apn_Ok1").await.unwrap();
    }
    let tokens = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/v1/oauth/token")
        .count();
    assert_eq!(tokens, 1, "one token for the whole run");
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// A 401 on one account (the others work) re-authenticates once, then no more often than every 30 s: failing
/// accounts cannot make the operator mint a token per fetch.
#[tokio::test]
async fn a_persistent_401_on_one_account_does_not_remint_on_every_fetch() {
    let server = MockServer::start().await;
    token(&server, json!({"access_token": "t", "expires_in": 3600})).await;
    Mock::given(method("GET"))
        .and(path("/v1/connect/proj_P1/accounts/apn_Bad1"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let (c, _) = client(server.uri());
    for _ in 0..5 {
        assert!(matches!(
            c.fetch_account("apn_Bad1").await.unwrap_err(),
            PipedreamError::Unauthorized { .. }
        ));
    }
    let tokens = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/v1/oauth/token")
        .count();
    assert!(tokens <= 2, "{tokens} tokens minted for five fetches");
}
