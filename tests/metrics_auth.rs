//! Issue 25 (4): authenticated metrics, on the real API server. With `--metrics-secure` the operator serves
//! `/metrics` over HTTPS only to bearer tokens the API server authenticates (TokenReview) and allows to `get` the
//! non-resource URL `/metrics` (SubjectAccessReview), as controller-runtime's secure metrics do; the probes stay
//! plain HTTP on `--health-addr`. Tokens are the control plane's static users (`tokens.csv`) and a ServiceAccount's
//! TokenRequest token; the grant is the chart's `metrics-reader` ClusterRole.

mod support;

use std::time::Duration;

use pdso_testkit::controlplane::free_port;
use serde_json::json;
use support::Env;

/// Both tests' operators authenticate as the same user, `operator`, whose reviews the first test counts in the
/// audit log: they run one after the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reviews the operator has created so far: (TokenReviews, SubjectAccessReviews).
fn reviews_so_far(env: &Env) -> (u64, u64) {
    let requests = env.plane().requests_by(&env.operator_user);
    let count = |r: &str| {
        requests
            .get(&("create".to_string(), r.to_string()))
            .copied()
            .unwrap_or(0)
    };
    (count("tokenreviews"), count("subjectaccessreviews"))
}

/// The chart's metrics-reader ClusterRole (tests/chart checks the chart renders exactly these rules), bound to
/// user `bob` and to ServiceAccount `ops/prometheus`; returns that ServiceAccount's token.
async fn grant_metrics(env: &Env) -> String {
    env.apply(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        None,
        "metrics-reader",
        json!({"rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
    )
    .await;
    let ops = env.ns("ops");
    env.apply(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        None,
        "metrics-reader",
        json!({
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": env.cluster("metrics-reader")},
        "subjects": [
            {"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"},
            {"kind": "ServiceAccount", "name": "prometheus", "namespace": ops},
        ]}),
    )
    .await;
    env.plane()
        .ensure_service_account(&ops, "prometheus")
        .await
        .unwrap();
    env.plane()
        .service_account_token(&ops, "prometheus")
        .await
        .unwrap()
}

/// Start the operator with secure metrics (and `extra` flags); waits until its health port answers.
async fn start_secure(env: &mut Env, extra: &[String]) -> (u16, u16) {
    let (metrics, health) = (free_port(), free_port());
    env.extra_args = vec![
        format!("--metrics-addr=127.0.0.1:{metrics}"),
        format!("--health-addr=127.0.0.1:{health}"),
        "--metrics-secure".into(),
    ];
    env.extra_args.extend(extra.iter().cloned());
    env.start_operator();
    let plain = reqwest::Client::new();
    env.wait("the health port", 30, async || {
        let r = plain
            .get(format!("http://127.0.0.1:{health}/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    (metrics, health)
}

async fn status_of(client: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_metrics_serve_only_tokens_the_api_server_allows_to_get_metrics() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut env = env_or_skip!(Env::start(vec![]));
    let sa_token = grant_metrics(&env).await;
    let (metrics_port, health_port) = start_secure(&mut env, &[]).await;
    let url = format!("https://127.0.0.1:{metrics_port}/metrics");
    // The certificate is self-signed (no --metrics-cert-dir): the token, not the certificate, decides.
    let https = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (alice, bob) = (env.plane().token("alice"), env.plane().token("bob"));
    let before = reviews_so_far(&env);

    // No token, a token the API server does not know: 401.
    let resp = https.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        status_of(&https, &url, Some("not-a-token-anyone-issued")).await,
        401
    );
    // A real user without the grant: 403.
    assert_eq!(status_of(&https, &url, Some(alice)).await, 403);
    // A user and a ServiceAccount bound to metrics-reader: the OpenMetrics scrape, over TLS.
    for token in [bob, sa_token.as_str()] {
        let resp = https.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("pipedream_secrets_build_info{") && text.ends_with("# EOF\n"),
            "{text}"
        );
    }
    // Asked again, each decision comes from the cache: one TokenReview per distinct token, and a
    // SubjectAccessReview only for the three the API server authenticated.
    for token in [alice, bob, sa_token.as_str()] {
        let _ = status_of(&https, &url, Some(token)).await;
    }
    let after = reviews_so_far(&env);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (4, 3),
        "(TokenReviews, SubjectAccessReviews)"
    );

    // Plain HTTP on the metrics port: no answer (the TLS handshake fails and the connection closes).
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let refused = plain
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .bearer_auth(bob)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "plain HTTP was answered: {:?}",
        refused.map(|r| r.status())
    );
    // The probes stay plain HTTP on the health port, without a token; the HTTPS port serves /metrics only.
    for path in ["/healthz", "/readyz"] {
        let r = plain
            .get(format!("http://127.0.0.1:{health_port}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            status_of(
                &https,
                &format!("https://127.0.0.1:{metrics_port}{path}"),
                Some(bob)
            )
            .await,
            404,
            "{path}"
        );
    }
    assert_eq!(
        status_of(
            &plain,
            &format!("http://127.0.0.1:{health_port}/metrics"),
            None
        )
        .await,
        404,
        "no unauthenticated metrics on the health port"
    );
    // No token reaches the logs, whatever was refused or allowed.
    let logs = env.logs();
    for token in [alice, bob, sa_token.as_str(), "not-a-token-anyone-issued"] {
        assert!(
            !logs.contains(token),
            "a bearer token is in the operator's log"
        );
    }
}

/// With `--metrics-cert-dir` the operator serves that certificate (a client trusting only its CA connects) and
/// picks up a renewed one without a restart, as cert-manager renews a mounted Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_metrics_serve_the_certificate_from_the_cert_dir_and_follow_its_renewal() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut env = env_or_skip!(Env::start(vec![]));
    grant_metrics(&env).await;
    let dir = std::env::temp_dir().join(format!("pdso-metrics-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first_ca = issue(&dir, "first");
    let (metrics_port, _) =
        start_secure(&mut env, &[format!("--metrics-cert-dir={}", dir.display())]).await;
    let url = format!("https://localhost:{metrics_port}/metrics");
    let bob = env.plane().token("bob").to_string();
    let trusting = |ca: &str| {
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem(ca.as_bytes()))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    assert_eq!(status_of(&trusting(&first_ca), &url, Some(&bob)).await, 200);
    // Renewed by another CA: new connections get the new certificate, without a restart.
    let second_ca = issue(&dir, "second");
    env.wait("the renewed certificate", 10, async || {
        let r = trusting(&second_ca)
            .get(&url)
            .bearer_auth(&bob)
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
    assert!(
        trusting(&first_ca)
            .get(&url)
            .bearer_auth(&bob)
            .send()
            .await
            .is_err(),
        "the old certificate is still served"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Write `tls.crt` and `tls.key` for `localhost`, signed by a new CA named `name`; returns the CA's PEM.
fn issue(dir: &std::path::Path, name: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    // The key first, then the certificate: a reader between the two writes sees a mismatched pair and keeps the
    // previous one (as it would during a non-atomic renewal).
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    ca_cert.pem()
}
