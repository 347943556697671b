use clap::{CommandFactory, FromArgMatches, Parser};
use pipedream_secrets_operator::cli::error::CommandError;
use pipedream_secrets_operator::cli::{Cli, Command};
use pipedream_secrets_operator::{commands, kubectl};

// See Cargo.toml: resident memory at 10,000 accounts is the reason.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // One rustls provider for kube and reqwest, installed before either builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let invoked_as = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    // kubectl completes `kubectl pipedream …` by running `kubectl_complete-pipedream <args…> <word>`; cobra
    // programs answer the same as `__complete <args…> <word>`.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let completing = if invoked_as.starts_with("kubectl_complete-pipedream") {
        Some(&args[..])
    } else if args.first().is_some_and(|a| a == "__complete") {
        Some(&args[1..])
    } else {
        None
    };
    if let Some(words) = completing {
        let answer = pipedream_secrets_operator::cli::complete::complete(&Cli::command(), words);
        print!("{}", answer.render());
        return std::process::ExitCode::SUCCESS;
    }
    // Installed as `kubectl-pipedream`, kubectl runs it as `kubectl pipedream …`: same commands, plugin-style help.
    let plugin = invoked_as.starts_with("kubectl-pipedream");
    let cli = if plugin {
        let matches = Cli::command()
            .name("kubectl-pipedream")
            .bin_name("kubectl pipedream")
            .get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    } else {
        Cli::parse()
    };
    if plugin && cli.command.is_none() {
        let _ = Cli::command().bin_name("kubectl pipedream").print_help();
        return std::process::ExitCode::from(2);
    }
    let result = dispatch(cli.command, cli.run, plugin);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Run the subcommand (`run` without one).
///
/// Long because it is one match: an arm per subcommand, each handing its arguments to its function.
fn dispatch(
    command: Option<Command>,
    run: pipedream_secrets_operator::cli::RunArgs,
    plugin: bool,
) -> Result<(), CommandError> {
    match command {
        Some(Command::Status { name, kube, output }) => {
            block_on(kubectl::status(name, kube, output))
        }
        Some(Command::Sync {
            names,
            all,
            selector,
            kube,
        }) => block_on(kubectl::sync(names, all, selector, kube)),
        Some(Command::Uninstall {
            operator_namespace,
            operator_selector,
            timeout,
            namespaces,
            delete_cluster_connection,
            kube,
        }) => block_on(kubectl::uninstall(
            operator_namespace,
            operator_selector,
            timeout,
            namespaces,
            delete_cluster_connection,
            kube,
        )),
        Some(Command::Version { client }) => block_on(commands::version(client)),
        Some(Command::Completion { shell }) => {
            let name = if plugin {
                "kubectl-pipedream"
            } else {
                "pipedream-secrets-operator"
            };
            clap_complete::generate(shell, &mut Cli::command(), name, &mut std::io::stdout());
            Ok(())
        }
        Some(Command::Crd {
            api_reference: true,
            ..
        }) => {
            print!(
                "{}",
                pipedream_secrets_operator::crd::api_reference(
                    &pipedream_secrets_operator::crd::all_crds()
                )
            );
            Ok(())
        }
        Some(Command::Crd { dir, .. }) => commands::crd(dir.as_deref()),
        Some(Command::Render { file, credentials }) => commands::render(&file, &credentials),
        Some(Command::Check {
            connection,
            namespace,
            account,
            pipedream_ca_file,
            wait,
            timeout,
        }) => block_on(commands::check(
            connection,
            namespace,
            account,
            pipedream_ca_file,
            wait.then_some(timeout),
        )),
        Some(Command::Run(args)) => block_on(commands::run(args)),
        None => block_on(commands::run(run)),
    }
}

fn block_on(
    fut: impl std::future::Future<Output = Result<(), CommandError>>,
) -> Result<(), CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CommandError::StartRuntime)?
        .block_on(fut)
}
