//! The ConnectedAccount pass, as a plan: read what is known ([`gather`]: the object, the operator's memory, the
//! Secret index, the connection, the answer cache), decide ([`plan::decide`]), build ([`build`](super::build))
//! and apply ([`write`]), then report ([`report`]: status, Events, metrics, the requeue). The decisions are
//! pure; these files hold the I/O. Deletion and the finalizer are in [`finalizer`].
//!
//! A write happens in the pass its answer triggers, with what that pass read: usually nothing at all (the index
//! says the Secret is as written), so a first sync costs a Secret apply, a status apply and an Event, and a
//! refresh a Secret apply and a status apply.

mod finalizer;
mod gather;
mod report;
mod write;

pub use finalizer::let_go;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{debug, instrument, warn};

use super::build::Synced;
use super::cached::CachedAccount;
use super::context::status_digest;
use super::memory::MemoryChange;
use super::plan::{self, Facts, Step};
use super::resolve::Resolved;
use super::subject::Subject;
use super::{Context, ObjectState};
use crate::controller::Error;
use crate::crd::ConnectedAccount;
use crate::identity::AccountKey;
use crate::reason::SyncFailure;
use crate::schedule::{self, format_ts, parse_ts};

/// How long a pass waits for the watch to deliver the operator's own last status write before it takes the cached
/// status as it is (someone else changed it).
const STALE_CACHE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// How soon it looks again meanwhile.
const STALE_CACHE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a pass waits for the Secret watch to deliver the operator's own last Secret write before it reads the
/// Secret (the watch is lagging or broken). A change by someone else right after a write shows in the index as a
/// third version and is read at once; only a deletion within this window waits it out.
const INDEX_LAG_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How a pass ended, before it is reported.
enum Outcome {
    Synced(Box<Synced>),
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
}

/// Entry point for the controller: the cached object, decoded for this pass.
pub async fn reconcile_cached(ca: Arc<CachedAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ca = ca.unpack().map_err(Error::DecodeCached)?;
    reconcile(Arc::new(ca), ctx).await
}

/// [`error_policy`] for the controller. An object that cannot be decoded (a bug: the operator encoded it) backs
/// off as a transient failure with the default propagation time and no known expiry.
pub fn error_policy_cached(ca: Arc<CachedAccount>, err: &Error, ctx: Arc<Context>) -> Action {
    match ca.unpack() {
        Ok(full) => error_policy(Arc::new(full), err, ctx),
        Err(_) => {
            let uid = ca.meta().uid.clone().unwrap_or_default();
            back_off(&uid, None, ctx.settings.propagation, err, &ctx)
        }
    }
}

/// A pass of `ca`. Its log lines carry the object and the pass's number in this process (a `reconcile` span), so
/// one pass can be followed through the log.
#[instrument(name = "reconcile", skip_all, fields(
    kind = "ConnectedAccount",
    namespace = ca.metadata.namespace.as_deref().unwrap_or_default(),
    object = ca.metadata.name.as_deref().unwrap_or_default(),
    pass = super::next_pass_id(),
))]
pub async fn reconcile(ca: Arc<ConnectedAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let _in_flight = ctx.metrics.reconcile_started();
    let out = if ca.metadata.deletion_timestamp.is_some() {
        finalizer::finalize(&ca, &ctx).await
    } else {
        match finalizer::keep(&ca, &ctx).await {
            Ok(()) => pass(&ca, &ctx).await,
            Err(e) => Err(e),
        }
    };
    ctx.metrics
        .observe_reconcile("connectedaccount", out.is_ok(), started.elapsed());
    out
}

/// One pass: gather, decide, act, report. What it changes in the operator's memory of the object is collected in
/// one [`MemoryChange`] and applied once, at its end (also when an API call failed).
async fn pass(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    let subject = Subject::of(ca);
    let mem = ctx.object(&subject.uid);
    let mut change = MemoryChange::default();
    let next = steps(&subject, ctx, &mem, &mut change).await;
    if let Ok(at) = next {
        change.next_pass(at);
    }
    ctx.update_object(&subject.uid, |o| change.apply(o));
    next.map(|at| requeue(ctx, at))
}

