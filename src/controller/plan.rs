//! The pure half of a reconcile pass: what the spec means, whether to act now, what to do about the data, how
//! urgent a fetch is, and what an answer from Pipedream allows. No I/O.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::ObjectState;
use super::fetch::CachedFetch;
use super::status::ready_of;
use crate::access::{self, Admission};
use crate::crd::{ConnectedAccount, CreationPolicy, DeletionPolicy, FORCE_SYNC_ANNOTATION};
use crate::pipedream::{Account, Credentials};
use crate::reason::{Reason, SyncFailure};
use crate::schedule::{self, NextFetch, Observed, Policy, add, format_ts, parse_ts};
use crate::template;

/// At most one forced fetch per object this often; a newer force-sync value waits for the rest.
pub const FORCE_DEBOUNCE: Duration = Duration::from_secs(10);
/// Re-check a pass waiting for its fetch this long after asking (the fetch normally triggers it first).
pub const PENDING_RECHECK: Duration = Duration::from_secs(300);
/// A retry this soon is not written to status (it is in memory; after a restart the object is retried at once
/// anyway), so polling expired credentials does not rewrite status every second.
pub const UNPERSISTED_RETRY: Duration = Duration::from_secs(60);

/// Validated, parsed spec settings.
#[derive(Clone, Copy, Debug)]
pub struct Validated {
    /// Schedule policy.
    pub policy: Policy,
    /// Least time between rollout restarts.
    pub min_restart_interval: Duration,
}

/// Check what the CRD schema cannot: parse durations, compile templates within the allowed language, key syntax.
pub fn validate_spec(ca: &ConnectedAccount) -> Result<Validated, SyncFailure> {
    let invalid = |m: String| SyncFailure::new(Reason::InvalidSpec, m);
    let dur = |field: &str, v: &str, min: Duration| {
        let d = schedule::parse_duration(v).ok_or_else(|| {
            invalid(format!(
                "{field}: {v:?} is not a duration like 30s, 5m or 1h30m"
            ))
        })?;
        if d < min {
            return Err(invalid(format!(
                "{field}: {v} is below the minimum of {}s",
                min.as_secs()
            )));
        }
        Ok(d)
    };
    let before_expiry = dur(
        "spec.refresh.beforeExpiry",
        &ca.spec.refresh.before_expiry,
        Duration::from_secs(5),
    )?;
    let interval = dur(
        "spec.refresh.interval",
        &ca.spec.refresh.interval,
        Duration::from_secs(10),
    )?;
    let min_restart_interval = dur(
        "spec.minRestartInterval",
        &ca.spec.min_restart_interval,
        Duration::ZERO,
    )?;
    let target = &ca.spec.target;
    for (field, map) in [
        ("labels", &target.labels),
        ("annotations", &target.annotations),
    ] {
        if let Some(k) = map.keys().find(|k| !is_qualified_name(k)) {
            return Err(invalid(format!(
                "spec.target.{field}[{k}]: not a valid key (an optional DNS-subdomain prefix and '/', then up to 63 letters, digits, '-', '_', '.')"
            )));
        }
    }
    if target.creation_policy != CreationPolicy::Owner
        && target.deletion_policy == DeletionPolicy::Delete
    {
        return Err(invalid(
            "spec.target.deletionPolicy: Delete needs creationPolicy Owner; use Retain".into(),
        ));
    }
    if let Some(t) = &target.template {
        if t.data.is_empty() {
            return Err(invalid(
                "spec.target.template.data: at least one key is required".into(),
            ));
        }
        if let Some(k) = t.data.keys().find(|k| !template::is_valid_secret_key(k)) {
            return Err(invalid(format!(
                "spec.target.template.data[{k}]: not a valid Secret key"
            )));
        }
        template::validate(&t.data).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(Validated {
        policy: Policy {
            before_expiry,
            interval,
        },
        min_restart_interval,
    })
}

/// Label and annotation key syntax, as the API server checks it: `[prefix/]name`, prefix a DNS subdomain of at
/// most 253 characters, name at most 63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn is_qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

/// What a pass knows before any I/O.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Now.
    pub now: Timestamp,
    /// A force-sync value not acted upon yet.
    pub forced: Option<String>,
    /// The spec changed since the status was written.
    pub spec_changed: bool,
    /// `status.nextSyncTime`.
    pub next_due: Option<Timestamp>,
    /// Ready is False.
    pub failed: bool,
    /// Ready is True.
    pub ready: bool,
    /// `status.expiresAt`: when the credentials in the Secret expire.
    pub held_expiry: Option<Timestamp>,
}

impl Facts {
    /// Read the facts off a ConnectedAccount.
    pub fn of(ca: &ConnectedAccount, now: Timestamp) -> Self {
        let status = ca.status.clone().unwrap_or_default();
        let ready = ready_of(&status.conditions);
        Self {
            now,
            forced: ca
                .annotations()
                .get(FORCE_SYNC_ANNOTATION)
                .filter(|v| status.last_force_sync.as_ref() != Some(*v))
                .cloned(),
            spec_changed: status.observed_generation != ca.metadata.generation,
            next_due: status.next_sync_time.as_deref().and_then(parse_ts),
            failed: ready.as_ref().is_some_and(|(s, _)| s == "False"),
            ready: ready.as_ref().is_some_and(|(s, _)| s == "True"),
            held_expiry: status.expires_at.as_deref().and_then(parse_ts),
        }
    }

