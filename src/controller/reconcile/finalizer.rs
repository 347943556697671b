//! Deletion: the one finalizer, only where `deletionPolicy` needs it, and what it does before it goes.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use crate::controller::Context;
use crate::controller::Error;
use crate::crd::{ConnectedAccount, CreationPolicy, DeletionPolicy, FINALIZER};

/// Only an owned Secret that must outlive its ConnectedAccount (`Owner` + `Retain`) can still carry the
/// ownerReference garbage collection would follow (the policy was switched just before the delete): only then
/// does deletion wait for the operator. Every other object carries no finalizer.
fn needs_finalizer(ca: &ConnectedAccount) -> bool {
    ca.spec.target.creation_policy == CreationPolicy::Owner
        && ca.spec.target.deletion_policy == DeletionPolicy::Retain
}

/// A deleted object is let go (`Some`: the pass is over); any other gets or loses the finalizer as its spec
/// needs, and its pass goes on.
pub(super) async fn deleted_or_kept(
    ca: &ConnectedAccount,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    if ca.metadata.deletion_timestamp.is_some() {
        return finalize(ca, ctx).await.map(Some);
    }
    keep(ca, ctx).await.map(|()| None)
}

/// Add or remove the finalizer as [`needs_finalizer`] says. A merge patch carrying the resourceVersion it saw:
/// a concurrent change of the list fails it (409) and the pass is retried.
async fn keep(ca: &ConnectedAccount, ctx: &Context) -> Result<(), Error> {
    let has = ca.finalizers().iter().any(|f| f == FINALIZER);
    match (needs_finalizer(ca), has) {
        (true, false) => {
            let mut list = ca.finalizers().to_vec();
            list.push(FINALIZER.to_string());
            set_finalizers(ca, &ctx.client, list).await
        }
        (false, true) => set_finalizers(ca, &ctx.client, without_ours(ca)).await,
        _ => Ok(()),
    }
}

fn without_ours(ca: &ConnectedAccount) -> Vec<String> {
    ca.finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

async fn set_finalizers(
    ca: &ConnectedAccount,
    client: &Client,
    list: Vec<String>,
) -> Result<(), Error> {
    let api: Api<ConnectedAccount> =
        Api::namespaced(client.clone(), &ca.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": ca.resource_version(), "finalizers": list}});
    api.patch(
        &ca.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::Finalizer)?;
    Ok(())
}

/// On deletion: a retained Secret loses this object's ownerReference before garbage collection can follow it,
/// then the finalizer goes and the operator forgets the object.
async fn finalize(ca: &ConnectedAccount, ctx: &Context) -> Result<Action, Error> {
    let uid = ca.uid().unwrap_or_default();
    let_go(ca, &ctx.client).await?;
    ctx.forget(&uid);
    Ok(Action::await_change())
}

/// Release a retained Secret and remove the finalizer, as the object's deletion does; `false` when it carried
/// none. `uninstall` runs this for every ConnectedAccount, so none waits for an operator that is gone.
pub async fn let_go(ca: &ConnectedAccount, client: &Client) -> Result<bool, Error> {
    if !ca.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(false);
    }
    if ca.spec.target.deletion_policy == DeletionPolicy::Retain {
        release_secret(ca, client).await?;
    }
    set_finalizers(ca, client, without_ours(ca)).await?;
    Ok(true)
}

async fn release_secret(ca: &ConnectedAccount, client: &Client) -> Result<(), Error> {
    let uid = ca.uid().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ca.namespace().unwrap_or_default());
    let Some(s) = api
        .get_opt(&ca.secret_name())
        .await
        .map_err(Error::ReadSecret)?
    else {
        return Ok(());
    };
    if !s.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(());
    }
    let keep: Vec<_> = s
        .owner_references()
        .iter()
        .filter(|o| o.uid != uid)
        .cloned()
        .collect();
    // resourceVersion makes the patch conditional: a concurrent change fails it and the pass retries.
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": s.resource_version(), "ownerReferences": keep}});
    api.patch(
        &ca.secret_name(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::ReleaseSecret)?;
    info!(secret = %ca.secret_name(), "released the retained Secret before deletion");
    Ok(())
}
