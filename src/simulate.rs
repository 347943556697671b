//! A virtual-clock model of how Pipedream refreshes one account's token, driving the real schedule
//! ([`crate::schedule`]) and, for comparison, fixed-interval pollers (how other secret operators sync) over many
//! token cycles. No I/O and no sleeping: the simulator tests (`tests/simulate.rs`) and the `expiry-report` example
//! run hundreds of one-hour tokens in milliseconds.
//!
//! (Over 400 lines: the model, the pollers and the driver share their types, and each behaviour reads beside the
//! rule that produces it.)
//!
//! The model: token `j` is issued at `I_j` and expires at `E_j = I_j + lifetime`. Pipedream plans its refresh at
//! `P_j = E_j − lead` (its `next_refresh_at`) and performs it `late_j` later, at `A_j`, which issues token `j+1`.
//! A refresh at or after `E_j − NEAR_EXPIRY` is *late*: from `E_j` until the operator's next fetch after `A_j`, a
//! Secret cannot hold a valid token without guessing. **Exposure** is the time a Secret holds an expired token
//! while Pipedream serves a valid one. **Pod exposure** is the time pods hold one: they see each Secret write a
//! kubelet propagation time later (its worst case), and for a token Pipedream refreshed at least the offered lead
//! before expiry it must be zero.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, tz::Offset};

use crate::schedule::{self, FailureClass, Policy, add, after_failure, after_fetch, between};

/// A refresh this close to expiry (or later) counts as late: second-precision timestamps and a fetch's round trip
/// leave no room to fetch its token before the old one expires.
pub const NEAR_EXPIRY: Duration = Duration::from_secs(3);

/// How Pipedream writes timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// `2026-11-22T09:00:00.123Z` (what the API documents).
    Millis,
    /// `2026-11-22T09:00:00Z`, truncated.
    Seconds,
    /// `2026-11-22T11:00:00.123+02:00`.
    Offset,
}

/// One account's behaviour at Pipedream.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Lifetime of each token.
    pub lifetime: Duration,
    /// Pipedream plans its refresh this long before expiry.
    pub lead: Duration,
    /// How long after the planned time each refresh happens, cycle by cycle (the list repeats; empty: on time).
    pub late: Vec<Duration>,
    /// While a refresh is overdue Pipedream retries it at this period and reports the next try as
    /// `next_refresh_at`; `None`: `next_refresh_at` stays at the missed time.
    pub announce_retries: Option<Duration>,
    /// The refresh after this many tokens fails for good: the account is dead from then on.
    pub dead_after: Option<usize>,
    /// Pipedream's clock minus ours (its `Date` header and timestamps use its clock).
    pub skew: SignedDuration,
    /// How timestamps are written.
    pub format: TimeFormat,
    /// Round trip of one fetch: the answer is computed when the request is sent and seen this much later.
    pub latency: Duration,
}

impl Default for Upstream {
    /// One-hour tokens refreshed five minutes early, on time, no skew.
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(3600),
            lead: Duration::from_secs(300),
            late: Vec::new(),
            announce_retries: None,
            dead_after: None,
            skew: SignedDuration::ZERO,
            format: TimeFormat::Millis,
            latency: Duration::from_millis(150),
        }
    }
}

/// One token's life.
#[derive(Clone, Copy, Debug)]
struct Token {
    issued: Timestamp,
    expires: Timestamp,
    planned: Timestamp,
    /// When the next token is issued; `None` for the last token of a dead account.
    refreshed: Option<Timestamp>,
}

impl Token {
    fn late(&self) -> bool {
        self.refreshed
            .is_some_and(|a| add(a, NEAR_EXPIRY) > self.expires)
    }
}

/// Pipedream's side over the whole run.
struct Timeline {
    up: Upstream,
    tokens: Vec<Token>,
    dead_from: Option<Timestamp>,
}

