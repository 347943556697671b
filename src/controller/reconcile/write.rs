//! Act: ask for a fetch, keep what is right, or build the Secret from an answer and apply it when it differs.
//! (Over 400 lines: the three ways a Secret is written, a create, an apply and a Merge apply, and how each
//! answer of the API server is read, side by side.)

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tracing::debug;

use super::{Known, Outcome};
use crate::controller::Error;
use crate::controller::build::{self, Built, Synced};
use crate::controller::fetch::Urgency;
use crate::controller::memory::MemoryChange;
use crate::controller::plan::{Judged, SecretFacts};
use crate::controller::resolve::Resolved;
use crate::controller::restart;
use crate::controller::spec::Validated;
use crate::controller::subject::Subject;
use crate::controller::{Context, ObjectState};
use crate::crd::ConnectedAccount;
use crate::reason::{Reason, SyncFailure};
use crate::schedule;
use crate::secret::{self, check_ownership};

/// Ask the connection's dispatcher for the account; its answer triggers the next pass.
pub(super) fn ask(
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

/// Nothing to write: the Secret is right. Only a rollout restart held back by its debounce may be due.
pub(super) async fn keep(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    next: Timestamp,
) -> Synced {
    let mut s = Synced::unchanged(subject, next);
    if let Ok(v) = &known.facts.spec {
        let r = restart::maybe_restart(
            subject,
            ctx,
            known.facts.now,
            v.min_restart_interval,
            v.policy.propagation,
            subject.status.data_hash.as_deref(),
        )
        .await;
        (s.restart, s.wake) = (r.restarted, r.wake);
    }
    s
}

/// Build the Secret from `answer` and apply it, unless it already holds exactly that.
pub(super) async fn write(
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
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &subject.namespace);
    let read = known.read.as_ref();
    let previous = read.and_then(secret::data_of);
    let built = match build_secret(subject, known, *validated, judged, previous.as_ref()).await {
        Ok(b) => b,
        Err(f) => return Ok(Outcome::Failed(f)),
    };
    if let Some(f) = merge_keys_taken(subject, ctx, read, &built).await? {
        return Ok(Outcome::Failed(f));
    }
    let st = &subject.status;
    let (written, version) = if already_holds(subject, known, &built) {
        (None, st.secret_resource_version.clone())
    } else {
        let before = indexed_before(subject, ctx);
        match put(subject, ctx, &api, &built.secret, read, known.exists).await? {
            Ok(applied) => {
                let version = applied.resource_version();
                change.secret_written(version.clone(), before, known.facts.now);
                let same_data = st.data_hash.as_deref() == Some(built.hash.as_str());
                let kind = build::written(
                    known.exists,
                    judged.cause,
                    same_data,
                    known.facts.recorded.spec_changed,
                );
                (Some(kind), version)
            }
            Err(f) => return Ok(Outcome::Failed(f)),
        }
    };
    let secret = Written {
        name: subject.secret.name.clone(),
        kind: written,
        version,
    };
    Ok(Outcome::Synced(Box::new(
        synced(subject, ctx, known, validated, conn, built, secret).await,
    )))
}

/// The Secret as written (or found as it should be) after a write pass.
struct Written {
    name: String,
    /// How it was written; `None`: it already held this.
    kind: Option<build::Written>,
    version: Option<String>,
}

/// A write pass's result: the Secret's new contents, a rollout restart if due, and whether pods are at risk.
async fn synced(
    subject: &Subject<'_>,
    ctx: &Context,
    known: &Known,
    validated: &Validated,
    conn: &Resolved,
    built: Built,
    secret: Written,
) -> Synced {
    let st = &subject.status;
    let restart = restart::maybe_restart(
        subject,
        ctx,
        known.facts.now,
        validated.min_restart_interval,
        validated.policy.propagation,
        Some(&built.hash),
    )
    .await;
    // New data in place of credentials that expire: how long before they do.
    let replaced = (st.data_hash.as_deref() != Some(built.hash.as_str()))
        .then(|| st.expires_at.as_deref().and_then(schedule::parse_ts))
        .flatten();
    let now = known.facts.now;
    let pod_risk = build::pod_risk(validated.policy, built.upcoming_lead(now), now, replaced);
    Synced {
        secret_name: secret.name,
        connection: Some(conn.key().id.status_ref()),
        expires_at: built.expires_at,
        next: built.next,
        account: Some(built.account),
        data_hash: Some(built.hash),
        confirmed: true,
        written: secret.kind,
        restart: restart.restarted,
        wake: restart.wake,
        pod_risk: Some(pod_risk),
        secret_version: secret.version,
    }
}

