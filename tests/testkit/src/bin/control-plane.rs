//! Standalone real control plane (etcd, kube-apiserver, kube-controller-manager) on loopback, for scripts and
//! the chart tests: `control-plane --kubeconfig-dir DIR` writes `admin.kubeconfig`, `operator.kubeconfig` and one
//! per tenant user, prints one JSON line (`url`, `dir`, `audit_log`, `kubeconfigs`, `nodes`), and runs until its
//! standard input closes, SIGINT or SIGTERM. `--nodes N` adds kube-scheduler, the workload controllers and N
//! hollow nodes (the real kubelet over a fake container runtime). Exits 77 (after one line naming
//! `KUBEBUILDER_ASSETS`) when no binaries are found and `CI` is not `true`.
use std::path::PathBuf;

use clap::Parser;
use pdso_testkit::controlplane::node::NodeOptions;
use pdso_testkit::controlplane::{ADMIN, ControlPlane, OPERATOR, TENANTS};
use serde_json::json;

/// A real Kubernetes control plane on loopback (see docs/contributing.md, test kit).
#[derive(Parser)]
struct Args {
    /// Write a kubeconfig per static user here.
    #[arg(long)]
    kubeconfig_dir: PathBuf,
    /// Do not install the operator's CRDs.
    #[arg(long)]
    no_crds: bool,
    /// Hollow nodes to run (with kube-scheduler and the workload controllers); 0: none.
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// The nodes' kubelet `syncFrequency` in seconds (a real kubelet's default is 60).
    #[arg(long, default_value_t = 60)]
    sync_frequency_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let nodes = NodeOptions {
        count: args.nodes,
        sync_frequency: std::time::Duration::from_secs(args.sync_frequency_secs),
        ..NodeOptions::default()
    };
    let started = match (args.no_crds, args.nodes > 0) {
        (true, true) => ControlPlane::start_empty_with_nodes(nodes),
        (true, false) => ControlPlane::start_empty(),
        (false, true) => ControlPlane::start_with_nodes(nodes),
        (false, false) => ControlPlane::start(),
    };
    let Some(cp) = started else {
        std::process::exit(77);
    };
    std::fs::create_dir_all(&args.kubeconfig_dir)
        .map_err(|e| format!("{}: {e}", args.kubeconfig_dir.display()))?;
    let mut kubeconfigs = serde_json::Map::new();
    for user in [ADMIN, OPERATOR].into_iter().chain(TENANTS) {
        let path = args.kubeconfig_dir.join(format!("{user}.kubeconfig"));
        std::fs::write(&path, cp.kubeconfig(user))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        kubeconfigs.insert(user.to_string(), json!(path));
    }
    println!(
        "{}",
        json!({"url": cp.url(), "dir": cp.dir(), "audit_log": cp.dir().join("audit.log"),
            "kubeconfigs": kubeconfigs,
            "nodes": cp.nodes().iter().map(|n| json!({"name": n.name, "root": n.root})).collect::<Vec<_>>()})
    );
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = stdin_closed => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(cp);
    Ok(())
}
