//! A ConnectedAccount as the controller caches it: its identity as metadata, what the metrics read of its status
//! ([`Observed`]), and everything else as the deflated JSON text of the object as [`strip_account`] leaves it,
//! decoded again for each pass.
//!
//! Why: the cache holds every object of its shard for the life of the process. A synced ConnectedAccount parsed
//! is about 2.3 KiB at rest (1 KiB of structs, mostly empty options, and a heap block per string); its text is
//! 1.3 KiB, deflates to about 610 bytes on its own and to about 170 with a preset dictionary ([`DICTIONARY`]: the
//! keys, default values and the operator's own condition messages that every object repeats). A pass inflates and
//! parses it in microseconds and drops the decoded copy when it ends.

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::crd::{ConnectedAccount, ConnectionRef, FORCE_SYNC_ANNOTATION, PODS_AT_RISK};
use crate::schedule::parse_ts;

/// A cached ConnectedAccount (see the module docs). Its metadata holds only what the cache and the controller key
/// on: name and namespace (and uid and resourceVersion until [`settle`](Self::settle)).
///
/// Kept at most 496 bytes, so that with the store's reference counts it fits jemalloc's 512-byte class (the next
/// is 640); ObjectMeta alone is 360 (a unit test checks).
#[derive(Clone)]
pub struct CachedAccount {
    metadata: ObjectMeta,
    /// Its uid and resourceVersion.
    keys: Keys,
    /// `spec.connectionRef`, which a connection's event is matched against without decoding every object (boxed:
    /// most accounts name none and use the default connection).
    connection_ref: Option<Box<ConnectionRef>>,
    /// What the metrics read of its status.
    observed: Observed,
    /// The rest: its JSON text, deflated.
    packed: Box<[u8]>,
}

/// What a scrape reads of an object's status, kept decoded: a scrape reads every object once per per-object
/// metric family, and decoding them all each time cost 2.5 s of CPU per scrape at 10,000 objects. Times are kept
/// as whole seconds (the operator writes them so) to keep [`CachedAccount`] in its size class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Ready's status: true, false, or none (Unknown, or no Ready condition yet).
    pub ready: Option<bool>,
    /// The PodsAtRisk condition is True (none without the condition).
    pub pods_at_risk: Option<bool>,
    /// Ready's reason.
    pub reason: Option<Box<str>>,
    /// `status.expiresAt`.
    expires_at: Second,
    /// `status.nextSyncTime`.
    next_sync: Second,
    /// `status.lastSyncTime`.
    last_sync: Second,
    /// `status.refreshLeadSeconds`, saturated at `i32`'s bounds (68 years).
    refresh_lead_seconds: Option<i32>,
    /// `status.connection` (`Kind/name`).
    pub connection: Option<Box<str>>,
}

impl Observed {
    fn of(ca: &ConnectedAccount) -> Self {
        let Some(status) = ca.status.as_ref() else {
            return Self::default();
        };
        let ready = ca.ready_condition();
        let time = |t: &Option<String>| Second::of(t.as_deref().and_then(parse_ts));
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
            refresh_lead_seconds: status
                .refresh_lead_seconds
                .map(|s| i32::try_from(s).unwrap_or(if s < 0 { i32::MIN } else { i32::MAX })),
            connection: status.connection.as_deref().map(Into::into),
        }
    }

    /// `status.expiresAt`.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.expires_at.get()
    }

    /// `status.nextSyncTime`.
    pub fn next_sync(&self) -> Option<Timestamp> {
        self.next_sync.get()
    }

    /// `status.lastSyncTime`.
    pub fn last_sync(&self) -> Option<Timestamp> {
        self.last_sync.get()
    }

    /// `status.refreshLeadSeconds`.
    pub fn refresh_lead_seconds(&self) -> Option<i64> {
        self.refresh_lead_seconds.map(i64::from)
    }
}

/// A time kept as whole Unix seconds, in half an `Option<i64>`: absent is `i64::MIN`, which is no
/// [`Timestamp`]'s second.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Second(i64);

