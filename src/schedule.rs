//! When to fetch next. Pure functions of the clock and what Pipedream reported, so they are tested without I/O.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

/// Fetch this long after Pipedream's `next_refresh_at`, so its refresh has landed.
pub const AFTER_REFRESH_DELAY: Duration = Duration::from_secs(5);
/// Upper bound of the deterministic jitter subtracted from an expiry-based due time.
pub const MAX_EXPIRY_JITTER: Duration = Duration::from_secs(30);
/// First and largest delay while Pipedream keeps returning credentials inside the refresh margin.
pub const STALE_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Cap of that backoff.
pub const STALE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// No requeue is ever shorter than this.
pub const MIN_DELAY: Duration = Duration::from_secs(1);
/// Longest error backoff while the held credentials are already expired.
pub const EXPIRED_RETRY_MAX: Duration = Duration::from_secs(30);
/// Clock differences below this are ignored.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(2);

/// Per-object timing settings (from `spec.refresh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Renew this long before expiry.
    pub before_expiry: Duration,
    /// Cadence for credentials without expiry.
    pub interval: Duration,
}

/// Expiry facts of one fetch, already on the local clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// When the credentials stop working.
    pub expires_at: Option<Timestamp>,
    /// When Pipedream will refresh them itself.
    pub next_refresh_at: Option<Timestamp>,
}

/// The next fetch and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextFetch {
    /// When.
    pub at: Timestamp,
    /// True when the fetched credentials were already inside the refresh margin (Pipedream had not refreshed).
    pub stale: bool,
}

/// A fraction in [0, 1) fixed for one object (its UID), to spread objects minted together.
pub fn jitter_fraction(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(b) % 1_000_000) as f64 / 1_000_000.0
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// Next fetch after a successful fetch at `now`.
///
/// Earliest of `expires_at − beforeExpiry − jitter` and `next_refresh_at + 5s`; without expiry, `interval` ±10 %.
/// When the credentials are already inside the margin: right after a future `next_refresh_at`, otherwise
/// `stale_attempt`-based backoff (5 s doubling to 60 s). Never earlier than `now + 1s`.
pub fn next_fetch(
    now: Timestamp,
    obs: Observed,
    policy: Policy,
    jitter: f64,
    stale_attempt: u32,
) -> NextFetch {
    let n = next_fetch_exact(now, obs, policy, jitter, stale_attempt);
    // Whole seconds: the time is persisted in status at second precision and the requeue must agree with it.
    NextFetch {
        at: Timestamp::from_second(n.at.as_second()).unwrap_or(n.at),
        stale: n.stale,
    }
}

fn next_fetch_exact(
    now: Timestamp,
    obs: Observed,
    policy: Policy,
    jitter: f64,
    stale_attempt: u32,
) -> NextFetch {
    // "Shortly after" Pipedream's refresh, but never past expiry: with a short refresh lead, half the lead.
    let after_refresh = obs.next_refresh_at.filter(|t| *t > now).map(|t| {
        let delay = match obs.expires_at.map(|e| e.duration_since(t)) {
            Some(lead) if lead > SignedDuration::ZERO => {
                AFTER_REFRESH_DELAY.min(Duration::try_from(lead / 2).unwrap_or(AFTER_REFRESH_DELAY))
            }
            _ => AFTER_REFRESH_DELAY,
        };
        add(t, delay)
    });
    let due = match obs.expires_at {
        Some(exp) => {
            let spread = (policy.before_expiry / 10)
                .min(MAX_EXPIRY_JITTER)
                .mul_f64(jitter);
            sub(sub(exp, policy.before_expiry), spread)
        }
        None => add(now, policy.interval.mul_f64(0.9 + 0.2 * jitter)),
    };
    let earliest = after_refresh.map_or(due, |r| r.min(due));
    if earliest > now {
        return NextFetch {
            at: earliest.max(add(now, MIN_DELAY)),
            stale: false,
        };
    }
    // Inside the margin already: Pipedream has not refreshed yet, or the token lives shorter than the margin.
    let at = match after_refresh {
        Some(r) => r,
        None => {
            // Retry soon, and while the credentials still work, well before they stop.
            let mut backoff = stale_backoff(stale_attempt);
            if let Some(left) = obs
                .expires_at
                .and_then(|e| Duration::try_from(e.duration_since(now)).ok())
            {
                backoff = backoff.min(left / 2);
            }
            add(now, backoff)
        }
    };
    NextFetch {
        at: at.max(add(now, MIN_DELAY)),
        stale: true,
    }
}

