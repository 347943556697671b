//! The ConnectedAccount pass, as a plan: read what is known ([`gather`]: the object, the operator's memory, the
//! Secret index, the connection, the answer cache), decide ([`plan::decide`]), build ([`build`]) and apply
//! ([`write`]), then report ([`report`]: status, Events, metrics, the requeue). The decisions are pure; this file
//! holds the I/O.
//!
//! A write happens in the pass its answer triggers, with what that pass read: usually nothing at all (the index
//! says the Secret is as written), so a first sync costs a Secret apply, a status apply and an Event, and a
//! refresh a Secret apply and a status apply.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use super::build::{self, Built, Synced, Written};
use super::fetch::CachedFetch;
use super::plan::{self, Answer, Cause, Facts, Recorded, Remembered, SecretFacts, Step};
use super::resolve::{Resolved, resolve};
use super::restart;
use super::spec::{self, Validated};
use super::status::{apply_status, event_type, publish, ready_changed, ready_of};
use super::targets::{NotReady, SecretId};
use super::{Context, ObjectState};
use crate::crd::{
    ConnectedAccount, ConnectedAccountStatus, CreationPolicy, DeletionPolicy, FINALIZER,
};
use crate::identity::AccountKey;
use crate::reason::{Error, Reason, SyncFailure};
use crate::schedule::{self, format_ts, parse_ts};
use crate::secret::{self, check_ownership, existing_hash};

/// How a pass ended, before it is reported.
enum Outcome {
    Synced(Synced),
    Failed(SyncFailure),
}

/// What [`gather`] found, beside the facts.
struct Known {
    facts: Facts,
    connection: Option<Resolved>,
    key: Option<AccountKey>,
    /// The Secret, when the pass read it.
    read: Option<Secret>,
    /// The Secret exists (in the index or as read).
    exists: bool,
    /// The connection's resourceVersion (a failure it caused is retried when it changes).
    connection_version: Option<String>,
    status: ConnectedAccountStatus,
}

/// Entry point for the controller.
pub async fn reconcile(ca: Arc<ConnectedAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let _in_flight = ctx.metrics.reconcile_started();
    let out = if ca.metadata.deletion_timestamp.is_some() {
        finalize(&ca, &ctx).await
    } else {
        match keep_finalizer(&ca, &ctx).await {
            Ok(()) => pass(&ca, &ctx).await,
            Err(e) => Err(e),
        }
    };
    ctx.metrics.observe_reconcile(started.elapsed());
    out
}

/// One pass: gather, decide, act, report.
async fn pass(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    let uid = ca.uid().unwrap_or_default();
    let mem = ctx.object(&uid);
    // Waits need no reads: a failed object's own status write must cost nothing.
    if let Some(at) = plan::hold(
        &recorded(ca, &mem),
        &remembered(ca, ctx, &mem),
        ctx.clock.now(),
    ) {
        debug!(until = %format_ts(at), "waiting");
        return Ok(requeue(ctx, &uid, at));
    }
    let known = gather(ca, ctx, &mem).await?;
    let outcome = match plan::decide(&known.facts) {
        Step::Wait(at) => return Ok(requeue(ctx, &uid, at)),
        Step::Fetch { needed_by } => {
            ask(ca, ctx, &known, needed_by);
            let at = schedule::add(ctx.clock.now(), plan::PENDING_RECHECK);
            return Ok(requeue(ctx, &uid, at));
        }
        Step::Keep(next) => Outcome::Synced(keep(ca, ctx, &known, next).await),
        Step::Write(answer, cause) => write(ca, ctx, &known, &answer, cause).await?,
        Step::Fail(f) => Outcome::Failed(f),
    };
    report(ca, ctx, &known, outcome).await
}

