use super::*;
use serde_json::json;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn synced(next: &str) -> Recorded {
    Recorded {
        next_due: Some(ts(next)),
        ready: true,
        held_expiry: Some(ts("2026-11-22T10:00:00Z")),
        ..Default::default()
    }
}

fn facts(recorded: Recorded) -> Facts {
    Facts {
        now: ts("2026-11-22T09:30:00Z"),
        spec: Ok(Validated {
            policy: Policy {
                before_expiry: Duration::from_secs(300),
                interval: Duration::from_secs(3600),
                propagation: crate::schedule::DEFAULT_PROPAGATION,
            },
            min_restart_interval: Duration::ZERO,
        }),
        recorded,
        remembered: Remembered::default(),
        secret: SecretFacts::AsWritten,
        secret_exists: true,
        account_id: "apn_A1".into(),
        connection: Ok(Usable {
            admission: Admission::Unrestricted,
            name: "team-a/pd".into(),
        }),
        answer: Answer::Last(None),
        jitter: 0.0,
    }
}

fn answer(expires: &str) -> CachedFetch {
    let account: Account = serde_json::from_value(json!({"id": "apn_A1",
        "credentials": {"k": "v"}, "expires_at": expires}))
    .unwrap();
    CachedFetch {
        fetched: std::sync::Arc::new(crate::pipedream::FetchedAccount {
            account,
            server_time: None,
            round_trip: std::time::Duration::ZERO,
        }),
        at: ts("2026-11-22T09:00:00Z"),
    }
}

#[test]
fn what_a_pass_does() {
    let now = ts("2026-11-22T09:30:00Z");
    let fresh = synced("2026-11-22T09:55:00Z");
    assert_eq!(need(&fresh, now, false), Need::Nothing);
    assert_eq!(need(&fresh, now, true), Need::Repair);
    let due = synced("2026-11-22T09:29:00Z");
    assert_eq!(need(&due, now, false), Need::Fetch { reuse: false });
    let new = Recorded::default();
    assert_eq!(need(&new, now, false), Need::Fetch { reuse: true });
    let forced = Recorded {
        forced: Some("1".into()),
        ..synced("2026-11-22T09:55:00Z")
    };
    assert_eq!(need(&forced, now, false), Need::Fetch { reuse: false });
    // Urgency: no Secret first, then by expiry, forced behind what expires within five minutes.
    assert_eq!(urgency(&new, now, false), Urgency::Missing);
    assert_eq!(
        urgency(&due, now, true),
        Urgency::Expiring(ts("2026-11-22T10:00:00Z"))
    );
    assert_eq!(
        urgency(&forced, now, true),
        Urgency::By(ts("2026-11-22T09:35:00Z"))
    );
    let api_key = Recorded {
        held_expiry: None,
        ..due.clone()
    };
    assert_eq!(
        urgency(&api_key, now, true),
        Urgency::By(ts("2026-11-22T09:29:00Z"))
    );
}

#[test]
fn one_step_per_situation() {
    // Fresh and as written: keep until the next sync, whatever the connection says.
    let mut f = facts(synced("2026-11-22T09:55:00Z"));
    f.connection = Err(SyncFailure::new(Reason::ConnectionNotFound, "gone"));
    assert!(matches!(decide(&f), Step::Keep(t) if t == ts("2026-11-22T09:55:00Z")));
    // Drifted: repair from the last answer, without a fetch; with no answer, fetch first.
    let mut f = facts(synced("2026-11-22T09:55:00Z"));
    f.secret = SecretFacts::Drifted;
    f.answer = Answer::Last(Some(answer("2026-11-22T10:00:00Z")));
    assert!(matches!(decide(&f), Step::Write(w) if w.cause == Cause::Repair));
    f.answer = Answer::Last(None);
    assert!(matches!(decide(&f), Step::Fetch { .. }));
    // New object: a still-fresh earlier answer is written, an old one is not.
    let mut f = facts(Recorded::default());
    f.secret = SecretFacts::New;
    f.secret_exists = false;
    f.answer = Answer::Last(Some(answer("2026-11-22T10:00:00Z")));
    assert!(matches!(decide(&f), Step::Write(w) if w.cause == Cause::Sync));
    f.answer = Answer::Last(Some(answer("2026-11-22T09:31:00Z")));
    assert!(
        matches!(
            decide(&f),
            Step::Fetch {
                urgency: Urgency::Missing
            }
        ),
        "a missing Secret is the most urgent fetch"
    );
    // An arrived failure is reported; a conflict is reported before anything else is considered.
    let mut f = facts(synced("2026-11-22T09:29:00Z"));
    f.answer = Answer::Arrived(Attempt::Failed(
        crate::pipedream::PipedreamError::NotFound {
            status: 404,
            message: None,
        },
    ));
    assert!(matches!(decide(&f), Step::Fail(e) if e.reason == Reason::AccountNotFound));
    f.secret = SecretFacts::Conflict("Secret gh belongs to someone else".into());
    assert!(matches!(decide(&f), Step::Fail(e) if e.reason == Reason::SecretConflict));
    // An invalid spec fails without touching anything else.
    let mut f = facts(Recorded::default());
    f.spec = Err(SyncFailure::new(Reason::InvalidSpec, "spec.x"));
    assert!(matches!(decide(&f), Step::Fail(e) if e.reason == Reason::InvalidSpec));
}

