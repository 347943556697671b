//! Standalone Kubernetes API emulator. `kube-emulator --listen 127.0.0.1:6443 --kubeconfig /tmp/emulator.kubeconfig`
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use pdso_testkit::apiserver::ApiServer;

/// A Kubernetes API emulator on loopback (see docs/contributing.md, test kit).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Apply every CRD YAML file in this directory at startup.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// Authorize service-account users (bearer token `system:serviceaccount:<ns>:<name>`) by the Roles,
    /// ClusterRoles and bindings applied to the emulator; other tokens stay administrators.
    #[arg(long)]
    enforce_rbac: bool,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let server = ApiServer::start_on(args.listen)
        .await
        .map_err(|e| e.to_string())?;
    server.enforce_rbac(args.enforce_rbac);
    if let Some(dir) = &args.crds {
        let applied = server.apply_crd_dir(dir)?;
        println!("applied {applied} CRD(s) from {}", dir.display());
    }
    if let Some(p) = &args.kubeconfig {
        server
            .write_kubeconfig(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        println!("kubeconfig written to {}", p.display());
    }
    println!("Kubernetes API emulator listening on {}", server.url());
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}
