//! The test kit's Kubernetes API emulator behaves like an API server where the operator and kubectl depend on it.
//! The tests of API semantics run against both the emulator and the real API server (`emulator_and_real::*`,
//! through kube-rs, so what a client sees is compared); the ones about the emulator's own machinery (compaction,
//! fault injection, RBAC enforcement, tables, OpenAPI v2) run against the emulator alone.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Config, ResourceExt};
use pdso_testkit::apiserver::{ApiFault, ApiServer};
use pdso_testkit::controlplane::{ADMIN, ControlPlane};
use pipedream_secrets_operator::crd::ConnectedAccount;
use serde_json::json;

async fn setup() -> (ApiServer, Client) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = ApiServer::start().await.unwrap();
    api.apply_crd_dir(std::path::Path::new("crds")).unwrap();
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&api.kubeconfig()).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    (api, Client::try_from(config).unwrap())
}

/// Where a differential test runs: a fresh emulator, or the binary's shared real API server in a namespace of
/// the test's own.
struct Target {
    _emulator: Option<ApiServer>,
    client: Client,
    ns: String,
    real: bool,
}

impl Target {
    async fn emulator() -> Self {
        let (api, client) = setup().await;
        Self {
            _emulator: Some(api),
            client,
            ns: "default".into(),
            real: false,
        }
    }

    /// `None` (the test returns) when no control plane binaries exist and `CI` is not `true`.
    async fn real() -> Option<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cp = ControlPlane::shared()?;
        let ns = format!("emulator-semantics-{}", SEQ.fetch_add(1, Ordering::SeqCst));
        cp.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .unwrap();
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::from_yaml(&cp.kubeconfig_with_token(cp.token(ADMIN), Some(&ns))).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        Some(Self {
            _emulator: None,
            client: Client::try_from(config).unwrap(),
            ns,
            real: true,
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }
}

/// Each listed test as `emulator_and_real::emulator::<name>` and `emulator_and_real::real_api_server::<name>`.
macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        mod emulator_and_real {
            mod emulator {
                $(
                    #[tokio::test]
                    async fn $name() {
                        crate::$name(&crate::Target::emulator().await).await;
                    }
                )*
            }
            mod real_api_server {
                $(
                    #[tokio::test]
                    async fn $name() {
                        let Some(t) = crate::Target::real().await else {
                            return;
                        };
                        crate::$name(&t).await;
                    }
                )*
            }
        }
    };
}

against_both!(
    admission_rejects_a_bad_account_id_pattern,
    admission_rejects_an_unknown_enum_value,
    admission_evaluates_cel_rules_after_defaulting,
    watch_resumes_from_a_resource_version,
    server_side_apply_tracks_managers_conflicts_and_removals,
    status_is_a_subresource_and_generation_follows_the_spec,
    finalizers_delay_deletion_and_owners_garbage_collect_dependents,
    lists_filter_by_labels_and_fields_and_paginate,
    dry_run_admits_and_answers_but_persists_and_announces_nothing,
    every_write_response_carries_managed_fields,
    secrets_are_validated_like_the_api_server_does,
);

fn secret(name: &str, labels: serde_json::Value) -> Secret {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "stringData": {"k": "v"}}),
    )
    .unwrap()
}

async fn apply_ca(t: &Target, body: serde_json::Value) -> Result<ConnectedAccount, kube::Error> {
    apply_ca_in(&t.client, &t.ns, body).await
}

