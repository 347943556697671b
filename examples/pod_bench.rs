//! What pods read, at scale: the real operator binary (release) on a real control plane with hollow nodes (the
//! real kubelet and its Secret volume plugin over a fake container runtime, `pdso_testkit::controlplane::node`),
//! ConnectedAccounts whose short tokens Pipedream (the fake) refreshes ahead of expiry, and ~200 consumer pods.
//!
//! ```sh
//! cargo build --release && cargo run --release --example pod_bench -- --pods 200 --nodes 2
//! ```
//!
//! Prints a Markdown table and writes JSON (`--json`, default `target/pod-bench.json`): propagation (Secret write →
//! pod file) per refresh (min, median, p99, max), pod samples and expired ones (`pdso_testkit::podview`: file
//! consumers read their mounted file, env consumers are judged by what they started with and are rolled by
//! `rolloutRestartTargets`), rollouts, and the API cost of following the Secrets: the kubelets' Secret requests
//! (their watches, from the audit log) beside the operator's own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pdso_testkit::controlplane::node::{KUBELET_USER, NodeOptions};
use pdso_testkit::controlplane::{ControlPlane, OPERATOR};
use pdso_testkit::pipedream::{FakeAccount, FakePipedream, Seed};
use pdso_testkit::podview::{KEY_ANNOTATION, Monitor, READS_LABEL, VOLUME_ANNOTATION};
use serde_json::{Value, json};

