//! Write: build the Secret from a judged answer and have [`put`](super::put) apply it when it differs; record
//! the write in the operator's memory.

use kube::ResourceExt;

use super::Known;
use super::merge;
use super::put::{self, Put};
use crate::controller::build::{self, Outcome, Wrote};
use crate::controller::memory::MemoryChange;
use crate::controller::plan::{Judged, SecretFacts};
use crate::controller::subject::Subject;
use crate::controller::{Context, Error};
use crate::reason::{Reason, SyncFailure};
use crate::secret;

/// Build the Secret from the judged answer and apply it, unless it already holds exactly that.
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
    let built = match build::secret(inputs).await {
        Ok(b) => b,
        Err(f) => return Ok(Outcome::Failed(f)),
    };
    // The Secret holds exactly what was built (as recorded in status, and the index or a read vouches for it).
    let st = &subject.status;
    let holds = known.facts.secret == SecretFacts::AsWritten
        && !subject.spec_changed()
        && st.data_hash.as_deref() == Some(built.hash.as_str())
        && st.expires_at == built.expires_at;
    let put = if subject.writer.merges() {
        merge::write_keys(subject, ctx, &built.secret, read, holds).await?
    } else {
        put::put(subject, ctx, &built.secret, known.exists, holds).await?
    };
    let (written, version) = match put {
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
        existed: known.exists,
        cause: judged.cause,
        version,
        connection: conn.key().id.status_ref(),
        policy: validated.policy,
        now,
    };
    Ok(Outcome::Synced(Box::new(built.synced(subject, wrote))))
}
