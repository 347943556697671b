//! Issue 10: memory per ConnectedAccount stays flat. Syncs 1,000 accounts with the real binary and fails if the
//! operator's resident memory grows by more than a stated amount per account (a memory guard, not a timing test).

mod support;

use std::time::Duration;

use futures::{StreamExt, stream};
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use support::{Env, oauth_account};

const ACCOUNTS: usize = 1000;
/// Growth allowed per synced ConnectedAccount (its cached object, Secret metadata, schedule state, fetch cache and
/// metric series), in KiB. Measured 5 KiB on the debug build with jemalloc; it was 10 KiB while kube's long-lived
/// Event recorder kept every Event of the last six minutes (about 2.5 KiB per account after a sync), and a parsed
/// credentials map plus a full connection key were held per account. The bound leaves room for allocator noise.
const KIB_PER_ACCOUNT: u64 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_synced_account_stays_within_its_bound() {
    let accounts = (0..ACCOUNTS)
        .map(|i| oauth_account(&format!("apn_Scale{i:05}"), Some(3600), 600))
        .collect();
    // Alone in its binary: a cluster-wide operator on the shared control plane, as the chart installs it.
    let options = support::Options {
        cluster_wide: true,
        alone_in_binary: true,
        ..Default::default()
    };
    let mut env = env_or_skip!(Env::start_with(accounts, options));
    let team_a = env.ns("team-a");
    env.apply_default_connection(json!({"rateLimit": {"requestsPerSecond": 1000, "burst": 100}}))
        .await;
    env.start_operator();
    let pid = env.operator_pids()[0];
    // Settle, then take the baseline with the connection in use (one account synced).
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "pipedream-secrets.io",
        "v1alpha1",
        "ConnectedAccount",
    ));
    let api: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(env.client.clone(), &team_a, &ar);
    let create = |i: usize| {
        let api = api.clone();
        async move {
            let name = format!("s-{i:05}");
            let obj = json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                "metadata": {"name": name}, "spec": {"accountId": format!("apn_Scale{i:05}")}});
            api.patch(&name, &PatchParams::apply("scale"), &Patch::Apply(&obj))
                .await
                .unwrap();
        }
    };
    create(0).await;
    env.wait_synced("s-00000", 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = env.operator_rss_kib(pid).unwrap();
    stream::iter(1..ACCOUNTS)
        .for_each_concurrent(16, create)
        .await;
    env.wait("every account synced", 300, async || {
        let cas = env
            .list(
                "pipedream-secrets.io/v1alpha1",
                "ConnectedAccount",
                "team-a",
            )
            .await;
        let ready = cas
            .iter()
            .filter(|ca| support::ready_of(ca).is_some_and(|r| r.starts_with("True/")))
            .count();
        (ready >= ACCOUNTS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env.operator_rss_kib(pid).unwrap();
    let per = after.saturating_sub(before) / (ACCOUNTS as u64 - 1);
    eprintln!(
        "scale: RSS {before} KiB -> {after} KiB for {ACCOUNTS} accounts: {per} KiB per account"
    );
    assert!(
        per <= KIB_PER_ACCOUNT,
        "{per} KiB per account (bound {KIB_PER_ACCOUNT}); RSS {before} -> {after} KiB"
    );
    assert_eq!(
        env.pd.count("connect_account"),
        ACCOUNTS,
        "one fetch per account"
    );
}
