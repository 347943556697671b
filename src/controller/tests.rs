//! Reconcile request sequences against a mocked API server and a local fake Pipedream (wiremock). (Over 400
//! lines: scenario tests sharing one harness, each read beside the fixtures it uses.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::fetch::{MAX_IN_FLIGHT, Triggers};
use super::fixtures::{MockApi, Recorded};
use super::reconcile::{error_policy, reconcile};
use super::*;
use crate::controller::Error;
use crate::crd::{
    ClusterPipedreamConnection, ConnectedAccount, ConnectedAccountStatus, PipedreamConnection,
};
use crate::metrics::Metrics;

const T0: &str = "2026-11-22T09:00:00Z";
const TOKEN: &str = "gho_SECRET_TOKEN_VALUE_1";
const CLIENT_SECRET: &str = "pd_client_secret_VALUE";

pub struct Harness {
    pub api: MockApi,
    pub pd: MockServer,
    pub ctx: Arc<Context>,
    triggered: Arc<(std::sync::Mutex<Vec<String>>, tokio::sync::Notify)>,
    writers: std::sync::Mutex<(
        Writer<PipedreamConnection>,
        Writer<ClusterPipedreamConnection>,
    )>,
}

fn t0() -> Timestamp {
    T0.parse().unwrap()
}

pub fn account_json(token: &str, expires_at: Option<Timestamp>) -> Value {
    json!({
        "id": "apn_A1", "name": null, "external_id": "tenant-42", "healthy": true, "dead": false,
        "app": {"id": "oa_1", "name_slug": "github", "name": "GitHub", "auth_type": "oauth"},
        "credentials": {"oauth_access_token": token, "oauth_client_id": "gh-client", "oauth_uid": 77},
        "expires_at": expires_at.map(|t| t.to_string()), "error": null, "next_refresh_at": null
    })
}

async fn mount_token(pd: &MockServer) {
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/v1/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "pd-api-token", "expires_in": 3600})),
        )
        .mount(pd)
        .await;
}

impl Harness {
    pub async fn new() -> Self {
        Self::with_access(json!([{"namespaces": ["team-a"]}])).await
    }

    pub async fn with_access(access: Value) -> Self {
        let api = MockApi::default();
        let pd = MockServer::start().await;
        mount_token(&pd).await;
        let mut s = Secret::default();
        s.metadata.name = Some("pd-oauth".into());
        s.data = Some(
            [(
                "client_secret".to_string(),
                k8s_openapi::ByteString(CLIENT_SECRET.as_bytes().to_vec()),
            )]
            .into(),
        );
        api.put_secret("ops", &s);
        let conn: ClusterPipedreamConnection = serde_json::from_value(json!({
            "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ClusterPipedreamConnection",
            "metadata": {"name": "default", "uid": "uid-conn", "resourceVersion": "1"},
            "spec": {"apiUrl": pd.uri(), "auth": {"oauth": {"clientId": "cid",
                "clientSecretRef": {"name": "pd-oauth", "key": "client_secret", "namespace": "ops"},
                "projectId": "proj_P1"}}, "access": access}
        }))
        .unwrap();
        let (cstore, mut cwriter) = reflector::store::<ClusterPipedreamConnection>();
        cwriter.apply_watcher_event(&watcher::Event::Apply(conn));
        let (nstore, nwriter) = reflector::store::<PipedreamConnection>();
        let mut triggers = Triggers::default();
        let mut rx = triggers.subscribe(None);
        let triggered: Arc<(std::sync::Mutex<Vec<String>>, tokio::sync::Notify)> = Arc::default();
        let sink = triggered.clone();
        tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                sink.0.lock().unwrap().push(o.name);
                sink.1.notify_waiters();
            }
        });
        let ctx = Context::new(
            api.client(),
            Settings {
                operator_namespace: "ops".into(),
                default_connection: Some("default".into()),
                cluster_connections_disabled: false,
                allowed_api_hosts: AllowedHosts::new(["127.0.0.1".to_string()]),
                shard: Default::default(),
                propagation: crate::schedule::DEFAULT_PROPAGATION,
            },
            [(None, nstore)].into(),
            cstore,
            crate::pipedream::http_client(Duration::from_secs(5), &[]).unwrap(),
            Arc::new(Metrics::new()),
            Clock::manual(t0()),
            None,
            triggers,
        );
        let h = Self {
            api,
            pd,
            ctx,
            triggered,
            writers: std::sync::Mutex::new((nwriter, cwriter)),
        };
        h.serve_account(account_json(
            TOKEN,
            Some(t0() + SignedDuration::from_hours(1)),
        ))
        .await;
        h
    }

    /// Add a tenant's `PipedreamConnection/pd` in `ns`, with an API key Secret, pointing at `url`.
    pub fn add_namespaced_connection(&self, ns: &str, url: &str) {
        self.add_namespaced_connection_with(ns, url, json!({}));
    }

    /// [`Self::add_namespaced_connection`], with `extra` fields in its spec.
    pub fn add_namespaced_connection_with(&self, ns: &str, url: &str, extra: Value) {
        let mut spec = json!({"apiUrl": url, "auth": {"apiKey": {"secretRef": {"name": "pd-key", "key": "api_key"}}}});
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        let conn: PipedreamConnection = serde_json::from_value(json!({
            "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "PipedreamConnection",
            "metadata": {"name": "pd", "namespace": ns, "uid": format!("uid-pd-{ns}"), "resourceVersion": "1"},
            "spec": spec
        }))
        .unwrap();
        self.writers
            .lock()
            .unwrap()
            .0
            .apply_watcher_event(&watcher::Event::Apply(conn));
        let mut s = Secret::default();
        s.metadata.name = Some("pd-key".into());
        s.data = Some(
            [(
                "api_key".to_string(),
                k8s_openapi::ByteString(format!("key-{ns}").into_bytes()),
            )]
            .into(),
        );
        self.api.put_secret(ns, &s);
    }

    /// Replace the account answer (keeps the token endpoint).
    pub async fn serve(&self, resp: ResponseTemplate) {
        self.pd.reset().await;
        mount_token(&self.pd).await;
        // Pipedream's Date header agrees with the test clock (skew correction has its own tests).
        let date = self
            .ctx
            .clock
            .now()
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let resp = resp.insert_header("date", date.as_str());
        Mock::given(method("GET"))
            .and(path_regex("^/v1/connect/proj_P1/accounts/apn_A1$"))
            .respond_with(resp)
            .mount(&self.pd)
            .await;
    }

    pub async fn serve_account(&self, body: Value) {
        self.serve(ResponseTemplate::new(200).set_body_json(body))
            .await;
    }

    pub async fn pipedream_calls(&self, p: &str) -> usize {
        self.pd
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path().contains(p))
            .count()
    }

    /// Move the test clock to the ConnectedAccount's `status.nextSyncTime`.
    pub fn advance_to_next_sync(&self, ca: &ConnectedAccount) {
        let next: Timestamp = ca
            .status
            .as_ref()
            .and_then(|s| s.next_sync_time.as_deref())
            .and_then(|t| t.parse().ok())
            .expect("status.nextSyncTime");
        self.ctx.clock.advance(
            Duration::try_from(next.duration_since(self.ctx.clock.now())).unwrap_or_default(),
        );
    }

    /// Feed the Secret index what the label-selected Secret watch would have delivered by now.
    pub fn sync_index(&self) {
        for e in self.api.watch_events() {
            self.ctx.secrets.apply_event(&None, &e);
        }
    }

    /// Reconcile, feeding the written status back and the Secrets to the index as the watches would; when the
    /// pass asked the dispatcher for a fetch, wait for its trigger and run the pass it triggers, as the
    /// controller would.
    pub async fn reconcile(&self, ca: &mut ConnectedAccount) -> Result<Action, Error> {
        let uid = ca.metadata.uid.clone().unwrap_or_default();
        loop {
            self.sync_index();
            let out = reconcile(Arc::new(ca.clone()), self.ctx.clone()).await;
            if let Some(s) = self.api.status_of(&ca.name_any()) {
                ca.status = Some(serde_json::from_value::<ConnectedAccountStatus>(s).unwrap());
            }
            if out.is_err() || self.ctx.object(&uid).asked.is_none() {
                return out;
            }
            if !self.wait_triggered(&ca.name_any()).await {
                return out;
            }
        }
    }

    /// Wait (up to 15 s) until the dispatcher triggers ConnectedAccount `name`; consumes the trigger.
    pub async fn wait_triggered(&self, name: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let notified = self.triggered.1.notified();
            {
                let mut t = self.triggered.0.lock().unwrap();
                if let Some(i) = t.iter().position(|n| n == name) {
                    t.remove(i);
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

pub fn ca(spec: Value) -> ConnectedAccount {
    let mut spec_full = json!({"accountId": "apn_A1"});
    spec_full
        .as_object_mut()
        .unwrap()
        .extend(spec.as_object().cloned().unwrap_or_default());
    let mut ca: ConnectedAccount = serde_json::from_value(json!({
        "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
        "metadata": {"name": "gh", "namespace": "team-a", "uid": "uid-gh", "generation": 1},
        "spec": spec_full
    }))
    .unwrap();
    ca.metadata.resource_version = Some("1".into());
    ca
}

fn lines(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter().map(Recorded::line).collect()
}

const GET_SECRET: &str = "GET /api/v1/namespaces/team-a/secrets/gh";
const PATCH_SECRET: &str = "PATCH /api/v1/namespaces/team-a/secrets/gh";
const READ_CLIENT_SECRET: &str = "GET /api/v1/namespaces/ops/secrets/pd-oauth";
const PATCH_STATUS: &str =
    "PATCH /apis/pipedream-secrets.io/v1alpha1/namespaces/team-a/connectedaccounts/gh/status";
const POST_EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/team-a/events";
const PATCH_CA: &str =
    "PATCH /apis/pipedream-secrets.io/v1alpha1/namespaces/team-a/connectedaccounts/gh";
const POST_SECRET: &str = "POST /api/v1/namespaces/team-a/secrets";

fn ready(ca: &ConnectedAccount) -> (String, String, String) {
    let c = ca.ready_condition().expect("Ready condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn secret_value(s: &Secret, k: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap()
}

#[tokio::test]
async fn first_sync_writes_secret_status_and_event_in_order() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    let action = h.reconcile(&mut ca).await.unwrap();
    let reqs = h.api.take();
    // Pass 1 reads nothing (the index does not hold the name: a first write) and asks the connection's dispatcher
    // (which mints the token); the answer triggers pass 2, which writes with what pass 1 read: the Secret
    // (created, which the API server refuses if someone else's Secret holds the name; then its fields handed to
    // server-side apply), the status, one Event. No Secret GET or list, no finalizer (deletionPolicy Delete needs
    // none).
    assert_eq!(
        lines(&reqs),
        vec![
            READ_CLIENT_SECRET,
            POST_SECRET,
            PATCH_SECRET,
            PATCH_STATUS,
            POST_EVENT
        ]
    );
    assert_eq!(reqs[1].query, "&fieldManager=pipedream-secrets-operator");
    assert!(
        reqs[1].body.get("stringData").is_none(),
        "data only, never stringData"
    );
    // The create's Update entry becomes the Apply it stands for, guarded by the created resourceVersion.
    let fields = &reqs[2].body["metadata"]["managedFields"];
    assert_eq!(fields[0]["manager"], "pipedream-secrets-operator");
    assert_eq!(fields[0]["operation"], "Apply");
    assert!(reqs[2].body["metadata"]["resourceVersion"].is_string());
    assert!(reqs[2].body.get("data").is_none(), "{}", reqs[2].body);
    let s = h.api.secret("team-a", "gh").unwrap();
    assert_eq!(secret_value(&s, "oauth_access_token"), TOKEN);
    assert_eq!(secret_value(&s, "oauth_uid"), "77");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("ConnectedAccount", "uid-gh", Some(true))
    );
    assert_eq!(
        s.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "pipedream-secrets-operator"
    );
    let ann = s.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        ann["pipedream-secrets.io/expires-at"],
        "2026-11-22T10:00:00Z"
    );
    assert_eq!(ann["pipedream-secrets.io/connected-account"], "team-a/gh");
    let st = ca.status.clone().unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced");
    assert_eq!(st.expires_at.as_deref(), Some("2026-11-22T10:00:00Z"));
    assert_eq!(
        st.connection.as_deref(),
        Some("ClusterPipedreamConnection/default")
    );
    assert_eq!(st.account.as_ref().unwrap().app.as_deref(), Some("github"));
    assert!(st.data_hash.as_ref().unwrap().starts_with("sha256:"));
    let next: Timestamp = st.next_sync_time.as_deref().unwrap().parse().unwrap();
    let lead = "2026-11-22T10:00:00Z"
        .parse::<Timestamp>()
        .unwrap()
        .duration_since(next);
    assert!(
        lead >= SignedDuration::from_mins(5) && lead <= SignedDuration::from_secs(330),
        "{lead:?}"
    );
    // Status shows the due time truncated to seconds; the requeue is exact (never earlier than status says).
    let requeue = Duration::try_from(next.duration_since(t0())).unwrap();
    let got = action_delay(&action);
    assert!(
        got >= requeue && got < requeue + Duration::from_secs(1),
        "{got:?} vs {requeue:?}"
    );
    assert_eq!(reqs[4].body["reason"], "SecretCreated");
    assert_eq!(reqs[4].body["type"], "Normal");
    assert!(
        ca.metadata.finalizers.is_none(),
        "no finalizer where deletionPolicy needs none"
    );
    assert_eq!(
        ca.status.as_ref().unwrap().secret_resource_version,
        h.api
            .secret("team-a", "gh")
            .unwrap()
            .metadata
            .resource_version,
        "status records the version written"
    );
    assert_eq!(h.pipedream_calls("/oauth/token").await, 1);
    assert_eq!(h.pipedream_calls("/accounts/apn_A1").await, 1);
}

#[tokio::test]
async fn resync_of_fresh_credentials_makes_no_request() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    h.api.take();
    let before = ca.status.clone();
    h.ctx.clock.advance(Duration::from_secs(600));
    let action = h.reconcile(&mut ca).await.unwrap();
    assert_eq!(
        lines(&h.api.take()),
        Vec::<String>::new(),
        "the index says the Secret is as written: no read, no write, no status, no Event"
    );
    assert_eq!(ca.status, before);
    assert_eq!(h.pipedream_calls("/accounts/").await, 1);
    let next: Timestamp = before.unwrap().next_sync_time.unwrap().parse().unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::try_from(next.duration_since(h.ctx.clock.now())).unwrap())
    );
}