async fn apply_ca_in(
    client: &Client,
    ns: &str,
    body: serde_json::Value,
) -> Result<ConnectedAccount, kube::Error> {
    let api: Api<ConnectedAccount> = Api::namespaced(client.clone(), ns);
    let mut obj = json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount", "metadata": {"name": "ca"}});
    obj.as_object_mut()
        .unwrap()
        .extend(body.as_object().cloned().unwrap());
    api.patch(
        "ca",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
}

fn invalid_message(r: Result<ConnectedAccount, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 422 => s.message,
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
}

async fn admission_rejects_a_bad_account_id_pattern(t: &Target) {
    let msg = invalid_message(apply_ca(t, json!({"spec": {"accountId": "acct_123"}})).await);
    assert!(
        msg.contains("spec.accountId") && msg.contains("^apn_[A-Za-z0-9]+$"),
        "{msg}"
    );
}

async fn admission_rejects_an_unknown_enum_value(t: &Target) {
    let msg = invalid_message(
        apply_ca(
            t,
            json!({"spec": {"accountId": "apn_A1", "target": {"deletionPolicy": "Keep"}}}),
        )
        .await,
    );
    assert!(
        msg.contains("spec.target.deletionPolicy") && msg.contains("Unsupported value"),
        "{msg}"
    );
}

async fn admission_evaluates_cel_rules_after_defaulting(t: &Target) {
    // deletionPolicy defaults to Delete, so Merge alone breaks the CEL rule.
    let msg = invalid_message(
        apply_ca(
            t,
            json!({"spec": {"accountId": "apn_A1", "target": {"creationPolicy": "Merge"}}}),
        )
        .await,
    );
    assert!(
        msg.contains("creationPolicy Merge requires deletionPolicy Retain"),
        "{msg}"
    );
    let ok = apply_ca(t, json!({"spec": {"accountId": "apn_A1", "target": {"creationPolicy": "Merge", "deletionPolicy": "Retain"}}})).await.unwrap();
    assert_eq!(
        ok.spec.refresh.before_expiry, "5m",
        "schema defaults applied"
    );
}

async fn watch_resumes_from_a_resource_version(t: &Target) {
    let secrets: Api<Secret> = t.api();
    let a = secrets
        .create(&PostParams::default(), &secret("a", json!({})))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret("b", json!({})))
        .await
        .unwrap();
    let rv = a.resource_version().unwrap();
    let mut stream = secrets
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(3), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Added(s) => {
            assert_eq!(s.name_any(), "b", "only changes after the given version")
        }
        other => panic!("{other:?}"),
    }
    secrets.delete("a", &DeleteParams::default()).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(3), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Deleted(s) => assert_eq!(s.name_any(), "a"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn expired_resource_versions_get_410_and_the_kube_watcher_relists() {
    let (api, client) = setup().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let a = secrets
        .create(&PostParams::default(), &secret("a", json!({})))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret("b", json!({})))
        .await
        .unwrap();
    api.with_store(|s| s.compact());
    let mut stream = secrets
        .watch(
            &WatchParams::default().timeout(5),
            &a.resource_version().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    // The kube-rs watcher: its first watch drops, the resume is answered 410 Gone, so it lists again.
    api.add_fault(ApiFault {
        verb: "watch".into(),
        resource: "secrets".into(),
        drop_watch_after_ms: Some(300),
        count: Some(1),
        ..Default::default()
    });
    api.add_fault(ApiFault {
        verb: "watch".into(),
        resource: "secrets".into(),
        status: Some(410),
        count: Some(1),
        ..Default::default()
    });
    let (store, writer) = reflector::store::<Secret>();
    let w = reflector::reflector(writer, watcher(secrets.clone(), watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(w.for_each(|_| futures::future::ready(())));
    store.wait_until_ready().await.unwrap();
    assert_eq!(api.count("list", "secrets"), 1);
    secrets.delete("b", &DeleteParams::default()).await.unwrap();
    secrets
        .create(&PostParams::default(), &secret("c", json!({})))
        .await
        .unwrap();
    for _ in 0..100 {
        if api.count("list", "secrets") >= 2 && store.state().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        api.count("watch", "secrets") >= 3,
        "watch, 410'd resume, watch after re-list"
    );
    assert_eq!(api.count("list", "secrets"), 2, "re-listed after 410 Gone");
    let mut names: Vec<String> = store.state().iter().map(|s| s.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["a", "c"],
        "the store is right after the re-list"
    );
    task.abort();
}

async fn server_side_apply_tracks_managers_conflicts_and_removals(t: &Target) {
    let secrets: Api<Secret> = t.api();
    let body = |labels: serde_json::Value, data: serde_json::Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": labels}, "data": data});
    secrets
        .patch(
            "s",
            &PatchParams::apply("alice"),
            &Patch::Apply(body(
                json!({"a": "1", "x": "1"}),
                json!({"k1": "djE=", "k2": "djI="}),
            )),
        )
        .await
        .unwrap();
    let conflict = secrets
        .patch(
            "s",
            &PatchParams::apply("bob"),
            &Patch::Apply(body(json!({"a": "2"}), json!({}))),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, kube::Error::Api(s) if s.code == 409),
        "{conflict:?}"
    );
    secrets
        .patch(
            "s",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(body(json!({"a": "2"}), json!({}))),
        )
        .await
        .unwrap();
    // alice stops applying x and k2: they go; a now belongs to bob and stays.
    let s = secrets
        .patch(
            "s",
            &PatchParams::apply("alice"),
            &Patch::Apply(body(json!({}), json!({"k1": "djE="}))),
        )
        .await
        .unwrap();
    assert_eq!(s.labels().get("a").map(String::as_str), Some("2"));
    assert!(!s.labels().contains_key("x"));
    let keys: Vec<&String> = s.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, vec!["k1"]);
    // An unchanged apply is a no-op: same resourceVersion.
    let again = secrets
        .patch(
            "s",
            &PatchParams::apply("alice"),
            &Patch::Apply(body(json!({}), json!({"k1": "djE="}))),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), s.resource_version());
    // An applied object names itself as the URL does; one that creates must name itself.
    for (url, obj, needle) in [
        (
            "new",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}}),
            "(new based on URL) was undeterminable: name must be provided",
        ),
        (
            "s",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other"}}),
            "does not match the name on the URL (s)",
        ),
    ] {
        let err = secrets
            .patch(url, &PatchParams::apply("alice"), &Patch::Apply(obj))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(e) if e.code == 400 && e.message.contains(needle)),
            "{err:?}"
        );
    }
    // A stale replace is a conflict.
    let mut stale = s.clone();
    stale.metadata.resource_version = Some("1".into());
    assert!(
        matches!(secrets.replace("s", &PostParams::default(), &stale).await, Err(kube::Error::Api(e)) if e.code == 409)
    );
}

