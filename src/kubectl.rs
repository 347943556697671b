//! The kubectl-style subcommands (`status`, `sync`), with kubectl's `--kubeconfig`, `--context`, `-n` (default:
//! the context's namespace) and `-A`. What they show is built by [`crate::status_view`]; this is the I/O.

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::cli::error::CommandError;
use crate::cli::{KubeArgs, Output};
use crate::crd::{
    ClusterPipedreamConnection, ConnectedAccount, FORCE_SYNC_ANNOTATION, PipedreamConnection,
};
use crate::status_view::{self, ConnectionState, Detail, EventLine, SecretState};

/// A client for `--kubeconfig`/`--context`, and the namespace to use (`-n`, else the context's, else `default`;
/// `None` with `-A`).
async fn client(args: &KubeArgs) -> Result<(Client, Option<String>), CommandError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kc =
                Kubeconfig::read_from(path).map_err(|source| CommandError::ReadKubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &options).await?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
        (None, None) => kube::Config::infer().await?,
    };
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| config.default_namespace.clone()),
        )
    };
    let client = Client::try_from(config).map_err(CommandError::BuildClient)?;
    Ok((client, namespace))
}

fn accounts(client: &Client, namespace: Option<&str>) -> Api<ConnectedAccount> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn print(output: Output, value: &impl serde::Serialize) -> Result<(), CommandError> {
    let text = match output {
        Output::Json => {
            serde_json::to_string_pretty(value).map_err(CommandError::PrintJson)? + "\n"
        }
        Output::Yaml | Output::Table => {
            serde_saphyr::to_string(value).map_err(CommandError::PrintYaml)?
        }
    };
    print!("{text}");
    Ok(())
}

/// `status`: the table of ConnectedAccounts, or one in detail.
pub async fn status(
    name: Option<String>,
    args: KubeArgs,
    output: Output,
) -> Result<(), CommandError> {
    let (client, namespace) = client(&args).await?;
    if let Some(name) = name {
        let ns = namespace.ok_or(CommandError::NameNeedsNamespace)?;
        let detail = describe(&client, &ns, &name).await?;
        return match output {
            Output::Table => {
                print!("{}", status_view::describe(&detail));
                Ok(())
            }
            o => print(o, &detail),
        };
    }
    let list = accounts(&client, namespace.as_deref())
        .list(&ListParams::default())
        .await
        .map_err(CommandError::ListAccounts)?;
    let now = jiff::Timestamp::now();
    let mut rows: Vec<_> = list
        .items
        .iter()
        .map(|ca| status_view::row(ca, now))
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    match output {
        Output::Table if rows.is_empty() => println!("No ConnectedAccounts found."),
        Output::Table => print!("{}", status_view::table(&rows)),
        o => print(o, &rows)?,
    }
    Ok(())
}

/// What `status NAME` shows: read the ConnectedAccount, its Secret (key names only), its connection and recent
/// Events of both.
async fn describe(client: &Client, ns: &str, name: &str) -> Result<Detail, CommandError> {
    let ca = Api::<ConnectedAccount>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|source| CommandError::Read {
            what: format!("ConnectedAccount {ns}/{name}"),
            source,
        })?;
    let status = ca.status.clone().unwrap_or_default();
    let secret_name = status
        .secret_name
        .clone()
        .or_else(|| ca.spec.target.name.clone())
        .unwrap_or_else(|| name.to_string());
    let secret = match Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&secret_name)
        .await
    {
        Ok(s) => SecretState::of(&secret_name, s.as_ref()),
        Err(e) => SecretState::unreadable(&secret_name, &e.to_string()),
    };
    let connection = match status.connection.as_deref().and_then(|c| c.split_once('/')) {
        Some(("ClusterPipedreamConnection", c)) => {
            let got = Api::<ClusterPipedreamConnection>::all(client.clone())
                .get_opt(c)
                .await;
            ConnectionState::of(
                &format!("ClusterPipedreamConnection/{c}"),
                got.map(|o| o.map(|o| o.status.unwrap_or_default().conditions)),
            )
        }
        Some(("PipedreamConnection", c)) => {
            let got = Api::<PipedreamConnection>::namespaced(client.clone(), ns)
                .get_opt(c)
                .await;
            ConnectionState::of(
                &format!("PipedreamConnection/{c}"),
                got.map(|o| o.map(|o| o.status.unwrap_or_default().conditions)),
            )
        }
        _ => ConnectionState::unknown(),
    };
    let events = events_of(client, ns, name, &secret_name).await;
    Ok(Detail::build(
        &ca,
        secret,
        connection,
        events,
        jiff::Timestamp::now(),
    ))
}

/// Recent Events of a ConnectedAccount and of its Secret (none where they cannot be read).
async fn events_of(client: &Client, ns: &str, name: &str, secret_name: &str) -> Vec<EventLine> {
    let mut events = Vec::new();
    let api = Api::<Event>::namespaced(client.clone(), ns);
    for (kind, object) in [("ConnectedAccount", name), ("Secret", secret_name)] {
        let lp = ListParams::default().fields(&format!("involvedObject.name={object}"));
        if let Ok(list) = api.list(&lp).await {
            events.extend(
                list.items
                    .iter()
                    .filter(|e| e.involved_object.kind.as_deref() == Some(kind))
                    .map(EventLine::of),
            );
        }
    }
    events
}