/// The benchmark found this on a real API server: a pass right after a write (the status watch delivering before
/// the Secret watch) read the Secret back, because the index had not seen the write yet; 1.2 % of refreshes cost a
/// GET. The pass waits for the watch instead, and reads only if the watch stays silent.
#[tokio::test]
async fn a_pass_before_the_index_has_seen_the_write_waits_instead_of_reading() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    h.api.take();
    // The status watch has delivered the write, the Secret watch has not (no sync_index).
    let action = reconcile(Arc::new(ca.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new(), "no read");
    assert!(action_delay(&action) <= Duration::from_secs(1));
    // The watch delivers: still no read, and the next pass is the refresh.
    h.sync_index();
    let action = reconcile(Arc::new(ca.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new());
    assert!(action_delay(&action) > Duration::from_secs(600));

    // A watch that stays silent: after five seconds the pass reads the Secret to know where it stands.
    let h = Harness::new().await;
    let mut ca = crate::controller::tests::ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    h.api.take();
    h.ctx.clock.advance(Duration::from_secs(4));
    reconcile(Arc::new(ca.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(lines(&h.api.take()), Vec::<String>::new());
    h.ctx.clock.advance(Duration::from_secs(2));
    reconcile(Arc::new(ca.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(lines(&h.api.take()), vec![GET_SECRET]);
}

#[tokio::test]
async fn rotation_before_expiry_rewrites_the_secret() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    h.api.take();
    h.advance_to_next_sync(&ca);
    assert!(h.ctx.clock.now() < "2026-11-22T10:00:00Z".parse::<Timestamp>().unwrap());
    h.serve_account(account_json(
        "gho_ROTATED_2",
        Some(t0() + SignedDuration::from_hours(2)),
    ))
    .await;
    h.reconcile(&mut ca).await.unwrap();
    let reqs = h.api.take();
    // A refresh is one Secret apply and one status apply; a routine refresh publishes no Event.
    assert_eq!(lines(&reqs), vec![PATCH_SECRET, PATCH_STATUS]);
    assert_eq!(
        secret_value(&h.api.secret("team-a", "gh").unwrap(), "oauth_access_token"),
        "gho_ROTATED_2"
    );
    assert_eq!(
        ca.status.as_ref().unwrap().expires_at.as_deref(),
        Some("2026-11-22T11:00:00Z")
    );
    assert_eq!(
        h.pipedream_calls("/oauth/token").await,
        0,
        "the connection token is still cached"
    );
}

#[tokio::test]
async fn restart_recovers_the_schedule_from_status_without_fetching() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    // A new process: empty caches, same API server and clock.
    let h2 = Harness::new().await;
    h2.api
        .restore_secret("team-a", &h.api.secret("team-a", "gh").unwrap());
    h2.api.take();
    h2.ctx.clock.advance(Duration::from_secs(120));
    let action = h2.reconcile(&mut ca).await.unwrap();
    assert_eq!(
        lines(&h2.api.take()),
        Vec::<String>::new(),
        "status.secretResourceVersion matches the Secret: nothing is read"
    );
    assert_eq!(
        h2.pipedream_calls("/").await,
        0,
        "fresh credentials are not re-fetched after a restart"
    );
    assert!(matches!(action, a if a != Action::await_change()));
}

/// The soak found this: a leader that failed objects with a connection problem (a rotated client secret, a
/// missing Secret) remembers the connection's version and retries them once the connection changes; a new leader
/// after a failover had no such memory and waited for the persisted retry time (60 s and doubling) although the
/// connection had been fixed meanwhile. A process's first pass over such an object now tries once.
#[tokio::test]
async fn a_new_process_retries_a_connection_failure_at_once_instead_of_waiting() {
    let h = Harness::new().await;
    h.api.delete_secret("ops", "pd-oauth");
    let mut gh = ca(json!({}));
    h.reconcile(&mut gh).await.unwrap();
    assert_eq!(ready(&gh).1, "ConnectionNotReady");
    // Still failing in the same process: it waits (no API request, no Pipedream call).
    h.api.take();
    h.reconcile(&mut gh).await.unwrap();
    assert!(
        h.api.take().is_empty(),
        "the same process waits for its retry"
    );
    // A new leader, where the connection works (the Secret is back): it retries at once.
    let h2 = Harness::new().await;
    h2.reconcile(&mut gh).await.unwrap();
    assert_eq!(ready(&gh).1, "SecretSynced");
    // Failing again in the new process waits as usual: one try per process, not a loop.
    let h3 = Harness::new().await;
    h3.api.delete_secret("ops", "pd-oauth");
    let mut other = ca(json!({}));
    other.metadata.name = Some("other".into());
    other.metadata.uid = Some("uid-other".into());
    h.reconcile(&mut other).await.unwrap();
    assert_eq!(ready(&other).1, "ConnectionNotReady");
    h3.reconcile(&mut other).await.unwrap();
    assert_eq!(ready(&other).1, "ConnectionNotReady");
    h3.api.take();
    h3.reconcile(&mut other).await.unwrap();
    assert!(
        h3.api.take().is_empty(),
        "after its one try the new process waits too"
    );
}

#[tokio::test]
async fn upstream_failures_keep_the_last_good_secret() {
    let cases: Vec<(ResponseTemplate, &str)> = vec![
        (ResponseTemplate::new(500), "UpstreamError"),
        (
            ResponseTemplate::new(200).set_body_string("{not json"),
            "UpstreamError",
        ),
        (
            ResponseTemplate::new(429).insert_header("retry-after", "45"),
            "RateLimited",
        ),
        (
            ResponseTemplate::new(404).set_body_json(json!({"error": "record not found"})),
            "AccountNotFound",
        ),
        (
            ResponseTemplate::new(200).set_body_json(
                json!({"id": "apn_A1", "healthy": false, "error": "token refresh failed"}),
            ),
            "AccountUnhealthy",
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "apn_A1", "healthy": false, "dead": true})),
            "AccountDead",
        ),
        (
            ResponseTemplate::new(200).set_body_json(
                json!({"id": "apn_A1", "healthy": true, "app": {"name_slug": "github"}}),
            ),
            "CredentialsUnavailable",
        ),
    ];
    for (resp, reason) in cases {
        let h = Harness::new().await;
        let mut ca = ca(json!({}));
        h.reconcile(&mut ca).await.unwrap();
        let good = h.api.secret("team-a", "gh").unwrap();
        h.advance_to_next_sync(&ca);
        h.serve(resp).await;
        h.api.take();
        let action = h.reconcile(&mut ca).await.unwrap();
        let reqs = h.api.take();
        assert_eq!(lines(&reqs), vec![PATCH_STATUS, POST_EVENT], "{reason}");
        assert_eq!(
            h.api.secret("team-a", "gh").unwrap(),
            good,
            "{reason}: Secret untouched"
        );
        let (status, got, _) = ready(&ca);
        assert_eq!((status.as_str(), got.as_str()), ("False", reason));
        assert_eq!(reqs[1].body["type"], "Warning");
        assert_eq!(reqs[1].body["reason"], reason);
        let st = ca.status.as_ref().unwrap();
        assert_eq!(
            st.expires_at.as_deref(),
            Some("2026-11-22T10:00:00Z"),
            "{reason}: last good expiry kept"
        );
        // The retry lands before the held credentials expire (rate limits honour Retry-After).
        let until_expiry = "2026-11-22T10:00:00Z"
            .parse::<Timestamp>()
            .unwrap()
            .duration_since(h.ctx.clock.now());
        let Some(delay) = requeue_of(&action) else {
            panic!("{reason}: no requeue")
        };
        assert!(
            SignedDuration::try_from(delay).unwrap() < until_expiry,
            "{reason}: {delay:?}"
        );
        if reason == "RateLimited" {
            assert!(delay >= Duration::from_secs(45));
        }
    }
}