impl Default for Second {
    fn default() -> Self {
        Self(i64::MIN)
    }
}

impl Second {
    fn of(t: Option<Timestamp>) -> Self {
        t.map_or_else(Self::default, |t| Self(t.as_second()))
    }

    fn get(self) -> Option<Timestamp> {
        Timestamp::from_second(self.0).ok()
    }
}

/// The object's uid and resourceVersion, kept apart from its metadata: once the watcher has read them (it resumes
/// from the last resourceVersion it saw), [`CachedAccount::settle`] drops them from the metadata, because every
/// reference to the object that kube-runtime makes copies them along (`ObjectRef::extra`: the reflector store's
/// key, and the controller scheduler's map and delay queue hold one each), and nothing there reads them. A
/// Kubernetes uid is a UUID and a resourceVersion (etcd's revision) a number: then they are kept as 16 and 8
/// bytes in this struct, not as heap strings copied into each reference (about 190 bytes per object). Any other
/// form is kept as text.
#[derive(Clone, Default)]
struct Keys {
    uuid: [u8; 16],
    version: u64,
    /// Both as received, when either is absent or not in the canonical form above.
    text: Option<Box<[Option<String>; 2]>>,
}

impl Keys {
    fn of(uid: Option<&str>, version: Option<&str>) -> Self {
        let uuid = uid.and_then(parse_uuid);
        let number = version.and_then(|v| v.parse::<u64>().ok().filter(|n| n.to_string() == v));
        match (uuid, number) {
            (Some(uuid), Some(version)) => Self {
                uuid,
                version,
                text: None,
            },
            _ => Self {
                text: Some(Box::new([
                    uid.map(str::to_string),
                    version.map(str::to_string),
                ])),
                ..Self::default()
            },
        }
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        match &self.text {
            Some(t) => t[0].as_deref().map(Cow::Borrowed),
            None => Some(Cow::Owned(format_uuid(self.uuid))),
        }
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        match &self.text {
            Some(t) => t[1].as_deref().map(Cow::Borrowed),
            None => Some(Cow::Owned(self.version.to_string())),
        }
    }
}

/// The 128 bits of a UUID in canonical (lower-case, hyphenated) form, which [`format_uuid`] gives back exactly.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    let hyphens = [8, 13, 18, 23];
    if b.len() != 36 || hyphens.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bits = u128::from_str_radix(&hex, 16).ok()?.to_be_bytes();
    (format_uuid(bits) == s).then_some(bits)
}

fn format_uuid(bits: [u8; 16]) -> String {
    let x = u128::from_be_bytes(bits);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        x >> 96,
        (x >> 80) & 0xffff,
        (x >> 64) & 0xffff,
        (x >> 48) & 0xffff,
        x & 0xffff_ffff_ffff
    )
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
        let keys = Keys::of(
            metadata.uid.as_deref(),
            metadata.resource_version.as_deref(),
        );
        let connection_ref = ca.spec.connection_ref.clone().map(Box::new);
        let observed = Observed::of(&ca);
        let packed = deflate(&serde_json::to_vec(&ca)?).map_err(serde_json::Error::io)?;
        Ok(Self {
            metadata,
            keys,
            connection_ref,
            observed,
            packed,
        })
    }

    /// Drop uid and resourceVersion from the metadata (see [`Keys`]): called on each watch event after the watcher
    /// has read them, before the object is stored and referenced.
    pub fn settle(&mut self) {
        self.metadata.uid = None;
        self.metadata.resource_version = None;
    }

    /// `metadata.uid`.
    pub fn uid(&self) -> Option<Cow<'_, str>> {
        self.keys.uid()
    }

    /// What the metrics read of its status.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// `spec.connectionRef`.
    pub fn connection_ref(&self) -> Option<&ConnectionRef> {
        self.connection_ref.as_deref()
    }

    /// The object again, as packed.
    pub fn unpack(&self) -> Result<ConnectedAccount, serde_json::Error> {
        let json = inflate(&self.packed).map_err(serde_json::Error::io)?;
        let mut ca: ConnectedAccount = serde_json::from_slice(&json)?;
        let m = &mut ca.metadata;
        m.name.clone_from(&self.metadata.name);
        m.namespace.clone_from(&self.metadata.namespace);
        m.uid = self.keys.uid().map(Cow::into_owned);
        m.resource_version = self.keys.resource_version().map(Cow::into_owned);
        Ok(ca)
    }
}

