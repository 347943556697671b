//! Act: carry out what [`plan::decide`] said (wait, ask for a fetch, keep what is right, write, or fail), then
//! the rollout restart, if one is due. A write builds the Secret from the judged answer and has
//! [`put`](super::put) or [`merge`](super::merge) apply it when it differs.

use kube::ResourceExt;
use tracing::debug;

use super::put::{self, Put};
use super::{Acted, Known, merge};
use crate::controller::build::{self, Wrote};
use crate::controller::fetch::Urgency;
use crate::controller::memory::MemoryChange;
use crate::controller::outcome::{Kept, Outcome};
use crate::controller::plan::{self, Judged, SecretFacts, Step};
use crate::controller::restart;
use crate::controller::subject::Subject;
use crate::controller::{Context, Error, ObjectState};
use crate::reason::{Reason, SyncFailure};
use crate::schedule;
use crate::secret;

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
        Step::Write(judged) => write(subject, ctx, known, &judged, change).await?,
        // Nothing to write: the Secret is right. Only a rollout restart held back by its debounce may be due.
        Step::Keep(next) => Outcome::Kept(Box::new(Kept {
            next,
            restart: restart::Outcome::default(),
        })),
        Step::Fail(f) => Outcome::Failed(f),
    };
    // The data pods run with now: written, or as status records it.
    let (hash, done) = match &mut outcome {
        Outcome::Synced(s) => (s.data_hash.clone(), &mut s.restart),
        Outcome::Kept(k) => (subject.status.data_hash.clone(), &mut k.restart),
        Outcome::Failed(_) => return Ok(Acted::Done(outcome)),
    };
    if let Ok(v) = &known.facts.spec {
        let (interval, propagation) = (v.min_restart_interval, v.policy.propagation);
        let now = known.facts.now;
        *done =
            restart::maybe_restart(subject, ctx, now, interval, propagation, hash.as_deref()).await;
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

/// Build the Secret from the judged answer and apply it, unless it already holds exactly that.
async fn write(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    judged: &Judged,
    change: &mut MemoryChange,
) -> Result<Outcome, Error> {
    let (Ok(validated), Some(conn)) = (&known.facts.spec, &known.connection) else {
        return Ok(Outcome::Failed(SyncFailure::new(
            Reason::UpstreamError,
            "internal: a write without a usable spec and connection",
        )));
    };
    let (read, now) = (known.read.as_ref(), known.facts.now);
    let previous = read.and_then(secret::data_of);
    let inputs = build::Inputs {
        subject,
        validated: *validated,
        judged,
        previous: previous.as_ref(),
        now,
        jitter: known.facts.jitter,
    };
    let mut built = match build::secret(inputs).await {
        Ok(b) => b,
        Err(f) => return Ok(Outcome::Failed(f)),
    };
    // Accounts whose tokens were minted together come due together: their next fetches are spread at the
    // connection's rate, per namespace, instead of queuing all at once.
    let lane = subject.reference.namespace.as_deref().unwrap_or_default();
    built.next = conn
        .dispatcher
        .book(lane, now, built.next, built.latest_next);
    // The Secret holds exactly what was built (as recorded in status, and the index or a read vouches for it).
    let st = &subject.status;
    let holds = known.facts.secret == SecretFacts::AsWritten
        && !subject.spec_changed()
        && st.data_hash.as_deref() == Some(built.hash.as_str())
        && st.expires_at == built.expires_at;
    let exists = known.facts.secret_exists;
    let result = if subject.writer.merges() {
        merge::write_keys(subject, ctx, &built.secret, read, holds).await?
    } else {
        put::create_or_apply(subject, ctx, &built.secret, exists, holds).await?
    };
    let (written, version) = match result {
        Put::Refused(f) => return Ok(Outcome::Failed(f)),
        Put::Unchanged => (false, st.secret_resource_version.clone()),
        Put::Written(applied) => {
            let version = applied.resource_version();
            change.secret_written(version.clone(), known.indexed.clone(), now);
            (true, version)
        }
    };
    let wrote = Wrote {
        written,
        existed: exists,
        cause: judged.cause,
        version,
        connection: conn.key().id.status_ref(),
        policy: validated.policy,
        now,
    };
    Ok(Outcome::Synced(Box::new(built.synced(subject, wrote))))
}
