//! Standalone fake Pipedream. `fake-pipedream --port 8081 --accounts accounts.json`
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
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
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}