/// Regression (issue 8): force-sync had no per-object debounce; each new value fetched at once.
#[test]
fn forced_fetches_are_debounced_per_object() {
    let mut f = facts(Recorded {
        forced: Some("2".into()),
        ..synced("2026-11-22T09:55:00Z")
    });
    f.remembered.last_forced = Some(ts("2026-11-22T09:29:55Z"));
    let wait = |f: &Facts| force_wait(&f.recorded, &f.remembered, f.now);
    assert_eq!(wait(&f), Some(ts("2026-11-22T09:30:05Z")));
    assert!(matches!(decide(&f), Step::Wait(t) if t == ts("2026-11-22T09:30:05Z")));
    assert_eq!(
        hold(&f.recorded, &f.remembered, f.now),
        Some(ts("2026-11-22T09:30:05Z"))
    );
    f.remembered.asked = true;
    assert_eq!(
        hold(&f.recorded, &f.remembered, f.now),
        None,
        "its answer is used when it arrives"
    );
    f.remembered.last_forced = Some(ts("2026-11-22T09:20:00Z"));
    assert_eq!(wait(&f), None);
    f.remembered.last_forced = None;
    assert_eq!(wait(&f), None);
}

#[test]
fn a_failed_object_waits_unless_something_relevant_changed() {
    let failed = Recorded {
        failed: true,
        next_due: Some(ts("2026-11-22T09:35:00Z")),
        ..Default::default()
    };
    let mut f = facts(failed);
    let wait = |f: &Facts| wait_for_retry(&f.recorded, &f.remembered, f.now);
    assert_eq!(wait(&f), Some(ts("2026-11-22T09:35:00Z")));
    f.remembered.connection_changed = true;
    assert_eq!(wait(&f), None, "the connection changed");
    f.remembered.connection_changed = false;
    f.remembered.retry_at = Some(ts("2026-11-22T09:40:00Z"));
    assert_eq!(wait(&f), Some(ts("2026-11-22T09:40:00Z")));
    f.recorded.spec_changed = true;
    assert_eq!(wait(&f), None, "a spec change retries at once");
    // ... unless the last failure was moments ago: a spec edited in a loop is debounced.
    f.remembered.last_failed = Some(ts("2026-11-22T09:29:55Z"));
    assert_eq!(wait(&f), Some(ts("2026-11-22T09:30:05Z")));
    f.remembered.last_failed = Some(ts("2026-11-22T09:29:40Z"));
    assert_eq!(wait(&f), None, "the last failure is old enough");
}

/// Regression (issue 7): AccessDenied quoted the denied account's app and external user, so another tenant
/// could learn whose an account id is.
#[test]
fn access_denied_names_only_the_account_id_and_the_rule_kinds() {
    let account: Account = serde_json::from_value(json!({
        "id": "apn_A1", "external_id": "victim-tenant", "app": {"name_slug": "secret-app"},
        "credentials": {"k": "v"}}))
    .unwrap();
    let rules = vec![
        serde_json::from_value(json!({"namespaces": ["team-b"], "externalUserIds": ["me"]}))
            .unwrap(),
    ];
    let e = judge(
        &account,
        "apn_A1",
        &Admission::Rules(rules),
        "ClusterPipedreamConnection/default",
    )
    .unwrap_err();
    assert_eq!(e.reason, Reason::AccessDenied);
    assert!(
        !e.message.contains("victim-tenant") && !e.message.contains("secret-app"),
        "{}",
        e.message
    );
    assert!(e.message.contains("apn_A1"));
    let other = judge(&account, "apn_B2", &Admission::Unrestricted, "c").unwrap_err();
    assert!(!other.message.contains("apn_A1"), "{}", other.message);
}

