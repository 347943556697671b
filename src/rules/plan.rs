//! The pure half of a pass: from what it knows ([`Facts`], read off the object, the operator's memory, the Secret
//! index and the answer cache) to the one thing it does ([`Step`]); and what an answer from Pipedream allows.
//! No I/O. (Over 400 lines: the decision and the judgement of an answer are one policy; tests live in plan/tests.rs.)

use std::time::Duration;

use jiff::Timestamp;

use super::answer::{Attempt, CachedFetch, Urgency};
use super::spec::Validated;
use crate::access::{self, Admission};
use crate::pipedream::{Account, Credentials};
use crate::reason::{Reason, SyncFailure};
use crate::schedule::{self, NextFetch, Observed, Policy, add, format_ts, parse_ts};

/// At most one forced fetch per object this often; a newer force-sync value waits for the rest.
pub const FORCE_DEBOUNCE: Duration = Duration::from_secs(10);
/// A failed object whose spec changes retries at once, but at most this often: a spec edited in a loop (a bogus
/// account id, say) cannot turn into a loop of Pipedream calls.
pub const SPEC_EDIT_DEBOUNCE: Duration = Duration::from_secs(10);
/// Re-check a pass waiting for its fetch this long after asking (the fetch normally triggers it first).
pub const PENDING_RECHECK: Duration = Duration::from_secs(300);
/// A retry this soon is not written to status (it is in memory; after a restart the object is retried at once
/// anyway), so polling expired credentials does not rewrite status every second.
pub const UNPERSISTED_RETRY: Duration = Duration::from_secs(60);

/// What the object's status and annotations say.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// A force-sync value not acted upon yet.
    pub forced: Option<String>,
    /// The spec changed since the status was written.
    pub spec_changed: bool,
    /// `status.nextSyncTime` (or the later one this process wrote, if the cached object predates it).
    pub next_due: Option<Timestamp>,
    /// Ready is False.
    pub failed: bool,
    /// Ready is True.
    pub ready: bool,
    /// `status.expiresAt`: when the credentials in the Secret expire.
    pub held_expiry: Option<Timestamp>,
}

/// What the operator remembers of the object between passes.
#[derive(Clone, Debug, Default)]
pub struct Remembered {
    /// Not before this time after a failure.
    pub retry_at: Option<Timestamp>,
    /// Last time a force-sync made it fetch.
    pub last_forced: Option<Timestamp>,
    /// The connection changed since a failure it caused.
    pub connection_changed: bool,
    /// When the last failed pass happened.
    pub last_failed: Option<Timestamp>,
    /// A fetch this object asked for has not been used yet.
    pub asked: bool,
}

/// The target Secret, as far as the pass knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretFacts {
    /// Exactly as the operator last wrote or read it (the index holds the recorded resourceVersion), or read and
    /// found holding the data last written.
    AsWritten,
    /// Its data differs from what was last written, or it was deleted: restore it.
    Drifted,
    /// The operator has never written it (a first write).
    New,
    /// It belongs to someone else (or Merge has nothing to merge into): never written.
    Conflict(String),
    /// It has another type than the spec asks for, and a Secret's type never changes: never written.
    WrongType(String),
}

impl SecretFacts {
    /// Why the Secret is never written, if so.
    fn refusal(&self) -> Option<SyncFailure> {
        match self {
            Self::Conflict(m) => Some(SyncFailure::new(Reason::SecretConflict, m.clone())),
            Self::WrongType(m) => Some(SyncFailure::new(Reason::InvalidSpec, m.clone())),
            _ => None,
        }
    }
}

/// The answer the pass can use.
#[derive(Clone, Debug)]
pub enum Answer {
    /// The fetch this object asked for completed.
    Arrived(Attempt),
    /// It asked; the answer is not in yet.
    Awaited,
    /// Nothing asked; the last good answer for the account through this connection, if any.
    Last(Option<CachedFetch>),
}

/// Everything a pass decides on.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Now.
    pub now: Timestamp,
    /// The spec, checked.
    pub spec: Result<Validated, SyncFailure>,
    /// Status and annotations.
    pub recorded: Recorded,
    /// Memory.
    pub remembered: Remembered,
    /// The target Secret.
    pub secret: SecretFacts,
    /// The target Secret exists (a missing one is the most urgent fetch).
    pub secret_exists: bool,
    /// The ConnectedAccount's `spec.accountId`.
    pub account_id: String,
    /// The connection: usable, or why not.
    pub connection: Result<Usable, SyncFailure>,
    /// The answer.
    pub answer: Answer,
    /// Deterministic per object, in [0, 1): spreads refreshes of accounts minted together.
    pub jitter: f64,
}