impl Timeline {
    fn new(up: &Upstream, start: Timestamp, end: Timestamp) -> Self {
        let mut tokens = Vec::new();
        let mut dead_from = None;
        let mut issued = start;
        while issued <= end {
            let j = tokens.len();
            let expires = add(issued, up.lifetime);
            let planned = schedule::sub(expires, up.lead).max(issued);
            let late = if up.late.is_empty() {
                Duration::ZERO
            } else {
                up.late[j % up.late.len()]
            };
            let mut at = add(planned, late);
            if let Some(p) = up
                .announce_retries
                .filter(|p| !p.is_zero() && !late.is_zero())
            {
                // Overdue refreshes happen only at announced retries.
                let tries = late.as_nanos().div_ceil(p.as_nanos()) as u32;
                at = add(planned, p * tries);
            }
            let at = at.max(add(issued, Duration::from_millis(1)));
            let dies = up.dead_after.is_some_and(|d| j + 1 >= d);
            if dies {
                dead_from = Some(planned);
            }
            tokens.push(Token {
                issued,
                expires,
                planned,
                refreshed: (!dies).then_some(at),
            });
            if dies {
                break;
            }
            issued = at;
        }
        Self {
            up: up.clone(),
            tokens,
            dead_from,
        }
    }

    /// The token Pipedream serves at `t`.
    fn current(&self, t: Timestamp) -> usize {
        self.tokens
            .partition_point(|k| k.issued <= t)
            .saturating_sub(1)
    }

    fn dead(&self, t: Timestamp) -> bool {
        self.dead_from.is_some_and(|d| t >= d)
    }

    /// Whether Pipedream could hand out a valid token at `t`.
    fn valid(&self, t: Timestamp) -> bool {
        !self.dead(t) && t < self.tokens[self.current(t)].expires
    }

    /// Time in `[a, b)` during which Pipedream had a valid token (sampled exactly at the model's breakpoints).
    fn valid_within(&self, a: Timestamp, b: Timestamp) -> Duration {
        if a >= b {
            return Duration::ZERO;
        }
        let mut points = vec![a, b];
        let first = self.current(a).saturating_sub(1);
        let last = self.tokens.partition_point(|k| k.issued < b);
        for k in &self.tokens[first..last.max(first)] {
            for p in [Some(k.issued), Some(k.expires), k.refreshed, self.dead_from] {
                if let Some(p) = p.filter(|p| *p > a && *p < b) {
                    points.push(p);
                }
            }
        }
        points.sort();
        points.dedup();
        points
            .windows(2)
            .filter(|w| self.valid(w[0]))
            .map(|w| between(w[0], w[1]))
            .sum()
    }

    fn format(&self, t: Timestamp) -> String {
        let t = t.saturating_add(self.up.skew).unwrap_or(t);
        match self.up.format {
            TimeFormat::Millis => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            TimeFormat::Seconds => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            TimeFormat::Offset => {
                let offset = Offset::constant(2);
                t.to_zoned(offset.to_time_zone())
                    .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
                    .to_string()
            }
        }
    }

    /// What a fetch sent at `t` returns: `expires_at`, `next_refresh_at` (as Pipedream writes them), and the
    /// `Date` header (Pipedream's clock, whole seconds); `None` for a dead account.
    fn answer(&self, t: Timestamp) -> Option<(usize, String, String, Timestamp)> {
        if self.dead(t) {
            return None;
        }
        let j = self.current(t);
        let k = self.tokens[j];
        let mut next = k.planned;
        if let (Some(p), true) = (self.up.announce_retries, t >= k.planned) {
            let overdue = between(k.planned, t).as_nanos() / p.as_nanos().max(1);
            next = add(k.planned, p * (overdue as u32 + 1));
        }
        let server = t.saturating_add(self.up.skew).unwrap_or(t);
        let date = Timestamp::from_second(server.as_second()).unwrap_or(server);
        Some((j, self.format(k.expires), self.format(next), date))
    }
}

/// What happened over a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Fetches made.
    pub calls: u32,
    /// Tokens Pipedream issued.
    pub tokens: u32,
    /// Refreshes at or after expiry (see [`NEAR_EXPIRY`]).
    pub late_refreshes: u32,
    /// Total exposure.
    pub exposure: Duration,
    /// Longest single stretch of exposure.
    pub worst_exposure: Duration,
    /// Exposure while holding a token Pipedream refreshed on time (must be zero for this operator).
    pub unexplained_exposure: Duration,
    /// Most fetches made while one held token was still valid.
    pub max_calls_while_valid: u32,
    /// Shortest wait the schedule ever chose.
    pub min_delay: Duration,
    /// Time pods held an expired token that Pipedream had refreshed in time for them (see [`PodView`]).
    pub pod_exposure: Duration,
    /// Longest such stretch.
    pub worst_pod_exposure: Duration,
    /// Tokens Pipedream refreshed in time for pods.
    pub refreshed_in_time_for_pods: u32,
}

