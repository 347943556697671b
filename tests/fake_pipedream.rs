//! The test kit's fake Pipedream follows the wire contract: driven here by the operator's own client.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use pdso_testkit::pipedream::{FakeAccount, FakePipedream, Fault, FaultKind, Seed};
use pipedream_secrets_operator::crd::{CredentialsPath, PipedreamEnvironment, RateLimit};
use pipedream_secrets_operator::pipedream::{
    ApiMode, AuthMaterial, ClientSettings, MaterialLoader, PipedreamClient, PipedreamError,
    SecretString, http_client,
};
use serde_json::json;

fn account(id: &str, lifetime: Option<u64>) -> FakeAccount {
    FakeAccount {
        id: id.into(),
        project_id: "proj_T1".into(),
        credentials: json!({"oauth_access_token": "tok", "oauth_uid": 7})
            .as_object()
            .unwrap()
            .clone(),
        lifetime_secs: lifetime,
        refresh_lead_secs: 5,
        ..Default::default()
    }
}

async fn fake() -> FakePipedream {
    FakePipedream::start(Seed {
        clients: [("cid".to_string(), "secret".to_string())].into(),
        api_keys: vec!["key-1".into()],
        accounts: vec![account("apn_A1", Some(20)), account("apn_K1", None)],
        ..Default::default()
    })
    .await
    .unwrap()
}

fn client(url: String, mode: ApiMode, material: AuthMaterial) -> PipedreamClient {
    let loader: MaterialLoader = Arc::new(move || {
        let m = material.clone();
        async move { Ok(m) }.boxed()
    });
    PipedreamClient::new(
        http_client(Duration::from_secs(2), &[]).unwrap(),
        ClientSettings {
            api_url: url,
            mode,
            rate_limit: RateLimit {
                requests_per_second: 100,
                burst: 100,
            },
            rate_share: 1,
        },
        loader,
        None,
    )
}

fn oauth(secret: &str) -> AuthMaterial {
    AuthMaterial::OAuth {
        client_id: "cid".into(),
        client_secret: SecretString::new(secret),
    }
}

fn connect() -> ApiMode {
    ApiMode::Connect {
        project_id: "proj_T1".into(),
        environment: PipedreamEnvironment::Production,
    }
}

#[tokio::test]
async fn tokens_rotate_on_pipedreams_own_schedule() {
    let f = fake().await;
    let c = client(f.url(), connect(), oauth("secret"));
    let a = c.fetch_account("apn_A1").await.unwrap().account;
    assert_eq!(
        a.credentials.as_ref().unwrap().expose()["oauth_access_token"],
        "tok-g1"
    );
    let exp: jiff::Timestamp = a.expires_at.unwrap().parse().unwrap();
    let nra: jiff::Timestamp = a.next_refresh_at.unwrap().parse().unwrap();
    assert_eq!(exp.duration_since(nra).as_secs(), 5);
    f.advance(Duration::from_secs(16));
    let b = c.fetch_account("apn_A1").await.unwrap().account;
    assert_eq!(
        b.credentials.as_ref().unwrap().expose()["oauth_access_token"],
        "tok-g2",
        "refreshed after next_refresh_at"
    );
    assert_eq!(f.count("token"), 1);
    assert_eq!(f.count("connect_account"), 2);
    assert!(
        f.requests()
            .iter()
            .all(|r| !format!("{r:?}").contains("secret"))
    );
}

#[tokio::test]
async fn api_key_paths_and_form_token_requests() {
    let f = fake().await;
    for path in [
        CredentialsPath::IncludeCredentials,
        CredentialsPath::Credentials,
    ] {
        let c = client(
            f.url(),
            ApiMode::ApiKey { path },
            AuthMaterial::ApiKey(SecretString::new("key-1")),
        );
        let a = c.fetch_account("apn_K1").await.unwrap().account;
        assert!(a.expires_at.is_none());
        assert_eq!(a.credentials.unwrap().expose()["oauth_uid"], 7);
    }
    let http = http_client(Duration::from_secs(2), &[]).unwrap();
    let form = http
        .post(format!("{}/v1/oauth/token", f.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=cid&client_secret=secret")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let bad = client(f.url(), connect(), oauth("wrong"));
    assert!(matches!(
        bad.fetch_account("apn_A1").await,
        Err(PipedreamError::Unauthorized { .. })
    ));
    let list: serde_json::Value = http
        .get(format!("{}/v1/connect/proj_T1/accounts?limit=1", f.url()))
        .bearer_auth(
            form.json::<serde_json::Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap(),
        )
        .header("x-pd-environment", "production")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["page_info"]["total_count"], 2);
}

#[tokio::test]
async fn faults_rate_limits_and_rotated_client_secrets() {
    let f = fake().await;
    let c = client(f.url(), connect(), oauth("secret"));
    f.add_fault(Fault {
        path: "/accounts/".into(),
        kind: FaultKind::Status { status: 503 },
        count: Some(2),
    });
    assert!(matches!(
        c.fetch_account("apn_A1").await,
        Err(PipedreamError::Status { status: 503, .. })
    ));
    f.add_fault(Fault {
        path: "/accounts/".into(),
        kind: FaultKind::Malformed,
        count: Some(1),
    });
    assert!(matches!(
        c.fetch_account("apn_A1").await,
        Err(PipedreamError::Malformed { .. })
    ));
    f.add_fault(Fault {
        path: "/accounts/".into(),
        kind: FaultKind::WrongEnvelope,
        count: Some(1),
    });
    assert!(
        c.fetch_account("apn_A1").await.is_ok(),
        "the client accepts both envelopes"
    );
    f.add_fault(Fault {
        path: "/accounts/".into(),
        kind: FaultKind::Delay { ms: 3000 },
        count: Some(2),
    });
    assert!(matches!(
        c.fetch_account("apn_A1").await,
        Err(PipedreamError::Transport { .. })
    ));
    // A body trickling in slower than the client timeout is a timeout, not a half-parsed account.
    f.add_fault(Fault {
        path: "/accounts/".into(),
        kind: FaultKind::SlowBody { ms: 200 },
        count: Some(2),
    });
    assert!(matches!(
        c.fetch_account("apn_A1").await,
        Err(PipedreamError::Transport { .. })
    ));
    f.clear_faults();
    f.set_rate_limit(Some((1, 60)));
    let e = c
        .fetch_account("apn_A1")
        .await
        .and(c.fetch_account("apn_A1").await)
        .unwrap_err();
    assert!(
        matches!(
            e,
            PipedreamError::RateLimited {
                retry_after: Some(_)
            }
        ),
        "{e:?}"
    );
    f.set_rate_limit(None);
    f.rotate_client("cid", "secret-2");
    assert!(matches!(
        c.fetch_account("apn_A1").await,
        Err(PipedreamError::Unauthorized { .. })
    ));
    let rotated = client(f.url(), connect(), oauth("secret-2"));
    assert!(rotated.fetch_account("apn_A1").await.is_ok());
    f.update_account("apn_A1", |a| a.dead = true);
    assert_eq!(
        rotated.fetch_account("apn_A1").await.unwrap().account.dead,
        Some(true)
    );
}
