//! What pods read: a monitor that samples, on the control plane's hollow nodes, the credential every consumer pod
//! holds, the way its container holds it, and judges it against the truth about its expiry (the fake
//! Pipedream's). Two ways of holding a Secret:
//! - [`Reads::File`]: the app reads a mounted file on each use (a `secret` or `projected` volume without
//!   `subPath`): the pod holds what the kubelet last wrote into the volume.
//! - [`Reads::AtStart`]: the app read it once when its container started (an environment variable, or a
//!   `subPath` mount): the pod holds what the volume held at the container's start, until a new pod replaces it.
//! - [`Reads::AtMount`]: a `subPath` mount on the hollow node, whose fake subpather refuses to start such a
//!   container (`CreateContainerConfigError: not implemented`, though the pod reports Ready). A real kubelet
//!   bind-mounts the file from the volume it mounted in the same pod sync, so the pod holds the volume's first
//!   generation until a new pod replaces it; the pod counts as running from that mount to its deletion.
//!
//! Pods opt in with the label [`READS_LABEL`] (`file`, `at-start` or `at-mount`) and the annotations [`VOLUME_ANNOTATION`]
//! (a volume of the pod that mounts the Secret: for `at-start` pods, a volume of the same Secret the kubelet
//! mounts in the same sync as it starts the container) and [`KEY_ANNOTATION`] (the key, a path in that volume).
//! The monitor also records when each value first appeared in the Secret object, so propagation (Secret write →
//! pod) can be measured.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use crate::controlplane::ControlPlane;
use crate::controlplane::node::{self, Node};

/// Pod label: how the pod's app holds the Secret (`file`, `at-start` or `at-mount`).
pub const READS_LABEL: &str = "podview.pdso.test/reads";
/// Pod annotation: the volume to read.
pub const VOLUME_ANNOTATION: &str = "podview.pdso.test/volume";
/// Pod annotation: the key (file path in the volume).
pub const KEY_ANNOTATION: &str = "podview.pdso.test/key";

/// How a pod's app holds the Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Reads the mounted file on each use.
    File,
    /// Read it once at container start (env var, `subPath`).
    AtStart,
    /// Holds the volume's first generation (`subPath` on the hollow node, whose containers do not start).
    AtMount,
}

/// One sampled value that was expired when sampled.
#[derive(Clone, Debug)]
pub struct Expired {
    /// When.
    pub at: Timestamp,
    /// Pod `namespace/name`.
    pub pod: String,
    /// The value (a test token).
    pub token: String,
    /// When it had expired.
    pub expired_at: Timestamp,
}

/// What one pod (one container instance) held over its life.
#[derive(Clone, Debug)]
pub struct PodRecord {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's UID.
    pub uid: String,
    /// How it holds the Secret.
    pub reads: Reads,
    /// Its node.
    pub node: String,
    /// The Secret it reads (`namespace/name`), from its volume.
    pub secret: Option<String>,
    /// When the monitor first saw its container running.
    pub first_running: Option<Timestamp>,
    /// When the monitor last saw its container running.
    pub last_running: Option<Timestamp>,
    /// Each value it held, with when the monitor first saw it hold it.
    pub values: Vec<(Timestamp, String)>,
    /// An `at-start` pod whose start value could not be determined (the volume changed before it was read).
    pub start_unknown: bool,
}

/// Everything the monitor saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Pod samples taken (one per running consumer pod per tick).
    pub samples: usize,
    /// Samples of values already expired.
    pub expired: Vec<Expired>,
    /// Samples of values whose expiry the oracle did not know.
    pub unknown_values: usize,
    /// Every consumer pod seen.
    pub pods: Vec<PodRecord>,
    /// Per Secret (`namespace/name`), each value of [`KEY_ANNOTATION`]'s key with when it first appeared.
    pub secret_values: BTreeMap<String, Vec<(Timestamp, String)>>,
}

