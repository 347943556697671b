//! The ConnectedAccount pass, as a plan: read what is known ([`gather`]: the object, the operator's memory, the
//! Secret index, the connection, the answer cache), decide ([`plan::decide`]), build ([`build`](super::build))
//! and apply ([`write`]), then report ([`report`]: status, Events, metrics, the requeue). The decisions are
//! pure; these files hold the I/O. Deletion and the finalizer are in [`finalizer`].
//!
//! A write happens in the pass its answer triggers, with what that pass read: usually nothing at all (the index
//! says the Secret is as written), so a first sync costs a Secret apply, a status apply and an Event, and a
//! refresh a Secret apply and a status apply.

mod act;
mod finalizer;
mod gather;
mod merge;
mod put;
mod report;
mod secret_facts;

pub use finalizer::let_go;

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::{instrument, warn};

use super::Context;
use super::cached::CachedAccount;
use super::memory::MemoryChange;
use super::outcome::Outcome;
use super::plan::{self, Facts};
use super::resolve::Resolved;
use super::subject::Subject;
use crate::controller::Error;
use crate::crd::ConnectedAccount;
use crate::identity::AccountKey;
use crate::schedule::{self, parse_ts};

/// What a pass knows before it acts, or when to look again without reading anything.
enum Gathered {
    /// Nothing to read or do until then.
    Hold(Timestamp),
    Known(Box<Known>),
}

/// What acting on the decision came to.
enum Acted {
    /// Nothing to report: wait, or a fetch was asked for (its answer triggers the next pass); look again then.
    Later(Timestamp),
    Done(Outcome),
}

/// What [`gather`] found.
struct Known {
    facts: Facts,
    connection: Option<Resolved>,
    key: Option<AccountKey>,
    /// The Secret, when the pass read it.
    read: Option<Secret>,
    /// The resourceVersion the Secret index held for it (`None`: the index is not ready): until the index holds
    /// another, a write's own watch event has not arrived.
    indexed: Option<Option<String>>,
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
            let uid = ca.uid().unwrap_or_default();
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
    let out = pass(&ca, &ctx).await;
    ctx.metrics
        .observe_reconcile("connectedaccount", out.is_ok(), started.elapsed());
    out
}

/// One pass: the finalizer, then gather, decide, act, report. What it changes in the operator's memory of the
/// object is collected in one [`MemoryChange`] and applied once, at its end (also when an API call failed). The
/// pass reads the clock once for its decisions: every stage decides and stamps with this `now`.
async fn pass(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    if let Some(done) = finalizer::deleted_or_kept(ca, ctx).await? {
        return Ok(done);
    }
    let subject = Subject::of(ca, ctx.settings.propagation);
    let mem = ctx.object(&subject.uid);
    let now = ctx.clock.now();
    let mut change = MemoryChange::default();
    let next = async {
        let known = match gather::gather(&subject, ctx, &mem, now, &mut change).await? {
            Gathered::Hold(at) => return Ok(at),
            Gathered::Known(known) => known,
        };
        let step = plan::decide(&known.facts);
        let outcome = match act::act(&subject, ctx, &known, &mem, step, &mut change).await? {
            Acted::Later(at) => return Ok(at),
            Acted::Done(outcome) => outcome,
        };
        report::report(&subject, ctx, &known, &mem, outcome, &mut change).await
    }
    .await;
    if let Ok(at) = next {
        change.next_pass(at);
    }
    ctx.update_object(&subject.uid, |o| change.apply(o));
    // Counted from the end of this pass (the clock is read again): a slow pass does not push the next one later.
    next.map(|at| Action::requeue(schedule::until(ctx.clock.now(), at)))
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
