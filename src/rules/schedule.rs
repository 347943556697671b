//! When to fetch next: one policy, as pure functions of the clock and what Pipedream reported, so it is tested
//! (and simulated over many token cycles, see [`crate::simulate`]) without I/O.
//!
//! Pods see a Secret change only after the kubelet's next pod sync (mounted volumes) or a new pod (environment
//! variables, `subPath`), so every rule leaves them the *propagation time* `P` (`spec.refresh.propagationTime`,
//! default [`DEFAULT_PROPAGATION`]): the pods' deadline for a new token is `D = E − P`.
//!
//! After a fetch that returned credentials expiring at `E`, with Pipedream's own refresh planned at `R`:
//! - `R` in the future: right after it (`R + δ`, δ = half the refresh lead, 1–5 s, and no later than `D` when `R`
//!   is before it), since that is when a new token exists; never later than just after `E`. Steady state: one
//!   call per token. An `R` after `D` leaves pods too little time: the status reports the risk.
//! - no usable `R`: at `E − max(beforeExpiry, P) − jitter`; inside that margin (Pipedream is late), halve the
//!   time left until `D` while that stays over 20 s, poll just after `D` (a refresh right at `D` still reaches
//!   pods in time), then halve the time left until `E` the same way and go to just after `E`.
//! - `E` passed (or the answer is already expired): every second, then every 2 s, for two minutes; then slower
//!   (a tenth of the time since expiry, at most a minute), but always just after a future `R` (Pipedream's
//!   announced retry of its refresh). A past or absent `R` never delays this.
//! - no `E`: every `interval` (±10 %).
//!
//! A pass that writes then books that time on its namespace's calendar of the connection's rate
//! ([`crate::rules::calendar`]): a later free slot when others want the same moment, never later than
//! [`latest_booking`].
//!
//! Failures back off by class: transient ones fast and always landing before the held credentials expire;
//! unhealthy, dead or missing accounts and configuration errors in minutes.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

/// Upper bound of the wait after Pipedream's `next_refresh_at` (half the refresh lead when that is shorter).
pub const AFTER_REFRESH_DELAY: Duration = Duration::from_secs(5);
/// How long a Secret write takes to reach every pod, unless a ConnectedAccount or the operator's
/// `--propagation-time` says otherwise: a kubelet syncs each pod every `syncFrequency` (1 min by default) plus up to
/// half of it as jitter, so a mounted volume sees a change at most 90 s after it; 10 s more cover the operator's own
/// wait after Pipedream's refresh and a rollout of a few pods.
pub const DEFAULT_PROPAGATION: Duration = Duration::from_secs(100);
/// Upper bound of the deterministic jitter subtracted from an expiry-based due time.
pub const MAX_EXPIRY_JITTER: Duration = Duration::from_secs(30);
/// No requeue is ever shorter than this.
pub const MIN_DELAY: Duration = Duration::from_secs(1);
/// Nothing is scheduled further out than this: credentials are re-checked at least daily.
pub const MAX_SCHEDULE: Duration = Duration::from_secs(24 * 3600);
/// Inside the margin, with this little life left, the next poll is just after expiry.
pub const LAST_POLL_BEFORE_EXPIRY: Duration = Duration::from_secs(20);
/// After expiry, poll every 1–2 s for this long; then back off.
pub const EXPIRED_FAST_WINDOW: Duration = Duration::from_secs(120);
/// Slowest poll of expired credentials while Pipedream reports the account healthy.
pub const EXPIRED_SLOW_MAX: Duration = Duration::from_secs(60);
/// Clock differences below this are not corrected (HTTP dates have second precision).
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(2);
/// Clock differences beyond this are not believed: a `Date` header that far off is broken or hostile, and
/// correcting by it would move every refresh by as much. The local clock is used as is.
pub const MAX_BELIEVED_SKEW: Duration = Duration::from_secs(15 * 60);

/// Pipedream's `Date` header, if it is within [`MAX_BELIEVED_SKEW`] of the local time the answer arrived.
fn believed(server: Option<Timestamp>, received: Timestamp) -> Option<Timestamp> {
    server.filter(|s| s.duration_since(received).unsigned_abs() <= MAX_BELIEVED_SKEW)
}

/// Per-object timing settings (from `spec.refresh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Renew this long before expiry.
    pub before_expiry: Duration,
    /// Cadence for credentials without expiry.
    pub interval: Duration,
    /// How long a Secret write takes to reach every pod (zero: consumers read the API directly).
    pub propagation: Duration,
}

