use super::*;
use std::time::Duration;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const P: Policy = Policy {
    before_expiry: Duration::from_secs(300),
    interval: Duration::from_secs(3600),
    propagation: schedule::DEFAULT_PROPAGATION,
};

/// Pipedream's lead when it refreshes at `r` what expires at `e`.
fn announced(e: &str, r: &str) -> Option<Duration> {
    Some(schedule::between(ts(r), ts(e)))
}

/// Issue 24: a Pipedream that refreshes later than the propagation time before expiry was accepted
/// silently.
#[test]
fn a_refresh_or_a_write_later_than_the_propagation_time_puts_pods_at_risk() {
    let now = ts("2026-11-22T09:00:00Z");
    // Announced: Pipedream refreshes 30 s before expiry.
    let r = pod_risk(
        P,
        announced("2026-11-22T09:02:00Z", "2026-11-22T09:01:30Z"),
        now,
        None,
    );
    assert!(r.at_risk, "{r:?}");
    assert!(
        r.message.contains("30s before they expire") && r.message.contains("100s"),
        "{}",
        r.message
    );
    // Observed: this write replaces credentials that expire in 40 s.
    let r = pod_risk(
        P,
        announced("2026-11-22T10:00:00Z", "2026-11-22T09:55:00Z"),
        now,
        Some(ts("2026-11-22T09:00:40Z")),
    );
    assert!(
        r.at_risk && r.message.contains("written 40s before"),
        "{r:?}"
    );
    assert_eq!(r.lead, Some(Duration::from_secs(40)));
    // In time on both counts.
    let r = pod_risk(
        P,
        announced("2026-11-22T10:00:00Z", "2026-11-22T09:55:00Z"),
        now,
        Some(ts("2026-11-22T09:05:00Z")),
    );
    assert!(!r.at_risk, "{r:?}");
    // Pipedream refreshed exactly the propagation time (100 s) before the old credentials expire and the
    // schedule fetched its 5 s later, plus a moment on the wire: in time (this was reported as a risk).
    let fresh = announced("2026-11-22T09:03:00Z", "2026-11-22T09:01:20Z");
    let r = pod_risk(P, fresh, now, Some(ts("2026-11-22T09:01:34.6Z")));
    assert!(!r.at_risk, "{r:?}");
    // Later than the schedule's own wait allows: a risk.
    let r = pod_risk(P, fresh, now, Some(ts("2026-11-22T09:01:32Z")));
    assert!(
        r.at_risk && r.message.contains("written 92s before"),
        "{r:?}"
    );
    // API readers (propagation 0) are never at risk.
    let api = Policy {
        propagation: Duration::ZERO,
        ..P
    };
    let r = pod_risk(
        api,
        announced("2026-11-22T09:02:00Z", "2026-11-22T09:01:59Z"),
        now,
        None,
    );
    assert!(!r.at_risk);
}
