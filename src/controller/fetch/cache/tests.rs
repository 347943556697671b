use super::*;
use crate::identity::ConnectionId;
use serde_json::json;

fn key(conn: &Arc<ConnectionKey>, id: &str) -> AccountKey {
    AccountKey {
        connection: conn.clone(),
        account_id: id.into(),
    }
}

fn answer(id: &str, bytes: usize) -> FetchedAccount {
    FetchedAccount {
        account: serde_json::from_value(json!({"id": id, "credentials": {"k": "x".repeat(bytes)}}))
            .unwrap(),
        server_time: None,
        round_trip: std::time::Duration::ZERO,
    }
}

fn connection(name: &str) -> Arc<ConnectionKey> {
    let spec: crate::crd::PipedreamConnectionSpec = serde_json::from_value(json!({
        "auth": {"apiKey": {"secretRef": {"name": "k", "key": "k"}}}}))
    .unwrap();
    Arc::new(ConnectionKey::new(
        ConnectionId::namespaced("team-a", name),
        &spec,
    ))
}

/// Issue 17 (6): slots were never removed: every account id ever tried and every connection fingerprint
/// stayed in memory with its credentials after the ConnectedAccount or connection was gone.
#[test]
fn answers_go_with_their_last_user_and_their_connection() {
    let cache = AccountCache::default();
    let pd = connection("pd");
    let (a, b) = (key(&pd, "apn_A"), key(&pd, "apn_B"));
    cache.switch_use(None, Some(&a), "team-a");
    cache.switch_use(None, Some(&a), "team-a");
    cache.complete(a.clone(), Ok(answer("apn_A", 1000)), Timestamp::now());
    cache.switch_use(Some(&a), None, "team-a");
    assert!(cache.last_ok(&a).is_some(), "uid-2 still uses it");
    cache.switch_use(Some(&a), Some(&b), "team-a");
    assert!(cache.last_ok(&a).is_none(), "no one uses it");
    assert_eq!(cache.held(), (0, 0));
    cache.complete(b.clone(), Ok(answer("apn_B", 1000)), Timestamp::now());
    assert_eq!(cache.held().1, 1);
    cache.forget_connections(|c| *c == *pd);
    assert_eq!(cache.held(), (0, 0));
}

#[test]
fn answers_stay_under_the_byte_bound_least_recently_used_first() {
    let cache = AccountCache::with_limit(12_000);
    let pd = connection("pd");
    let keys: Vec<AccountKey> = (0..5).map(|i| key(&pd, &format!("apn_{i}"))).collect();
    for k in &keys[..3] {
        cache.complete(k.clone(), Ok(answer(&k.account_id, 3000)), Timestamp::now());
    }
    // The oldest is read, so the second oldest is the least recently used.
    assert!(cache.last_ok(&keys[0]).is_some());
    cache.complete(keys[3].clone(), Ok(answer("apn_3", 3000)), Timestamp::now());
    assert!(cache.held().0 <= 12_000, "{:?}", cache.held());
    assert!(
        cache.last_ok(&keys[1]).is_none(),
        "least recently used went"
    );
    assert!(cache.last_ok(&keys[0]).is_some() && cache.last_ok(&keys[3]).is_some());
    // Generations keep growing across eviction: an object waiting past one is not stuck.
    let g = cache.generation(&keys[1]);
    cache.complete(keys[1].clone(), Ok(answer("apn_1", 10)), Timestamp::now());
    assert!(cache.generation(&keys[1]) > g);
}

/// Issue 25 (8): eviction was least-recently-used over everyone's answers, so a tenant whose accounts answer
/// with ~1 MiB each pushed out every other tenant's answers (each then fetched again to repair its Secret).
/// The tenant holding the most bytes now gives first.
#[test]
fn a_tenant_with_large_answers_evicts_its_own_first() {
    let cache = AccountCache::with_limit(40_000);
    let (pd_a, pd_b) = (connection("a"), connection("b"));
    let small: Vec<AccountKey> = (0..4).map(|i| key(&pd_a, &format!("apn_S{i}"))).collect();
    for k in &small {
        cache.switch_use(None, Some(k), "team-a");
        cache.complete(
            k.clone(),
            Ok(answer(&k.account_id, 1_000)),
            Timestamp::now(),
        );
    }
    let large: Vec<AccountKey> = (0..10).map(|i| key(&pd_b, &format!("apn_L{i}"))).collect();
    for k in &large {
        cache.switch_use(None, Some(k), "team-b");
        cache.complete(
            k.clone(),
            Ok(answer(&k.account_id, 9_000)),
            Timestamp::now(),
        );
    }
    assert!(cache.held().0 <= 40_000, "{:?}", cache.held());
    for k in &small {
        assert!(
            cache.last_ok(k).is_some(),
            "team A's {} was evicted",
            k.account_id
        );
    }
    assert!(
        cache.last_ok(&large[9]).is_some(),
        "the newest answer stays"
    );
    assert!(cache.last_ok(&large[0]).is_none(), "team B's oldest went");
}

/// Issue 25 (8): an answer evicted between its fetch and the pass that asked for it was fetched again. While a
/// pass waits for it, it stays (up to twice the bound).
#[test]
fn an_answer_a_pass_waits_for_is_not_evicted() {
    let cache = AccountCache::with_limit(10_000);
    let pd = connection("pd");
    let awaited = key(&pd, "apn_W");
    cache.switch_use(None, Some(&awaited), "team-a");
    let g = cache.generation(&awaited);
    cache.wait(&awaited);
    cache.complete(
        awaited.clone(),
        Ok(answer("apn_W", 3_000)),
        Timestamp::now(),
    );
    for i in 0..6 {
        let k = key(&pd, &format!("apn_O{i}"));
        cache.switch_use(None, Some(&k), "team-a");
        cache.complete(k, Ok(answer("x", 3_000)), Timestamp::now());
    }
    assert!(
        matches!(cache.attempt_after(&awaited, g), Some(Attempt::Ok(_))),
        "the awaited answer was evicted before its pass read it"
    );
    assert!(cache.held().0 <= 10_000, "{:?}", cache.held());
    // Read: no longer pinned, so the next completion may evict it.
    for i in 6..9 {
        let k = key(&pd, &format!("apn_O{i}"));
        cache.switch_use(None, Some(&k), "team-a");
        cache.complete(k, Ok(answer("x", 3_000)), Timestamp::now());
    }
    assert!(cache.last_ok(&awaited).is_none());
}
