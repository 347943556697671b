//! Whole-system harness: a real control plane (etcd, kube-apiserver, kube-controller-manager; see
//! `pdso_testkit::controlplane`), the test kit's fake Pipedream in-process, and the real operator binary as a child
//! process. The operator reaches the API server through a fault-injecting proxy, authenticated as user `operator`
//! (its requests recorded from the audit log for the chart's RBAC test) or, when `PDSO_RBAC_MANIFESTS` names the
//! chart's rendered RBAC, as the chart's ServiceAccount with a TokenRequest token, so the real RBAC authorizer
//! decides.
//!
//! Tests share their binary's control plane and isolate themselves by namespace: each `Env` has its own
//! namespaces (`ops-<id>`, `team-a-<id>`, `team-b-<id>`), cluster connection (`default-<id>`) and operator
//! watching only those namespaces. A test that needs a cluster-wide operator starts its own control plane
//! ([`Options::cluster_wide`]).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client, Config};
use pdso_testkit::controlplane::{self, ControlPlane};
use pdso_testkit::faultproxy::FaultProxy;
use pdso_testkit::pipedream::{FakeAccount, FakePipedream, Seed};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "oa_system";
pub const CLIENT_SECRET: &str = "system-client-secret";

/// The namespaces every `Env` creates (logical names; see [`Env::ns`]).
const NAMESPACES: [&str; 3] = ["ops", "team-a", "team-b"];

/// Which control plane, and how much of it the operator watches.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// A private control plane and an operator watching every namespace (the chart's default install). Without
    /// it the test shares its binary's control plane and the operator watches only the test's namespaces.
    pub cluster_wide: bool,
    /// Share the binary's control plane even when cluster-wide: for test binaries holding a single test.
    pub alone_in_binary: bool,
    /// The binary's control plane with nodes (kube-scheduler, the workload controllers and two hollow nodes
    /// whose kubelets sync pods every 60 s, as a real kubelet does by default): pods run and mount Secrets.
    pub nodes: bool,
}

enum Plane {
    Shared(&'static ControlPlane),
    Own(Box<ControlPlane>),
}

impl std::ops::Deref for Plane {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        match self {
            Plane::Shared(c) => c,
            Plane::Own(c) => c,
        }
    }
}

