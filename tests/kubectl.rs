//! The installed `kubectl` against a real API server: CRDs applied without warnings, the examples applied
//! server-side, printer columns, `get -o yaml`, `explain`, an admission error, `delete` with garbage collection by
//! the real kube-controller-manager. With the operator running, the example Secret appears and `kubectl` shows it.

mod support;

use std::process::Command;

use support::Env;

fn kubectl(env: &Env, args: &[&str]) -> (bool, String) {
    kubectl_with(&env.kubeconfig, args)
}

fn kubectl_with(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); install kubectl or set KUBECTL"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(env: &Env, args: &[&str]) -> String {
    let (success, text) = kubectl(env, args);
    assert!(success, "kubectl {} failed:\n{text}", args.join(" "));
    text
}

/// The examples with their placeholders pointed at the fake Pipedream, and their namespaces and connection name
/// this test's.
fn example(env: &Env, file: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("examples/{file}"))
        .unwrap()
        .replace("pipedream-secrets-operator", &env.ns("ops"))
        .replace("team-a", &env.ns("team-a"))
        .replace(
            "name: default\n",
            &format!("name: {}\n", env.cluster("default")),
        )
        .replace("https://api.pipedream.com", &env.pd.url())
        .replace(
            "replace-with-your-oauth-client-secret",
            support::CLIENT_SECRET,
        )
        .replace("replace-with-your-oauth-client-id", support::CLIENT_ID)
        .replace("proj_replaceMe", "proj_sys")
        .replace("apn_Ab12Cd3", "apn_Sys1");
    let path = env.log.with_file_name(file);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_and_deletes_on_a_real_api_server() {
    // Alone on the binary's shared control plane: a cluster-wide operator, as the chart installs it.
    let options = support::Options {
        cluster_wide: true,
        alone_in_binary: true,
        ..Default::default()
    };
    let accounts = vec![support::oauth_account("apn_Sys1", Some(3600), 600)];
    let mut env = env_or_skip!(support::Env::start_with(accounts, options));
    let applied = ok(&env, &["apply", "--server-side", "-f", "crds/"]);
    assert!(
        applied.contains("connectedaccounts.pipedream-secrets.io serverside-applied"),
        "{applied}"
    );
    let namespaces = example(&env, "namespaces.yaml");
    ok(
        &env,
        &["apply", "--server-side", "-f", namespaces.to_str().unwrap()],
    );
    let conn = example(&env, "connection-oauth.yaml");
    let out = ok(
        &env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            conn.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains(&format!(
            "clusterpipedreamconnection.pipedream-secrets.io/{} serverside-applied",
            env.cluster("default")
        )),
        "{out}"
    );
    let ca = example(&env, "connectedaccount-oauth.yaml");
    ok(
        &env,
        &["apply", "--server-side", "-f", ca.to_str().unwrap()],
    );

    env.start_operator();
    env.wait_synced("github-bot", 20).await;

    let team_a = env.ns("team-a");
    let table = ok(&env, &["get", "pdca", "-n", &team_a]);
    let header = table.lines().next().unwrap();
    for col in [
        "NAME",
        "ACCOUNT",
        "SECRET",
        "READY",
        "REASON",
        "EXPIRES",
        "NEXT SYNC",
        "AGE",
    ] {
        assert!(header.contains(col), "column {col} missing: {table}");
    }
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains("github-bot")
            && row.contains("apn_Sys1")
            && row.contains("github-bot-credentials")
            && row.contains("True"),
        "{table}"
    );
    let wide = ok(
        &env,
        &[
            "get",
            "connectedaccounts.pipedream-secrets.io",
            "-A",
            "-o",
            "wide",
        ],
    );
    assert!(
        row.contains("SecretSynced"),
        "the reason is in the default view: {table}"
    );
    assert!(
        wide.contains("CONNECTION") && wide.contains("ClusterPipedreamConnection/"),
        "{wide}"
    );
    let category = ok(&env, &["get", "pipedream", "-A"]);
    assert!(
        category.contains("github-bot") && category.contains("default"),
        "{category}"
    );

    let yaml = ok(
        &env,
        &[
            "get",
            "secret",
            "github-bot-credentials",
            "-n",
            &team_a,
            "-o",
            "yaml",
        ],
    );
    assert!(
        yaml.contains("GITHUB_TOKEN:")
            && yaml.contains("kind: ConnectedAccount")
            && yaml.contains("pipedream-secrets.io/expires-at"),
        "{yaml}"
    );
    assert!(!yaml.contains(support::CLIENT_SECRET));

    let explain = ok(&env, &["explain", "connectedaccount.spec.accountId"]);
    assert!(explain.contains("apn_"), "{explain}");

    let (rejected, msg) = kubectl(
        &env,
        &[
            "patch",
            "pdca",
            "github-bot",
            "-n",
            &team_a,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"accountId":"nope"}}"#,
        ],
    );
    assert!(!rejected && msg.contains("spec.accountId"), "{msg}");

    ok(&env, &["delete", "pdca", "github-bot", "-n", &team_a]);
    // The operator's finalizer goes, then kube-controller-manager's garbage collector takes the Secret.
    env.wait("the Secret garbage-collected", 30, async || {
        let gone = kubectl(
            &env,
            &["get", "secret", "github-bot-credentials", "-n", &team_a],
        );
        (!gone.0 && gone.1.contains("not found")).then_some(())
    })
    .await;
}

/// Issue 16: the real API server warns about schema formats it does not know (schemars' `uint32` did, on every
/// apply); `kubectl apply --server-side -f crds/` onto a fresh control plane prints no warning.
#[test]
fn crds_apply_onto_a_real_api_server_without_warnings() {
    let Some(cp) = pdso_testkit::controlplane::ControlPlane::start_empty() else {
        return;
    };
    let dir = cp.dir().join("kubectl-test");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("admin.kubeconfig");
    std::fs::write(
        &kubeconfig,
        cp.kubeconfig(pdso_testkit::controlplane::ADMIN),
    )
    .unwrap();
    let (success, text) = kubectl_with(&kubeconfig, &["apply", "--server-side", "-f", "crds/"]);
    assert!(success, "{text}");
    assert_eq!(
        text.matches("serverside-applied").count(),
        3,
        "three CRDs created: {text}"
    );
    assert!(!text.contains("Warning"), "the API server warned:\n{text}");
}