/// The Secret holds exactly what was built (as recorded in status, and the index vouches for it): no write.
fn already_holds(subject: &Subject<'_>, known: &Known, built: &Built) -> bool {
    let st = &subject.status;
    known.facts.secret == SecretFacts::AsWritten
        && !known.facts.recorded.spec_changed
        && st.data_hash.as_deref() == Some(built.hash.as_str())
        && st.expires_at == built.expires_at
}

/// What the Secret index holds for the target (`None`: the index is not ready), read just before a write: while it
/// still holds that, the write's own watch event has not arrived.
fn indexed_before(subject: &Subject<'_>, ctx: &Context) -> Option<Option<String>> {
    ctx.secrets
        .get(&subject.secret)
        .map(|e| e.map(|e| e.resource_version))
        .ok()
}

/// Write `desired`: create it when no Secret of its name was `found`, Merge-apply it into the one `read`, or
/// apply it. What the API server refused for a reason the spec can fix is a failure; other API errors end the pass.
async fn put(
    subject: &Subject<'_>,
    ctx: &Context,
    api: &Api<Secret>,
    desired: &Secret,
    read: Option<&Secret>,
    found: bool,
) -> Result<Result<Secret, SyncFailure>, Error> {
    let w = &subject.writer;
    let name = &w.secret;
    let manager = w.field_manager();
    // A Secret the operator has not seen is created, never applied: a Secret of that name created meanwhile
    // (after the operator's watch last saw the namespace) is refused by the API server, not adopted.
    let merge = w.merges();
    let create = !found && !merge;
    let applied = if create {
        create_secret(api, &manager, desired).await
    } else if merge {
        match merge_secret(subject, ctx, api, &manager, desired, read).await? {
            Merged::Written(w) => *w,
            Merged::Refused(f) => return Ok(Err(f)),
        }
    } else {
        apply_secret(api, &manager, desired).await
    };
    match applied {
        Ok(s) => Ok(Ok(s)),
        // Created since the operator's view of the namespace: written only if it is this account's own.
        Err(kube::Error::Api(s)) if create && s.code == 409 => {
            match api.get_opt(name).await.map_err(Error::ReadSecret)? {
                Some(e) if check_ownership(w, &e).is_ok() => apply_secret(api, &manager, desired)
                    .await
                    .map(Ok)
                    .map_err(Error::WriteSecret),
                _ => Ok(Err(SyncFailure::new(
                    Reason::SecretConflict,
                    format!(
                        "spec.target.name: Secret {name} was created by someone else before the operator's first write; it is left alone"
                    ),
                ))),
            }
        }
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 413 | 422) => {
            Ok(Err(refused_write(name, &s)))
        }
        Err(e) => Err(Error::WriteSecret(e)),
    }
}

