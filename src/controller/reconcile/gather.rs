//! Gather: what a pass knows before it decides. Each source answers for itself: the subject (what the object
//! says), the operator's memory, the Secret index, the connection stores, the answer cache, and the target
//! Secret ([`secret_facts`](super::secret_facts)), which alone reads the API, and only where the index cannot
//! answer. Waits need no reads: a failed object's own status write costs nothing.

use jiff::Timestamp;
use tracing::debug;

use super::{Gathered, Known, secret_facts};
use crate::controller::memory::{self, MemoryChange};
use crate::controller::plan::{self, Facts, Recorded, Remembered, SecretFacts};
use crate::controller::resolve::{self, connection_version};
use crate::controller::spec;
use crate::controller::subject::Subject;
use crate::controller::targets::{Indexed, NotReady};
use crate::controller::{Context, Error, ObjectState};
use crate::identity::AccountKey;
use crate::schedule::{self, format_ts};

/// What status and memory say for the plan, or when to look again without reading anything: a wait for the
/// watches to deliver this process's own writes, a failed object's retry, a debounced force-sync.
fn hold(
    subject: &Subject<'_>,
    ctx: &Context,
    mem: &ObjectState,
    indexed: &Result<Option<Indexed>, NotReady>,
    now: Timestamp,
) -> Result<(Recorded, Remembered), Timestamp> {
    let named = subject.spec.connection_ref.as_ref();
    let version = connection_version(&subject.namespace, named, ctx);
    let remembered = memory::remembered(mem, version.as_ref(), subject.connection_failed);
    let held = indexed
        .as_ref()
        .ok()
        .map(|e| e.as_ref().map(|e| e.resource_version.as_str()));
    let merge = subject.writer.merges();
    if let Some(at) = memory::awaits_watch(mem, subject.raw_status, held, merge, now) {
        return Err(at);
    }
    // The cached object can predate this process's own status write: its time wins.
    let mut recorded = subject.recorded.clone();
    recorded.next_due = mem.written_next_sync.or(recorded.next_due);
    if let Some(at) = plan::hold(&recorded, &remembered, now) {
        debug!(until = %format_ts(at), "waiting");
        return Err(at);
    }
    Ok((recorded, remembered))
}

/// Everything the decision and the write need, or when to look again without reading anything.
pub(super) async fn gather(
    subject: &Subject<'_>,
    ctx: &Context,
    mem: &ObjectState,
    now: Timestamp,
    change: &mut MemoryChange,
) -> Result<Gathered, Error> {
    let indexed = ctx.secrets.get(&subject.secret);
    let (recorded, remembered) = match hold(subject, ctx, mem, &indexed, now) {
        Ok(facts) => facts,
        Err(at) => return Ok(Gathered::Hold(at)),
    };
    let named = subject.spec.connection_ref.as_ref();
    let held = indexed
        .as_ref()
        .ok()
        .map(|e| e.as_ref().map(|e| e.resource_version.clone()));
    let spec = spec::validate_spec(subject.spec, ctx.settings.propagation);
    let resolved = resolve::resolve(&subject.namespace, named, ctx).await?;
    let (connection_version, connection, resolved) = match resolved {
        Ok(r) => (r.version.clone(), Ok(r.usable.clone()), Some(r)),
        Err(u) => (u.version, Err(u.failure), None),
    };
    let key = resolved.as_ref().map(|r| AccountKey {
        connection: r.dispatcher.key.clone(),
        account_id: subject.spec.account_id.clone(),
    });
    let (answer, answer_read) = ctx.answer_for(&subject.uid, &subject.namespace, mem, key.as_ref());
    if answer_read {
        change.answer_read();
    }
    // An invalid spec is reported before the Secret is read.
    let target = if spec.is_ok() {
        secret_facts::facts(subject, ctx, mem, indexed, &answer, change).await?
    } else {
        secret_facts::Target::unread(SecretFacts::New)
    };
    let facts = Facts {
        now,
        spec,
        recorded,
        remembered,
        secret: target.facts,
        secret_exists: target.exists,
        account_id: subject.spec.account_id.clone(),
        connection,
        answer,
        jitter: schedule::jitter_fraction(&subject.uid),
    };
    Ok(Gathered::Known(Box::new(Known {
        facts,
        connection: resolved,
        key,
        read: target.read,
        indexed: held,
        connection_version,
    })))
}
