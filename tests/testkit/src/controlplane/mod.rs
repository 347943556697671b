//! A real Kubernetes control plane on loopback, as controller-runtime's envtest runs one: etcd, kube-apiserver
//! (RBAC, static bearer tokens, ServiceAccount token signing, an audit log) and kube-controller-manager (garbage
//! collection, namespace deletion, ServiceAccounts), on free ports, with kubeconfigs per user and per
//! ServiceAccount.
//!
//! [`ControlPlane::shared`] starts one per test process, shared by tests that isolate themselves by namespace;
//! [`ControlPlane::start`] starts a private one. Every process stops when its owner is dropped and, for the shared
//! one (never dropped: it is a `static`), when the test process ends in any way (see [`process`]).
//!
//! With nodes ([`ControlPlane::shared_with_nodes`], [`ControlPlane::start_with_nodes`]) it also runs
//! kube-scheduler, kube-controller-manager's workload controllers (Deployments, ReplicaSets, StatefulSets,
//! DaemonSets) and hollow nodes (see [`node`]): workloads roll out for real and tests read the files a pod's
//! volumes hold.

pub mod assets;
pub mod node;
mod process;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use node::{Node, NodeOptions, VolumeFiles};
use process::Supervised;

/// The administrator (group `system:masters`).
pub const ADMIN: &str = "admin";
/// An unrestricted identity for an operator under test (`system:masters`): its requests are in the audit log, so
/// tests can record what the operator needs.
pub const OPERATOR: &str = "operator";
/// Users with no rights beyond what bindings give them (tenants in RBAC tests).
pub const TENANTS: [&str; 2] = ["alice", "bob"];

/// The field manager this fixture applies with.
const MANAGER: &str = "pdso-testkit";

/// One audited request (the audit policy records everyone but the administrator and the control plane itself).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditEvent {
    /// `user.username`, e.g. `system:serviceaccount:ns:name`.
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …
    pub verb: String,
    /// API group, empty for core.
    pub group: String,
    /// Resource plural, with `/<subresource>` when there is one.
    pub resource: String,
    /// Namespace of the object, empty when cluster-scoped.
    pub namespace: String,
    /// HTTP status of the answer.
    pub code: u16,
    /// The request's `auditID` (a watch is logged twice: when it starts and when it ends).
    pub audit_id: String,
    /// `ResponseStarted` (watches) or `ResponseComplete`.
    pub stage: String,
}

/// A running control plane.
pub struct ControlPlane {
    dir: PathBuf,
    url: String,
    ca_pem: String,
    tokens: BTreeMap<String, String>,
    processes: Mutex<Vec<Supervised>>,
    /// What the API server warned about while the CRDs were installed at startup.
    crd_warnings: Vec<String>,
    /// The hollow nodes, if any.
    nodes: Vec<Node>,
    /// Removes `dir` when this process ends (the shared control plane is never dropped).
    _cleanup: Option<Supervised>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line per test process, written to stderr directly: the test harness captures `eprintln!` of passing
/// tests, and a skip must be seen.
fn skip_notice(missing: &assets::Missing) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping real-control-plane tests: {missing}"
        );
    });
}

