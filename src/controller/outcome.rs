//! What a pass reports, without a client: from how it ended and the status it started from to the new status,
//! whether it needs writing, its Events and how the pass ended for the operator's memory ([`report`]); and the
//! conditions both controllers report, deterministic (a transition time that moves only when the status does).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::controller::memory::Ended;
use crate::controller::plan::{self, Facts};
use crate::controller::restart;
use crate::controller::subject::Subject;
use crate::crd::{AccountSummary, ConnectedAccountStatus};
use crate::reason::{Reason, SyncFailure};
use crate::schedule::{self, format_ts, parse_ts};

/// What a write of the Secret is, for its Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
pub enum Written {
    /// The Secret did not exist.
    SecretCreated,
    /// New data (a refresh, a spec change).
    SecretUpdated,
    /// Restored to the data last written, after someone changed or deleted it.
    DriftCorrected,
}

impl Written {
    /// The Event reason.
    pub fn reason(self) -> &'static str {
        self.into()
    }
}

/// Whether pods get new credentials in time: what the `PodsAtRisk` condition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRisk {
    /// Pods may read expired credentials.
    pub at_risk: bool,
    /// The condition's message.
    pub message: String,
    /// When this pass replaces credentials that expire: how long before their expiry.
    pub lead: Option<std::time::Duration>,
}

pub use crate::crd::PODS_AT_RISK;
/// The Event reason of a rollout restart this operator triggered.
pub const ROLLOUT_RESTARTED: &str = "RolloutRestarted";
/// [`PODS_AT_RISK`]'s reason while pods may read expired credentials.
pub const REFRESH_TOO_LATE: &str = "RefreshTooLate";
/// Its reason otherwise.
pub const IN_TIME: &str = "InTime";
/// How a pass ended, before it is reported.
pub enum Outcome {
    /// Nothing was due: the Secret is as status says.
    Kept(Box<Kept>),
    /// The Secret is right, checked against an answer.
    Synced(Box<Synced>),
    /// It could not be made right; it stays as it was.
    Failed(SyncFailure),
}

/// A pass that found the Secret right and nothing due.
pub struct Kept {
    /// When the next pass is due.
    pub next: Timestamp,
    /// A rollout restart held back by its debounce, if it was due now.
    pub restart: restart::Outcome,
}

/// What [`report`] needs beside the outcome.
pub struct Ending<'a> {
    /// The ConnectedAccount.
    pub subject: &'a Subject<'a>,
    /// What the pass decided from.
    pub facts: &'a Facts,
    /// Consecutive failed passes before this one.
    pub failures: u32,
    /// The connection's resourceVersion (a failure it caused is retried when it changes).
    pub connection_version: Option<&'a str>,
    /// `spec.refresh.propagationTime` (or its default).
    pub propagation: Duration,
}

/// An Event to publish.
pub struct Note {
    /// A Warning (else Normal).
    pub warning: bool,
    /// Its reason.
    pub reason: &'static str,
    /// Its note.
    pub note: String,
}

/// What a pass reports.
pub struct Report {
    /// The new status.
    pub status: ConnectedAccountStatus,
    /// It differs from the old one in a way worth a write.
    pub write_status: bool,
    /// Events, in order.
    pub events: Vec<Note>,
    /// How the pass ended, for the operator's memory.
    pub ended: Ended,
    /// When the next pass is due.
    pub next: Timestamp,
    /// What the log line and the sync counter say.
    pub said: Said,
}

/// What the log line and the sync counter of a pass say.
pub enum Said {
    /// Synced; `confirmed`: against an answer or the index (else only found unchanged, which is not counted).
    Synced {
        confirmed: bool,
        secret: String,
        written: &'static str,
        expires_at: Option<String>,
        next: Timestamp,
    },
    /// Failed, for the `attempt`-th time in a row; retried after `retry_in`.
    Failed {
        failure: SyncFailure,
        attempt: u32,
        retry_in: Duration,
    },
}

/// The report of a pass that ended with `outcome`.
pub fn report(e: &Ending<'_>, outcome: Outcome) -> Report {
    match outcome {
        Outcome::Kept(k) => synced(e, Synced::unchanged(e.subject, *k)),
        Outcome::Synced(s) => synced(e, *s),
        Outcome::Failed(f) => failed(e, f),
    }
}