impl Policy {
    /// The pods' deadline for credentials expiring at `e`: the last moment a write still reaches every pod
    /// before `e`.
    pub fn pod_deadline(&self, e: Timestamp) -> Timestamp {
        sub(e, self.propagation)
    }

    /// How long before expiry a fetch is due: `beforeExpiry`, and never less than the propagation time.
    pub fn margin(&self) -> Duration {
        self.before_expiry.max(self.propagation)
    }
}

/// Expiry facts of one fetch, on the local clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// When the credentials stop working: conservative (never later than the true expiry on this clock).
    pub expires_at: Option<Timestamp>,
    /// When Pipedream refreshes them itself: conservative the other way (never earlier than the true time).
    pub next_refresh_at: Option<Timestamp>,
}

/// The next fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextFetch {
    /// When (at least [`MIN_DELAY`] after `now`).
    pub at: Timestamp,
    /// The credentials just fetched are already expired: Pipedream has not refreshed them yet.
    pub expired: bool,
}

/// A fraction in [0, 1) fixed for one object (its UID), to spread objects minted together.
pub fn jitter_fraction(key: &str) -> f64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(b) % 1_000_000) as f64 / 1_000_000.0
}

/// `t + d`, saturating.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// `t − d`, saturating.
pub fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

/// `b − a` as a non-negative duration (zero when `b <= a`).
pub fn between(a: Timestamp, b: Timestamp) -> Duration {
    Duration::try_from(b.duration_since(a)).unwrap_or(Duration::ZERO)
}

/// Delay from `now` to `at`: at least [`MIN_DELAY`], at most [`MAX_SCHEDULE`]. Computed when the pass ends, so a
/// slow pass does not push the next fetch later.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    between(now, at).clamp(MIN_DELAY, MAX_SCHEDULE)
}

/// How long to wait before polling credentials that expired `since` ago (Pipedream is late with its refresh).
pub fn expired_retry(since: Duration) -> Duration {
    if since < Duration::from_secs(5) {
        Duration::from_secs(1)
    } else if since < EXPIRED_FAST_WINDOW {
        Duration::from_secs(2)
    } else {
        (since / 10).clamp(Duration::from_secs(2), EXPIRED_SLOW_MAX)
    }
}

/// Next fetch after a successful fetch at `now`.
pub fn after_fetch(now: Timestamp, obs: Observed, policy: Policy, jitter: f64) -> NextFetch {
    let (at, expired) = match obs.expires_at {
        None => (add(now, policy.interval.mul_f64(0.9 + 0.2 * jitter)), false),
        Some(e) if e <= now => {
            // Pipedream announced when it retries its refresh: be there just after, even in the slow phase (and
            // rather a little later than a slow poll just before it, which would then wait a whole interval).
            let since = between(e, now);
            // An announced retry that (on our conservative reading) has just passed may not have happened yet:
            // keep polling fast for a few seconds.
            let just_retried = obs
                .next_refresh_at
                .is_some_and(|r| r <= now && between(r, now) < AFTER_REFRESH_DELAY);
            let wait = if just_retried {
                expired_retry(since).min(Duration::from_secs(2))
            } else {
                expired_retry(since)
            };
            let poll = add(now, wait);
            let announced = obs
                .next_refresh_at
                .filter(|r| *r > now)
                .map(|r| add(r, MIN_DELAY));
            let at = match announced {
                Some(r) if r <= poll => r,
                Some(r) if since >= EXPIRED_FAST_WINDOW && r <= add(poll, wait) => r,
                _ => poll,
            };
            (at, true)
        }
        Some(e) => (
            valid_until(now, e, obs.next_refresh_at, policy, jitter),
            false,
        ),
    };
    // Exact, not rounded to seconds: rounding up would add up to a second to every expiry-critical wait. Status
    // shows the time truncated to seconds, so a pass woken at `at` always finds the fetch due.
    let at = at.max(add(now, MIN_DELAY)).min(add(now, MAX_SCHEDULE));
    NextFetch { at, expired }
}

