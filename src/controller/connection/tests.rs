use super::*;
use crate::controller::tests::Harness;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn status_reason(h: &Harness, path_end: &str) -> Option<(String, String)> {
    let reqs = h.api.take();
    let s = reqs.iter().rev().find(|r| r.path.ends_with(path_end))?;
    let c = &s.body["status"]["conditions"][0];
    Some((
        c["reason"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
    ))
}

#[tokio::test]
async fn connection_status_reports_authentication() {
    let h = Harness::new().await;
    let conn = h.ctx.cluster_connections.state()[0].clone();
    let action = reconcile_cluster(conn.clone(), h.ctx.clone())
        .await
        .unwrap();
    // No credentials watch runs here: the Secret is polled, slowly while healthy; Pipedream only after RECHECK.
    assert_eq!(action, Action::requeue(CREDENTIALS_POLL_HEALTHY));
    let uid = conn.metadata.uid.clone().unwrap_or_default();
    let next_check = h.ctx.object(&uid).retry_at.expect("next check");
    assert!(next_check > schedule::add(h.ctx.clock.now(), RECHECK - Duration::from_secs(5)));
    let reqs = h.api.take();
    let status = reqs
        .iter()
        .find(|r| {
            r.path
                .ends_with("/clusterpipedreamconnections/default/status")
        })
        .expect("status patch");
    assert_eq!(
        status.body["status"]["conditions"][0]["reason"],
        "Authenticated"
    );
    assert_eq!(status.body["status"]["authMode"], "oauth");
    // Pipedream refuses the client: AuthFailed.
    let h2 = Harness::new().await;
    h2.pd.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&h2.pd)
        .await;
    let conn2 = h2.ctx.cluster_connections.state()[0].clone();
    reconcile_cluster(conn2, h2.ctx.clone()).await.unwrap();
    let reqs = h2.api.take();
    let status = reqs.iter().find(|r| r.path.ends_with("/status")).unwrap();
    assert_eq!(
        status.body["status"]["conditions"][0]["reason"],
        "AuthFailed"
    );
    assert!(
        reqs.iter()
            .any(|r| r.method == "POST" && r.body["reason"] == "AuthFailed")
    );
}

/// Regression (issue 8): the connection controller had no retry-time guard, and a `Retry-After` countdown in its
/// message changed status every second; each write triggered an immediate re-check and a token request.
#[tokio::test]
async fn a_failing_connection_waits_for_its_retry_time_and_writes_a_stable_message() {
    let h = Harness::new().await;
    h.pd.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
        .mount(&h.pd)
        .await;
    let conn = h.ctx.cluster_connections.state()[0].clone();
    let a1 = reconcile_cluster(conn.clone(), h.ctx.clone())
        .await
        .unwrap();
    let (reason, first) = status_reason(&h, "/status").unwrap();
    assert_eq!(reason, "RateLimited");
    assert!(
        !first.chars().any(|c| c.is_ascii_digit()),
        "no countdown: {first}"
    );
    assert_eq!(a1, Action::requeue(CREDENTIALS_POLL));
    let uid = conn.metadata.uid.clone().unwrap_or_default();
    let retry = h.ctx.object(&uid).retry_at.expect("retry time");
    assert!(retry >= schedule::add(h.ctx.clock.now(), Duration::from_secs(29)));
    let tokens = h.pd.received_requests().await.unwrap().len();
    // Its own status write comes back as a watch event: no new token request, no write.
    let mut again = (*conn).clone();
    again.status = Some(serde_json::from_value(json!({"observedGeneration": conn.metadata.generation,
        "conditions": [{"type": "Ready", "status": "False", "reason": "RateLimited", "message": first,
                        "lastTransitionTime": "2026-11-22T09:00:00Z"}]})).unwrap());
    reconcile_cluster(Arc::new(again), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(h.pd.received_requests().await.unwrap().len(), tokens);
    // Only the credentials Secret's metadata is read; nothing is written.
    let writes: Vec<_> = h
        .api
        .take()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(
        writes.is_empty(),
        "{:?}",
        writes.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
}

/// Regression (issue 7): a tenant's PipedreamConnection could point `apiUrl` at any host; it must name an
/// allowed Pipedream host, and is reported as InvalidSpec without a request to it.
#[tokio::test]
async fn a_tenant_connection_to_a_host_that_is_not_allowed_is_invalid_and_never_called() {
    let h = Harness::new().await;
    let evil = MockServer::start().await;
    let url = evil.uri().replace("127.0.0.1", "localhost");
    h.add_namespaced_connection("team-b", &url);
    let conn = h
        .ctx
        .connections
        .get(&None)
        .unwrap()
        .state()
        .into_iter()
        .find(|c| c.namespace().as_deref() == Some("team-b"))
        .unwrap();
    reconcile_namespaced(conn, h.ctx.clone()).await.unwrap();
    let (reason, message) = status_reason(&h, "/pipedreamconnections/pd/status").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("spec.apiUrl") && message.contains("localhost"),
        "{message}"
    );
    assert!(evil.received_requests().await.unwrap().is_empty());
}

/// Regression (issue 7): a token answer with a huge `expires_in` panicked the process from the connection
/// controller at startup (a crash loop for every tenant). It is a malformed answer.
#[tokio::test]
async fn a_huge_token_lifetime_is_reported_not_a_crash() {
    let h = Harness::new().await;
    h.pd.reset().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": u64::MAX})),
        )
        .mount(&h.pd)
        .await;
    let conn = h.ctx.cluster_connections.state()[0].clone();
    reconcile_cluster(conn, h.ctx.clone()).await.unwrap();
    let (reason, message) = status_reason(&h, "/status").unwrap();
    assert_eq!(reason, "UpstreamError");
    assert!(message.contains("expires_in"), "{message}");
}

/// Issue 17 (10): every connection re-queued every 5 s with Secret GETs (1,000 tenant connections, about 300
/// API requests/s). Watched Secrets are not polled at all; the others every 5 s only while failing.
#[test]
fn credentials_are_polled_only_where_no_watch_covers_them_and_often_only_while_failing() {
    let due = RECHECK;
    assert_eq!(next_check(true, true, due), RECHECK);
    assert_eq!(
        next_check(true, false, Duration::from_secs(40)),
        Duration::from_secs(40)
    );
    assert_eq!(next_check(false, true, due), CREDENTIALS_POLL_HEALTHY);
    assert_eq!(next_check(false, false, due), CREDENTIALS_POLL);
    assert_eq!(
        next_check(false, false, Duration::from_secs(1)),
        Duration::from_secs(1)
    );
}
