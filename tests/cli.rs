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
