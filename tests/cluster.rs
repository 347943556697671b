//! Against a real cluster (ignored by default): `cargo test --test cluster -- --ignored` with KUBECONFIG set.
//! Follows the README: CRDs applied server-side, the operator run locally with the kubeconfig, a fake Pipedream
//! on this machine (the operator, not the cluster, calls Pipedream).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pipedream_secrets_operator::crd::{ClusterPipedreamConnection, ConnectedAccount, all_crds};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Operator(Child);
impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn wait_for<T, F: AsyncFn() -> Option<T>>(what: &str, f: F) -> T {
    for _ in 0..120 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and run with --ignored"]
async fn syncs_a_connected_account_on_a_real_cluster() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("pdso-cluster-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ns = "pdso-cluster-test";
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await;

    let pd = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": 3600})),
        )
        .mount(&pd)
        .await;
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    Mock::given(method("GET")).and(path("/v1/connect/proj_C1/accounts/apn_C1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "apn_C1", "healthy": true,
            "credentials": {"oauth_access_token": "cluster-token"}, "expires_at": expires.to_string()})))
        .mount(&pd).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let _ = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
        "metadata": {"name": "pd-oauth"}, "stringData": {"client_secret": "cs"}}))
            .unwrap(),
        )
        .await;
    let conns: Api<ClusterPipedreamConnection> = Api::all(client.clone());
    conns
        .patch(
            "pdso-cluster-test",
            &PatchParams::apply("pdso-cluster-test").force(),
            &Patch::Apply(json!({
        "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ClusterPipedreamConnection",
        "metadata": {"name": "pdso-cluster-test"},
        "spec": {"apiUrl": pd.uri(), "auth": {"oauth": {"clientId": "c", "projectId": "proj_C1",
            "clientSecretRef": {"name": "pd-oauth", "key": "client_secret", "namespace": ns}}}}})),
        )
        .await
        .unwrap();
    let cas: Api<ConnectedAccount> = Api::namespaced(client.clone(), ns);
    cas.patch("gh", &PatchParams::apply("pdso-cluster-test").force(), &Patch::Apply(json!({
        "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount", "metadata": {"name": "gh"},
        "spec": {"accountId": "apn_C1", "connectionRef": {"name": "pdso-cluster-test"}}}))).await.unwrap();

    let _op = Operator(
        Command::new(env!("CARGO_BIN_EXE_pipedream-secrets-operator"))
            .args([
                "run",
                "--namespaces",
                ns,
                "--operator-namespace",
                ns,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let s = wait_for("the Secret", async || {
        secrets.get_opt("gh").await.ok().flatten()
    })
    .await;
    assert_eq!(s.data.unwrap()["oauth_access_token"].0, b"cluster-token");
    let ca = wait_for("Ready", async || {
        cas.get("gh")
            .await
            .ok()
            .filter(|c| c.ready_condition().is_some_and(|r| r.status == "True"))
    })
    .await;
    assert_eq!(ca.status.unwrap().secret_name.as_deref(), Some("gh"));
    cas.delete("gh", &DeleteParams::default()).await.unwrap();
    wait_for("garbage collection", async || {
        secrets
            .get_opt("gh")
            .await
            .ok()
            .and_then(|s| s.is_none().then_some(()))
    })
    .await;
    let _ = conns
        .delete("pdso-cluster-test", &DeleteParams::default())
        .await;
    let _ = nss.delete(ns, &DeleteParams::default()).await;
}
