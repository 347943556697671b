//! Merge: keys written into someone else's Secret. A server-side apply with this ConnectedAccount's own field
//! manager, not forced, so the API server refuses it when another field manager owns one of its keys (an apply or
//! Update manager, or `before-first-apply` for a Secret that had no managed fields), and guarded by the
//! resourceVersion the pass read (what was judged from the Secret is what the API server applies to). A conflict
//! is `SecretConflict` naming the owners; only keys whose owners are all ConnectedAccounts that no longer exist are
//! taken over, by a forced apply under the same guard, so it takes exactly the fields the API server named.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tracing::debug;

use super::put::Put;
use crate::controller::subject::Subject;
use crate::controller::{Context, Error};
use crate::crd::ConnectedAccount;
use crate::reason::{Reason, SyncFailure};
use crate::secret::{self, FieldConflict};

/// Write `desired` into the Secret `read`, unless it already `holds` it. Keys someone else owns in the Secret as
/// read are refused first, written or not: stricter than the API server, which lets two managers share a key while
/// their values are equal (the co-owner's next value would then conflict).
pub(super) async fn write_keys(
    subject: &Subject<'_>,
    ctx: &Context,
    desired: &Secret,
    read: Option<&Secret>,
    holds: bool,
) -> Result<Put, Error> {
    let name = &subject.secret.name;
    if let Some(f) = refusal(subject, ctx, Conflicts::Held(desired), read).await? {
        return Ok(Put::Refused(f));
    }
    if holds {
        return Ok(Put::Unchanged);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &subject.namespace);
    let mut body = desired.clone();
    body.metadata.resource_version = read.and_then(|r| r.metadata.resource_version.clone());
    let params = PatchParams::apply(&subject.writer.field_manager());
    let applied = match api.patch(name, &params, &Patch::Apply(&body)).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            match refusal(subject, ctx, Conflicts::Refused(&s), read).await? {
                Some(f) => return Ok(Put::Refused(f)),
                None if secret::field_conflicts(&s).is_some() => {
                    debug!(secret = %name, "keys of ConnectedAccounts that no longer exist are taken over");
                    api.patch(name, &params.force(), &Patch::Apply(&body)).await
                }
                // Not about field owners: the Secret changed since it was read, and the next pass reads it again.
                None => Err(kube::Error::Api(s)),
            }
        }
        other => other,
    };
    match applied {
        Ok(s) => Ok(Put::Written(Box::new(s))),
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 413 | 422) => {
            Ok(Put::Refused(secret::refused_write(name, &s)))
        }
        Err(e) => Err(Error::WriteSecret(e)),
    }
}

/// Who else holds fields a Merge write wants.
enum Conflicts<'a> {
    /// The keys of this Secret to write, as the Secret read says they are held.
    Held(&'a Secret),
    /// As the API server named them refusing an apply.
    Refused(&'a kube::core::Status),
}

/// The refusal `conflicts` make, if any: those whose owner is not the field manager of a Merge ConnectedAccount
/// that no longer exists (asked of the API server, not the local cache, which holds only this shard's objects;
/// one the Secret does not name counts as existing).
async fn refusal(
    subject: &Subject<'_>,
    ctx: &Context,
    conflicts: Conflicts<'_>,
    read: Option<&Secret>,
) -> Result<Option<SyncFailure>, Error> {
    let conflicts: Vec<FieldConflict> = match conflicts {
        Conflicts::Held(desired) => match (read, desired.data.as_ref()) {
            (Some(e), Some(data)) => secret::key_owners(&subject.writer, e, data.keys()),
            _ => Vec::new(),
        },
        Conflicts::Refused(status) => secret::field_conflicts(status).unwrap_or_default(),
    };
    let api: Api<ConnectedAccount> = Api::namespaced(ctx.client.clone(), &subject.namespace);
    let mut live = Vec::new();
    for c in conflicts {
        let writer = c
            .manager
            .strip_prefix(secret::MERGE_MANAGER_PREFIX)
            .and_then(|uid| Some((uid, secret::merge_writer_name(read?, uid)?)));
        let gone = match writer {
            Some((uid, name)) => {
                let found = api
                    .get_metadata_opt(name)
                    .await
                    .map_err(Error::ReadConnectedAccount)?;
                found.is_none_or(|m| m.metadata.uid.as_deref() != Some(uid))
            }
            None => false,
        };
        if !gone {
            live.push(c);
        }
    }
    Ok((!live.is_empty()).then(|| {
        let c = secret::merge_conflict(read, &subject.secret.name, &live);
        SyncFailure::new(Reason::SecretConflict, c.0)
    }))
}