/// Next fetch while the fetched credentials are valid until `e`.
fn valid_until(
    now: Timestamp,
    e: Timestamp,
    next_refresh: Option<Timestamp>,
    policy: Policy,
    jitter: f64,
) -> Timestamp {
    let just_after_expiry = add(e, MIN_DELAY);
    let deadline = policy.pod_deadline(e);
    if let Some(r) = next_refresh.filter(|r| *r > now) {
        // A new token exists only from R on: fetching earlier returns this one again. A Pipedream that keeps
        // announcing new retry times is followed at no less than half the remaining life (up to the pods'
        // deadline), so the calls per token stay logarithmic ([`calls_while_valid_bound_announced`]).
        let mut delta = if r < e {
            (between(r, e) / 2).clamp(MIN_DELAY, AFTER_REFRESH_DELAY)
        } else {
            MIN_DELAY
        };
        if r < deadline {
            delta = delta.min(between(r, deadline).max(MIN_DELAY));
        }
        let half_life = add(now, between(now, e) / 2);
        let follow = if now < deadline {
            half_life.min(deadline)
        } else {
            half_life
        };
        return add(r, delta).max(follow).min(just_after_expiry);
    }
    let margin = policy.margin();
    let spread = (margin / 10).min(MAX_EXPIRY_JITTER).mul_f64(jitter);
    let due = sub(sub(e, margin), spread);
    if due > now {
        return due;
    }
    // Inside the margin and Pipedream has not refreshed: halve the time left until the pods' deadline while that
    // stays over 20 s and poll at the deadline, then do the same until expiry and wait for it.
    // A refresh right at the pods' deadline still reaches every pod in time (the write allowance of `PodsAtRisk`),
    // and a poll exactly at the deadline can come a moment before it: the last poll for the pods is just after it.
    let after_deadline = add(deadline, AFTER_REFRESH_DELAY).min(just_after_expiry);
    if !policy.propagation.is_zero() && now < deadline {
        let left = between(now, deadline);
        return if left > LAST_POLL_BEFORE_EXPIRY * 2 {
            add(now, left / 2)
        } else {
            after_deadline
        };
    }
    if !policy.propagation.is_zero() && now < after_deadline {
        return after_deadline;
    }
    let left = between(now, e);
    if left > LAST_POLL_BEFORE_EXPIRY * 2 {
        add(now, left / 2)
    } else {
        just_after_expiry
    }
}

/// The latest a booked refresh slot ([`crate::rules::calendar`]) may move the next fetch `next` to:
/// [`AFTER_REFRESH_DELAY`] before the pods' deadline (a fetch there still reaches pods in time); a tenth of the
/// interval for credentials without expiry; not at all closer to the deadline, or for expired credentials (the
/// polls that wait for Pipedream's refresh keep their times). A batch larger than the rate can serve in that window
/// keeps its wanted times beyond it, and the queue serves them by expiry, as it would the whole batch.
pub fn latest_booking(next: NextFetch, obs: Observed, policy: Policy) -> Timestamp {
    if next.expired {
        return next.at;
    }
    match obs.expires_at {
        None => add(next.at, policy.interval / 10),
        Some(e) => sub(policy.pod_deadline(e), AFTER_REFRESH_DELAY).max(next.at),
    }
}

/// How a failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Network, 5xx, malformed answers, Kubernetes API errors: may pass on their own soon.
    Transient,
    /// Pipedream reports the account unhealthy: it retries on its side; check every few minutes.
    Unhealthy,
    /// Needs someone to change something (spec, connection, account dead or gone, access): minutes.
    Permanent,
}

/// When a failed attempt is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Wait this long.
    pub delay: Duration,
    /// The wait ends after the credentials in the Secret expire (a long `Retry-After`): status says so.
    pub past_expiry: bool,
}

/// Backoff after the `attempt`-th consecutive failure (0-based). While the Secret's credentials are valid, every
/// retry lands before they expire, and before the pods' deadline (`propagation` before expiry) while that is
/// ahead (a server-imposed `retry_after`, capped by the client, wins and is reported); once they have expired,
/// transient failures are retried like expired answers.
pub fn after_failure(
    now: Timestamp,
    attempt: u32,
    held_expiry: Option<Timestamp>,
    propagation: Duration,
    class: FailureClass,
    retry_after: Option<Duration>,
) -> Retry {
    let (base, cap) = match class {
        FailureClass::Transient => (Duration::from_secs(2), Duration::from_secs(300)),
        FailureClass::Unhealthy => (Duration::from_secs(30), Duration::from_secs(600)),
        FailureClass::Permanent => (Duration::from_secs(60), Duration::from_secs(600)),
    };
    let mut delay = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    match held_expiry {
        Some(e) if e > now => {
            // One more try before expiry (before the pods' deadline, while there is one) is cheap and may save
            // the Secret.
            let deadline = sub(e, propagation);
            let until = if deadline > now { deadline } else { e };
            let left = between(now, until).saturating_sub(SKEW_TOLERANCE);
            delay = delay.min(left);
        }
        Some(e) if class == FailureClass::Transient => {
            delay = delay.min(expired_retry(between(e, now)));
        }
        _ => {}
    }
    if let Some(ra) = retry_after {
        delay = delay.max(ra);
    }
    let delay = delay.max(MIN_DELAY);
    Retry {
        delay,
        past_expiry: held_expiry.is_some_and(|e| e > now && add(now, delay) > e),
    }
}

