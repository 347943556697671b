//! The target Secret as a pass sees it: from the Secret index when it can vouch for the Secret, else read once
//! and judged (someone else's, of another type than the spec's, as this process wrote it, or drifted). One read
//! also serves an answer's credential fields sent as null, which keep the values the Secret holds.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::controller::build;
use crate::controller::memory::MemoryChange;
use crate::controller::plan::{Answer, SecretFacts};
use crate::controller::subject::Subject;
use crate::controller::targets::{Indexed, NotReady};
use crate::controller::{Context, Error, ObjectState};
use crate::rules::answer::Attempt;
use crate::secret::{self, check_ownership, existing_hash};

/// The target Secret, as far as the pass knows it.
pub(super) struct Target {
    /// What it is to the plan.
    pub facts: SecretFacts,
    /// The Secret, when the pass read it.
    pub read: Option<Secret>,
    /// It exists (in the index or as read).
    pub exists: bool,
}

impl Target {
    /// Not read, and not known to exist.
    pub fn unread(facts: SecretFacts) -> Self {
        Self {
            facts,
            read: None,
            exists: false,
        }
    }
}

/// What the index (which holds `indexed` for the target) says, and the Secret read when it cannot say: another
/// resourceVersion than recorded, another writer, a spec change (the Secret's type matters), a Merge target, a
/// name found taken before, or an answer with null fields for a Secret not read otherwise.
pub(super) async fn facts(
    subject: &Subject<'_>,
    ctx: &Context,
    mem: &ObjectState,
    indexed: Result<Option<Indexed>, NotReady>,
    answer: &Answer,
    change: &mut MemoryChange,
) -> Result<Target, Error> {
    let status = &subject.status;
    let merge = subject.writer.merges();
    let unseen = if status.data_hash.is_some() {
        SecretFacts::Drifted
    } else {
        SecretFacts::New
    };
    let nulls = matches!(answer, Answer::Arrived(Attempt::Ok(a)) if build::has_null_fields(a));
    match indexed {
        Ok(Some(ix)) if !merge && !nulls && vouched(subject, mem, &ix) => {
            return Ok(Target {
                facts: SecretFacts::AsWritten,
                read: None,
                exists: true,
            });
        }
        // This process wrote it and the index has not seen it (yet, or any more): read it.
        Ok(None) if !merge && mem.secret_version.is_some() => {}
        // Refused before as someone else's: read it, so a retry costs a read, not a fetch and a create.
        Ok(None) if !merge && subject.name_taken => {}
        // Not among the Secrets the operator writes into: a first write creates it, and the API server refuses
        // the create if someone else's Secret holds the name.
        Ok(None) if !merge => return Ok(Target::unread(unseen)),
        Ok(_) | Err(NotReady) => {}
    }
    let id = &subject.secret;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let Some(s) = api.get_opt(&id.name).await.map_err(Error::ReadSecret)? else {
        if merge {
            let m = format!(
                "spec.target.creationPolicy: Merge writes into an existing Secret, and Secret {} does not exist",
                id.name
            );
            return Ok(Target::unread(SecretFacts::Conflict(m)));
        }
        return Ok(Target::unread(unseen));
    };
    Ok(Target {
        facts: judge(subject, &s, change),
        read: Some(s),
        exists: true,
    })
}

/// The index vouches for the Secret: this ConnectedAccount's own, at the resourceVersion this process last wrote or
/// read (else status recorded), for an unchanged spec (the Secret's type matters).
fn vouched(subject: &Subject<'_>, mem: &ObjectState, ix: &Indexed) -> bool {
    let recorded = mem
        .secret_version
        .as_ref()
        .or(subject.status.secret_resource_version.as_ref());
    !subject.spec_changed()
        && ix.owner.as_deref() == Some(subject.writer.owner_id().as_str())
        && Some(&ix.resource_version) == recorded
}

/// What the Secret read says: someone else's, of a type the spec cannot have, as this process wrote it, or
/// drifted.
fn judge(subject: &Subject<'_>, s: &Secret, change: &mut MemoryChange) -> SecretFacts {
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