/// The ConnectedAccounts `sync` marks, as namespace and name: those named in `namespace`, else those listed there
/// (every namespace for `None`) that match `selector`.
async fn sync_targets(
    client: &Client,
    names: Vec<String>,
    namespace: Option<String>,
    selector: Option<&str>,
) -> Result<Vec<(String, String)>, CommandError> {
    if !names.is_empty() {
        let ns = namespace.unwrap_or_default();
        return Ok(names.into_iter().map(|n| (ns.clone(), n)).collect());
    }
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    Ok(accounts(client, namespace.as_deref())
        .list(&lp)
        .await
        .map_err(CommandError::ListAccounts)?
        .items
        .iter()
        .map(|ca| (ca.namespace().unwrap_or_default(), ca.name_any()))
        .collect())
}

/// `sync`: set the force-sync annotation of the chosen ConnectedAccounts to a new value.
pub async fn sync(
    names: Vec<String>,
    all: bool,
    selector: Option<String>,
    args: KubeArgs,
) -> Result<(), CommandError> {
    if names.is_empty() && !all && selector.is_none() {
        return Err(CommandError::NothingNamed);
    }
    if !names.is_empty() && (all || selector.is_some()) {
        return Err(CommandError::NamesAndSelector);
    }
    let (client, namespace) = client(&args).await?;
    if !names.is_empty() && namespace.is_none() {
        return Err(CommandError::NamesNeedNamespace);
    }
    let targets = sync_targets(&client, names, namespace, selector.as_deref()).await?;
    if targets.is_empty() {
        println!("No ConnectedAccounts found.");
        return Ok(());
    }
    let value = jiff::Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {FORCE_SYNC_ANNOTATION: value}}});
    let mut failed = 0;
    for (ns, name) in &targets {
        let api = Api::<ConnectedAccount>::namespaced(client.clone(), ns);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => println!("connectedaccount {ns}/{name}: sync requested"),
            Err(e) => {
                failed += 1;
                eprintln!("connectedaccount {ns}/{name}: {e}");
            }
        }
    }
    match failed {
        0 => Ok(()),
        failed => Err(CommandError::NotMarked {
            failed,
            of: targets.len(),
        }),
    }
}

/// `uninstall`: stop the operator (scale its Deployments to zero, wait for their pods), then let every
/// ConnectedAccount go as its deletion would (release a retained Secret, remove the finalizer), then delete
/// `delete_cluster_connection` if given. Stopping comes first: a running operator would add the finalizer back on
/// its next pass.
pub async fn uninstall(
    operator_namespace: Option<String>,
    operator_selector: Option<String>,
    timeout: std::time::Duration,
    namespaces: Vec<String>,
    delete_cluster_connection: Option<String>,
    args: KubeArgs,
) -> Result<(), CommandError> {
    let (client, namespace) = client(&args).await?;
    if let Some(selector) = &operator_selector {
        stop_operator(&client, operator_namespace.as_deref(), selector, timeout).await?;
    }
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![namespace]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let mut items = Vec::new();
    for scope in &scopes {
        let list = accounts(&client, scope.as_deref())
            .list(&ListParams::default())
            .await
            .map_err(CommandError::ListAccounts)?;
        items.extend(list.items);
    }
    let_go_all(&client, &items).await?;
    if let Some(name) = &delete_cluster_connection {
        let api: Api<ClusterPipedreamConnection> = Api::all(client.clone());
        match api.delete(name, &Default::default()).await {
            Ok(_) => println!("clusterpipedreamconnection {name}: deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(CommandError::DeleteConnection {
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Let each of `items` go as its deletion would; each one's failure is printed, their count is the error.
async fn let_go_all(client: &Client, items: &[ConnectedAccount]) -> Result<(), CommandError> {
    let (mut released, mut failed) = (0, 0);
    for ca in items {
        let (ns, name) = (ca.namespace().unwrap_or_default(), ca.name_any());
        match crate::controller::let_go(ca, client).await {
            Ok(true) => {
                released += 1;
                println!("connectedaccount {ns}/{name}: finalizer removed");
            }
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                eprintln!("connectedaccount {ns}/{name}: {e}");
            }
        }
    }
    println!(
        "{released} of {} ConnectedAccounts carried the finalizer",
        items.len()
    );
    match failed {
        0 => Ok(()),
        n => Err(CommandError::NotLetGo(n)),
    }
}

/// Scale the operator's Deployments (`selector` in `operator_namespace`, else the client's namespace) to zero
/// and wait up to `timeout` for their pods to go.
async fn stop_operator(
    client: &Client,
    operator_namespace: Option<&str>,
    selector: &str,
    timeout: std::time::Duration,
) -> Result<(), CommandError> {
    use k8s_openapi::api::apps::v1::Deployment;
    let ns = operator_namespace
        .map(str::to_string)
        .unwrap_or_else(|| client.default_namespace().to_string());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels(selector);
    let found =
        deployments
            .list_metadata(&lp)
            .await
            .map_err(|source| CommandError::ListDeployments {
                namespace: ns.clone(),
                source,
            })?;
    for d in &found.items {
        deployments
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": 0}})),
            )
            .await
            .map_err(|source| CommandError::ScaleDeployment {
                namespace: ns.clone(),
                name: d.name_any(),
                source,
            })?;
        println!("deployment {ns}/{}: scaled to 0", d.name_any());
    }
    wait_for_no_pods(client, &ns, selector, timeout).await
}

/// Wait up to `timeout` until no pod matches `selector` in `ns`.
async fn wait_for_no_pods(
    client: &Client,
    ns: &str,
    selector: &str,
    timeout: std::time::Duration,
) -> Result<(), CommandError> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(selector);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = pods
            .list_metadata(&lp)
            .await
            .map_err(|source| CommandError::ListPods {
                namespace: ns.to_string(),
                source,
            })?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CommandError::OperatorStillRunning {
                left,
                selector: selector.to_string(),
                namespace: ns.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
