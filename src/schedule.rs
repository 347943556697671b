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
    let after_refresh = obs
        .next_refresh_at
        .filter(|t| *t > now)
        .map(|t| add(t, AFTER_REFRESH_DELAY));
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
        None => add(now, stale_backoff(stale_attempt)),
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
        if let Ok(until) = Duration::try_from(until) {
            delay = delay.min(until);
        }
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
