//! The installed `kubectl` against the test kit's API emulator: CRDs and the examples applied server-side, printer
//! columns, `get -o yaml`, `delete`. With the operator running, the example Secret appears and `kubectl` shows it.

mod support;

use std::process::Command;

use support::Env;

fn kubectl(env: &Env, args: &[&str]) -> (bool, String) {
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
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

/// The examples with their placeholders pointed at the fake Pipedream.
fn example(env: &Env, file: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("examples/{file}"))
        .unwrap()
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
async fn kubectl_applies_gets_and_deletes_through_the_emulator() {
    let mut env = Env::start(vec![support::oauth_account("apn_Sys1", Some(3600), 600)]).await;
    let applied = ok(&env, &["apply", "--server-side", "-f", "crds/"]);
    assert!(
        applied.contains("connectedaccounts.pipedream-secrets.io serverside-applied"),
        "{applied}"
    );
    ok(
        &env,
        &["apply", "--server-side", "-f", "examples/namespaces.yaml"],
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
        out.contains("clusterpipedreamconnection.pipedream-secrets.io/default serverside-applied"),
        "{out}"
    );
    let ca = example(&env, "connectedaccount-oauth.yaml");
    ok(
        &env,
        &["apply", "--server-side", "-f", ca.to_str().unwrap()],
    );

    env.start_operator();
    env.wait_synced("github-bot", 20).await;

    let table = ok(&env, &["get", "pdca", "-n", "team-a"]);
    let header = table.lines().next().unwrap();
    for col in [
        "NAME",
        "ACCOUNT",
        "SECRET",
        "READY",
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
    assert!(wide.contains("REASON") && wide.contains("Synced"), "{wide}");
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
            "team-a",
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
            "team-a",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"accountId":"nope"}}"#,
        ],
    );
    assert!(!rejected && msg.contains("spec.accountId"), "{msg}");

    ok(&env, &["delete", "pdca", "github-bot", "-n", "team-a"]);
    let gone = kubectl(
        &env,
        &["get", "secret", "github-bot-credentials", "-n", "team-a"],
    );
    assert!(
        !gone.0 && gone.1.contains("NotFound") || gone.1.contains("not found"),
        "garbage-collected: {}",
        gone.1
    );
}