fn requeue_of(a: &Action) -> Option<Duration> {
    (0..=7200u64)
        .map(Duration::from_secs)
        .find(|d| Action::requeue(*d) == *a)
}

#[tokio::test]
async fn every_ready_reason_is_reachable_and_nothing_is_written_on_failure() {
    // InvalidSpec (template syntax), found before any I/O.
    let h = Harness::new().await;
    let mut bad = ca(
        json!({"target": {"template": {"data": {"TOKEN": "{{ credentials.oauth_access_token "}}}}),
    );
    h.reconcile(&mut bad).await.unwrap();
    assert_eq!(lines(&h.api.take()), vec![PATCH_STATUS, POST_EVENT]);
    let (_, reason, msg) = ready(&bad);
    assert_eq!(reason, "InvalidSpec");
    assert!(msg.contains("spec.target.template.data[TOKEN]"), "{msg}");
    assert_eq!(h.pipedream_calls("/").await, 0);

    // InvalidSpec (template needs a credential field the account lacks), after the fetch.
    let h = Harness::new().await;
    let mut ca1 = ca(json!({"target": {"template": {"data": {"K": "{{ credentials.api_key }}"}}}}));
    h.reconcile(&mut ca1).await.unwrap();
    assert_eq!(ready(&ca1).1, "InvalidSpec");
    assert!(h.api.secret("team-a", "gh").is_none());

    // InvalidSpec (durations the schema cannot bound exactly).
    let h = Harness::new().await;
    let mut ca2 = ca(json!({"refresh": {"beforeExpiry": "1s"}}));
    h.reconcile(&mut ca2).await.unwrap();
    assert!(ready(&ca2).2.contains("spec.refresh.beforeExpiry"));

    // ConnectionNotFound.
    let h = Harness::new().await;
    let mut ca3 = ca(json!({"connectionRef": {"kind": "PipedreamConnection", "name": "nope"}}));
    h.reconcile(&mut ca3).await.unwrap();
    assert_eq!(ready(&ca3).1, "ConnectionNotFound");
    assert!(ready(&ca3).2.contains("team-a/nope"));

    // ConnectionNotReady: the client-secret Secret is gone.
    let h = Harness::new().await;
    h.api.delete_secret("ops", "pd-oauth");
    let mut ca4 = ca(json!({}));
    h.reconcile(&mut ca4).await.unwrap();
    assert_eq!(ready(&ca4).1, "ConnectionNotReady");
    assert!(ready(&ca4).2.contains("ops/pd-oauth"));

    // AccessDenied: namespace not admitted, and account narrowing not satisfied.
    let h = Harness::with_access(json!([{"namespaces": ["team-b"]}])).await;
    let mut ca5 = ca(json!({}));
    h.reconcile(&mut ca5).await.unwrap();
    assert_eq!(ready(&ca5).1, "AccessDenied");
    assert_eq!(h.pipedream_calls("/").await, 0);
    let h = Harness::with_access(
        json!([{"namespaces": ["team-a"], "externalUserIds": ["someone-else"]}]),
    )
    .await;
    let mut ca6 = ca(json!({}));
    h.reconcile(&mut ca6).await.unwrap();
    assert_eq!(ready(&ca6).1, "AccessDenied");
    assert!(
        h.api.secret("team-a", "gh").is_none(),
        "nothing written before access is checked"
    );

    // AuthFailed: Pipedream rejects the OAuth client.
    let h = Harness::new().await;
    h.pd.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&h.pd)
        .await;
    let mut ca7 = ca(json!({}));
    h.reconcile(&mut ca7).await.unwrap();
    assert_eq!(ready(&ca7).1, "AuthFailed");

    // Expired: Pipedream returns credentials that have already expired; retried within seconds, not written.
    let h = Harness::new().await;
    h.serve_account(account_json(
        TOKEN,
        Some(t0() - SignedDuration::from_mins(1)),
    ))
    .await;
    let mut ca8 = ca(json!({}));
    let action = h.reconcile(&mut ca8).await.unwrap();
    assert_eq!(ready(&ca8).1, "StaleCredentials");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    assert!(h.api.secret("team-a", "gh").is_none());

    // SecretConflict: a Secret of that name belongs to someone else.
    let h = Harness::new().await;
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("gh".into());
    foreign.data = Some([("x".to_string(), k8s_openapi::ByteString(b"theirs".to_vec()))].into());
    h.api.put_secret("team-a", &foreign);
    let mut ca9 = ca(json!({}));
    h.reconcile(&mut ca9).await.unwrap();
    assert_eq!(
        lines(&h.api.take()),
        vec![
            READ_CLIENT_SECRET,
            POST_SECRET,
            GET_SECRET,
            PATCH_STATUS,
            POST_EVENT
        ],
        "the operator keeps no names of Secrets it does not write: the create is refused (409), the Secret read, \
         and it is someone else's"
    );
    assert_eq!(ready(&ca9).1, "SecretConflict");
    assert_eq!(
        h.api.secret("team-a", "gh").unwrap().data,
        foreign.data,
        "foreign Secret untouched"
    );
    assert_eq!(
        h.pipedream_calls("/accounts/").await,
        1,
        "one fetch before the API server refused the name"
    );
    // The retry reads the Secret: no fetch, no create.
    h.ctx.clock.advance(Duration::from_secs(3600));
    h.reconcile(&mut ca9).await.unwrap();
    assert_eq!(lines(&h.api.take()), vec![GET_SECRET, PATCH_STATUS]);
    assert_eq!(ready(&ca9).1, "SecretConflict");
    assert_eq!(
        h.pipedream_calls("/accounts/").await,
        1,
        "no fetch on a retry"
    );
}

