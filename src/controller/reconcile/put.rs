//! Put: a Secret the operator owns is created (when the operator has not seen one of its name) or applied, and
//! each answer of the API server read. A Merge target, someone else's Secret, is written by [`merge`](super::merge).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use crate::controller::subject::Subject;
use crate::controller::{Context, Error};
use crate::crd::MANAGER;
use crate::reason::{Reason, SyncFailure};
use crate::secret::{self, check_ownership};

/// What writing the Secret came to.
pub(super) enum Put {
    /// The API server's answer: the Secret as written.
    Written(Box<Secret>),
    /// It already held exactly this: nothing was sent.
    Unchanged,
    /// Not written, for a reason the spec (or someone else's Secret) is to blame for.
    Refused(SyncFailure),
}

/// Write `desired` unless the Secret already `holds` it: apply it when a Secret of its name was `found`, else
/// create it. A Secret the operator has not seen is created, never applied: one of that name created meanwhile
/// (after the operator's watch last saw the namespace) is refused by the API server, and written only if it is
/// this ConnectedAccount's own. What the API server refused for a reason the spec can fix is a failure; other API
/// errors end the pass.
pub(super) async fn create_or_apply(
    subject: &Subject<'_>,
    ctx: &Context,
    desired: &Secret,
    found: bool,
    holds: bool,
) -> Result<Put, Error> {
    if holds {
        return Ok(Put::Unchanged);
    }
    let name = &subject.secret.name;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &subject.namespace);
    let apply = PatchParams::apply(MANAGER).force();
    let applied = if found {
        api.patch(name, &apply, &Patch::Apply(desired)).await
    } else {
        create_secret(&api, MANAGER, desired).await
    };
    match applied {
        Ok(s) => Ok(Put::Written(Box::new(s))),
        Err(kube::Error::Api(s)) if !found && s.code == 409 => {
            match api.get_opt(name).await.map_err(Error::ReadSecret)? {
                Some(e) if check_ownership(&subject.writer, &e).is_ok() => api
                    .patch(name, &apply, &Patch::Apply(desired))
                    .await
                    .map(|s| Put::Written(Box::new(s)))
                    .map_err(Error::WriteSecret),
                _ => Ok(Put::Refused(SyncFailure::new(
                    Reason::SecretConflict,
                    format!(
                        "spec.target.name: Secret {name} was created by someone else before the operator's first write; it is left alone"
                    ),
                ))),
            }
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 413 | 422) => {
            Ok(Put::Refused(secret::refused_write(name, &s)))
        }
        Err(e) => Err(Error::WriteSecret(e)),
    }
}

/// Create the Secret (409 if one of that name exists), then hand its fields to server-side apply: a create
/// records them as an `Update` of `manager`, which a later apply would never remove (a key dropped from the data
/// would stay), so the entry is rewritten as the `Apply` it stands for, guarded by the new resourceVersion.
async fn create_secret(
    api: &Api<Secret>,
    manager: &str,
    secret: &Secret,
) -> Result<Secret, kube::Error> {
    let params = PostParams {
        field_manager: Some(manager.to_string()),
        ..Default::default()
    };
    let created = api.create(&params, secret).await?;
    let Some(mut fields) = created.metadata.managed_fields.clone() else {
        return Ok(created);
    };
    for f in fields
        .iter_mut()
        .filter(|f| f.manager.as_deref() == Some(manager))
    {
        f.operation = Some("Apply".into());
    }
    let patch = serde_json::json!({"metadata": {
        "managedFields": fields,
        "resourceVersion": created.metadata.resource_version,
    }});
    match api
        .patch(
            &created.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(s) => Ok(s),
        // Changed since (by whom the next pass will see); the Secret itself is written.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(created),
        Err(e) => Err(e),
    }
}
