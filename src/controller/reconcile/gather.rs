//! Gather: what a pass knows before it decides, read off the object, the operator's memory, the Secret index,
//! the connection stores and the answer cache. It reads the API only where those cannot answer.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::Known;
use crate::controller::Error;
use crate::controller::build;
use crate::controller::memory::MemoryChange;
use crate::controller::plan::{Answer, Facts, Recorded, Remembered, SecretFacts, Usable};
use crate::controller::resolve::{Resolved, Unusable, connection_version, resolve};
use crate::controller::spec;
use crate::controller::status::ready_of;
use crate::controller::subject::Subject;
use crate::controller::targets::{NotReady, SecretId};
use crate::controller::{Context, ObjectState};
use crate::crd::ConnectedAccountStatus;
use crate::identity::AccountKey;
use crate::reason::SyncFailure;
use crate::rules::answer::Attempt;
use crate::schedule::{self, parse_ts};
use crate::secret::{self, check_ownership, existing_hash};

pub(super) fn recorded(subject: &Subject<'_>, mem: &ObjectState) -> Recorded {
    let status = &subject.status;
    let ready = ready_of(&status.conditions);
    Recorded {
        forced: subject
            .force_sync
            .filter(|v| status.last_force_sync.as_deref() != Some(*v))
            .map(str::to_string),
        spec_changed: subject.spec_changed(),
        // The cached object can predate this process's own status write: its time wins.
        next_due: mem
            .written_next_sync
            .or(status.next_sync_time.as_deref().and_then(parse_ts)),
        failed: ready.as_ref().is_some_and(|(s, _)| s == "False"),
        ready: ready.as_ref().is_some_and(|(s, _)| s == "True"),
        held_expiry: status.expires_at.as_deref().and_then(parse_ts),
    }
}

/// Ready is False for a reason a change to the connection can fix (AuthFailed, ConnectionNotReady, ...).
fn recorded_connection_failure(status: &ConnectedAccountStatus) -> bool {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::crd::READY)
        .filter(|c| c.status == "False")
        .and_then(|c| c.reason.parse::<crate::reason::Reason>().ok())
        .is_some_and(crate::reason::Reason::about_connection)
}

pub(super) fn remembered(subject: &Subject<'_>, ctx: &Context, mem: &ObjectState) -> Remembered {
    let named = subject.spec.connection_ref.as_ref();
    let version = connection_version(&subject.namespace, named, ctx);
    Remembered {
        retry_at: mem.retry_at,
        last_forced: mem.last_forced,
        last_failed: mem.last_failed,
        connection_changed: match &mem.failed_connection_version {
            Some(was) => version.as_ref() != Some(was),
            // This process has not tried the object yet (a new leader, a restart): nobody knows whether the
            // connection a recorded connection failure was about has changed since, so it is tried once.
            None => mem.failures == 0 && recorded_connection_failure(&subject.status),
        },
        asked: mem.asked.is_some(),
    }
}

/// Everything the decision and the write need. Reads only what the index cannot answer: a Secret whose
/// resourceVersion is not the one recorded, a Merge target, any target before the index is filled, or a Secret
/// whose values an answer's null fields keep.
pub(super) async fn gather(
    subject: &Subject<'_>,
    ctx: &Context,
    mem: &ObjectState,
    now: Timestamp,
    change: &mut MemoryChange,
) -> Result<Known, Error> {
    let uid = &subject.uid;
    let spec = spec::validate_spec(subject.spec, ctx.settings.propagation);
    // An invalid spec is reported before anything is read.
    let (mut secret, mut read, exists) = if spec.is_ok() {
        secret_facts(subject, ctx, mem, change).await?
    } else {
        (SecretFacts::New, None, false)
    };
    let named = subject.spec.connection_ref.as_ref();
    let resolved = resolve(&subject.namespace, named, ctx).await?;
    let connection_version = match &resolved {
        Ok(r) => r.version.clone(),
        Err(u) => u.version.clone(),
    };
    let key = resolved.as_ref().ok().map(|r| AccountKey {
        connection: r.key().clone(),
        account_id: subject.spec.account_id.clone(),
    });
    ctx.use_account(uid, &subject.namespace, key.as_ref());
    let answer = answer(ctx, uid, mem, key.as_ref(), change);
    // A credential field an answer sends as null keeps the value the Secret holds: read it for them.
    if read.is_none() && exists && arrived_with_nulls(&answer) {
        let s = read_secret(ctx, &subject.secret).await?;
        if let Some(s) = &s {
            secret = judge_read(subject, s, change);
        }
        read = s;
    }
    let (connection, resolved) = split_resolved(resolved);
    Ok(Known {
        facts: Facts {
            now,
            spec,
            recorded: recorded(subject, mem),
            remembered: remembered(subject, ctx, mem),
            secret,
            secret_exists: exists,
            account_id: subject.spec.account_id.clone(),
            connection,
            answer,
            jitter: schedule::jitter_fraction(uid),
        },
        connection: resolved,
        key,
        read,
        exists,
        connection_version,
    })
}