#[tokio::test]
async fn merge_writes_only_our_keys_into_an_existing_secret() {
    let h = Harness::new().await;
    let mut theirs = Secret::default();
    theirs.metadata.name = Some("gh".into());
    theirs.data = Some(
        [(
            "other".to_string(),
            k8s_openapi::ByteString(b"keep".to_vec()),
        )]
        .into(),
    );
    h.api.put_secret("team-a", &theirs);
    let mut ca = ca(
        json!({"target": {"creationPolicy": "Merge", "deletionPolicy": "Retain",
        "template": {"data": {"TOKEN": "{{ credentials.oauth_access_token }}"}}}}),
    );
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced");
    let s = h.api.secret("team-a", "gh").unwrap();
    assert_eq!(secret_value(&s, "other"), "keep");
    assert_eq!(secret_value(&s, "TOKEN"), TOKEN);
    assert!(s.metadata.owner_references.is_none());
}

/// Issue 17 (7, 8): Merge took over a key another field manager owned (Helm's `token`); and it decided whether
/// another ConnectedAccount still writes a key from the local cache, which under sharding holds only this shard's
/// objects, so two shards wrote one key in turns. Keys are judged by the Secret's managed fields, and a
/// ConnectedAccount writer's existence by asking the API server.
#[tokio::test]
async fn merge_refuses_keys_other_field_managers_own_whichever_shard_writes_them() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    let owned_by = |manager: &str, key: &str| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Apply".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(json!({"f:data": {format!("f:{key}"): {}}}))),
        ..Default::default()
    };
    let merge = json!({"target": {"creationPolicy": "Merge", "deletionPolicy": "Retain",
        "template": {"data": {"TOKEN": "{{ credentials.oauth_access_token }}"}}}});
    for (owner, annotation, exists, refused) in [
        ("helm", None, false, true),
        ("pipedream-secrets.io/uid-other", Some("other"), true, true),
        (
            "pipedream-secrets.io/uid-other",
            Some("other"),
            false,
            false,
        ),
    ] {
        let h = Harness::new().await;
        let mut theirs = Secret::default();
        theirs.metadata.name = Some("gh".into());
        theirs.metadata.managed_fields = Some(vec![owned_by(owner, "TOKEN")]);
        if let Some(a) = annotation {
            theirs.metadata.annotations = Some(
                [(
                    "merge.pipedream-secrets.io/uid-other".to_string(),
                    a.to_string(),
                )]
                .into(),
            );
        }
        theirs.data = Some(
            [(
                "TOKEN".to_string(),
                k8s_openapi::ByteString(b"theirs".to_vec()),
            )]
            .into(),
        );
        h.api.put_secret("team-a", &theirs);
        if exists {
            // On another shard: not in this process's cache, but it exists.
            h.api.put_ca("team-a", "other", "uid-other");
        }
        let mut c = ca(merge.clone());
        h.reconcile(&mut c).await.unwrap();
        let token = secret_value(&h.api.secret("team-a", "gh").unwrap(), "TOKEN");
        if refused {
            assert_eq!(ready(&c).1, "SecretConflict", "{owner} exists={exists}");
            assert!(ready(&c).2.contains("TOKEN"), "{}", ready(&c).2);
            assert_eq!(token, "theirs", "{owner}: the key stays its owner's");
        } else {
            assert_eq!(
                ready(&c).1,
                "SecretSynced",
                "a deleted writer's key is free"
            );
            assert_eq!(token, TOKEN);
        }
    }
}

