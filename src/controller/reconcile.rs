//! The ConnectedAccount reconciler: decide whether to fetch, fetch (shared), write the Secret only on change,
//! write a deterministic status, schedule the next fetch before expiry.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::resolve::{Resolved, resolve};
use super::restart;
use super::status::{ready_of, upsert_condition};
use super::{CachedFetch, Context};
use crate::access;
use crate::crd::{
    AccountSummary, ConnectedAccount, ConnectedAccountStatus, CreationPolicy,
    FORCE_SYNC_ANNOTATION, MANAGER,
};
use crate::reason::{Error, Reason, SyncFailure};
use crate::schedule::{self, NextFetch, Observed, Policy, format_ts, parse_ts};
use crate::secret::{check_ownership, data_hash, desired_secret, existing_hash, up_to_date};
use crate::template;

/// A fetch this recent is shared even with a forced sync (single-flight join).
const JUST_FETCHED: SignedDuration = SignedDuration::from_secs(2);

/// Validated, parsed spec settings.
pub struct Validated {
    /// Schedule policy.
    pub policy: Policy,
    /// Least time between rollout restarts.
    pub min_restart_interval: Duration,
}

/// Check what the CRD schema cannot: parse durations, compile templates, key syntax.
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
    if target.creation_policy != CreationPolicy::Owner
        && target.deletion_policy == crate::crd::DeletionPolicy::Delete
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

/// What a successful pass did.
struct Success {
    secret_name: String,
    connection: Option<String>,
    expires_at: Option<String>,
    next: NextFetch,
    account: Option<AccountSummary>,
    data_hash: Option<String>,
    confirmed: bool,
    written: Option<&'static str>,
    restart: Option<restart::Restarted>,
}

