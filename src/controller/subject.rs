//! The ConnectedAccount a pass is about, read off the object once: who it is, what it asks for, what its status
//! records, and the Secret it writes. Every stage after that takes this, never the raw object.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::targets::SecretId;
use crate::crd::{
    ConnectedAccount, ConnectedAccountSpec, ConnectedAccountStatus, FORCE_SYNC_ANNOTATION,
};
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
    /// The status exactly as recorded (for the digest of the operator's own status writes).
    pub recorded: Option<&'a ConnectedAccountStatus>,
    /// The force-sync annotation's value.
    pub force_sync: Option<&'a str>,
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
    /// Read `ca` once.
    pub fn of(ca: &'a ConnectedAccount) -> Self {
        let writer = Writer::of(ca);
        Self {
            uid: writer.uid.clone(),
            namespace: writer.namespace.clone(),
            name: writer.name.clone(),
            generation: ca.metadata.generation,
            spec: &ca.spec,
            status: ca.status.clone().unwrap_or_default(),
            recorded: ca.status.as_ref(),
            force_sync: ca
                .annotations()
                .get(FORCE_SYNC_ANNOTATION)
                .map(String::as_str),
            secret: SecretId::new(writer.namespace.clone(), writer.secret.clone()),
            writer,
            reference: ObjectRef::from_obj(ca),
            event_ref: ca.object_ref(&()),
        }
    }

    /// The spec changed since status last recorded it.
    pub fn spec_changed(&self) -> bool {
        self.status.observed_generation != self.generation
    }
}