/// How pods see the Secret in a run.
#[derive(Clone, Copy, Debug)]
pub struct PodView {
    /// A Secret write reaches pods this long after it (the kubelet's worst case: `syncFrequency` × 1.5).
    pub kubelet: Duration,
    /// Pod exposure counts for tokens Pipedream refreshed at least this long before they expired.
    pub offered_ahead: Duration,
}

impl Outcome {
    /// Fetches per token issued.
    pub fn calls_per_token(&self) -> f64 {
        f64::from(self.calls) / f64::from(self.tokens.max(1))
    }
}

/// Who decides when to fetch.
#[derive(Clone, Copy, Debug)]
pub enum Poller {
    /// This operator's schedule, with its per-object jitter fraction.
    Operator { policy: Policy, jitter: f64 },
    /// A fixed interval (other operators), first fetch after `phase`.
    Fixed { every: Duration, phase: Duration },
}

/// Run `poller` against `up` for `cycles` token lifetimes from `start`.
pub fn run(up: &Upstream, poller: Poller, start: Timestamp, cycles: u32) -> Outcome {
    run_with_pods(up, poller, start, cycles, None)
}

/// [`run`], also measuring what pods hold when they see writes as `pods` says.
/// Long because it is the simulation's loop over the operator's polls (a call, the token Pipedream holds at that
/// instant, the write, the next poll) with the pods' measurements beside it; every step updates the same counters.
pub fn run_with_pods(
    up: &Upstream,
    poller: Poller,
    start: Timestamp,
    cycles: u32,
    pods: Option<PodView>,
) -> Outcome {
    let end = add(start, up.lifetime.saturating_mul(cycles));
    let tl = Timeline::new(up, start, end);
    let mut out = Outcome {
        min_delay: Duration::MAX,
        ..Outcome::default()
    };
    out.tokens = tl.tokens.iter().filter(|k| k.issued < end).count() as u32;
    out.late_refreshes = tl
        .tokens
        .iter()
        .filter(|k| k.late() && k.refreshed.is_some_and(|a| a < end))
        .count() as u32;
    let in_time = |k: &Token| {
        pods.is_some_and(|p| {
            k.refreshed
                .is_some_and(|a| add(a, p.offered_ahead) <= k.expires)
        })
    };
    out.refreshed_in_time_for_pods = tl
        .tokens
        .iter()
        .filter(|k| in_time(k) && k.refreshed.is_some_and(|a| a < end))
        .count() as u32;
    // Pods hold token `j` until a later one has been written for a kubelet's propagation time.
    let pod_stretch = |out: &mut Outcome, j: usize, replaced: Timestamp| {
        let (Some(p), k) = (pods, tl.tokens[j]) else {
            return;
        };
        if in_time(&k) {
            let stretch = between(k.expires, add(replaced, p.kubelet).min(end));
            out.pod_exposure += stretch;
            out.worst_pod_exposure = out.worst_pod_exposure.max(stretch);
        }
    };
    // (token index, its true expiry, its observed expiry, fetches made while it was valid)
    let mut held: Option<(usize, Timestamp, Option<Timestamp>, u32)> = None;
    let mut written = start;
    let mut failures = 0u32;
    let mut t = match poller {
        Poller::Fixed { phase, .. } => add(start, phase),
        Poller::Operator { .. } => start,
    };
    while t < end {
        out.calls += 1;
        let received = add(t, up.latency);
        if let Some((j, e, _, calls)) = held.as_mut() {
            if t < *e {
                *calls += 1;
                out.max_calls_while_valid = out.max_calls_while_valid.max(*calls);
            }
            let stretch = tl.valid_within(written.max(*e), received.min(end));
            out.exposure += stretch;
            out.worst_exposure = out.worst_exposure.max(stretch);
            if !tl.tokens[*j].late() {
                out.unexplained_exposure += stretch;
            }
        }
        let answer = tl.answer(t);
        let next = match (answer, poller) {
            (Some((j, e, r, date)), poller) => {
                failures = 0;
                let parse = |s: &str| schedule::parse_ts(s);
                let obs =
                    schedule::observe(parse(&e), parse(&r), Some(date), received, Duration::ZERO);
                let true_e = tl.tokens[j].expires;
                if let Some(h) = held.filter(|h| h.0 != j) {
                    pod_stretch(&mut out, h.0, received);
                }
                let same = held.is_some_and(|h| h.0 == j);
                let calls = held.filter(|_| same).map_or(0, |h| h.3);
                held = Some((j, true_e, obs.expires_at, calls));
                match poller {
                    Poller::Operator { policy, jitter } => {
                        after_fetch(received, obs, policy, jitter).at
                    }
                    Poller::Fixed { every, .. } => add(t, every),
                }
            }
            (None, Poller::Operator { .. }) => {
                let held_expiry = held.and_then(|h| h.2);
                let propagation = match poller {
                    Poller::Operator { policy, .. } => policy.propagation,
                    Poller::Fixed { .. } => Duration::ZERO,
                };
                let retry = after_failure(
                    received,
                    failures,
                    held_expiry,
                    propagation,
                    FailureClass::Permanent,
                    None,
                );
                failures += 1;
                add(received, retry.delay)
            }
            (None, Poller::Fixed { every, .. }) => add(t, every),
        };
        if matches!(poller, Poller::Operator { .. }) {
            out.min_delay = out.min_delay.min(between(received, next));
            if next <= received {
                // Reported through min_delay == 0; stop rather than loop forever.
                break;
            }
        }
        // Exposure up to `received` is counted; the next stretch starts here.
        written = written.max(received);
        t = next;
    }
    if let Some((j, e, _, _)) = held {
        pod_stretch(&mut out, j, end);
        let stretch = tl.valid_within(written.max(e), end);
        out.exposure += stretch;
        out.worst_exposure = out.worst_exposure.max(stretch);
        if !tl.tokens[j].late() {
            out.unexplained_exposure += stretch;
        }
    }
    if out.min_delay == Duration::MAX {
        out.min_delay = Duration::ZERO;
    }
    out
}