/// Decoded straight from the watch: the parsed object lives only until it is packed, so a list page (where the API
/// server cannot stream lists) holds packed objects, not whole ones. Every shard packs every object it receives,
/// before the shard filter drops the others' (CPU, not memory: the watch parses them whole anyway).
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

/// Deflate's preset dictionary: the text of typical ConnectedAccounts with their names, ids, hashes and times
/// left out, so what every object repeats (keys, default values, the operator's own condition messages) costs a
/// back-reference. Only this process reads what it packs, so the dictionary can change with any release.
const DICTIONARY: &[u8] = include_bytes!("cached/dictionary.json");

/// Deflate and inflate states kept for reuse. A fresh deflate state is ~370 KiB and an inflate state ~46 KiB:
/// made and dropped for every watch event and every pass, they were 71% of the bytes allocated in a refresh cycle
/// of 10,000 objects, and the long-lived cache entries made meanwhile landed in the pages they freed. At most
/// [`POOLED`] of each are kept, whatever the number of threads.
struct Pool<T>(Mutex<Vec<T>>);

/// States kept per kind: packing runs on the watch streams, unpacking on the reconcile workers, a few at a time.
const POOLED: usize = 4;

static DEFLATERS: Pool<Compress> = Pool(Mutex::new(Vec::new()));
static INFLATERS: Pool<Decompress> = Pool(Mutex::new(Vec::new()));

impl<T> Pool<T> {
    /// Run `f` with a kept state (or a new one from `make`), and keep it again after.
    fn with<R>(&self, make: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut z = kept.unwrap_or_else(make);
        let out = f(&mut z);
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() < POOLED {
            held.push(z);
        }
        out
    }
}

/// `text` as raw deflate against [`DICTIONARY`].
fn deflate(text: &[u8]) -> std::io::Result<Box<[u8]>> {
    DEFLATERS.with(
        || Compress::new(Compression::default(), false),
        |z| {
            z.reset();
            deflate_with(z, text)
        },
    )
}

fn deflate_with(z: &mut Compress, text: &[u8]) -> std::io::Result<Box<[u8]>> {
    z.set_dictionary(DICTIONARY)
        .map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(text.len() / 4 + 64);
    loop {
        let rest = &text[usize::try_from(z.total_in()).unwrap_or(text.len())..];
        match z
            .compress_vec(rest, &mut out, FlushCompress::Finish)
            .map_err(std::io::Error::other)?
        {
            Status::StreamEnd => return Ok(out.into_boxed_slice()),
            Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
        }
    }
}

/// What [`deflate`] packed.
fn inflate(packed: &[u8]) -> std::io::Result<Vec<u8>> {
    INFLATERS.with(
        || Decompress::new(false),
        |z| {
            z.reset(false);
            inflate_with(z, packed)
        },
    )
}