async fn status_is_a_subresource_and_generation_follows_the_spec(t: &Target) {
    let cas: Api<ConnectedAccount> = t.api();
    let ca = apply_ca(
        t,
        json!({"spec": {"accountId": "apn_A1"}, "status": {"secretName": "ignored"}}),
    )
    .await
    .unwrap();
    assert_eq!(ca.metadata.generation, Some(1));
    assert!(
        ca.status.is_none(),
        "status is ignored on the main resource"
    );
    let st = json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount", "status": {"secretName": "ca"}});
    let ca = cas
        .patch_status("ca", &PatchParams::apply("op"), &Patch::Apply(&st))
        .await
        .unwrap();
    assert_eq!(ca.status.unwrap().secret_name.as_deref(), Some("ca"));
    assert_eq!(
        ca.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    let ca = apply_ca(t, json!({"spec": {"accountId": "apn_B2"}}))
        .await
        .unwrap();
    assert_eq!(ca.metadata.generation, Some(2));
    assert_eq!(
        ca.status.unwrap().secret_name.as_deref(),
        Some("ca"),
        "spec writes keep status"
    );
}

async fn finalizers_delay_deletion_and_owners_garbage_collect_dependents(t: &Target) {
    let cas: Api<ConnectedAccount> = t.api();
    let secrets: Api<Secret> = t.api();
    let ca = apply_ca(
        t,
        json!({"metadata": {"name": "ca", "finalizers": ["x/y"]}, "spec": {"accountId": "apn_A1"}}),
    )
    .await
    .unwrap();
    let mut owned = secret("owned", json!({}));
    owned.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "pipedream-secrets.io/v1alpha1".into(),
            kind: "ConnectedAccount".into(),
            name: "ca".into(),
            uid: ca.uid().unwrap(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    cas.delete("ca", &DeleteParams::default()).await.unwrap();
    let marked = cas.get("ca").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        secrets.get_opt("owned").await.unwrap().is_some(),
        "dependents stay while the owner is finalizing"
    );
    cas.patch(
        "ca",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cas.get_opt("ca").await.unwrap().is_none());
    // The emulator collects inside the delete; a real server's garbage collector shortly after.
    let mut collected = false;
    for _ in 0..300 {
        collected = secrets.get_opt("owned").await.unwrap().is_none();
        if collected || !t.real {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(collected, "garbage-collected with its owner");
}

async fn lists_filter_by_labels_and_fields_and_paginate(t: &Target) {
    let secrets: Api<Secret> = t.api();
    for (n, l) in [
        ("a", json!({"m": "ours"})),
        ("b", json!({"m": "ours"})),
        ("c", json!({"m": "theirs"})),
    ] {
        secrets
            .create(&PostParams::default(), &secret(n, l))
            .await
            .unwrap();
    }
    let ours = secrets
        .list(&ListParams::default().labels("m=ours"))
        .await
        .unwrap();
    assert_eq!(ours.items.len(), 2);
    let named = secrets
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(named.items[0].name_any(), "c");
    let page = secrets.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = secrets
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.is_none());
    let set = secrets
        .list(&ListParams::default().labels("m in (theirs)"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 1);
}

/// The installed kubectl against `api`; returns (success, stdout, stderr).
fn kubectl(api: &ApiServer, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("pdso-emu-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join(format!("kubeconfig-{}", api.kubeconfig().len()));
    api.write_kubeconfig(&kc).unwrap();
    let bin = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut child = std::process::Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", &kc)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); install kubectl or set KUBECTL"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_every_object_across_table_pages() {
    let (api, _client) = setup().await;
    api.with_store(|st| {
        st.create("", "namespaces", "", json!({"metadata": {"name": "t1"}}), "test")
            .unwrap();
        for i in 0..2000 {
            st.create(
                "pipedream-secrets.io",
                "connectedaccounts",
                "t1",
                json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                       "metadata": {"name": format!("ca-{i:04}")}, "spec": {"accountId": "apn_A1"}}),
                "test",
            )
            .unwrap();
        }
    });
    // kubectl asks for Tables in chunks of 500 and must follow the Table's `continue`.
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        let r = kubectl(
            &api,
            &["get", "connectedaccounts", "-n", "t1", "--no-headers"],
            None,
        );
        drop(api);
        r
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("ca-")).collect();
    assert_eq!(rows.len(), 2000, "{err}");
    assert!(rows.contains(&"ca-0000") || rows.iter().any(|r| r.starts_with("ca-1999 ")));
}

#[tokio::test]
async fn table_pages_carry_continue_and_remaining_count() {
    let (api, client) = setup().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    for n in ["a", "b", "c"] {
        secrets
            .create(&PostParams::default(), &secret(n, json!({})))
            .await
            .unwrap();
    }
    let http = reqwest::Client::new();
    let kc: serde_json::Value = serde_saphyr::from_str(&api.kubeconfig()).unwrap();
    let server = kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    let get = |q: String| {
        http.get(format!("{server}/api/v1/namespaces/default/secrets?{q}"))
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .send()
    };
    let first: serde_json::Value = get("limit=2".into()).await.unwrap().json().await.unwrap();
    assert_eq!(first["kind"], "Table");
    assert_eq!(first["rows"].as_array().unwrap().len(), 2);
    assert_eq!(first["metadata"]["remainingItemCount"], 1);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let rest: serde_json::Value = get(format!("limit=2&continue={token}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["rows"].as_array().unwrap().len(), 1);
    assert!(rest["metadata"].get("continue").is_none(), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_a_list_as_get_o_yaml_writes_it() {
    let (api, _client) = setup().await;
    let list = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: one, namespace: default}
  data: {a: "1"}
- apiVersion: pipedream-secrets.io/v1alpha1
  kind: ConnectedAccount
  metadata: {name: two, namespace: default}
  spec: {accountId: apn_A1}
"#;
    let bad = list.replace(
        "spec: {accountId: apn_A1}",
        "spec: {accountId: apn_A1, colour: red}",
    );
    let api2 = api.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || kubectl(&api2, &["apply", "-f", "-"], Some(list)))
            .await
            .unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("configmap/one created")
            && out.contains("connectedaccount.pipedream-secrets.io/two created"),
        "{out}"
    );
    assert!(api.get("", "configmaps", "default", "one").is_some());
    // Validation still happens: an unknown field in an item is refused (strict field validation, as kubectl asks).
    let api2 = api.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        kubectl(&api2, &["apply", "--server-side", "-f", "-"], Some(&bad))
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("colour"), "{out}{err}");
}

#[tokio::test]
async fn openapi_v2_is_served_as_json_and_protobuf() {
    let (api, _client) = setup().await;
    let kc: serde_json::Value = serde_saphyr::from_str(&api.kubeconfig()).unwrap();
    let server = kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let doc: serde_json::Value = http
        .get(format!("{server}/openapi/v2"))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["swagger"], "2.0");
    let ca = &doc["definitions"]["io.pipedream-secrets.v1alpha1.ConnectedAccount"];
    assert_eq!(
        ca["x-kubernetes-group-version-kind"][0]["kind"],
        "ConnectedAccount"
    );
    assert!(ca["properties"]["spec"]["properties"]["accountId"].is_object());
    let pb = http
        .get(format!("{server}/openapi/v2"))
        .header(
            "Accept",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )
        .send()
        .await
        .unwrap();
    assert!(
        pb.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("protobuf")
    );
    let bytes = pb.bytes().await.unwrap();
    // Field 1 (swagger) is the string "2.0".
    assert_eq!(&bytes[..5], b"\x0a\x032.0");
}

async fn dry_run_admits_and_answers_but_persists_and_announces_nothing(t: &Target) {
    let secrets: Api<Secret> = t.api();
    let rv_before = secrets
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = secrets
        .watch(&WatchParams::default(), &rv_before)
        .await
        .unwrap()
        .boxed();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = secrets
        .create(&dry, &secret("ghost", json!({})))
        .await
        .unwrap();
    assert_eq!(created.name_any(), "ghost");
    assert!(secrets.get_opt("ghost").await.unwrap().is_none());
    // Apply and delete with dryRun change nothing either.
    let before = secrets
        .create(&PostParams::default(), &secret("real", json!({"v": "1"})))
        .await
        .unwrap();
    let patched = secrets
        .patch(
            "real",
            &PatchParams::apply("test").force().dry_run(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "real", "labels": {"v": "2"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels()["v"], "2");
    secrets
        .delete(
            "real",
            &DeleteParams {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let real = secrets.get("real").await.unwrap();
    assert_eq!(real.labels()["v"], "1");
    assert_eq!(
        real.resource_version(),
        before.resource_version(),
        "no write happened"
    );
    // Admission still runs under dry run.
    let cas: Api<ConnectedAccount> = t.api();
    let bad = cas
        .patch(
            "ca",
            &PatchParams::apply("test").dry_run(),
            &Patch::Apply(
                json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
                "metadata": {"name": "ca"}, "spec": {"accountId": "acct_1"}}),
            ),
        )
        .await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 422),
        "{bad:?}"
    );
    // The only event the watch saw is the real create.
    let first = tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, WatchEvent::Added(s) if s.name_any() == "real"),
        "{first:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "a dry run reached a watcher"
    );
    // kubectl --dry-run=server creates nothing (the chart tests use it against the real server).
    if let Some(api) = t._emulator.clone() {
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            kubectl(
                &api,
                &["apply", "--dry-run=server", "-f", "-"],
                Some(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dry, namespace: default}\n",
                ),
            )
        })
        .await
        .unwrap();
        assert!(ok && out.contains("created (server dry run)"), "{out}{err}");
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = t.api();
        assert!(cms.get_opt("dry").await.unwrap().is_none());
    }
}

