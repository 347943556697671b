//! Command line: `run` (default), `crd`, `check`, `status`, `sync`, `uninstall`, `render`, `version`, `completion`.
//! Installed as `kubectl-pipedream` the same binary is a kubectl plugin (`kubectl pipedream status`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod complete;
pub mod error;

/// Keeps Pipedream connected-account credentials fresh in Kubernetes Secrets.
#[derive(Parser, Debug)]
#[command(name = "pipedream-secrets-operator", version, about)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run` when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator (default).
    Run(RunArgs),
    /// Print every CRD as YAML (or write one file per CRD into --dir).
    Crd {
        /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the API reference (Markdown, docs/api.md) instead.
        #[arg(long, conflicts_with = "dir")]
        api_reference: bool,
    },
    /// Authenticate with a connection and optionally fetch one account: prints health and expiry, never secret
    /// values. Exits non-zero when Pipedream refuses.
    Check {
        /// Connection name: a ClusterPipedreamConnection, or a PipedreamConnection with --namespace.
        #[arg(long)]
        connection: String,
        /// Namespace of a (namespaced) PipedreamConnection.
        #[arg(long)]
        namespace: Option<String>,
        /// Account to fetch (`apn_…`).
        #[arg(long)]
        account: Option<String>,
        /// A PEM bundle of CA certificates trusted for Pipedream besides the system's roots.
        #[arg(long, env = "PIPEDREAM_CA_FILE", value_hint = clap::ValueHint::FilePath)]
        pipedream_ca_file: Option<PathBuf>,
        /// First wait until the CRDs are served and the operator reports the connection Ready (an install is
        /// up); give up after `--timeout`.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "120s", value_parser = parse_duration_arg)]
        timeout: std::time::Duration,
    },
    /// List ConnectedAccounts with their Ready reason, expiry horizon and next sync; with NAME, one in detail
    /// (conditions, recent Events, the Secret's keys and expiry, the connection). Never secret values.
    Status {
        /// One ConnectedAccount, in detail.
        name: Option<String>,
        /// Where to look.
        #[command(flatten)]
        kube: KubeArgs,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Fetch now: sets the force-sync annotation of the named ConnectedAccounts (or all that match), so each
    /// fetches once, as `kubectl annotate … pipedream-secrets.io/force-sync=…` would.
    Sync {
        /// ConnectedAccounts to sync.
        names: Vec<String>,
        /// Every ConnectedAccount in the namespace (or, with -A, everywhere).
        #[arg(long)]
        all: bool,
        /// Only those matching this label selector (e.g. `team=a`).
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Where to look.
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Prepare for uninstalling the operator: scale its Deployments (`--operator-selector` in
    /// `--operator-namespace`) to zero and wait for their pods to go, then release every retained Secret and
    /// remove the operator's finalizer from every ConnectedAccount, so none is left waiting for an operator that
    /// is gone. The chart's pre-delete hook runs it.
    Uninstall {
        /// Namespace of the operator's Deployments (default: the namespace of the kube context or pod).
        #[arg(long)]
        operator_namespace: Option<String>,
        /// Label selector of the operator's Deployments; none: scale nothing (the operator is already stopped).
        #[arg(long)]
        operator_selector: Option<String>,
        /// How long to wait for the operator's pods to go.
        #[arg(long, default_value = "120s", value_parser = parse_duration_arg)]
        timeout: std::time::Duration,
        /// The namespaces the operator watched, comma-separated (a namespace-scoped install); instead of
        /// `-n`/`-A`.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Then delete this ClusterPipedreamConnection (the chart's default connection: an install on a cluster
        /// without the CRDs creates it as a hook, which `helm uninstall` would leave behind).
        #[arg(long)]
        delete_cluster_connection: Option<String>,
        /// Where the ConnectedAccounts are.
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Print this binary's version and git commit, the API server's, and the operator's (its Deployments').
    Version {
        /// Only this binary's (no cluster needed).
        #[arg(long)]
        client: bool,
    },
    /// Print a shell completion script (`source <(pipedream-secrets-operator completion bash)`).
    Completion {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Render a ConnectedAccount's Secret data offline from a credentials or account JSON file.
    Render {
        /// ConnectedAccount manifest (YAML or JSON); only spec.target.template is used.
        #[arg(short = 'f', long, value_hint = clap::ValueHint::FilePath)]
        file: PathBuf,
        /// JSON file: a Pipedream account answer (bare or {"data": …}) or a plain credentials object.
        #[arg(long, value_hint = clap::ValueHint::FilePath)]
        credentials: PathBuf,
    },
}

/// kubectl's flags for which cluster and namespace.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Kubeconfig file (default: `KUBECONFIG`, then `~/.kube/config`, then in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// Output format of `status`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A table (a description with NAME).
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Flags of `run`; each has an environment variable.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
    /// Namespace the operator runs in; ClusterPipedreamConnections without access rules admit only it.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "pipedream-secrets-operator"
    )]
    pub operator_namespace: String,
    /// ClusterPipedreamConnection used by ConnectedAccounts without spec.connectionRef.
    #[arg(long, env = "DEFAULT_CONNECTION")]
    pub default_connection: Option<String>,
    /// ConnectedAccounts reconciled in parallel (per watched namespace).
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Address of /metrics; without --metrics-secure also of /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of /healthz and /readyz alone, plain HTTP, for the kubelet's probes (the chart sets it). Required
    /// with --metrics-secure, whose HTTPS port serves only /metrics.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// Serve /metrics over HTTPS, only to clients whose bearer token the API server authenticates (TokenReview)
    /// and allows to `get` the non-resource URL /metrics (SubjectAccessReview), as controller-runtime's secure
    /// metrics do. Needs RBAC to create both reviews. `--metrics-secure` alone means true.
    #[arg(long, env = "METRICS_SECURE", default_value_t = false, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub metrics_secure: bool,
    /// Folder holding tls.crt and tls.key for --metrics-secure (a mounted kubernetes.io/tls Secret), re-read when
    /// they change. Default: a self-signed certificate generated at start.
    #[arg(long, env = "METRICS_CERT_DIR")]
    pub metrics_cert_dir: Option<PathBuf>,
    /// Timeout of each request to Pipedream, in seconds.
    #[arg(long, env = "PIPEDREAM_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,
    /// A PEM bundle of CA certificates trusted for Pipedream besides the system's roots (a TLS-inspecting egress
    /// proxy's CA). Read at start-up: a missing or empty file stops the operator.
    #[arg(long, env = "PIPEDREAM_CA_FILE", value_hint = clap::ValueHint::FilePath)]
    pub pipedream_ca_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level or filter (RUST_LOG syntax), e.g. `info` or `pipedream_secrets_operator=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Pod name, used as the Event reporting instance and the leader-election identity.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Do not watch or use ClusterPipedreamConnections (namespace-scoped installs without cluster-wide RBAC).
    /// `--disable-cluster-connections` alone means true; `=false` also works.
    #[arg(long, env = "DISABLE_CLUSTER_CONNECTIONS", default_value_t = false, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub disable_cluster_connections: bool,
    /// Lease-based leader election: only the Lease holder reconciles; standbys keep caches warm.
    /// `--leader-election=false` disables it.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Hosts a namespaced PipedreamConnection's spec.apiUrl may name, comma-separated (`*.example.com` allows
    /// subdomains). Plain http is accepted only for loopback hosts. ClusterPipedreamConnections are the cluster
    /// admin's and are not restricted.
    #[arg(
        long,
        env = "ALLOWED_API_HOSTS",
        value_delimiter = ',',
        default_value = "api.pipedream.com"
    )]
    pub allowed_api_hosts: Vec<String>,
    /// Name of the Lease (in the operator namespace).
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE",
        default_value = "pipedream-secrets-operator"
    )]
    pub leader_election_lease: String,
    /// This replica's shard of the ConnectedAccounts, `i/n`: it reconciles the accounts whose UID hashes to `i`
    /// and elects its leader on its own Lease (`<lease>-shard-<i>-of-<n>`). Shard 0 also checks connections.
    #[arg(long, env = "SHARD", default_value = "0/1")]
    pub shard: crate::shard::Shard,
    /// Lease duration in seconds: how long a dead leader blocks a standby.
    #[arg(long, env = "LEADER_ELECTION_DURATION_SECONDS", default_value_t = 15)]
    pub leader_election_duration_seconds: u64,
    /// How long a Secret write takes to reach every pod (`spec.refresh.propagationTime` of ConnectedAccounts that
    /// set none), e.g. `100s`: the kubelets' `syncFrequency` × 1.5 plus 10 s. Fetches, retries and rollout
    /// restarts leave pods this much time before their credentials expire.
    #[arg(long, env = "PROPAGATION_TIME", default_value = "100s", value_parser = parse_duration_arg)]
    pub propagation_time: std::time::Duration,
}

/// A duration flag's value that is not a duration.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a duration like 90s, 2m or 1h30m")]
pub struct NotADuration(String);

/// A duration flag in the CRD's syntax (`90s`, `2m`, `1h30m`).
fn parse_duration_arg(s: &str) -> Result<std::time::Duration, NotADuration> {
    crate::schedule::parse_duration(s).ok_or_else(|| NotADuration(s.to_string()))
}

impl RunArgs {
    /// Watched namespaces without empty entries.
    pub fn watched_namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}
