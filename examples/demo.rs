//! One-command local demo: `cargo run --example demo` (add `-- --cycles 3` to stop after three rotations).
//!
//! Starts the test kit's Kubernetes API emulator and fake Pipedream, runs the operator against them, applies the
//! example connection and ConnectedAccount (with 30-second tokens), and prints every write of the Secret with
//! timestamps, showing each refresh landing before the previous token expires. No cluster, no Pipedream account.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use pdso_testkit::apiserver::ApiServer;
use pdso_testkit::pipedream::{FakeAccount, FakePipedream, Seed};
use pipedream_secrets_operator::cli::{LogFormat, RunArgs};
use serde_json::{Value, json};

const LIFETIME: u64 = 30;

fn now() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

async fn apply(client: &Client, yaml_file: &str, edit: impl Fn(&mut Value)) -> Result<(), String> {
    let text = std::fs::read_to_string(yaml_file).map_err(|e| format!("{yaml_file}: {e}"))?;
    for doc in text.split("\n---").filter(|d| d.contains("kind:")) {
        let mut obj: Value =
            serde_saphyr::from_str(doc).map_err(|e| format!("{yaml_file}: {e}"))?;
        edit(&mut obj);
        let (group, version) = match obj["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                obj["apiVersion"].as_str().unwrap_or("v1").to_string(),
            ),
        };
        let gvk = kube::core::GroupVersionKind::gvk(
            &group,
            &version,
            obj["kind"].as_str().unwrap_or_default(),
        );
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|e| e.to_string())?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api: Api<kube::core::DynamicObject> =
            match (caps.scope, obj["metadata"]["namespace"].as_str()) {
                (kube::discovery::Scope::Namespaced, Some(ns)) => {
                    Api::namespaced_with(client.clone(), ns, &ar)
                }
                _ => Api::all_with(client.clone(), &ar),
            };
        api.patch(
            &name,
            &PatchParams::apply("demo").force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cycles: Option<usize> = std::env::args()
        .skip_while(|a| a != "--cycles")
        .nth(1)
        .and_then(|n| n.parse().ok());

    let api = ApiServer::start().await.map_err(|e| e.to_string())?;
    api.apply_crd_dir(std::path::Path::new("crds"))?;
    let pd = FakePipedream::start(Seed {
        clients: [("oa_demo".to_string(), "demo-client-secret".to_string())].into(),
        accounts: vec![FakeAccount {
            id: "apn_Ab12Cd3".into(),
            project_id: "proj_demo".into(),
            credentials: json!({"oauth_access_token": "gho_demo", "oauth_refresh_token": "r"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            lifetime_secs: Some(LIFETIME),
            refresh_lead_secs: 10,
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let kubeconfig =
        std::env::temp_dir().join(format!("pdso-demo-{}.kubeconfig", std::process::id()));
    api.write_kubeconfig(&kubeconfig)
        .map_err(|e| e.to_string())?;
    println!(
        "{}  Kubernetes API emulator on {} (kubeconfig: {})",
        now(),
        api.url(),
        kubeconfig.display()
    );
    println!(
        "{}  fake Pipedream on {} ({LIFETIME}s tokens, refreshed by Pipedream 10s before expiry)",
        now(),
        pd.url()
    );

    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).map_err(|e| e.to_string())?,
        &KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let url = pd.url();
    apply(&client, "examples/namespaces.yaml", |_| {}).await?;
    apply(&client, "examples/connection-oauth.yaml", |o| {
        if o["kind"] == "Secret" {
            o["stringData"]["client_secret"] = json!("demo-client-secret");
        } else {
            o["spec"]["apiUrl"] = json!(url);
            o["spec"]["auth"]["oauth"]["clientId"] = json!("oa_demo");
            o["spec"]["auth"]["oauth"]["projectId"] = json!("proj_demo");
        }
    })
    .await?;
    apply(&client, "examples/connectedaccount-oauth.yaml", |o| {
        o["spec"]["refresh"]["beforeExpiry"] = json!("5s")
    })
    .await?;
    println!(
        "{}  applied examples/connection-oauth.yaml and examples/connectedaccount-oauth.yaml",
        now()
    );

    // The operator, in this process, against the emulator.
    let args = RunArgs {
        namespaces: vec![],
        operator_namespace: "pipedream-secrets-operator".into(),
        default_connection: None,
        concurrency: 4,
        metrics_addr: "127.0.0.1:0".parse().map_err(|_| "addr")?,
        health_addr: None,
        metrics_secure: false,
        metrics_cert_dir: None,
        request_timeout_seconds: 10,
        pipedream_ca_file: None,
        log_format: LogFormat::Text,
        log_level: "warn".into(),
        pod_name: None,
        disable_cluster_connections: false,
        leader_election: true,
        leader_election_lease: "pipedream-secrets-operator".into(),
        leader_election_duration_seconds: 15,
        shard: Default::default(),
        allowed_api_hosts: vec!["api.pipedream.com".into()],
        propagation_time: std::time::Duration::from_secs(100),
    };
    let operator = tokio::spawn(pipedream_secrets_operator::commands::run_with_kubeconfig(
        args,
        kubeconfig.clone(),
    ));
    println!(
        "{}  operator started; watching Secret team-a/github-bot-credentials (Ctrl-C or SIGTERM stops)\n",
        now()
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team-a");
    let wc = watcher::Config::default().fields("metadata.name=github-bot-credentials");
    let mut stream = watcher(secrets, wc).applied_objects().boxed();
    let mut last_rv = String::new();
    let mut writes = 0usize;
    // Ctrl-C or SIGTERM (a supervisor, `timeout`, a CI step) stops the demo.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            ev = stream.next() => match ev {
                Some(Ok(s)) => {
                    if s.resource_version().unwrap_or_default() == last_rv { continue; }
                    last_rv = s.resource_version().unwrap_or_default();
                    let token = s.data.as_ref().and_then(|d| d.get("GITHUB_TOKEN")).map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default();
                    let exp = s.annotations().get("pipedream-secrets.io/expires-at").cloned().unwrap_or_default();
                    let left = exp.parse::<jiff::Timestamp>().map(|e| e.duration_since(jiff::Timestamp::now()).as_secs()).unwrap_or(0);
                    writes += 1;
                    println!("{}  Secret written ({}): GITHUB_TOKEN={token}  expires {exp} (in {left}s)",
                        now(), if writes == 1 { "created" } else { "refreshed" });
                    if cycles.is_some_and(|c| writes > c) { break; }
                }
                Some(Err(e)) => eprintln!("{}  watch error: {e}", now()),
                None => break,
            }
        }
    }
    println!("\n{}  Pipedream calls: {:?}", now(), pd.counts());
    operator.abort();
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}