/// 5 s, 10 s, 20 s, 40 s, 60 s, 60 s, …
pub fn stale_backoff(attempt: u32) -> Duration {
    STALE_BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(STALE_BACKOFF_MAX)
}

/// Per-object error backoff: 2 s doubling to 5 min, but landing before the current credentials expire (less a
/// small margin) and never before a server-imposed `retry_after`.
pub fn error_backoff(
    now: Timestamp,
    attempt: u32,
    expires_at: Option<Timestamp>,
    retry_after: Option<Duration>,
    slow: bool,
) -> Duration {
    let base = if slow {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(2)
    };
    let mut delay = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(Duration::from_secs(300));
    if let Some(exp) = expires_at {
        let until = exp.duration_since(now) - SignedDuration::from_secs(10);
        delay = match Duration::try_from(until) {
            Ok(until) => delay.min(until),
            // Already expired: the Secret is useless until a fetch succeeds, so keep retries frequent.
            Err(_) => delay.min(EXPIRED_RETRY_MAX),
        };
    }
    if let Some(ra) = retry_after {
        delay = delay.max(ra);
    }
    delay.max(MIN_DELAY)
}

/// Move a Pipedream timestamp onto the local clock, using its `Date` header seen at local time `received_at`.
pub fn correct_skew(
    t: Timestamp,
    server_time: Option<Timestamp>,
    received_at: Timestamp,
) -> Timestamp {
    let Some(server) = server_time else { return t };
    let offset = server.duration_since(received_at);
    // HTTP dates have second precision; ignore differences that small.
    if offset.unsigned_abs() <= SKEW_TOLERANCE {
        return t;
    }
    t.saturating_sub(offset).unwrap_or(t)
}

/// Parse a `spec.refresh`-style duration: one or more `<digits><s|m|h>` (e.g. `90s`, `5m`, `1h30m`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' => num.push(c),
            's' | 'm' | 'h' => {
                let n: u64 = num.parse().ok()?;
                num.clear();
                let mult = match c {
                    's' => 1,
                    'm' => 60,
                    _ => 3600,
                };
                total = total.checked_add(n.checked_mul(mult)?)?;
            }
            _ => return None,
        }
    }
    (num.is_empty() && !s.is_empty()).then_some(Duration::from_secs(total))
}

