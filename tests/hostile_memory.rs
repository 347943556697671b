//! Issue 25 (1): one namespace editor filling the operator's memory. The aggregated `edit` role lets any
//! namespace user create ConnectedAccounts and PipedreamConnections; each object the CRD admits is listed and
//! parsed by every replica and shard before anything filters it. Here team B creates 100 of the largest
//! ConnectedAccounts the API server admits (spec maps at their CRD limits, 256 KiB of metadata annotations, labels
//! up to the object limit) and 100 PipedreamConnections as large before the operator starts; the operator must come
//! up under the chart's 128 MiB limit and keep team A's tokens fresh.

mod support;

use pdso_testkit::pipedream::FakeAccount;
use serde_json::{Map, Value, json};
use support::{Env, secret_value};

/// The chart's default memory limit.
const LIMIT_MIB: u64 = 128;

fn victim() -> FakeAccount {
    FakeAccount {
        id: "apn_Vic1".into(),
        project_id: "proj_sys".into(),
        credentials: json!({"oauth_access_token": "tok"})
            .as_object()
            .unwrap()
            .clone(),
        lifetime_secs: Some(20),
        refresh_lead_secs: 8,
        ..Default::default()
    }
}

fn map(n: usize, f: impl Fn(usize) -> (String, String)) -> Value {
    Value::Object(
        (0..n)
            .map(|i| {
                let (k, v) = f(i);
                (k, json!(v))
            })
            .collect::<Map<_, _>>(),
    )
}

/// The largest metadata the API server takes: annotations at its 256 KiB limit, and labels (which nothing bounds
/// but the object size) filling most of the rest.
fn largest_metadata(i: usize) -> Value {
    let prefix = "a".repeat(200);
    json!({
        "labels": map(1_500, |j| (format!("{prefix}.example.com/l{i}-{j:05}"), "v".repeat(63))),
        "annotations": map(4, |j| (format!("bulk{j}"), "x".repeat(60 * 1024))),
    })
}

/// The largest ConnectedAccount the API server takes: every spec map at the CRD's total limits and the largest
/// metadata.
fn largest(i: usize) -> Value {
    let prefix = "a".repeat(200);
    json!({
        "metadata": largest_metadata(i),
        "spec": {
            "accountId": format!("apn_Bulk{i}"),
            "connectionRef": {"kind": "PipedreamConnection", "name": "pd"},
            "target": {
                "annotations": map(16, |j| (format!("note{j}"), "n".repeat(4000))),
                "labels": map(64, |j| (format!("{prefix}.example.com/t{j:02}"), "t".repeat(63))),
                "template": {"data": map(16, |j| (format!("k{j}"), format!("{{{{ credentials.x }}}}{}", " ".repeat(4000))))},
            },
        }
    })
}

async fn connection(env: &Env, ns: &str, url: &str) {
    env.apply(
        "v1",
        "Secret",
        Some(ns),
        "pd-key",
        json!({"stringData": {"api_key": format!("key-{ns}")}}),
    )
    .await;
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "PipedreamConnection",
        Some(ns),
        "pd",
        json!({"spec": {"apiUrl": url, "auth": {"apiKey": {"secretRef": {"name": "pd-key", "key": "api_key"}}}}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_admissible_objects_from_one_namespace_stay_under_the_memory_limit() {
    let options = support::Options {
        cluster_wide: true,
        alone_in_binary: true,
        ..Default::default()
    };
    let mut env = env_or_skip!(Env::start_with(vec![victim()], options));
    env.pd.add_api_key("key-team-a");
    connection(&env, "team-a", &env.pd.url()).await;
    connection(&env, "team-b", &env.pd.url()).await;
    let mut total = 0;
    for i in 0..100 {
        let body = largest(i);
        total += serde_json::to_vec(&body).unwrap().len();
        env.try_apply(
            "pipedream-secrets.io/v1alpha1",
            "ConnectedAccount",
            Some("team-b"),
            &format!("bulk-{i}"),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("bulk-{i} not admitted: {e}"));
    }
    // As many PipedreamConnections, as large: a tenant's own connections are watched and cached too.
    for i in 0..100 {
        let body = json!({
            "metadata": largest_metadata(i),
            "spec": {"apiUrl": format!("https://{}.example.com/", "p".repeat(60)),
                     "auth": {"apiKey": {"secretRef": {"name": "pd-key", "key": "api_key"}}}},
        });
        total += serde_json::to_vec(&body).unwrap().len();
        env.try_apply(
            "pipedream-secrets.io/v1alpha1",
            "PipedreamConnection",
            Some("team-b"),
            &format!("bulk-{i}"),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("connection bulk-{i} not admitted: {e}"));
    }
    eprintln!(
        "team B stored {:.1} MiB of ConnectedAccounts and PipedreamConnections",
        total as f64 / 1048576.0
    );
    env.apply(
        "pipedream-secrets.io/v1alpha1",
        "ConnectedAccount",
        Some("team-a"),
        "victim",
        json!({"spec": {"accountId": "apn_Vic1", "refresh": {"beforeExpiry": "5s"},
                        "connectionRef": {"kind": "PipedreamConnection", "name": "pd"}}}),
    )
    .await;
    env.extra_args = vec!["--allowed-api-hosts".into(), "127.0.0.1".into()];
    env.start_operator();
    let pid = env.operator_pids()[0];
    let secret = || async { env.secret("team-a", "victim").await };
    let first = env
        .wait("team A's Secret", 60, async || {
            secret_value(&secret().await?, "oauth_access_token")
        })
        .await;
    // Refreshes go on: two more tokens (20 s lifetime, renewed 5–8 s early).
    let mut seen = vec![first];
    env.wait("two refreshes of team A's Secret", 60, async || {
        let v = secret_value(&secret().await?, "oauth_access_token")?;
        if seen.last() != Some(&v) {
            seen.push(v);
        }
        (seen.len() >= 3).then_some(())
    })
    .await;
    assert!(env.operators_alive(), "the operator never restarted");
    let peak = env.operator_peak_rss_kib(pid).unwrap() / 1024;
    eprintln!("operator peak RSS {peak} MiB");
    assert!(
        peak < LIMIT_MIB,
        "peak RSS {peak} MiB, limit {LIMIT_MIB} MiB"
    );
}