async fn build_secret(
    subject: &Subject<'_>,
    known: &Known,
    validated: Validated,
    judged: &Judged,
    previous: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<Built, SyncFailure> {
    build::secret(build::Inputs {
        subject,
        validated,
        judged,
        previous,
        now: known.facts.now,
        jitter: known.facts.jitter,
    })
    .await
}

/// What a Merge apply came to.
enum Merged {
    /// The API server's answer to the apply (a 409 without field conflicts included: the Secret changed since it
    /// was read, and the next pass reads it again).
    Written(Box<Result<Secret, kube::Error>>),
    /// Keys someone else owns.
    Refused(SyncFailure),
}

/// A Merge write: a server-side apply with this ConnectedAccount's own field manager, not forced, so the API server
/// refuses it when another field manager owns one of its keys (an apply or Update manager, or
/// `before-first-apply` for a Secret that had no managed fields), and guarded by the resourceVersion the pass read
/// (what was judged from the Secret is what the API server applies to). A conflict is `SecretConflict` naming the
/// owners; only keys whose owners are all ConnectedAccounts that no longer exist are taken over, by a forced
/// apply under the same guard, so it takes exactly the fields the API server named.
async fn merge_secret(
    subject: &Subject<'_>,
    ctx: &Context,
    api: &Api<Secret>,
    manager: &str,
    desired: &Secret,
    read: Option<&Secret>,
) -> Result<Merged, Error> {
    let name = &subject.secret.name;
    let mut body = desired.clone();
    body.metadata.resource_version = read.and_then(|r| r.metadata.resource_version.clone());
    let params = PatchParams::apply(manager);
    let status = match api.patch(name, &params, &Patch::Apply(&body)).await {
        Err(kube::Error::Api(s)) if s.code == 409 => s,
        other => return Ok(Merged::Written(Box::new(other))),
    };
    let Some(conflicts) = secret::field_conflicts(&status) else {
        return Ok(Merged::Written(Box::new(Err(kube::Error::Api(status)))));
    };
    let ns = &subject.namespace;
    let mut live = Vec::new();
    for c in conflicts {
        if read.is_none() || !ca_writer_gone(ctx, ns, &c, read).await? {
            live.push(c);
        }
    }
    if !live.is_empty() {
        let c = secret::merge_conflict(read, name, &live);
        return Ok(Merged::Refused(SyncFailure::new(
            Reason::SecretConflict,
            c.0,
        )));
    }
    debug!(secret = %name, "keys of ConnectedAccounts that no longer exist are taken over");
    let forced = api.patch(name, &params.force(), &Patch::Apply(&body)).await;
    Ok(Merged::Written(Box::new(forced)))
}

/// Server-side apply of the Secret (this ConnectedAccount's fields, forced over other managers').
async fn apply_secret(
    api: &Api<Secret>,
    manager: &str,
    secret: &Secret,
) -> Result<Secret, kube::Error> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(secret),
    )
    .await
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

/// Keys of a Merge write that someone else owns in the Secret as read, if any: refused before the apply, which
/// is guarded by the read's resourceVersion (the API server refuses what this misses). Stricter than the API
/// server, which lets two managers share a key while their values are equal (the co-owner's next value would
/// then conflict). Keys of Merge ConnectedAccounts that no longer exist are free.
async fn merge_keys_taken(
    subject: &Subject<'_>,
    ctx: &Context,
    read: Option<&Secret>,
    built: &Built,
) -> Result<Option<SyncFailure>, Error> {
    let (Some(e), Some(data), true) = (read, built.secret.data.as_ref(), subject.writer.merges())
    else {
        return Ok(None);
    };
    let mut owned = Vec::new();
    for c in secret::key_owners(&subject.writer, e, data.keys()) {
        if !ca_writer_gone(ctx, &subject.namespace, &c, Some(e)).await? {
            owned.push(c);
        }
    }
    Ok((!owned.is_empty()).then(|| {
        let c = secret::merge_conflict(Some(e), &subject.secret.name, &owned);
        SyncFailure::new(Reason::SecretConflict, c.0)
    }))
}

/// Whether `c`'s owner is the field manager of a Merge ConnectedAccount that no longer exists (its keys are free).
async fn ca_writer_gone(
    ctx: &Context,
    namespace: &str,
    c: &secret::FieldConflict,
    existing: Option<&Secret>,
) -> Result<bool, Error> {
    let Some(uid) = c.manager.strip_prefix(secret::MERGE_MANAGER_PREFIX) else {
        return Ok(false);
    };
    let name = existing.and_then(|e| secret::merge_writer_name(e, uid));
    Ok(!writer_exists(ctx, namespace, uid, name).await?)
}