/// A connection a pass can use: the narrowing its access rules apply to accounts, and its name for messages.
#[derive(Clone, Debug)]
pub struct Usable {
    /// Which accounts the connection admits for this namespace.
    pub admission: Admission,
    /// The connection, as messages name it.
    pub name: String,
}

/// An answer judged writable by [`decide`].
#[derive(Clone, Debug)]
pub struct Judged {
    /// The answer.
    pub answer: CachedFetch,
    /// Its credentials.
    pub credentials: Credentials,
    /// Its times on the local clock.
    pub timing: Timing,
    /// Why the Secret is written.
    pub cause: Cause,
}

/// Why a Secret is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A new answer (or a still-fresh earlier one for a new or changed object).
    Sync,
    /// The Secret drifted and is restored from the last answer.
    Repair,
}

/// What a pass does: one of these, decided before any write.
#[derive(Clone, Debug)]
pub enum Step {
    /// Nothing until this time: a failed object waiting for its retry, or a debounced force-sync.
    Wait(Timestamp),
    /// The Secret is right and nothing is due before this time.
    Keep(Timestamp),
    /// Ask the connection's dispatcher; its answer triggers the next pass.
    Fetch {
        /// How soon: orders the connection's queue.
        urgency: Urgency,
    },
    /// Build the Secret from this judged answer and write it if it differs.
    Write(Box<Judged>),
    /// Report this failure; the Secret stays as it is.
    Fail(SyncFailure),
}

/// What the pass must do about the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The Secret is right and nothing is due.
    Nothing,
    /// The Secret differs from what was written: restore it from the last answer (fetch only without one).
    Repair,
    /// Fetch from Pipedream; `reuse` allows a still-fresh earlier answer (first sync, spec change, retry after a
    /// failure) instead of a new call.
    Fetch {
        /// An earlier answer that is still fresh will do.
        reuse: bool,
    },
}

impl Recorded {
    /// The scheduled fetch time has come (or none is known).
    pub fn due(&self, now: Timestamp) -> bool {
        self.next_due.is_none_or(|t| now >= t)
    }
}

/// The waits of [`decide`], which need nothing read: a failed object's retry time, a debounced force-sync.
pub fn hold(r: &Recorded, m: &Remembered, now: Timestamp) -> Option<Timestamp> {
    wait_for_retry(r, m, now).or_else(|| (!m.asked).then(|| force_wait(r, m, now)).flatten())
}

/// The one decision of a pass.
pub fn decide(f: &Facts) -> Step {
    if let Some(at) = wait_for_retry(&f.recorded, &f.remembered, f.now) {
        return Step::Wait(at);
    }
    let arrived = matches!(f.answer, Answer::Arrived(_));
    if !arrived && let Some(at) = force_wait(&f.recorded, &f.remembered, f.now) {
        return Step::Wait(at);
    }
    let validated = match &f.spec {
        Ok(v) => v,
        Err(e) => return Step::Fail(e.clone()),
    };
    if let Some(refused) = f.secret.refusal() {
        return Step::Fail(refused);
    }
    let need = need(&f.recorded, f.now, f.secret == SecretFacts::Drifted);
    if need == Need::Nothing && matches!(f.answer, Answer::Last(_)) {
        return Step::Keep(f.recorded.next_due.unwrap_or(f.now));
    }
    let usable = match &f.connection {
        Ok(u) => u,
        Err(e) => return Step::Fail(e.clone()),
    };
    let cause = if need == Need::Repair {
        Cause::Repair
    } else {
        Cause::Sync
    };
    let reusable = match (&f.answer, need) {
        (Answer::Arrived(Attempt::Ok(c)), _) => return judged(f, usable, c, cause, validated),
        (Answer::Arrived(Attempt::Failed(e)), _) => {
            let failure: SyncFailure = e.clone().into();
            // Where the connection narrows which accounts this namespace may use, a missing account is reported
            // as not admitted: a tenant cannot tell an account id that exists from one that does not.
            let hidden =
                failure.reason == Reason::AccountNotFound && access::narrows(&usable.admission);
            return Step::Fail(if hidden {
                access_denied(&f.account_id, &usable.name)
            } else {
                failure
            });
        }
        // Asked already: asking again joins the queued fetch; nothing is written before it arrives.
        (Answer::Awaited, _) => None,
        (Answer::Last(last), Need::Nothing | Need::Repair) => last.clone(),
        (Answer::Last(last), Need::Fetch { reuse: true }) => last
            .clone()
            .filter(|c| still_fresh(c, f.now, validated.policy, f.jitter)),
        (Answer::Last(_), Need::Fetch { reuse: false }) => None,
    };
    match reusable {
        Some(c) => judged(f, usable, &c, cause, validated),
        None => Step::Fetch {
            urgency: urgency(&f.recorded, f.now, f.secret_exists),
        },
    }
}