struct Args {
    pods: usize,
    nodes: usize,
    accounts: usize,
    secs: u64,
    token_secs: u64,
    lead_secs: u64,
    sync_secs: u64,
    json: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        pods: 200,
        nodes: 2,
        accounts: 10,
        secs: 330,
        token_secs: 180,
        lead_secs: 100,
        sync_secs: 60,
        json: PathBuf::from("target/pod-bench.json"),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).expect("a value after each flag");
        match pair[0].as_str() {
            "--pods" => a.pods = val.parse().expect("--pods N"),
            "--nodes" => a.nodes = val.parse().expect("--nodes N"),
            "--accounts" => a.accounts = val.parse().expect("--accounts N"),
            "--secs" => a.secs = val.parse().expect("--secs S"),
            "--token-secs" => a.token_secs = val.parse().expect("--token-secs S"),
            "--lead-secs" => a.lead_secs = val.parse().expect("--lead-secs S"),
            "--sync-secs" => a.sync_secs = val.parse().expect("--sync-secs S"),
            "--json" => a.json = PathBuf::from(val),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn operator_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PDSO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("pipedream-secrets-operator"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --release` first (or set PDSO_BIN)",
        bin.display()
    );
    bin
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// A pod template reading Secret `secret`: its file on each use, or (`env`) an environment variable set at start.
fn template(app: &str, secret: &str, env: bool) -> Value {
    let (reads, envs) = if env {
        (
            "at-start",
            json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "oauth_access_token"}}}]),
        )
    } else {
        ("file", json!([]))
    };
    json!({
        "metadata": {"labels": {"app": app, READS_LABEL: reads},
                     "annotations": {VOLUME_ANNOTATION: "creds", KEY_ANNOTATION: "oauth_access_token"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "env": envs,
                                 "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
                 "volumes": [{"name": "creds", "secret": {"secretName": secret}}]}
    })
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args();
    let per_node = a.pods.div_ceil(a.nodes) as u32 + 20;
    let cp = ControlPlane::start_with_nodes(NodeOptions {
        count: a.nodes,
        sync_frequency: Duration::from_secs(a.sync_secs),
        max_pods: per_node,
    })
    .expect("control plane binaries (KUBEBUILDER_ASSETS or ../shared/kube)");
    let accounts: Vec<FakeAccount> = (0..a.accounts)
        .map(|i| FakeAccount {
            id: format!("apn_Pods{i}"),
            project_id: "proj_bench".into(),
            credentials: json!({"oauth_access_token": format!("tok-{i}")})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            lifetime_secs: Some(a.token_secs),
            refresh_lead_secs: a.lead_secs,
            ..Default::default()
        })
        .collect();
    let pd = FakePipedream::start(Seed {
        clients: [("oa_bench".to_string(), "bench-secret".to_string())].into(),
        accounts,
        ..Default::default()
    })
    .await
    .expect("fake Pipedream");
    let ns = "bench";
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pd-oauth", "namespace": "ops"},
               "stringData": {"client_secret": "bench-secret"}}),
        json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ClusterPipedreamConnection",
               "metadata": {"name": "default"},
               "spec": {"apiUrl": pd.url(), "rateLimit": {"requestsPerSecond": 50, "burst": 50},
                        "auth": {"oauth": {"clientId": "oa_bench", "projectId": "proj_bench",
                            "clientSecretRef": {"name": "pd-oauth", "key": "client_secret", "namespace": "ops"}}},
                        "access": [{"namespaces": [ns]}]}}),
    ] {
        cp.apply(&obj).await.expect("apply");
    }
    let dir = std::env::temp_dir().join(format!("pod-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("operator.kubeconfig");
    std::fs::write(&kubeconfig, cp.kubeconfig(OPERATOR)).expect("kubeconfig");
    let mut operator = Command::new(operator_binary())
        .args([
            "run",
            "--operator-namespace=ops",
            "--default-connection=default",
            "--log-level=warn",
            "--leader-election=false",
            "--metrics-addr=127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("operator");
    // Per account: file consumers, and two env consumers rolled by the operator.
    let env_pods = 2;
    let file_pods = (a.pods / a.accounts).saturating_sub(env_pods).max(1);
    let pd_view = pd.clone();
    let monitor = Monitor::start(&cp, vec![ns.into()], Duration::from_secs(1), move |t| {
        pd_view.token_expiry(t)
    });
    for i in 0..a.accounts {
        let (secret, vol, envd) = (format!("acct-{i}"), format!("vol-{i}"), format!("env-{i}"));
        cp.apply(
            &json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": secret, "namespace": ns},
            "spec": {"accountId": format!("apn_Pods{i}"),
                     "rolloutRestartTargets": [{"kind": "Deployment", "name": envd}]}}),
        )
        .await
        .expect("ConnectedAccount");
        for (name, replicas, env) in [(&vol, file_pods, false), (&envd, env_pods, true)] {
            cp.apply(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                         "template": template(name, &secret, env)}}))
                .await
                .expect("Deployment");
        }
    }
    let total = a.accounts * (file_pods + env_pods);
    eprintln!("{total} pods on {} nodes; waiting for them to run", a.nodes);
    let started = std::time::Instant::now();
    loop {
        let (_, pods, _) = cp
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/namespaces/{ns}/pods"),
                "",
                None,
            )
            .await
            .expect("pods");
        let running = pods["items"].as_array().map_or(0, |p| {
            p.iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count()
        });
        if running >= total || started.elapsed() > Duration::from_secs(300) {
            eprintln!(
                "{running} pods Running after {:.0}s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let before_kubelet = cp.requests_by(KUBELET_USER);
    let before_operator = cp.requests_by(OPERATOR);
    tokio::time::sleep(Duration::from_secs(a.secs)).await;
    let report = monitor.stop().await;
    let after_kubelet = cp.requests_by(KUBELET_USER);
    let after_operator = cp.requests_by(OPERATOR);
    let _ = operator.kill();
    let _ = operator.wait();
    let diff = |after: &std::collections::BTreeMap<(String, String), u64>,
                before: &std::collections::BTreeMap<(String, String), u64>| {
        after
            .iter()
            .map(|(k, v)| {
                (
                    format!("{} {}", k.0, k.1),
                    v - before.get(k).copied().unwrap_or(0),
                )
            })
            .filter(|(_, v)| *v > 0)
            .collect::<std::collections::BTreeMap<String, u64>>()
    };
    let kubelet_secrets = diff(&after_kubelet, &before_kubelet);
    let operator_requests = diff(&after_operator, &before_operator);
    let kubelet_watches_total: u64 = after_kubelet
        .iter()
        .filter(|((verb, res), _)| verb == "watch" && res == "secrets")
        .map(|(_, v)| v)
        .sum();
    let props = report.propagation_secs();
    let refreshes: usize = report
        .secret_values
        .values()
        .map(|v| v.len().saturating_sub(1))
        .sum();
    let at_start: Vec<_> = report
        .pods
        .iter()
        .filter(|p| p.reads == pdso_testkit::podview::Reads::AtStart)
        .collect();
    let out = json!({
        "pods": total, "nodes": a.nodes, "accounts": a.accounts, "window_secs": a.secs,
        "token_secs": a.token_secs, "lead_secs": a.lead_secs, "kubelet_sync_secs": a.sync_secs,
        "samples": report.samples, "expired_samples": report.expired.len(),
        "unknown_start_values": report.pods.iter().filter(|p| p.start_unknown).count(),
        "secret_refreshes": refreshes,
        "propagation_s": {"n": props.len(), "min": percentile(&props, 0.0), "p50": percentile(&props, 0.5),
                          "p99": percentile(&props, 0.99), "max": percentile(&props, 1.0)},
        "env_pod_instances": at_start.len(),
        "kubelet_secret_watches_open_total": kubelet_watches_total,
        "kubelet_secret_requests_in_window": kubelet_secrets,
        "operator_requests_in_window": operator_requests,
    });
    println!(
        "| pod view, {total} pods on {} nodes, {}s window | |",
        a.nodes, a.secs
    );
    println!("|---|---:|");
    println!(
        "| tokens: lifetime / Pipedream's lead (s) | {} / {} |",
        a.token_secs, a.lead_secs
    );
    println!("| kubelet syncFrequency (s) | {} |", a.sync_secs);
    println!("| Secret refreshes in the window | {refreshes} |");
    println!(
        "| pod samples / expired | {} / {} |",
        report.samples,
        report.expired.len()
    );
    println!(
        "| propagation Secret write → pod file, s (n={}): min / p50 / p99 / max | {:.1} / {:.1} / {:.1} / {:.1} |",
        props.len(),
        percentile(&props, 0.0),
        percentile(&props, 0.5),
        percentile(&props, 0.99),
        percentile(&props, 1.0)
    );
    println!(
        "| env-consumer pod instances (rolled by rolloutRestartTargets) | {} |",
        at_start.len()
    );
    println!("| kubelets' Secret watches opened (whole run) | {kubelet_watches_total} |");
    println!("| kubelets' Secret requests in the window | {kubelet_secrets:?} |");
    println!("| operator's requests in the window | {operator_requests:?} |");
    if let Some(parent) = a.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        &a.json,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    )
    .expect("json");
    let _ = std::fs::remove_dir_all(&dir);
    if !report.expired.is_empty() {
        eprintln!(
            "expired samples, first: {:?}",
            &report.expired[..report.expired.len().min(5)]
        );
        std::process::exit(1);
    }
}