fn recorded(ca: &ConnectedAccount, mem: &ObjectState) -> Recorded {
    let status = ca.status.clone().unwrap_or_default();
    let ready = ready_of(&status.conditions);
    Recorded {
        forced: ca
            .annotations()
            .get(crate::crd::FORCE_SYNC_ANNOTATION)
            .filter(|v| status.last_force_sync.as_ref() != Some(*v))
            .cloned(),
        spec_changed: status.observed_generation != ca.metadata.generation,
        // The cached object can predate this process's own status write: its time wins.
        next_due: mem
            .written_next_sync
            .or(status.next_sync_time.as_deref().and_then(parse_ts)),
        failed: ready.as_ref().is_some_and(|(s, _)| s == "False"),
        ready: ready.as_ref().is_some_and(|(s, _)| s == "True"),
        held_expiry: status.expires_at.as_deref().and_then(parse_ts),
    }
}

fn remembered(ca: &ConnectedAccount, ctx: &Context, mem: &ObjectState) -> Remembered {
    let version = super::resolve::connection_version(ca, ctx);
    Remembered {
        retry_at: mem.retry_at,
        last_forced: mem.last_forced,
        connection_changed: mem
            .failed_connection_version
            .as_ref()
            .is_some_and(|was| version.as_ref() != Some(was)),
        asked: mem.asked.is_some(),
    }
}

/// Everything the decision needs. Reads only what the index cannot answer: a Secret whose resourceVersion is
/// not the one recorded, a Merge target, or any target before the index is filled.
async fn gather(ca: &ConnectedAccount, ctx: &Context, mem: &ObjectState) -> Result<Known, Error> {
    let now = ctx.clock.now();
    let uid = ca.uid().unwrap_or_default();
    let status = ca.status.clone().unwrap_or_default();
    let spec = spec::validate_spec(ca);
    // An invalid spec is reported before anything is read.
    let (secret, read, exists) = if spec.is_ok() {
        secret_facts(ca, ctx, &status, mem).await?
    } else {
        (SecretFacts::New, None, false)
    };
    let resolved = resolve(ca, ctx).await?;
    let connection_version = match &resolved {
        Ok(r) => r.version.clone(),
        Err(u) => u.version.clone(),
    };
    let key = resolved.as_ref().ok().map(|r| AccountKey {
        connection: r.key().clone(),
        account_id: ca.spec.account_id.clone(),
    });
    let cache = &ctx.fetcher.cache;
    let asked = mem
        .asked
        .as_ref()
        .filter(|(k, _)| Some(k) == key.as_ref())
        .map(|(_, g)| *g);
    let answer = match (asked, &key) {
        (Some(g), Some(k)) => match cache.attempt_after(k, g) {
            Some(a) => {
                ctx.update_object(&uid, |o| o.asked = None);
                Answer::Arrived(a)
            }
            None => Answer::Awaited,
        },
        (None, Some(k)) => Answer::Last(cache.last_ok(k)),
        (_, None) => Answer::Last(None),
    };
    let (connection, resolved) = match resolved {
        Ok(r) => (Ok(()), Some(r)),
        Err(u) => (Err(u.failure), None),
    };
    Ok(Known {
        facts: Facts {
            now,
            spec,
            recorded: recorded(ca, mem),
            remembered: remembered(ca, ctx, mem),
            secret,
            secret_exists: exists,
            connection,
            answer,
            jitter: schedule::jitter_fraction(&uid),
        },
        connection: resolved,
        key,
        read,
        exists,
        connection_version,
        status,
    })
}