/// The named behaviours of the simulator tests and the report.
///
/// Long because it is a table: one entry per behaviour.
pub fn behaviours() -> Vec<(&'static str, Upstream)> {
    let s = Duration::from_secs;
    let base = Upstream::default();
    vec![
        ("on time (1 h, lead 5 min)", base.clone()),
        (
            "lead 0 (refresh at expiry)",
            Upstream {
                lead: Duration::ZERO,
                ..base.clone()
            },
        ),
        (
            "late 1-90 s past expiry",
            Upstream {
                late: [1, 7, 30, 61, 90, 0, 45].map(|x| s(300 + x)).to_vec(),
                ..base.clone()
            },
        ),
        (
            "failing 5 min, retries announced",
            Upstream {
                late: vec![s(300 + 300), Duration::ZERO],
                announce_retries: Some(s(60)),
                ..base.clone()
            },
        ),
        (
            "failing 5 min, silent",
            Upstream {
                late: vec![s(300 + 300), Duration::ZERO],
                ..base.clone()
            },
        ),
        (
            "dead after 3 tokens",
            Upstream {
                dead_after: Some(3),
                ..base.clone()
            },
        ),
        (
            "second-precision timestamps",
            Upstream {
                format: TimeFormat::Seconds,
                late: vec![Duration::ZERO, s(310)],
                ..base.clone()
            },
        ),
        (
            "offset +02:00, late 20 s",
            Upstream {
                format: TimeFormat::Offset,
                late: vec![s(320)],
                ..base.clone()
            },
        ),
        (
            "clock skew +30 s",
            Upstream {
                skew: SignedDuration::from_secs(30),
                late: vec![Duration::ZERO, s(305)],
                ..base.clone()
            },
        ),
        (
            "clock skew -30 s",
            Upstream {
                skew: SignedDuration::from_secs(-30),
                late: vec![Duration::ZERO, s(305)],
                ..base.clone()
            },
        ),
        (
            "pods: 150 s tokens, lead 120 s",
            Upstream {
                lifetime: s(150),
                lead: s(120),
                ..base.clone()
            },
        ),
        (
            "pods: 180 s tokens, lead 100 s",
            Upstream {
                lifetime: s(180),
                lead: s(100),
                ..base.clone()
            },
        ),
        (
            "pods: 240 s tokens, lead 150 s",
            Upstream {
                lifetime: s(240),
                lead: s(150),
                ..base.clone()
            },
        ),
        (
            "60 s tokens, lead 10 s (< beforeExpiry)",
            Upstream {
                lifetime: s(60),
                lead: s(10),
                late: vec![Duration::ZERO, Duration::ZERO, s(15)],
                ..base.clone()
            },
        ),
    ]
}