/// The stages of a pass; when the next one is due. The pass reads the clock once, here: every stage decides and
/// stamps with this `now`.
async fn steps(
    subject: &Subject<'_>,
    ctx: &Context,
    mem: &ObjectState,
    change: &mut MemoryChange,
) -> Result<Timestamp, Error> {
    let now = ctx.clock.now();
    // A cached object older than this process's own status write (its Secret's watch event came first) would
    // decide from the status before that write, and write it back: wait for the watch to deliver the new one.
    if let Some((digest, at)) = mem.written_status
        && digest != status_digest(subject.recorded)
        && now < schedule::add(at, STALE_CACHE_PATIENCE)
    {
        debug!("the cached object predates the last status write; waiting for the watch");
        return Ok(schedule::add(now, STALE_CACHE_RECHECK));
    }
    // Likewise for the Secret: until the index has seen this process's write, the pass would have to read it.
    if let Some(at) = index_lagging(subject, ctx, mem, now) {
        debug!("the Secret index has not seen the last Secret write; waiting for the watch");
        return Ok(at);
    }
    // Waits need no reads: a failed object's own status write must cost nothing.
    let (recorded, remembered) = (
        gather::recorded(subject, mem),
        gather::remembered(subject, ctx, mem),
    );
    if let Some(at) = plan::hold(&recorded, &remembered, now) {
        debug!(until = %format_ts(at), "waiting");
        return Ok(at);
    }
    let known = gather::gather(subject, ctx, mem, now, change).await?;
    let outcome = match plan::decide(&known.facts) {
        Step::Wait(at) => return Ok(at),
        Step::Fetch { urgency } => {
            write::ask(subject, ctx, &known, mem, urgency, change);
            return Ok(schedule::add(now, plan::PENDING_RECHECK));
        }
        Step::Keep(next) => {
            Outcome::Synced(Box::new(write::keep(subject, ctx, &known, next).await))
        }
        Step::Write(judged) => write::write(subject, ctx, &known, &judged, change).await?,
        Step::Fail(f) => Outcome::Failed(f),
    };
    report::report(subject, ctx, &known, mem, outcome, change).await
}

/// When to look again, if the Secret index still holds what it held before this process's last Secret write.
fn index_lagging(
    subject: &Subject<'_>,
    ctx: &Context,
    mem: &ObjectState,
    now: Timestamp,
) -> Option<Timestamp> {
    let (before, at) = mem.index_before_write.as_ref()?;
    if now >= schedule::add(*at, INDEX_LAG_PATIENCE) || subject.writer.merges() {
        return None;
    }
    let held = ctx
        .secrets
        .get(&subject.secret)
        .ok()?
        .map(|e| e.resource_version);
    (held == *before).then(|| schedule::add(now, STALE_CACHE_RECHECK))
}

/// The next pass at `at`, counted from the end of this one (the clock is read again for it): a slow pass does not
/// push the next one later.
fn requeue(ctx: &Context, at: Timestamp) -> Action {
    Action::requeue(schedule::until(ctx.clock.now(), at))
}

/// Backoff for Kubernetes API failures, landing before the held credentials expire.
pub fn error_policy(ca: Arc<ConnectedAccount>, err: &Error, ctx: Arc<Context>) -> Action {
    let exp = ca
        .status
        .as_ref()
        .and_then(|s| s.expires_at.as_deref())
        .and_then(parse_ts);
    let propagation = super::spec::propagation(&ca.spec, ctx.settings.propagation);
    back_off(&ca.uid().unwrap_or_default(), exp, propagation, err, &ctx)
}

fn back_off(
    uid: &str,
    exp: Option<Timestamp>,
    propagation: std::time::Duration,
    err: &Error,
    ctx: &Context,
) -> Action {
    let now = ctx.clock.now();
    // One change to the object's memory: the failure counted and the next pass.
    let (attempt, r) = ctx.update_object(uid, |o| {
        o.failures = o.failures.saturating_add(1);
        let r = schedule::after_failure(
            now,
            o.failures - 1,
            exp,
            propagation,
            schedule::FailureClass::Transient,
            None,
        );
        o.next_pass = Some(schedule::add(now, r.delay));
        (o.failures, r)
    });
    ctx.metrics.count_reconcile_error(err.metric_label());
    warn!(error = %err, kind = err.metric_label(), attempt, retry_in_s = r.delay.as_secs(), "reconcile failed");
    Action::requeue(r.delay)
}
