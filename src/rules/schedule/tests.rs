//! Tests of the schedule policy: one or more per rule of the module documentation, a property over random
//! expiries, refresh times and margins, and clock skew. (Over 400 lines: one policy, tested rule by rule.)

use super::*;
use crate::controller::Clock;
use proptest::prelude::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}
const POLICY: Policy = Policy {
    before_expiry: Duration::from_secs(300),
    interval: Duration::from_secs(3600),
    propagation: Duration::ZERO,
};
fn obs(exp: Option<&str>, refresh: Option<&str>) -> Observed {
    Observed {
        expires_at: exp.map(ts),
        next_refresh_at: refresh.map(ts),
    }
}
fn secs_after(now: Timestamp, n: NextFetch) -> i64 {
    n.at.duration_since(now).as_secs()
}

#[test]
fn fresh_credentials_are_fetched_before_expiry_minus_margin_and_jitter() {
    let now = ts("2026-11-22T09:00:00Z");
    let o = obs(Some("2026-11-22T10:00:00Z"), None);
    assert_eq!(
        after_fetch(now, o, POLICY, 0.0),
        NextFetch {
            at: ts("2026-11-22T09:55:00Z"),
            expired: false
        }
    );
    let j = after_fetch(now, o, POLICY, 0.999);
    assert!(j.at < ts("2026-11-22T09:55:00Z") && j.at >= ts("2026-11-22T09:54:30Z"));
}

#[test]
fn jitter_is_deterministic_per_object_and_spreads_objects() {
    assert_eq!(jitter_fraction("uid-a"), jitter_fraction("uid-a"));
    let fr: Vec<f64> = (0..50)
        .map(|i| jitter_fraction(&format!("uid-{i}")))
        .collect();
    assert!(fr.iter().all(|f| (0.0..1.0).contains(f)));
    let distinct: std::collections::BTreeSet<u64> =
        fr.iter().map(|f| (f * 1000.0) as u64).collect();
    assert!(distinct.len() > 40);
}

#[test]
fn without_expiry_uses_interval_within_ten_percent() {
    let now = ts("2026-11-22T09:00:00Z");
    for j in [0.0, 0.5, 0.999] {
        let d = secs_after(now, after_fetch(now, Observed::default(), POLICY, j));
        assert!((3240..=3960).contains(&d), "{d}");
    }
}