/// The target Secret as the pass sees it: (facts, the Secret if read, whether it exists). Read only when the index
/// cannot say: another resourceVersion than recorded, another writer, a spec change (the Secret's type matters),
/// a Merge target, or a name the index does not hold but someone else's Secret might.
async fn secret_facts(
    ca: &ConnectedAccount,
    ctx: &Context,
    status: &ConnectedAccountStatus,
    mem: &ObjectState,
) -> Result<(SecretFacts, Option<Secret>, bool), Error> {
    let name = ca.secret_name();
    let id = SecretId::new(ca.namespace().unwrap_or_default(), &name);
    let merge = ca.spec.target.creation_policy == CreationPolicy::Merge;
    let spec_changed = status.observed_generation != ca.metadata.generation;
    let recorded = mem
        .secret_version
        .as_ref()
        .or(status.secret_resource_version.as_ref());
    let unseen = if status.data_hash.is_some() {
        SecretFacts::Drifted
    } else {
        SecretFacts::New
    };
    match ctx.secrets.get(&id) {
        Ok(Some(ix))
            if !merge
                && !spec_changed
                && ix.owner.as_deref() == Some(secret::owner_id(ca).as_str())
                && Some(&ix.resource_version) == recorded =>
        {
            return Ok((SecretFacts::AsWritten, None, true));
        }
        // This process wrote it and the index has not seen it (yet, or any more): read it.
        Ok(None) if !merge && mem.secret_version.is_some() => {}
        Ok(None) if !merge => {
            // Not among the Secrets the operator writes into: someone else may hold the name.
            let foreign = ctx
                .foreign
                .exists(&ctx.client, &id)
                .await
                .map_err(Error::ReadSecret)?;
            if !foreign {
                return Ok((unseen, None, false));
            }
        }
        Ok(_) | Err(NotReady) => {}
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let Some(s) = api.get_opt(&name).await.map_err(Error::ReadSecret)? else {
        if merge {
            let m = format!(
                "spec.target.creationPolicy: Merge writes into an existing Secret, and Secret {name} does not exist"
            );
            return Ok((SecretFacts::Conflict(m), None, false));
        }
        return Ok((unseen, None, false));
    };
    if let Err(c) = check_ownership(ca, &s) {
        return Ok((
            SecretFacts::Conflict(format!("spec.target.name: {}", c.0)),
            Some(s),
            true,
        ));
    }
    let ours = existing_hash(&s, &secret::field_manager(ca));
    if status.data_hash.as_deref() == Some(ours.as_str()) {
        // As written: remember this version, so the next pass does not read it again.
        let version = s.resource_version();
        ctx.update_object(&ca.uid().unwrap_or_default(), |o| {
            o.secret_version = version
        });
        return Ok((SecretFacts::AsWritten, Some(s), true));
    }
    Ok((SecretFacts::Drifted, Some(s), true))
}

/// Ask the connection's dispatcher for the account; its answer triggers the next pass.
fn ask(ca: &ConnectedAccount, ctx: &Context, known: &Known, needed_by: Timestamp) {
    let (Some(conn), Some(key)) = (&known.connection, &known.key) else {
        return;
    };
    let uid = ca.uid().unwrap_or_default();
    let generation = ctx.fetcher.cache.generation(key);
    conn.dispatcher
        .request(&ca.spec.account_id, needed_by, ObjectRef::from_obj(ca));
    let forced_at = known
        .facts
        .recorded
        .forced
        .as_ref()
        .map(|_| known.facts.now);
    ctx.update_object(&uid, |o| {
        o.asked = Some((key.clone(), generation));
        if forced_at.is_some() {
            o.last_forced = forced_at;
        }
    });
    debug!(account = %ca.spec.account_id, connection = %conn.key().id, "fetch requested");
}

/// Nothing to write: the Secret is right. Only a rollout restart held back by its debounce may be due.
async fn keep(ca: &ConnectedAccount, ctx: &Context, known: &Known, next: Timestamp) -> Synced {
    let mut s = Synced::unchanged(ca, next);
    if let Ok(v) = &known.facts.spec {
        s.restart = restart::maybe_restart(
            ca,
            ctx,
            known.facts.now,
            &known.status,
            v.min_restart_interval,
            known.status.data_hash.as_deref(),
        )
        .await;
    }
    s
}

/// Build the Secret from `answer` and apply it, unless it already holds exactly that.
async fn write(
    ca: &ConnectedAccount,
    ctx: &Context,
    known: &Known,
    answer: &CachedFetch,
    cause: Cause,
) -> Result<Outcome, Error> {
    let (Ok(validated), Some(conn)) = (&known.facts.spec, &known.connection) else {
        return Ok(Outcome::Failed(SyncFailure::new(
            Reason::UpstreamError,
            "internal: a write without a usable spec and connection",
        )));
    };
    let ns = ca.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = ca.secret_name();
    // A credential field sent as null keeps its value: read the Secret for it if the pass did not.
    let mut read = known.read.clone();
    if read.is_none() && known.exists && build::has_null_fields(answer) {
        read = api.get_opt(&name).await.map_err(Error::ReadSecret)?;
    }
    let previous = read.as_ref().and_then(secret::data_of);
    let built = match build_secret(ca, ctx, *validated, conn, answer, previous.as_ref()).await {
        Ok(b) => b,
        Err(f) => return Ok(Outcome::Failed(f)),
    };
    if let Some(f) = refuse(ca, ctx, &api, known, read.as_ref(), &built).await? {
        return Ok(Outcome::Failed(f));
    }
    let st = &known.status;
    let unchanged = known.facts.secret == SecretFacts::AsWritten
        && !known.facts.recorded.spec_changed
        && st.data_hash.as_deref() == Some(built.hash.as_str())
        && st.expires_at == built.expires_at;
    let (written, version) = if unchanged {
        (None, st.secret_resource_version.clone())
    } else {
        let manager = secret::field_manager(ca);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&built.secret),
            )
            .await;
        let applied = match applied {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 413 | 422) => {
                return Ok(Outcome::Failed(refused_write(&name, s.code, &s.message)));
            }
            Err(e) => return Err(Error::WriteSecret(e)),
        };
        let version = applied.resource_version();
        let uid = ca.uid().unwrap_or_default();
        ctx.update_object(&uid, |o| o.secret_version = version.clone());
        let same_data = st.data_hash.as_deref() == Some(built.hash.as_str());
        let kind = build::written(
            known.exists,
            cause,
            same_data,
            known.facts.recorded.spec_changed,
        );
        (Some(kind), version)
    };
    let restart = restart::maybe_restart(
        ca,
        ctx,
        known.facts.now,
        st,
        validated.min_restart_interval,
        Some(&built.hash),
    )
    .await;
    Ok(Outcome::Synced(Synced {
        secret_name: name,
        connection: Some(conn.key().id.status_ref()),
        expires_at: built.expires_at,
        next: built.next,
        account: Some(built.account),
        data_hash: Some(built.hash),
        confirmed: true,
        written,
        restart,
        secret_version: version,
    }))
}

