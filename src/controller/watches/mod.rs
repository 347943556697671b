//! Wiring: the stores and watches every controller reads, the ConnectedAccount controllers (one per watched
//! scope), the connection status controllers, and leadership.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::{self, BoxFuture, Shared};
use kube::Client;
use tracing::info;

mod controllers;
mod stores;
#[cfg(test)]
mod tests;

use super::context::{Clock, Context, Settings};
use super::fetch::Triggers;
use super::leader;
use crate::metrics::Metrics;
use controllers::{account_controller, connection_controllers};
use stores::{cluster_store, connection_stores, credentials_watch, secret_watch};

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    /// Settings passed to reconciles.
    pub settings: Settings,
    /// Reconciles in flight per watched scope.
    pub concurrency: u16,
    /// Timeout of each Pipedream request.
    pub request_timeout: std::time::Duration,
    /// A PEM bundle trusted for Pipedream besides the system's roots.
    pub pipedream_ca_file: Option<std::path::PathBuf>,
    /// Pod name, for Event reporting and the leader-election identity.
    pub instance: Option<String>,
    /// Leader election, or none to always reconcile.
    pub leader_election: Option<LeaderElection>,
}

/// Lease-based leader election.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// The Lease's base name (each shard elects on `<lease>-shard-<i>-of-<n>`).
    pub lease: String,
    /// Lease duration.
    pub duration_secs: u64,
}

type Scope = Option<String>;
type Task = BoxFuture<'static, ()>;

/// Why the controllers stopped before `shutdown`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--pipedream-ca-file` cannot be used.
    #[error(transparent)]
    CaFile(#[from] crate::pipedream::CaFileError),
    /// The HTTP client for Pipedream cannot be built.
    #[error("building HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// Leader election failed.
    #[error(transparent)]
    Election(#[from] leader::ElectionError),
    /// Another replica took the Lease.
    #[error("lost the leader-election Lease; exiting so that only one replica writes")]
    LostLease,
}

/// Run every controller until `shutdown` resolves. `ready` turns true once all caches have synced.
pub async fn run(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> Result<(), RunError> {
    let shard = config.settings.shard;
    metrics.set_leader(shard, false);
    let roots = match &config.pipedream_ca_file {
        Some(path) => crate::pipedream::load_roots(path)?,
        None => Vec::new(),
    };
    let http = crate::pipedream::http_client(config.request_timeout, &roots)
        .map_err(RunError::HttpClient)?;
    let scopes: Vec<Scope> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let mut triggers = Triggers::default();
    let trigger_streams: Vec<_> = scopes
        .iter()
        .map(|s| triggers.subscribe(s.clone()))
        .collect();
    // The context exists before the watches that report deletions to it.
    let ctx_cell: Arc<std::sync::OnceLock<std::sync::Weak<Context>>> = Arc::default();
    let on_ctx = {
        let cell = ctx_cell.clone();
        move |f: &dyn Fn(&Context)| {
            if let Some(ctx) = cell.get().and_then(std::sync::Weak::upgrade) {
                f(&ctx);
            }
        }
    };
    let mut background: Vec<Task> = Vec::new();
    // Every watch takes its initial list as a stream where the API server can (see `list_config`).
    let list = controllers::list_config(&client, &scopes).await;
    let connections = connection_stores(&client, &scopes, &list, on_ctx.clone(), &mut background);
    let cluster = cluster_store(
        &client,
        &config.settings,
        &list,
        on_ctx.clone(),
        &mut background,
    );
    let ctx = Context::new(
        client.clone(),
        config.settings.clone(),
        connections.clone(),
        cluster.clone(),
        http,
        metrics.clone(),
        Clock::System,
        config.instance.clone(),
        triggers,
    );
    let _ = ctx_cell.set(Arc::downgrade(&ctx));
    credentials_watch(&client, &scopes, &list, on_ctx.clone(), &mut background);
    ctx.credential_watch.started(scopes.clone());
    let secrets = secret_watch(&client, &scopes, &list, ctx.secrets.clone());
    let mut controllers: Vec<Task> = Vec::new();
    let mut account_stores = Vec::new();
    for ((scope, trigger), secret_events) in scopes.iter().zip(trigger_streams).zip(secrets) {
        let (store, c) = account_controller(
            &ctx,
            &config,
            scope,
            list.clone(),
            trigger,
            secret_events,
            &shutdown,
        );
        account_stores.push(store);
        controllers.push(c);
    }
    *ctx.accounts.lock().unwrap_or_else(|p| p.into_inner()) = account_stores.clone();
    controllers.extend(connection_controllers(
        &ctx, &config, &scopes, &list, &shutdown,
    ));

    // Reflectors run in the background; controllers start only once the connection stores and the Secret index
    // are complete, so the first passes neither report a connection as missing nor read every Secret.
    let reflectors: Vec<_> = background.into_iter().map(tokio::spawn).collect();
    let caches_ready = async {
        for s in connections.values() {
            let _ = s.wait_until_ready().await;
        }
        let _ = cluster.wait_until_ready().await;
    };
    tokio::select! {
        _ = caches_ready => {}
        _ = shutdown.clone() => return Ok(()),
    }
    let mut leadership = None;
    if let Some(election) = &config.leader_election {
        // Standbys are ready once the connection caches are warm; the leader additionally lists ConnectedAccounts.
        ready.store(true, Ordering::SeqCst);
        let identity = config
            .instance
            .clone()
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        let shard = config.settings.shard;
        let Some(mut l) = leader::acquire(
            client.clone(),
            &config.settings.operator_namespace,
            &shard.lease_name(&election.lease),
            &identity,
            election.duration_secs,
            shutdown.clone(),
        )
        .await?
        else {
            return Ok(());
        };
        // During a change of the shard count the old shards still lead on their Leases: wait for them.
        tokio::select! {
            waited = l.wait_for_other_shard_counts(&election.lease, shard) => waited?,
            _ = shutdown.clone() => {
                l.release().await;
                return Ok(());
            }
        }
        leadership = Some(l);
    }
    metrics.set_leader(shard, true);
    let readiness = {
        let (ready, index) = (ready.clone(), ctx.secrets.clone());
        async move {
            for s in &account_stores {
                let _ = s.wait_until_ready().await;
            }
            while !index.is_ready() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            ready.store(true, Ordering::SeqCst);
            info!("caches synced; ready");
            future::pending::<()>().await;
        }
    };
    let outcome = {
        let lost = async {
            match leadership.as_mut() {
                Some(l) => l.lost().await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            _ = future::join_all(controllers) => Ok(()),
            _ = readiness => Ok(()),
            _ = lost => Err(RunError::LostLease),
        }
    };
    metrics.set_leader(shard, false);
    ready.store(false, Ordering::SeqCst);
    if let Some(l) = leadership
        && outcome.is_ok()
    {
        l.release().await;
    }
    for r in reflectors {
        r.abort();
    }
    outcome
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pipedream-secrets-operator".into())
}