impl Report {
    /// For every pod that reads files and every Secret value written while it ran (after its first sample),
    /// the seconds until the pod first held that value or a later one (by the Secret's order). Values the pod
    /// never caught up with before it ended are not counted.
    pub fn propagation_secs(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for p in self.pods.iter().filter(|p| p.reads == Reads::File) {
            let (Some(secret), Some(first)) = (&p.secret, p.values.first()) else {
                continue;
            };
            let Some(history) = self.secret_values.get(secret) else {
                continue;
            };
            let order = |v: &str| history.iter().position(|(_, h)| h == v);
            for (i, (written, _)) in history.iter().enumerate() {
                if *written <= first.0 {
                    continue;
                }
                let caught = p
                    .values
                    .iter()
                    .find(|(_, v)| order(v).is_some_and(|j| j >= i))
                    .map(|(at, _)| *at);
                if let Some(at) = caught {
                    out.push(at.duration_since(*written).as_secs_f64());
                }
            }
        }
        out
    }
}

struct Target {
    node: Node,
    dir: std::path::PathBuf,
    reads: Reads,
    key: String,
    container: String,
}

/// A running monitor; [`Monitor::stop`] ends it and returns what it saw.
pub struct Monitor {
    state: Arc<Mutex<Report>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Sample every consumer pod of `namespaces` every `every`, judging each value with `expiry` (the truth
    /// about when a value expires; `None`: not known).
    pub fn start(
        cp: &ControlPlane,
        namespaces: Vec<String>,
        every: Duration,
        expiry: impl Fn(&str) -> Option<Timestamp> + Send + 'static,
    ) -> Self {
        let state = Arc::new(Mutex::new(Report::default()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let http = cp.http_client();
        let (url, token) = (
            cp.url().to_string(),
            cp.token(crate::controlplane::ADMIN).to_string(),
        );
        let nodes = cp.nodes().to_vec();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let get = |path: String| {
                let req = http.get(format!("{url}{path}")).bearer_auth(&token);
                async move {
                    let resp = req.send().await.ok()?;
                    serde_json::from_slice::<Value>(&resp.bytes().await.ok()?).ok()
                }
            };
            let mut started: BTreeMap<String, Option<String>> = BTreeMap::new();
            loop {
                for ns in &namespaces {
                    let (Some(pods), Some(secrets)) = (
                        get(format!("/api/v1/namespaces/{ns}/pods")).await,
                        get(format!("/api/v1/namespaces/{ns}/secrets")).await,
                    ) else {
                        continue;
                    };
                    let now = Timestamp::now();
                    let mut report = lock(&shared);
                    let items = pods["items"].as_array().cloned().unwrap_or_default();
                    for pod in &items {
                        sample(
                            &mut report,
                            &mut started,
                            &nodes,
                            pod,
                            &secrets,
                            now,
                            &expiry,
                        );
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
            }
        });
        Self { state, stop, task }
    }

    /// What it saw so far.
    pub fn report(&self) -> Report {
        lock(&self.state).clone()
    }

    /// Stop and return what it saw.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        lock(&self.state).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The consumer target of a pod, if it is one.
fn target(nodes: &[Node], pod: &Value) -> Option<Target> {
    let reads = match pod["metadata"]["labels"][READS_LABEL].as_str()? {
        "file" => Reads::File,
        "at-start" => Reads::AtStart,
        "at-mount" => Reads::AtMount,
        _ => return None,
    };
    let annotations = &pod["metadata"]["annotations"];
    let volume = annotations[VOLUME_ANNOTATION].as_str()?;
    let key = annotations[KEY_ANNOTATION].as_str()?.to_string();
    let node = nodes
        .iter()
        .find(|n| pod["spec"]["nodeName"].as_str() == Some(n.name.as_str()))?
        .clone();
    let dir = node::volume_dir(&node, pod, volume)?;
    let container = pod["spec"]["containers"][0]["name"].as_str()?.to_string();
    Some(Target {
        node,
        dir,
        reads,
        key,
        container,
    })
}

/// The Secret a pod's volume reads (`secret.secretName`, or the first Secret source of a projected volume).
fn secret_of(pod: &Value, volume: &str) -> Option<String> {
    let v = pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == volume)?;
    let name = v["secret"]["secretName"].as_str().or_else(|| {
        v["projected"]["sources"]
            .as_array()?
            .iter()
            .find_map(|s| s["secret"]["name"].as_str())
    })?;
    Some(format!(
        "{}/{name}",
        pod["metadata"]["namespace"].as_str().unwrap_or_default()
    ))
}

/// The key a projected volume maps `key` from (items with a `path`), else `key` itself.
fn secret_key(pod: &Value, volume: &str, key: &str) -> String {
    let mapped = pod["spec"]["volumes"].as_array().and_then(|vs| {
        let v = vs.iter().find(|v| v["name"] == volume)?;
        let items = v["secret"]["items"].as_array().cloned().or_else(|| {
            v["projected"]["sources"]
                .as_array()?
                .iter()
                .find_map(|s| s["secret"]["items"].as_array().cloned())
        })?;
        items
            .iter()
            .find(|i| i["path"] == key)
            .and_then(|i| i["key"].as_str().map(str::to_string))
    });
    mapped.unwrap_or_else(|| key.to_string())
}

fn record_secret_value(
    report: &mut Report,
    secrets: &Value,
    secret: &str,
    key: &str,
    now: Timestamp,
) {
    use base64::Engine;
    let name = secret.rsplit('/').next().unwrap_or_default();
    let Some(s) = secrets["items"]
        .as_array()
        .and_then(|items| items.iter().find(|s| s["metadata"]["name"] == name))
    else {
        return;
    };
    let Some(value) = s["data"][key]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return;
    };
    let history = report.secret_values.entry(secret.to_string()).or_default();
    if history.last().map(|(_, v)| v) != Some(&value) {
        history.push((now, value));
    }
}

fn sample(
    report: &mut Report,
    started: &mut BTreeMap<String, Option<String>>,
    nodes: &[Node],
    pod: &Value,
    secrets: &Value,
    now: Timestamp,
    expiry: &impl Fn(&str) -> Option<Timestamp>,
) {
    let Some(t) = target(nodes, pod) else {
        return;
    };
    let volume = pod["metadata"]["annotations"][VOLUME_ANNOTATION]
        .as_str()
        .unwrap_or_default();
    let secret = secret_of(pod, volume);
    if let Some(s) = &secret {
        record_secret_value(report, secrets, s, &secret_key(pod, volume, &t.key), now);
    }
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    );
    // One record per container instance (a restarted container starts again); per pod for `at-mount`.
    let instance = match t.reads {
        Reads::AtMount => uid,
        Reads::File | Reads::AtStart => {
            let Some(started_at) = node::container_started(pod, &t.container) else {
                return;
            };
            format!("{uid}@{started_at}")
        }
    };
    let value = match t.reads {
        Reads::File => node::read_volume(&t.dir).and_then(|v| v.text(&t.key)),
        Reads::AtStart => started
            .entry(instance.clone())
            .or_insert_with(|| {
                node::as_started(&t.dir, pod, &t.container).and_then(|v| v.text(&t.key))
            })
            .clone(),
        // Not mounted yet: nothing held, nothing remembered.
        Reads::AtMount => match started.get(&instance) {
            Some(v) => v.clone(),
            None => {
                let v = node::read_volume(&t.dir).and_then(|v| v.text(&t.key));
                if v.is_some() {
                    started.insert(instance.clone(), v.clone());
                }
                v
            }
        },
    };
    let i = match report.pods.iter().position(|p| p.uid == instance) {
        Some(i) => i,
        None => {
            report.pods.push(PodRecord {
                pod: name.clone(),
                uid: instance.clone(),
                reads: t.reads,
                node: t.node.name.clone(),
                secret,
                first_running: None,
                last_running: None,
                values: Vec::new(),
                start_unknown: false,
            });
            report.pods.len() - 1
        }
    };
    let Some(value) = value else {
        if t.reads == Reads::AtStart {
            report.pods[i].start_unknown = true;
        }
        return;
    };
    report.samples += 1;
    let rec = &mut report.pods[i];
    rec.first_running.get_or_insert(now);
    rec.last_running = Some(now);
    if rec.values.last().map(|(_, v)| v) != Some(&value) {
        rec.values.push((now, value.clone()));
    }
    match expiry(&value) {
        Some(e) if e <= now => report.expired.push(Expired {
            at: now,
            pod: name,
            token: value,
            expired_at: e,
        }),
        Some(_) => {}
        None => report.unknown_values += 1,
    }
}
