//! The Secret watches against the real API server (`pdso_testkit::controlplane`; skipped when its binaries are
//! missing, as the system tests are).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector;
use kube::{Client, Config};
use pdso_testkit::controlplane::{self, ControlPlane};
use serde_json::json;

use super::stores::{credentials_watch, secret_watch};
use super::{Scope, Task};
use crate::controller::context::{Clock, Context, Settings};
use crate::controller::fetch::Triggers;
use crate::controller::hosts::AllowedHosts;
use crate::metrics::Metrics;

async fn admin(plane: &ControlPlane) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&plane.kubeconfig(controlplane::ADMIN)).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Issue 25 (1): the credentials watch (metadata of every Secret without the watch label, run to follow connection
/// credentials) kept each one's name for first writes, so the operator's memory grew with Secrets that have
/// nothing to do with it. On the real API server: 300 unrelated Secrets, half listed and half created while it runs, leave nothing
/// held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_secrets_leave_nothing_held() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(plane) = ControlPlane::shared() else {
        return;
    };
    let client = admin(plane).await;
    let ns = format!("held-{}", std::process::id());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    const N: usize = 300;
    let unrelated = |i: usize| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": format!("unrelated-{i}"),
            "labels": {"app": "someone-else"}}, "stringData": {"password": "x"}}))
        .unwrap()
    };
    for i in 0..N / 2 {
        secrets
            .create(&PostParams::default(), &unrelated(i))
            .await
            .unwrap();
    }
    let scopes: Vec<Scope> = vec![Some(ns.clone())];
    let (connections, _w) = reflector::store();
    let (cluster, _cw) = reflector::store();
    let ctx = Context::new(
        client.clone(),
        Settings {
            operator_namespace: ns.clone(),
            default_connection: None,
            cluster_connections_disabled: true,
            allowed_api_hosts: AllowedHosts::new(Vec::<String>::new()),
            shard: Default::default(),
            propagation: crate::schedule::DEFAULT_PROPAGATION,
        },
        [(Some(ns.clone()), connections)].into(),
        cluster,
        crate::pipedream::http_client(Duration::from_secs(5), &[]).unwrap(),
        Arc::new(Metrics::new()),
        Clock::System,
        None,
        Triggers::default(),
    );
    // Count what the credentials watch hands the context, to know when it has seen every Secret.
    let delivered = Arc::new(AtomicUsize::new(0));
    let on_ctx = {
        let (weak, delivered) = (Arc::downgrade(&ctx), delivered.clone());
        move |f: &dyn Fn(&Context)| {
            if let Some(ctx) = weak.upgrade() {
                delivered.fetch_add(1, Ordering::SeqCst);
                f(&ctx);
            }
        }
    };
    let mut background: Vec<Task> = Vec::new();
    let list = kube::runtime::watcher::Config::default();
    credentials_watch(&client, &scopes, &list, on_ctx, &mut background);
    let mut tasks: Vec<_> = background.into_iter().map(tokio::spawn).collect();
    for mut stream in secret_watch(&client, &scopes, &list, ctx.secrets.clone()) {
        use futures::StreamExt;
        tasks.push(tokio::spawn(async move {
            while stream.next().await.is_some() {}
        }));
    }
    // Half listed, half created while the watch runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::SeqCst) < N / 2 || !ctx.secrets.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watches did not list"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = delivered.load(Ordering::SeqCst);
    for i in N / 2..N {
        secrets
            .create(&PostParams::default(), &unrelated(i))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::SeqCst) < listed + N / 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch delivered {} of {}",
            delivered.load(Ordering::SeqCst) - listed,
            N / 2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = ctx.secret_entries_held();
    for t in tasks {
        t.abort();
    }
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
    assert_eq!(held, 0, "entries held for {N} Secrets no connection reads");
}