    /// The scheduled fetch time has come (or none is known).
    pub fn due(&self) -> bool {
        self.next_due.is_none_or(|t| self.now >= t)
    }
}

/// When a failed object may try again, if not yet: its own status write (or any other event) must not cause
/// another attempt, and another Pipedream call. A spec change, a new force-sync value, or a change to the
/// connection a connection-related failure was about retries at once.
pub fn wait_for_retry(
    f: &Facts,
    mem: &ObjectState,
    connection_version: Option<&str>,
) -> Option<Timestamp> {
    if !f.failed || f.forced.is_some() || f.spec_changed {
        return None;
    }
    if let (Some(was), Some(now)) = (&mem.failed_connection_version, connection_version)
        && was != now
    {
        return None;
    }
    let at = f.next_due.max(mem.retry_at)?;
    (f.now < at).then_some(at)
}

/// When a new force-sync value may fetch, if not yet (one forced fetch per [`FORCE_DEBOUNCE`]).
pub fn force_wait(f: &Facts, mem: &ObjectState) -> Option<Timestamp> {
    f.forced.as_ref()?;
    let at = add(mem.last_forced?, FORCE_DEBOUNCE);
    (f.now < at).then_some(at)
}

/// What a pass must do about the Secret's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The Secret is right and nothing is due.
    Nothing,
    /// The Secret differs from what was written: restore it from the last answer (fetch only without one).
    Repair,
    /// Fetch from Pipedream; `reuse` allows a still-fresh earlier answer (first sync, spec change, retry after
    /// a failure) instead of a new call.
    Fetch {
        /// An earlier answer that is still fresh will do.
        reuse: bool,
    },
}

/// Decide what the pass must do, given whether the Secret drifted from the last written data.
pub fn need(f: &Facts, drifted: bool) -> Need {
    if f.forced.is_some() {
        return Need::Fetch { reuse: false };
    }
    if f.due() && f.ready && !f.spec_changed {
        return Need::Fetch { reuse: false };
    }
    if f.spec_changed || !f.ready || f.due() {
        return Need::Fetch { reuse: true };
    }
    if drifted { Need::Repair } else { Need::Nothing }
}

/// Queue order of a fetch: the time by which it is needed. A missing Secret comes first, then credentials by
/// expiry (already expired ones before all others), then forced and interval checks.
pub fn needed_by(f: &Facts, secret_exists: bool) -> Timestamp {
    if !secret_exists {
        return f
            .now
            .saturating_sub(jiff::SignedDuration::from_hours(24))
            .unwrap_or(f.now);
    }
    if f.forced.is_some() {
        return add(f.now, Duration::from_secs(300));
    }
    f.held_expiry.or(f.next_due).unwrap_or(f.now)
}

/// The timing facts of an answer, on the local clock.
pub struct Timing {
    /// For scheduling (conservative).
    pub observed: Observed,
    /// For status and the Secret annotation.
    pub expires_at: Option<Timestamp>,
}

/// Parse and clock-correct an answer's timestamps.
pub fn timing(c: &CachedFetch) -> Result<Timing, SyncFailure> {
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
    let expires = parse("expires_at", &account.expires_at)?;
    let refresh = parse("next_refresh_at", &account.next_refresh_at)?;
    let server = c.fetched.server_time;
    Ok(Timing {
        observed: schedule::observe(expires, refresh, server, c.at),
        expires_at: expires.map(|e| schedule::display_time(e, server, c.at)),
    })
}

/// Whether an earlier answer is still fresh enough to serve this object without a new call.
pub fn still_fresh(c: &CachedFetch, now: Timestamp, policy: Policy, jitter: f64) -> bool {
    timing(c).is_ok_and(|t| {
        let n = schedule::after_fetch(c.at, t.observed, policy, jitter);
        !n.expired && n.at > now && t.observed.expires_at.is_none_or(|e| e > now)
    })
}

