//! What pods read, on real nodes: kube-scheduler, kube-controller-manager's workload controllers and two hollow
//! nodes (the real kubelet and its Secret volume plugin over a fake container runtime, syncing pods every 60 s
//! as a real kubelet does by default). The test kit's monitor (`pdso_testkit::podview`) samples the credential
//! each pod holds the way its container holds it (a mounted file now; an environment variable or `subPath`
//! mount as the container started) and judges it by the fake Pipedream's truth about its expiry.
//!
//! The contract (README "What pods read"): while Pipedream offers a fresh token at least the propagation time
//! (`spec.refresh.propagationTime`, default 100 s) ahead of expiry, no pod reads an expired token.

mod support;

use std::time::Duration;

use jiff::Timestamp;
use pdso_testkit::podview::{self, KEY_ANNOTATION, Monitor, READS_LABEL, Reads, VOLUME_ANNOTATION};
use serde_json::{Value, json};
use support::{Env, Options, oauth_account, ready_of};

const KEY: &str = "oauth_access_token";

async fn start(accounts: Vec<pdso_testkit::pipedream::FakeAccount>) -> Option<Env> {
    let options = Options {
        nodes: true,
        ..Default::default()
    };
    Env::start_with(accounts, options).await
}

/// A ConnectedAccount with default settings (no `refresh`, default `minRestartInterval`).
async fn create_ca(env: &Env, name: &str, account: &str, restart: &[(&str, &str)]) {
    let targets: Vec<Value> = restart
        .iter()
        .map(|(kind, name)| json!({"kind": kind, "name": name}))
        .collect();
    let mut spec = json!({"accountId": account});
    if !targets.is_empty() {
        spec["rolloutRestartTargets"] = json!(targets);
    }
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        name,
        json!({ "spec": spec }),
    )
    .await;
}

/// How a consumer pod takes the Secret.
#[derive(Clone, Copy)]
enum Consumer {
    /// A `secret` volume, read on each use.
    Volume,
    /// A `projected` volume mapping the key to `token`, read on each use.
    Projected,
    /// An environment variable (and, for the monitor, a volume of the same Secret).
    Env,
    /// A `subPath` mount of the key.
    SubPath,
}

/// A pod template consuming Secret `secret` as `consumer` says, labelled for the monitor.
fn template(app: &str, secret: &str, consumer: Consumer) -> Value {
    let secret_volume = json!({"name": "creds", "secret": {"secretName": secret}});
    let (reads, key, volume, mounts, env) = match consumer {
        Consumer::Volume => (
            "file",
            KEY,
            secret_volume,
            json!([{"name": "creds", "mountPath": "/creds", "readOnly": true}]),
            json!([]),
        ),
        Consumer::Projected => (
            "file",
            "token",
            json!({"name": "creds", "projected": {"sources": [
                {"secret": {"name": secret, "items": [{"key": KEY, "path": "token"}]}}]}}),
            json!([{"name": "creds", "mountPath": "/creds", "readOnly": true}]),
            json!([]),
        ),
        Consumer::Env => (
            "at-start",
            KEY,
            secret_volume,
            json!([{"name": "creds", "mountPath": "/creds", "readOnly": true}]),
            json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": KEY}}}]),
        ),
        Consumer::SubPath => (
            "at-mount",
            KEY,
            secret_volume,
            json!([{"name": "creds", "mountPath": "/etc/token", "subPath": KEY, "readOnly": true}]),
            json!([]),
        ),
    };
    json!({
        "metadata": {"labels": {"app": app, READS_LABEL: reads},
                     "annotations": {VOLUME_ANNOTATION: "creds", KEY_ANNOTATION: key}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36",
                                 "volumeMounts": mounts, "env": env}],
                 "volumes": [volume]}
    })
}

