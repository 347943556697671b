//! Act: carry out what [`plan::decide`] said (wait, ask for a fetch, keep what is right, write, or fail), then
//! the rollout restart, if one is due.

use tracing::debug;

use super::{Acted, Known, write};
use crate::controller::build::{Outcome, Synced};
use crate::controller::fetch::Urgency;
use crate::controller::memory::MemoryChange;
use crate::controller::plan::{self, Step};
use crate::controller::restart;
use crate::controller::subject::Subject;
use crate::controller::{Context, Error, ObjectState};
use crate::schedule;

/// Carry out `step`.
pub(super) async fn act(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    mem: &ObjectState,
    step: Step,
    change: &mut MemoryChange,
) -> Result<Acted, Error> {
    let mut outcome = match step {
        Step::Wait(at) => return Ok(Acted::Later(at)),
        Step::Fetch { urgency } => {
            ask(subject, ctx, known, mem, urgency, change);
            let recheck = schedule::add(known.facts.now, plan::PENDING_RECHECK);
            return Ok(Acted::Later(recheck));
        }
        Step::Write(judged) => write::write(subject, ctx, known, &judged, change).await?,
        // Nothing to write: the Secret is right. Only a rollout restart held back by its debounce may be due.
        Step::Keep(next) => Outcome::Synced(Box::new(Synced::unchanged(subject, next))),
        Step::Fail(f) => Outcome::Failed(f),
    };
    if let (Outcome::Synced(s), Ok(v)) = (&mut outcome, &known.facts.spec) {
        let r = restart::maybe_restart(
            subject,
            ctx,
            known.facts.now,
            v.min_restart_interval,
            v.policy.propagation,
            s.data_hash.as_deref(),
        )
        .await;
        (s.restart, s.wake) = (r.restarted, r.wake);
    }
    Ok(Acted::Done(outcome))
}

/// Ask the connection's dispatcher for the account; its answer triggers the next pass.
fn ask(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    mem: &ObjectState,
    urgency: Urgency,
    change: &mut MemoryChange,
) {
    let (Some(conn), Some(key)) = (&known.connection, &known.key) else {
        return;
    };
    let generation = ctx.fetcher.cache.generation(key);
    let forced_at = known
        .facts
        .recorded
        .forced
        .as_ref()
        .map(|_| known.facts.now);
    // Waiting before asking: the answer may be in before `request` returns, and the cache keeps awaited answers.
    ctx.fetcher
        .cache
        .wait_instead(change.still_awaited(mem), key);
    change.asked(key.clone(), generation, forced_at);
    let account = &subject.spec.account_id;
    conn.dispatcher
        .request(account, urgency, subject.reference.clone());
    debug!(%account, connection = %conn.key().id, "fetch requested");
}
