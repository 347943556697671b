//! Load benchmark: the real operator binary (release) against the test kit's emulator, or with `--real` a real
//! control plane (etcd, kube-apiserver, kube-controller-manager; `pdso_testkit::controlplane`), and the fake
//! Pipedream.
//!
//! ```sh
//! cargo build --release && cargo run --release --example bench -- --accounts 1000 [--real]
//! ```
//!
//! Prints a Markdown table and writes JSON (`--json`, default `target/bench-<N>[-real].json`): time until every
//! ConnectedAccount is Ready and the rate-limit bound, peak RSS (sampled every 20 ms, with `/metrics` scraped
//! gzip-compressed every 15 s as Prometheus would, `--scrape-secs`) and steady RSS, CPU per sync, Pipedream calls over
//! token cycles against the ideal, create-to-Secret latency while idle, and a restart (re-fetches, time to ready).
//! With `--real`, also the API requests the operator caused per account, for the first sync and per refresh:
//! from the API server's own `apiserver_request_total` (less the benchmark's own requests, which go through a
//! counting proxy) and, per request kind, from the audit log (requests by the operator's user).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use pdso_testkit::apiserver::ApiServer;
use pdso_testkit::controlplane::{ADMIN, ControlPlane, OPERATOR};
use pdso_testkit::faultproxy::FaultProxy;
use pdso_testkit::pipedream::{FakeAccount, FakePipedream, Seed};
use serde_json::{Value, json};

struct Args {
    accounts: usize,
    rate: u32,
    token_secs: u64,
    cycles: u32,
    json: PathBuf,
    real: bool,
    concurrency: u16,
    scrape_secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        accounts: 1000,
        rate: 0,
        token_secs: 0,
        cycles: 3,
        json: PathBuf::new(),
        real: false,
        concurrency: 16,
        scrape_secs: 15,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        if v[i] == "--real" {
            a.real = true;
            i += 1;
            continue;
        }
        let val = v.get(i + 1).expect("a value after each flag");
        match v[i].as_str() {
            "--accounts" => a.accounts = val.parse().expect("--accounts N"),
            "--rate" => a.rate = val.parse().expect("--rate R"),
            "--token-secs" => a.token_secs = val.parse().expect("--token-secs S"),
            "--cycles" => a.cycles = val.parse().expect("--cycles C"),
            "--json" => a.json = PathBuf::from(val),
            "--concurrency" => a.concurrency = val.parse().expect("--concurrency N"),
            "--scrape-secs" => a.scrape_secs = val.parse().expect("--scrape-secs S (0: none)"),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    // Default rate: Pipedream's own limit allows 6.6 reads/s per project; the connection default is 5.
    if a.rate == 0 {
        a.rate = if a.accounts <= 2000 { 5 } else { 200 };
    }
    // Tokens long enough that one cycle of fetches fits the rate with room to spare.
    if a.token_secs == 0 {
        a.token_secs = ((a.accounts as u64 * 3) / u64::from(a.rate)).max(120);
    }
    if a.json.as_os_str().is_empty() {
        let real = if a.real { "-real" } else { "" };
        a.json = PathBuf::from(format!("target/bench-{}{real}.json", a.accounts));
    }
    a
}

fn operator_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PDSO_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/examples/bench → target/<profile>/pipedream-secrets-operator
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

/// The highest VmRSS of a process, sampled every 20 ms on a thread of its own.
struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakRss {
    fn watch(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(proc_field(pid, "VmRSS:").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Self { stop, thread }
    }

    /// The peak in KiB.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// Scrapes of `/metrics` every `secs` seconds (none with 0): how many, the largest body, the slowest.
struct Scrapes {
    task: tokio::task::JoinHandle<()>,
    stats: std::sync::Arc<std::sync::Mutex<(u64, usize, f64)>>,
}

impl Scrapes {
    fn stats(&self) -> (u64, usize, f64) {
        *self.stats.lock().unwrap()
    }
}

fn scraper(port: u16, secs: u64) -> Scrapes {
    let stats = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0usize, 0f64)));
    let out = stats.clone();
    let task = tokio::spawn(async move {
        if secs == 0 {
            return;
        }
        let http = reqwest::Client::new();
        loop {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let t = Instant::now();
            let body = match http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .header("accept-encoding", "gzip")
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.bytes().await.ok(),
                _ => None,
            };
            if let Some(body) = body {
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let mut s = out.lock().unwrap();
                *s = (s.0 + 1, s.1.max(body.len()), s.2.max(ms));
            }
        }
    });
    Scrapes { task, stats }
}

fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Requests by (verb, resource[/subresource]).
type Counts = BTreeMap<(String, String), u64>;

/// The API server the operator runs against.
enum Server {
    /// In-process: the bench reads its store directly.
    Emulator(ApiServer),
    /// A real control plane: the bench observes through reflectors whose requests (like its writes) go through a
    /// counting proxy, so they can be told apart from the operator's in `apiserver_request_total`.
    Real {
        cp: Box<ControlPlane>,
        proxy: FaultProxy,
        accounts: Store<DynamicObject>,
        secrets: Store<k8s_openapi::api::core::v1::Secret>,
    },
}

/// What the API server had counted at one moment.
struct Snapshot {
    server: Counts,
    bench: Counts,
    operator: Counts,
}

fn minus(a: &Counts, b: &Counts) -> Counts {
    a.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn is_ready(ca: &Value) -> bool {
    ca["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn generation_of(secret_data_b64: &str) -> Option<u64> {
    use base64::Engine;
    let tok = base64::engine::general_purpose::STANDARD
        .decode(secret_data_b64)
        .ok()?;
    String::from_utf8(tok)
        .ok()?
        .rsplit_once("-g")?
        .1
        .parse()
        .ok()
}

struct Bench {
    server: Server,
    pd: FakePipedream,
    client: Client,
    kubeconfig: PathBuf,
    metrics_port: u16,
    concurrency: u16,
    peak_rss_kib: std::cell::Cell<u64>,
}

impl Bench {
    fn start_operator(&self) -> Child {
        Command::new(operator_binary())
            .args([
                "run",
                "--operator-namespace=ops",
                "--default-connection=default",
                "--log-level=warn",
                "--leader-election=false",
                &format!("--concurrency={}", self.concurrency),
                &format!("--metrics-addr=127.0.0.1:{}", self.metrics_port),
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            // BENCH_OPERATOR_STDERR=FILE keeps the operator's stderr (warnings; jemalloc's statistics at exit with
            // `_RJEM_MALLOC_CONF=stats_print:true`).
            .stderr(
                std::env::var_os("BENCH_OPERATOR_STDERR")
                    .and_then(|f| {
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(f)
                            .ok()
                    })
                    .map_or_else(Stdio::null, Stdio::from),
            )
            .spawn()
            .expect("operator")
    }

    fn ready_count(&self) -> usize {
        match &self.server {
            Server::Emulator(api) => api.with_store(|s| {
                let Some(kind) = s.kind("pipedream-secrets.io", "v1alpha1", "connectedaccounts")
                else {
                    return 0;
                };
                // Counted in place: cloning 10,000 objects twice a second would make the bench the bottleneck.
                s.count(&kind, "bench", is_ready)
            }),
            Server::Real { accounts, .. } => accounts
                .state()
                .iter()
                .filter(|ca| is_ready(&ca.data))
                .count(),
        }
    }

    /// Each account's `status.nextSyncTime`: when the operator next means to call Pipedream for it.
    fn next_sync_times(&self) -> BTreeMap<String, jiff::Timestamp> {
        let pick = |ca: &Value| {
            let id = ca["spec"]["accountId"].as_str()?.to_string();
            let t = ca["status"]["nextSyncTime"].as_str()?.parse().ok()?;
            Some((id, t))
        };
        match &self.server {
            Server::Emulator(api) => api.with_store(|s| {
                let Some(kind) = s.kind("pipedream-secrets.io", "v1alpha1", "connectedaccounts")
                else {
                    return BTreeMap::new();
                };
                s.list(&kind, "bench").iter().filter_map(pick).collect()
            }),
            Server::Real { accounts, .. } => accounts
                .state()
                .iter()
                .filter_map(|ca| pick(&ca.data))
                .collect(),
        }
    }

    /// Whether the Secret of ConnectedAccount `name` exists.
    fn has_secret(&self, name: &str) -> bool {
        match &self.server {
            Server::Emulator(api) => api.get("", "secrets", "bench", name).is_some(),
            Server::Real { secrets, .. } => secrets
                .get(&reflector::ObjectRef::new(name).within("bench"))
                .is_some(),
        }
    }

    /// What the API server has counted so far (a real one only).
    async fn snapshot(&self) -> Option<Snapshot> {
        let Server::Real { cp, proxy, .. } = &self.server else {
            return None;
        };
        Some(Snapshot {
            server: cp.request_counts().await.expect("apiserver metrics"),
            bench: proxy.counts(),
            operator: cp.requests_by(OPERATOR),
        })
    }

    /// Token generations Pipedream has issued so far, summed over the first `n` accounts.
    fn generations(&self, n: usize) -> u64 {
        (0..n)
            .filter_map(|i| self.pd.account(&format!("apn_Bench{i:05}")))
            .map(|a| a.generation)
            .sum()
    }

    /// Token generations the operator has delivered so far: the `-g<N>` suffix of each Secret's access token.
    fn delivered(&self, n: usize) -> u64 {
        match &self.server {
            Server::Emulator(api) => (0..n)
                .filter_map(|i| {
                    let s = api.get("", "secrets", "bench", &format!("ca-{i:05}"))?;
                    generation_of(s["data"]["oauth_access_token"].as_str()?)
                })
                .sum(),
            Server::Real { secrets, .. } => secrets
                .state()
                .iter()
                .filter(|s| {
                    s.name_any()
                        .strip_prefix("ca-")
                        .and_then(|i| i.parse::<usize>().ok())
                        .is_some_and(|i| i < n)
                })
                .filter_map(|s| {
                    let token = s.data.as_ref()?.get("oauth_access_token")?;
                    use base64::Engine;
                    generation_of(&base64::engine::general_purpose::STANDARD.encode(&token.0))
                })
                .sum(),
        }
    }

    fn sample(&self, pid: u32) -> u64 {
        let rss = proc_field(pid, "VmRSS:").unwrap_or(0);
        self.peak_rss_kib.set(self.peak_rss_kib.get().max(rss));
        rss
    }

    async fn apply(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
    ) {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["name"] = json!(name);
        api.patch(
            name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&obj),
        )
        .await
        .expect("apply");
    }

    async fn create_accounts(&self, names: Vec<String>) {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "pipedream-secrets.io",
            "v1alpha1",
            "ConnectedAccount",
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), "bench", &ar);
        stream::iter(names)
            .for_each_concurrent(16, |name| {
                let api = api.clone();
                async move {
                    let obj = json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                        "metadata": {"name": name},
                        "spec": {"accountId": format!("apn_Bench{}", name.trim_start_matches("ca-")),
                                 "refresh": {"beforeExpiry": "30s"}}});
                    api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&obj))
                        .await
                        .expect("create");
                }
            })
            .await;
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args();
    let n = a.accounts;
    let lead = a.token_secs / 4;
    eprintln!(
        "bench: {n} accounts, rate {} req/s, {} s tokens ({} s lead)",
        a.rate, a.token_secs, lead
    );
    let account = |i: usize| FakeAccount {
        id: format!("apn_Bench{i:05}"),
        project_id: "proj_bench".into(),
        credentials: json!({"oauth_access_token": format!("tok-{i}"), "oauth_refresh_token": "r"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        lifetime_secs: Some(a.token_secs),
        refresh_lead_secs: lead,
        ..Default::default()
    };
    // Latency probes use accounts beyond N.
    let probes = 20;
    let pd = FakePipedream::start(Seed {
        clients: [("oa_bench".to_string(), "bench-secret".to_string())].into(),
        accounts: (0..n + probes).map(account).collect(),
        ..Default::default()
    })
    .await
    .expect("fake pipedream");
    // Pipedream's documented limit (2,000 account reads per 5 minutes per project) when the connection is set to
    // respect it; faster runs (short tokens, many accounts) model a project with a raised limit.
    if a.rate <= 6 {
        pd.set_rate_limit(Some((2000, 300)));
    }
    let dir = std::env::temp_dir().join(format!("pdso-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("kubeconfig");
    // The bench's own client, and the operator's kubeconfig.
    let (server, bench_kubeconfig) = if a.real {
        let Some(cp) = ControlPlane::start() else {
            eprintln!(
                "bench: --real needs the control plane binaries (KUBEBUILDER_ASSETS or ../shared/kube)"
            );
            std::process::exit(2);
        };
        std::fs::write(&kubeconfig, cp.kubeconfig(OPERATOR)).expect("kubeconfig");
        let proxy = FaultProxy::start(cp.url(), cp.ca_pem())
            .await
            .expect("proxy");
        let bench_kubeconfig = proxy.kubeconfig(cp.token(ADMIN), None);
        // Placeholders until the namespaces exist; replaced by the reflectors' stores below.
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "pipedream-secrets.io",
            "v1alpha1",
            "ConnectedAccount",
        ));
        let accounts = reflector::store::Writer::new(ar).as_reader();
        let (secrets, _) = reflector::store();
        let server = Server::Real {
            cp: Box::new(cp),
            proxy,
            accounts,
            secrets,
        };
        (server, bench_kubeconfig)
    } else {
        let api = ApiServer::start().await.expect("emulator");
        api.apply_crd_dir(std::path::Path::new("crds"))
            .expect("crds");
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let bench_kubeconfig = api.kubeconfig();
        (Server::Emulator(api), bench_kubeconfig)
    };
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&bench_kubeconfig).expect("kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let client = Client::try_from(config).expect("client");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut b = Bench {
        server,
        pd,
        client,
        kubeconfig,
        metrics_port,
        concurrency: a.concurrency,
        peak_rss_kib: Default::default(),
    };
    for ns in ["ops", "bench"] {
        b.apply("v1", "Namespace", None, ns, json!({})).await;
    }
    b.apply(
        "v1",
        "Secret",
        Some("ops"),
        "pd-oauth",
        json!({"stringData": {"client_secret": "bench-secret"}}),
    )
    .await;
    b.apply(
        "pipedream-secrets.io/v1alpha1",
        "ClusterPipedreamConnection",
        None,
        "default",
        json!({"spec": {
        "apiUrl": b.pd.url(),
        "auth": {"oauth": {"clientId": "oa_bench", "projectId": "proj_bench",
            "clientSecretRef": {"name": "pd-oauth", "key": "client_secret", "namespace": "ops"}}},
        "rateLimit": {"requestsPerSecond": a.rate, "burst": 10},
        "access": [{"namespaces": ["bench"]}]}}),
    )
    .await;

    if let Server::Real {
        accounts, secrets, ..
    } = &mut b.server
    {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "pipedream-secrets.io",
            "v1alpha1",
            "ConnectedAccount",
        ));
        let writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::namespaced_with(b.client.clone(), "bench", &ar);
        tokio::spawn(
            reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| futures::future::ready(())),
        );
        *accounts = store;
        let (store, writer) = reflector::store();
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(b.client.clone(), "bench");
        tokio::spawn(
            reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| futures::future::ready(())),
        );
        *secrets = store;
        let _ = accounts.wait_until_ready().await;
        let _ = secrets.wait_until_ready().await;
    }
    let mut op = b.start_operator();
    let pid = op.id();
    // Prometheus scrapes the operator while it works (gzip, as Prometheus asks): its memory counts.
    let scrapes = scraper(b.metrics_port, a.scrape_secs);
    let peak = PeakRss::watch(pid);
    let idle_rss = {
        tokio::time::sleep(Duration::from_secs(2)).await;
        b.sample(pid)
    };
    // 1. Initial sync.
    let snap0 = b.snapshot().await;
    let started = Instant::now();
    let cpu0 = cpu_seconds(pid);
    let names: Vec<String> = (0..n).map(|i| format!("ca-{i:05}")).collect();
    let creating = b.create_accounts(names);
    tokio::pin!(creating);
    let mut created = false;
    loop {
        tokio::select! {
            _ = &mut creating, if !created => { created = true; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        b.sample(pid);
        if created && b.ready_count() >= n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(7200),
            "not all Ready after 2 h"
        );
    }
    let sync_secs = started.elapsed().as_secs_f64();
    let bound_secs = n as f64 / f64::from(a.rate);
    let fetches_initial = b.pd.count("connect_account");
    let cpu_sync = cpu_seconds(pid) - cpu0;
    let too_many = b.pd.requests().iter().filter(|r| r.status == 429).count();
    eprintln!(
        "bench: all {n} Ready after {sync_secs:.1} s (bound {bound_secs:.1} s), {too_many} 429s"
    );

    let snap1 = b.snapshot().await;
    // 2. Token cycles: calls over the ideal (one per token Pipedream issues per account).
    let window = Duration::from_secs((a.token_secs - lead) * u64::from(a.cycles));
    let gen_before = b.generations(n);
    let delivered_before = b.delivered(n);
    let before = b.pd.count("connect_account");
    let cycle_start = Instant::now();
    let mut steady = Vec::new();
    while cycle_start.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        steady.push(b.sample(pid));
    }
    let calls = b.pd.count("connect_account") - before;
    // Ideal: one call per token delivered. Tokens Pipedream issued but not yet fetched when the window closes
    // (the operator polls shortly after Pipedream's refresh) are reported apart, as lag.
    let delivered = b.delivered(n) - delivered_before;
    let issued = b.generations(n) - gen_before;
    let ideal = delivered.max(1) as f64;
    let snap2 = b.snapshot().await;
    let steady_rss = steady
        .iter()
        .copied()
        .max()
        .unwrap_or_else(|| b.sample(pid));

    // 3. Create-to-Secret latency while otherwise idle.
    let mut lat = Vec::new();
    for i in n..n + probes {
        let name = format!("ca-{i:05}");
        let t = Instant::now();
        b.create_accounts(vec![name.clone()]).await;
        loop {
            if b.has_secret(&name) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no Secret for {name}"
            );
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // 4. Restart: graceful stop, start; a re-fetch is a call for an account before the nextSyncTime the previous
    // process recorded (calls that were due anyway are not re-fetches).
    // Every 20 ms, so a peak that lasts a moment (a scrape, a burst of watch events) is seen. (`VmHWM` is no help:
    // the kernel updates it when memory is unmapped, and jemalloc returns pages with madvise.)
    b.peak_rss_kib.set(b.peak_rss_kib.get().max(peak.stop()));
    scrapes.task.abort();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = op.wait();
    let due = b.next_sync_times();
    let before = b.pd.requests().len();
    let restarted = Instant::now();
    op = b.start_operator();
    let http = reqwest::Client::new();
    loop {
        let ok = http
            .get(format!("http://127.0.0.1:{}/readyz", b.metrics_port))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = restarted.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let refetches = b.pd.requests()[before..]
        .iter()
        .filter(|r| r.endpoint == "connect_account")
        .filter(|r| {
            let at: Option<jiff::Timestamp> = r.at.parse().ok();
            match (r.account.as_ref().and_then(|id| due.get(id)), at) {
                (Some(due), Some(at)) => at < *due,
                _ => true,
            }
        })
        .count();
    let _ = op.kill();

    let total = n + probes;
    // API requests the operator caused, per account (first sync) and per delivered token (refresh).
    let mut api_requests: Vec<(&str, Value)> = Vec::new();
    if let (Some(s0), Some(s1), Some(s2)) = (&snap0, &snap1, &snap2) {
        let phase = |from: &Snapshot, to: &Snapshot| {
            let server = minus(
                &minus(&to.server, &from.server),
                &minus(&to.bench, &from.bench),
            );
            let operator = minus(&to.operator, &from.operator);
            (server, operator)
        };
        let (sync_server, sync_operator) = phase(s0, s1);
        let (cycle_server, cycle_operator) = phase(s1, s2);
        // Watches are long-running: re-opened every few minutes whatever the number of accounts, so they are
        // reported as counts, not per account.
        let sum = |c: &Counts, watch: bool| {
            c.iter()
                .filter(|((verb, _), _)| (verb == "watch") == watch)
                .map(|(_, v)| v)
                .sum::<u64>()
        };
        let per = |c: &Counts, d: f64| sum(c, false) as f64 / d.max(1.0);
        let watches = |c: &Counts| sum(c, true);
        let breakdown = |c: &Counts, d: f64| -> Value {
            c.iter()
                .map(|((verb, res), v)| (format!("{verb} {res}"), json!(*v as f64 / d.max(1.0))))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        api_requests = vec![
            (
                "api_requests_per_account_first_sync",
                json!(per(&sync_server, n as f64)),
            ),
            (
                "api_requests_per_refresh",
                json!(per(&cycle_server, delivered as f64)),
            ),
            (
                "operator_requests_per_account_first_sync",
                json!(per(&sync_operator, n as f64)),
            ),
            (
                "operator_requests_per_refresh",
                json!(per(&cycle_operator, delivered as f64)),
            ),
            (
                "operator_first_sync_by_request",
                breakdown(&sync_operator, n as f64),
            ),
            (
                "operator_refresh_by_request",
                breakdown(&cycle_operator, delivered as f64),
            ),
            (
                "operator_watches_opened_first_sync",
                json!(watches(&sync_operator)),
            ),
            (
                "operator_watches_opened_refresh_window",
                json!(watches(&cycle_operator)),
            ),
            (
                "api_first_sync_by_request",
                breakdown(&sync_server, n as f64),
            ),
            (
                "api_refresh_by_request",
                breakdown(&cycle_server, delivered as f64),
            ),
        ];
    }
    let results: BTreeMap<&str, Value> = [
        ("accounts", json!(n)),
        ("rate_per_second", json!(a.rate)),
        ("token_seconds", json!(a.token_secs)),
        ("operator_concurrency", json!(a.concurrency)),
        ("initial_sync_seconds", json!(sync_secs)),
        ("rate_limit_bound_seconds", json!(bound_secs)),
        ("sync_over_bound", json!(sync_secs / bound_secs)),
        ("http_429", json!(too_many)),
        ("initial_fetches", json!(fetches_initial)),
        ("idle_rss_mib", json!(idle_rss as f64 / 1024.0)),
        ("peak_rss_mib", json!(b.peak_rss_kib.get() as f64 / 1024.0)),
        ("scrape_interval_seconds", json!(a.scrape_secs)),
        ("scrapes", json!(scrapes.stats().0)),
        ("scrape_gzip_bytes_max", json!(scrapes.stats().1)),
        ("scrape_ms_max", json!(scrapes.stats().2)),
        ("steady_rss_mib", json!(steady_rss as f64 / 1024.0)),
        (
            "rss_kib_per_account",
            json!((steady_rss.saturating_sub(idle_rss)) as f64 / total as f64),
        ),
        ("cpu_ms_per_sync", json!(cpu_sync * 1000.0 / n as f64)),
        ("cycle_calls", json!(calls)),
        ("cycle_tokens_delivered", json!(delivered)),
        ("cycle_tokens_issued", json!(issued)),
        ("cycle_calls_over_ideal", json!(calls as f64 / ideal)),
        (
            "create_to_secret_p50_ms",
            json!(percentile(&mut lat.clone(), 0.5)),
        ),
        ("create_to_secret_p99_ms", json!(percentile(&mut lat, 0.99))),
        ("restart_ready_seconds", json!(ready_after)),
        ("restart_refetches", json!(refetches)),
        (
            "api_server",
            json!(if a.real { "kube-apiserver" } else { "emulator" }),
        ),
    ]
    .into_iter()
    .chain(api_requests)
    .collect();
    println!("| metric | value |\n|---|---|");
    for (k, v) in results.iter().filter(|(_, v)| !v.is_object()) {
        let v = v.as_f64().map_or(v.to_string(), |f| {
            if f.fract() == 0.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.2}")
            }
        });
        println!("| {k} | {v} |");
    }
    let _ = std::fs::write(
        &a.json,
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    );
    for (k, v) in results.iter().filter(|(_, v)| v.is_object()) {
        eprintln!("bench: {k}: {v}");
    }
    eprintln!("bench: JSON in {}", a.json.display());
    let _ = std::fs::remove_dir_all(&dir);
}
