//! The ConnectedAccount a pass is about, read off the object once: who it is, what it asks for, what its status
//! records, and the Secret it writes. Every stage after that takes this, never the raw object.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::plan::Recorded;
use super::targets::SecretId;
use crate::crd::{
    ConnectedAccount, ConnectedAccountSpec, ConnectedAccountStatus, FORCE_SYNC_ANNOTATION,
};
use crate::reason::Reason;
use crate::schedule::parse_ts;
use crate::secret::Writer;

/// One ConnectedAccount, as a pass sees it.
pub struct Subject<'a> {
    /// Its uid (the key of the operator's memory of it).
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// What it asks for.
    pub spec: &'a ConnectedAccountSpec,
    /// Its status as recorded (empty when it has none).
    pub status: ConnectedAccountStatus,
    /// The status exactly as recorded, `None` when it has none.
    pub raw_status: Option<&'a ConnectedAccountStatus>,
    /// What its status and annotations say for the plan (`next_due` as status records it).
    pub recorded: Recorded,
    /// Ready is False for a reason a change to the connection can fix (AuthFailed, ConnectionNotReady, ...).
    pub connection_failed: bool,
    /// Ready is False with `SecretConflict`: the Secret's name was found taken.
    pub name_taken: bool,
    /// `spec.refresh.propagationTime`, or the default when it is unset or invalid.
    pub propagation: Duration,
    /// The target Secret.
    pub secret: SecretId,
    /// It as that Secret knows it.
    pub writer: Writer,
    /// It, as fetch requests name it.
    pub reference: ObjectRef<ConnectedAccount>,
    /// It, as Events name it.
    pub event_ref: ObjectReference,
}

impl<'a> Subject<'a> {
    /// Read `ca` once (`propagation`: the default propagation time).
    pub fn of(ca: &'a ConnectedAccount, propagation: Duration) -> Self {
        let writer = Writer::of(ca);
        let status = ca.status.clone().unwrap_or_default();
        let ready = ca
            .ready_condition()
            .map(|c| (c.status.clone(), c.reason.clone()));
        let failed_for = ready
            .as_ref()
            .filter(|(s, _)| s == "False")
            .and_then(|(_, r)| r.parse::<Reason>().ok());
        let recorded = Recorded {
            forced: ca
                .annotations()
                .get(FORCE_SYNC_ANNOTATION)
                .filter(|v| status.last_force_sync.as_ref() != Some(*v))
                .cloned(),
            spec_changed: status.observed_generation != ca.metadata.generation,
            next_due: status.next_sync_time.as_deref().and_then(parse_ts),
            failed: ready.as_ref().is_some_and(|(s, _)| s == "False"),
            ready: ready.as_ref().is_some_and(|(s, _)| s == "True"),
            held_expiry: status.expires_at.as_deref().and_then(parse_ts),
        };
        Self {
            uid: writer.uid.clone(),
            namespace: writer.namespace.clone(),
            name: writer.name.clone(),
            generation: ca.metadata.generation,
            spec: &ca.spec,
            raw_status: ca.status.as_ref(),
            recorded,
            connection_failed: failed_for.is_some_and(Reason::about_connection),
            name_taken: failed_for == Some(Reason::SecretConflict),
            status,
            propagation: crate::rules::spec::propagation(&ca.spec, propagation),
            secret: SecretId::new(writer.namespace.clone(), writer.secret.clone()),
            writer,
            reference: ObjectRef::from_obj(ca),
            event_ref: ca.object_ref(&()),
        }
    }

    /// The spec changed since status last recorded it.
    pub fn spec_changed(&self) -> bool {
        self.recorded.spec_changed
    }
}