/// Issue 25 (10): an `expires_at` in year 9000 was believed as it came, putting the next check off to the daily
/// maximum whatever the token really did. It is taken as no expiry now (checked every `refresh.interval`), and
/// reported; within a year it is believed.
#[test]
fn an_expiry_years_ahead_is_taken_as_none() {
    let far = timing(&answer("9000-01-01T00:00:00Z")).expect("still usable");
    assert_eq!(far.expires_at, None);
    assert_eq!(far.observed.expires_at, None);
    assert_eq!(far.ignored_expiry, Some(ts("9000-01-01T00:00:00Z")));
    let t = timing(&answer("2027-11-01T00:00:00Z")).expect("believed");
    assert_eq!(t.expires_at, Some(ts("2027-11-01T00:00:00Z")));
    assert_eq!(t.ignored_expiry, None);
}

/// Issue 24: Pipedream's refresh lead is its own `expires_at − next_refresh_at`. The conservative pair the schedule
/// uses understates it by the skew correction's margin (1 s plus the round trip): a Pipedream refreshing exactly
/// the propagation time ahead was reported as refreshing 98 s ahead, a risk for pods.
#[test]
fn pipedreams_refresh_lead_is_exact_whatever_the_skew_correction() {
    let mut a = answer("2026-11-22T09:03:00Z");
    let fetched = std::sync::Arc::make_mut(&mut a.fetched);
    fetched.account.next_refresh_at = Some("2026-11-22T09:01:20Z".into());
    fetched.server_time = Some(ts("2026-11-22T09:00:07Z"));
    fetched.round_trip = Duration::from_millis(900);
    let t = timing(&a).unwrap();
    assert_eq!(t.announced_lead, Some(Duration::from_secs(100)));
    let (e, r) = (
        t.observed.expires_at.unwrap(),
        t.observed.next_refresh_at.unwrap(),
    );
    assert!(crate::schedule::between(r, e) < Duration::from_secs(99));
}

fn arrived(account: serde_json::Value) -> Answer {
    let mut a = answer("2026-11-22T10:00:00Z");
    a.fetched = std::sync::Arc::new(crate::pipedream::FetchedAccount {
        account: serde_json::from_value(account).unwrap(),
        server_time: None,
        round_trip: Duration::ZERO,
    });
    Answer::Arrived(Attempt::Ok(a))
}

/// Issue 26: decide is final. An answer that cannot be written (another account, not admitted, dead, without
/// credentials, expired already) is a failure decided here; before, decide said Write and the write failed.
#[test]
fn an_answer_that_cannot_be_written_fails_in_decide() {
    let fails = |f: &Facts, reason: Reason| {
        assert!(
            matches!(decide(f), Step::Fail(ref e) if e.reason == reason),
            "{reason:?}"
        );
    };
    let mut f = facts(synced("2026-11-22T09:29:00Z"));
    f.answer = arrived(json!({"id": "apn_B2", "credentials": {"k": "v"}}));
    fails(&f, Reason::UpstreamError);
    f.answer = arrived(json!({"id": "apn_A1", "credentials": {"k": "v"}, "dead": true}));
    fails(&f, Reason::AccountDead);
    f.answer = arrived(json!({"id": "apn_A1"}));
    fails(&f, Reason::CredentialsUnavailable);
    f.answer = arrived(
        json!({"id": "apn_A1", "credentials": {"k": "v"}, "expires_at": "2026-11-22T09:20:00Z"}),
    );
    fails(&f, Reason::StaleCredentials);
    f.answer =
        arrived(json!({"id": "apn_A1", "credentials": {"k": "v"}, "expires_at": "yesterday"}));
    fails(&f, Reason::UpstreamError);
    let narrowed: crate::crd::AccessRule =
        serde_json::from_value(json!({"namespaces": ["team-a"], "accountIds": ["apn_Z9"]}))
            .unwrap();
    f.connection = Ok(Usable {
        admission: Admission::Rules(vec![narrowed]),
        name: "pd".into(),
    });
    f.answer = arrived(json!({"id": "apn_A1", "credentials": {"k": "v"}}));
    fails(&f, Reason::AccessDenied);
    // Through a narrowing connection a missing account is not admitted either: ids cannot be probed.
    f.answer = Answer::Arrived(Attempt::Failed(
        crate::pipedream::PipedreamError::NotFound {
            status: 404,
            message: None,
        },
    ));
    fails(&f, Reason::AccessDenied);
    // An admitted answer through an unrestricted connection is written, judged.
    f.answer = arrived(json!({"id": "apn_A1", "credentials": {"k": "v"}}));
    f.connection = Ok(Usable {
        admission: Admission::Unrestricted,
        name: "pd".into(),
    });
    let Step::Write(w) = decide(&f) else {
        panic!("not a write")
    };
    assert_eq!(
        w.credentials,
        w.answer.fetched.account.credentials.clone().unwrap()
    );
}