fn synced(e: &Ending<'_>, s: Synced) -> Report {
    let (subject, now) = (e.subject, e.facts.now);
    let old = &subject.status;
    let status = synced_status(subject, &s, e.facts.recorded.forced.as_deref(), now);
    let changed = ready_changed(&old.conditions, &status.conditions);
    let spec_changed = e.facts.recorded.spec_changed;
    let mut events: Vec<Note> = synced_event(&subject.spec.account_id, &s, spec_changed, changed)
        .map(|(reason, note)| Note {
            warning: false,
            reason,
            note,
        })
        .into_iter()
        .collect();
    if let Some(r) = &s.restart.restarted {
        events.push(Note {
            warning: false,
            reason: ROLLOUT_RESTARTED,
            note: r.note.clone(),
        });
    }
    if let Some(risk) = s.pod_risk.as_ref().filter(|r| r.at_risk)
        && !condition_true(&old.conditions, PODS_AT_RISK)
    {
        events.push(Note {
            warning: true,
            reason: REFRESH_TOO_LATE,
            note: risk.message.clone(),
        });
    }
    Report {
        write_status: status_needs_write(subject.raw_status.is_some(), old, &status, now),
        status,
        events,
        ended: Ended::Synced {
            confirmed: s.confirmed,
        },
        next: s.requeue_at(),
        said: Said::Synced {
            confirmed: s.confirmed,
            written: s.written.map_or("unchanged", Written::reason),
            expires_at: s.expires_at,
            next: s.next,
            secret: s.secret_name,
        },
    }
}

fn failed(e: &Ending<'_>, mut f: SyncFailure) -> Report {
    let (subject, now) = (e.subject, e.facts.now);
    let old = &subject.status;
    let attempt = e.failures.saturating_add(1);
    let held_expiry = old.expires_at.as_deref().and_then(parse_ts);
    let (delay, note) = plan::retry_after_failure(&f, attempt, held_expiry, e.propagation, now);
    if let Some(n) = note {
        f.message.push_str(&n);
    }
    let next = schedule::add(now, delay);
    let forced = e.facts.recorded.forced.as_deref();
    let status = failed_status(subject, &f, next, forced, now);
    let events = ready_changed(&old.conditions, &status.conditions)
        .then(|| Note {
            warning: true,
            reason: f.reason.as_str(),
            note: f.message.clone(),
        })
        .into_iter()
        .collect();
    let connection_version = f
        .reason
        .about_connection()
        .then(|| e.connection_version.map(str::to_string))
        .flatten();
    Report {
        write_status: status_needs_write(subject.raw_status.is_some(), old, &status, now),
        status,
        events,
        ended: Ended::Failed {
            attempt,
            retry_at: next,
            at: now,
            connection_version,
        },
        next,
        said: Said::Failed {
            failure: f,
            attempt,
            retry_in: delay,
        },
    }
}

/// A pass that ends with the Secret right.
#[derive(Clone, Debug)]
pub struct Synced {
    /// The Secret's name.
    pub secret_name: String,
    /// The connection used, as `Kind/name`.
    pub connection: Option<String>,
    /// Expiry of the credentials in the Secret.
    pub expires_at: Option<String>,
    /// When to fetch next.
    pub next: Timestamp,
    /// What Pipedream said about the account.
    pub account: Option<AccountSummary>,
    /// Hash of the data in the Secret.
    pub data_hash: Option<String>,
    /// The data was confirmed against an answer in this pass (not only found unchanged).
    pub confirmed: bool,
    /// What was written, if anything.
    pub written: Option<Written>,
    /// A rollout restart done in this pass, or when one held back is due (reconcile again by then).
    pub restart: restart::Outcome,
    /// Whether pods get credentials in time, when this pass judged it (else status keeps what it said).
    pub pod_risk: Option<PodRisk>,
    /// The Secret's resourceVersion after this pass (written or read).
    pub secret_version: Option<String>,
}