/// Issue 25 (5): Merge decided key ownership from the `f:data` entries of the Secret's managed fields, then
/// force-applied: a key owned through `stringData` or in a Secret without managed fields was taken. The apply is
/// no longer forced, and is guarded by the version read; owners are named from that version (`stringData` and
/// `before-first-apply` included) or by the API server's conflict.
#[tokio::test]
async fn merge_applies_without_force_and_a_key_someone_else_owns_is_a_conflict() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    let entry = |manager: &str, operation: &str, fields: Value| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(fields)),
        ..Default::default()
    };
    let merge = json!({"target": {"creationPolicy": "Merge", "deletionPolicy": "Retain",
        "template": {"data": {"TOKEN": "{{ credentials.oauth_access_token }}"}}}});
    let cases = [
        // No managed fields: the API server counts their keys as `before-first-apply`'s.
        (None, "before-first-apply"),
        // `kubectl create` (stringData or not: an Update records `f:data`).
        (
            Some(entry(
                "kubectl-create",
                "Update",
                json!({"f:data": {"f:TOKEN": {}, "f:OTHER": {}}}),
            )),
            "kubectl-create",
        ),
        // An apply manager's stringData: recorded as `f:stringData`, no conflict on the API server.
        (
            Some(entry(
                "helm",
                "Apply",
                json!({"f:stringData": {"f:TOKEN": {}, "f:OTHER": {}}}),
            )),
            "helm",
        ),
    ];
    let mut wrong = Vec::new();
    for (fields, manager) in cases {
        let h = Harness::new().await;
        let mut theirs = Secret::default();
        theirs.metadata.name = Some("gh".into());
        theirs.metadata.managed_fields = fields.map(|f| vec![f]);
        theirs.data = Some(
            [
                (
                    "TOKEN".to_string(),
                    k8s_openapi::ByteString(b"theirs".to_vec()),
                ),
                (
                    "OTHER".to_string(),
                    k8s_openapi::ByteString(b"keep".to_vec()),
                ),
            ]
            .into(),
        );
        h.api.put_secret("team-a", &theirs);
        let mut c = ca(merge.clone());
        h.reconcile(&mut c).await.unwrap();
        let reqs = h.api.take();
        let (_, reason, message) = ready(&c);
        let token = secret_value(&h.api.secret("team-a", "gh").unwrap(), "TOKEN");
        let forced = reqs
            .iter()
            .any(|r| r.line() == PATCH_SECRET && r.query.contains("force=true"));
        if reason != "SecretConflict"
            || !message.contains("TOKEN")
            || !message.contains(manager)
            || token != "theirs"
            || forced
        {
            wrong.push(format!(
                "{manager}: {reason} {message:?}, TOKEN {token:?}, forced apply: {forced}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Issue 25 (5): a Merge write is a non-forced apply with the ConnectedAccount's own field manager, guarded by the
/// resourceVersion the pass read (so what was judged from it is what the API server applies to); a key it wrote
/// before is its own on the next refresh.
#[tokio::test]
async fn merge_writes_are_not_forced_and_carry_the_version_read() {
    let h = Harness::new().await;
    let mut theirs = Secret::default();
    theirs.metadata.name = Some("gh".into());
    theirs.data = Some(
        [(
            "OTHER".to_string(),
            k8s_openapi::ByteString(b"keep".to_vec()),
        )]
        .into(),
    );
    h.api.put_secret("team-a", &theirs);
    let mut ca = ca(
        json!({"target": {"creationPolicy": "Merge", "deletionPolicy": "Retain",
        "template": {"data": {"TOKEN": "{{ credentials.oauth_access_token }}"}}}}),
    );
    let read = h.api.secret("team-a", "gh").unwrap();
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced", "{:?}", ready(&ca));
    let reqs = h.api.take();
    let apply = reqs.iter().find(|r| r.line() == PATCH_SECRET).unwrap();
    assert_eq!(apply.query, "&fieldManager=pipedream-secrets.io%2Fuid-gh");
    assert_eq!(
        apply.body["metadata"]["resourceVersion"].as_str(),
        read.metadata.resource_version.as_deref()
    );
    // The refresh: its own key, a new value.
    h.serve_account(account_json(
        "gho_NEXT",
        Some(t0() + SignedDuration::from_hours(2)),
    ))
    .await;
    h.advance_to_next_sync(&ca);
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced", "{:?}", ready(&ca));
    let s = h.api.secret("team-a", "gh").unwrap();
    assert_eq!(secret_value(&s, "TOKEN"), "gho_NEXT");
    assert_eq!(secret_value(&s, "OTHER"), "keep");
}

/// A Merge apply refused because the Secret changed since it was read (409 without field conflicts) is retried,
/// not reported as a conflict, and changes nothing.
#[tokio::test]
async fn a_merge_apply_the_secret_changed_under_is_retried() {
    let h = Harness::new().await;
    let mut theirs = Secret::default();
    theirs.metadata.name = Some("gh".into());
    theirs.data = Some(
        [(
            "OTHER".to_string(),
            k8s_openapi::ByteString(b"keep".to_vec()),
        )]
        .into(),
    );
    h.api.put_secret("team-a", &theirs);
    let mut ca = ca(
        json!({"target": {"creationPolicy": "Merge", "deletionPolicy": "Retain",
        "template": {"data": {"TOKEN": "{{ credentials.oauth_access_token }}"}}}}),
    );
    h.api.fail("PATCH", "secrets/gh", 409);
    assert!(matches!(
        h.reconcile(&mut ca).await,
        Err(Error::WriteSecret(_))
    ));
    assert!(ca.status.is_none(), "no SecretConflict reported");
    h.api.heal();
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced");
}

/// Issue 25 (1): a first write is a create; a 409 that turns out to be this ConnectedAccount's own Secret (written
/// by a process that stopped before it recorded the write, and not yet seen by this one's watch) is adopted, not
/// a conflict.
#[tokio::test]
async fn a_first_write_adopts_its_own_secret_the_watch_has_not_seen() {
    let h = Harness::new().await;
    h.sync_index();
    let mut ca = ca(json!({}));
    let mut own = crate::secret::desired_secret(
        &crate::secret::Writer::of(&ca),
        &ca.spec.target,
        &[("oauth_access_token".to_string(), b"old".to_vec())].into(),
        None,
    );
    own.metadata.namespace = None;
    h.api.put_secret("team-a", &own);
    reconcile(Arc::new(ca.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert!(h.wait_triggered("gh").await);
    reconcile(Arc::new(ca.clone()), h.ctx.clone())
        .await
        .unwrap();
    ca.status = Some(serde_json::from_value(h.api.status_of("gh").unwrap()).unwrap());
    assert_eq!(ready(&ca).1, "SecretSynced", "{:?}", ready(&ca));
    assert_eq!(
        lines(&h.api.take()),
        vec![
            READ_CLIENT_SECRET,
            POST_SECRET,
            GET_SECRET,
            PATCH_SECRET,
            PATCH_STATUS,
            POST_EVENT
        ],
        "created: 409; read: its own; applied"
    );
    let s = h.api.secret("team-a", "gh").unwrap();
    assert_eq!(secret_value(&s, "oauth_access_token"), TOKEN);
}

#[tokio::test]
async fn force_sync_annotation_fetches_once_per_new_value() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    ca.metadata.annotations = Some(
        [(
            "pipedream-secrets.io/force-sync".to_string(),
            "1".to_string(),
        )]
        .into(),
    );
    h.ctx.clock.advance(Duration::from_secs(10));
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(h.pipedream_calls("/accounts/").await, 2);
    assert_eq!(
        ca.status.as_ref().unwrap().last_force_sync.as_deref(),
        Some("1")
    );
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(
        h.pipedream_calls("/accounts/").await,
        2,
        "the same value does not fetch again"
    );
}

#[tokio::test]
async fn drift_is_repaired_from_the_last_fetch_without_a_new_call() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    let mut edited = h.api.secret("team-a", "gh").unwrap();
    edited.data.as_mut().unwrap().insert(
        "oauth_access_token".into(),
        k8s_openapi::ByteString(b"hand-edit".to_vec()),
    );
    h.api.put_secret("team-a", &edited);
    h.api.take();
    h.reconcile(&mut ca).await.unwrap();
    let reqs = h.api.take();
    // The index shows another resourceVersion: the Secret is read, found changed, and restored; status records
    // the new version.
    assert_eq!(
        lines(&reqs),
        vec![GET_SECRET, PATCH_SECRET, PATCH_STATUS, POST_EVENT]
    );
    assert_eq!(reqs[3].body["reason"], "DriftCorrected");
    assert_eq!(
        secret_value(&h.api.secret("team-a", "gh").unwrap(), "oauth_access_token"),
        TOKEN
    );
    h.api.delete_secret("team-a", "gh");
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(
        secret_value(&h.api.secret("team-a", "gh").unwrap(), "oauth_access_token"),
        TOKEN
    );
    assert_eq!(
        h.pipedream_calls("/accounts/").await,
        1,
        "repairs reuse the last fetch"
    );
}

#[tokio::test]
async fn accounts_shared_by_several_connected_accounts_are_fetched_once() {
    let h = Harness::new().await;
    h.serve(
        ResponseTemplate::new(200)
            .set_delay(Duration::from_millis(300))
            .set_body_json(account_json(
                TOKEN,
                Some(t0() + SignedDuration::from_hours(1)),
            )),
    )
    .await;
    let mut handles = Vec::new();
    for i in 0..4 {
        let mut c = ca(json!({"target": {"name": format!("gh-{i}")}}));
        c.metadata.name = Some(format!("gh-{i}"));
        c.metadata.uid = Some(format!("uid-{i}"));
        let ctx = h.ctx.clone();
        handles.push(tokio::spawn(async move {
            reconcile(Arc::new(c.clone()), ctx.clone()).await.unwrap();
            c
        }));
    }
    let mut cas = Vec::new();
    for hd in handles {
        cas.push(hd.await.unwrap());
    }
    for c in &mut cas {
        assert!(
            h.wait_triggered(&c.name_any()).await,
            "every waiter is triggered"
        );
        h.reconcile(c).await.unwrap();
    }
    assert_eq!(h.pipedream_calls("/accounts/").await, 1);
    assert_eq!(h.pipedream_calls("/oauth/token").await, 1);
    for i in 0..4 {
        assert!(h.api.secret("team-a", &format!("gh-{i}")).is_some());
    }
}

#[tokio::test]
async fn kubernetes_api_failures_abort_without_writes_and_back_off() {
    let h = Harness::new().await;
    h.api.fail("PATCH", "/secrets/gh", 500);
    let mut ca = ca(json!({}));
    let err = h.reconcile(&mut ca).await.unwrap_err();
    assert!(matches!(err, Error::WriteSecret(_)));
    assert!(ca.status.is_none());
    let a1 = error_policy(Arc::new(ca.clone()), &err, h.ctx.clone());
    let a2 = error_policy(Arc::new(ca.clone()), &err, h.ctx.clone());
    assert!(
        requeue_of(&a1).unwrap() < requeue_of(&a2).unwrap(),
        "backoff grows"
    );
    h.api.heal();
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced");
}

#[tokio::test]
async fn rollout_restart_targets_are_patched_only_when_data_changes() {
    let h = Harness::new().await;
    let mut ca = ca(
        json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}], "minRestartInterval": "1m"}),
    );
    h.reconcile(&mut ca).await.unwrap();
    assert!(
        !lines(&h.api.take())
            .iter()
            .any(|l| l.contains("deployments")),
        "no restart on first sync"
    );
    h.advance_to_next_sync(&ca);
    h.serve_account(account_json(
        "gho_NEW",
        Some(t0() + SignedDuration::from_hours(2)),
    ))
    .await;
    h.reconcile(&mut ca).await.unwrap();
    let reqs = h.api.take();
    let patch = reqs
        .iter()
        .find(|r| r.path == "/apis/apps/v1/namespaces/team-a/deployments/web")
        .expect("restart");
    assert!(patch.body["spec"]["template"]["metadata"]["annotations"]["pipedream-secrets.io/restartedAt"].is_string());
    assert_eq!(
        ca.status.as_ref().unwrap().restarted_data_hash,
        ca.status.as_ref().unwrap().data_hash
    );
}