/// Move Pipedream timestamps onto the local clock using its `Date` header (`server`, whole seconds) on an
/// answer that arrived at local time `received` after a `round_trip`: expiry conservatively early, the refresh
/// time conservatively late, so neither clock skew, the header's one-second resolution nor a slow answer pushes a
/// fetch past expiry or before the refresh. A header off by more than [`MAX_BELIEVED_SKEW`] is ignored.
pub fn observe(
    expires_at: Option<Timestamp>,
    next_refresh_at: Option<Timestamp>,
    server: Option<Timestamp>,
    received: Timestamp,
    round_trip: Duration,
) -> Observed {
    let Some(server) = believed(server, received) else {
        return Observed {
            expires_at,
            next_refresh_at,
        };
    };
    // The header was stamped at some local time in [received − round_trip, received], and truncated to the
    // second: the true offset (server − local) lies in [server − received, server + 1 s − (received − round_trip)].
    let low = server.duration_since(received);
    let high = low
        + SignedDuration::from_secs(1)
        + SignedDuration::try_from(round_trip).unwrap_or(SignedDuration::MAX);
    let shift = |t: Timestamp, by: SignedDuration| t.saturating_sub(by).unwrap_or(t);
    Observed {
        expires_at: expires_at.map(|t| shift(t, high)),
        next_refresh_at: next_refresh_at.map(|t| shift(t, low)),
    }
}

/// A Pipedream timestamp for display (status, Secret annotation): corrected for clock skew beyond the header's
/// resolution, otherwise as Pipedream wrote it.
pub fn display_time(t: Timestamp, server: Option<Timestamp>, received: Timestamp) -> Timestamp {
    let Some(server) = believed(server, received) else {
        return t;
    };
    let offset = server.duration_since(received);
    if offset.unsigned_abs() <= SKEW_TOLERANCE {
        return t;
    }
    t.saturating_sub(offset).unwrap_or(t)
}

/// The most calls per token the schedule makes while that token is valid and Pipedream has not refreshed it:
/// one just after Pipedream's announced `next_refresh_at`, the fetch at `E − margin`, the halvings down to 20 s
/// before the pods' deadline and the poll just after it, the halvings down to 20 s before expiry, and two around expiry
/// (the conservative expiry of second-precision timestamps may be up to two seconds early, so the first poll
/// "after" it can still see the old token). Once the token has expired (Pipedream is late), add at most one call
/// per [`expired_retry`] wait.
pub fn calls_while_valid_bound(policy: Policy) -> u32 {
    let margin = policy.margin();
    let spread = (margin / 10).min(MAX_EXPIRY_JITTER);
    let halvings = |d: Duration| {
        let mut left = d.as_secs_f64();
        let mut n = 0;
        while left > 2.0 * LAST_POLL_BEFORE_EXPIRY.as_secs_f64() {
            left /= 2.0;
            n += 1;
        }
        n
    };
    // Without a propagation time the deadline is expiry itself: one stretch of halvings.
    let (before_deadline, before_expiry) = if policy.propagation.is_zero() {
        (0, halvings(margin + spread))
    } else {
        (
            halvings((margin + spread).saturating_sub(policy.propagation)) + 1,
            halvings(policy.propagation),
        )
    };
    3 + before_deadline + before_expiry + 1
}

/// The most calls per token while it is valid when Pipedream keeps moving `next_refresh_at` forward (it retries a
/// failing refresh and announces each try): each call halves the remaining life (once stopping at the pods'
/// deadline), so about `log2(lifetime / 1 s) + 3`.
pub fn calls_while_valid_bound_announced(lifetime: Duration) -> u32 {
    let secs = lifetime.as_secs().max(2);
    (u64::BITS - secs.leading_zeros()) + 3
}

/// Parse a `spec.refresh`-style duration: one or more `<digits><s|m|h>` (e.g. `90s`, `5m`, `1h30m`). Exactly the
/// language of the CRD's admission pattern `^([0-9]+(s|m|h))+$`, so the reconciler accepts what the API server
/// admits and nothing more; jiff's friendly parser takes a larger one (fractions, unit words, ISO 8601) and
/// refuses some admitted values (`30m1h`), so it is not used here.
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
mod tests;
