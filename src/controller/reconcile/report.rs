//! Report: what [`outcome::report`] says a pass leads to, written: the status (applied only when it changed), its
//! Events, its log line and sync counter, and how it ended for the operator's memory.

use jiff::Timestamp;
use kube::Api;
use tracing::{info, warn};

use super::Known;
use crate::controller::memory::MemoryChange;
use crate::controller::outcome::{self, Ending, Outcome, Said};
use crate::controller::status::{apply_status, event_type, publish};
use crate::controller::subject::Subject;
use crate::controller::{Context, Error, ObjectState};
use crate::crd::ConnectedAccount;
use crate::reason::Reason;
use crate::schedule::format_ts;

/// Status, Events, metrics and the requeue of a pass that ended as `end` says.
pub(super) async fn report(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    mem: &ObjectState,
    end: Outcome,
    change: &mut MemoryChange,
) -> Result<Timestamp, Error> {
    let ending = Ending {
        subject,
        facts: &known.facts,
        failures: mem.failures,
        connection_version: known.connection_version.as_deref(),
        propagation: subject.propagation,
    };
    let r = outcome::report(&ending, end);
    let status = &r.status;
    // Stamped when the write happened, not when the pass began: the stale-cache guard waits for the watch to
    // deliver this write, counting from it.
    let written_at = if r.write_status {
        let api: Api<ConnectedAccount> = Api::namespaced(ctx.client.clone(), &subject.namespace);
        apply_status(&api, &subject.name, status)
            .await
            .map_err(Error::WriteStatus)?;
        Some(ctx.clock.now())
    } else {
        None
    };
    for e in r.events {
        let kind = event_type(!e.warning);
        publish(ctx, &subject.event_ref, kind, e.reason, "Sync", e.note).await;
    }
    match r.said {
        Said::Synced {
            confirmed: true,
            secret,
            written,
            expires_at,
            next,
        } => {
            ctx.metrics.count_sync(Reason::SecretSynced.as_str());
            info!(%secret, written, ?expires_at, next_sync = %format_ts(next), "synced");
        }
        Said::Synced { .. } => {}
        Said::Failed {
            failure,
            attempt,
            retry_in,
        } => {
            let reason = failure.reason.as_str();
            ctx.metrics.count_sync(reason);
            warn!(reason, message = %failure.message, attempt, retry_in_s = retry_in.as_secs(), "sync failed; the Secret is left as it was");
        }
    }
    change.ended(r.ended);
    if let Some(at) = written_at {
        change.status_written(status, at);
    }
    Ok(r.next)
}