async fn every_write_response_carries_managed_fields(t: &Target) {
    let secrets: Api<Secret> = t.api();
    let applied = secrets
        .patch(
            "s",
            &PatchParams::apply("alice"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"team": "a"}}, "stringData": {"k": "v"}})),
        )
        .await
        .unwrap();
    let mf = applied.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(mf[0].fields_type.as_deref(), Some("FieldsV1"));
    let fields = &mf[0].fields_v1.as_ref().unwrap().0;
    assert!(
        fields["f:metadata"]["f:labels"]["f:team"].is_object(),
        "{fields}"
    );
    // Like a real server, ownership is recorded for the fields as applied (`stringData`, not `data`).
    assert!(fields["f:stringData"]["f:k"].is_object(), "{fields}");
    // A merge patch by another manager adds an Update entry for the field it changed.
    let patched = secrets
        .patch(
            "s",
            &PatchParams {
                field_manager: Some("bob".into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"metadata": {"labels": {"owner": "b"}}})),
        )
        .await
        .unwrap();
    let mf = patched.metadata.managed_fields.unwrap();
    let bob = mf
        .iter()
        .find(|m| m.manager.as_deref() == Some("bob"))
        .unwrap();
    assert_eq!(bob.operation.as_deref(), Some("Update"));
    assert!(bob.fields_v1.as_ref().unwrap().0["f:metadata"]["f:labels"]["f:owner"].is_object());
    // Reads return them too.
    let got = secrets.get("s").await.unwrap();
    assert_eq!(got.metadata.managed_fields.map(|m| m.len()), Some(2));
}