/// Issue 24: `minRestartInterval` held a rollout restart back past the expiry of the token the running pods held
/// (a Deployment ran 106 s on an expired token). A held-back restart now wakes the object the propagation time
/// before that token expires and restarts then, without another Pipedream call.
#[tokio::test]
async fn a_held_back_restart_runs_before_the_pods_token_expires() {
    let h = Harness::new().await;
    let mut ca = ca(
        json!({"rolloutRestartTargets": [{"kind": "Deployment", "name": "web"}], "minRestartInterval": "1h"}),
    );
    let restarts = |reqs: &[Recorded]| {
        reqs.iter()
            .filter(|r| r.path == "/apis/apps/v1/namespaces/team-a/deployments/web")
            .count()
    };
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(restarts(&h.api.take()), 0, "no restart on first sync");
    for (token, restarted) in [("gho_2", 1), ("gho_3", 0)] {
        h.advance_to_next_sync(&ca);
        let now = h.ctx.clock.now();
        h.serve_account(account_json(
            token,
            Some(now + SignedDuration::from_hours(1)),
        ))
        .await;
        h.reconcile(&mut ca).await.unwrap();
        assert_eq!(restarts(&h.api.take()), restarted, "{token}");
    }
    // The third token's write is within the hour of the last restart: held back, but only until the pods' token
    // (the second) is 100 s from expiry.
    let st = ca.status.clone().unwrap();
    assert_ne!(st.restarted_data_hash, st.data_hash, "a restart is pending");
    let pods_expire: Timestamp = st.restarted_expires_at.as_deref().unwrap().parse().unwrap();
    let due = pods_expire - SignedDuration::from_secs(100);
    let next_sync: Timestamp = st.next_sync_time.as_deref().unwrap().parse().unwrap();
    assert!(due < next_sync, "the restart is due before the next fetch");
    assert_eq!(h.ctx.object("uid-gh").next_pass, Some(due));
    let calls = h.pipedream_calls("/accounts/").await;
    h.ctx
        .clock
        .advance(Duration::try_from(due.duration_since(h.ctx.clock.now())).unwrap_or_default());
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(
        restarts(&h.api.take()),
        1,
        "restarted before the pods' token expired"
    );
    assert_eq!(
        h.pipedream_calls("/accounts/").await,
        calls,
        "no fetch for it"
    );
    let st = ca.status.clone().unwrap();
    assert_eq!(st.restarted_data_hash, st.data_hash);
    assert_eq!(st.restarted_expires_at, st.expires_at);
}

/// A full sync at debug level: no credential or client secret appears in logs, status, Events or Secret
/// annotations.
#[tokio::test]
async fn credential_values_never_reach_logs_status_or_events() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .json()
        .finish();
    // Process-wide (set once): a thread-local subscriber can miss events when other tests register the same
    // callsites concurrently. Other tests' logs land here too, and none may leak either.
    let _ = tracing::subscriber::set_global_default(subscriber);
    let h = Harness::new().await;
    let mut ca = ca(
        json!({"target": {"template": {"data": {"TOKEN": "{{ credentials.oauth_access_token }}"}}}}),
    );
    h.reconcile(&mut ca).await.unwrap();
    // A failing pass too (errors are where secrets leak).
    h.ctx.clock.advance(Duration::from_secs(3600));
    h.serve(ResponseTemplate::new(400).set_body_json(json!({"error": {"account": ["mismatch"]}})))
        .await;
    h.reconcile(&mut ca).await.unwrap();
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("synced"), "the capture works: {logs}");
    let recorded: String = h
        .api
        .take()
        .iter()
        .filter(|r| !r.path.contains("/secrets/gh"))
        .map(|r| r.body.to_string())
        .collect();
    let status = serde_json::to_string(&ca.status).unwrap();
    for secret in [TOKEN, CLIENT_SECRET, "pd-api-token"] {
        assert!(!logs.contains(secret), "log leaks {secret}");
        assert!(!recorded.contains(secret), "status/Event leaks {secret}");
        assert!(!status.contains(secret));
        let cached: Vec<String> = h
            .ctx
            .fetcher
            .dispatchers()
            .iter()
            .map(|rt| {
                let key = crate::identity::AccountKey {
                    connection: rt.key.clone(),
                    account_id: "apn_A1".into(),
                };
                format!("{:?} {:?}", h.ctx.fetcher.cache.last_ok(&key), rt.client)
            })
            .collect();
        assert!(!cached.is_empty());
        assert!(
            !cached.concat().contains(secret),
            "Debug of cached answers leaks {secret}"
        );
    }
    assert_eq!(
        secret_value(&h.api.secret("team-a", "gh").unwrap(), "TOKEN"),
        TOKEN,
        "the Secret itself has it"
    );
    let _ = BTreeMap::<String, String>::new();
}

#[tokio::test]
async fn namespace_selector_access_reads_namespace_labels() {
    let h = Harness::with_access(
        json!([{"namespaceSelector": {"matchLabels": {"pipedream": "allowed"}}}]),
    )
    .await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(
        ready(&ca).1,
        "AccessDenied",
        "unlabelled (here: unknown) namespace is refused"
    );
    assert!(lines(&h.api.take()).contains(&"GET /api/v1/namespaces/team-a".to_string()));
    h.api.put_namespace(
        "team-a",
        [("pipedream".to_string(), "allowed".to_string())].into(),
    );
    h.ctx.clock.advance(Duration::from_secs(120));
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced");
}

/// Regression: the status write of a failure triggers a watch event; that pass must not retry (and call
/// Pipedream) before the retry time, or the object loops.
#[tokio::test]
async fn a_failed_object_waits_for_its_retry_time_without_requests() {
    let h = Harness::new().await;
    h.serve(ResponseTemplate::new(503)).await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "UpstreamError");
    let calls = h.pipedream_calls("/accounts/").await;
    h.api.take();
    let action = h.reconcile(&mut ca).await.unwrap();
    assert!(h.api.take().is_empty(), "no API request while waiting");
    assert_eq!(
        h.pipedream_calls("/accounts/").await,
        calls,
        "no Pipedream call while waiting"
    );
    assert!(requeue_of(&action).is_some_and(|d| d >= Duration::from_secs(1)));
    // A spec change moments after the failure waits for the edit debounce (no call), then retries.
    ca.metadata.generation = Some(2);
    let action = h.reconcile(&mut ca).await.unwrap();
    assert_eq!(h.pipedream_calls("/accounts/").await, calls, "debounced");
    assert!(requeue_of(&action).is_some_and(|d| d <= crate::controller::plan::SPEC_EDIT_DEBOUNCE));
    h.ctx
        .clock
        .advance(crate::controller::plan::SPEC_EDIT_DEBOUNCE);
    h.serve_account(account_json(
        TOKEN,
        Some(t0() + SignedDuration::from_hours(1)),
    ))
    .await;
    h.reconcile(&mut ca).await.unwrap();
    assert_eq!(ready(&ca).1, "SecretSynced");
}

fn tenant_ca(ns: &str, name: &str, account: &str) -> ConnectedAccount {
    let mut c = ca(
        json!({"accountId": account, "connectionRef": {"kind": "PipedreamConnection", "name": "pd"}}),
    );
    c.metadata.namespace = Some(ns.into());
    c.metadata.name = Some(name.into());
    c.metadata.uid = Some(format!("uid-{ns}-{name}"));
    c
}

async fn key_server(token: &str, expires: Timestamp) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex("^/v1/accounts/apn_A1$"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "date",
                    t0().strftime("%a, %d %b %Y %H:%M:%S GMT")
                        .to_string()
                        .as_str(),
                )
                .set_body_json(json!({"data": {
                    "id": "apn_A1", "healthy": true, "credentials": {"oauth_access_token": token},
                    "expires_at": expires.to_string()}})),
        )
        .mount(&s)
        .await;
    s
}

