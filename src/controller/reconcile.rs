//! The ConnectedAccount reconciler: a pass reads the Secret, asks [`plan`](super::plan) what to do, gets the data
//! (a fresh earlier answer, or a fetch through the connection's dispatcher, which re-triggers the pass when done),
//! writes the Secret only on change and a deterministic status, and requeues from the time the pass ends.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::fetch::{Attempt, CachedFetch};
use super::plan::{self, Facts, Need, Validated};
use super::resolve::{Resolved, connection_of, kube_error_summary, resolve};
use super::restart;
use super::status::{ready_of, upsert_condition};
use super::{Context, ObjectState};
use crate::crd::{
    AccountSummary, ConnectedAccount, ConnectedAccountStatus, CreationPolicy, DeletionPolicy,
    FINALIZER, MANAGER,
};
use crate::identity::AccountKey;
use crate::reason::{Error, Reason, SyncFailure};
use crate::schedule::{self, format_ts, parse_ts};
use crate::secret::{self, check_ownership, data_hash, desired_secret, existing_hash, up_to_date};
use crate::template;

/// What a successful pass did.
struct Success {
    secret_name: String,
    connection: Option<String>,
    expires_at: Option<String>,
    next: Timestamp,
    account: Option<AccountSummary>,
    data_hash: Option<String>,
    confirmed: bool,
    written: Option<&'static str>,
    restart: Option<restart::Restarted>,
}

/// How a pass ended, before status is written.
enum Outcome {
    Done(Success),
    Failed(SyncFailure, Option<String>),
    /// Waiting for the dispatcher: nothing to write yet.
    Pending,
}

