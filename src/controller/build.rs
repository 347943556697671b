//! The build step of a pass, without a client: from an answer, the spec and the Secret's previous data to the
//! Secret to apply ([`secret`]) and whether pods get it in time ([`pod_risk`]); from a pass's outcome and the old
//! status to what it reports ([`outcome`](super::outcome)). Rendering a template runs off the async runtime,
//! under the template's own limits.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use tracing::warn;

use super::fetch::CachedFetch;
use super::outcome::{PodRisk, Synced, Written};
use super::plan::{Cause, Judged};
use super::restart;
use super::spec::Validated;
use super::subject::Subject;
use crate::crd::AccountSummary;
use crate::pipedream::Credentials;
use crate::reason::{Reason, SyncFailure};
use crate::schedule::{self, Observed, Policy, format_ts};
use crate::secret::{data_hash, data_size, desired_secret};
use crate::template::{self, RENDER_DEADLINE};

/// The Secret an answer makes, with what status reports about it.
#[derive(Clone, Debug)]
pub struct Built {
    /// The object to server-side apply (only the fields this ConnectedAccount owns).
    pub secret: Secret,
    /// `sha256:` of its data.
    pub hash: String,
    /// Expiry of the credentials (RFC 3339, local clock).
    pub expires_at: Option<String>,
    /// When to fetch next: the schedule's time, until a refresh slot is booked for it.
    pub next: Timestamp,
    /// The latest a booked slot may move `next` to.
    pub latest_next: Timestamp,
    /// What Pipedream said about the account.
    pub account: AccountSummary,
    /// The answer's expiry and refresh time, on the local clock (conservative).
    pub observed: Observed,
    /// How long before expiry Pipedream refreshes (see [`plan::Timing::announced_lead`]).
    pub announced_lead: Option<std::time::Duration>,
}

impl Built {
    /// Pipedream's refresh lead, while that refresh is still ahead at `now`.
    pub fn upcoming_lead(&self, now: Timestamp) -> Option<std::time::Duration> {
        self.observed
            .next_refresh_at
            .filter(|r| *r > now)
            .and(self.announced_lead)
    }
}

/// How much later than the propagation time before expiry a write may come and still count as in time: the
/// schedule fetches up to [`schedule::AFTER_REFRESH_DELAY`] after Pipedream's refresh, and HTTP dates have second
/// precision ([`schedule::SKEW_TOLERANCE`]). Without it, a Pipedream refreshing exactly the propagation time ahead
/// (in time) was reported as a risk.
pub const WRITE_ALLOWANCE: std::time::Duration =
    schedule::AFTER_REFRESH_DELAY.saturating_add(schedule::SKEW_TOLERANCE);

/// Whether pods get credentials in time after a pass at `now` that holds an answer whose next refresh by Pipedream,
/// still ahead, comes `announced` before its expiry and, when `replaced` is set, writes it in place of credentials
/// expiring then: Pipedream's next refresh must come at least the propagation time before the new credentials
/// expire, and the write
/// at least that long before the replaced ones do, less [`WRITE_ALLOWANCE`] (the schedule's own wait after
/// Pipedream's refresh, which the propagation time's default counts in). Pure.
pub fn pod_risk(
    policy: Policy,
    announced: Option<std::time::Duration>,
    now: Timestamp,
    replaced: Option<Timestamp>,
) -> PodRisk {
    let p = policy.propagation;
    let lead = replaced.map(|e| schedule::between(now, e));
    if p.is_zero() {
        return PodRisk {
            at_risk: false,
            message:
                "spec.refresh.propagationTime is 0s: consumers read the Secret through the API"
                    .into(),
            lead,
        };
    }
    let need = format!(
        "pods need {}s (spec.refresh.propagationTime) for a Secret change to reach them",
        p.as_secs()
    );
    if let Some(l) = lead.filter(|l| *l + WRITE_ALLOWANCE < p) {
        return PodRisk {
            at_risk: true,
            message: format!(
                "the new credentials were written {}s before the ones they replaced expired; {need}, so pods may read expired credentials for up to {}s",
                l.as_secs(),
                (p - l).as_secs()
            ),
            lead,
        };
    }
    if let Some(a) = announced.filter(|a| *a < p) {
        return PodRisk {
            at_risk: true,
            message: format!(
                "Pipedream refreshes these credentials {}s before they expire (next_refresh_at); {need}, so pods may read expired credentials for up to {}s",
                a.as_secs(),
                (p - a).as_secs()
            ),
            lead,
        };
    }
    PodRisk {
        at_risk: false,
        message: format!(
            "new credentials reach pods in time: {}s or more before the ones they replace expire",
            p.as_secs()
        ),
        lead,
    }
}

/// Everything [`secret`] builds from.
pub struct Inputs<'a> {
    /// The ConnectedAccount.
    pub subject: &'a Subject<'a>,
    /// Its checked spec.
    pub validated: Validated,
    /// The answer, judged writable by `plan::decide`.
    pub judged: &'a Judged,
    /// The data the Secret holds now, when known: a credential field Pipedream sends as `null` keeps its value.
    pub previous: Option<&'a BTreeMap<String, Vec<u8>>>,
    /// Now.
    pub now: Timestamp,
    /// Per-object jitter of the schedule.
    pub jitter: f64,
}

/// Whether the answer has credential fields sent as `null` (their previous values are needed to keep them).
pub fn has_null_fields(answer: &CachedFetch) -> bool {
    answer
        .fetched
        .account
        .credentials
        .as_ref()
        .is_some_and(|c| c.expose().values().any(serde_json::Value::is_null))
}