fn inflate_with(z: &mut Decompress, packed: &[u8]) -> std::io::Result<Vec<u8>> {
    z.set_dictionary(DICTIONARY)
        .map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(packed.len() * 8 + 64);
    loop {
        let before = (z.total_in(), z.total_out());
        let rest = &packed[usize::try_from(before.0).unwrap_or(packed.len())..];
        let status = z
            .decompress_vec(rest, &mut out, FlushDecompress::Finish)
            .map_err(std::io::Error::other)?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        if out.len() < out.capacity() {
            // Room to write, and nothing read or written: the input ended before the stream did.
            if (z.total_in(), z.total_out()) == before {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        } else {
            out.reserve(out.capacity().max(64));
        }
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
    use kube::runtime::reflector::ObjectRef;
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
        let text = String::from_utf8(inflate(&cached.packed).unwrap()).unwrap();
        assert!(!text.contains("\"gh\"") && !text.contains("xxxx"));
        assert!(cached.packed.len() < text.len());
        let ann = expected.metadata.annotations.unwrap();
        assert_eq!(ann.keys().collect::<Vec<_>>(), [FORCE_SYNC_ANNOTATION]);
        assert!(expected.metadata.labels.is_none() && expected.metadata.managed_fields.is_none());
    }

    /// Once settled, the references kube-runtime makes of a cached object (three per object: the store's key, the
    /// scheduler's map and delay queue) carry its namespace and name only; the uid and resourceVersion stay readable
    /// and come back on unpack, in canonical form as 24 bytes and in any other form as given.
    #[test]
    fn a_settled_account_is_referenced_by_namespace_and_name_only() {
        let uid = "0b6f3f0c-4d1e-4a8e-9d55-8e1f2b7c9a10";
        for (u, v, compact) in [
            (uid, "33017", true),
            ("u-1", "42", false),
            (&uid.to_uppercase(), "33017", false),
            (uid, "033017", false),
            (uid, "18446744073709551616", false),
        ] {
            let mut o = listed();
            o["metadata"]["uid"] = json!(u);
            o["metadata"]["resourceVersion"] = json!(v);
            let mut cached: CachedAccount = serde_json::from_value(o).unwrap();
            assert_eq!(cached.meta().resource_version.as_deref(), Some(v));
            cached.settle();
            let r = ObjectRef::from_obj(&cached);
            assert!(r.extra.uid.is_none() && r.extra.resource_version.is_none());
            assert_eq!(
                (r.name.as_str(), r.namespace.as_deref()),
                ("gh", Some("team-a"))
            );
            assert_eq!(cached.uid().as_deref(), Some(u));
            assert_eq!(cached.keys.text.is_none(), compact, "{u} {v}");
            let back = cached.unpack().unwrap().metadata;
            assert_eq!(
                (back.uid.as_deref(), back.resource_version.as_deref()),
                (Some(u), Some(v))
            );
        }
        let mut o = listed();
        o["metadata"].as_object_mut().unwrap().remove("uid");
        let mut cached: CachedAccount = serde_json::from_value(o).unwrap();
        cached.settle();
        assert!(cached.uid().is_none() && cached.unpack().unwrap().metadata.uid.is_none());
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
        assert_eq!(
            o.expires_at(),
            Some("2026-12-07T03:00:00Z".parse().unwrap())
        );
        assert_eq!(
            (o.next_sync(), o.pods_at_risk, o.connection.as_deref()),
            (None, None, None)
        );
        let mut fresh = listed();
        fresh.as_object_mut().unwrap().remove("status");
        let fresh: CachedAccount = serde_json::from_value(fresh).unwrap();
        assert_eq!(*fresh.observed(), Observed::default());
    }

    /// A synced object as the operator leaves it: what every object repeats is in the dictionary, so what is
    /// packed is little more than its names, ids, hash and times (about 610 bytes without the dictionary).
    #[test]
    fn a_synced_account_packs_to_its_own_values() {
        let t = "2026-12-07T05:37:58Z";
        let synced = json!({"apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "ca-00017", "namespace": "bench", "uid": "0b6f3f0c-4d1e-4a8e-9d55-8e1f2b7c9a10",
                "resourceVersion": "33017", "creationTimestamp": t, "generation": 1},
            "spec": {"accountId": "apn_Bench00017", "refresh": {"beforeExpiry": "30s", "interval": "1h"},
                "target": {"creationPolicy": "Owner", "deletionPolicy": "Delete"}},
            "status": {"conditions": [
                {"lastTransitionTime": t, "observedGeneration": 1, "reason": "SecretSynced", "status": "True",
                    "type": "Ready", "message":
                    "Secret ca-00017 holds credentials for apn_Bench00017 valid until 2026-12-07T05:57:52Z"},
                {"lastTransitionTime": t, "message": "the Secret holds unexpired credentials",
                    "observedGeneration": 1, "reason": "Fresh", "status": "False", "type": "Expired"},
                {"lastTransitionTime": t, "observedGeneration": 1, "reason": "InTime", "status": "False",
                    "type": "PodsAtRisk", "message":
                    "new credentials reach pods in time: 100s or more before the ones they replace expire"}],
                "observedGeneration": 1, "secretName": "ca-00017",
                "connection": "ClusterPipedreamConnection/default", "expiresAt": "2026-12-07T05:57:52Z",
                "lastSyncTime": t, "nextSyncTime": "2026-12-07T05:52:57Z",
                "account": {"app": "github", "externalId": "tenant-42", "healthy": true},
                "dataHash": "sha256:077114dde7ede351ac434d85b4833e4cb3150c0dcb60bfd8db8c7aa62eadcf12",
                "secretResourceVersion": "330"}});
        let cached = CachedAccount::pack(serde_json::from_value(synced.clone()).unwrap()).unwrap();
        let back = serde_json::to_value(cached.unpack().unwrap()).unwrap();
        assert_eq!(back["status"], synced["status"]);
        assert_eq!(back["spec"]["accountId"], "apn_Bench00017");
        assert!(cached.packed.len() <= 200, "{} bytes", cached.packed.len());
    }

    /// A template as large as the CRD admits round-trips (the output outgrows the first buffer many times).
    #[test]
    fn the_largest_templates_round_trip() {
        let mut o = listed();
        let data: serde_json::Map<String, serde_json::Value> = (0..32)
            .map(|i| {
                (
                    format!("k{i}"),
                    json!(format!("{i}-{}", "{{ credentials.x }}".repeat(100))),
                )
            })
            .collect();
        o["spec"]["target"]["template"] = json!({"data": data});
        let cached = CachedAccount::pack(serde_json::from_value(o.clone()).unwrap()).unwrap();
        let back = serde_json::to_value(cached.unpack().unwrap()).unwrap();
        let template = &back["spec"]["target"]["template"];
        assert!(template == &o["spec"]["target"]["template"]);
        assert!(cached.packed.len() < 4096, "{} bytes", cached.packed.len());
    }

    /// Packed text cut short is an error, not a hang or a partial object.
    #[test]
    fn a_cut_pack_is_an_error() {
        let cached: CachedAccount = serde_json::from_value(listed()).unwrap();
        let cut = &cached.packed[..cached.packed.len() / 2];
        assert_eq!(
            inflate(cut).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        assert!(inflate(&[0xff; 8]).is_err());
        assert!(inflate(&[]).is_err());
    }

    /// Kept deflate and inflate states start each use afresh: after a failed inflate (a state left mid-stream) and
    /// many uses from several threads, every pack is the same bytes a fresh state makes, and unpacks to its text.
    #[test]
    fn kept_states_pack_and_unpack_as_fresh_ones_do() {
        let text = serde_json::to_vec(&listed()).unwrap();
        let fresh = {
            let mut z = Compress::new(Compression::default(), false);
            deflate_with(&mut z, &text).unwrap()
        };
        let cached: CachedAccount = serde_json::from_value(listed()).unwrap();
        assert!(inflate(&cached.packed[..cached.packed.len() / 2]).is_err());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let packed = deflate(&text).unwrap();
                        assert_eq!(packed, fresh);
                        assert_eq!(inflate(&packed).unwrap(), text);
                    }
                });
            }
        });
        assert!(INFLATERS.0.lock().unwrap().len() <= POOLED);
        assert!(DEFLATERS.0.lock().unwrap().len() <= POOLED);
    }

    /// The cached struct and the store's two reference counts fit jemalloc's 512-byte class.
    #[test]
    fn a_cached_account_fits_its_size_class() {
        assert!(std::mem::size_of::<CachedAccount>() + 16 <= 512);
    }

    /// Debug output names the object, never its content.
    #[test]
    fn debug_shows_the_identity_only() {
        let cached: CachedAccount = serde_json::from_value(listed()).unwrap();
        let shown = format!("{cached:?}");
        assert!(shown.contains("gh") && !shown.contains("apn_A1") && !shown.contains("sha256"));
    }
}
