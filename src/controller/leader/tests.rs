use super::*;

fn lease(name: &str, holder: Option<&str>, version: &str) -> Lease {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}}))
    .unwrap()
}

#[test]
fn renewals_come_well_inside_the_renew_deadline_which_ends_before_the_lease() {
    for secs in [2, 3, 6, 15, 30, 137] {
        let t = Timing::new(secs);
        assert!(t.renew_every + t.retry < t.renew_deadline, "{t:?}");
        assert!(t.renew_deadline < t.duration, "{t:?}");
    }
    assert_eq!(Timing::new(15).renew_deadline, Duration::from_secs(10));
}

/// Issue 25 (3): a standby judged expiry by `renewTime + duration < now` on its own wall clock, so one whose
/// clock ran ahead took a Lease the leader was still renewing. Here liveness depends only on when this process
/// saw the record change; a wall clock is not consulted at all.
#[tokio::test(start_paused = true)]
async fn a_lease_is_live_while_its_record_keeps_changing_whatever_renew_time_says() {
    let mut seen = Observations::default();
    let t0 = Instant::now();
    let l1 = lease("l", Some("leader"), "1");
    let since = seen.see("l", &l1, t0);
    assert!(live(&l1, since, t0, Duration::from_secs(15)));
    // Unchanged for 14 s: still live; for 15 s: free to take.
    assert!(live(
        &l1,
        since,
        t0 + Duration::from_secs(14),
        Duration::ZERO
    ));
    assert!(!live(
        &l1,
        since,
        t0 + Duration::from_secs(15),
        Duration::ZERO
    ));
    // A renewal seen at 10 s restarts the count, whatever its renewTime.
    let l2 = lease("l", Some("leader"), "2");
    let since = seen.see("l", &l2, t0 + Duration::from_secs(10));
    assert!(live(
        &l2,
        since,
        t0 + Duration::from_secs(24),
        Duration::ZERO
    ));
    assert!(!live(
        &l2,
        since,
        t0 + Duration::from_secs(25),
        Duration::ZERO
    ));
    // Released: free at once.
    let free = lease("l", None, "3");
    let since = seen.see("l", &free, t0 + Duration::from_secs(11));
    assert!(!live(
        &free,
        since,
        t0 + Duration::from_secs(11),
        Duration::ZERO
    ));
}

fn shard_lease(name: &str, holder: Option<&str>, acquired: &str) -> Lease {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "acquireTime": acquired, "leaseDurationSeconds": 15}}))
    .unwrap()
}

#[test]
fn new_shards_wait_only_for_live_earlier_leases_of_another_count() {
    use crate::shard::Shard;
    let (early, late) = ("2026-12-01T09:00:00.000000Z", "2026-12-01T10:00:00.000000Z");
    let leases = [
        shard_lease("pdso", Some("old"), early),
        shard_lease("pdso-shard-0-of-2", Some("new-0"), late),
        shard_lease("pdso-shard-1-of-2", Some("new-1"), late),
        shard_lease("unrelated", Some("x"), early),
    ];
    let all_live = |_: &Lease| true;
    let new0 = Shard::new(0, 2).unwrap();
    assert_eq!(
        earlier_leaders_of_other_counts(&leases, "pdso", "pdso-shard-0-of-2", new0, all_live),
        vec!["pdso".to_string()]
    );
    // The old leader does not wait for the later ones (no deadlock when an old pod restarts first).
    assert!(
        earlier_leaders_of_other_counts(&leases, "pdso", "pdso", Shard::default(), all_live)
            .is_empty()
    );
    // Leases that are not live (released, or unchanged for their duration) do not block.
    let none_live = |_: &Lease| false;
    assert!(
        earlier_leaders_of_other_counts(&leases, "pdso", "pdso-shard-0-of-2", new0, none_live)
            .is_empty()
    );
    // A Lease of the same shard count never blocks, however early.
    let same = [
        shard_lease("pdso-shard-1-of-2", Some("new-1"), early),
        leases[1].clone(),
    ];
    assert!(
        earlier_leaders_of_other_counts(&same, "pdso", "pdso-shard-0-of-2", new0, all_live)
            .is_empty()
    );
}