/// The Secret a judged answer makes, or why it makes none: a render that fails or runs too long, data that is
/// empty or too large for a Secret.
pub async fn secret(i: Inputs<'_>) -> Result<Built, SyncFailure> {
    let (account, timing) = (&i.judged.answer.fetched.account, &i.judged.timing);
    let id = &i.subject.spec.account_id;
    if let Some(e) = timing.ignored_expiry {
        warn!(account = %id, expires_at = %e, "Pipedream's expires_at is more than a year ahead and is not believed: the credentials are checked every spec.refresh.interval");
    }
    let expires_at = timing.expires_at.map(format_ts);
    let data = secret_data(&i, i.judged.credentials.clone(), expires_at.as_deref()).await?;
    if data.is_empty() {
        return Err(SyncFailure::new(
            Reason::CredentialsUnavailable,
            format!("account {id} has no usable credential fields"),
        ));
    }
    let size = data_size(&data);
    if size > template::MAX_SECRET_DATA_BYTES {
        return Err(SyncFailure::new(
            Reason::SecretWriteFailed,
            format!(
                "the Secret data would be {size} bytes; a Secret holds at most {} bytes",
                template::MAX_SECRET_DATA_BYTES
            ),
        ));
    }
    let hash = data_hash(data.iter().map(|(k, v)| (k, v.as_slice())));
    let next = schedule::after_fetch(i.now, timing.observed, i.validated.policy, i.jitter);
    let latest_next = schedule::latest_booking(next, timing.observed, i.validated.policy);
    let next = next.at;
    Ok(Built {
        secret: desired_secret(
            &i.subject.writer,
            &i.subject.spec.target,
            &data,
            expires_at.as_deref(),
        ),
        hash,
        expires_at,
        next,
        latest_next,
        account: AccountSummary {
            app: account.app_slug().map(str::to_string),
            external_id: account.external_id.clone(),
            healthy: account.healthy,
            dead: account.dead,
        },
        observed: timing.observed,
        announced_lead: timing.announced_lead,
    })
}

/// The Secret's data: the templates rendered off the shared workers (bounded in fuel and in time), or the
/// credential fields as they are (a field sent as null keeps its `previous` value).
async fn secret_data(
    i: &Inputs<'_>,
    credentials: Credentials,
    expires_at: Option<&str>,
) -> Result<BTreeMap<String, Vec<u8>>, SyncFailure> {
    let Some(t) = &i.subject.spec.target.template else {
        let (d, skipped) = template::raw_data(&credentials, i.previous);
        if !skipped.is_empty() {
            warn!(keys = ?skipped, "credential fields with names that are not valid Secret keys were skipped");
        }
        return Ok(d);
    };
    let (templates, fetched, exp) = (
        t.data.clone(),
        i.judged.answer.fetched.clone(),
        expires_at.map(str::to_string),
    );
    let render = tokio::task::spawn_blocking(move || {
        template::render(&templates, &credentials, &fetched.account, exp.as_deref())
    });
    // The render's fuel bounds it (see `template::fuel_for`); the wait for it is bounded as well, so a reconcile
    // worker is never held past the deadline whatever the render does.
    let waited = RENDER_DEADLINE + Duration::from_secs(1);
    match tokio::time::timeout(waited, render).await {
        Ok(Ok(rendered)) => {
            rendered.map_err(|e| SyncFailure::new(Reason::InvalidSpec, e.to_string()))
        }
        Ok(Err(_)) => Err(SyncFailure::new(
            Reason::InvalidSpec,
            "spec.target.template: rendering failed",
        )),
        Err(_) => Err(SyncFailure::new(
            Reason::InvalidSpec,
            format!(
                "spec.target.template: rendering took longer than {} s",
                RENDER_DEADLINE.as_secs()
            ),
        )),
    }
}

/// How a write pass left the Secret built from its answer.
pub struct Wrote {
    /// It was written (else it already held this).
    pub written: bool,
    /// The Secret existed before the pass.
    pub existed: bool,
    /// Why the answer was written.
    pub cause: Cause,
    /// The Secret's resourceVersion after the pass.
    pub version: Option<String>,
    /// The connection used, as `Kind/name`.
    pub connection: String,
    /// The refresh policy.
    pub policy: Policy,
    /// Now.
    pub now: Timestamp,
}

impl Built {
    /// What a pass that left this Secret as `w` says: what was written, and whether pods get it in time.
    pub fn synced(self, subject: &Subject<'_>, w: Wrote) -> Synced {
        let st = &subject.status;
        let same_data = st.data_hash.as_deref() == Some(self.hash.as_str());
        // New data in place of credentials that expire: how long before they do.
        let replaced = (!same_data)
            .then(|| st.expires_at.as_deref().and_then(schedule::parse_ts))
            .flatten();
        let pod_risk = pod_risk(w.policy, self.upcoming_lead(w.now), w.now, replaced);
        let written = w
            .written
            .then(|| written(w.existed, w.cause, same_data, subject.spec_changed()));
        Synced {
            secret_name: subject.secret.name.clone(),
            connection: Some(w.connection),
            expires_at: self.expires_at,
            next: self.next,
            account: Some(self.account),
            data_hash: Some(self.hash),
            confirmed: true,
            written,
            restart: restart::Outcome::default(),
            pod_risk: Some(pod_risk),
            secret_version: w.version,
        }
    }
}

/// What a write is: a Secret that did not exist is created; one restored to the data last written, for no
/// change of spec, had drifted; anything else is new data.
fn written(existed: bool, cause: Cause, same_data: bool, spec_changed: bool) -> Written {
    match (
        existed,
        cause == Cause::Repair && same_data && !spec_changed,
    ) {
        (_, true) => Written::DriftCorrected,
        (false, false) => Written::SecretCreated,
        (true, false) => Written::SecretUpdated,
    }
}

#[cfg(test)]
mod tests;