/// What an answer allows: the credentials to write, or why not. Messages never name another tenant's account
/// details (app, external user).
pub fn judge<'a>(
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
        return fail(
            Reason::AccessDenied,
            format!(
                "account {wanted} is not admitted by the access rules of {connection} (externalUserIds, apps or accountIds)"
            ),
        );
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
pub fn expired_answer(
    wanted: &str,
    expires_at: Option<Timestamp>,
    next: NextFetch,
    now: Timestamp,
) -> SyncFailure {
    let mut f = SyncFailure::new(
        Reason::Expired,
        format!(
            "Pipedream returned credentials for {wanted} that expired at {}; polling every few seconds until it refreshes them",
            expires_at.map(format_ts).unwrap_or_else(|| "?".into())
        ),
    );
    f.retry_in = Some(schedule::between(now, next.at).max(schedule::MIN_DELAY));
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ca(status: serde_json::Value, annotations: serde_json::Value) -> ConnectedAccount {
        serde_json::from_value(json!({
            "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "gh", "namespace": "team-a", "uid": "u", "generation": 1, "annotations": annotations},
            "spec": {"accountId": "apn_A1"}, "status": status
        }))
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ok_status(next: &str) -> serde_json::Value {
        json!({"observedGeneration": 1, "nextSyncTime": next, "expiresAt": "2026-11-22T10:00:00Z",
               "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "",
                               "lastTransitionTime": "2026-11-22T09:00:00Z"}]})
    }

    #[test]
    fn what_a_pass_does() {
        let now = ts("2026-11-22T09:30:00Z");
        let fresh = Facts::of(&ca(ok_status("2026-11-22T09:55:00Z"), json!({})), now);
        assert_eq!(need(&fresh, false), Need::Nothing);
        assert_eq!(need(&fresh, true), Need::Repair);
        let due = Facts::of(&ca(ok_status("2026-11-22T09:29:00Z"), json!({})), now);
        assert_eq!(need(&due, false), Need::Fetch { reuse: false });
        let new = Facts::of(&ca(json!(null), json!({})), now);
        assert_eq!(need(&new, false), Need::Fetch { reuse: true });
        let forced = Facts::of(
            &ca(
                ok_status("2026-11-22T09:55:00Z"),
                json!({"pipedream-secrets.io/force-sync": "1"}),
            ),
            now,
        );
        assert_eq!(need(&forced, false), Need::Fetch { reuse: false });
        // Urgency: no Secret first, then by expiry, forced behind what expires within five minutes.
        assert!(needed_by(&new, false) < needed_by(&due, true));
        assert_eq!(needed_by(&due, true), ts("2026-11-22T10:00:00Z"));
        assert_eq!(needed_by(&forced, true), ts("2026-11-22T09:35:00Z"));
    }

    /// Regression (issue 8): force-sync had no per-object debounce; each new value fetched at once.
    #[test]
    fn forced_fetches_are_debounced_per_object() {
        let now = ts("2026-11-22T09:30:00Z");
        let f = Facts::of(
            &ca(
                ok_status("2026-11-22T09:55:00Z"),
                json!({"pipedream-secrets.io/force-sync": "2"}),
            ),
            now,
        );
        let recent = ObjectState {
            last_forced: Some(ts("2026-11-22T09:29:55Z")),
            ..Default::default()
        };
        assert_eq!(force_wait(&f, &recent), Some(ts("2026-11-22T09:30:05Z")));
        let long_ago = ObjectState {
            last_forced: Some(ts("2026-11-22T09:20:00Z")),
            ..Default::default()
        };
        assert_eq!(force_wait(&f, &long_ago), None);
        assert_eq!(force_wait(&f, &ObjectState::default()), None);
    }

    #[test]
    fn a_failed_object_waits_unless_something_relevant_changed() {
        let now = ts("2026-11-22T09:30:00Z");
        let failed = json!({"observedGeneration": 1, "nextSyncTime": "2026-11-22T09:35:00Z",
            "conditions": [{"type": "Ready", "status": "False", "reason": "AuthFailed", "message": "",
                            "lastTransitionTime": "2026-11-22T09:00:00Z"}]});
        let f = Facts::of(&ca(failed, json!({})), now);
        let mem = ObjectState {
            failed_connection_version: Some("7".into()),
            ..Default::default()
        };
        assert_eq!(
            wait_for_retry(&f, &mem, Some("7")),
            Some(ts("2026-11-22T09:35:00Z"))
        );
        assert_eq!(
            wait_for_retry(&f, &mem, Some("8")),
            None,
            "the connection changed"
        );
        let later = ObjectState {
            retry_at: Some(ts("2026-11-22T09:40:00Z")),
            ..Default::default()
        };
        assert_eq!(
            wait_for_retry(&f, &later, None),
            Some(ts("2026-11-22T09:40:00Z"))
        );
    }

    /// Regression (issue 7): label and annotation keys the API server refuses only failed the Secret write.
    #[test]
    fn label_and_annotation_keys_are_checked_before_anything_is_written() {
        for ok in [
            "team",
            "app.kubernetes.io/name",
            "example.com/a_b-c.d",
            "A1",
        ] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "x-",
            "a/b/c",
            "/x",
            "Example.com/x",
            "a b",
            &"x".repeat(64),
            "a..b/c",
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
        let c: ConnectedAccount = serde_json::from_value(json!({
            "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "gh", "namespace": "team-a"},
            "spec": {"accountId": "apn_A1", "target": {"annotations": {"bad key!": "v"}}}}))
        .unwrap();
        let e = validate_spec(&c).unwrap_err();
        assert!(
            e.message.starts_with("spec.target.annotations[bad key!]"),
            "{}",
            e.message
        );
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
}