/// Entry point for the controller.
pub async fn reconcile(ca: Arc<ConnectedAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let _in_flight = ctx.metrics.reconcile_started();
    let ns = ca.namespace().unwrap_or_default();
    let api: Api<ConnectedAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let out = finalizer(&api, FINALIZER, ca, |event| async {
        match event {
            finalizer::Event::Apply(ca) => apply(&ca, &ctx).await,
            finalizer::Event::Cleanup(ca) => cleanup(&ca, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    ctx.metrics.observe_reconcile(started.elapsed());
    out
}

async fn apply(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    let uid = ca.uid().unwrap_or_default();
    let now = ctx.clock.now();
    let mem = ctx.object(&uid);
    let mut facts = Facts::of(ca, now);
    if mem.written_next_sync.is_some() {
        facts.next_due = mem.written_next_sync;
    }
    let conn_version = connection_version(ca, ctx);
    if let Some(at) = plan::wait_for_retry(&facts, &mem, conn_version.as_deref()) {
        debug!(retry_at = %format_ts(at), "waiting for the retry time");
        return Ok(requeue(ctx, &uid, at));
    }
    if mem.asked.is_none()
        && let Some(at) = plan::force_wait(&facts, &mem)
    {
        debug!(at = %format_ts(at), "force-sync debounced");
        return Ok(requeue(ctx, &uid, at));
    }
    let status = ca.status.clone().unwrap_or_default();
    match sync(ca, ctx, &facts, &mem).await? {
        Outcome::Pending => {
            let at = schedule::add(ctx.clock.now(), plan::PENDING_RECHECK);
            Ok(requeue(ctx, &uid, at))
        }
        Outcome::Done(done) => {
            ctx.update_object(&uid, |o| {
                o.failures = 0;
                o.retry_at = None;
                o.failed_connection_version = None;
            });
            finish_success(ca, ctx, status, done, facts.forced).await
        }
        Outcome::Failed(f, version) => {
            finish_failure(ca, ctx, status, f, version, facts.forced).await
        }
    }
}

/// The resourceVersion of the connection this ConnectedAccount names, from the local stores.
fn connection_version(ca: &ConnectedAccount, ctx: &Context) -> Option<String> {
    let id = connection_of(ca, ctx).ok()?;
    match &id.namespace {
        Some(ns) => ctx
            .connections
            .get(&Some(ns.clone()))
            .or_else(|| ctx.connections.get(&None))?
            .get(&ObjectRef::new(&id.name).within(ns))?
            .meta()
            .resource_version
            .clone(),
        None => ctx
            .cluster_connections
            .get(&ObjectRef::new(&id.name))?
            .meta()
            .resource_version
            .clone(),
    }
}

fn requeue(ctx: &Context, uid: &str, at: Timestamp) -> Action {
    // From the time the pass ends: a slow pass does not push the next one later.
    let now = ctx.clock.now();
    ctx.update_object(uid, |o| o.next_pass = Some(at));
    Action::requeue(schedule::until(now, at))
}

async fn sync(
    ca: &ConnectedAccount,
    ctx: &Context,
    facts: &Facts,
    mem: &ObjectState,
) -> Result<Outcome, Error> {
    let validated = match plan::validate_spec(ca) {
        Ok(v) => v,
        Err(f) => return Ok(Outcome::Failed(f, None)),
    };
    let ns = ca.namespace().unwrap_or_default();
    let secret_name = ca.secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(Error::ReadSecret)?;
    if let Some(s) = &existing
        && let Err(c) = check_ownership(ca, s)
    {
        return Ok(Outcome::Failed(
            SyncFailure::new(Reason::SecretConflict, format!("spec.target.name: {}", c.0)),
            None,
        ));
    }
    let merge = ca.spec.target.creation_policy == CreationPolicy::Merge;
    if merge && existing.is_none() {
        return Ok(Outcome::Failed(
            SyncFailure::new(
                Reason::SecretConflict,
                format!(
                    "spec.target.creationPolicy: Merge writes into an existing Secret, and Secret {secret_name} does not exist"
                ),
            ),
            None,
        ));
    }
    let status = ca.status.clone().unwrap_or_default();
    let manager = secret::field_manager(ca);
    let drifted = match (&existing, &status.data_hash) {
        (Some(s), Some(h)) => existing_hash(s, &manager) != *h,
        _ => true,
    };
    let need = plan::need(facts, drifted);
    if need == Need::Nothing && mem.asked.is_none() {
        debug!(next = ?facts.next_due, "credentials fresh; nothing to do");
        let restart = restart::maybe_restart(
            ca,
            ctx,
            facts.now,
            &status,
            validated.min_restart_interval,
            status.data_hash.as_deref(),
        )
        .await;
        return Ok(Outcome::Done(Success {
            secret_name,
            connection: status.connection.clone(),
            expires_at: status.expires_at.clone(),
            next: facts.next_due.unwrap_or(facts.now),
            account: status.account.clone(),
            data_hash: status.data_hash.clone(),
            confirmed: false,
            written: None,
            restart,
        }));
    }
    let resolved = match resolve(ca, ctx).await? {
        Ok(r) => r,
        Err((f, version)) => return Ok(Outcome::Failed(f, version)),
    };
    let key = AccountKey {
        connection: resolved.key().clone(),
        account_id: ca.spec.account_id.clone(),
    };
    let uid = ca.uid().unwrap_or_default();
    let jitter = schedule::jitter_fraction(&uid);
    let cache = &ctx.fetcher.cache;
    // An answer this object asked for (through this very connection) is used first.
    let asked = mem
        .asked
        .as_ref()
        .filter(|(k, _)| *k == key)
        .map(|(_, g)| *g);
    let answer = match asked.and_then(|g| cache.attempt_after(&key, g)) {
        Some(a) => {
            ctx.update_object(&uid, |o| o.asked = None);
            Some(a)
        }
        None if asked.is_some() => None,
        None => {
            let earlier = cache.last_ok(&key);
            let reuse = match need {
                Need::Nothing | Need::Repair => earlier,
                Need::Fetch { reuse: true } => {
                    earlier.filter(|c| plan::still_fresh(c, facts.now, validated.policy, jitter))
                }
                Need::Fetch { reuse: false } => None,
            };
            reuse.map(Attempt::Ok)
        }
    };
    let Some(answer) = answer else {
        // Ask the dispatcher; the answer re-triggers this pass.
        let generation = cache.generation(&key);
        resolved.runtime.request(
            &ca.spec.account_id,
            plan::needed_by(facts, existing.is_some()),
            ObjectRef::from_obj(ca),
        );
        let forced_at = facts.forced.as_ref().map(|_| facts.now);
        ctx.update_object(&uid, |o| {
            o.asked = Some((key, generation));
            if forced_at.is_some() {
                o.last_forced = forced_at;
            }
        });
        debug!(account = %ca.spec.account_id, connection = %resolved.key().id, "fetch requested");
        return Ok(Outcome::Pending);
    };
    let cached = match answer {
        Attempt::Ok(c) => c,
        Attempt::Failed(e) => return Ok(Outcome::Failed(e.into(), resolved.version.clone())),
    };
    let version = resolved.version.clone();
    match write_from(
        ca,
        ctx,
        &status,
        &resolved,
        &cached,
        existing.as_ref(),
        &validated,
        facts,
    )
    .await?
    {
        Ok(s) => Ok(Outcome::Done(s)),
        Err(f) => Ok(Outcome::Failed(f, version)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_from(
    ca: &ConnectedAccount,
    ctx: &Context,
    status: &ConnectedAccountStatus,
    resolved: &Resolved,
    cached: &CachedFetch,
    existing: Option<&Secret>,
    validated: &Validated,
    facts: &Facts,
) -> Result<Result<Success, SyncFailure>, Error> {
    let account = &cached.fetched.account;
    let id = &ca.spec.account_id;
    let credentials = match plan::judge(
        account,
        id,
        &resolved.admission,
        &resolved.key().id.to_string(),
    ) {
        Ok(c) => c.clone(),
        Err(f) => return Ok(Err(f)),
    };
    let timing = match plan::timing(cached) {
        Ok(t) => t,
        Err(f) => return Ok(Err(f)),
    };
    let uid = ca.uid().unwrap_or_default();
    let jitter = schedule::jitter_fraction(&uid);
    let now = ctx.clock.now();
    if timing.observed.expires_at.is_some_and(|e| e <= now) {
        let next = schedule::after_fetch(now, timing.observed, validated.policy, jitter);
        return Ok(Err(plan::expired_answer(id, timing.expires_at, next, now)));
    }
    let expires_at = timing.expires_at.map(format_ts);
    let manager = secret::field_manager(ca);
    let data = match &ca.spec.target.template {
        Some(t) => {
            let (templates, account, exp) =
                (t.data.clone(), cached.fetched.clone(), expires_at.clone());
            let rendered = tokio::task::spawn_blocking(move || {
                template::render(&templates, &credentials, &account.account, exp.as_deref())
            })
            .await;
            match rendered {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => return Ok(Err(SyncFailure::new(Reason::InvalidSpec, e.to_string()))),
                Err(_) => {
                    return Ok(Err(SyncFailure::new(
                        Reason::InvalidSpec,
                        "spec.target.template: rendering failed",
                    )));
                }
            }
        }
        None => {
            let previous = existing.and_then(|s| s.data.as_ref()).map(|d| {
                d.iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            });
            let (d, skipped) = template::raw_data(&credentials, previous.as_ref());
            if !skipped.is_empty() {
                warn!(keys = ?skipped, "credential fields with names that are not valid Secret keys were skipped");
            }
            d
        }
    };
    if data.is_empty() {
        return Ok(Err(SyncFailure::new(
            Reason::CredentialsUnavailable,
            format!("account {id} has no usable credential fields"),
        )));
    }
    let size = secret::data_size(&data);
    if size > template::MAX_SECRET_DATA_BYTES {
        return Ok(Err(SyncFailure::new(
            Reason::SecretWriteFailed,
            format!(
                "the Secret data would be {size} bytes; a Secret holds at most {} bytes",
                template::MAX_SECRET_DATA_BYTES
            ),
        )));
    }
    let hash = data_hash(data.iter().map(|(k, v)| (k, v.as_slice())));
    let desired = desired_secret(ca, &data, expires_at.as_deref());
    if let Some(e) = existing {
        if let Some(m) = secret::type_conflict(e, &desired) {
            return Ok(Err(SyncFailure::new(Reason::InvalidSpec, m)));
        }
        if ca.spec.target.creation_policy == CreationPolicy::Merge
            && let Some(c) = secret::merge_conflict(ca, e, data.keys(), |u| ctx.account_exists(u))
        {
            return Ok(Err(SyncFailure::new(Reason::SecretConflict, c.0)));
        }
    }
    let secret_name = ca.secret_name();
    let written = if existing.is_some_and(|e| up_to_date(e, &desired, &manager)) {
        None
    } else {
        let api: Api<Secret> =
            Api::namespaced(ctx.client.clone(), &ca.namespace().unwrap_or_default());
        match api
            .patch(
                &secret_name,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&desired),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 413 | 422) => {
                return Ok(Err(refused_write(&secret_name, s.code, &s.message)));
            }
            Err(e) => return Err(Error::WriteSecret(e)),
        }
        let same_data = status.data_hash.as_deref() == Some(hash.as_str());
        Some(
            match (existing.is_some(), same_data && !facts.spec_changed) {
                (false, false) => "SecretCreated",
                (_, true) => "DriftCorrected",
                (true, false) => "SecretUpdated",
            },
        )
    };
    let next = schedule::after_fetch(ctx.clock.now(), timing.observed, validated.policy, jitter);
    let restart = restart::maybe_restart(
        ca,
        ctx,
        facts.now,
        status,
        validated.min_restart_interval,
        Some(&hash),
    )
    .await;
    Ok(Ok(Success {
        secret_name,
        connection: Some(resolved.key().id.status_ref()),
        expires_at,
        next: next.at,
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

/// The API server refused the Secret: name the spec field that caused it. Its message names fields and keys,
/// never data values.
fn refused_write(secret: &str, code: u16, message: &str) -> SyncFailure {
    let message: String = message.chars().take(300).collect();
    if code == 403 || code == 413 {
        return SyncFailure::new(
            Reason::SecretWriteFailed,
            format!("the API server refused to write Secret {secret} (HTTP {code}): {message}"),
        );
    }
    let field = if message.contains("metadata.labels") {
        "spec.target.labels"
    } else if message.contains("metadata.annotations") {
        "spec.target.annotations"
    } else if message.contains("type") && message.contains("immutable") {
        "spec.target.type"
    } else if message.contains("data") {
        "spec.target.template.data"
    } else {
        "spec.target"
    };
    SyncFailure::new(
        Reason::InvalidSpec,
        format!("{field}: the API server refused Secret {secret}: {message}"),
    )
}

async fn finish_success(
    ca: &ConnectedAccount,
    ctx: &Context,
    old: ConnectedAccountStatus,
    s: Success,
    forced: Option<String>,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
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
    st.next_sync_time = Some(format_ts(s.next));
    st.account = s.account.clone();
    st.data_hash = s.data_hash.clone();
    if forced.is_some() && s.confirmed {
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
    write_status(ca, ctx, &old, &st, now).await?;
    let name = ca.name_any();
    let ns = ca.namespace().unwrap_or_default();
    let last_sync = st.last_sync_time.as_deref().and_then(parse_ts);
    ctx.metrics.set_object(&ns, &name, |o| {
        o.expires_at = s.expires_at.as_deref().and_then(parse_ts);
        o.next_sync = Some(s.next);
        o.last_sync = last_sync;
        o.ready = Some((true, Reason::Synced.as_str()));
    });
    if s.confirmed {
        ctx.metrics.count_sync(Reason::Synced.as_str());
        info!(secret = %s.secret_name, written = s.written.unwrap_or("unchanged"), expires_at = ?s.expires_at, next_sync = %format_ts(s.next), "synced");
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
    Ok(requeue(ctx, &ca.uid().unwrap_or_default(), s.next))
}

async fn finish_failure(
    ca: &ConnectedAccount,
    ctx: &Context,
    old: ConnectedAccountStatus,
    mut f: SyncFailure,
    connection_version: Option<String>,
    forced: Option<String>,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let uid = ca.uid().unwrap_or_default();
    let attempt = ctx.update_object(&uid, |o| {
        o.failures = o.failures.saturating_add(1);
        o.failures
    });
    let held_expiry = old.expires_at.as_deref().and_then(parse_ts);
    let delay = match f.retry_in {
        Some(d) => d,
        None => {
            let r = schedule::after_failure(
                now,
                attempt - 1,
                held_expiry,
                f.reason.class(),
                f.retry_after,
            );
            if r.past_expiry {
                f.message.push_str(&format!(
                    "; Pipedream asks to wait {}s, past the expiry of the credentials in the Secret",
                    r.delay.as_secs()
                ));
            }
            r.delay
        }
    };
    let next = schedule::add(now, delay);
    let about_connection = f.reason.about_connection();
    ctx.update_object(&uid, |o| {
        o.retry_at = Some(next);
        o.failed_connection_version = if about_connection {
            connection_version
        } else {
            None
        };
    });
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
    write_status(ca, ctx, &old, &st, now).await?;
    let reason = f.reason.as_str();
    ctx.metrics.count_sync(reason);
    ctx.metrics
        .set_object(&ca.namespace().unwrap_or_default(), &ca.name_any(), |o| {
            o.expires_at = held_expiry;
            o.next_sync = Some(next);
            o.ready = Some((false, reason));
        });
    warn!(reason, message = %f.message, attempt, retry_in_s = delay.as_secs(), "sync failed; the Secret is left as it was");
    if transition {
        publish(ctx, ca, EventType::Warning, reason, f.message.clone()).await;
    }
    Ok(requeue(ctx, &uid, next))
}

/// Write status when it changed. A change of `nextSyncTime` alone to a time less than a minute away is kept in
/// memory only, so fast polling does not rewrite status (and trigger a watch event) every second.
async fn write_status(
    ca: &ConnectedAccount,
    ctx: &Context,
    old: &ConnectedAccountStatus,
    new: &ConnectedAccountStatus,
    now: Timestamp,
) -> Result<(), Error> {
    if ca.status.is_some() && old == new {
        return Ok(());
    }
    let only_next = ConnectedAccountStatus {
        next_sync_time: old.next_sync_time.clone(),
        ..new.clone()
    } == *old;
    let soon = new
        .next_sync_time
        .as_deref()
        .and_then(parse_ts)
        .is_some_and(|t| t < schedule::add(now, plan::UNPERSISTED_RETRY));
    if ca.status.is_some() && only_next && soon {
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
    let written = new.next_sync_time.as_deref().and_then(parse_ts);
    ctx.update_object(&ca.uid().unwrap_or_default(), |o| {
        o.written_next_sync = written
    });
    Ok(())
}

/// On deletion: a Secret that must be retained loses our ownerReference before garbage collection can take it
/// (deletionPolicy switched to Retain just before the delete), and the operator forgets the object.
async fn cleanup(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    let ns = ca.namespace().unwrap_or_default();
    let uid = ca.uid().unwrap_or_default();
    if ca.spec.target.deletion_policy == DeletionPolicy::Retain {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        if let Some(s) = api
            .get_opt(&ca.secret_name())
            .await
            .map_err(Error::ReadSecret)?
            && s.owner_references().iter().any(|o| o.uid == uid)
        {
            let keep: Vec<_> = s
                .owner_references()
                .iter()
                .filter(|o| o.uid != uid)
                .cloned()
                .collect();
            // resourceVersion makes the patch conditional: a concurrent change fails it and the pass retries.
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": s.resource_version(), "ownerReferences": keep}});
            api.patch(
                &ca.secret_name(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(Error::ReleaseSecret)?;
            info!(secret = %ca.secret_name(), "released the retained Secret before deletion");
        }
    }
    ctx.metrics.forget_object(&ns, &ca.name_any());
    ctx.forget_object(&uid);
    Ok(Action::await_change())
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
    if let Err(e) = ctx.recorder().publish(&ev, &ca.object_ref(&())).await {
        warn!(error = %kube_error_summary(&e), "publishing an Event failed");
    }
}

/// Backoff for Kubernetes API failures, landing before the held credentials expire.
pub fn error_policy(ca: Arc<ConnectedAccount>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = ca.uid().unwrap_or_default();
    let attempt = ctx.update_object(&uid, |o| {
        o.failures = o.failures.saturating_add(1);
        o.failures
    });
    let exp = ca
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_deref())
        .and_then(parse_ts);
    let now = ctx.clock.now();
    let r = schedule::after_failure(
        now,
        attempt - 1,
        exp,
        schedule::FailureClass::Transient,
        None,
    );
    ctx.metrics.count_reconcile_error(err.metric_label());
    warn!(error = %err, kind = err.metric_label(), attempt, retry_in_s = r.delay.as_secs(), "reconcile failed");
    ctx.update_object(&uid, |o| o.next_pass = Some(schedule::add(now, r.delay)));
    Action::requeue(r.delay)
}