pub struct Env {
    plane: Plane,
    /// Between the operator and the API server: `env.proxy.add_fault(…)`.
    pub proxy: FaultProxy,
    pub pd: FakePipedream,
    /// The administrator, straight to the API server.
    pub client: Client,
    /// The administrator's kubeconfig (for kubectl and the CLI).
    pub kubeconfig: PathBuf,
    /// The operator's kubeconfig: through the proxy, as [`Env::operator_user`].
    pub operator_kubeconfig: PathBuf,
    /// Who the operator authenticates as.
    pub operator_user: String,
    /// Its bearer token.
    operator_token: String,
    pub operators: Vec<Child>,
    pub log: PathBuf,
    /// Extra arguments for every operator started from now on.
    pub extra_args: Vec<String>,
    /// Extra environment variables for every operator started from now on.
    pub extra_env: Vec<(String, String)>,
    /// Namespaces (real names) the operator watches beside this test's own.
    pub watch_also: Vec<String>,
    id: String,
    watch_all: bool,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_operator();
        self.check_audit();
        if std::thread::panicking() {
            eprintln!(
                "operator logs kept in {}; control plane logs in {}",
                self.dir.display(),
                self.plane.dir().display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn oauth_account(id: &str, lifetime: Option<u64>, lead: u64) -> FakeAccount {
    FakeAccount {
        id: id.into(),
        project_id: "proj_sys".into(),
        credentials:
            json!({"oauth_access_token": format!("tok-{id}"), "oauth_refresh_token": "refresh"})
                .as_object()
                .unwrap()
                .clone(),
        lifetime_secs: lifetime,
        refresh_lead_secs: lead,
        ..Default::default()
    }
}

/// The plural of the kinds the tests touch.
fn plural(kind: &str) -> String {
    format!("{}s", kind.to_ascii_lowercase())
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural(kind))
}

async fn client_from(kubeconfig: &str) -> Client {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// The environment `$start` (an [`Env::start`] or [`Env::start_with`] call) gives, or return from the test where
/// there is no control plane (never with `CI=true`): the one preamble of every system test.
#[macro_export]
macro_rules! env_or_skip {
    ($start:expr) => {
        match $start.await {
            Some(env) => env,
            None => return,
        }
    };
}

impl Env {
    /// An `Env` on the binary's shared control plane; `None` (the test then returns) when no control plane
    /// binaries exist and `CI` is not `true`.
    pub async fn start(accounts: Vec<FakeAccount>) -> Option<Self> {
        Self::start_with(accounts, Options::default()).await
    }

    pub async fn start_with(accounts: Vec<FakeAccount>, options: Options) -> Option<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plane = if options.nodes {
            Plane::Shared(ControlPlane::shared_with_nodes()?)
        } else if options.cluster_wide && !options.alone_in_binary {
            Plane::Own(Box::new(ControlPlane::start()?))
        } else {
            Plane::Shared(ControlPlane::shared()?)
        };
        assert!(
            plane.crd_warnings().is_empty(),
            "the API server warned when our CRDs were applied: {:?}",
            plane.crd_warnings()
        );
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{:x}{}",
            std::process::id() & 0xffff,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let pd = FakePipedream::start(Seed {
            clients: [(CLIENT_ID.to_string(), CLIENT_SECRET.to_string())].into(),
            accounts,
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = std::env::temp_dir().join(format!("pdso-system-{id}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, plane.kubeconfig(controlplane::ADMIN)).unwrap();
        let client = client_from(&plane.kubeconfig(controlplane::ADMIN)).await;
        let proxy = FaultProxy::start(plane.url(), plane.ca_pem())
            .await
            .unwrap();
        let mut env = Self {
            plane,
            proxy,
            pd,
            client,
            kubeconfig,
            operator_kubeconfig: dir.join("operator.kubeconfig"),
            operator_user: controlplane::OPERATOR.to_string(),
            operator_token: String::new(),
            operators: Vec::new(),
            log: dir.join("operator.log"),
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            watch_also: Vec::new(),
            id,
            watch_all: options.cluster_wide,
            dir,
        };
        for ns in NAMESPACES {
            env.apply("v1", "Namespace", None, ns, json!({})).await;
        }
        env.apply(
            "v1",
            "Secret",
            Some("ops"),
            "pd-oauth",
            json!({"stringData": {"client_secret": CLIENT_SECRET}}),
        )
        .await;
        env.apply_default_connection(json!({})).await;
        let token = match std::env::var_os("PDSO_RBAC_MANIFESTS") {
            Some(path) => {
                env.run_as_chart_service_account(std::path::Path::new(&path))
                    .await
            }
            None => env.plane.token(controlplane::OPERATOR).to_string(),
        };
        std::fs::write(&env.operator_kubeconfig, env.proxy.kubeconfig(&token, None)).unwrap();
        env.operator_token = token;
        Some(env)
    }

    /// Apply this test's `default` ClusterPipedreamConnection (OAuth against the fake Pipedream, the client secret
    /// in `ops`, open to team-a), with `extra` replacing or adding top-level spec fields (`rateLimit`, `access`).
    pub async fn apply_default_connection(&self, extra: Value) {
        let (ops, team_a) = (self.ns("ops"), self.ns("team-a"));
        let mut spec = json!({
            "apiUrl": self.pd.url(),
            "auth": {"oauth": {"clientId": CLIENT_ID, "projectId": "proj_sys",
                "clientSecretRef": {"name": "pd-oauth", "key": "client_secret", "namespace": ops}}},
            "access": [{"namespaces": [team_a]}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        self.apply(
            "pipedream-secrets.io/v1alpha1",
            "ClusterPipedreamConnection",
            None,
            "default",
            json!({"spec": spec}),
        )
        .await;
    }

    /// This test's name for a logical namespace (`team-a` → `team-a-<id>`); names already mapped stay.
    pub fn ns(&self, logical: &str) -> String {
        let suffix = format!("-{}", self.id);
        if logical.ends_with(&suffix) {
            logical.to_string()
        } else {
            format!("{logical}{suffix}")
        }
    }

    /// This test's name for a cluster-scoped object (`default` → `default-<id>`).
    pub fn cluster(&self, logical: &str) -> String {
        self.ns(logical)
    }

    /// The control plane this test runs on.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// Apply the chart's rendered RBAC (a JSON list, `tests/chart/run.sh` writes it, released into `ops`) into
    /// this test's namespaces, and return a TokenRequest token of the chart's ServiceAccount: a permission the
    /// chart lacks fails the test.
    async fn run_as_chart_service_account(&mut self, manifests: &std::path::Path) -> String {
        let text = std::fs::read_to_string(manifests)
            .unwrap_or_else(|e| panic!("{}: {e}", manifests.display()));
        let docs: Vec<Value> = serde_json::from_str(&text).unwrap();
        let ops = self.ns("ops");
        let mut account = None;
        for mut doc in docs {
            let cluster_scoped = doc["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("Cluster"));
            if cluster_scoped {
                let name = doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                doc["metadata"]["name"] = json!(self.cluster(&name));
            } else {
                let ns = doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("ops")
                    .to_string();
                doc["metadata"]["namespace"] = json!(self.ns(&ns));
            }
            if doc["roleRef"]["kind"] == "ClusterRole" {
                let name = doc["roleRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                doc["roleRef"]["name"] = json!(self.cluster(&name));
            }
            if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
                for s in subjects {
                    if s["kind"] == "ServiceAccount" {
                        s["namespace"] = json!(ops);
                        account = Some(s["name"].as_str().unwrap_or_default().to_string());
                    }
                }
            }
            self.plane.apply(&doc).await.unwrap();
        }
        let account = account.expect("a binding for the chart's ServiceAccount");
        self.operator_user = format!("system:serviceaccount:{ops}:{account}");
        self.plane
            .ensure_service_account(&ops, &account)
            .await
            .unwrap();
        self.plane
            .service_account_token(&ops, &account)
            .await
            .unwrap()
    }

    /// After the test: with the operator as `operator`, record what it requested (`$CARGO_TARGET_TMPDIR/
    /// rbac-audit/`, which the chart tests compare with the chart's RBAC); as the chart's ServiceAccount, fail on
    /// any request the API server refused with 403.
    fn check_audit(&self) {
        let mine: Vec<_> = self
            .plane
            .audit()
            .into_iter()
            .filter(|e| e.user == self.operator_user)
            .collect();
        if self.operator_user == controlplane::OPERATOR {
            let used: std::collections::BTreeSet<(String, String, String)> = mine
                .iter()
                .map(|e| (e.verb.clone(), e.group.clone(), e.resource.clone()))
                .collect();
            if used.is_empty() {
                return;
            }
            let used: Vec<Value> = used
                .into_iter()
                .map(|(verb, group, resource)| json!({"verb": verb, "group": group, "resource": resource}))
                .collect();
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rbac-audit");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{}-{}.json", std::process::id(), self.id));
            let _ = std::fs::write(
                file,
                serde_json::to_string_pretty(&used).unwrap_or_default(),
            );
        } else if !std::thread::panicking() {
            let forbidden: Vec<String> = mine
                .iter()
                .filter(|e| e.code == 403)
                .map(|e| format!("{} {}/{} in {:?}", e.verb, e.group, e.resource, e.namespace))
                .collect();
            assert!(
                forbidden.is_empty(),
                "the API server refused the chart's ServiceAccount: {forbidden:?}"
            );
        }
    }

    fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let ar = resource(api_version, kind);
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), &self.ns(ns), &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The name an object has on the server: namespaces and other cluster-scoped objects are per test.
    fn server_name(&self, ns: Option<&str>, name: &str) -> String {
        match ns {
            None => self.cluster(name),
            Some(_) => name.to_string(),
        }
    }

    /// Server-side apply of any object (namespaces and cluster-scoped names mapped to this test's).
    pub async fn apply(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        body: Value,
    ) -> Value {
        self.try_apply(api_version, kind, ns, name, body)
            .await
            .unwrap()
    }

    pub async fn try_apply(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        body: Value,
    ) -> Result<Value, kube::Error> {
        let name = self.server_name(ns, name);
        let mut obj = body;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["name"] = json!(name);
        let out = self
            .api(api_version, kind, ns)
            .patch(
                &name,
                &PatchParams::apply("system-test").force(),
                &Patch::Apply(&obj),
            )
            .await?;
        Ok(serde_json::to_value(out).unwrap())
    }

    /// Get any object as JSON.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let name = self.server_name(ns, name);
        match self.api(api_version, kind, ns).get_opt(&name).await {
            Ok(o) => o.map(|o| serde_json::to_value(o).unwrap()),
            Err(e) => panic!("get {kind} {name}: {e}"),
        }
    }

    /// List objects of a kind in a namespace as JSON.
    pub async fn list(&self, api_version: &str, kind: &str, ns: &str) -> Vec<Value> {
        self.api(api_version, kind, Some(ns))
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    /// Delete any object (background propagation, as kubectl does).
    pub async fn delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) {
        let name = self.server_name(ns, name);
        self.api(api_version, kind, ns)
            .delete(&name, &DeleteParams::background())
            .await
            .unwrap();
    }

    /// Arguments naming this test's namespaces, connection and Lease namespace.
    fn scope_args(&self) -> Vec<String> {
        let mut args = vec![
            "--operator-namespace".to_string(),
            self.ns("ops"),
            "--default-connection".to_string(),
            self.cluster("default"),
        ];
        if !self.watch_all {
            let mut watched: Vec<String> = NAMESPACES.iter().map(|n| self.ns(n)).collect();
            watched.extend(self.watch_also.iter().cloned());
            args.push(format!("--namespaces={}", watched.join(",")));
        }
        args
    }

    pub fn start_operator(&mut self) {
        let kubeconfig = self.operator_kubeconfig.clone();
        self.spawn_operator(&kubeconfig);
    }

    /// Start an operator behind a fault proxy of its own (to partition one replica); the proxy lives as long as
    /// the returned value.
    pub async fn start_operator_behind_own_proxy(&mut self) -> FaultProxy {
        let proxy = self.operator_proxy().await;
        self.start_operator_behind(&proxy);
        proxy
    }

    /// A fault proxy for one replica, to set faults on before [`Env::start_operator_behind`] starts it.
    pub async fn operator_proxy(&self) -> FaultProxy {
        FaultProxy::start(self.plane.url(), self.plane.ca_pem())
            .await
            .unwrap()
    }

    /// Start an operator whose every API request goes through `proxy`.
    pub fn start_operator_behind(&mut self, proxy: &FaultProxy) {
        let kubeconfig = self
            .dir
            .join(format!("operator-{}.kubeconfig", self.operators.len()));
        std::fs::write(&kubeconfig, proxy.kubeconfig(&self.operator_token, None)).unwrap();
        self.spawn_operator(&kubeconfig);
    }

    /// Whether operator `pid` still runs.
    pub fn operator_running(&mut self, pid: u32) -> bool {
        self.operators
            .iter_mut()
            .any(|c| c.id() == pid && c.try_wait().ok().flatten().is_none())
    }

    fn spawn_operator(&mut self, kubeconfig: &std::path::Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let metrics_addr = if self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--metrics-addr"))
        {
            Vec::new()
        } else {
            vec!["--metrics-addr", "127.0.0.1:0"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
            .args(["run", "--log-format", "json", "--log-level", "debug"])
            .args(self.scope_args())
            .args(metrics_addr)
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.operators.push(child);
    }

    /// Process ids of the running operators.
    pub fn operator_pids(&self) -> Vec<u32> {
        self.operators.iter().map(Child::id).collect()
    }

    /// SIGKILL one operator (no graceful release of anything).
    pub fn kill_operator(&mut self, pid: u32) {
        if let Some(i) = self.operators.iter().position(|c| c.id() == pid) {
            let mut c = self.operators.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM one operator (graceful: it releases its Lease) and wait for it to exit.
    pub fn terminate_operator(&mut self, pid: u32) {
        if let Some(i) = self.operators.iter().position(|c| c.id() == pid) {
            let mut c = self.operators.remove(i);
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("operator {pid} did not stop within 10 s of SIGTERM");
        }
    }

    pub fn stop_operator(&mut self) {
        while let Some(mut c) = self.operators.pop() {
            // SIGTERM for a graceful stop, then make sure.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            for _ in 0..50 {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.get("v1", "Secret", Some(ns), name).await
    }

    pub async fn ca(&self, name: &str) -> Option<Value> {
        self.ca_in("team-a", name).await
    }

    pub async fn ca_in(&self, ns: &str, name: &str) -> Option<Value> {
        self.get(
            "pipedream-secrets.io/v1alpha1",
            "ConnectedAccount",
            Some(ns),
            name,
        )
        .await
    }

    /// `status/reason` of the Ready condition of ConnectedAccount `ns/name`.
    pub async fn ready_in(&self, ns: &str, name: &str) -> Option<String> {
        ready_of(&self.ca_in(ns, name).await?)
    }

    pub async fn ready_reason(&self, name: &str) -> Option<String> {
        self.ready_in("team-a", name).await
    }

    /// The holder of this test's Lease `name` (in its operator namespace).
    pub async fn lease_holder(&self, name: &str) -> Option<String> {
        let lease = self
            .get("coordination.k8s.io/v1", "Lease", Some("ops"), name)
            .await?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    }

    /// Resident memory of a running operator, in KiB (from /proc).
    pub fn operator_rss_kib(&self, pid: u32) -> Option<u64> {
        proc_status_kib(pid, "VmRSS:")
    }

    /// Peak resident memory of operator `pid` so far (`VmHWM`), in KiB.
    pub fn operator_peak_rss_kib(&self, pid: u32) -> Option<u64> {
        proc_status_kib(pid, "VmHWM:")
    }
}

/// A `/proc/<pid>/status` field in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Env {
    /// Whether every started operator is still running.
    pub fn operators_alive(&mut self) -> bool {
        self.operators
            .iter_mut()
            .all(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Wait until ConnectedAccount `name` (in team-a) is Ready=True/SecretSynced.
    pub async fn wait_synced(&self, name: &str, secs: u64) {
        self.wait("Ready=True/SecretSynced", secs, async || {
            (self.ready_reason(name).await.as_deref() == Some("True/SecretSynced")).then_some(())
        })
        .await;
    }

    /// Poll until `f` returns Some, failing with `what` after `secs`.
    pub async fn wait<T>(&self, what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out after {secs}s waiting for {what}\n--- operator log tail ---\n{}",
                    tail(&self.logs())
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `status/reason` of an object's Ready condition.
pub fn ready_of(obj: &Value) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            format!(
                "{}/{}",
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        })
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

/// The `pipedream-secrets.io/expires-at` annotation of a written Secret.
pub fn secret_expiry(secret: &Value) -> Option<jiff::Timestamp> {
    secret["metadata"]["annotations"]["pipedream-secrets.io/expires-at"]
        .as_str()?
        .parse()
        .ok()
}

pub fn secret_value(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str()?)
        .ok()?;
    String::from_utf8(b).ok()
}

/// libfaketime (Debian's `faketime`), to run an operator on a wall clock of its own: `None` (one skip line) when it
/// is not installed, a panic under `CI=true` (the README's test command installs it).
pub fn libfaketime() -> Option<&'static str> {
    const LIBS: [&str; 2] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ];
    if let Some(lib) = LIBS.into_iter().find(|l| std::path::Path::new(l).exists()) {
        return Some(lib);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true and libfaketime is missing: install Debian's faketime (tests/setup.sh)");
    }
    eprintln!("skipping: libfaketime is missing (install Debian's faketime, tests/setup.sh)");
    None
}

/// A loopback port free now, for an operator's `--metrics-addr`. Taken after the environment has started: the
/// OS hands a port just released to the next listener asking for any, and the environment's own listeners (the
/// API server's proxy) once got the metrics port that way.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