/// A write of `answer`, once it is judged: the account asked for, admitted by the connection, usable, with
/// credentials, its times parsed, and not expired already. Otherwise the failure to report; so a write that
/// starts fails only for what only writing shows (the render, the size, the API server).
fn judged(
    f: &Facts,
    usable: &Usable,
    answer: &CachedFetch,
    cause: Cause,
    validated: &Validated,
) -> Step {
    let account = &answer.fetched.account;
    let wanted = &f.account_id;
    let credentials = match judge(account, wanted, &usable.admission, &usable.name) {
        Ok(c) => c.clone(),
        Err(e) => return Step::Fail(e),
    };
    let timing = match timing(answer) {
        Ok(t) => t,
        Err(e) => return Step::Fail(e),
    };
    if timing.observed.expires_at.is_some_and(|e| e <= f.now) {
        let next = schedule::after_fetch(f.now, timing.observed, validated.policy, f.jitter);
        return Step::Fail(expired_answer(wanted, timing.expires_at, next, f.now));
    }
    Step::Write(Box::new(Judged {
        answer: answer.clone(),
        credentials,
        timing,
        cause,
    }))
}

/// When a failed object may try again, if not yet: its own status write (or any other event) must not cause
/// another attempt, and another Pipedream call. A new force-sync value (debounced by [`force_wait`]) or a change
/// to the connection a connection-related failure was about retries at once; a spec change too, unless the last
/// failure is less than [`SPEC_EDIT_DEBOUNCE`] old.
pub fn wait_for_retry(r: &Recorded, m: &Remembered, now: Timestamp) -> Option<Timestamp> {
    if !r.failed || r.forced.is_some() || m.connection_changed {
        return None;
    }
    if r.spec_changed {
        let at = add(m.last_failed?, SPEC_EDIT_DEBOUNCE);
        return (now < at).then_some(at);
    }
    let at = r.next_due.max(m.retry_at)?;
    (now < at).then_some(at)
}

/// When a new force-sync value may fetch, if not yet (one forced fetch per [`FORCE_DEBOUNCE`]).
pub fn force_wait(r: &Recorded, m: &Remembered, now: Timestamp) -> Option<Timestamp> {
    r.forced.as_ref()?;
    let at = add(m.last_forced?, FORCE_DEBOUNCE);
    (now < at).then_some(at)
}

/// What the pass must do about the data, given whether the Secret drifted from what was last written.
pub fn need(r: &Recorded, now: Timestamp, drifted: bool) -> Need {
    if r.forced.is_some() {
        return Need::Fetch { reuse: false };
    }
    if r.due(now) && r.ready && !r.spec_changed {
        return Need::Fetch { reuse: false };
    }
    if r.spec_changed || !r.ready || r.due(now) {
        return Need::Fetch { reuse: true };
    }
    if drifted { Need::Repair } else { Need::Nothing }
}

/// How soon a fetch is needed: a refresh of credentials the Secret holds goes by their expiry, before all else; a
/// missing Secret before other fetches; forced and interval checks by when they are due.
pub fn urgency(r: &Recorded, now: Timestamp, secret_exists: bool) -> Urgency {
    if !secret_exists {
        return Urgency::Missing;
    }
    if r.forced.is_some() {
        return Urgency::By(add(now, Duration::from_secs(300)));
    }
    match r.held_expiry {
        Some(e) => Urgency::Expiring(e),
        None => Urgency::By(r.next_due.unwrap_or(now)),
    }
}

/// When a failed pass retries, and a note for the message when Pipedream asks for longer than the held
/// credentials last. `attempt` counts from 1.
pub fn retry_after_failure(
    f: &SyncFailure,
    attempt: u32,
    held_expiry: Option<Timestamp>,
    propagation: Duration,
    now: Timestamp,
) -> (Duration, Option<String>) {
    if let Some(d) = f.retry_in {
        return (d, None);
    }
    let r = schedule::after_failure(
        now,
        attempt.saturating_sub(1),
        held_expiry,
        propagation,
        f.reason.class(),
        f.retry_after,
    );
    let note = r.past_expiry.then(|| {
        format!(
            "; Pipedream asks to wait {}s, past the expiry of the credentials in the Secret",
            r.delay.as_secs()
        )
    });
    (r.delay, note)
}

/// The timing facts of an answer, on the local clock.
#[derive(Clone, Debug)]
pub struct Timing {
    /// For scheduling (conservative).
    pub observed: Observed,
    /// For status and the Secret annotation.
    pub expires_at: Option<Timestamp>,
    /// An `expires_at` too far ahead to believe (see [`MAX_BELIEVED_LIFETIME`]), treated as none.
    pub ignored_expiry: Option<Timestamp>,
    /// How long before expiry Pipedream refreshes (`expires_at − next_refresh_at`, both Pipedream's, so exact
    /// whatever the clocks: the conservative `observed` pair understates it by the skew correction's margin).
    pub announced_lead: Option<std::time::Duration>,
}

