use super::*;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn who(ns: &str, name: &str) -> ObjectRef<ConnectedAccount> {
    ObjectRef::new(name).within(ns)
}

fn take_all(q: &mut Queue) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(a) = q.take() {
        q.finish(&a);
        out.push(a);
    }
    out
}

#[test]
fn refreshes_of_expiring_credentials_go_before_a_flood_of_new_objects() {
    let mut q = Queue::new(4);
    for i in 0..100 {
        q.request(
            &format!("apn_B{i}"),
            Urgency::Missing,
            &who("b", &format!("h{i}")),
        );
    }
    q.request("apn_A2", Urgency::Expiring(t(30)), &who("a", "v2"));
    q.request("apn_A1", Urgency::Expiring(t(10)), &who("a", "v1"));
    let order = take_all(&mut q);
    assert_eq!(&order[..2], ["apn_A1", "apn_A2"]);
    assert_eq!(order.len(), 102);
}

#[test]
fn namespaces_take_turns_whatever_one_of_them_queues() {
    let mut q = Queue::new(4);
    for i in 0..50 {
        q.request(
            &format!("apn_B{i}"),
            Urgency::Missing,
            &who("b", &format!("h{i}")),
        );
    }
    for i in 0..3 {
        q.request(
            &format!("apn_A{i}"),
            Urgency::By(t(i)),
            &who("a", &format!("v{i}")),
        );
    }
    let order = take_all(&mut q);
    let a_at: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, a)| a.starts_with("apn_A"))
        .map(|(i, _)| i)
        .collect();
    assert!(a_at.iter().all(|i| *i < 6), "a's three went at {a_at:?}");
    // Inside a lane: a missing Secret first, then by time.
    let mut q = Queue::new(4);
    q.request("apn_Late", Urgency::By(t(300)), &who("a", "late"));
    q.request("apn_New", Urgency::Missing, &who("a", "new"));
    q.request("apn_Soon", Urgency::By(t(100)), &who("a", "soon"));
    assert_eq!(take_all(&mut q), ["apn_New", "apn_Soon", "apn_Late"]);
}

#[test]
fn a_lane_at_its_share_of_in_flight_slots_waits_while_another_has_work() {
    let mut q = Queue::new(4);
    for i in 0..10 {
        q.request(
            &format!("apn_B{i}"),
            Urgency::Missing,
            &who("b", &format!("h{i}")),
        );
    }
    // Alone, b may use every slot.
    let taken: Vec<String> = std::iter::from_fn(|| q.take()).collect();
    assert_eq!(taken.len(), 4);
    q.request("apn_A1", Urgency::By(t(0)), &who("a", "v1"));
    assert!(!q.ready(), "every slot is in flight");
    q.finish(&taken[0]);
    // Now b holds 3 of its share of 2: the free slot is a's.
    assert_eq!(q.take().as_deref(), Some("apn_A1"));
    q.finish(&taken[1]);
    q.finish(&taken[2]);
    assert!(q.take().is_some_and(|a| a.starts_with("apn_B")));
}

#[test]
fn a_joined_request_only_moves_sooner_and_every_waiter_is_returned() {
    let mut q = Queue::new(4);
    q.request("apn_X", Urgency::By(t(100)), &who("a", "one"));
    q.request("apn_Y", Urgency::By(t(50)), &who("a", "two"));
    q.request("apn_X", Urgency::By(t(500)), &who("b", "three"));
    assert_eq!(
        q.position_in("a", "apn_X"),
        Some(1),
        "a later request does not delay it"
    );
    q.request("apn_X", Urgency::Expiring(t(900)), &who("a", "four"));
    assert_eq!(q.position_in("a", "apn_X"), Some(0), "a refresh goes first");
    assert_eq!(q.queued(), 2);
    let first = q.take().unwrap();
    assert_eq!(first, "apn_X");
    let waiters = q.finish(&first);
    assert_eq!(waiters.len(), 3);
    assert_eq!(q.in_flight(), 0);
    assert!(q.finish("apn_Unknown").is_empty());
    assert_eq!(q.drain().len(), 1);
    assert_eq!(q.queued(), 0);
}

/// Issue 25 (7): an account's entry lived in the lane of whoever asked first, so namespace B asking first
/// for A's account id put A's later refresh in B's lane, behind B's flood.
#[test]
fn a_refresh_waits_in_its_own_namespaces_lane_whoever_asked_first() {
    let mut q = Queue::new(2);
    q.request("apn_A1", Urgency::By(t(1000)), &who("b", "probe"));
    // B's own refreshes, all due before A's.
    for i in 0..20 {
        q.request(
            &format!("apn_B{i}"),
            Urgency::Expiring(t(i)),
            &who("b", &format!("h{i}")),
        );
    }
    q.request("apn_A1", Urgency::Expiring(t(60)), &who("a", "victim"));
    assert_eq!(q.position_in("a", "apn_A1"), Some(0));
    assert_eq!(q.queued(), 21, "one entry, two places");
    let first_two: Vec<String> = (0..2)
        .map(|_| {
            let a = q.take().unwrap();
            let w = q.finish(&a);
            if a == "apn_A1" {
                assert_eq!(w.len(), 2, "both askers are told");
            }
            a
        })
        .collect();
    assert!(
        first_two.contains(&"apn_A1".to_string()),
        "lanes take turns: a's refresh is not behind b's {first_two:?}"
    );
    assert_eq!(q.position_in("b", "apn_A1"), None, "gone from b's lane too");
    let rest = take_all(&mut q);
    assert_eq!(rest.len(), 19);
    assert!(!rest.contains(&"apn_A1".to_string()), "fetched once");
    assert_eq!((q.queued(), q.in_flight()), (0, 0));
}

/// `n` refreshes of namespace `team-a` come due at once: `apn_<i>` for `ca-<i>`, expiring at `t(i)`.
fn herd(n: i64) -> Queue {
    let mut q = Queue::new(4);
    for i in 0..n {
        q.request(
            &format!("apn_{i}"),
            Urgency::Expiring(t(i)),
            &who("team-a", &format!("ca-{i}")),
        );
    }
    q
}

/// A herd of refreshes coming due at once queues an entry per account: each is one small block, the account id is
/// held once for the entry and its lane, and a namespace's name once for its lane, places and waiters.
#[test]
fn a_queued_account_holds_its_names_once() {
    assert!(size_of::<Entry>() <= 64, "{} bytes", size_of::<Entry>());
    let q = &mut herd(3);
    let (lane, _) = q.lanes.get_key_value("team-a").unwrap();
    assert_eq!(
        Arc::strong_count(lane),
        1 + 3 + 3,
        "the lane, three places, three waiters"
    );
    let (id, _) = q.entries.get_key_value("apn_1").unwrap();
    assert_eq!(
        Arc::strong_count(id),
        2,
        "the entry and its place in the lane"
    );
    let taken = q.take().unwrap();
    assert_eq!(taken, "apn_0");
    assert_eq!(q.finish(&taken), vec![who("team-a", "ca-0")]);
}

/// The map of queued accounts gives its table back as a herd drains.
#[test]
fn the_queue_gives_back_its_table_as_a_herd_drains() {
    let q = &mut herd(10_000);
    let largest = q.entries.capacity();
    assert!(largest >= 10_000);
    assert_eq!(take_all(q).len(), 10_000);
    assert!(
        q.entries.capacity() <= 128,
        "{} of {largest} slots kept",
        q.entries.capacity()
    );
}
