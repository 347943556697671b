//! A ConnectedAccount as the controller caches it: its identity as metadata, what the metrics read of its status
//! ([`Observed`]), and everything else as the deflated JSON text of the object as [`strip_account`] leaves it,
//! decoded again for each pass.
//!
//! Why: the cache holds every object of its shard for the life of the process. A synced ConnectedAccount parsed
//! is about 2.3 KiB at rest (1 KiB of structs, mostly empty options, and a heap block per string); its text is
//! 1.2 KiB and deflates to about 560 bytes (keys, timestamps and names repeat). A pass inflates and parses it in
//! microseconds and drops the decoded copy when it ends.

use std::borrow::Cow;
use std::io::Read;

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use super::build::PODS_AT_RISK;
use crate::crd::{ConnectedAccount, ConnectionRef, FORCE_SYNC_ANNOTATION};
use crate::schedule::parse_ts;

/// A cached ConnectedAccount (see the module docs). Its metadata holds only what the cache and the controller key
/// on: name, namespace, uid and resourceVersion.
#[derive(Clone)]
pub struct CachedAccount {
    metadata: ObjectMeta,
    /// `spec.connectionRef`, which a connection's event is matched against without decoding every object.
    connection_ref: Option<ConnectionRef>,
    /// What the metrics read of its status.
    observed: Observed,
    /// The rest: its JSON text, deflated.
    packed: Box<[u8]>,
}

/// What a scrape reads of an object's status, kept decoded: a scrape reads every object once per per-object
/// metric family, and decoding them all each time cost 2.5 s of CPU per scrape at 10,000 objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Ready's status: true, false, or none (Unknown, or no Ready condition yet).
    pub ready: Option<bool>,
    /// Ready's reason.
    pub reason: Option<Box<str>>,
    /// `status.expiresAt`.
    pub expires_at: Option<Timestamp>,
    /// `status.nextSyncTime`.
    pub next_sync: Option<Timestamp>,
    /// `status.lastSyncTime`.
    pub last_sync: Option<Timestamp>,
    /// The PodsAtRisk condition is True (none without the condition).
    pub pods_at_risk: Option<bool>,
    /// `status.refreshLeadSeconds`.
    pub refresh_lead_seconds: Option<i64>,
    /// `status.connection` (`Kind/name`).
    pub connection: Option<Box<str>>,
}

impl Observed {
    fn of(ca: &ConnectedAccount) -> Self {
        let Some(status) = ca.status.as_ref() else {
            return Self::default();
        };
        let ready = ca.ready_condition();
        let time = |t: &Option<String>| t.as_deref().and_then(parse_ts);
        Self {
            ready: match ready.map(|c| c.status.as_str()) {
                Some("True") => Some(true),
                Some("False") => Some(false),
                _ => None,
            },
            reason: ready.map(|c| c.reason.as_str().into()),
            expires_at: time(&status.expires_at),
            next_sync: time(&status.next_sync_time),
            last_sync: time(&status.last_sync_time),
            pods_at_risk: status
                .conditions
                .iter()
                .find(|c| c.type_ == PODS_AT_RISK)
                .map(|c| c.status == "True"),
            refresh_lead_seconds: status.refresh_lead_seconds,
            connection: status.connection.as_deref().map(Into::into),
        }
    }
}

impl std::fmt::Debug for CachedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAccount")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("packed_bytes", &self.packed.len())
            .finish()
    }
}

impl CachedAccount {
    /// Pack `ca`, as [`strip_account`] leaves it.
    pub fn pack(mut ca: ConnectedAccount) -> Result<Self, serde_json::Error> {
        strip_account(&mut ca);
        let m = &mut ca.metadata;
        let metadata = ObjectMeta {
            name: m.name.take(),
            namespace: m.namespace.take(),
            uid: m.uid.take(),
            resource_version: m.resource_version.take(),
            ..ObjectMeta::default()
        };
        let connection_ref = ca.spec.connection_ref.clone();
        let observed = Observed::of(&ca);
        let mut deflate = DeflateEncoder::new(Vec::new(), Compression::default());
        serde_json::to_writer(&mut deflate, &ca)?;
        let packed = deflate
            .finish()
            .map_err(serde_json::Error::io)?
            .into_boxed_slice();
        Ok(Self {
            metadata,
            connection_ref,
            observed,
            packed,
        })
    }

    /// What the metrics read of its status.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// `spec.connectionRef`.
    pub fn connection_ref(&self) -> Option<&ConnectionRef> {
        self.connection_ref.as_ref()
    }

    /// The object again, as packed.
    pub fn unpack(&self) -> Result<ConnectedAccount, serde_json::Error> {
        let mut json = Vec::with_capacity(self.packed.len() * 3);
        DeflateDecoder::new(&self.packed[..])
            .read_to_end(&mut json)
            .map_err(serde_json::Error::io)?;
        let mut ca: ConnectedAccount = serde_json::from_slice(&json)?;
        let m = &mut ca.metadata;
        m.name.clone_from(&self.metadata.name);
        m.namespace.clone_from(&self.metadata.namespace);
        m.uid.clone_from(&self.metadata.uid);
        m.resource_version
            .clone_from(&self.metadata.resource_version);
        Ok(ca)
    }
}

