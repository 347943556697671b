//! Standalone fake Pipedream. `fake-pipedream --listen 127.0.0.1:8081 --accounts accounts.json`
//!
//! With `--as-host api.pipedream.com --proxy-listen 127.0.0.1:3128 --ca-out ca.pem` it also plays the network
//! between a pod and Pipedream: an egress proxy that sends `CONNECT api.pipedream.com:443` to an HTTPS front for
//! the fake (a certificate for that name from a CA written to `ca.pem`), so an operator configured for the real
//! Pipedream (no `apiUrl`) reaches the fake with `HTTPS_PROXY` and `PIPEDREAM_CA_FILE` alone.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use pdso_testkit::egressproxy::{EgressProxy, TlsFront};
use pdso_testkit::pipedream::{FakePipedream, Seed};

/// A fake Pipedream API on loopback (see docs/contributing.md, test kit).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// JSON file with `clients`, `api_keys`, `token_lifetime_secs` and `accounts`.
    #[arg(long)]
    accounts: Option<PathBuf>,
    /// Answer for this host on 443 through the egress proxy (needs `--proxy-listen` and `--ca-out`).
    #[arg(long, requires_all = ["proxy_listen", "ca_out"])]
    as_host: Option<String>,
    /// Where the egress proxy listens.
    #[arg(long, requires = "as_host")]
    proxy_listen: Option<SocketAddr>,
    /// Where to write the PEM of the CA that signed the front's certificate.
    #[arg(long, requires = "as_host")]
    ca_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let seed: Seed = match &args.accounts {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Seed::default(),
    };
    let fake = FakePipedream::start_on(args.listen, seed)
        .await
        .map_err(|e| e.to_string())?;
    println!("fake Pipedream listening on {}", fake.url());
    let mut _network = None;
    if let (Some(host), Some(listen), Some(ca_out)) =
        (&args.as_host, args.proxy_listen, &args.ca_out)
    {
        let front = TlsFront::start_for(fake.url().trim_start_matches("http://"), host).await?;
        std::fs::write(ca_out, front.ca_pem()).map_err(|e| format!("{}: {e}", ca_out.display()))?;
        let hosts = HashMap::from([(format!("{host}:443"), front.addr())]);
        let proxy = EgressProxy::start_resolving(listen, hosts)
            .await
            .map_err(|e| format!("{listen}: {e}"))?;
        println!(
            "egress proxy on {} sends https://{host} to it (CA in {})",
            proxy.url(),
            ca_out.display()
        );
        _network = Some((front, proxy));
    }
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}
