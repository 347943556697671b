//! What each subcommand does.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::cli::RunArgs;
use crate::cli::error::{CommandError, NotReady};
use crate::controller::{self, RunConfig, Settings};
use crate::crd::{self, ConnectedAccount, TemplateSpec};
use crate::metrics::Metrics;
use crate::pipedream::{self, Account, Credentials};
use crate::{http, telemetry, template};

/// Resolves on the first SIGTERM or SIGINT.
pub fn shutdown_signal() -> Shared<BoxFuture<'static, ()>> {
    async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        info!("shutdown signal received; draining");
    }
    .boxed()
    .shared()
}

/// `run`: watch and reconcile until SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), CommandError> {
    telemetry::init(args.log_format, &args.log_level);
    refuse_flags(&args)?;
    let config = kube::Config::infer().await?;
    run_with_config(args, config).await
}

/// `run` against the cluster of a given kubeconfig file (the local demo uses this).
pub async fn run_with_kubeconfig(
    args: RunArgs,
    kubeconfig: std::path::PathBuf,
) -> Result<(), CommandError> {
    telemetry::init(args.log_format, &args.log_level);
    refuse_flags(&args)?;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|source| {
        CommandError::ReadKubeconfig {
            path: kubeconfig.clone(),
            source,
        }
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    run_with_config(args, config).await
}

/// Flag combinations `run` refuses before it touches anything.
fn refuse_flags(args: &RunArgs) -> Result<(), CommandError> {
    // Shards of different counts never write at once only because a new shard waits on the old ones' Leases.
    if args.shard.count() > 1 && !args.leader_election {
        return Err(CommandError::ShardsNeedElection(args.shard));
    }
    Ok(())
}

async fn run_with_config(args: RunArgs, config: kube::Config) -> Result<(), CommandError> {
    let endpoints = http::Endpoints {
        metrics_addr: args.metrics_addr,
        health_addr: args.health_addr,
        secure: args.metrics_secure,
        cert_dir: args.metrics_cert_dir.clone(),
    };
    endpoints.validate()?;
    let metrics = Arc::new(Metrics::new());
    // Every request to the API server is counted by method and code (kubernetes_requests_total).
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(CommandError::BuildClient)?
        .with_layer(&crate::metrics::KubeRequestMetrics::new(metrics.clone()))
        .build();
    let namespaces = args.watched_namespaces();
    // Fail early and clearly when the CRDs are missing or RBAC forbids reading them.
    let probe: Api<ConnectedAccount> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe
        .list(&ListParams::default().limit(1))
        .await
        .map_err(CommandError::ProbeCrds)?;
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = shutdown_signal();
    // Bound (and the certificate read) before any controller starts: a taken port or a bad certificate stops here.
    let servers =
        http::Servers::bind(&endpoints, metrics.clone(), ready.clone(), client.clone()).await?;
    let server = tokio::spawn(servers.serve(shutdown.clone()));
    let config = RunConfig {
        namespaces,
        settings: Settings {
            operator_namespace: args.operator_namespace.clone(),
            default_connection: args.default_connection.clone(),
            cluster_connections_disabled: args.disable_cluster_connections,
            allowed_api_hosts: controller::AllowedHosts::new(args.allowed_api_hosts.clone()),
            shard: args.shard,
            propagation: args.propagation_time,
        },
        concurrency: args.concurrency,
        request_timeout: std::time::Duration::from_secs(args.request_timeout_seconds.max(1)),
        pipedream_ca_file: args.pipedream_ca_file.clone(),
        instance: args.pod_name.clone(),
        leader_election: args.leader_election.then(|| controller::LeaderElection {
            lease: args.leader_election_lease.clone(),
            duration_secs: args.leader_election_duration_seconds.max(2),
        }),
    };
    info!(namespaces = ?config.namespaces, default_connection = ?config.settings.default_connection, shard = %config.settings.shard, "starting");
    controller::run(client, config, metrics, ready, shutdown).await?;
    server.await.map_err(CommandError::ServerTask)?;
    info!("stopped");
    Ok(())
}

/// `crd`: print every CRD, or write one file each into `dir`.
pub fn crd(dir: Option<&Path>) -> Result<(), CommandError> {
    for c in crd::all_crds() {
        let yaml = crd::crd_yaml(&c).map_err(CommandError::SerializeCrd)?;
        match dir {
            Some(d) => {
                let path = d.join(crd::crd_file_name(&c));
                std::fs::write(&path, yaml)
                    .map_err(|source| CommandError::WriteFile { path, source })?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

/// `render`: the Secret data a ConnectedAccount would get from the given credentials, printed as YAML.
pub fn render(manifest: &Path, credentials: &Path) -> Result<(), CommandError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CommandError::ReadFile { path, source }
    };
    let text = std::fs::read_to_string(manifest).map_err(read(manifest))?;
    let doc: serde_json::Value =
        serde_saphyr::from_str(&text).map_err(|source| CommandError::ParseManifest {
            path: manifest.to_path_buf(),
            source: Box::new(source),
        })?;
    let tpl: Option<TemplateSpec> = match doc.pointer("/spec/target/template") {
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(CommandError::TemplateSpec)?),
        None => None,
    };
    let raw = std::fs::read(credentials).map_err(read(credentials))?;
    let value: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|source| CommandError::CredentialsNotJson {
            path: credentials.to_path_buf(),
            source,
        })?;
    let account = if value.get("credentials").is_some() || value.get("data").is_some() {
        pipedream::parse_account("file", &raw).map_err(CommandError::ParseAccount)?
    } else {
        let map = value
            .as_object()
            .cloned()
            .ok_or(CommandError::CredentialsNotObject)?;
        Account {
            id: "apn_local".into(),
            name: None,
            external_id: None,
            healthy: Some(true),
            dead: Some(false),
            app: None,
            credentials: Some(Credentials::from_map(map)),
            expires_at: None,
            error: None,
            next_refresh_at: None,
            last_refreshed_at: None,
        }
    };
    let creds = account.credentials.clone().unwrap_or_default();
    let data = match &tpl {
        Some(t) => template::render(&t.data, &creds, &account, account.expires_at.as_deref())?,
        None => template::raw_data(&creds, None).0,
    };
    let out: std::collections::BTreeMap<String, String> = data
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    print!(
        "{}",
        serde_saphyr::to_string(&out).map_err(CommandError::PrintYaml)?
    );
    Ok(())
}

/// `check`: authenticate with a connection, optionally fetch one account, print what matters (no secret values).
pub async fn check(
    connection: String,
    namespace: Option<String>,
    account: Option<String>,
    pipedream_ca_file: Option<std::path::PathBuf>,
    wait: Option<std::time::Duration>,
) -> Result<(), CommandError> {
    let client = Client::try_default()
        .await
        .map_err(CommandError::BuildClient)?;
    if let Some(timeout) = wait {
        wait_until_ready(&client, &connection, namespace.as_deref(), timeout).await?;
    }
    let (id, settings, loader) =
        connection_parts(&client, &connection, namespace.as_deref()).await?;
    let mode = match &settings.mode {
        pipedream::ApiMode::Connect {
            project_id,
            environment,
        } => {
            format!("oauth, project {project_id}, {}", environment.as_str())
        }
        pipedream::ApiMode::ApiKey { path } => format!("apiKey, {path:?}"),
    };
    println!("connection    {id} ({}, {mode})", settings.api_url);
    let roots = match pipedream_ca_file {
        Some(path) => pipedream::load_roots(&path)?,
        None => Vec::new(),
    };
    let http = pipedream::http_client(std::time::Duration::from_secs(30), &roots)
        .map_err(CommandError::HttpClient)?;
    let pd = pipedream::PipedreamClient::new(http, settings, loader, None);
    pd.check_auth().await.map_err(CommandError::Auth)?;
    println!("auth          ok");
    let Some(account_id) = account else {
        return Ok(());
    };
    let fetched =
        pd.fetch_account(&account_id)
            .await
            .map_err(|source| CommandError::FetchAccount {
                id: account_id.clone(),
                source,
            })?;
    print_account(&fetched.account);
    Ok(())
}

/// The connection `check` names (cluster-wide without a namespace): how it is shown, and what a Pipedream client
/// needs of it.
async fn connection_parts(
    client: &Client,
    connection: &str,
    namespace: Option<&str>,
) -> Result<(String, pipedream::ClientSettings, pipedream::MaterialLoader), CommandError> {
    use crate::crd::{ClusterPipedreamConnection, PipedreamConnection};
    let read = |what: String| move |source| CommandError::Read { what, source };
    Ok(match namespace {
        Some(ns) => {
            let c = Api::<PipedreamConnection>::namespaced(client.clone(), ns)
                .get(connection)
                .await
                .map_err(read(format!("PipedreamConnection {ns}/{connection}")))?;
            let (settings, loader) = controller::client_parts(client.clone(), &c.spec, Some(ns))?;
            (
                format!("PipedreamConnection/{ns}/{connection}"),
                settings,
                loader,
            )
        }
        None => {
            let c = Api::<ClusterPipedreamConnection>::all(client.clone())
                .get(connection)
                .await
                .map_err(read(format!("ClusterPipedreamConnection {connection}")))?;
            let (settings, loader) = controller::client_parts(client.clone(), &c.spec, None)?;
            (
                format!("ClusterPipedreamConnection/{connection}"),
                settings,
                loader,
            )
        }
    })
}

/// What `check --account` prints of an account: no credential values, only their field names.
fn print_account(a: &Account) {
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("account       {}", a.id);
    println!("app           {}", show(a.app_slug().map(str::to_string)));
    println!("external id   {}", show(a.external_id.clone()));
    println!("healthy       {}", show(a.healthy.map(|b| b.to_string())));
    println!("dead          {}", show(a.dead.map(|b| b.to_string())));
    if let Some(e) = &a.error {
        println!(
            "error         {}",
            e.to_string().chars().take(200).collect::<String>()
        );
    }
    let left = a
        .expires_at
        .as_deref()
        .and_then(crate::schedule::parse_ts)
        .map(|t| {
            format!(
                " (in {}s)",
                t.duration_since(jiff::Timestamp::now()).as_secs()
            )
        })
        .unwrap_or_default();
    println!("expires at    {}{left}", show(a.expires_at.clone()));
    println!("next refresh  {}", show(a.next_refresh_at.clone()));
    match &a.credentials {
        Some(c) => {
            let fields = c.expose();
            let names: Vec<&String> = fields.keys().collect();
            println!(
                "credentials   {} field(s): {} (values not shown)",
                names.len(),
                names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        None => println!("credentials   none returned (OAuth accounts need your own OAuth client)"),
    }
}

/// The kinds the CRDs serve, as discovery lists them (served means established).
const KINDS: [&str; 3] = [
    "connectedaccounts",
    "pipedreamconnections",
    "clusterpipedreamconnections",
];

/// `check --wait`: until the CRDs are served and the operator reports the connection Ready for its current
/// generation, which proves an install end to end (cmctl's `check api --wait`; the chart's `helm test`).
async fn wait_until_ready(
    client: &Client,
    connection: &str,
    namespace: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(), CommandError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let why = match readiness(client, connection, namespace).await {
            Ok(()) => {
                println!("ready         CRDs served; the operator reports the connection Ready");
                return Ok(());
            }
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(CommandError::NotReady { timeout, why });
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Why the install is not ready yet, if it is not.
async fn readiness(
    client: &Client,
    connection: &str,
    namespace: Option<&str>,
) -> Result<(), NotReady> {
    use crate::crd::{ClusterPipedreamConnection, ConnectionStatus, PipedreamConnection};
    let served = client
        .list_api_group_resources("pipedream-secrets.io/v1alpha1")
        .await
        .map(|l| l.resources.into_iter().map(|r| r.name).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(missing) = KINDS.iter().find(|k| !served.iter().any(|s| s == *k)) {
        return Err(NotReady::CrdsNotServed(missing));
    }
    let (what, generation, status): (String, Option<i64>, Option<ConnectionStatus>) =
        match namespace {
            Some(ns) => {
                let what = format!("PipedreamConnection {ns}/{connection}");
                let c = match Api::<PipedreamConnection>::namespaced(client.clone(), ns)
                    .get_opt(connection)
                    .await
                {
                    Ok(Some(c)) => c,
                    Ok(None) => return Err(NotReady::Missing(what)),
                    Err(source) => return Err(NotReady::Unreadable { what, source }),
                };
                (what, c.metadata.generation, c.status)
            }
            None => {
                let what = format!("ClusterPipedreamConnection {connection}");
                let c = match Api::<ClusterPipedreamConnection>::all(client.clone())
                    .get_opt(connection)
                    .await
                {
                    Ok(Some(c)) => c,
                    Ok(None) => return Err(NotReady::Missing(what)),
                    Err(source) => return Err(NotReady::Unreadable { what, source }),
                };
                (what, c.metadata.generation, c.status)
            }
        };
    let status = status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::crd::READY);
    match ready {
        Some(c) if status.observed_generation == generation && c.status == "True" => Ok(()),
        Some(c) if status.observed_generation == generation => Err(NotReady::NotReady {
            what,
            reason: c.reason.clone(),
            message: c.message.clone(),
        }),
        _ => Err(NotReady::NoStatus {
            what,
            cluster: namespace.is_none(),
        }),
    }
}

/// `version`: this binary's, and unless `client_only`, the API server's and the operator's as its Deployments
/// (`app.kubernetes.io/name=pipedream-secrets-operator`) say.
pub async fn version(client_only: bool) -> Result<(), CommandError> {
    println!(
        "client        pipedream-secrets-operator {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        crate::metrics::GIT_COMMIT
    );
    if client_only {
        return Ok(());
    }
    let client = Client::try_default()
        .await
        .map_err(CommandError::BuildClient)?;
    let server = client
        .apiserver_version()
        .await
        .map_err(CommandError::ServerVersion)?;
    println!("kubernetes    {}", server.git_version);
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::all(client);
    let lp = kube::api::ListParams::default()
        .labels("app.kubernetes.io/name=pipedream-secrets-operator");
    match deployments.list(&lp).await {
        Ok(list) if list.items.is_empty() => println!("operator      not found"),
        Ok(list) => {
            for d in list.items {
                let version = d
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/version"))
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                let image = d
                    .spec
                    .template
                    .spec
                    .and_then(|p| p.containers.into_iter().next())
                    .and_then(|c| c.image)
                    .unwrap_or_else(|| "-".into());
                println!(
                    "operator      {version} ({}/{}, image {image})",
                    d.metadata.namespace.unwrap_or_default(),
                    d.metadata.name.unwrap_or_default()
                );
            }
        }
        Err(e) => println!("operator      unknown: cannot list Deployments ({e})"),
    }
    Ok(())
}