/// RFC 3339 with second precision: the stable form written to status and annotations.
pub fn format_ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parse an RFC 3339 timestamp.
pub fn parse_ts(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Clock;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
    const POLICY: Policy = Policy {
        before_expiry: Duration::from_secs(300),
        interval: Duration::from_secs(3600),
    };

    #[test]
    fn with_expiry_fetches_before_expiry_minus_margin_and_jitter() {
        let now = ts("2026-11-22T09:00:00Z");
        let obs = Observed {
            expires_at: Some(ts("2026-11-22T10:00:00Z")),
            next_refresh_at: None,
        };
        let n = next_fetch(now, obs, POLICY, 0.0, 0);
        assert_eq!(
            n,
            NextFetch {
                at: ts("2026-11-22T09:55:00Z"),
                stale: false
            }
        );
        // Jitter moves it earlier, by at most min(margin/10, 30s).
        let j = next_fetch(now, obs, POLICY, 0.999, 0);
        assert!(j.at < n.at && j.at >= ts("2026-11-22T09:54:30Z"), "{j:?}");
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
            let n = next_fetch(now, Observed::default(), POLICY, j, 0);
            let d = n.at.duration_since(now).as_secs();
            assert!((3240..=3960).contains(&d), "{d}");
            assert!(!n.stale);
        }
    }

    #[test]
    fn next_refresh_at_earlier_than_margin_wins() {
        let now = ts("2026-11-22T09:00:00Z");
        let obs = Observed {
            expires_at: Some(ts("2026-11-22T10:00:00Z")),
            next_refresh_at: Some(ts("2026-11-22T09:47:33Z")),
        };
        assert_eq!(
            next_fetch(now, obs, POLICY, 0.0, 0).at,
            ts("2026-11-22T09:47:38Z")
        );
        // A next_refresh_at in the past is ignored.
        let old = Observed {
            next_refresh_at: Some(ts("2026-11-22T08:00:00Z")),
            ..obs
        };
        assert_eq!(
            next_fetch(now, old, POLICY, 0.0, 0).at,
            ts("2026-11-22T09:55:00Z")
        );
    }

    #[test]
    fn inside_margin_waits_for_pipedream_refresh_or_backs_off_never_zero() {
        let now = ts("2026-11-22T09:58:00Z");
        let exp = Some(ts("2026-11-22T10:00:00Z"));
        let with_refresh = Observed {
            expires_at: exp,
            next_refresh_at: Some(ts("2026-11-22T09:58:30Z")),
        };
        let n = next_fetch(now, with_refresh, POLICY, 0.3, 0);
        assert_eq!(
            n,
            NextFetch {
                at: ts("2026-11-22T09:58:35Z"),
                stale: true
            }
        );
        let no_refresh = Observed {
            expires_at: exp,
            next_refresh_at: None,
        };
        let delays: Vec<i64> = (0..7)
            .map(|a| {
                next_fetch(now, no_refresh, POLICY, 0.3, a)
                    .at
                    .duration_since(now)
                    .as_secs()
            })
            .collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 60, 60, 60]);
    }

    #[test]
    fn short_refresh_leads_and_stale_backoff_stay_before_expiry() {
        // Pipedream refreshes 4 s before a 12 s token expires; our margin is 5 s.
        let issued = ts("2026-11-22T09:00:00Z");
        let obs = Observed {
            expires_at: Some(ts("2026-11-22T09:00:12Z")),
            next_refresh_at: Some(ts("2026-11-22T09:00:08Z")),
        };
        let policy = Policy {
            before_expiry: Duration::from_secs(5),
            interval: POLICY.interval,
        };
        let first = next_fetch(issued, obs, policy, 0.0, 0);
        assert_eq!(first.at, ts("2026-11-22T09:00:07Z"));
        // Fetched at 7 s, before Pipedream refreshed: retry right after its refresh, still before expiry.
        let again = next_fetch(first.at, obs, policy, 0.0, 0);
        assert!(again.stale);
        assert_eq!(again.at, ts("2026-11-22T09:00:10Z"));
        // No next_refresh_at: the backoff is cut to half the remaining life.
        let bare = Observed {
            expires_at: obs.expires_at,
            next_refresh_at: None,
        };
        let n = next_fetch(ts("2026-11-22T09:00:08Z"), bare, policy, 0.0, 3);
        assert_eq!(n.at, ts("2026-11-22T09:00:10Z"));
    }

    #[test]
    fn already_expired_credentials_are_retried_with_backoff() {
        let now = ts("2026-11-22T11:00:00Z");
        let obs = Observed {
            expires_at: Some(ts("2026-11-22T10:00:00Z")),
            next_refresh_at: None,
        };
        let n = next_fetch(now, obs, POLICY, 0.0, 0);
        assert!(n.stale);
        assert_eq!(n.at.duration_since(now).as_secs(), 5);
    }

    #[test]
    fn token_shorter_than_margin_never_requeues_zero() {
        let now = ts("2026-11-22T09:00:00Z");
        let obs = Observed {
            expires_at: Some(ts("2026-11-22T09:00:20Z")),
            next_refresh_at: None,
        };
        let n = next_fetch(now, obs, POLICY, 0.0, 0);
        assert!(n.at > now);
        assert!(n.stale);
    }

    #[test]
    fn clock_skew_is_corrected_from_the_date_header() {
        let local = ts("2026-11-22T09:00:00Z");
        // Pipedream's clock runs 10 minutes ahead: its expires_at is 10 minutes "later" than on ours.
        let server = ts("2026-11-22T09:10:00Z");
        let exp = ts("2026-11-22T10:10:00Z");
        assert_eq!(
            correct_skew(exp, Some(server), local),
            ts("2026-11-22T10:00:00Z")
        );
        // Behind by 10 minutes.
        assert_eq!(
            correct_skew(exp, Some(ts("2026-11-22T08:50:00Z")), local),
            ts("2026-11-22T10:20:00Z")
        );
        // Within tolerance or unknown: unchanged.
        assert_eq!(
            correct_skew(exp, Some(ts("2026-11-22T09:00:01Z")), local),
            exp
        );
        assert_eq!(correct_skew(exp, None, local), exp);
    }

    #[test]
    fn error_backoff_grows_but_lands_before_expiry_and_honours_retry_after() {
        let now = ts("2026-11-22T09:00:00Z");
        let far = Some(ts("2026-11-22T12:00:00Z"));
        let d: Vec<u64> = (0..10)
            .map(|a| error_backoff(now, a, far, None, false).as_secs())
            .collect();
        assert_eq!(d, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        let soon = Some(ts("2026-11-22T09:01:00Z"));
        assert_eq!(error_backoff(now, 9, soon, None, false).as_secs(), 50);
        assert_eq!(
            error_backoff(now, 0, far, Some(Duration::from_secs(30)), false).as_secs(),
            30
        );
        assert_eq!(error_backoff(now, 0, far, None, true).as_secs(), 60);
        // Already expired: retries stay frequent, never zero.
        assert_eq!(
            error_backoff(now, 5, Some(ts("2026-11-22T08:00:00Z")), None, false),
            EXPIRED_RETRY_MAX
        );
        assert_eq!(
            error_backoff(now, 0, Some(ts("2026-11-22T08:00:00Z")), None, false).as_secs(),
            2
        );
    }

    #[test]
    fn durations_parse_like_the_crd_pattern() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        for bad in ["", "5", "m", "5x", "-5m", "1.5h"] {
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
    }

    /// Drive many token lifetimes on paused tokio time: sleeping until each scheduled fetch always lands before
    /// the credentials expire.
    #[tokio::test(start_paused = true)]
    async fn paused_time_rotation_always_lands_before_expiry() {
        let clock = Clock::tokio(ts("2026-11-22T09:00:00Z"));
        let policy = Policy {
            before_expiry: Duration::from_secs(120),
            interval: Duration::from_secs(3600),
        };
        let mut expires = clock.now() + SignedDuration::from_secs(3600);
        for cycle in 0..24 {
            let n = next_fetch(
                clock.now(),
                Observed {
                    expires_at: Some(expires),
                    next_refresh_at: None,
                },
                policy,
                0.42,
                0,
            );
            let wait = Duration::try_from(n.at.duration_since(clock.now())).unwrap();
            tokio::time::sleep(wait).await;
            let now = clock.now();
            assert!(
                now < expires,
                "cycle {cycle}: fetch at {now} after expiry {expires}"
            );
            assert!(expires.duration_since(now) >= SignedDuration::from_secs(120));
            expires = now + SignedDuration::from_secs(3600);
        }
    }
}