/// Regression (issue 7, critical): the shared fetch cache was keyed by `PipedreamConnection/{name}` without the
/// namespace, so team B's same-named connection read team A's cached answer (theft), and B's server could plant
/// its answer for A's account id in A's Secret (poisoning). Every cache is now keyed by the connection's full
/// identity and fingerprint.
#[tokio::test]
async fn same_named_connections_in_two_namespaces_neither_see_nor_poison_each_other() {
    let h = Harness::new().await;
    let victim = key_server("A-token", t0() + SignedDuration::from_hours(1)).await;
    let attacker = key_server("B-evil", t0() + SignedDuration::from_hours(24 * 300)).await;
    h.add_namespaced_connection("team-a", &victim.uri());
    h.add_namespaced_connection("team-b", &attacker.uri());
    // Theft: A syncs, then B asks for A's account id through its own "pd".
    let mut a = tenant_ca("team-a", "victim", "apn_A1");
    h.reconcile(&mut a).await.unwrap();
    let mut b = tenant_ca("team-b", "thief", "apn_A1");
    h.reconcile(&mut b).await.unwrap();
    let token =
        |ns: &str, name: &str| secret_value(&h.api.secret(ns, name).unwrap(), "oauth_access_token");
    assert_eq!(token("team-a", "victim"), "A-token");
    assert_eq!(
        token("team-b", "thief"),
        "B-evil",
        "B only ever gets what its own server says"
    );
    // Poisoning: B force-syncs to keep its answer fresh; A's next passes never take it.
    b.metadata.annotations = Some(
        [(
            "pipedream-secrets.io/force-sync".to_string(),
            "x".to_string(),
        )]
        .into(),
    );
    h.ctx.clock.advance(Duration::from_secs(30));
    h.reconcile(&mut b).await.unwrap();
    let mut a2 = tenant_ca("team-a", "victim2", "apn_A1");
    a2.spec.target.name = Some("victim2".into());
    h.reconcile(&mut a2).await.unwrap();
    h.api.delete_secret("team-a", "victim");
    h.reconcile(&mut a).await.unwrap();
    assert_eq!(token("team-a", "victim2"), "A-token");
    assert_eq!(token("team-a", "victim"), "A-token");
    assert_eq!(
        ca_status_connection(&a),
        Some("PipedreamConnection/pd".to_string())
    );
    assert!(!victim.received_requests().await.unwrap().is_empty());
    assert!(attacker.received_requests().await.unwrap().len() >= 2);
    for r in victim.received_requests().await.unwrap() {
        assert_eq!(
            r.headers["authorization"], "Bearer key-team-a",
            "A's key only goes to A's server"
        );
    }
    for r in attacker.received_requests().await.unwrap() {
        assert_eq!(r.headers["authorization"], "Bearer key-team-b");
    }
}

fn ca_status_connection(c: &ConnectedAccount) -> Option<String> {
    c.status.as_ref()?.connection.clone()
}

/// Fairness (issue 7): a tarpitted tenant connection fills its own queue; another connection's accounts sync
/// while every tarpitted fetch is still in flight.
#[tokio::test]
async fn a_tarpitted_connection_does_not_delay_another_tenants_refresh() {
    let h = Harness::new().await;
    let tarpit = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(4)))
        .mount(&tarpit)
        .await;
    h.add_namespaced_connection("team-b", &tarpit.uri());
    let mut slow = Vec::new();
    for i in 0..12 {
        let mut c = tenant_ca("team-b", &format!("slow-{i}"), "apn_A1");
        c.spec.account_id = format!("apn_Slow{i}");
        reconcile(Arc::new(c.clone()), h.ctx.clone()).await.unwrap();
        slow.push(c);
    }
    let mut victim = ca(json!({}));
    h.reconcile(&mut victim).await.unwrap();
    assert_eq!(ready(&victim).1, "SecretSynced");
    let triggered = h.triggered.0.lock().unwrap().clone();
    assert!(
        triggered.iter().all(|n| !n.starts_with("slow-")),
        "the victim synced before any tarpitted fetch finished: {triggered:?}"
    );
    let rt = h
        .ctx
        .fetcher
        .dispatchers()
        .into_iter()
        .find(|r| r.key.id.namespace.is_some())
        .unwrap();
    assert_eq!(
        rt.in_flight(),
        MAX_IN_FLIGHT,
        "the tarpit holds only its own in-flight slots"
    );
    assert_eq!(rt.queued(), 12 - MAX_IN_FLIGHT);
}

/// Issue 25: tokens Pipedream minted together came due in the same second, and the fetch queue held an entry per
/// account while the rate limiter served them one by one (10,000 entries at the benchmark's refresh). Each pass now
/// books its next fetch at the connection's rate: at 1 request per second, a batch of five accounts Pipedream
/// refreshes at the same moment comes due one second apart, the first just after that refresh.
#[tokio::test]
async fn a_batch_minted_together_comes_due_at_the_connections_rate() {
    let h = Harness::new().await;
    let expires = t0() + SignedDuration::from_hours(1);
    let refresh = t0() + SignedDuration::from_mins(50);
    let pd = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex("^/v1/accounts/apn_Batch[0-9]$"))
        .respond_with(move |req: &wiremock::Request| {
            let id = req.url.path().rsplit('/').next().unwrap_or_default();
            let date = t0().strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
            ResponseTemplate::new(200)
                .insert_header("date", date.as_str())
                .set_body_json(json!({"data": {"id": id, "healthy": true,
                    "credentials": {"oauth_access_token": "gho_BATCH"},
                    "expires_at": expires.to_string(), "next_refresh_at": refresh.to_string()}}))
        })
        .mount(&pd)
        .await;
    let rate = json!({"rateLimit": {"requestsPerSecond": 1, "burst": 1}});
    h.add_namespaced_connection_with("team-b", &pd.uri(), rate);
    let mut next = Vec::new();
    for i in 0..5 {
        let mut c = tenant_ca("team-b", &format!("batch-{i}"), &format!("apn_Batch{i}"));
        h.reconcile(&mut c).await.unwrap();
        assert_eq!(ready(&c).1, "SecretSynced");
        let status = c.status.unwrap();
        next.push(status.next_sync_time.unwrap().parse::<Timestamp>().unwrap());
    }
    let after_refresh = |s: i64| refresh + SignedDuration::from_secs(5 + s);
    assert_eq!(next, (0..5).map(after_refresh).collect::<Vec<_>>());
}

/// Regression (issue 7): a Secret write the API server refuses (invalid label, changed type) only reached the
/// logs; the ConnectedAccount stayed Ready=True with a stale observedGeneration while the Secret stopped rotating.
#[tokio::test]
async fn refused_secret_writes_and_type_changes_reach_status_naming_the_field() {
    let h = Harness::new().await;
    h.api.fail("PATCH", "/secrets/gh", 422);
    let mut c = ca(json!({"target": {"labels": {"team": "bad value!"}}}));
    h.reconcile(&mut c).await.unwrap();
    let (status, reason, message) = ready(&c);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.starts_with("spec.target.labels:"), "{message}");
    assert_eq!(c.status.as_ref().unwrap().observed_generation, Some(1));
    h.api.heal();
    // A type change on an existing Secret is reported, never attempted.
    let h = Harness::new().await;
    let mut c = ca(json!({}));
    h.reconcile(&mut c).await.unwrap();
    c.spec.target.type_ = Some("kubernetes.io/basic-auth".into());
    c.metadata.generation = Some(2);
    h.api.take();
    h.reconcile(&mut c).await.unwrap();
    let (_, reason, message) = ready(&c);
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.starts_with("spec.target.type:") && message.contains("Opaque"),
        "{message}"
    );
    assert!(!lines(&h.api.take()).contains(&PATCH_SECRET.to_string()));
    assert_eq!(c.status.as_ref().unwrap().observed_generation, Some(2));
}