#[tokio::test]
async fn rbac_enforcement_authorizes_service_accounts_like_the_real_authorizer() {
    let (api, admin) = setup().await;
    api.enforce_rbac(true);
    let user = "system:serviceaccount:ops:op";
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&api.kubeconfig_for(user)).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let sa = Client::try_from(config).unwrap();
    let apply = |kind: &str, ns: Option<&str>, body: serde_json::Value| {
        let api = api.clone();
        let kind = kind.to_string();
        let ns = ns.map(str::to_string);
        async move {
            api.with_store(|st| {
                let plural = format!("{}s", kind.to_ascii_lowercase());
                st.create(
                    "rbac.authorization.k8s.io",
                    &plural,
                    ns.as_deref().unwrap_or_default(),
                    body,
                    "test",
                )
            })
            .unwrap();
        }
    };
    for ns in ["ops", "team-a"] {
        api.with_store(|st| {
            st.create(
                "",
                "namespaces",
                "",
                json!({"metadata": {"name": ns}}),
                "test",
            )
        })
        .unwrap();
    }
    // Before any binding: forbidden, with the API server's message.
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), "team-a");
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert_eq!(
                s.message,
                "secrets is forbidden: User \"system:serviceaccount:ops:op\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team-a\""
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // A Role bound in team-a grants there only.
    apply("Role", Some("team-a"), json!({"metadata": {"name": "r", "namespace": "team-a"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create"]}]})).await;
    apply(
        "RoleBinding",
        Some("team-a"),
        json!({"metadata": {"name": "rb", "namespace": "team-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "ops"}]}),
    )
    .await;
    secrets.list(&ListParams::default()).await.unwrap();
    secrets
        .create(&PostParams::default(), &secret("s", json!({})))
        .await
        .unwrap();
    let denied =
        |r: Result<Secret, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(denied(
        secrets
            .patch("s", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
    ));
    let other: Api<Secret> = Api::namespaced(sa.clone(), "ops");
    assert!(
        denied(other.get("x").await),
        "the Role grants nothing in ops"
    );
    let everywhere: Api<Secret> = Api::all(sa.clone());
    assert!(
        everywhere.list(&ListParams::default()).await.is_err(),
        "nor cluster-wide"
    );
    // A ClusterRole through a ClusterRoleBinding: subresources and resourceNames are matched exactly.
    apply("ClusterRole", None, json!({"metadata": {"name": "cr"}, "rules": [
        {"apiGroups": ["pipedream-secrets.io"], "resources": ["connectedaccounts"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["pipedream-secrets.io"], "resources": ["connectedaccounts/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["get"]}]})).await;
    apply(
        "ClusterRoleBinding",
        None,
        json!({"metadata": {"name": "crb"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cr"},
        "subjects": [{"kind": "Group", "name": "system:serviceaccounts:ops"}]}),
    )
    .await;
    apply_ca_in(&admin, "default", json!({"spec": {"accountId": "apn_A1"}}))
        .await
        .unwrap();
    let cas: Api<ConnectedAccount> = Api::all(sa.clone());
    assert_eq!(
        cas.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let mine: Api<ConnectedAccount> = Api::namespaced(sa.clone(), "default");
    mine.patch_status(
        "ca",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {}})),
    )
    .await
    .unwrap();
    let spec_patch = mine
        .patch(
            "ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await;
    assert!(
        matches!(spec_patch, Err(kube::Error::Api(s)) if s.code == 403),
        "status/patch is not patch"
    );
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(sa.clone(), "default");
    let named = cms.get("allowed").await;
    assert!(
        matches!(named, Err(kube::Error::Api(s)) if s.code == 404),
        "allowed by name: reaches the store"
    );
    let unnamed = cms.get("other").await;
    assert!(matches!(unnamed, Err(kube::Error::Api(s)) if s.code == 403));
    // Other users are administrators; discovery is open to everyone.
    let all: Api<Secret> = Api::all(admin.clone());
    all.list(&ListParams::default()).await.unwrap();
    kube::discovery::Discovery::new(sa).run().await.unwrap();
}

async fn secrets_are_validated_like_the_api_server_does(t: &Target) {
    let secrets: Api<Secret> = t.api();
    let invalid = |r: Result<Secret, kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 422 => s.message,
        other => panic!("expected 422, got {other:?}"),
    };
    let apply = |name: &str, body: serde_json::Value| {
        let secrets = secrets.clone();
        let name = name.to_string();
        async move {
            let mut obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}});
            obj.as_object_mut()
                .unwrap()
                .extend(body.as_object().cloned().unwrap());
            secrets
                .patch(
                    &name,
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(&obj),
                )
                .await
        }
    };
    let msg = invalid(apply("bad-key", json!({"stringData": {"has space": "v"}})).await);
    assert!(
        msg.starts_with("Secret \"bad-key\" is invalid: data[has space]: Invalid value")
            && msg.contains("regex used for validation is '[-._a-zA-Z0-9]+'"),
        "{msg}"
    );
    let big = "x".repeat(1024 * 1024 + 1);
    let msg = invalid(apply("too-big", json!({"stringData": {"k": big}})).await);
    assert!(msg.contains("data: Too long"), "{msg}");
    // Exactly 1 MiB is fine.
    apply(
        "just-fits",
        json!({"stringData": {"k": "x".repeat(1024 * 1024)}}),
    )
    .await
    .unwrap();
    // type is immutable; so is data once immutable: true.
    apply("typed", json!({"type": "Opaque", "stringData": {"k": "v"}}))
        .await
        .unwrap();
    let msg = invalid(
        apply(
            "typed",
            json!({"type": "kubernetes.io/tls", "stringData": {"k": "v"}}),
        )
        .await,
    );
    assert!(
        msg.contains("type: Invalid value: \"kubernetes.io/tls\": field is immutable"),
        "{msg}"
    );
    apply(
        "frozen",
        json!({"immutable": true, "stringData": {"k": "v"}}),
    )
    .await
    .unwrap();
    let msg = invalid(
        apply(
            "frozen",
            json!({"immutable": true, "stringData": {"k": "changed"}}),
        )
        .await,
    );
    assert!(
        msg.contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{msg}"
    );
    // Labels of an immutable Secret may still change.
    apply("frozen", json!({"immutable": true, "metadata": {"name": "frozen", "labels": {"a": "b"}}, "stringData": {"k": "v"}}))
        .await
        .unwrap();
}
