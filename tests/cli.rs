//! The binary's offline subcommands and its startup failure mode.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
}

fn tmp(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pdso-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn render_applies_the_template_to_an_account_answer() {
    let manifest = tmp(
        "ca.yaml",
        r#"
apiVersion: pipedream-secrets.io/v1alpha1
kind: ConnectedAccount
metadata: {name: gh}
spec:
  accountId: apn_A1
  target:
    template:
      data:
        GITHUB_TOKEN: "{{ credentials.oauth_access_token }}"
        app: "{{ account.app.name_slug }}"
"#,
    );
    let creds = tmp(
        "acct.json",
        r#"{"id":"apn_A1","app":{"name_slug":"github"},"credentials":{"oauth_access_token":"tok-1"}}"#,
    );
    let out = bin()
        .arg("render")
        .arg("-f")
        .arg(&manifest)
        .arg("--credentials")
        .arg(&creds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"GITHUB_TOKEN": "tok-1", "app": "github"})
    );
}

#[test]
fn render_without_template_and_with_a_bad_template() {
    let plain = tmp("plain.yaml", "spec: {accountId: apn_A1}\n");
    let creds = tmp("creds.json", r#"{"api_key":"k-1","port":8080}"#);
    let out = bin()
        .args(["render", "-f"])
        .arg(&plain)
        .arg("--credentials")
        .arg(&creds)
        .output()
        .unwrap();
    assert!(out.status.success());
    let data: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(data, serde_json::json!({"api_key": "k-1", "port": "8080"}));
    let bad = tmp(
        "bad.yaml",
        "spec: {target: {template: {data: {K: '{{ credentials.nope }}'}}}}\n",
    );
    let out = bin()
        .args(["render", "-f"])
        .arg(&bad)
        .arg("--credentials")
        .arg(&creds)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.target.template.data[K]"));
}

#[test]
fn run_without_a_reachable_cluster_fails_with_a_clear_error() {
    let kubeconfig = tmp(
        "kubeconfig",
        r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"#,
    );
    let out = bin()
        .arg("run")
        .env("KUBECONFIG", &kubeconfig)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot list ConnectedAccounts")
            && err.contains("kubectl apply --server-side -f crds/"),
        "{err}"
    );
}

/// Issue 25 (10): without leader election a shard never waited for the shards of another count, so a change of
/// the shard count ran two writers for the same accounts.
#[test]
fn shards_without_leader_election_are_refused_at_startup() {
    let out = bin()
        .args(["run", "--shard=0/2", "--leader-election=false"])
        .env("KUBECONFIG", "/nonexistent")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shard=0/2 needs leader election"), "{err}");
}

/// Parses `args` as the binary does and returns the resulting `run` flags.
fn run_flags(args: &[&str]) -> Result<pipedream_secrets_operator::cli::RunArgs, String> {
    use clap::Parser;
    let cli = pipedream_secrets_operator::cli::Cli::try_parse_from(
        std::iter::once("pipedream-secrets-operator").chain(args.iter().copied()),
    )
    .map_err(|e| e.to_string())?;
    Ok(match cli.command {
        Some(pipedream_secrets_operator::cli::Command::Run(r)) => r,
        _ => cli.run,
    })
}