impl Synced {
    /// A pass that found the Secret right and nothing due: what status already says.
    fn unchanged(subject: &Subject<'_>, kept: Kept) -> Self {
        let st = subject.status.clone();
        Self {
            secret_name: subject.secret.name.clone(),
            connection: st.connection,
            expires_at: st.expires_at,
            next: kept.next,
            account: st.account,
            data_hash: st.data_hash,
            confirmed: false,
            written: None,
            restart: kept.restart,
            pod_risk: None,
            secret_version: st.secret_resource_version,
        }
    }

    /// When the pass after this one runs: the next fetch, or earlier when a restart waits.
    pub fn requeue_at(&self) -> Timestamp {
        self.restart.wake.map_or(self.next, |w| w.min(self.next))
    }

    /// The Ready message.
    pub fn message(&self, account_id: &str) -> String {
        match &self.expires_at {
            Some(e) => format!(
                "Secret {} holds credentials for {account_id} valid until {e}",
                self.secret_name
            ),
            None => format!(
                "Secret {} holds credentials for {account_id} (no expiry)",
                self.secret_name
            ),
        }
    }
}

/// The Event of a successful pass, if any: a Secret created or repaired, a spec change applied, or Ready
/// becoming True again. A routine refresh is in status and metrics only.
fn synced_event(
    account_id: &str,
    s: &Synced,
    spec_changed: bool,
    ready_changed: bool,
) -> Option<(&'static str, String)> {
    let msg = s.message(account_id);
    let name = &s.secret_name;
    match s.written {
        Some(Written::SecretCreated) => {
            Some(("SecretCreated", format!("created Secret {name}; {msg}")))
        }
        Some(Written::DriftCorrected) => Some((
            "DriftCorrected",
            format!("Secret {name} differed from the last synced data and was restored"),
        )),
        Some(Written::SecretUpdated) if spec_changed => {
            Some(("SecretUpdated", format!("updated Secret {name}; {msg}")))
        }
        _ if ready_changed => Some((Reason::SecretSynced.as_str(), msg)),
        _ => None,
    }
}

/// The status after a successful pass.
fn synced_status(
    subject: &Subject<'_>,
    s: &Synced,
    forced: Option<&str>,
    now: Timestamp,
) -> ConnectedAccountStatus {
    let old = &subject.status;
    let mut st = old.clone();
    let generation = subject.generation;
    let msg = s.message(&subject.spec.account_id);
    upsert_condition(
        &mut st.conditions,
        crate::crd::READY,
        true,
        Reason::SecretSynced.as_str(),
        &msg,
        generation,
        now,
    );
    upsert_condition(
        &mut st.conditions,
        crate::crd::EXPIRED,
        false,
        "Fresh",
        "the Secret holds unexpired credentials",
        generation,
        now,
    );
    st.observed_generation = generation;
    st.secret_name = Some(s.secret_name.clone());
    st.connection = s.connection.clone();
    st.expires_at = s.expires_at.clone();
    if s.confirmed {
        st.last_sync_time = Some(format_ts(now));
    }
    st.next_sync_time = Some(format_ts(s.next));
    st.account = s.account.clone();
    st.data_hash = s.data_hash.clone();
    st.secret_resource_version = s.secret_version.clone();
    if s.confirmed && forced.is_some() {
        st.last_force_sync = forced.map(str::to_string);
    }
    if let Some(r) = &s.pod_risk {
        record_pod_risk(&mut st, r, generation, now);
    }
    let has_targets = !subject.spec.rollout_restart_targets.is_empty();
    record_restart(&mut st, has_targets, old, s);
    st
}

/// What status says of whether pods get new credentials in time.
fn record_pod_risk(
    st: &mut ConnectedAccountStatus,
    r: &PodRisk,
    generation: Option<i64>,
    now: Timestamp,
) {
    let reason = if r.at_risk { REFRESH_TOO_LATE } else { IN_TIME };
    upsert_condition(
        &mut st.conditions,
        PODS_AT_RISK,
        r.at_risk,
        reason,
        &r.message,
        generation,
        now,
    );
    if let Some(l) = r.lead {
        st.refresh_lead_seconds = Some(i64::try_from(l.as_secs()).unwrap_or(i64::MAX));
    }
}