impl ControlPlane {
    /// The test process's control plane, started on first use. `None` (after one line on stderr naming
    /// `KUBEBUILDER_ASSETS`) when no binaries are found; a panic instead when `CI=true`, so CI fails rather than
    /// skips.
    pub fn shared() -> Option<&'static ControlPlane> {
        static SHARED: OnceLock<Result<Option<ControlPlane>, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| match assets::find() {
            Err(missing) => {
                if ci() {
                    Err(format!("CI=true and {missing}"))
                } else {
                    skip_notice(&missing);
                    Ok(None)
                }
            }
            Ok(bin) => Self::start_with(&bin, Some(&crds_dir()), None).map(Some),
        });
        match started {
            Ok(cp) => cp.as_ref(),
            Err(e) => panic!("control plane: {e}"),
        }
    }

    /// The test process's control plane with nodes ([`NodeOptions::default`]: two nodes, the kubelet's default
    /// 60 s sync), the scheduler and the workload controllers; started on first use, with the same rules as
    /// [`Self::shared`] when binaries are missing (the node binaries included).
    pub fn shared_with_nodes() -> Option<&'static ControlPlane> {
        static SHARED: OnceLock<Result<Option<ControlPlane>, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| match find_all() {
            Err(missing) => {
                if ci() {
                    Err(format!("CI=true and {missing}"))
                } else {
                    skip_notice(&missing);
                    Ok(None)
                }
            }
            Ok((bin, node_bin)) => Self::start_with(
                &bin,
                Some(&crds_dir()),
                Some((&node_bin, NodeOptions::default())),
            )
            .map(Some),
        });
        match started {
            Ok(cp) => cp.as_ref(),
            Err(e) => panic!("control plane: {e}"),
        }
    }

    /// A private control plane with the operator's CRDs and nodes as `options` say.
    pub fn start_with_nodes(options: NodeOptions) -> Option<Self> {
        Self::start_private_with_nodes(Some(&crds_dir()), options)
    }

    /// A private control plane with nodes and no CRD: what a fresh cluster looks like to an installer that brings
    /// them (the chart's `crds.install`).
    pub fn start_empty_with_nodes(options: NodeOptions) -> Option<Self> {
        Self::start_private_with_nodes(None, options)
    }

    fn start_private_with_nodes(crds: Option<&Path>, options: NodeOptions) -> Option<Self> {
        match find_all() {
            Err(missing) if ci() => panic!("control plane: CI=true and {missing}"),
            Err(missing) => {
                skip_notice(&missing);
                None
            }
            Ok((bin, node_bin)) => Some(
                Self::start_with(&bin, crds, Some((&node_bin, options)))
                    .unwrap_or_else(|e| panic!("control plane: {e}")),
            ),
        }
    }

    /// A private control plane with the operator's CRDs (for tests that cannot share one), with the same rules as
    /// [`Self::shared`] when the binaries are missing.
    pub fn start() -> Option<Self> {
        Self::start_private(Some(&crds_dir()))
    }

    /// A private control plane without any CRD.
    pub fn start_empty() -> Option<Self> {
        Self::start_private(None)
    }

    fn start_private(crds: Option<&Path>) -> Option<Self> {
        match assets::find() {
            Err(missing) if ci() => panic!("control plane: CI=true and {missing}"),
            Err(missing) => {
                skip_notice(&missing);
                None
            }
            Ok(bin) => Some(
                Self::start_with(&bin, crds, None).unwrap_or_else(|e| panic!("control plane: {e}")),
            ),
        }
    }

    /// Start etcd and the API server, install `crds` (before kube-controller-manager starts, as in a cluster where
    /// CRDs exist before controllers: its garbage collector discovers new resources only every 30 s), then start
    /// kube-controller-manager, and with `nodes` the scheduler and the nodes (from the binaries in its folder).
    fn start_with(
        bin: &Path,
        crds: Option<&Path>,
        nodes: Option<(&Path, NodeOptions)>,
    ) -> Result<Self, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let base = assets::target_dir().join("tmp").join("control-plane");
        sweep_stale(&base);
        let dir = base.join(format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cleanup = Supervised::remove_on_exit(&dir)?;
        let (ca_pem, tokens) = write_credentials(&dir)?;
        let mut last = String::new();
        // A port taken between choosing it and binding it fails one attempt, not the run.
        let mut launched = None;
        for _ in 0..3 {
            match launch(bin, &dir, &ca_pem, &tokens) {
                Ok(up) => {
                    launched = Some(up);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let (url, processes) = launched.ok_or(last)?;
        let mut me = Self {
            dir,
            url,
            ca_pem,
            tokens,
            processes: Mutex::new(processes),
            crd_warnings: Vec::new(),
            nodes: Vec::new(),
            _cleanup: Some(cleanup),
        };
        if let Some(crds) = crds {
            me.crd_warnings = block_on(me.install_crds(crds))?;
        }
        let kcm = me.start_controller_manager(bin, nodes.is_some())?;
        lock(&me.processes).push(kcm);
        if let Some((node_bin, options)) = nodes {
            me.start_nodes(node_bin, &options)?;
        }
        Ok(me)
    }

    /// kube-scheduler, then the nodes; each node Ready and schedulable before this returns.
    fn start_nodes(&mut self, bin: &Path, options: &NodeOptions) -> Result<(), String> {
        let admin = self.dir.join("admin.kubeconfig");
        let scheduler = Supervised::spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", admin.display()),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
            &self.dir.join("kube-scheduler.log"),
        )?;
        lock(&self.processes).push(scheduler);
        let kubeconfig = self.dir.join("kubelet.kubeconfig");
        std::fs::write(&kubeconfig, self.kubeconfig(node::KUBELET_USER))
            .map_err(|e| e.to_string())?;
        let mut logs = Vec::new();
        for i in 1..=options.count {
            let name = format!("node-{i}");
            let log = self.dir.join(format!("{name}.log"));
            let p = node::spawn(bin, &name, &kubeconfig, options, &log)?;
            lock(&self.processes).push(p);
            logs.push((name, log));
        }
        for (name, log) in logs {
            block_on(node::wait_ready(self, &name, Duration::from_secs(60)))?;
            let root = node::root_from_log(&log)
                .ok_or_else(|| format!("node {name}: no root directory in {}", log.display()))?;
            self.nodes.push(Node { name, root });
        }
        Ok(())
    }

    /// kube-controller-manager, as the administrator; with `workloads` also the controllers that roll workloads
    /// out (Deployments, ReplicaSets, StatefulSets, DaemonSets).
    fn start_controller_manager(&self, bin: &Path, workloads: bool) -> Result<Supervised, String> {
        let s = |p: &Path| p.display().to_string();
        let kubeconfig = self.dir.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, self.kubeconfig(ADMIN)).map_err(|e| e.to_string())?;
        let mut controllers =
            "garbagecollector,namespace,serviceaccount,serviceaccount-token".to_string();
        if workloads {
            // job: the chart's hook Jobs; root-ca-cert-publisher: kube-root-ca.crt in every namespace, as in a
            // cluster.
            controllers.push_str(
                ",deployment,replicaset,statefulset,daemonset,job,root-ca-cert-publisher",
            );
        }
        Supervised::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", s(&kubeconfig)),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!("--controllers={controllers}"),
                format!(
                    "--service-account-private-key-file={}",
                    s(&self.dir.join("sa.key"))
                ),
                format!("--root-ca-file={}", s(&self.dir.join("ca.crt"))),
                "--use-service-account-credentials=false".into(),
            ],
            &self.dir.join("kube-controller-manager.log"),
        )
    }

    /// What the API server warned about when the CRDs were installed at startup (nothing, for CRDs that apply
    /// cleanly).
    pub fn crd_warnings(&self) -> &[String] {
        &self.crd_warnings
    }

    /// The hollow nodes (none unless started with nodes).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node a pod (a Pod object as JSON) is bound to, if it is one of ours.
    pub fn node_of(&self, pod: &Value) -> Option<&Node> {
        let name = pod["spec"]["nodeName"].as_str()?;
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The files of volume `volume` of `pod` as the kubelet last wrote them: what a container mounting it (without
    /// `subPath`) reads now. `None` until the kubelet has mounted it.
    pub fn pod_volume(&self, pod: &Value, volume: &str) -> Option<VolumeFiles> {
        let node = self.node_of(pod)?;
        node::read_volume(&node::volume_dir(node, pod, volume)?)
    }

    /// Volume `volume` of `pod` as container `container` found it when it started (see [`node::as_started`]):
    /// what its environment variables or `subPath` mounts of the same Secret hold.
    pub fn pod_volume_as_started(
        &self,
        pod: &Value,
        volume: &str,
        container: &str,
    ) -> Option<VolumeFiles> {
        let node = self.node_of(pod)?;
        node::as_started(&node::volume_dir(node, pod, volume)?, pod, container)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the API server's serving certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token of a static user ([`ADMIN`], [`OPERATOR`], [`TENANTS`], [`node::KUBELET_USER`]).
    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .get(user)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no static user {user}"))
    }

    /// A kubeconfig for a static user.
    pub fn kubeconfig(&self, user: &str) -> String {
        self.kubeconfig_with_token(self.token(user), None)
    }

    /// A kubeconfig for any bearer token (a ServiceAccount's, say), with an optional default namespace.
    pub fn kubeconfig_with_token(&self, token: &str, namespace: Option<&str>) -> String {
        kubeconfig(&self.url, Some(&self.ca_pem), token, namespace)
    }

    /// An HTTP client that trusts the API server's certificate.
    pub fn http_client(&self) -> reqwest::Client {
        http_client(&self.ca_pem)
    }

    /// One request as the administrator: (status, body as JSON or a string, `Warning` headers).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<String>,
    ) -> Result<(u16, Value, Vec<String>), String> {
        let mut req = self
            .http_client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token(ADMIN));
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b);
        }
        let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
        let code = resp.status().as_u16();
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let text = resp.text().await.map_err(|e| format!("{path}: {e}"))?;
        Ok((
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            warnings,
        ))
    }

    /// Server-side apply of `obj` as the administrator (`force`); returns the `Warning` headers.
    pub async fn apply(&self, obj: &Value) -> Result<Vec<String>, String> {
        let path = object_path(obj)?;
        let (code, body, warnings) = self
            .request(
                reqwest::Method::PATCH,
                &format!("{path}?fieldManager={MANAGER}&force=true"),
                "application/apply-patch+yaml",
                Some(obj.to_string()),
            )
            .await?;
        if !(200..300).contains(&code) {
            return Err(format!("apply {path}: {code} {body}"));
        }
        Ok(warnings)
    }

    /// Apply every CRD in `dir` (one YAML document per file) and wait until each is Established; returns the
    /// `Warning` headers the API server sent.
    pub async fn install_crds(&self, dir: &Path) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        let mut names = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let crd: Value =
                serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
            names.push(
                crd["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            warnings.extend(self.apply(&crd).await?);
        }
        for name in names {
            self.wait_established(&name).await?;
        }
        Ok(warnings)
    }

    /// Wait until CRD `name` is Established (its resources are served).
    pub async fn wait_established(&self, name: &str) -> Result<(), String> {
        let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, crd, _) = self.request(reqwest::Method::GET, &path, "", None).await?;
            let established = crd["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("CRD {name} not Established after 30 s: {crd}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Create ServiceAccount `ns/name` if it does not exist (the namespace must).
    pub async fn ensure_service_account(&self, ns: &str, name: &str) -> Result<(), String> {
        self.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns}}))
            .await
            .map(|_| ())
    }

    /// A bearer token for ServiceAccount `ns/name` from the TokenRequest API, valid for a day.
    pub async fn service_account_token(&self, ns: &str, name: &str) -> Result<String, String> {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400}});
        let (code, v, _) = self
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"),
                "application/json",
                Some(body.to_string()),
            )
            .await?;
        match v["status"]["token"].as_str() {
            Some(t) if code == 201 || code == 200 => Ok(t.to_string()),
            _ => Err(format!("TokenRequest for {ns}/{name}: {code} {v}")),
        }
    }

    /// A kubeconfig authenticating as ServiceAccount `ns/name` (created if missing) with a TokenRequest token.
    pub async fn service_account_kubeconfig(&self, ns: &str, name: &str) -> Result<String, String> {
        self.ensure_service_account(ns, name).await?;
        let token = self.service_account_token(ns, name).await?;
        Ok(self.kubeconfig_with_token(&token, Some(ns)))
    }

    /// `apiserver_request_total` from the API server's `/metrics`, summed by (verb, resource with subresource);
    /// watches count once each, when they start.
    pub async fn request_counts(&self) -> Result<BTreeMap<(String, String), u64>, String> {
        let (code, body, _) = self
            .request(reqwest::Method::GET, "/metrics", "", None)
            .await?;
        let Value::String(text) = body else {
            return Err(format!("/metrics answered {code} with JSON"));
        };
        Ok(parse_request_totals(&text))
    }

    /// Every audited request so far (all users but the administrator and the control plane's own).
    pub fn audit(&self) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|e| {
                let o = &e["objectRef"];
                let resource = match o["subresource"].as_str() {
                    Some(sub) => format!("{}/{sub}", o["resource"].as_str().unwrap_or_default()),
                    None => o["resource"].as_str().unwrap_or_default().to_string(),
                };
                AuditEvent {
                    user: e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    verb: e["verb"].as_str().unwrap_or_default().to_string(),
                    group: o["apiGroup"].as_str().unwrap_or_default().to_string(),
                    resource,
                    namespace: o["namespace"].as_str().unwrap_or_default().to_string(),
                    code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                    audit_id: e["auditID"].as_str().unwrap_or_default().to_string(),
                    stage: e["stage"].as_str().unwrap_or_default().to_string(),
                }
            })
            .collect()
    }

    /// Requests by `user` so far, each counted once, by (verb, resource[/subresource]).
    pub fn requests_by(&self, user: &str) -> BTreeMap<(String, String), u64> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = BTreeMap::new();
        for e in self.audit() {
            if e.user == user && seen.insert(e.audit_id.clone()) {
                *out.entry((e.verb, e.resource)).or_insert(0) += 1;
            }
        }
        out
    }

    /// Where the processes' logs and the audit log are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stop every process (SIGKILL; tests need no graceful drain) and wait for them.
    pub fn stop(&self) {
        let mut procs = lock(&self.processes);
        // kube-controller-manager first, etcd last.
        while let Some(mut p) = procs.pop() {
            p.kill();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The operator's CRDs, installed into every control plane but [`ControlPlane::start_empty`]'s.
fn crds_dir() -> PathBuf {
    assets::repo_root().join("crds")
}

/// The control plane's and the nodes' binaries.
/// Whether the control-plane binaries (and the node binaries, with `nodes`) are here, by the fixture's rule: when
/// they are not, one skip line, or a panic under `CI=true`.
pub fn available(nodes: bool) -> bool {
    let found = if nodes {
        find_all().map(|_| ())
    } else {
        assets::find().map(|_| ())
    };
    match found {
        Ok(()) => true,
        Err(missing) if ci() => panic!("control plane: CI=true and {missing}"),
        Err(missing) => {
            skip_notice(&missing);
            false
        }
    }
}

fn find_all() -> Result<(PathBuf, PathBuf), assets::Missing> {
    Ok((assets::find()?, assets::find_node_binaries()?))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Remove data directories of test processes that are gone (interrupted runs).
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            node::sweep(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Write the CA, the serving certificate, the ServiceAccount signing key, the token file and the audit policy.
fn write_credentials(dir: &Path) -> Result<(String, BTreeMap<String, String>), String> {
    use rcgen::KeyPair;
    let err = |e: rcgen::Error| e.to_string();
    let (ca_pem, serving_cert, serving_key) = crate::certs::ca_and_serving(
        "pdso-test-ca",
        "kube-apiserver",
        &["127.0.0.1", "localhost"],
    )?;
    // ES256 ServiceAccount tokens: the API server signs with the private key and verifies with the public one.
    let sa_key = KeyPair::generate().map_err(err)?;
    let mut tokens = BTreeMap::new();
    let mut csv = String::new();
    let users = [
        (ADMIN, "system:masters"),
        (OPERATOR, "system:masters"),
        (node::KUBELET_USER, "system:masters,system:nodes"),
    ]
    .into_iter()
    .chain(TENANTS.iter().map(|t| (*t, "")));
    for (i, (user, group)) in users.enumerate() {
        let token = random_token();
        csv.push_str(&format!("{token},{user},uid-{i},\"{group}\"\n"));
        tokens.insert(user.to_string(), token);
    }
    // The nodes' kubelets are audited for Secrets only (what they cost the API server to follow Secrets).
    let audit_policy = format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
        - level: None\n  users: [admin, \"system:apiserver\", \"system:kube-controller-manager\"]\n\
        - level: Metadata\n  users: [{kubelet}]\n  resources: [{{group: \"\", resources: [secrets]}}]\n\
        - level: None\n  users: [{kubelet}]\n\
        - level: Metadata\n",
        kubelet = node::KUBELET_USER
    );
    let files = [
        ("ca.crt", ca_pem.clone()),
        ("serving.crt", serving_cert.pem()),
        ("serving.key", serving_key.serialize_pem()),
        ("sa.key", sa_key.serialize_pem()),
        ("sa.pub", sa_key.public_key_pem()),
        ("tokens.csv", csv),
        ("audit-policy.yaml", audit_policy),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok((ca_pem, tokens))
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4)
        .map(|_| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Start etcd, then the API server; `Err` when one fails to come up.
fn launch(
    bin: &Path,
    dir: &Path,
    ca_pem: &str,
    tokens: &BTreeMap<String, String>,
) -> Result<(String, Vec<Supervised>), String> {
    let s = |p: &Path| p.display().to_string();
    let (client, peer, secure) = (free_port(), free_port(), free_port());
    let etcd_url = format!("http://127.0.0.1:{client}");
    let _ = std::fs::remove_dir_all(dir.join("etcd"));
    let mut etcd = Supervised::spawn(
        "etcd",
        &bin.join("etcd"),
        &[
            "--data-dir".into(),
            s(&dir.join("etcd")),
            "--listen-client-urls".into(),
            etcd_url.clone(),
            "--advertise-client-urls".into(),
            etcd_url.clone(),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-cluster".into(),
            format!("default=http://127.0.0.1:{peer}"),
            "--unsafe-no-fsync".into(),
            "--log-level".into(),
            "warn".into(),
        ],
        &dir.join("etcd.log"),
    )?;
    wait_until(
        &mut etcd,
        &dir.join("etcd.log"),
        Duration::from_secs(20),
        || {
            let url = format!("{etcd_url}/health");
            block_on(async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
        },
    )?;
    let url = format!("https://127.0.0.1:{secure}");
    let mut api = Supervised::spawn(
        "kube-apiserver",
        &bin.join("kube-apiserver"),
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", s(&dir.join("certs"))),
            format!("--tls-cert-file={}", s(&dir.join("serving.crt"))),
            format!("--tls-private-key-file={}", s(&dir.join("serving.key"))),
            format!("--token-auth-file={}", s(&dir.join("tokens.csv"))),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", s(&dir.join("sa.pub"))),
            format!(
                "--service-account-signing-key-file={}",
                s(&dir.join("sa.key"))
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            // Hardened clusters check that whoever sets blockOwnerDeletion may update the owner's finalizers.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
            format!("--audit-policy-file={}", s(&dir.join("audit-policy.yaml"))),
            format!("--audit-log-path={}", s(&dir.join("audit.log"))),
            "--profiling=false".into(),
        ],
        &dir.join("kube-apiserver.log"),
    )?;
    let admin = tokens[ADMIN].clone();
    let ready = {
        let (url, ca) = (url.clone(), ca_pem.to_string());
        move || {
            let (url, ca, admin) = (url.clone(), ca.clone(), admin.clone());
            block_on(async move {
                http_client(&ca)
                    .get(format!("{url}/readyz"))
                    .bearer_auth(admin)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
        }
    };
    if let Err(e) = wait_until(
        &mut api,
        &dir.join("kube-apiserver.log"),
        Duration::from_secs(60),
        ready,
    ) {
        drop(api);
        drop(etcd);
        return Err(e);
    }
    Ok((url, vec![etcd, api]))
}

/// Poll `ready` until it holds, failing early (with the log's tail) when the process exits.
fn wait_until(
    p: &mut Supervised,
    log: &Path,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return Ok(());
        }
        let tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        if p.exited() {
            return Err(format!("{} exited during startup:\n{}", p.name, tail()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not ready after {}s:\n{}",
                p.name,
                limit.as_secs(),
                tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run a future to completion on a private runtime (callable from inside or outside another runtime).
fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })
        .join()
        .expect("block_on thread")
    })
}

/// An HTTP client that trusts `ca_pem` only.
pub fn http_client(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = reqwest::Certificate::from_pem(ca_pem.as_bytes()).into_iter();
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .expect("HTTP client")
}

/// A kubeconfig for `server` with a bearer token.
pub fn kubeconfig(
    server: &str,
    ca_pem: Option<&str>,
    token: &str,
    namespace: Option<&str>,
) -> String {
    let ca = ca_pem
        .map(|pem| {
            format!(
                "\n    certificate-authority-data: {}",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    let ns = namespace
        .map(|n| format!("\n    namespace: {n}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}{ca}\nusers:\n\
         - name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    \
         user: test{ns}\ncurrent-context: test\n"
    )
}

/// The REST path of an object (`apiVersion`, `kind`, `metadata.name`, `metadata.namespace`), for the kinds the
/// tests apply: core and grouped kinds whose plural is the lower-cased kind plus `s`, and a few irregular ones.
pub fn object_path(obj: &Value) -> Result<String, String> {
    let api_version = obj["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = obj["kind"].as_str().ok_or("no kind")?;
    let name = obj["metadata"]["name"].as_str().ok_or("no metadata.name")?;
    let plural = match kind {
        "NetworkPolicy" => "networkpolicies".to_string(),
        "PodSecurityPolicy" => "podsecuritypolicies".to_string(),
        "Ingress" => "ingresses".to_string(),
        _ => format!("{}s", kind.to_ascii_lowercase()),
    };
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    Ok(match obj["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
        _ => format!("{prefix}/{plural}/{name}"),
    })
}

/// The metrics' verb (`POST`, `PUT`, `APPLY`, ...) as the audit log and [`crate::faultproxy::classify`] name it
/// (`create`, `update`, `patch`, ...), so counts from both can be subtracted.
fn audit_verb(metric_verb: &str) -> String {
    match metric_verb {
        "POST" => "create",
        "PUT" => "update",
        "APPLY" | "PATCH" => "patch",
        other => return other.to_ascii_lowercase(),
    }
    .to_string()
}

/// Sum `apiserver_request_total` samples by (verb, resource[/subresource]), verbs named as in the audit log.
pub fn parse_request_totals(text: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split("\",")
                .filter_map(|kv| kv.split_once("=\""))
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let resource = match label("subresource").as_str() {
            "" => label("resource"),
            sub => format!("{}/{sub}", label("resource")),
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry((audit_verb(&label("verb")), resource))
            .or_insert(0) += n;
    }
    out
}
