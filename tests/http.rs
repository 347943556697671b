//! `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pipedream_secrets_operator::http::{SCRAPE_DEADLINE, router, serve_on};
use pipedream_secrets_operator::metrics::{Metrics, ObjectView};

/// The router on a free loopback port, served as the operator serves it.
async fn serve(metrics: &Arc<Metrics>, ready: &Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_on(
        listener,
        router(metrics.clone(), ready.clone()),
        None,
        std::future::pending(),
    ));
    addr
}

fn assert_openmetrics(resp: &reqwest::Response) {
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let addr = serve(&metrics, &ready).await;
    let http =
        pipedream_secrets_operator::pipedream::http_client(Duration::from_secs(5), &[]).unwrap();
    let get = |p: &str| http.get(format!("http://{addr}{p}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    metrics.count_sync("SecretSynced");
    metrics.count_sync("UpstreamError");
    metrics.observe_request("connect_account", "200", Duration::from_millis(20));
    let exp: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
    // Per-object series come from a source (the operator's cache of ConnectedAccounts) read at scrape time.
    metrics.set_object_source(move |each| {
        each(ObjectView {
            namespace: "team-a",
            name: "gh",
            ready: "True",
            reason: "SecretSynced",
            expires_at: Some(exp),
            ..Default::default()
        })
    });
    let conn = pipedream_secrets_operator::identity::ConnectionId::cluster("default");
    metrics.set_connection_ready(&conn, true);
    metrics.count_rate_limit_wait(&conn, Duration::from_millis(250));
    metrics.set_leader(
        pipedream_secrets_operator::shard::Shard::new(1, 3).unwrap(),
        true,
    );
    let resp = get("/metrics").await.unwrap();
    assert_openmetrics(&resp);
    let text = resp.text().await.unwrap();
    for needle in [
        "pipedream_secrets_syncs_total{result=\"SecretSynced\"} 1",
        // Counters with bounded label sets exist from 0.
        "pipedream_secrets_syncs_total{result=\"AuthFailed\"} 0",
        "pipedream_secrets_reconciles_total{controller=\"connection\",result=\"error\"} 0",
        "pipedream_secrets_reconcile_errors_total{error=\"write_secret\"} 0",
        "pipedream_secrets_pipedream_retries_total{endpoint=\"token\",cause=\"reauth\"} 0",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_start_time_seconds gauge",
        "pipedream_secrets_syncs_total{result=\"UpstreamError\"} 1",
        "pipedream_secrets_pipedream_requests_total{endpoint=\"connect_account\",status=\"200\"} 1",
        "pipedream_secrets_pipedream_request_duration_seconds_count{endpoint=\"connect_account\"} 1",
        "# TYPE pipedream_secrets_connectedaccount_credentials_expiration_timestamp_seconds gauge",
        "pipedream_secrets_connectedaccount_credentials_expiration_timestamp_seconds{namespace=\"team-a\",name=\"gh\"} 1795341600.0",
        "pipedream_secrets_connectedaccount_ready_status{namespace=\"team-a\",name=\"gh\",condition=\"True\"} 1.0",
        "pipedream_secrets_connectedaccount_ready_status{namespace=\"team-a\",name=\"gh\",condition=\"False\"} 0.0",
        "pipedream_secrets_connectedaccount_ready_status{namespace=\"team-a\",name=\"gh\",condition=\"Unknown\"} 0.0",
        "pipedream_secrets_connectedaccount_ready_reason{namespace=\"team-a\",name=\"gh\",reason=\"SecretSynced\"} 1.0",
        "pipedream_secrets_connection_ready{kind=\"ClusterPipedreamConnection\",namespace=\"\",name=\"default\"} 1.0",
        "pipedream_secrets_rate_limit_waits_total{kind=\"ClusterPipedreamConnection\",namespace=\"\",name=\"default\"} 1",
        "pipedream_secrets_rate_limit_wait_seconds_total{kind=\"ClusterPipedreamConnection\",namespace=\"\",name=\"default\"} 0.25",
        "pipedream_secrets_reconcile_duration_seconds",
        "pipedream_secrets_reconcile_queue_depth 0",
        "pipedream_secrets_leader{shard=\"1\"} 1",
        "pipedream_secrets_build_info{version=\"",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(
        !text.contains("name=\"gone\""),
        "deleted objects leave no series"
    );
    assert!(
        !text.contains("credentials_expiry_seconds"),
        "the relative gauge is gone"
    );
}

/// Prometheus asks for gzip: it gets the same text, compressed, and a client that does not ask gets plain text.
#[tokio::test]
async fn metrics_are_gzip_compressed_for_a_scraper_that_asks() {
    use std::io::Read;
    let metrics = Arc::new(Metrics::new());
    let addr = serve(&metrics, &Arc::new(AtomicBool::new(true))).await;
    let n = 10_000;
    metrics.set_object_source(move |each| {
        for i in 0..n {
            let (namespace, name) = (format!("team-{}", i % 7), format!("ca-{i:05}"));
            each(ObjectView {
                namespace: &namespace,
                name: &name,
                ready: "True",
                reason: "SecretSynced",
                expires_at: Some(jiff::Timestamp::from_second(1_795_341_600 + i).unwrap()),
                ..Default::default()
            })
        }
    });
    // reqwest here has no gzip support of its own: the body arrives as the server sent it.
    let http =
        pipedream_secrets_operator::pipedream::http_client(Duration::from_secs(5), &[]).unwrap();
    let scrape = |accept: Option<&'static str>| {
        let mut req = http.get(format!("http://{addr}/metrics"));
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        req.send()
    };
    let plain = scrape(None).await.unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    let plain = plain.text().await.unwrap();
    let zipped = scrape(Some("gzip, deflate")).await.unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["vary"], "accept-encoding");
    assert_openmetrics(&zipped);
    let zipped = zipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_string(&mut text)
        .unwrap();
    // The process's own gauges (memory, CPU) move between two scrapes; every other line is the same.
    let stable = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with("process_"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(stable(&text), stable(&plain));
    assert!(text.ends_with("# EOF\n"), "complete text");
    let expiry = "pipedream_secrets_connectedaccount_credentials_expiration_timestamp_seconds";
    assert_eq!(
        text.lines().filter(|l| l.starts_with(expiry)).count(),
        n as usize
    );
    assert!(
        zipped.len() * 5 < plain.len(),
        "{} compressed bytes for {} of text",
        zipped.len(),
        plain.len()
    );
    // q=0 refuses gzip.
    let refused = scrape(Some("gzip;q=0")).await.unwrap();
    assert_eq!(refused.headers().get("content-encoding"), None);
}

/// Issue 25 (4): every /metrics response stayed in memory until its client read it, and nothing bounded how many
/// there were: a handful of clients that ask and never read held a whole scrape each. At most
/// `MAX_SCRAPES_IN_FLIGHT` are encoded or sent at once; beyond that a scrape gets 503 until one finishes or its
/// client goes away.
#[tokio::test]
async fn clients_that_never_read_cannot_hold_more_than_the_bounded_scrapes() {
    use pipedream_secrets_operator::http::MAX_SCRAPES_IN_FLIGHT;
    use tokio::io::AsyncWriteExt;
    let metrics = Arc::new(Metrics::new());
    // A scrape far larger than the loopback socket buffers, so a client that does not read stalls it.
    metrics.set_object_source(|each| {
        for i in 0..20_000 {
            let name = format!("account-{i}");
            each(ObjectView {
                namespace: "team-a",
                name: &name,
                ready: "True",
                reason: "SecretSynced",
                ..Default::default()
            })
        }
    });
    let ready = Arc::new(AtomicBool::new(true));
    let addr = serve(&metrics, &ready).await;
    let mut stalled = Vec::new();
    for _ in 0..MAX_SCRAPES_IN_FLIGHT {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pdso\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http =
        pipedream_secrets_operator::pipedream::http_client(Duration::from_secs(30), &[]).unwrap();
    let refused = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        http.get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "health checks are not held up"
    );
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("name=\"account-19999\"") && text.ends_with("# EOF\n"));
}

/// Issue 25 (4): the two scrape slots were held for as long as their clients kept the connection open without
/// reading, so two clients that ask and never read denied every later scrape, forever. A scrape not read within
/// the deadline loses its connection, and with it its slot: after the deadline a third scrape succeeds.
#[tokio::test]
async fn clients_that_never_read_lose_their_scrape_slot_after_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = Arc::new(Metrics::new());
    metrics.set_object_source(|each| {
        for i in 0..20_000 {
            let name = format!("account-{i}");
            each(ObjectView {
                namespace: "team-a",
                name: &name,
                ready: "True",
                reason: "SecretSynced",
                ..Default::default()
            })
        }
    });
    let addr = serve(&metrics, &Arc::new(AtomicBool::new(true))).await;
    let started = tokio::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pdso\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http =
        pipedream_secrets_operator::pipedream::http_client(Duration::from_secs(30), &[]).unwrap();
    let scrape = || http.get(format!("http://{addr}/metrics")).send();
    assert_eq!(scrape().await.unwrap().status(), 503, "both slots held");
    // Past the deadline (Prometheus's default scrape timeout) the stalled scrapes are gone.
    tokio::time::sleep_until(started + SCRAPE_DEADLINE + Duration::from_secs(2)).await;
    let resp = scrape().await.unwrap();
    assert_eq!(resp.status(), 200, "a stalled client still held a slot");
    let text = resp.text().await.unwrap();
    assert!(text.contains("name=\"account-19999\"") && text.ends_with("# EOF\n"));
    // The stalled clients' connections were closed: what they can still read ends, short of a whole scrape.
    for mut s in stalled {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server kept a stalled connection open");
        assert!(
            buf.len() < text.len(),
            "a stalled client got the whole scrape"
        );
    }
}