/// What status keeps of rollout restarts: the last one and the data the pods restarted (or started) with.
fn record_restart(
    st: &mut ConnectedAccountStatus,
    has_targets: bool,
    old: &ConnectedAccountStatus,
    s: &Synced,
) {
    if let Some(r) = &s.restart.restarted {
        st.last_restart_time = Some(format_ts(r.at));
        st.restarted_data_hash = s.data_hash.clone();
        st.restarted_expires_at = s.expires_at.clone();
    } else if !has_targets {
        st.restarted_data_hash = None;
        st.restarted_expires_at = None;
    } else if st.restarted_data_hash.is_none() {
        // The pods started with the first data written (the one before this pass, if any).
        let (hash, expires) = match &old.data_hash {
            Some(h) => (Some(h.clone()), old.expires_at.clone()),
            None => (s.data_hash.clone(), s.expires_at.clone()),
        };
        st.restarted_data_hash = hash;
        st.restarted_expires_at = expires;
    }
}

/// The status after a failed pass: the Secret (and what status says about it) stays; `Expired` says whether the
/// credentials it holds are past their expiry.
fn failed_status(
    subject: &Subject<'_>,
    f: &SyncFailure,
    next: Timestamp,
    forced: Option<&str>,
    now: Timestamp,
) -> ConnectedAccountStatus {
    let old = &subject.status;
    let generation = subject.generation;
    let mut st = old.clone();
    upsert_condition(
        &mut st.conditions,
        crate::crd::READY,
        false,
        f.reason.as_str(),
        &f.message,
        generation,
        now,
    );
    if let Some(exp) = old.expires_at.as_deref().and_then(schedule::parse_ts) {
        let expired = exp <= now;
        let message = if expired {
            format!(
                "the credentials in the Secret expired at {}",
                format_ts(exp)
            )
        } else {
            "the Secret holds unexpired credentials".to_string()
        };
        let reason = if expired {
            "CredentialsExpired"
        } else {
            "Fresh"
        };
        upsert_condition(
            &mut st.conditions,
            crate::crd::EXPIRED,
            expired,
            reason,
            &message,
            generation,
            now,
        );
    }
    st.observed_generation = generation;
    st.next_sync_time = Some(format_ts(next));
    if forced.is_some() {
        st.last_force_sync = forced.map(str::to_string);
    }
    st
}

/// Whether a new status needs writing: it changed, except that a change of `nextSyncTime` alone to a time under
/// [`plan::UNPERSISTED_RETRY`] away is kept in memory only, so fast polling does not rewrite status (and trigger a
/// watch event) every second.
fn status_needs_write(
    had_status: bool,
    old: &ConnectedAccountStatus,
    new: &ConnectedAccountStatus,
    now: Timestamp,
) -> bool {
    if !had_status {
        return true;
    }
    if old == new {
        return false;
    }
    let only_next = ConnectedAccountStatus {
        next_sync_time: old.next_sync_time.clone(),
        ..new.clone()
    } == *old;
    let soon = new
        .next_sync_time
        .as_deref()
        .and_then(schedule::parse_ts)
        .is_some_and(|t| t < schedule::add(now, plan::UNPERSISTED_RETRY));
    !(only_next && soon)
}

/// Set (or replace) condition `type_`, keeping `lastTransitionTime` when the status value is unchanged.
pub fn upsert_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status_str = if status { "True" } else { "False" };
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let transition = previous
        .map(|i| &conditions[i])
        .filter(|c| c.status == status_str)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(now.round(jiff::Unit::Second).unwrap_or(now)));
    let cond = Condition {
        type_: type_.to_string(),
        status: status_str.to_string(),
        reason: reason.to_string(),
        message: message.chars().take(1024).collect(),
        observed_generation: generation,
        last_transition_time: transition,
    };
    match previous {
        Some(i) => conditions[i] = cond,
        None => conditions.push(cond),
    }
}

/// The Ready condition's (status, reason), if any.
pub fn ready_of(conditions: &[Condition]) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == crate::crd::READY)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Whether Ready changed (status or reason) between two condition lists.
pub fn ready_changed(old: &[Condition], new: &[Condition]) -> bool {
    ready_of(old) != ready_of(new)
}

/// Whether condition `type_` is True.
pub fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}
