//! Report: the status a pass leads to (applied only when it changed), its Events, its metrics, and the requeue.

use jiff::Timestamp;
use kube::Api;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::{Known, Outcome};
use crate::controller::build::{self, Written};
use crate::controller::memory::{Ended, MemoryChange};
use crate::controller::plan;
use crate::controller::status::{apply_status, event_type, publish, ready_changed};
use crate::controller::subject::Subject;
use crate::controller::{Context, Error, ObjectState};
use crate::crd::{ConnectedAccount, ConnectedAccountStatus};
use crate::reason::Reason;
use crate::schedule::{self, format_ts, parse_ts};

/// Status, Events, metrics and the requeue of a pass.
pub(super) async fn report(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    mem: &ObjectState,
    outcome: Outcome,
    change: &mut MemoryChange,
) -> Result<Timestamp, Error> {
    match outcome {
        Outcome::Synced(s) => synced(subject, ctx, known, *s, change).await,
        Outcome::Failed(f) => failed(subject, ctx, known, mem, f, change).await,
    }
}

async fn synced(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    s: build::Synced,
    change: &mut MemoryChange,
) -> Result<Timestamp, Error> {
    let now = known.facts.now;
    let old = &subject.status;
    change.ended(Ended::Synced {
        confirmed: s.confirmed,
    });
    let forced = known.facts.recorded.forced.as_deref();
    let st = build::synced_status(subject, &s, forced, now);
    write_status(subject, ctx, &st, now, change).await?;
    if s.confirmed {
        ctx.metrics.count_sync(Reason::SecretSynced.as_str());
        let written = s.written.map_or("unchanged", Written::reason);
        info!(secret = %s.secret_name, written, expires_at = ?s.expires_at, next_sync = %format_ts(s.next), "synced");
    }
    let changed = ready_changed(&old.conditions, &st.conditions);
    let about = &subject.event_ref;
    let spec_changed = known.facts.recorded.spec_changed;
    if let Some((reason, note)) =
        build::synced_event(&subject.spec.account_id, &s, spec_changed, changed)
    {
        publish(ctx, about, EventType::Normal, reason, "Sync", note).await;
    }
    if let Some(r) = &s.restart {
        publish(
            ctx,
            about,
            EventType::Normal,
            build::ROLLOUT_RESTARTED,
            "Sync",
            r.note.clone(),
        )
        .await;
    }
    if let Some(risk) = s.pod_risk.as_ref().filter(|r| r.at_risk)
        && !condition_true(&old.conditions, build::PODS_AT_RISK)
    {
        publish(
            ctx,
            about,
            EventType::Warning,
            build::REFRESH_TOO_LATE,
            "Sync",
            risk.message.clone(),
        )
        .await;
    }
    Ok(s.requeue_at())
}

async fn failed(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    mem: &ObjectState,
    mut f: crate::reason::SyncFailure,
    change: &mut MemoryChange,
) -> Result<Timestamp, Error> {
    let now = known.facts.now;
    let old = &subject.status;
    let attempt = mem.failures.saturating_add(1);
    let held_expiry = old.expires_at.as_deref().and_then(parse_ts);
    let propagation = crate::rules::spec::propagation(subject.spec, ctx.settings.propagation);
    let (delay, note) = plan::retry_after_failure(&f, attempt, held_expiry, propagation, now);
    if let Some(n) = note {
        f.message.push_str(&n);
    }
    let next = schedule::add(now, delay);
    let failed_version = f
        .reason
        .about_connection()
        .then(|| known.connection_version.clone())
        .flatten();
    change.ended(Ended::Failed {
        attempt,
        retry_at: next,
        at: now,
        connection_version: failed_version,
    });
    let forced = known.facts.recorded.forced.as_deref();
    let st = build::failed_status(subject, &f, next, forced, now);
    write_status(subject, ctx, &st, now, change).await?;
    let reason = f.reason.as_str();
    ctx.metrics.count_sync(reason);
    warn!(reason, message = %f.message, attempt, retry_in_s = delay.as_secs(), "sync failed; the Secret is left as it was");
    if ready_changed(&old.conditions, &st.conditions) {
        publish(
            ctx,
            &subject.event_ref,
            event_type(false),
            reason,
            "Sync",
            f.message.clone(),
        )
        .await;
    }
    Ok(next)
}

/// Whether condition `type_` is True.
fn condition_true(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Apply status when it needs writing, and remember the `nextSyncTime` written.
async fn write_status(
    subject: &Subject<'_>,
    ctx: &Context,
    new: &ConnectedAccountStatus,
    now: Timestamp,
    change: &mut MemoryChange,
) -> Result<(), Error> {
    let had = subject.recorded.is_some();
    if !build::status_needs_write(had, &subject.status, new, now) {
        return Ok(());
    }
    let api: Api<ConnectedAccount> = Api::namespaced(ctx.client.clone(), &subject.namespace);
    apply_status(&api, &subject.name, new)
        .await
        .map_err(Error::WriteStatus)?;
    // Stamped when the write happened, not when the pass began: the stale-cache guard waits for the watch to
    // deliver this write, counting from it.
    change.status_written(
        new.next_sync_time.as_deref().and_then(parse_ts),
        crate::controller::context::status_digest(Some(new)),
        ctx.clock.now(),
    );
    Ok(())
}
