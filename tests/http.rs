//! `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pipedream_secrets_operator::http::router;
use pipedream_secrets_operator::metrics::Metrics;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, router(metrics.clone(), ready.clone())).into_future());
    let http = pipedream_secrets_operator::pipedream::http_client(Duration::from_secs(5)).unwrap();
    let get = |p: &str| http.get(format!("http://{addr}{p}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    metrics.count_sync("Synced");
    metrics.count_sync("UpstreamError");
    metrics.observe_request("connect_account", "200", Duration::from_millis(20));
    metrics.set_expiry(
        "team-a",
        "gh",
        Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600)),
    );
    let resp = get("/metrics").await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.unwrap();
    for needle in [
        "pipedream_secrets_syncs_total{result=\"Synced\"} 1",
        "pipedream_secrets_syncs_total{result=\"UpstreamError\"} 1",
        "pipedream_secrets_pipedream_requests_total{endpoint=\"connect_account\",status=\"200\"} 1",
        "pipedream_secrets_pipedream_request_duration_seconds_count{endpoint=\"connect_account\"} 1",
        "pipedream_secrets_credentials_expiry_seconds{namespace=\"team-a\",name=\"gh\"} 59",
        "pipedream_secrets_reconcile_duration_seconds",
        "pipedream_secrets_rate_limit_waits_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