/// Apply a Deployment, StatefulSet or DaemonSet named `name` with `replicas` pods of `template`.
async fn workload(env: &Env, kind: &str, name: &str, replicas: u32, template: Value) {
    let selector = json!({"matchLabels": {"app": name}});
    let spec = match kind {
        "DaemonSet" => json!({"selector": selector, "template": template}),
        // The hollow node never starts a container with a `subPath` mount (its pods stay Pending, though Ready),
        // and an OrderedReady StatefulSet waits for each new pod to run before it goes on: roll such consumers in
        // parallel, one unavailable pod at a time, as a StatefulSet on a real kubelet would roll them in order.
        "StatefulSet" if template["metadata"]["labels"][READS_LABEL] == "at-mount" => {
            json!({"selector": selector, "template": template, "serviceName": name, "replicas": replicas,
                   "podManagementPolicy": "Parallel",
                   "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}})
        }
        "StatefulSet" => json!({"selector": selector, "template": template,
                                "serviceName": name, "replicas": replicas}),
        _ => json!({"selector": selector, "template": template, "replicas": replicas}),
    };
    env.apply(
        "apps/v1",
        kind,
        Some("team-a"),
        name,
        json!({ "spec": spec }),
    )
    .await;
}

/// Wait until workload `kind/name` has all its pods ready on the current revision.
async fn wait_rolled_out(env: &Env, kind: &str, name: &str, secs: u64) {
    env.wait(&format!("{kind}/{name} rolled out"), secs, async || {
        let w = env.get("apps/v1", kind, Some("team-a"), name).await?;
        let st = &w["status"];
        let done = match kind {
            "DaemonSet" => {
                st["desiredNumberScheduled"].as_u64().unwrap_or(0) > 0
                    && st["numberReady"] == st["desiredNumberScheduled"]
            }
            // Its pods never run on the hollow node (see `workload`): all on the new revision is rolled out.
            "StatefulSet"
                if w["spec"]["template"]["metadata"]["labels"][READS_LABEL] == "at-mount" =>
            {
                let want = w["spec"]["replicas"].as_u64().unwrap_or(1);
                st["observedGeneration"] == w["metadata"]["generation"]
                    && st["updatedReplicas"].as_u64() == Some(want)
            }
            _ => {
                let want = w["spec"]["replicas"].as_u64().unwrap_or(1);
                st["readyReplicas"].as_u64() == Some(want)
            }
        };
        done.then_some(())
    })
    .await;
}

/// The fake Pipedream's truth about when a token expires, on the real clock (the tests never move the fake's).
fn oracle(env: &Env) -> impl Fn(&str) -> Option<Timestamp> + Send + 'static {
    let pd = env.pd.clone();
    move |token| pd.token_expiry(token)
}

fn describe_expired(r: &podview::Report) -> String {
    r.expired
        .iter()
        .take(10)
        .map(|e| {
            format!(
                "{} held {} at {} ({:.1}s after it expired)",
                e.pod,
                e.token,
                e.at,
                e.at.duration_since(e.expired_at).as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The scenario, with default settings: three accounts whose tokens live 180–240 s and which Pipedream
/// refreshes 100–150 s before expiry, consumed by volume and projected mounts (read on each use) and by
/// environment variables and `subPath` mounts in a Deployment, a StatefulSet and a DaemonSet listed in
/// `rolloutRestartTargets`, sampled every half second for 330 s on two nodes with the kubelet's default 60 s sync.
/// No pod may hold an expired token, every Secret is refreshed at least three times, every file consumer sees the
/// refreshes, and every env/subPath consumer is replaced by new pods before its token expires (Running for env;
/// the hollow node does not start `subPath` containers, so those are judged by their mount: see `podview`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_pod_reads_an_expired_token_with_default_settings() {
    let accounts = vec![
        oauth_account("apn_PodA", Some(180), 100),
        oauth_account("apn_PodB", Some(210), 125),
        oauth_account("apn_PodC", Some(240), 150),
    ];
    let Some(mut env) = start(accounts).await else {
        return;
    };
    env.start_operator();
    create_ca(
        &env,
        "a",
        "apn_PodA",
        &[("Deployment", "env-a"), ("DaemonSet", "subpath-a")],
    )
    .await;
    create_ca(
        &env,
        "b",
        "apn_PodB",
        &[("StatefulSet", "env-b"), ("Deployment", "subpath-b")],
    )
    .await;
    create_ca(
        &env,
        "c",
        "apn_PodC",
        &[("DaemonSet", "env-c"), ("StatefulSet", "subpath-c")],
    )
    .await;
    for ca in ["a", "b", "c"] {
        env.wait_synced(ca, 30).await;
    }
    let workloads = [
        ("Deployment", "vol-a", 2, "a", Consumer::Volume),
        ("Deployment", "proj-a", 1, "a", Consumer::Projected),
        ("Deployment", "env-a", 1, "a", Consumer::Env),
        ("StatefulSet", "env-b", 2, "b", Consumer::Env),
        ("Deployment", "subpath-b", 1, "b", Consumer::SubPath),
        ("DaemonSet", "subpath-a", 0, "a", Consumer::SubPath),
        ("StatefulSet", "subpath-c", 1, "c", Consumer::SubPath),
        ("DaemonSet", "env-c", 0, "c", Consumer::Env),
        ("Deployment", "vol-c", 1, "c", Consumer::Volume),
    ];
    let monitor = Monitor::start(
        env.plane(),
        vec![env.ns("team-a")],
        Duration::from_millis(500),
        oracle(&env),
    );
    for (kind, name, replicas, secret, consumer) in workloads {
        workload(&env, kind, name, replicas, template(name, secret, consumer)).await;
    }
    for (kind, name, ..) in workloads {
        wait_rolled_out(&env, kind, name, 90).await;
    }
    tokio::time::sleep(Duration::from_secs(330)).await;
    let report = monitor.stop().await;
    assert!(
        report.expired.is_empty(),
        "{} of {} pod samples held an expired token:\n{}",
        report.expired.len(),
        report.samples,
        describe_expired(&report)
    );
    assert_eq!(report.unknown_values, 0, "values the fake never issued");
    let unknown: Vec<&str> = report
        .pods
        .iter()
        .filter(|p| p.start_unknown)
        .map(|p| p.pod.as_str())
        .collect();
    assert!(
        unknown.is_empty(),
        "start values not determined: {unknown:?}"
    );
    for secret in ["a", "b", "c"] {
        let key = format!("{}/{secret}", env.ns("team-a"));
        let written = report.secret_values.get(&key).map_or(0, Vec::len);
        assert!(
            written >= 4,
            "Secret {key} held {written} tokens while sampled (3 refreshes expected)"
        );
    }
    for (kind, name, replicas, _, consumer) in workloads {
        let pods: Vec<&podview::PodRecord> = report
            .pods
            .iter()
            .filter(|p| p.pod.contains(&format!("/{name}-")) && p.first_running.is_some())
            .collect();
        match consumer {
            Consumer::Volume | Consumer::Projected => {
                for p in &pods {
                    assert!(
                        p.values.len() >= 3,
                        "{kind}/{name}: pod {} saw only {:?}",
                        p.pod,
                        p.values
                    );
                }
            }
            Consumer::Env | Consumer::SubPath => {
                // Rolled on each of at least two refreshes: new pods, really created and Running.
                let replicas = if kind == "DaemonSet" {
                    env.plane().nodes().len()
                } else {
                    replicas as usize
                };
                assert!(
                    pods.len() >= 3 * replicas,
                    "{kind}/{name}: only {} pod instances ran: {:?}",
                    pods.len(),
                    pods.iter().map(|p| &p.pod).collect::<Vec<_>>()
                );
                assert!(
                    pods.iter().all(|p| p.reads != Reads::File),
                    "{kind}/{name} sampled as a file consumer"
                );
            }
        }
    }
    // Pipedream refreshed every account at least the propagation time ahead: no risk reported.
    for ca in ["a", "b", "c"] {
        let obj = env.ca(ca).await.expect("the ConnectedAccount");
        let risk = obj["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodsAtRisk"))
            .cloned();
        assert_eq!(
            risk.as_ref().map(|c| c["status"].clone()),
            Some(json!("False")),
            "{ca}: {risk:?}"
        );
    }
    let props = report.propagation_secs();
    assert!(!props.is_empty(), "no propagation measured");
    eprintln!(
        "pod samples {}, propagation (Secret write -> pod file) min {:.1}s max {:.1}s over {} refreshes",
        report.samples,
        props.iter().cloned().fold(f64::MAX, f64::min),
        props.iter().cloned().fold(0.0, f64::max),
        props.len()
    );
}

/// A Secret created after the pod that mounts it: the kubelet retries the mount and the pod starts with a valid
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_created_after_its_pod_reaches_the_pod() {
    let Some(mut env) = start(vec![oauth_account("apn_Late1", Some(3600), 600)]).await else {
        return;
    };
    env.start_operator();
    workload(
        &env,
        "Deployment",
        "early",
        1,
        template("early", "late", Consumer::Volume),
    )
    .await;
    // The pod exists and waits for its volume.
    env.wait("the pod scheduled", 30, async || {
        let pods = env.list("v1", "Pod", &env.ns("team-a")).await;
        pods.iter()
            .find(|p| {
                p["metadata"]["labels"]["app"] == "early" && p["spec"]["nodeName"].is_string()
            })
            .map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    create_ca(&env, "late", "apn_Late1", &[]).await;
    env.wait_synced("late", 30).await;
    let expiry = oracle(&env);
    let token = env
        .wait("the pod's file to hold the token", 120, async || {
            let pods = env.list("v1", "Pod", &env.ns("team-a")).await;
            let pod = pods
                .iter()
                .find(|p| p["metadata"]["labels"]["app"] == "early")?;
            env.plane().pod_volume(pod, "creds")?.text(KEY)
        })
        .await;
    let exp = expiry(&token).expect("a token the fake issued");
    assert!(
        exp > Timestamp::now(),
        "the pod got an expired token: {token}"
    );
    wait_rolled_out(&env, "Deployment", "early", 30).await;
}

/// The README's worked example, as the README says: `examples/namespaces.yaml`, a default connection (here
/// pointed at the fake Pipedream, as the chart's `defaultConnection` values would make it),
/// `examples/connectedaccount-oauth.yaml` and `examples/deployment.yaml`, applied with kubectl; the Deployment's
/// pod then reads the token from its mounted file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_example_deployment_reads_a_fresh_token() {
    let Some(mut env) = start(vec![oauth_account("apn_Ab12Cd3", Some(3600), 600)]).await else {
        return;
    };
    let kubeconfig = env.kubeconfig.clone();
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(
            std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        )
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    kubectl(&["apply", "-f", "examples/namespaces.yaml"]);
    // The connection the README's Helm install creates (defaultConnection), pointed at the fake; named
    // `default` as the example expects (this binary's control plane holds no other).
    let ops = env.ns("ops");
    env.plane()
        .apply(&json!({"apiVersion": "pipedream-secrets.io/v1alpha1",
            "kind": "ClusterPipedreamConnection", "metadata": {"name": "default"},
            "spec": {"apiUrl": env.pd.url(),
                "auth": {"oauth": {"clientId": support::CLIENT_ID, "projectId": "proj_sys",
                    "clientSecretRef": {"name": "pd-oauth", "key": "client_secret", "namespace": ops}}},
                "access": [{"namespaces": ["team-a"]}]}}))
        .await
        .unwrap();
    env.watch_also = vec!["team-a".into()];
    env.start_operator();
    kubectl(&["apply", "-f", "examples/connectedaccount-oauth.yaml"]);
    kubectl(&["apply", "-f", "examples/deployment.yaml"]);
    let expiry = oracle(&env);
    let token = env
        .wait("the example pod's file to hold the token", 90, async || {
            // `team-a` itself, not this test's mapped namespace.
            let (_, pods, _) = env
                .plane()
                .request(
                    reqwest::Method::GET,
                    "/api/v1/namespaces/team-a/pods",
                    "",
                    None,
                )
                .await
                .ok()?;
            let pod = pods["items"]
                .as_array()?
                .iter()
                .find(|p| p["metadata"]["labels"]["app"] == "github-bot")?;
            env.plane().pod_volume(pod, "github")?.text("GITHUB_TOKEN")
        })
        .await;
    assert!(token.starts_with("tok-apn_Ab12Cd3-g"), "{token}");
    assert!(expiry(&token).is_some_and(|e| e > Timestamp::now()));
    let (_, ca, _) = env
        .plane()
        .request(
            reqwest::Method::GET,
            "/apis/pipedream-secrets.io/v1alpha1/namespaces/team-a/connectedaccounts/github-bot",
            "",
            None,
        )
        .await
        .unwrap();
    assert_eq!(ready_of(&ca).as_deref(), Some("True/SecretSynced"));
    kubectl(&["delete", "-f", "examples/deployment.yaml", "--wait=false"]);
    kubectl(&[
        "delete",
        "-f",
        "examples/connectedaccount-oauth.yaml",
        "--wait=false",
    ]);
}

/// A Pipedream that refreshes tokens less than the propagation time before they expire cannot be followed in time
/// by pods: the ConnectedAccount says so (condition `PodsAtRisk`, reason `RefreshTooLate`, and the
/// `connectedaccount_pods_at_risk` gauge), while an account refreshed in time reports no risk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipedream_that_refreshes_too_late_for_pods_is_reported_as_a_risk() {
    let port = pdso_testkit::controlplane::free_port();
    let accounts = vec![
        oauth_account("apn_Tight1", Some(60), 30),
        oauth_account("apn_Roomy1", Some(3600), 600),
    ];
    let Some(mut env) = start(accounts).await else {
        return;
    };
    env.extra_args = vec![format!("--metrics-addr=127.0.0.1:{port}")];
    env.start_operator();
    create_ca(&env, "tight", "apn_Tight1", &[]).await;
    create_ca(&env, "roomy", "apn_Roomy1", &[]).await;
    env.wait_synced("tight", 30).await;
    env.wait_synced("roomy", 30).await;
    let condition = |ca: &Value| {
        ca["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodsAtRisk"))
            .cloned()
    };
    let tight = env.ca("tight").await.unwrap();
    let c = condition(&tight).expect("a PodsAtRisk condition");
    assert_eq!(c["status"], "True", "{c}");
    assert_eq!(c["reason"], "RefreshTooLate", "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(msg.contains("100s"), "names the propagation time: {msg}");
    let roomy = env.ca("roomy").await.unwrap();
    let c = condition(&roomy).expect("a PodsAtRisk condition");
    assert_eq!(c["status"], "False", "{c}");
    let scrape = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| {
        scrape
            .lines()
            .find(|l| {
                l.starts_with("pipedream_secrets_connectedaccount_pods_at_risk{")
                    && l.contains(&format!("name=\"{name}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(gauge("tight"), Some(1.0), "{scrape}");
    assert_eq!(gauge("roomy"), Some(0.0), "{scrape}");
    // The next token (Pipedream refreshes every 30 s) replaces one that expires 30 s later: the lead is
    // recorded in status and in the lead gauge.
    let lead = env
        .wait("a refresh of the tight account", 60, async || {
            env.ca("tight").await?["status"]["refreshLeadSeconds"].as_i64()
        })
        .await;
    assert!((20..=35).contains(&lead), "lead {lead}s");
    let scrape = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.lines().any(|l| l
            .starts_with("pipedream_secrets_connectedaccount_refresh_lead_seconds{")
            && l.contains("name=\"tight\"")),
        "{scrape}"
    );
    // The chart's PodsAtRisk alert is tested on this scrape (tests/chart/test_chart.py).
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("scrape-pods-at-risk.txt"), &scrape).unwrap();
}