/// An answer arrived with credential fields sent as null.
fn arrived_with_nulls(answer: &Answer) -> bool {
    matches!(answer, Answer::Arrived(Attempt::Ok(a)) if build::has_null_fields(a))
}

/// The Secret `id`, from the API server.
async fn read_secret(ctx: &Context, id: &SecretId) -> Result<Option<Secret>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &id.namespace);
    api.get_opt(&id.name).await.map_err(Error::ReadSecret)
}

/// What decide needs of the resolved connection, and the connection itself for the write.
fn split_resolved(
    resolved: Result<Resolved, Unusable>,
) -> (Result<Usable, SyncFailure>, Option<Resolved>) {
    match resolved {
        Ok(r) => {
            let usable = Usable {
                admission: r.admission.clone(),
                name: r.key().id.to_string(),
            };
            (Ok(usable), Some(r))
        }
        Err(u) => (Err(u.failure), None),
    }
}

/// The answer the pass decides from: the attempt it asked for once it arrived (read once), else the last success
/// for `key`.
fn answer(
    ctx: &Context,
    uid: &str,
    mem: &ObjectState,
    key: Option<&AccountKey>,
    change: &mut MemoryChange,
) -> Answer {
    let cache = &ctx.fetcher.cache;
    let asked = mem
        .asked
        .as_ref()
        .filter(|(k, _)| Some(k) == key)
        .map(|(_, g)| *g);
    match (asked, key) {
        (Some(g), Some(k)) => match cache.attempt_after(k, g) {
            Some(a) => {
                // Reading it ended the cache's wait: forgotten at once, so a deletion during this pass does not
                // end the wait a second time.
                ctx.answer_read(uid);
                change.answer_read();
                Answer::Arrived(a)
            }
            None => Answer::Awaited,
        },
        (None, Some(k)) => Answer::Last(cache.last_ok(k)),
        (_, None) => Answer::Last(None),
    }
}

/// Ready is False with `SecretConflict`: the name was found taken.
fn refused_as_taken(status: &ConnectedAccountStatus) -> bool {
    ready_of(&status.conditions)
        .is_some_and(|(s, r)| s == "False" && r == crate::reason::Reason::SecretConflict.as_str())
}

/// The target Secret as the pass sees it: (facts, the Secret if read, whether it exists). Read only when the index
/// cannot say: another resourceVersion than recorded, another writer, a spec change (the Secret's type matters),
/// a Merge target, or a name found taken before.
async fn secret_facts(
    subject: &Subject<'_>,
    ctx: &Context,
    mem: &ObjectState,
    change: &mut MemoryChange,
) -> Result<(SecretFacts, Option<Secret>, bool), Error> {
    let (status, id) = (&subject.status, &subject.secret);
    let merge = subject.writer.merges();
    let spec_changed = subject.spec_changed();
    let recorded = mem
        .secret_version
        .as_ref()
        .or(status.secret_resource_version.as_ref());
    let unseen = if status.data_hash.is_some() {
        SecretFacts::Drifted
    } else {
        SecretFacts::New
    };
    match ctx.secrets.get(id) {
        Ok(Some(ix))
            if !merge
                && !spec_changed
                && ix.owner.as_deref() == Some(subject.writer.owner_id().as_str())
                && Some(&ix.resource_version) == recorded =>
        {
            return Ok((SecretFacts::AsWritten, None, true));
        }
        // This process wrote it and the index has not seen it (yet, or any more): read it.
        Ok(None) if !merge && mem.secret_version.is_some() => {}
        // Refused before as someone else's: read it, so a retry costs a read, not a fetch and a create.
        Ok(None) if !merge && refused_as_taken(status) => {}
        // Not among the Secrets the operator writes into: a first write creates it, and the API server refuses
        // the create if someone else's Secret holds the name.
        Ok(None) if !merge => return Ok((unseen, None, false)),
        Ok(_) | Err(NotReady) => {}
    }
    let Some(s) = read_secret(ctx, id).await? else {
        if merge {
            let m = format!(
                "spec.target.creationPolicy: Merge writes into an existing Secret, and Secret {} does not exist",
                id.name
            );
            return Ok((SecretFacts::Conflict(m), None, false));
        }
        return Ok((unseen, None, false));
    };
    Ok((judge_read(subject, &s, change), Some(s), true))
}

/// What the Secret read says: someone else's, of a type the spec cannot have, as this process wrote it, or
/// drifted.
fn judge_read(subject: &Subject<'_>, s: &Secret, change: &mut MemoryChange) -> SecretFacts {
    let w = &subject.writer;
    if let Err(c) = check_ownership(w, s) {
        return SecretFacts::Conflict(format!("spec.target.name: {}", c.0));
    }
    if let Some(m) = secret::type_conflict(s, secret::desired_type(w, &subject.spec.target)) {
        return SecretFacts::WrongType(m);
    }
    let ours = existing_hash(s, &w.field_manager());
    if subject.status.data_hash.as_deref() != Some(ours.as_str()) {
        return SecretFacts::Drifted;
    }
    // As written: remember this version, so the next pass does not read it again.
    change.secret_read(s.resource_version());
    SecretFacts::AsWritten
}
