use clap::Parser;
use pipedream_secrets_operator::cli::{Cli, Command};
use pipedream_secrets_operator::commands;

fn main() -> std::process::ExitCode {
    // One rustls provider for kube and reqwest, installed before either builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crd { dir }) => commands::crd(dir.as_deref()),
        Some(Command::Render { file, credentials }) => commands::render(&file, &credentials),
        Some(Command::Check {
            connection,
            namespace,
            account,
        }) => block_on(commands::check(connection, namespace, account)),
        Some(Command::Run(args)) => block_on(commands::run(args)),
        None => block_on(commands::run(cli.run)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn block_on(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?
        .block_on(fut)
}