/// Regression (issue 7): switching deletionPolicy to Retain and deleting the ConnectedAccount let garbage collection
/// take the Secret. Switching to Retain adds the finalizer and drops the ownerReference in one pass; if the
/// ownerReference is still there at deletion (a failed write), the finalizer releases it first. Objects whose
/// policy needs no finalizer carry none (issue 18), and lose one they had.
#[tokio::test]
async fn a_secret_kept_by_retain_survives_deletion_and_only_retain_has_a_finalizer() {
    let h = Harness::new().await;
    let mut c = ca(json!({}));
    c.metadata.finalizers = Some(vec![crate::crd::FINALIZER.into()]);
    h.reconcile(&mut c).await.unwrap();
    let reqs = lines(&h.api.take());
    assert!(
        reqs.contains(&PATCH_CA.to_string()),
        "an old finalizer is removed: {reqs:?}"
    );
    assert!(
        h.api
            .secret("team-a", "gh")
            .unwrap()
            .metadata
            .owner_references
            .is_some()
    );
    // Switch to Retain: the finalizer is added, and the Secret loses its ownerReference.
    c.metadata.finalizers = None;
    c.spec.target.deletion_policy = crate::crd::DeletionPolicy::Retain;
    c.metadata.generation = Some(2);
    h.reconcile(&mut c).await.unwrap();
    let reqs = h.api.take();
    let ca_patch = reqs
        .iter()
        .find(|r| r.line() == PATCH_CA)
        .expect("finalizer added");
    assert_eq!(
        ca_patch.body["metadata"]["finalizers"],
        json!([crate::crd::FINALIZER])
    );
    assert!(
        h.api
            .secret("team-a", "gh")
            .unwrap()
            .metadata
            .owner_references
            .is_none_or(|o| o.is_empty()),
        "Retain: no ownerReference"
    );
    // Deleted while a stale ownerReference is on the Secret: released before the finalizer goes.
    let mut stale = h.api.secret("team-a", "gh").unwrap();
    stale.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "pipedream-secrets.io/v1alpha1".into(),
            kind: "ConnectedAccount".into(),
            name: "gh".into(),
            uid: "uid-gh".into(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    h.api.put_secret("team-a", &stale);
    c.metadata.finalizers = Some(vec![crate::crd::FINALIZER.into()]);
    c.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t0()));
    h.api.take();
    h.sync_index();
    reconcile(Arc::new(c.clone()), h.ctx.clone()).await.unwrap();
    let reqs = h.api.take();
    assert_eq!(
        lines(&reqs),
        vec![GET_SECRET, PATCH_SECRET, PATCH_CA],
        "release the Secret, then the finalizer"
    );
    assert_eq!(reqs[1].body["metadata"]["ownerReferences"], json!([]));
    assert_eq!(reqs[2].body["metadata"]["finalizers"], json!([]));
    assert!(
        h.api
            .secret("team-a", "gh")
            .unwrap()
            .metadata
            .owner_references
            .is_none_or(|o| o.is_empty())
    );
    assert!(h.ctx.object("uid-gh").secret_version.is_none(), "forgotten");
}

/// Regression (issue 8): an answer whose credentials had just expired (Pipedream refreshed late) left the Secret
/// with the expired token for about a minute. It is polled again within two seconds, status says so once, and
/// the fresh token is written as soon as Pipedream has it.
#[tokio::test]
async fn an_expired_answer_is_polled_within_seconds_until_the_fresh_token_arrives() {
    let h = Harness::new().await;
    let mut c = ca(json!({}));
    h.reconcile(&mut c).await.unwrap();
    h.ctx.clock.advance(Duration::from_secs(3601));
    // Pipedream has not refreshed yet: it returns the token that expired a second ago.
    h.serve_account(account_json(
        TOKEN,
        Some(t0() + SignedDuration::from_hours(1)),
    ))
    .await;
    c.metadata.annotations = Some(
        [(
            "pipedream-secrets.io/force-sync".to_string(),
            "1".to_string(),
        )]
        .into(),
    );
    h.api.take();
    let a = h.reconcile(&mut c).await.unwrap();
    assert_eq!(ready(&c).1, "StaleCredentials");
    assert_eq!(a, Action::requeue(Duration::from_secs(1)));
    let writes = |h: &Harness| {
        lines(&h.api.take())
            .iter()
            .filter(|l| l.ends_with("/status"))
            .count()
    };
    assert_eq!(writes(&h), 1, "one status write for the transition");
    // Still late a second later: polled again, status not rewritten.
    h.ctx.clock.advance(Duration::from_secs(1));
    let a = h.reconcile(&mut c).await.unwrap();
    assert_eq!(a, Action::requeue(Duration::from_secs(1)));
    assert_eq!(writes(&h), 0);
    // Pipedream refreshes: the next poll writes the fresh token.
    h.ctx.clock.advance(Duration::from_secs(1));
    h.serve_account(account_json(
        "gho_FRESH",
        Some(t0() + SignedDuration::from_hours(2)),
    ))
    .await;
    h.reconcile(&mut c).await.unwrap();
    assert_eq!(ready(&c).1, "SecretSynced");
    assert_eq!(
        secret_value(&h.api.secret("team-a", "gh").unwrap(), "oauth_access_token"),
        "gho_FRESH"
    );
}

/// Regression (issue 8): dead, missing and refused accounts were polled every 30 s forever once their
/// credentials had expired. They back off to minutes.
#[tokio::test]
async fn permanently_failing_accounts_back_off_to_minutes_after_expiry() {
    let h = Harness::new().await;
    let mut c = ca(json!({}));
    h.reconcile(&mut c).await.unwrap();
    h.serve(
        ResponseTemplate::new(200)
            .set_body_json(json!({"id": "apn_A1", "healthy": false, "dead": true})),
    )
    .await;
    let mut delays = Vec::new();
    for _ in 0..4 {
        h.advance_to_next_sync(&c);
        h.ctx.clock.advance(Duration::from_secs(3600));
        let a = h.reconcile(&mut c).await.unwrap();
        assert_eq!(ready(&c).1, "AccountDead");
        delays.push(requeue_of(&a).unwrap().as_secs());
    }
    assert!(delays.iter().all(|d| *d >= 60), "{delays:?}");
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
}

/// Regression (issue 8): force-sync had no per-object debounce; a tenant flipping the annotation fetched every
/// time. A second value within 10 s waits for the rest of the window.
#[tokio::test]
async fn force_sync_is_debounced_per_object() {
    let h = Harness::new().await;
    let mut c = ca(json!({}));
    h.reconcile(&mut c).await.unwrap();
    let force = |c: &mut ConnectedAccount, v: &str| {
        c.metadata.annotations =
            Some([("pipedream-secrets.io/force-sync".to_string(), v.to_string())].into());
    };
    force(&mut c, "1");
    h.ctx.clock.advance(Duration::from_secs(3));
    h.reconcile(&mut c).await.unwrap();
    assert_eq!(h.pipedream_calls("/accounts/").await, 2);
    force(&mut c, "2");
    h.ctx.clock.advance(Duration::from_secs(3));
    let a = h.reconcile(&mut c).await.unwrap();
    assert_eq!(h.pipedream_calls("/accounts/").await, 2, "debounced");
    assert_eq!(a, Action::requeue(Duration::from_secs(7)));
    h.ctx.clock.advance(Duration::from_secs(7));
    h.reconcile(&mut c).await.unwrap();
    assert_eq!(h.pipedream_calls("/accounts/").await, 3);
    assert_eq!(
        c.status.as_ref().unwrap().last_force_sync.as_deref(),
        Some("2")
    );
}

/// The delay of a requeue action (kube's `Action` exposes it only through Debug).
fn action_delay(a: &Action) -> Duration {
    let text = format!("{a:?}");
    let secs = text
        .split("Some(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_default();
    let secs = secs.trim_end_matches('s');
    Duration::from_secs_f64(secs.parse::<f64>().unwrap_or(0.0).max(0.0))
}

/// A pass that runs on a cached object older than this operator's own last status write (the Secret's watch
/// event can arrive before the status write's) must not take the old `nextSyncTime` for "due" and call Pipedream
/// again: the bench found 1.5 calls per token at 10,000 accounts, where the API server's events lagged.
#[tokio::test]
async fn a_pass_on_a_cached_object_older_than_our_status_write_does_not_fetch_again() {
    let h = Harness::new().await;
    let mut ca = ca(json!({}));
    h.reconcile(&mut ca).await.unwrap();
    h.advance_to_next_sync(&ca);
    let stale = ca.clone();
    h.serve_account(account_json(
        "gho_ROTATED_2",
        Some(t0() + SignedDuration::from_hours(2)),
    ))
    .await;
    h.reconcile(&mut ca).await.unwrap();
    let calls = h.pipedream_calls("apn_A1").await;
    h.ctx.clock.advance(Duration::from_secs(1));
    let _ = reconcile(Arc::new(stale), h.ctx.clone()).await;
    if h.ctx.object("uid-gh").asked.is_some() {
        h.wait_triggered("gh").await;
    }
    assert_eq!(
        h.pipedream_calls("apn_A1").await,
        calls,
        "the stale view's old nextSyncTime caused another Pipedream call"
    );
}
