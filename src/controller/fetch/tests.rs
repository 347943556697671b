use super::*;
use crate::pipedream::{ApiMode, AuthMaterial, ClientSettings, FetchedAccount, SecretString};
use crate::rules::answer::Attempt;
use futures::FutureExt;
use jiff::Timestamp;

fn dispatcher_for(url: String, fetcher: &Fetcher, ns: Option<&str>) -> Arc<Dispatcher> {
    let id = match ns {
        Some(ns) => ConnectionId::namespaced(ns, "pd"),
        None => ConnectionId::cluster("pd"),
    };
    let spec: crate::crd::PipedreamConnectionSpec = serde_json::from_value(serde_json::json!({
        "apiUrl": url.clone(), "auth": {"apiKey": {"secretRef": {"name": "k", "key": "k"}}}}))
    .unwrap();
    let key = ConnectionKey::new(id, &spec);
    fetcher.dispatcher(&key, RateLimit::default(), || {
        PipedreamClient::new(
            crate::pipedream::http_client(Duration::from_secs(5), &[]).unwrap(),
            ClientSettings {
                api_url: url,
                mode: ApiMode::ApiKey {
                    path: crate::crd::CredentialsPath::IncludeCredentials,
                },
                rate_limit: RateLimit {
                    requests_per_second: 1000,
                    burst: 1000,
                },
                rate_share: 1,
            },
            Arc::new(|| async { Ok(AuthMaterial::ApiKey(SecretString::new("k"))) }.boxed()),
            None,
        )
    })
}

fn obj(name: &str) -> ObjectRef<ConnectedAccount> {
    ObjectRef::new(name).within("team-a")
}

/// The most urgent request goes first, a request for an account already queued joins it, and every waiter is
/// triggered once its answer is in.
#[tokio::test]
async fn requests_are_served_most_urgent_first_and_joined_per_account() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(200))
                .set_body_json(
                    serde_json::json!({"data": {"id": "apn_X", "credentials": {"k": "v"}}}),
                ),
        )
        .mount(&server)
        .await;
    let mut triggers = Triggers::default();
    let mut rx = triggers.subscribe(None);
    let fetcher = Fetcher::new(triggers, Clock::System);
    let rt = dispatcher_for(server.uri(), &fetcher, None);
    let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
    // Fill the in-flight slots, then queue three more in reverse urgency.
    for i in 0..MAX_IN_FLIGHT {
        rt.request(&format!("apn_Busy{i}"), Urgency::By(t(0)), obj("busy"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    rt.request("apn_Late", Urgency::By(t(300)), obj("late"));
    rt.request("apn_Soon", Urgency::By(t(100)), obj("soon"));
    rt.request("apn_Now", Urgency::By(t(-5)), obj("now"));
    rt.request("apn_Soon", Urgency::By(t(100)), obj("soon-too"));
    assert_eq!(rt.queued(), 3);
    assert_eq!(rt.position("apn_Now"), Some(0));
    assert_eq!(rt.position("apn_Late"), Some(2));
    let mut seen = Vec::new();
    while seen.len() < 4 + MAX_IN_FLIGHT {
        let o = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if o.name != "busy" {
            seen.push(o.name);
        } else {
            seen.push("busy".into());
        }
    }
    let order: Vec<&String> = seen.iter().filter(|n| *n != "busy").collect();
    assert_eq!(order[0], "now");
    assert!(
        order[1..3].contains(&&"soon".to_string())
            && order[1..3].contains(&&"soon-too".to_string())
    );
    assert_eq!(order[3], "late");
    let paths: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_string())
        .collect();
    assert_eq!(
        paths.iter().filter(|p| p.ends_with("apn_Soon")).count(),
        1,
        "joined"
    );
    let key = AccountKey {
        connection: rt.key.clone(),
        account_id: "apn_Now".into(),
    };
    assert!(matches!(
        fetcher.cache.attempt_after(&key, 0),
        Some(Attempt::Ok(_))
    ));
    let g = fetcher.cache.generation(&key);
    assert!(fetcher.cache.attempt_after(&key, g).is_none());
}

/// Answers are kept per connection key: the same account through another connection is another slot.
#[test]
fn answers_are_kept_per_connection_identity() {
    let cache = AccountCache::default();
    let spec: crate::crd::PipedreamConnectionSpec = serde_json::from_value(serde_json::json!({
        "auth": {"apiKey": {"secretRef": {"name": "k", "key": "k"}}}}))
    .unwrap();
    let a = AccountKey {
        connection: ConnectionKey::new(ConnectionId::namespaced("team-a", "pd"), &spec).into(),
        account_id: "apn_A1".into(),
    };
    let b = AccountKey {
        connection: ConnectionKey::new(ConnectionId::namespaced("team-b", "pd"), &spec).into(),
        account_id: "apn_A1".into(),
    };
    let fetched: FetchedAccount = FetchedAccount {
        account: serde_json::from_value(serde_json::json!({"id": "apn_A1"})).unwrap(),
        server_time: None,
        round_trip: std::time::Duration::ZERO,
    };
    cache.complete(a.clone(), Ok(fetched), Timestamp::now());
    assert!(cache.last_ok(&a).is_some());
    assert!(cache.last_ok(&b).is_none());
    assert_eq!(cache.generation(&b), 0);
}

/// Each namespace books refresh slots on its own calendar: a batch booked by one namespace moves none of another
/// namespace's times on the same connection, and a shared connection's slots are its clients' rate (1,000/s
/// here: 1 ms apart).
#[tokio::test]
async fn each_namespace_books_its_own_refresh_slots() {
    let fetcher = Fetcher::new(Triggers::default(), Clock::manual(Timestamp::UNIX_EPOCH));
    let rt = dispatcher_for("http://127.0.0.1:9".into(), &fetcher, None);
    let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
    let at: Timestamp = "2026-12-07T10:50:05Z".parse().unwrap();
    let latest = at + Duration::from_secs(60);
    let a: Vec<_> = (0..3).map(|_| rt.book("team-a", now, at, latest)).collect();
    let ms = |n: u64| at + Duration::from_millis(n);
    assert_eq!(a, [ms(0), ms(1), ms(2)]);
    assert_eq!(rt.book("team-b", now, at, latest), at);
    assert_eq!(rt.book("team-a", now, at, latest), ms(3));
}
