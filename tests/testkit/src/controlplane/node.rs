//! Nodes for the control plane: kube-scheduler and kubemark's hollow node (`kubemark --morph=kubelet`: the real
//! kubelet — pod workers, volume manager, the real `secret`/`projected` volume plugins and atomic writer — over a
//! fake container runtime). Pods scheduled to a node reach `Running` (no process runs) and their volumes are real
//! files, so a test reads exactly what a container would see.
//!
//! A node's kubelet writes under `/tmp/hollow-kubelet.NNN` (it ignores `TMPDIR`) and serves its fake container
//! leaves `/tmp/kubelet_remote_NNN.sock` behind; its watchdog removes both when it stops, however the test ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::process::Supervised;

/// How the nodes of a control plane are set up.
#[derive(Clone, Copy, Debug)]
pub struct NodeOptions {
    /// How many hollow nodes (`node-1`, `node-2`, …).
    pub count: usize,
    /// The kubelet's `syncFrequency`: a changed Secret reaches a mounted volume on the pod's next sync, which
    /// comes this long (plus up to half of it as jitter) after the previous one. A real kubelet's default is 1 m.
    pub sync_frequency: Duration,
    /// Pods per node (`--max-pods`).
    pub max_pods: u32,
}

impl Default for NodeOptions {
    /// Two nodes with the real kubelet's default sync period.
    fn default() -> Self {
        Self {
            count: 2,
            sync_frequency: Duration::from_secs(60),
            max_pods: 110,
        }
    }
}

/// A running hollow node.
#[derive(Clone, Debug)]
pub struct Node {
    /// The Node object's name.
    pub name: String,
    /// The kubelet's root directory (`<root>/pods/<uid>/volumes/…`).
    pub root: PathBuf,
}

/// The files of one pod volume as the kubelet last wrote them (one atomic-writer generation: `..data` points at a
/// timestamped directory that is swapped as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeFiles {
    /// When the kubelet wrote this generation (the directory's modification time).
    pub written: SystemTime,
    /// Key (path inside the volume) → content.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl VolumeFiles {
    /// One file as text.
    pub fn text(&self, key: &str) -> Option<String> {
        self.files
            .get(key)
            .and_then(|b| String::from_utf8(b.clone()).ok())
    }
}

/// The kubelet's user in the API server's token file and audit log: the nodes' Secret reads and watches are
/// recorded under it (its other requests are not).
pub const KUBELET_USER: &str = "kubelet";

/// The kubelet's plugin directory name for a pod volume's source (`secret` → `kubernetes.io~secret`).
fn plugin_dir(volume: &Value) -> Option<&'static str> {
    let kinds = [
        ("secret", "kubernetes.io~secret"),
        ("projected", "kubernetes.io~projected"),
        ("configMap", "kubernetes.io~configmap"),
        ("downwardAPI", "kubernetes.io~downward-api"),
        ("emptyDir", "kubernetes.io~empty-dir"),
    ];
    kinds
        .into_iter()
        .find(|(k, _)| volume.get(k).is_some())
        .map(|(_, d)| d)
}

/// The host directory of volume `volume` of `pod` (a Pod object as JSON) on `node`.
pub fn volume_dir(node: &Node, pod: &Value, volume: &str) -> Option<PathBuf> {
    let uid = pod["metadata"]["uid"].as_str()?;
    let spec = pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == volume)?;
    Some(
        node.root
            .join("pods")
            .join(uid)
            .join("volumes")
            .join(plugin_dir(spec)?)
            .join(volume),
    )
}

/// Read the volume's current generation; `None` while it is not mounted. Files are read from the generation's
/// own directory, never through `..data`, so a swap in the middle cannot mix two generations.
pub fn read_volume(dir: &Path) -> Option<VolumeFiles> {
    for _ in 0..3 {
        let Ok(target) = std::fs::read_link(dir.join("..data")) else {
            return None;
        };
        let generation = dir.join(target);
        let read = || -> std::io::Result<VolumeFiles> {
            let written = std::fs::metadata(&generation)?.modified()?;
            let mut files = BTreeMap::new();
            collect(&generation, "", &mut files)?;
            Ok(VolumeFiles { written, files })
        };
        // The generation was swapped out (and removed) while being read: read the new one.
        if let Ok(v) = read() {
            return Some(v);
        }
    }
    None
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let key = format!("{prefix}{name}");
        if e.file_type()?.is_dir() {
            collect(&e.path(), &format!("{key}/"), out)?;
        } else {
            out.insert(key, std::fs::read(e.path())?);
        }
    }
    Ok(())
}