#[test]
fn boolean_flags_work_bare_and_with_a_value() {
    let r = run_flags(&["run", "--disable-cluster-connections"]).unwrap();
    assert!(r.disable_cluster_connections);
    assert!(r.leader_election, "leader election defaults to on");
    let r = run_flags(&["run", "--leader-election=false"]).unwrap();
    assert!(!r.leader_election && !r.disable_cluster_connections);
    let r = run_flags(&[
        "run",
        "--leader-election",
        "--disable-cluster-connections=false",
    ])
    .unwrap();
    assert!(r.leader_election && !r.disable_cluster_connections);
    // Without a subcommand the same flags apply to `run`.
    assert!(
        run_flags(&["--disable-cluster-connections"])
            .unwrap()
            .disable_cluster_connections
    );
    let err = run_flags(&["run", "--leader-election=maybe"]).unwrap_err();
    assert!(err.contains("invalid value 'maybe'"), "{err}");
    // The real binary accepts the bare form too: it gets as far as the (unreachable) cluster.
    let kubeconfig = tmp(
        "kubeconfig-bare",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    );
    let out = bin()
        .args([
            "run",
            "--disable-cluster-connections",
            "--leader-election=false",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot list ConnectedAccounts"),
        "{err}"
    );
}

/// Secure metrics need the probes' own address, and a certificate folder means nothing without them: both are
/// refused at once, before the cluster is contacted (the kubeconfig here points nowhere).
#[test]
fn secure_metrics_flags_that_do_not_fit_together_stop_run_at_once() {
    let r = run_flags(&["run", "--metrics-secure", "--health-addr=0.0.0.0:8081"]).unwrap();
    assert!(r.metrics_secure && r.health_addr.is_some() && r.metrics_cert_dir.is_none());
    let kubeconfig = tmp(
        "kubeconfig-secure",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:9\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    );
    for (args, expected) in [
        (vec!["run", "--metrics-secure"], "give --health-addr"),
        (
            vec!["run", "--metrics-cert-dir=/nonexistent"],
            "--metrics-cert-dir is only used with --metrics-secure",
        ),
    ] {
        let out = bin()
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected) && !err.contains("ConnectedAccounts"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_demo_stops_on_sigterm_within_seconds() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    // Cargo builds examples next to the test binaries: target/<profile>/examples/demo.
    let demo = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples/demo");
    assert!(demo.exists(), "{} not built", demo.display());
    let mut child = Command::new(&demo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Wait until the demo has written the Secret once: it is in its watch loop.
    let started = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("Secret written") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("demo printed no Secret write: {e}");
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("demo still running 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "demo exited with {status}");
}

/// The allocator settings of `.cargo/config.toml` are compiled into the binary (one arena, no per-thread caches,
/// pages returned within a second, a background purging thread): jemalloc's own statistics, printed at exit, say
/// so.
#[test]
fn the_binary_carries_its_allocator_settings() {
    let out = bin()
        .args(["version", "--client"])
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(
        stats.contains(
            "config.malloc_conf: \"narenas:1,tcache:false,dirty_decay_ms:1000,background_thread:true\""
        ),
        "{stats}"
    );
    for opt in [
        "opt.narenas: 1\n",
        "opt.tcache: false",
        "opt.dirty_decay_ms: 1000",
        "opt.background_thread: true",
    ] {
        assert!(stats.contains(opt), "{opt} not in {stats}");
    }
}

/// Issue 27 (9): `source <(kubectl-pipedream completion bash)` completed a command named `kubectl-pipedream`, never
/// `kubectl pipedream <TAB>`: kubectl (1.26+) completes a plugin only through an executable named
/// `kubectl_complete-pipedream`, which answers cobra's `__complete` protocol. The installed kubectl, with the binary
/// on the PATH under both names, completes subcommands, flags and flag values.
#[test]
fn kubectl_completes_the_plugin_through_kubectl_complete_pipedream() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let dir = std::env::temp_dir().join(format!("pdso-completion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["kubectl-pipedream", "kubectl_complete-pipedream"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pipedream-secrets-operator"), &link)
            .unwrap();
    }
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let complete = |words: &[&str]| -> Vec<String> {
        let out = Command::new(&kubectl)
            .arg("__complete")
            .arg("pipedream")
            .args(words)
            .env("PATH", &path)
            // Completion of a plugin never needs a cluster.
            .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {kubectl} ({e}); install kubectl or set KUBECTL")
            });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect()
    };
    let got = complete(&["st"]);
    assert_eq!(got, ["status", ":4"], "subcommands");
    let got = complete(&["status", "-o", ""]);
    assert_eq!(got, ["table", "json", "yaml", ":4"], "values of -o");
    let got = complete(&["sync", "--sel"]);
    assert_eq!(got, ["--selector", ":4"], "flags");
    let got = complete(&["render", "-f", ""]);
    assert_eq!(got, [":0"], "file names, from the shell");
    // The binary answers `__complete` itself too, as cobra programs do.
    let out = bin()
        .args(["__complete", "completion", "ba"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bash\n:4\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
