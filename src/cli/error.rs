//! Why a subcommand failed. Each variant names the action that failed; its message is what `error: …` prints.

use std::path::PathBuf;
use std::time::Duration;

use crate::pipedream::{CaFileError, CredentialsError, PipedreamError};

/// A failed subcommand (`run`, `crd`, `render`, `check`, `version`, `status`, `sync`, `uninstall`).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("starting the runtime: {0}")]
    StartRuntime(#[source] std::io::Error),
    #[error("cannot load a Kubernetes configuration: {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error("cannot load a Kubernetes configuration: {0}")]
    LoadConfig(#[from] kube::config::KubeconfigError),
    #[error("{}: {source}", path.display())]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a Kubernetes client: {0}")]
    BuildClient(#[source] kube::Error),

    #[error(
        "--shard={0} needs leader election (--leader-election=true): a change of the shard count is guarded through the shards' Leases"
    )]
    ShardsNeedElection(crate::shard::Shard),
    #[error(transparent)]
    Serve(#[from] crate::http::ServeError),
    #[error(
        "cannot list ConnectedAccounts ({0}); are the CRDs installed (kubectl apply --server-side -f crds/) and is RBAC granted?"
    )]
    ProbeCrds(#[source] kube::Error),
    #[error(transparent)]
    Controller(#[from] crate::controller::RunError),
    #[error("metrics server task failed: {0}")]
    ServerTask(#[source] tokio::task::JoinError),

    #[error("serializing CRD: {0}")]
    SerializeCrd(#[source] serde_saphyr::SerializeError),
    #[error("writing {}: {source}", path.display())]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    ParseManifest {
        path: PathBuf,
        /// Boxed: a YAML error is most of a kilobyte, and every command's result would carry its size.
        source: Box<serde_saphyr::Error>,
    },
    #[error("spec.target.template: {0}")]
    TemplateSpec(#[source] serde_json::Error),
    #[error("{} is not JSON: {source}", path.display())]
    CredentialsNotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("credentials file must hold a JSON object")]
    CredentialsNotObject,
    #[error(transparent)]
    ParseAccount(PipedreamError),
    #[error(transparent)]
    Render(#[from] crate::template::TemplateError),
    #[error("{0}")]
    PrintJson(#[source] serde_json::Error),
    #[error("{0}")]
    PrintYaml(#[source] serde_saphyr::SerializeError),

    #[error("{what}: {source}")]
    Read { what: String, source: kube::Error },
    #[error(transparent)]
    ConnectionCredentials(#[from] CredentialsError),
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    #[error("{0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("auth failed: {0}")]
    Auth(#[source] PipedreamError),
    #[error("account {id}: {source}")]
    FetchAccount { id: String, source: PipedreamError },
    #[error("not ready after {}s: {why}", timeout.as_secs())]
    NotReady { timeout: Duration, why: NotReady },
    #[error("cannot reach the API server: {0}")]
    ServerVersion(#[source] kube::Error),

    #[error("cannot list ConnectedAccounts: {0}")]
    ListAccounts(#[source] kube::Error),
    #[error("a NAME needs a namespace, not -A")]
    NameNeedsNamespace,
    #[error("name one or more ConnectedAccounts, or use --all or -l")]
    NothingNamed,
    #[error("names and --all/-l cannot be combined")]
    NamesAndSelector,
    #[error("names need a namespace, not -A")]
    NamesNeedNamespace,
    #[error("{failed} of {of} could not be marked")]
    NotMarked { failed: usize, of: usize },
    #[error("cannot list the operator's Deployments in {namespace}: {source}")]
    ListDeployments {
        namespace: String,
        source: kube::Error,
    },
    #[error("cannot scale deployment {namespace}/{name}: {source}")]
    ScaleDeployment {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot list the operator's pods in {namespace}: {source}")]
    ListPods {
        namespace: String,
        source: kube::Error,
    },
    #[error(
        "{left} operator pod(s) matching {selector} still running in {namespace} after {timeout:?}; nothing was changed on the ConnectedAccounts"
    )]
    OperatorStillRunning {
        left: usize,
        selector: String,
        namespace: String,
        timeout: Duration,
    },
    #[error("{0} ConnectedAccount(s) could not be let go")]
    NotLetGo(usize),
    #[error("cannot delete ClusterPipedreamConnection {name}: {source}")]
    DeleteConnection { name: String, source: kube::Error },
}

/// Why `check --wait` is still waiting: an install is not ready yet.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the CRDs are not served yet ({0}.pipedream-secrets.io)")]
    CrdsNotServed(&'static str),
    #[error("{what}: {source}")]
    Unreadable { what: String, source: kube::Error },
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{what} is not Ready: {reason}: {message}")]
    NotReady {
        what: String,
        reason: String,
        message: String,
    },
    #[error("{what} has no Ready status for its generation yet: is the operator running{}?", if *cluster {
        " (and watching every namespace: it reports on cluster connections only then)"
    } else {
        ""
    })]
    NoStatus { what: String, cluster: bool },
}