#[test]
fn a_future_refresh_time_is_followed_shortly_and_a_past_one_is_ignored() {
    let now = ts("2026-11-22T09:00:00Z");
    let o = obs(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T09:55:00Z"));
    assert_eq!(
        after_fetch(now, o, POLICY, 0.0).at,
        ts("2026-11-22T09:55:05Z")
    );
    // Pipedream refreshes later than our margin would: fetching earlier only returns this token again.
    let late = obs(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T09:58:00Z"));
    assert_eq!(
        after_fetch(now, late, POLICY, 0.0).at,
        ts("2026-11-22T09:58:05Z")
    );
    let past = obs(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T08:00:00Z"));
    assert_eq!(
        after_fetch(now, past, POLICY, 0.0).at,
        ts("2026-11-22T09:55:00Z")
    );
    // A short refresh lead: half of it.
    let short = obs(Some("2026-11-22T09:00:12Z"), Some("2026-11-22T09:00:08Z"));
    assert_eq!(
        after_fetch(now, short, POLICY, 0.0).at,
        ts("2026-11-22T09:00:10Z")
    );
}

/// Regression (issue 8): `next_refresh_at == expires_at` (no refresh lead) was fetched 5 s after expiry each
/// cycle. A new token exists only at expiry: fetch one second after it.
#[test]
fn no_refresh_lead_fetches_one_second_after_expiry_not_five() {
    let now = ts("2026-11-22T09:00:00Z");
    let o = obs(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T10:00:00Z"));
    assert_eq!(
        after_fetch(now, o, POLICY, 0.0).at,
        ts("2026-11-22T10:00:01Z")
    );
    // Even when Pipedream claims it refreshes after expiry.
    let after = obs(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T10:30:00Z"));
    assert_eq!(
        after_fetch(now, after, POLICY, 0.0).at,
        ts("2026-11-22T10:00:01Z")
    );
}

/// Regression (issue 8): an answer that had already expired (Pipedream refreshed late) was retried after 59 s.
/// It is retried after a second, then every two seconds, and a late `next_refresh_at` never delays that.
#[test]
fn expired_answers_are_retried_within_a_second_whatever_next_refresh_at_says() {
    let e = ts("2026-11-22T10:00:00Z");
    for refresh in [
        None,
        Some("2026-11-22T09:55:00Z"),
        Some("2026-11-22T10:30:00Z"),
    ] {
        let o = obs(Some("2026-11-22T10:00:00Z"), refresh);
        let n = after_fetch(e, o, POLICY, 0.5);
        assert!(n.expired);
        assert_eq!(secs_after(e, n), 1, "{refresh:?}");
        let later = add(e, Duration::from_secs(30));
        assert_eq!(secs_after(later, after_fetch(later, o, POLICY, 0.5)), 2);
    }
    // Beyond two minutes it slows down, to at most a minute.
    assert_eq!(
        expired_retry(Duration::from_secs(300)),
        Duration::from_secs(30)
    );
    assert_eq!(expired_retry(Duration::from_secs(7200)), EXPIRED_SLOW_MAX);
}

/// Long after expiry, polls slow down, but a retry Pipedream announced (`next_refresh_at` in the future) is
/// followed a second later, so its new token reaches the Secret within seconds.
#[test]
fn an_announced_refresh_retry_is_followed_even_in_the_slow_phase() {
    let o = obs(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T10:10:07Z"));
    let now = ts("2026-11-22T10:10:00Z");
    let n = after_fetch(now, o, POLICY, 0.5);
    assert!(n.expired);
    assert_eq!(n.at, ts("2026-11-22T10:10:08Z"));
    // Without an announcement the slow phase waits a tenth of the time since expiry.
    let n = after_fetch(now, obs(Some("2026-11-22T10:00:00Z"), None), POLICY, 0.5);
    assert_eq!(n.at, ts("2026-11-22T10:11:00Z"));
}

/// Regression (issue 8): while Pipedream had not refreshed, the backoff halved toward expiry and made 6–7 calls
/// in the last 10 s of a token. Now: at most one call in the last 20 s, and it is after expiry.
#[test]
fn a_late_refresh_costs_a_bounded_number_of_calls_none_in_the_last_twenty_seconds() {
    let e = ts("2026-11-22T10:00:00Z");
    let o = obs(Some("2026-11-22T10:00:00Z"), None);
    let mut now = ts("2026-11-22T09:00:00Z");
    let mut calls = Vec::new();
    loop {
        let n = after_fetch(now, o, POLICY, 0.7);
        now = n.at;
        calls.push(now);
        if now > e {
            break;
        }
    }
    let last_20s = calls
        .iter()
        .filter(|t| **t > sub(e, LAST_POLL_BEFORE_EXPIRY))
        .count();
    assert_eq!(last_20s, 1, "{calls:?}");
    assert_eq!(*calls.last().unwrap(), ts("2026-11-22T10:00:01Z"));
    assert!(
        calls.len() as u32 <= calls_while_valid_bound(POLICY),
        "{}",
        calls.len()
    );
    assert_eq!(calls_while_valid_bound(POLICY), 8);
}

#[test]
fn tokens_shorter_than_the_margin_wait_for_pipedream_or_halve_never_zero() {
    let now = ts("2026-11-22T09:00:00Z");
    let o = obs(Some("2026-11-22T09:00:50Z"), None);
    assert_eq!(
        after_fetch(now, o, POLICY, 0.0).at,
        ts("2026-11-22T09:00:25Z")
    );
    let o = obs(Some("2026-11-22T09:00:03Z"), None);
    assert_eq!(
        after_fetch(now, o, POLICY, 0.0).at,
        ts("2026-11-22T09:00:04Z")
    );
}

/// Regression (issue 8): a huge `Retry-After` parked an account past expiry. The client caps it at 60 s; here a
/// retry that would land after expiry is reported, and permanent failures back off to minutes even after expiry
/// (they were polled every 30 s forever).
#[test]
fn failures_back_off_by_class_and_land_before_expiry() {
    let now = ts("2026-11-22T09:00:00Z");
    let far = Some(ts("2026-11-22T12:00:00Z"));
    let d: Vec<u64> = (0..10)
        .map(|a| {
            after_failure(now, a, far, Duration::ZERO, FailureClass::Transient, None)
                .delay
                .as_secs()
        })
        .collect();
    assert_eq!(d, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    let soon = Some(ts("2026-11-22T09:01:00Z"));
    assert_eq!(
        after_failure(now, 9, soon, Duration::ZERO, FailureClass::Transient, None)
            .delay
            .as_secs(),
        58
    );
    assert_eq!(
        after_failure(now, 0, soon, Duration::ZERO, FailureClass::Permanent, None)
            .delay
            .as_secs(),
        58
    );
    let rl = after_failure(
        now,
        0,
        Some(ts("2026-11-22T09:00:30Z")),
        Duration::ZERO,
        FailureClass::Transient,
        Some(Duration::from_secs(60)),
    );
    assert_eq!((rl.delay.as_secs(), rl.past_expiry), (60, true));
    let ok = after_failure(
        now,
        0,
        far,
        Duration::ZERO,
        FailureClass::Transient,
        Some(Duration::from_secs(45)),
    );
    assert_eq!((ok.delay.as_secs(), ok.past_expiry), (45, false));
    let expired = Some(ts("2026-11-22T08:00:00Z"));
    let perm: Vec<u64> = (0..6)
        .map(|a| {
            after_failure(
                now,
                a,
                expired,
                Duration::ZERO,
                FailureClass::Permanent,
                None,
            )
            .delay
            .as_secs()
        })
        .collect();
    assert_eq!(perm, vec![60, 120, 240, 480, 600, 600]);
    let unhealthy: Vec<u64> = (0..6)
        .map(|a| {
            after_failure(
                now,
                a,
                expired,
                Duration::ZERO,
                FailureClass::Unhealthy,
                None,
            )
            .delay
            .as_secs()
        })
        .collect();
    assert_eq!(unhealthy, vec![30, 60, 120, 240, 480, 600]);
    // Transient failures with expired credentials: like an expired answer.
    let just = Some(sub(now, Duration::from_secs(3)));
    assert_eq!(
        after_failure(now, 8, just, Duration::ZERO, FailureClass::Transient, None)
            .delay
            .as_secs(),
        1
    );
}

#[test]
fn clock_skew_moves_expiry_early_and_refresh_late() {
    let local = ts("2026-11-22T09:00:00Z");
    // Pipedream's clock runs 10 minutes ahead.
    let o = observe(
        Some(ts("2026-11-22T10:10:00Z")),
        Some(ts("2026-11-22T10:05:00Z")),
        Some(ts("2026-11-22T09:10:00Z")),
        local,
        Duration::ZERO,
    );
    assert_eq!(o.expires_at, Some(ts("2026-11-22T09:59:59Z")));
    assert_eq!(o.next_refresh_at, Some(ts("2026-11-22T09:55:00Z")));
    // In sync (the Date header is truncated to the second): expiry at most a second early.
    let o = observe(
        Some(ts("2026-11-22T10:00:00Z")),
        None,
        Some(local),
        add(local, Duration::from_millis(700)),
        Duration::ZERO,
    );
    let e = o.expires_at.unwrap();
    assert!(
        e <= ts("2026-11-22T10:00:00Z") && e >= ts("2026-11-22T09:59:59Z"),
        "{e}"
    );
    // Display: corrected only beyond the header's resolution.
    let exp = ts("2026-11-22T10:10:00Z");
    assert_eq!(
        display_time(exp, Some(ts("2026-11-22T09:10:00Z")), local),
        ts("2026-11-22T10:00:00Z")
    );
    assert_eq!(
        display_time(exp, Some(ts("2026-11-22T09:00:01Z")), local),
        exp
    );
    assert_eq!(display_time(exp, None, local), exp);
}

#[test]
fn durations_parse_like_the_crd_pattern() {
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    for bad in ["", "5", "m", "5x", "-5m", "1.5h", "99999999999999999999h"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn timestamps_format_at_second_precision() {
    assert_eq!(
        format_ts(ts("2024-08-01T04:04:03.456Z")),
        "2024-08-01T04:04:03Z"
    );
    assert_eq!(
        parse_ts("2024-08-01T04:04:03.000Z"),
        Some(ts("2024-08-01T04:04:03Z"))
    );
    assert_eq!(
        parse_ts("2024-08-01T06:04:03+02:00"),
        Some(ts("2024-08-01T04:04:03Z"))
    );
}

proptest! {
    /// Whatever Pipedream reports (any expiry, refresh time, skew), the next fetch is at least a second and at
    /// most a day away, and never later than just after a future expiry.
    #[test]
    fn next_fetch_is_never_zero_negative_or_past_expiry(
        now_s in 1_600_000_000i64..1_900_000_000,
        exp in proptest::option::of(-100_000i64..10_000_000),
        refresh in proptest::option::of(-100_000i64..10_000_000),
        margin in 5u64..7200,
        interval in 10u64..86_400,
        jitter in 0.0f64..1.0,
    ) {
        let now = Timestamp::from_second(now_s).unwrap();
        let at = |o: Option<i64>| o.map(|s| Timestamp::from_second(now_s + s).unwrap());
        let o = Observed { expires_at: at(exp), next_refresh_at: at(refresh) };
        let p = Policy { before_expiry: Duration::from_secs(margin), interval: Duration::from_secs(interval), propagation: Duration::from_secs(margin % 150) };
        let n = after_fetch(now, o, p, jitter);
        prop_assert!(n.at >= add(now, MIN_DELAY));
        prop_assert!(n.at <= add(now, MAX_SCHEDULE));
        if let Some(e) = o.expires_at.filter(|e| *e > now) {
            prop_assert!(n.at <= add(e, MIN_DELAY).max(add(now, MIN_DELAY)));
        }
        if o.expires_at.is_some_and(|e| e <= now) {
            prop_assert!(n.expired);
            prop_assert!(n.at <= add(now, EXPIRED_SLOW_MAX));
        }
        let r = after_failure(now, (margin % 20) as u32, o.expires_at, Duration::ZERO, FailureClass::Transient, None);
        prop_assert!(r.delay >= MIN_DELAY);
    }
}

/// Drive many token lifetimes on paused tokio time: sleeping until each scheduled fetch always lands before the
/// credentials expire.
#[tokio::test(start_paused = true)]
async fn paused_time_rotation_always_lands_before_expiry() {
    let clock = Clock::tokio(ts("2026-11-22T09:00:00Z"));
    let policy = Policy {
        before_expiry: Duration::from_secs(120),
        interval: Duration::from_secs(3600),
        propagation: DEFAULT_PROPAGATION,
    };
    let mut expires = clock.now() + SignedDuration::from_secs(3600);
    for cycle in 0..24 {
        let n = after_fetch(
            clock.now(),
            Observed {
                expires_at: Some(expires),
                next_refresh_at: None,
            },
            policy,
            0.42,
        );
        tokio::time::sleep(between(clock.now(), n.at)).await;
        let now = clock.now();
        assert!(
            now < expires,
            "cycle {cycle}: fetch at {now} after expiry {expires}"
        );
        assert!(expires.duration_since(now) >= SignedDuration::from_secs(120));
        expires = now + SignedDuration::from_secs(3600);
    }
}

/// Issue 17 (10): the skew correction believed any `Date` header, and assumed it was stamped at most a second
/// before the answer arrived.
#[test]
fn a_wild_date_header_is_ignored_and_a_slow_answer_moves_expiry_earlier() {
    let local = ts("2026-11-22T09:00:00Z");
    let expiry = ts("2026-11-22T10:00:00Z");
    let expires = Some(expiry);
    let refresh = Some(ts("2026-11-22T09:55:00Z"));
    // A year ahead, or an hour behind: not believed, the timestamps stay as Pipedream wrote them.
    for wild in ["2027-11-22T09:00:00Z", "2026-11-22T08:00:00Z"] {
        let o = observe(expires, refresh, Some(ts(wild)), local, Duration::ZERO);
        assert_eq!(
            (o.expires_at, o.next_refresh_at),
            (expires, refresh),
            "{wild}"
        );
        assert_eq!(display_time(expiry, Some(ts(wild)), local), expiry);
    }
    // In sync, but the answer took 20 s: the header may have been stamped 20 s before it arrived, so expiry
    // is taken 21 s early; the refresh time is not moved earlier.
    let o = observe(
        expires,
        refresh,
        Some(add(local, Duration::ZERO)),
        add(local, Duration::from_secs(20)),
        Duration::from_secs(20),
    );
    assert_eq!(o.expires_at, Some(ts("2026-11-22T09:59:59Z")));
    let o = observe(
        expires,
        refresh,
        Some(local),
        local,
        Duration::from_secs(20),
    );
    assert_eq!(o.expires_at, Some(ts("2026-11-22T09:59:39Z")));
    assert_eq!(o.next_refresh_at, refresh);
}

const PODS: Policy = Policy {
    before_expiry: Duration::from_secs(300),
    interval: Duration::from_secs(3600),
    propagation: DEFAULT_PROPAGATION,
};

/// Issue 24: after Pipedream's refresh the schedule waited for half the remaining life when that came later, and
/// with tokens shorter than `beforeExpiry` that was after the pods' deadline (150 s tokens refreshed 120 s early:
/// the new token was written 75 s before the old one expired, less than the kubelet's 90 s).
#[test]
fn the_pods_deadline_caps_the_wait_after_pipedreams_refresh() {
    let now = ts("2026-11-22T09:00:00Z");
    // Expires in 150 s, Pipedream refreshes in 30 s: fetch at the deadline (E − 100 s), not at half-life (+75 s).
    let o = obs(Some("2026-11-22T09:02:30Z"), Some("2026-11-22T09:00:30Z"));
    assert_eq!(
        after_fetch(now, o, PODS, 0.3).at,
        ts("2026-11-22T09:00:50Z")
    );
    // Without a propagation time: half-life, as before.
    assert_eq!(
        after_fetch(now, o, POLICY, 0.3).at,
        ts("2026-11-22T09:01:15Z")
    );
}

#[test]
fn a_refresh_just_before_the_pods_deadline_is_followed_within_the_room_left() {
    let now = ts("2026-11-22T09:00:00Z");
    // Pipedream refreshes 102 s before expiry: 2 s before the deadline, so the fetch comes 2 s after it.
    let o = obs(Some("2026-11-22T09:30:00Z"), Some("2026-11-22T09:28:18Z"));
    assert_eq!(
        after_fetch(now, o, PODS, 0.3).at,
        ts("2026-11-22T09:28:20Z")
    );
    // Refreshing after the deadline (pods are at risk; reported in status): right after it, with the usual wait.
    let o = obs(Some("2026-11-22T09:30:00Z"), Some("2026-11-22T09:29:00Z"));
    assert_eq!(
        after_fetch(now, o, PODS, 0.3).at,
        ts("2026-11-22T09:29:05Z")
    );
}

#[test]
fn without_an_announced_refresh_the_margin_is_at_least_the_propagation_time() {
    let now = ts("2026-11-22T09:00:00Z");
    let o = obs(Some("2026-11-22T10:00:00Z"), None);
    let short = Policy {
        before_expiry: Duration::from_secs(30),
        ..PODS
    };
    // beforeExpiry 30 s acts as the 100 s propagation time (jitter 0).
    assert_eq!(
        after_fetch(now, o, short, 0.0).at,
        ts("2026-11-22T09:58:20Z")
    );
    assert_eq!(short.margin(), DEFAULT_PROPAGATION);
}

/// Inside the margin with no refresh in sight: halve the time to the pods' deadline, poll just after it (a refresh
/// right at the deadline still reaches pods in time; a property trace found a poll exactly at the deadline a
/// moment before Pipedream's refresh there, and the next half-way to expiry, too late for pods), then halve the
/// time to expiry and poll just after it; within the stated bound.
#[test]
fn inside_the_margin_polls_reach_the_pods_deadline_then_expiry() {
    let e = ts("2026-11-22T10:00:00Z");
    let deadline = PODS.pod_deadline(e);
    let o = obs(Some("2026-11-22T10:00:00Z"), None);
    let mut now = ts("2026-11-22T09:55:00Z");
    let mut calls = Vec::new();
    while now <= e {
        now = after_fetch(now, o, PODS, 0.7).at;
        calls.push(now);
    }
    assert!(
        calls.contains(&add(deadline, AFTER_REFRESH_DELAY)),
        "{calls:?}"
    );
    assert_eq!(calls_while_valid_bound(PODS), 10);
    assert_eq!(*calls.last().unwrap(), ts("2026-11-22T10:00:01Z"));
    assert!(
        calls.len() as u32 <= calls_while_valid_bound(PODS),
        "{} calls, bound {}: {calls:?}",
        calls.len(),
        calls_while_valid_bound(PODS)
    );
}

#[test]
fn retries_after_a_failure_land_before_the_pods_deadline_while_it_is_ahead() {
    let now = ts("2026-11-22T09:00:00Z");
    let held = Some(ts("2026-11-22T09:03:00Z"));
    // A permanent failure's first 60 s backoff fits; its third (240 s) is capped to land 2 s before the
    // deadline (09:01:20).
    let r = after_failure(
        now,
        0,
        held,
        DEFAULT_PROPAGATION,
        FailureClass::Permanent,
        None,
    );
    assert_eq!(r.delay, Duration::from_secs(60));
    let r = after_failure(
        now,
        2,
        held,
        DEFAULT_PROPAGATION,
        FailureClass::Permanent,
        None,
    );
    assert_eq!(r.delay, Duration::from_secs(78));
    // Past the deadline: before expiry, as without pods.
    let soon = Some(ts("2026-11-22T09:01:00Z"));
    let r = after_failure(
        now,
        2,
        soon,
        DEFAULT_PROPAGATION,
        FailureClass::Permanent,
        None,
    );
    assert_eq!(r.delay, Duration::from_secs(58));
}

/// A booked refresh slot may move a fetch up to 5 s before the pods' deadline, and a fetch of credentials without
/// expiry by a tenth of the interval; not a fetch already that close to the deadline, nor an expired answer's poll.
#[test]
fn a_booked_slot_stays_before_the_pods_deadline() {
    let policy = Policy {
        propagation: Duration::from_secs(100),
        ..POLICY
    };
    let o = obs(Some("2026-11-22T10:00:00Z"), Some("2026-11-22T09:57:30Z"));
    let next = |at: &str, expired| NextFetch {
        at: ts(at),
        expired,
    };
    let latest = |n| latest_booking(n, o, policy);
    assert_eq!(
        latest(next("2026-11-22T09:57:35Z", false)),
        ts("2026-11-22T09:58:15Z")
    );
    assert_eq!(
        latest(next("2026-11-22T09:58:17Z", false)),
        ts("2026-11-22T09:58:17Z")
    );
    assert_eq!(
        latest(next("2026-11-22T10:00:01Z", true)),
        ts("2026-11-22T10:00:01Z")
    );
    let none = latest_booking(next("2026-11-22T10:00:00Z", false), obs(None, None), policy);
    assert_eq!(none, ts("2026-11-22T10:06:00Z"));
}