/// An `expires_at` further ahead than this is not believed (see [`timing`]).
pub const MAX_BELIEVED_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(366 * 24 * 3600);

/// Parse and clock-correct an answer's timestamps.
fn timing(c: &CachedFetch) -> Result<Timing, SyncFailure> {
    let parse = |field: &str, v: &Option<String>| -> Result<Option<Timestamp>, SyncFailure> {
        match v.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => parse_ts(s).map(Some).ok_or_else(|| {
                SyncFailure::new(
                    Reason::UpstreamError,
                    format!("Pipedream returned an unparsable {field}"),
                )
            }),
        }
    };
    let account = &c.fetched.account;
    let mut expires = parse("expires_at", &account.expires_at)?;
    let refresh = parse("next_refresh_at", &account.next_refresh_at)?;
    // A token that lives for years is no token Pipedream refreshes (it refreshes OAuth tokens within hours), and
    // believing it would put the next check off to the daily maximum whatever the token really does. It is taken
    // as no expiry: checked every `spec.refresh.interval`, and logged (see `build::secret`).
    let horizon = schedule::add(c.at, MAX_BELIEVED_LIFETIME);
    let ignored_expiry = expires.filter(|e| *e > horizon);
    if ignored_expiry.is_some() {
        expires = None;
    }
    let server = c.fetched.server_time;
    let announced_lead = match (expires, refresh) {
        (Some(e), Some(r)) if r < e => Some(schedule::between(r, e)),
        _ => None,
    };
    Ok(Timing {
        observed: schedule::observe(expires, refresh, server, c.at, c.fetched.round_trip),
        expires_at: expires.map(|e| schedule::display_time(e, server, c.at)),
        ignored_expiry,
        announced_lead,
    })
}

/// Whether an earlier answer is still fresh enough to serve this object without a new call.
pub fn still_fresh(c: &CachedFetch, now: Timestamp, policy: Policy, jitter: f64) -> bool {
    timing(c).is_ok_and(|t| {
        let n = schedule::after_fetch(c.at, t.observed, policy, jitter);
        !n.expired && n.at > now && t.observed.expires_at.is_none_or(|e| e > now)
    })
}

/// The AccessDenied of an account the connection's narrowing does not admit. A narrowed tenant gets the same for
/// an account that does not exist, so it cannot probe which account ids exist.
pub fn access_denied(wanted: &str, connection: &str) -> SyncFailure {
    SyncFailure::new(
        Reason::AccessDenied,
        format!(
            "account {wanted} is not admitted by the access rules of {connection} (externalUserIds, apps or accountIds)"
        ),
    )
}

/// What an answer allows: the credentials to write, or why not. Messages never name another tenant's account
/// details (app, external user).
fn judge<'a>(
    account: &'a Account,
    wanted: &str,
    admission: &Admission,
    connection: &str,
) -> Result<&'a Credentials, SyncFailure> {
    let fail = |r: Reason, m: String| Err(SyncFailure::new(r, m));
    if account.id != wanted {
        return fail(
            Reason::UpstreamError,
            format!("Pipedream answered for another account than {wanted}"),
        );
    }
    if !access::admit_account(admission, account) {
        return Err(access_denied(wanted, connection));
    }
    let upstream_error = account.error.as_ref().map(|e| {
        let text = match e {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect::<String>()
    });
    let suffix = upstream_error.map(|e| format!(": {e}")).unwrap_or_default();
    if account.dead == Some(true) {
        return fail(
            Reason::AccountDead,
            format!("Pipedream marks account {wanted} dead; reconnect it{suffix}"),
        );
    }
    if account.healthy == Some(false) {
        return fail(
            Reason::AccountUnhealthy,
            format!("Pipedream marks account {wanted} unhealthy{suffix}"),
        );
    }
    account
        .credentials
        .as_ref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            SyncFailure::new(
                Reason::CredentialsUnavailable,
                format!(
                    "Pipedream returned no credentials for account {wanted}; OAuth accounts expose credentials only when connected through your own OAuth client"
                ),
            )
        })
}

/// The failure for an answer whose credentials had already expired: not written, polled again soon.
fn expired_answer(
    wanted: &str,
    expires_at: Option<Timestamp>,
    next: NextFetch,
    now: Timestamp,
) -> SyncFailure {
    let mut f = SyncFailure::new(
        Reason::StaleCredentials,
        format!(
            "Pipedream returned credentials for {wanted} that expired at {}; polling every few seconds until it refreshes them",
            expires_at.map(format_ts).unwrap_or_else(|| "?".into())
        ),
    );
    f.retry_in = Some(schedule::between(now, next.at).max(schedule::MIN_DELAY));
    f
}

#[cfg(test)]
mod tests;