async fn build_secret(
    ca: &ConnectedAccount,
    ctx: &Context,
    validated: Validated,
    conn: &Resolved,
    answer: &CachedFetch,
    previous: Option<&std::collections::BTreeMap<String, Vec<u8>>>,
) -> Result<Built, SyncFailure> {
    build::secret(build::Inputs {
        ca,
        validated,
        admission: &conn.admission,
        connection: &conn.key().id,
        answer,
        previous,
        now: ctx.clock.now(),
        jitter: schedule::jitter_fraction(&ca.uid().unwrap_or_default()),
    })
    .await
}

/// Why the built Secret must not be applied, if so: a first write into a name someone else's Secret holds, a type
/// change, or a Merge key another ConnectedAccount writes.
async fn refuse(
    ca: &ConnectedAccount,
    ctx: &Context,
    api: &Api<Secret>,
    known: &Known,
    read: Option<&Secret>,
    built: &Built,
) -> Result<Option<SyncFailure>, Error> {
    let name = ca.secret_name();
    let mut existing = read.cloned();
    if existing.is_none() && !known.exists {
        // Not among the Secrets the operator writes into: does someone else have one of that name?
        let id = SecretId::new(ca.namespace().unwrap_or_default(), &name);
        if ctx
            .foreign
            .exists(&ctx.client, &id)
            .await
            .map_err(Error::ReadSecret)?
        {
            existing = api.get_opt(&name).await.map_err(Error::ReadSecret)?;
        }
    }
    let Some(e) = existing else {
        return Ok(None);
    };
    let conflict = |m: String| Ok(Some(SyncFailure::new(Reason::SecretConflict, m)));
    if let Err(c) = check_ownership(ca, &e) {
        return conflict(format!("spec.target.name: {}", c.0));
    }
    if let Some(m) = secret::type_conflict(&e, &built.secret) {
        return Ok(Some(SyncFailure::new(Reason::InvalidSpec, m)));
    }
    if ca.spec.target.creation_policy == CreationPolicy::Merge
        && let Some(data) = built.secret.data.as_ref()
        && let Some(c) = secret::merge_conflict(ca, &e, data.keys(), |u| ctx.account_exists(u))
    {
        return conflict(c.0);
    }
    Ok(None)
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

/// Status, Events, metrics and the requeue of a pass.
async fn report(
    ca: &ConnectedAccount,
    ctx: &Context,
    known: &Known,
    outcome: Outcome,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let uid = ca.uid().unwrap_or_default();
    let old = &known.status;
    let forced = known.facts.recorded.forced.as_deref();
    let (ns, name) = (ca.namespace().unwrap_or_default(), ca.name_any());
    match outcome {
        Outcome::Synced(s) => {
            ctx.update_object(&uid, |o| {
                o.failures = 0;
                o.retry_at = None;
                o.failed_connection_version = None;
            });
            let st = build::synced_status(ca, old, &s, forced, now);
            write_status(ca, ctx, old, &st, now).await?;
            let last_sync = st.last_sync_time.as_deref().and_then(parse_ts);
            ctx.metrics.set_object(&ns, &name, |o| {
                o.expires_at = s.expires_at.as_deref().and_then(parse_ts);
                o.next_sync = Some(s.next);
                o.last_sync = last_sync;
                o.ready = Some((true, Reason::Synced.as_str()));
            });
            if s.confirmed {
                ctx.metrics.count_sync(Reason::Synced.as_str());
                let written = s.written.map_or("unchanged", Written::reason);
                info!(secret = %s.secret_name, written, expires_at = ?s.expires_at, next_sync = %format_ts(s.next), "synced");
            }
            let msg = s.message(&ca.spec.account_id);
            // Events mark what a user wants to know of: a Secret created or repaired, a spec change applied, a
            // recovery. A routine refresh is in status and metrics only.
            let event = match s.written {
                Some(Written::SecretCreated) => Some((
                    "SecretCreated",
                    format!("created Secret {}; {msg}", s.secret_name),
                )),
                Some(Written::DriftCorrected) => Some((
                    "DriftCorrected",
                    format!(
                        "Secret {} differed from the last synced data and was restored",
                        s.secret_name
                    ),
                )),
                Some(Written::SecretUpdated) if known.facts.recorded.spec_changed => Some((
                    "SecretUpdated",
                    format!("updated Secret {}; {msg}", s.secret_name),
                )),
                _ if ready_changed(&old.conditions, &st.conditions) => {
                    Some((Reason::Synced.as_str(), msg))
                }
                _ => None,
            };
            if let Some((reason, note)) = event {
                publish(ctx, ca, EventType::Normal, reason, "Sync", note).await;
            }
            if let Some(r) = &s.restart {
                publish(
                    ctx,
                    ca,
                    EventType::Normal,
                    "RolloutRestarted",
                    "Sync",
                    r.note.clone(),
                )
                .await;
            }
            Ok(requeue(ctx, &uid, s.next))
        }
        Outcome::Failed(mut f) => {
            let attempt = ctx.record_failure(&uid);
            let held_expiry = old.expires_at.as_deref().and_then(parse_ts);
            let (delay, note) = plan::retry_after_failure(&f, attempt, held_expiry, now);
            if let Some(n) = note {
                f.message.push_str(&n);
            }
            let next = schedule::add(now, delay);
            let failed_version = f
                .reason
                .about_connection()
                .then(|| known.connection_version.clone())
                .flatten();
            ctx.update_object(&uid, |o| {
                o.retry_at = Some(next);
                o.failed_connection_version = failed_version;
            });
            let st = build::failed_status(ca, old, &f, next, forced, now);
            write_status(ca, ctx, old, &st, now).await?;
            let reason = f.reason.as_str();
            ctx.metrics.count_sync(reason);
            ctx.metrics.set_object(&ns, &name, |o| {
                o.expires_at = held_expiry;
                o.next_sync = Some(next);
                o.ready = Some((false, reason));
            });
            warn!(reason, message = %f.message, attempt, retry_in_s = delay.as_secs(), "sync failed; the Secret is left as it was");
            if ready_changed(&old.conditions, &st.conditions) {
                publish(
                    ctx,
                    ca,
                    event_type(false),
                    reason,
                    "Sync",
                    f.message.clone(),
                )
                .await;
            }
            Ok(requeue(ctx, &uid, next))
        }
    }
}

/// Apply status when it needs writing, and remember the `nextSyncTime` written.
async fn write_status(
    ca: &ConnectedAccount,
    ctx: &Context,
    old: &ConnectedAccountStatus,
    new: &ConnectedAccountStatus,
    now: Timestamp,
) -> Result<(), Error> {
    if !build::status_needs_write(ca.status.is_some(), old, new, now) {
        return Ok(());
    }
    let api: Api<ConnectedAccount> =
        Api::namespaced(ctx.client.clone(), &ca.namespace().unwrap_or_default());
    apply_status(&api, &ca.name_any(), new)
        .await
        .map_err(Error::WriteStatus)?;
    let written = new.next_sync_time.as_deref().and_then(parse_ts);
    ctx.update_object(&ca.uid().unwrap_or_default(), |o| {
        o.written_next_sync = written
    });
    Ok(())
}

/// The next pass at `at`, counted from the end of this one: a slow pass does not push the next one later.
fn requeue(ctx: &Context, uid: &str, at: Timestamp) -> Action {
    let now = ctx.clock.now();
    ctx.update_object(uid, |o| o.next_pass = Some(at));
    Action::requeue(schedule::until(now, at))
}

/// Only an owned Secret that must outlive its ConnectedAccount (`Owner` + `Retain`) can still carry the
/// ownerReference garbage collection would follow (the policy was switched just before the delete): only then
/// does deletion wait for the operator. Every other object carries no finalizer.
fn needs_finalizer(ca: &ConnectedAccount) -> bool {
    ca.spec.target.creation_policy == CreationPolicy::Owner
        && ca.spec.target.deletion_policy == DeletionPolicy::Retain
}

/// Add or remove the finalizer as [`needs_finalizer`] says. A merge patch carrying the resourceVersion it saw:
/// a concurrent change of the list fails it (409) and the pass is retried.
async fn keep_finalizer(ca: &ConnectedAccount, ctx: &Context) -> Result<(), Error> {
    let has = ca.finalizers().iter().any(|f| f == FINALIZER);
    match (needs_finalizer(ca), has) {
        (true, false) => {
            let mut list = ca.finalizers().to_vec();
            list.push(FINALIZER.to_string());
            set_finalizers(ca, ctx, list).await
        }
        (false, true) => set_finalizers(ca, ctx, without_ours(ca)).await,
        _ => Ok(()),
    }
}

fn without_ours(ca: &ConnectedAccount) -> Vec<String> {
    ca.finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

async fn set_finalizers(
    ca: &ConnectedAccount,
    ctx: &Context,
    list: Vec<String>,
) -> Result<(), Error> {
    let api: Api<ConnectedAccount> =
        Api::namespaced(ctx.client.clone(), &ca.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": ca.resource_version(), "finalizers": list}});
    api.patch(
        &ca.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::Finalizer)?;
    Ok(())
}

/// On deletion: a retained Secret loses this object's ownerReference before garbage collection can follow it,
/// then the finalizer goes and the operator forgets the object.
async fn finalize(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    let ns = ca.namespace().unwrap_or_default();
    let uid = ca.uid().unwrap_or_default();
    if ca.finalizers().iter().any(|f| f == FINALIZER) {
        if ca.spec.target.deletion_policy == DeletionPolicy::Retain {
            release_secret(ca, ctx).await?;
        }
        set_finalizers(ca, ctx, without_ours(ca)).await?;
    }
    ctx.forget(&uid, &ns, &ca.name_any());
    Ok(Action::await_change())
}

async fn release_secret(ca: &ConnectedAccount, ctx: &Context) -> Result<(), Error> {
    let uid = ca.uid().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ca.namespace().unwrap_or_default());
    let Some(s) = api
        .get_opt(&ca.secret_name())
        .await
        .map_err(Error::ReadSecret)?
    else {
        return Ok(());
    };
    if !s.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(());
    }
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
    Ok(())
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