/// Whether the ConnectedAccount `uid` (named `name` by the Secret's annotation) still exists: asked of the API
/// server, not the local cache, which holds only this shard's objects. Without a name it counts as existing.
async fn writer_exists(
    ctx: &Context,
    namespace: &str,
    uid: &str,
    name: Option<&str>,
) -> Result<bool, Error> {
    let Some(name) = name else {
        return Ok(true);
    };
    let api: Api<ConnectedAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let found = api
        .get_metadata_opt(name)
        .await
        .map_err(Error::ReadConnectedAccount)?;
    Ok(found.is_some_and(|m| m.metadata.uid.as_deref() == Some(uid)))
}

/// The API server refused the Secret: name the spec field that caused it, from the fields its answer names
/// (`details.causes[].field`, as for every validation error: `metadata.labels`, `type`, `data[key]`). Its message
/// names fields and keys, never data values.
fn refused_write(secret: &str, status: &kube::core::Status) -> SyncFailure {
    let code = status.code;
    let message: String = status.message.chars().take(300).collect();
    if code == 403 || code == 413 {
        return SyncFailure::new(
            Reason::SecretWriteFailed,
            format!("the API server refused to write Secret {secret} (HTTP {code}): {message}"),
        );
    }
    let causes = status.details.iter().flat_map(|d| d.causes.iter());
    let field = causes
        .map(|c| spec_field(&c.field))
        .find(|f| *f != "spec.target")
        .unwrap_or("spec.target");
    SyncFailure::new(
        Reason::InvalidSpec,
        format!("{field}: the API server refused Secret {secret}: {message}"),
    )
}

/// The spec field that sets a Secret field the API server named.
fn spec_field(secret_field: &str) -> &'static str {
    let under = |prefix: &str| {
        secret_field == prefix
            || secret_field.starts_with(&format!("{prefix}."))
            || secret_field.starts_with(&format!("{prefix}["))
    };
    if under("metadata.labels") {
        "spec.target.labels"
    } else if under("metadata.annotations") {
        "spec.target.annotations"
    } else if under("type") {
        "spec.target.type"
    } else if under("data") || under("stringData") {
        "spec.target.template.data"
    } else {
        "spec.target"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal names the spec field from the causes the API server lists (their `field`), not from words in
    /// its message. Bodies as kube-apiserver sends them for an invalid Secret.
    #[test]
    fn a_refused_write_names_the_spec_field_from_the_api_servers_causes() {
        let refused = |body: serde_json::Value| {
            let status: kube::core::Status = serde_json::from_value(body).unwrap();
            refused_write("gh", &status).message
        };
        let invalid = |field: &str, message: &str| {
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid",
                "code": 422, "message": format!("Secret \"gh\" is invalid: {field}: {message}"),
                "details": {"name": "gh", "kind": "Secret",
                    "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]}})
        };
        let m = refused(invalid("type", "Invalid value: \"x\": field is immutable"));
        assert!(m.starts_with("spec.target.type: "), "{m}");
        let m = refused(invalid(
            "metadata.labels",
            "Invalid value: \"bad value!\": a valid label must be ...",
        ));
        assert!(m.starts_with("spec.target.labels: "), "{m}");
        let m = refused(invalid(
            "data[a b]",
            "Invalid value: \"a b\": a valid config key must consist of ...",
        ));
        assert!(m.starts_with("spec.target.template.data: "), "{m}");
        let m = refused(invalid(
            "metadata.annotations",
            "Too long: may not be more than 262144 bytes",
        ));
        assert!(m.starts_with("spec.target.annotations: "), "{m}");
        // A type refused for another reason than immutability: matching words of the message, this was
        // "spec.target".
        let m = refused(invalid(
            "type",
            "Invalid value: \"a/b/c\": a qualified name must consist of ...",
        ));
        assert!(m.starts_with("spec.target.type: "), "{m}");
        // No causes: the target as a whole.
        let m = refused(
            serde_json::json!({"code": 400, "message": "the body of the request was in an unknown format", "reason": "BadRequest"}),
        );
        assert!(m.starts_with("spec.target: "), "{m}");
        let m = refused(
            serde_json::json!({"code": 403, "message": "secrets is forbidden", "reason": "Forbidden"}),
        );
        assert!(m.contains("(HTTP 403)"), "{m}");
    }
}