/// Entry point for the controller.
pub async fn reconcile(ca: Arc<ConnectedAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let out = reconcile_inner(&ca, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    out
}

async fn reconcile_inner(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    if ca.metadata.deletion_timestamp.is_some() {
        // Owned Secrets go by garbage collection; Retain/Orphan/Merge Secrets carry no ownerReference.
        ctx.metrics
            .set_expiry(&ca.namespace().unwrap_or_default(), &ca.name_any(), None);
        return Ok(Action::await_change());
    }
    let uid = ca.uid().unwrap_or_default();
    let now = ctx.clock.now();
    let status = ca.status.clone().unwrap_or_default();
    let forced = ca
        .annotations()
        .get(FORCE_SYNC_ANNOTATION)
        .filter(|v| status.last_force_sync.as_ref() != Some(*v))
        .cloned();
    // A failed object waits for its retry time: its own status write must not trigger another attempt (and
    // another Pipedream call). A spec change or a new force-sync value retries at once.
    let next_due = status.next_sync_time.as_deref().and_then(parse_ts);
    let failed = ready_of(&status.conditions).is_some_and(|(s, _)| s == "False");
    let spec_changed = status.observed_generation != ca.metadata.generation;
    if failed
        && forced.is_none()
        && !spec_changed
        && let Some(next) = next_due.filter(|t| now < *t)
    {
        debug!(retry_at = %format_ts(next), "waiting for the retry time");
        return Ok(Action::requeue(until(now, next)));
    }
    let pass = Pass {
        now,
        forced: forced.is_some(),
        spec_changed,
        next_due,
    };
    match sync(ca, ctx, &status, pass).await? {
        Ok(done) => {
            ctx.clear_failures(&uid);
            finish_success(ca, ctx, now, status, done, forced).await
        }
        Err(failure) => finish_failure(ca, ctx, now, status, failure, forced).await,
    }
}

fn observed(c: &CachedFetch) -> Result<Observed, SyncFailure> {
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
    let local =
        |t: Option<Timestamp>| t.map(|t| schedule::correct_skew(t, c.fetched.server_time, c.at));
    Ok(Observed {
        expires_at: local(parse("expires_at", &c.fetched.account.expires_at)?),
        next_refresh_at: local(parse(
            "next_refresh_at",
            &c.fetched.account.next_refresh_at,
        )?),
    })
}

type SyncResult = Result<Result<Success, SyncFailure>, Error>;

/// What `reconcile` already worked out about this pass.
#[derive(Clone, Copy)]
struct Pass {
    now: Timestamp,
    forced: bool,
    spec_changed: bool,
    next_due: Option<Timestamp>,
}

async fn sync(
    ca: &ConnectedAccount,
    ctx: &Context,
    status: &ConnectedAccountStatus,
    pass: Pass,
) -> SyncResult {
    let Pass {
        now,
        forced,
        spec_changed,
        next_due,
    } = pass;
    let validated = match validate_spec(ca) {
        Ok(v) => v,
        Err(f) => return Ok(Err(f)),
    };
    let ns = ca.namespace().unwrap_or_default();
    let uid = ca.uid().unwrap_or_default();
    let secret_name = ca.secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(Error::ReadSecret)?;
    if let Some(s) = &existing
        && let Err(c) = check_ownership(ca, s)
    {
        return Ok(Err(SyncFailure::new(
            Reason::SecretConflict,
            format!("spec.target.name: {}", c.0),
        )));
    }
    let merge = ca.spec.target.creation_policy == CreationPolicy::Merge;
    if merge && existing.is_none() {
        return Ok(Err(SyncFailure::new(
            Reason::SecretConflict,
            format!(
                "spec.target.creationPolicy: Merge writes into an existing Secret, and Secret {secret_name} does not exist"
            ),
        )));
    }

    let due = next_due.is_none_or(|t| now >= t);
    let last_ok = ready_of(&status.conditions).is_some_and(|(s, _)| s == "True");
    let drifted = match (&existing, &status.data_hash) {
        (None, _) | (_, None) => true,
        (Some(s), Some(h)) => !merge && existing_hash(s, None) != *h,
    };
    if !forced && !spec_changed && !due && !drifted && last_ok {
        debug!(next = ?next_due, "credentials fresh; nothing to do");
        let next = NextFetch {
            at: next_due.unwrap_or(now),
            stale: false,
        };
        let restart = restart::maybe_restart(
            ca,
            ctx,
            now,
            status,
            validated.min_restart_interval,
            status.data_hash.as_deref(),
        )
        .await;
        return Ok(Ok(Success {
            secret_name,
            connection: status.connection.clone(),
            expires_at: status.expires_at.clone(),
            next,
            account: status.account.clone(),
            data_hash: status.data_hash.clone(),
            confirmed: false,
            written: None,
            restart,
        }));
    }

    let resolved = match resolve(ca, ctx).await? {
        Ok(r) => r,
        Err(f) => return Ok(Err(f)),
    };
    let jitter = schedule::jitter_fraction(&uid);
    let policy = validated.policy;
    // Drift or a spec change alone does not mint: reuse the last answer while it is fresh for this object.
    let reuse = |c: &CachedFetch| {
        if now.duration_since(c.at) < JUST_FETCHED {
            return true;
        }
        if forced || (due && !drifted && !spec_changed) {
            return false;
        }
        observed(c).is_ok_and(|o| {
            let nf = schedule::next_fetch(c.at, o, policy, jitter, 0);
            !nf.stale && nf.at > now
        })
    };
    let (cached, reused) = match ctx
        .accounts
        .fetch(
            &resolved.id,
            &ca.spec.account_id,
            &resolved.client,
            &ctx.clock,
            reuse,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.into())),
    };
    match write_from(
        ca,
        ctx,
        now,
        status,
        &resolved,
        &cached,
        existing.as_ref(),
        &validated,
        spec_changed,
    )
    .await?
    {
        Ok(mut success) => {
            if reused {
                debug!("reused a fresh fetch of the same account");
            }
            success.confirmed = true;
            Ok(Ok(success))
        }
        Err(f) => Ok(Err(f)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_from(
    ca: &ConnectedAccount,
    ctx: &Context,
    now: Timestamp,
    status: &ConnectedAccountStatus,
    resolved: &Resolved,
    cached: &CachedFetch,
    existing: Option<&Secret>,
    validated: &Validated,
    spec_changed: bool,
) -> SyncResult {
    let account = &cached.fetched.account;
    let id = &ca.spec.account_id;
    let fail = |r: Reason, m: String| Ok(Err(SyncFailure::new(r, m)));
    if account.id != *id {
        return fail(
            Reason::UpstreamError,
            format!(
                "Pipedream answered for account {} instead of {id}",
                account.id
            ),
        );
    }
    if !access::admit_account(&resolved.admission, account) {
        return fail(
            Reason::AccessDenied,
            format!(
                "account {id} (app {}, external user {}) is not admitted by the access rules of {}",
                account.app_slug().unwrap_or("?"),
                account.external_id.as_deref().unwrap_or("?"),
                resolved.id
            ),
        );
    }
    let upstream_error = account.error.as_ref().map(|e| match e {
        serde_json::Value::String(s) => s.chars().take(200).collect::<String>(),
        other => other.to_string().chars().take(200).collect(),
    });
    let suffix = upstream_error.map(|e| format!(": {e}")).unwrap_or_default();
    if account.dead == Some(true) {
        return fail(
            Reason::AccountDead,
            format!("Pipedream marks account {id} dead; reconnect it{suffix}"),
        );
    }
    if account.healthy == Some(false) {
        return fail(
            Reason::AccountUnhealthy,
            format!("Pipedream marks account {id} unhealthy{suffix}"),
        );
    }
    let Some(credentials) = account.credentials.as_ref().filter(|c| !c.is_empty()) else {
        return fail(
            Reason::CredentialsUnavailable,
            format!(
                "Pipedream returned no credentials for account {id}; OAuth accounts expose credentials only when connected through your own OAuth client"
            ),
        );
    };
    let obs = match observed(cached) {
        Ok(o) => o,
        Err(f) => return Ok(Err(f)),
    };
    let uid = ca.uid().unwrap_or_default();
    let jitter = schedule::jitter_fraction(&uid);
    let stale_count = ctx.stale_count(&uid);
    if let Some(exp) = obs.expires_at
        && exp <= now
    {
        let nf = schedule::next_fetch(now, obs, validated.policy, jitter, stale_count);
        ctx.set_stale(&uid, true);
        let mut f = SyncFailure::new(
            Reason::Expired,
            format!(
                "Pipedream returned credentials for {id} that expired at {}; fetching again once Pipedream refreshes them",
                account.expires_at.as_deref().unwrap_or("?")
            ),
        );
        f.retry_in = Duration::try_from(nf.at.duration_since(now)).ok();
        return Ok(Err(f));
    }
    let expires_at = obs.expires_at.map(format_ts);
    let data = match &ca.spec.target.template {
        Some(t) => match template::render(&t.data, credentials, account, expires_at.as_deref()) {
            Ok(d) => d,
            Err(e) => return fail(Reason::InvalidSpec, e.to_string()),
        },
        None => {
            let (d, skipped) = template::raw_data(credentials);
            if !skipped.is_empty() {
                warn!(keys = ?skipped, "credential fields with names that are not valid Secret keys were skipped");
            }
            d
        }
    };
    if data.is_empty() {
        return fail(
            Reason::CredentialsUnavailable,
            format!("account {id} has no usable credential fields"),
        );
    }
    let hash = data_hash(data.iter().map(|(k, v)| (k, v.as_slice())));
    let desired = desired_secret(ca, &data, expires_at.as_deref());
    let secret_name = ca.secret_name();
    let written = if existing.is_some_and(|e| up_to_date(e, &desired)) {
        None
    } else {
        let api: Api<Secret> =
            Api::namespaced(ctx.client.clone(), &ca.namespace().unwrap_or_default());
        api.patch(
            &secret_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(Error::WriteSecret)?;
        let same_data = status.data_hash.as_deref() == Some(hash.as_str());
        Some(match (existing.is_some(), same_data && !spec_changed) {
            (false, false) => "SecretCreated",
            (_, true) => "DriftCorrected",
            (true, false) => "SecretUpdated",
        })
    };
    let next = schedule::next_fetch(now, obs, validated.policy, jitter, stale_count);
    ctx.set_stale(&uid, next.stale);
    let restart = restart::maybe_restart(
        ca,
        ctx,
        now,
        status,
        validated.min_restart_interval,
        Some(&hash),
    )
    .await;
    Ok(Ok(Success {
        secret_name,
        connection: Some(resolved.id.clone()),
        expires_at,
        next,
        account: Some(AccountSummary {
            app: account.app_slug().map(str::to_string),
            external_id: account.external_id.clone(),
            healthy: account.healthy,
            dead: account.dead,
        }),
        data_hash: Some(hash),
        confirmed: true,
        written,
        restart,
    }))
}

async fn finish_success(
    ca: &ConnectedAccount,
    ctx: &Context,
    now: Timestamp,
    old: ConnectedAccountStatus,
    s: Success,
    forced: Option<String>,
) -> Result<Action, Error> {
    let mut st = old.clone();
    let generation = ca.metadata.generation;
    let msg = match &s.expires_at {
        Some(e) => format!(
            "Secret {} holds credentials for {} valid until {e}",
            s.secret_name, ca.spec.account_id
        ),
        None => format!(
            "Secret {} holds credentials for {} (no expiry)",
            s.secret_name, ca.spec.account_id
        ),
    };
    upsert_condition(
        &mut st.conditions,
        "Ready",
        true,
        Reason::Synced.as_str(),
        &msg,
        generation,
        now,
    );
    upsert_condition(
        &mut st.conditions,
        "Expired",
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
    st.next_sync_time = Some(format_ts(s.next.at));
    st.account = s.account.clone();
    st.data_hash = s.data_hash.clone();
    if forced.is_some() {
        st.last_force_sync = forced;
    }
    if let Some(r) = &s.restart {
        st.last_restart_time = Some(format_ts(r.at));
        st.restarted_data_hash = s.data_hash.clone();
    } else if ca.spec.rollout_restart_targets.is_empty() {
        st.restarted_data_hash = None;
    } else if st.restarted_data_hash.is_none() {
        st.restarted_data_hash = old.data_hash.clone().or(s.data_hash.clone());
    }
    let transition = ready_of(&old.conditions) != ready_of(&st.conditions);
    write_status(ca, ctx, &old, &st).await?;
    let name = ca.name_any();
    let ns = ca.namespace().unwrap_or_default();
    ctx.metrics
        .set_expiry(&ns, &name, s.expires_at.as_deref().and_then(parse_ts));
    if s.confirmed {
        ctx.metrics.count_sync(Reason::Synced.as_str());
        info!(secret = %s.secret_name, written = s.written.unwrap_or("unchanged"), expires_at = ?s.expires_at, next_sync = %format_ts(s.next.at), "synced");
    }
    if let Some(kind) = s.written {
        let note = match kind {
            "SecretCreated" => format!("created Secret {}; {msg}", s.secret_name),
            "DriftCorrected" => format!(
                "Secret {} differed from the last synced data and was restored",
                s.secret_name
            ),
            _ => format!("updated Secret {}; {msg}", s.secret_name),
        };
        publish(ctx, ca, EventType::Normal, kind, note).await;
    } else if transition {
        publish(ctx, ca, EventType::Normal, Reason::Synced.as_str(), msg).await;
    }
    if let Some(r) = &s.restart {
        publish(
            ctx,
            ca,
            EventType::Normal,
            "RolloutRestarted",
            r.note.clone(),
        )
        .await;
    }
    Ok(Action::requeue(until(now, s.next.at)))
}

async fn finish_failure(
    ca: &ConnectedAccount,
    ctx: &Context,
    now: Timestamp,
    old: ConnectedAccountStatus,
    f: SyncFailure,
    forced: Option<String>,
) -> Result<Action, Error> {
    let uid = ca.uid().unwrap_or_default();
    let attempt = ctx.record_failure(&uid);
    let held_expiry = old.expires_at.as_deref().and_then(parse_ts);
    let delay = f.retry_in.unwrap_or_else(|| {
        schedule::error_backoff(
            now,
            attempt - 1,
            held_expiry,
            f.retry_after,
            f.reason.needs_intervention(),
        )
    });
    let next = now
        .saturating_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
        .unwrap_or(now);
    let generation = ca.metadata.generation;
    let mut st = old.clone();
    upsert_condition(
        &mut st.conditions,
        "Ready",
        false,
        f.reason.as_str(),
        &f.message,
        generation,
        now,
    );
    if let Some(exp) = held_expiry {
        let expired = exp <= now;
        let (reason, message) = if expired {
            (
                "CredentialsExpired",
                format!(
                    "the credentials in the Secret expired at {}",
                    format_ts(exp)
                ),
            )
        } else {
            (
                "Fresh",
                "the Secret holds unexpired credentials".to_string(),
            )
        };
        upsert_condition(
            &mut st.conditions,
            "Expired",
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
        st.last_force_sync = forced;
    }
    let transition = ready_of(&old.conditions) != ready_of(&st.conditions);
    write_status(ca, ctx, &old, &st).await?;
    ctx.metrics.count_sync(f.reason.as_str());
    warn!(reason = f.reason.as_str(), message = %f.message, attempt, retry_in_s = delay.as_secs(), "sync failed; the Secret is left as it was");
    if transition {
        publish(
            ctx,
            ca,
            EventType::Warning,
            f.reason.as_str(),
            f.message.clone(),
        )
        .await;
    }
    Ok(Action::requeue(delay))
}

async fn write_status(
    ca: &ConnectedAccount,
    ctx: &Context,
    old: &ConnectedAccountStatus,
    new: &ConnectedAccountStatus,
) -> Result<(), Error> {
    if ca.status.is_some() && old == new {
        return Ok(());
    }
    let api: Api<ConnectedAccount> =
        Api::namespaced(ctx.client.clone(), &ca.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": ConnectedAccount::api_version(&()),
        "kind": ConnectedAccount::kind(&()),
        "status": new,
    });
    api.patch_status(
        &ca.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(Error::WriteStatus)?;
    Ok(())
}

/// Publish an Event; failures are logged, never fatal.
pub async fn publish(
    ctx: &Context,
    ca: &ConnectedAccount,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &ca.object_ref(&())).await {
        warn!(error = %super::resolve::kube_error_summary(&e), "publishing an Event failed");
    }
}

/// Delay from `now` to `at`, at least one second.
pub fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now))
        .unwrap_or(Duration::ZERO)
        .max(schedule::MIN_DELAY)
}

/// Backoff for Kubernetes API failures, landing before the held credentials expire.
pub fn error_policy(ca: Arc<ConnectedAccount>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = ca.uid().unwrap_or_default();
    let attempt = ctx.record_failure(&uid);
    let exp = ca
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_deref())
        .and_then(parse_ts);
    let delay = schedule::error_backoff(ctx.clock.now(), attempt - 1, exp, None, false);
    warn!(error = %err, kind = err.metric_label(), attempt, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}