/// When container `container` of `pod` started (its current instance), from the pod's status.
pub fn container_started(pod: &Value, container: &str) -> Option<Timestamp> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)?["state"]["running"]["startedAt"]
        .as_str()?
        .parse()
        .ok()
}

/// The volume as the container found it when it started, if the kubelet has not written a newer generation
/// since: what an environment variable or a `subPath` mount of the same Secret holds (the kubelet resolves both
/// from the same Secret cache when it starts the container, right after mounting the volume in the same pod
/// sync). `None` once the volume was updated after the start (read it earlier) or before the container runs.
pub fn as_started(dir: &Path, pod: &Value, container: &str) -> Option<VolumeFiles> {
    let started = container_started(pod, container)?;
    let v = read_volume(dir)?;
    let written = Timestamp::try_from(v.written).ok()?;
    // `startedAt` has second precision: the mount the container started with was written before the end of
    // that second.
    (written < started + jiff::SignedDuration::from_secs(1)).then_some(v)
}

/// The watchdog's clean-up of a node, once it is gone: its kubelet root (named in its log) and the
/// `/tmp/kubelet_remote_*.sock` files kubemark leaves behind (one per start, bound by nobody once it runs; a socket
/// some process still listens on is kept).
pub(super) fn cleanup_script(log: &Path) -> String {
    format!(
        r#"
root=$(grep -o 'Using /tmp/hollow-kubelet\.[0-9]* as root dir' '{}' 2>/dev/null | head -n 1 | cut -d' ' -f2)
case $root in /tmp/hollow-kubelet.*) rm -rf -- "$root";; esac
for s in /tmp/kubelet_remote_*.sock; do
  [ -S "$s" ] && ! grep -qF " $s" /proc/net/unix 2>/dev/null && rm -f -- "$s"
done
true
"#,
        log.display()
    )
}

/// Start node `name` (kubemark as the kubelet), authenticating with `kubeconfig`.
pub(super) fn spawn(
    bin: &Path,
    name: &str,
    kubeconfig: &Path,
    options: &NodeOptions,
    log: &Path,
) -> Result<Supervised, String> {
    let port = super::free_port();
    let after = cleanup_script(log);
    Supervised::spawn_with(
        &format!("kubemark {name}"),
        &bin.join("kubemark"),
        &[
            "--morph=kubelet".into(),
            format!("--name={name}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--use-host-image-service=false".into(),
            format!("--kubelet-port={port}"),
            "--kubelet-read-only-port=0".into(),
            format!("--max-pods={}", options.max_pods),
            // The default 10 requests/s would delay pod status updates with many pods; the Secret path (watches
            // and the sync period) is unaffected.
            "--kube-api-qps=50".into(),
            "--kube-api-burst=100".into(),
        ],
        &[(
            "KUBEMARK_SYNC_FREQUENCY".into(),
            format!("{}s", options.sync_frequency.as_secs()),
        )],
        log,
        "",
        &after,
    )
}

/// The kubelet's root directory, from its log line `Using /tmp/hollow-kubelet.NNN as root dir`.
pub(super) fn root_from_log(log: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("as root dir"))?;
    let start = line.find("Using ")? + "Using ".len();
    let rest = &line[start..];
    Some(PathBuf::from(rest.split_whitespace().next()?))
}

/// Remove kubelet roots named in the logs of a data directory left by a test process that is gone.
pub(super) fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("node-")
            && name.ends_with(".log")
            && let Some(root) = root_from_log(&e.path())
            && root.starts_with("/tmp")
            && root.to_string_lossy().contains("hollow-kubelet.")
        {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// Wait until node `name` is registered and Ready, then remove the `not-ready` taint it registers with (no
/// node-lifecycle controller runs to do that), so pods schedule to it.
pub(super) async fn wait_ready(
    cp: &super::ControlPlane,
    name: &str,
    limit: Duration,
) -> Result<(), String> {
    let path = format!("/api/v1/nodes/{name}");
    let deadline = Instant::now() + limit;
    loop {
        let (code, node, _) = cp.request(reqwest::Method::GET, &path, "", None).await?;
        let ready = code == 200
            && node["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if ready {
            let taints: Vec<Value> = node["spec"]["taints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t["key"] != "node.kubernetes.io/not-ready")
                .collect();
            let (code, body, _) = cp
                .request(
                    reqwest::Method::PATCH,
                    &path,
                    "application/merge-patch+json",
                    Some(json!({"spec": {"taints": taints}}).to_string()),
                )
                .await?;
            if code != 200 {
                return Err(format!("untainting node {name}: {code} {body}"));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node {name} not Ready after {}s: {node}",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
