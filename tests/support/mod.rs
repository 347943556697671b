//! Whole-system harness: the test kit's emulator and fake Pipedream in-process, the real operator binary as a child
//! process pointed at them with a kubeconfig.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use pdso_testkit::apiserver::ApiServer;
use pdso_testkit::pipedream::{FakeAccount, FakePipedream, Seed};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "oa_system";
pub const CLIENT_SECRET: &str = "system-client-secret";

pub struct Env {
    pub api: ApiServer,
    pub pd: FakePipedream,
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// The operator's kubeconfig: its requests are audited as user `operator`.
    pub operator_kubeconfig: PathBuf,
    pub operators: Vec<Child>,
    pub log: PathBuf,
    /// Extra arguments for every operator started from now on.
    pub extra_args: Vec<String>,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_operator();
        record_operator_audit(&self.api);
        if std::thread::panicking() {
            eprintln!("operator logs kept in {}", self.dir.display());
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

impl Env {
    pub async fn start(accounts: Vec<FakeAccount>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = ApiServer::start().await.unwrap();
        let pd = FakePipedream::start(Seed {
            clients: [(CLIENT_ID.to_string(), CLIENT_SECRET.to_string())].into(),
            accounts,
            ..Default::default()
        })
        .await
        .unwrap();
        api.apply_crd_dir(std::path::Path::new("crds")).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "pdso-system-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        std::fs::write(&operator_kubeconfig, api.kubeconfig_for("operator")).unwrap();
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = Client::try_from(config).unwrap();
        let env = Self {
            api,
            pd,
            client,
            kubeconfig,
            operator_kubeconfig,
            operators: Vec::new(),
            log: dir.join("operator.log"),
            extra_args: Vec::new(),
            dir,
        };
        for ns in ["ops", "team-a"] {
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
        env.apply("pipedream-secrets.io/v1alpha1", "ClusterPipedreamConnection", None, "default", json!({"spec": {
            "apiUrl": env.pd.url(),
            "auth": {"oauth": {"clientId": CLIENT_ID, "projectId": "proj_sys",
                "clientSecretRef": {"name": "pd-oauth", "key": "client_secret", "namespace": "ops"}}},
            "access": [{"namespaces": ["team-a"]}]}})).await;
        if let Some(path) = std::env::var_os("PDSO_RBAC_MANIFESTS") {
            env.run_as_chart_service_account(std::path::Path::new(&path));
        }
        env
    }

    /// Load the chart's rendered RBAC (a JSON list, `tests/chart/run.sh` writes it), enforce it, and make the
    /// operator authenticate as the chart's ServiceAccount: a permission the chart lacks fails the test.
    fn run_as_chart_service_account(&self, manifests: &std::path::Path) {
        let text = std::fs::read_to_string(manifests)
            .unwrap_or_else(|e| panic!("{}: {e}", manifests.display()));
        let docs: Vec<Value> = serde_json::from_str(&text).unwrap();
        let mut user = None;
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            let plural = format!("{}s", kind.to_ascii_lowercase());
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(s) = doc["subjects"].as_array().and_then(|s| s.first()) {
                user = Some(format!(
                    "system:serviceaccount:{}:{}",
                    s["namespace"].as_str().unwrap_or_default(),
                    s["name"].as_str().unwrap_or_default()
                ));
            }
            self.api
                .with_store(|st| st.create("rbac.authorization.k8s.io", &plural, &ns, doc, "helm"))
                .unwrap_or_else(|e| panic!("loading {kind}: {}", e.message));
        }
        let user = user.expect("a binding for the chart's ServiceAccount");
        std::fs::write(&self.operator_kubeconfig, self.api.kubeconfig_for(&user)).unwrap();
        self.api.enforce_rbac(true);
    }

    /// Server-side apply of any object.
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
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
        let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
        let api: Api<kube::core::DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let mut obj = body;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["name"] = json!(name);
        let out = api
            .patch(
                name,
                &PatchParams::apply("system-test").force(),
                &Patch::Apply(&obj),
            )
            .await?;
        Ok(serde_json::to_value(out).unwrap())
    }

    pub fn start_operator(&mut self) {
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
            .args([
                "run",
                "--operator-namespace",
                "ops",
                "--default-connection",
                "default",
                "--log-format",
                "json",
                "--log-level",
                "debug",
            ])
            .args(metrics_addr)
            .args(&self.extra_args)
            .env("KUBECONFIG", &self.operator_kubeconfig)
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

    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.api.get("", "secrets", ns, name)
    }

    pub fn ca(&self, name: &str) -> Option<Value> {
        self.ca_in("team-a", name)
    }

    pub fn ca_in(&self, ns: &str, name: &str) -> Option<Value> {
        self.api
            .get("pipedream-secrets.io", "connectedaccounts", ns, name)
    }

    /// `status/reason` of the Ready condition of ConnectedAccount `ns/name`.
    pub fn ready_in(&self, ns: &str, name: &str) -> Option<String> {
        let ca = self.ca_in(ns, name)?;
        ca["status"]["conditions"]
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

    /// Resident memory of a running operator, in KiB (from /proc).
    pub fn operator_rss_kib(&self, pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Whether every started operator is still running.
    pub fn operators_alive(&mut self) -> bool {
        self.operators
            .iter_mut()
            .all(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn ready_reason(&self, name: &str) -> Option<String> {
        let ca = self.ca(name)?;
        ca["status"]["conditions"]
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

    /// Wait until ConnectedAccount `name` (in team-a) is Ready=True/Synced.
    pub async fn wait_synced(&self, name: &str, secs: u64) {
        self.wait("Ready=True/Synced", secs, || {
            (self.ready_reason(name).as_deref() == Some("True/Synced")).then_some(())
        })
        .await;
    }

    /// Poll until `f` returns Some, failing with `what` after `secs`.
    pub async fn wait<T>(&self, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
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

/// Append what the operator did (verb, group, resource) to `$CARGO_TARGET_TMPDIR/rbac-audit/`; the chart tests
/// compare it with the chart's RBAC.
fn record_operator_audit(api: &ApiServer) {
    let used: Vec<Value> = api
        .audit_of("operator")
        .into_iter()
        .map(|(verb, group, resource)| json!({"verb": verb, "group": group, "resource": resource}))
        .collect();
    if used.is_empty() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rbac-audit");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{}-{}.json", std::process::id(), rand_suffix()));
    let _ = std::fs::write(
        file,
        serde_json::to_string_pretty(&used).unwrap_or_default(),
    );
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

pub fn secret_value(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str()?)
        .ok()?;
    String::from_utf8(b).ok()
}