/// Decoded straight from the watch: the parsed object lives only until it is packed.
impl<'de> Deserialize<'de> for CachedAccount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ca = ConnectedAccount::deserialize(d)?;
        Self::pack(ca).map_err(serde::de::Error::custom)
    }
}

impl Resource for CachedAccount {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ConnectedAccount::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        ConnectedAccount::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        ConnectedAccount::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        ConnectedAccount::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A force-sync value longer than this is kept as its hash: only a change of it means anything, and the operator
/// records the last value acted on in status.
const FORCE_SYNC_KEPT: usize = 128;

/// Keep of a ConnectedAccount only what a pass reads: managed fields and the last-applied annotation can be most
/// of an object; its labels and annotations are the tenant's to fill (the API server bounds annotations at 256 KiB
/// in all and labels not at all), and only the force-sync annotation means anything to the operator.
pub fn strip_account(ca: &mut ConnectedAccount) {
    let meta = &mut ca.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k == FORCE_SYNC_ANNOTATION);
        if let Some(v) = a.get_mut(FORCE_SYNC_ANNOTATION)
            && v.len() > FORCE_SYNC_KEPT
        {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(v.as_bytes());
            *v = digest.iter().fold(String::from("sha256:"), |mut out, b| {
                use std::fmt::Write;
                let _ = write!(out, "{b:02x}");
                out
            });
        }
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listed() -> serde_json::Value {
        json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "gh", "namespace": "team-a", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "finalizers": ["pipedream-secrets.io/finalizer"],
                "labels": {"team": "a"},
                "annotations": {FORCE_SYNC_ANNOTATION: "now", "note": "x".repeat(1000),
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"accountId": "apn_A1", "target": {"name": "gh-token"}},
            "status": {"observedGeneration": 3, "expiresAt": "2026-12-07T03:00:00Z", "dataHash": "sha256:ab",
                "conditions": [{"type": "Ready", "status": "True", "reason": "SecretSynced",
                    "message": "synced", "lastTransitionTime": "2026-12-07T02:00:00Z"}]}})
    }

    /// What a pass decodes is the object as stripped, field for field; what the cache keys on stays outside.
    #[test]
    fn a_packed_account_unpacks_to_the_stripped_object() {
        let cached: CachedAccount = serde_json::from_value(listed()).unwrap();
        let mut expected: ConnectedAccount = serde_json::from_value(listed()).unwrap();
        strip_account(&mut expected);
        let json = |ca: &ConnectedAccount| serde_json::to_value(ca).unwrap();
        assert_eq!(json(&cached.unpack().unwrap()), json(&expected));
        assert_eq!(cached.meta().uid.as_deref(), Some("u-1"));
        assert_eq!(cached.meta().resource_version.as_deref(), Some("42"));
        assert!(cached.meta().annotations.is_none() && cached.meta().finalizers.is_none());
        let mut text = String::new();
        DeflateDecoder::new(&cached.packed[..])
            .read_to_string(&mut text)
            .unwrap();
        assert!(!text.contains("\"gh\"") && !text.contains("xxxx"));
        assert!(cached.packed.len() < text.len());
        let ann = expected.metadata.annotations.unwrap();
        assert_eq!(ann.keys().collect::<Vec<_>>(), [FORCE_SYNC_ANNOTATION]);
        assert!(expected.metadata.labels.is_none() && expected.metadata.managed_fields.is_none());
    }

    /// A force-sync value is kept whole up to 128 bytes and as its hash beyond, so a change still shows.
    #[test]
    fn a_long_force_sync_value_is_kept_as_its_hash() {
        let with = |v: String| {
            let mut o = listed();
            o["metadata"]["annotations"] = json!({FORCE_SYNC_ANNOTATION: v});
            let ca = serde_json::from_value::<CachedAccount>(o)
                .unwrap()
                .unpack()
                .unwrap();
            ca.metadata.annotations.unwrap()[FORCE_SYNC_ANNOTATION].clone()
        };
        assert_eq!(with("a".repeat(128)), "a".repeat(128));
        let (a, b) = (with("a".repeat(100_000)), with("b".repeat(100_000)));
        assert!(a.starts_with("sha256:") && a.len() == 71 && a != b);
    }

    /// The metrics' view is read off the status once, when the object is cached.
    #[test]
    fn what_the_metrics_read_is_kept_decoded() {
        let cached: CachedAccount = serde_json::from_value(listed()).unwrap();
        let o = cached.observed();
        assert_eq!(o.ready, Some(true));
        assert_eq!(o.reason.as_deref(), Some("SecretSynced"));
        assert_eq!(o.expires_at, Some("2026-12-07T03:00:00Z".parse().unwrap()));
        assert_eq!(
            (o.next_sync, o.pods_at_risk, o.connection.as_deref()),
            (None, None, None)
        );
        let mut fresh = listed();
        fresh.as_object_mut().unwrap().remove("status");
        let fresh: CachedAccount = serde_json::from_value(fresh).unwrap();
        assert_eq!(*fresh.observed(), Observed::default());
    }

    /// Debug output names the object, never its content.
    #[test]
    fn debug_shows_the_identity_only() {
        let cached: CachedAccount = serde_json::from_value(listed()).unwrap();
        let shown = format!("{cached:?}");
        assert!(shown.contains("gh") && !shown.contains("apn_A1") && !shown.contains("sha256"));
    }
}
